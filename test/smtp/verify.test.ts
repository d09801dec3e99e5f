// Live recipient verification at RCPT against a real HTTP server: signed requests, cached answers, 550 / 451, never 250 unchecked.
import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import { once } from 'node:events';
import { Webhook } from 'standardwebhooks';
import { SECRET, type TestApp } from '../helpers/app.js';
import { countMessages, session, startSmtpApp, writeFlushed } from './support.js';

interface Asked {
  headers: IncomingHttpHeaders;
  body: string;
  json: { type: string; route: string; address: string; key: string | null };
}

/** The application's verification endpoint: answers by key; "held" waits for the test to release it. */
class VerifyApp {
  asked: Asked[] = [];
  server: Server | undefined;
  port = 0;
  broken = true;
  private held: Array<() => void> = [];
  private askedWaiters: Array<{ n: number; resolve: () => void }> = [];

  async start(): Promise<this> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8');
        const json = JSON.parse(body) as Asked['json'];
        this.asked.push({ headers: req.headers, body, json });
        this.askedWaiters = this.askedWaiters.filter((w) => (this.asked.length >= w.n ? (w.resolve(), false) : true));
        const answer = (status: number) => {
          res.writeHead(status);
          res.end();
        };
        switch (json.key) {
          case 'known':
            return answer(200);
          case 'gone':
            return answer(410);
          case 'slow':
            return; // never answered: the client's timeout decides
          case 'flaky':
            return answer(this.broken ? 503 : 204);
          case 'held':
            this.held.push(() => answer(200));
            return;
          default:
            return answer(404);
        }
      });
    });
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    const a = this.server.address();
    if (a && typeof a === 'object') this.port = a.port;
    return this;
  }
  waitAsked(n: number): Promise<void> {
    if (this.asked.length >= n) return Promise.resolve();
    return new Promise((resolve) => this.askedWaiters.push({ n, resolve }));
  }
  release(): void {
    for (const h of this.held.splice(0)) h();
  }
  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((r) => this.server?.close(() => r()));
  }
}

let app: TestApp;
let verifyApp: VerifyApp;
let downPort = 0;

before(async () => {
  verifyApp = await new VerifyApp().start();
  // A port that was free a moment ago: nothing listens there ("the application is down").
  const probe = await new VerifyApp().start();
  downPort = probe.port;
  await probe.stop();
  app = await startSmtpApp({
    routes: `
  - name: app
    addresses: ["incoming+%{key}@in.test"]
    webhook:
      url: http://127.0.0.1:9/unused
      secret: ${SECRET}
    verify:
      url: http://127.0.0.1:${verifyApp.port}/verify
      timeout_ms: 300
      cache_ttl_s: 60
  - name: down
    addresses: ["down+%{key}@in.test"]
    sink: true
    verify:
      url: http://127.0.0.1:${downPort}/verify
  - name: plain
    addresses: ["plain@in.test"]
    sink: true
`,
  });
});
after(async () => {
  await app.close();
  await verifyApp.stop();
});
beforeEach(() => {
  verifyApp.asked = [];
});

async function rcpt(address: string): Promise<string> {
  const smtp = await session(app.smtpPort);
  await smtp.cmd('MAIL FROM:<a@client.test>');
  const r = await smtp.cmd(`RCPT TO:<${address}>`);
  await smtp.quit();
  return r.raw;
}

test('a key the application knows: 250, asked once with a Standard Webhooks signature, then cached', async () => {
  assert.equal(await rcpt('incoming+known@in.test'), '250 2.1.5 Accepted\r\n');
  assert.equal(verifyApp.asked.length, 1);
  const asked = verifyApp.asked[0]!;
  assert.deepEqual(asked.json, { type: 'recipient.verify', route: 'app', address: 'incoming+known@in.test', key: 'known' });
  assert.match(String(asked.headers['webhook-id']), /^verify_[0-9a-f]{24}$/);
  new Webhook(SECRET).verify(asked.body, asked.headers as Record<string, string>); // throws when the signature is wrong
  assert.equal(await rcpt('incoming+known@in.test'), '250 2.1.5 Accepted\r\n');
  assert.equal(verifyApp.asked.length, 1, 'the second RCPT was answered from the cache');
});

test('a key it does not know (404 or 410): 550 5.1.1, also cached', async () => {
  assert.equal(await rcpt('incoming+nobody@in.test'), '550 5.1.1 Recipient address rejected: User unknown\r\n');
  assert.equal(await rcpt('incoming+gone@in.test'), '550 5.1.1 Recipient address rejected: User unknown\r\n');
  assert.equal(await rcpt('incoming+nobody@in.test'), '550 5.1.1 Recipient address rejected: User unknown\r\n');
  assert.equal(verifyApp.asked.length, 2);
});

test('the application down, slow or answering 5xx: 451 4.3.0, never 250; failures are not cached', async () => {
  assert.equal(await rcpt('down+x@in.test'), '451 4.3.0 Error: recipient verification unavailable, try again later\r\n');
  const started = Date.now();
  assert.equal(await rcpt('incoming+slow@in.test'), '451 4.3.0 Error: recipient verification unavailable, try again later\r\n');
  assert.ok(Date.now() - started >= 250, 'waited for the timeout');
  verifyApp.broken = true;
  assert.equal(await rcpt('incoming+flaky@in.test'), '451 4.3.0 Error: recipient verification unavailable, try again later\r\n');
  verifyApp.broken = false;
  assert.equal(await rcpt('incoming+flaky@in.test'), '250 2.1.5 Accepted\r\n');
  assert.equal(verifyApp.asked.filter((a) => a.json.key === 'flaky').length, 2, 'asked again after the failure');
});

test('routes without verify are not asked', async () => {
  assert.equal(await rcpt('plain@in.test'), '250 2.1.5 Accepted\r\n');
  assert.equal(verifyApp.asked.length, 0);
});

test('content queued while a RCPT waits for verification was sent before the 354: 554 5.5.0, nothing stored', async () => {
  const before = countMessages(app);
  const smtp = await session(app.smtpPort);
  await writeFlushed(smtp, 'MAIL FROM:<a@client.test>\r\nRCPT TO:<incoming+held@in.test>\r\nDATA\r\n');
  await verifyApp.waitAsked(1);
  // A second segment while the server still waits on the application.
  await writeFlushed(smtp, 'Subject: early\r\n\r\nbody\r\n.\r\n');
  verifyApp.release();
  assert.equal((await smtp.read()).raw, '250 2.1.0 Accepted\r\n');
  assert.equal((await smtp.read()).raw, '250 2.1.5 Accepted\r\n');
  assert.equal((await smtp.read()).raw, '554 5.5.0 Error: SMTP protocol synchronization\r\n');
  await smtp.waitClosed();
  assert.equal(countMessages(app), before);
});
