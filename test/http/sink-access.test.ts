// Who may read the sink (/sink/messages…): loopback without a token, anyone else only with the admin token.
// "Anyone else" is a real client bound to 127.0.0.2: Linux routes all of 127/8 to lo, and mailhook counts only
// 127.0.0.1 and ::1 as loopback (src/http/server.ts mayReadSink), so that client is not on loopback for it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { sendMail } from '../helpers/smtp-client.js';
import { startTestApp, tempDir, type TestApp } from '../helpers/app.js';
import { adminYaml, ADMIN_TOKEN } from '../admin/helpers.js';

const ROUTES = `
  - name: keep
    addresses: ["*@sink.test"]
    sink: true
`;

/** GET over a socket bound to `localAddress`; resolves with the status and body. */
function get(app: TestApp, path: string, localAddress: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: app.addresses.http.port, path, method: 'GET', localAddress, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

async function withApp(token: string | null, fn: (app: TestApp, id: string) => Promise<void>): Promise<void> {
  const dir = tempDir();
  let app: TestApp | undefined;
  try {
    app = await startTestApp({ routes: '', dir, yaml: adminYaml({ routes: ROUTES, dir, token }) });
    const info = await sendMail(app.smtpPort, { from: 'a@s.test', to: 'x@sink.test', subject: 'kept', text: 'SINK-BODY-TEXT' });
    const id = /queued as (\S+)/.exec(info.response)![1]!;
    await fn(app, id);
  } finally {
    await app?.close();
    const { rmSync } = await import('node:fs');
    rmSync(dir, { recursive: true, force: true });
  }
}

test('the sink refuses a client off loopback (127.0.0.2) without the admin token, and serves it with the token', async () => {
  await withApp(ADMIN_TOKEN, async (app, id) => {
    // The control: the same request from 127.0.0.1 is served, so a 403 below is about the address alone.
    const loop = await get(app, '/sink/messages', '127.0.0.1');
    assert.equal(loop.status, 200);
    assert.deepEqual((JSON.parse(loop.body) as { messages: Array<{ id: string }> }).messages.map((m) => m.id), [id]);

    for (const path of ['/sink/messages', `/sink/messages/${id}/raw`]) {
      const anon = await get(app, path, '127.0.0.2');
      assert.equal(anon.status, 403, `${path} without a token from 127.0.0.2`);
      assert.doesNotMatch(anon.body, /SINK-BODY-TEXT|x@sink\.test/);
      // A forwarding header claiming loopback changes nothing: the socket's address decides.
      const forged = await get(app, path, '127.0.0.2', { 'x-forwarded-for': '127.0.0.1', 'x-real-ip': '127.0.0.1' });
      assert.equal(forged.status, 403, `${path} with X-Forwarded-For: 127.0.0.1 from 127.0.0.2`);
      const wrong = await get(app, path, '127.0.0.2', { authorization: `Bearer ${ADMIN_TOKEN}x` });
      assert.equal(wrong.status, 403, `${path} with a wrong token from 127.0.0.2`);
    }

    const list = await get(app, '/sink/messages', '127.0.0.2', { authorization: `Bearer ${ADMIN_TOKEN}` });
    assert.equal(list.status, 200);
    assert.deepEqual((JSON.parse(list.body) as { messages: Array<{ id: string }> }).messages.map((m) => m.id), [id]);
    const raw = await get(app, `/sink/messages/${id}/raw`, '127.0.0.2', { authorization: `Bearer ${ADMIN_TOKEN}` });
    assert.equal(raw.status, 200);
    assert.match(raw.body, /SINK-BODY-TEXT/);
  });
});

test('from loopback, a request for another host name is refused (DNS rebinding: a web page re-pointed at 127.0.0.1)', async () => {
  await withApp(ADMIN_TOKEN, async (app, id) => {
    const port = app.addresses.http.port;
    for (const path of ['/sink/messages', `/sink/messages/${id}/raw`]) {
      const rebound = await get(app, path, '127.0.0.1', { host: `attacker.example:${port}` });
      assert.equal(rebound.status, 403, `${path} asked for as attacker.example`);
      assert.doesNotMatch(rebound.body, /SINK-BODY-TEXT|x@sink\.test/);
      for (const host of [`localhost:${port}`, `LOCALHOST:${port}`, `mailhook.localhost:${port}`, `127.0.0.1:${port}`, '127.0.0.1', `[::1]:${port}`]) {
        assert.equal((await get(app, path, '127.0.0.1', { host })).status, 200, `${path} asked for as ${host}`);
      }
      // The admin token still opens it whatever the name.
      assert.equal((await get(app, path, '127.0.0.1', { host: 'attacker.example', authorization: `Bearer ${ADMIN_TOKEN}` })).status, 200);
    }
    for (const host of ['localhost.attacker.example', '127.0.0.1.attacker.example', `[::2]:${port}`]) {
      assert.equal((await get(app, '/sink/messages', '127.0.0.1', { host })).status, 403, host);
    }
    // Through a reverse proxy on the same machine every client comes from loopback: its headers give it away.
    const proxied: Array<Record<string, string>> = [{ 'x-forwarded-for': '203.0.113.9' }, { forwarded: 'for=203.0.113.9' }, { 'x-real-ip': '203.0.113.9' }, { via: '1.1 nginx' }];
    for (const header of proxied) {
      assert.equal((await get(app, '/sink/messages', '127.0.0.1', { host: `localhost:${port}`, ...header })).status, 403, JSON.stringify(header));
    }
  });
});

test('without an admin token configured, a client off loopback cannot read the sink at all', async () => {
  await withApp(null, async (app, id) => {
    assert.equal((await get(app, '/sink/messages', '127.0.0.1')).status, 200);
    assert.equal((await get(app, '/sink/messages', '127.0.0.2')).status, 403);
    assert.equal((await get(app, `/sink/messages/${id}/raw`, '127.0.0.2')).status, 403);
    // Any bearer value is refused when no token is configured.
    assert.equal((await get(app, '/sink/messages', '127.0.0.2', { authorization: `Bearer ${ADMIN_TOKEN}` })).status, 403);
    assert.equal((await get(app, '/sink/messages', '127.0.0.2', { authorization: 'Bearer ' })).status, 403);
  });
});
