// The real bin/mailhook (built with tsc) against a running app: send-test, messages list|show|raw, replay, errors.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createServer } from 'node:net';
import { once } from 'node:events';
import { Consumer } from '../helpers/consumer.js';
import { sendMail } from '../helpers/smtp-client.js';
import { SECRET, startTestApp, until, tempDir, type TestApp } from '../helpers/app.js';
import { ADMIN_TOKEN, adminYaml, startAdminApp } from '../admin/helpers.js';
import { makeCert, opensslMissing } from '../smtp/support.js';

const BIN = fileURLToPath(new URL('../../bin/mailhook', import.meta.url));
const BUILT = fileURLToPath(new URL('../../dist/cli/admin-commands.js', import.meta.url));

interface Run {
  code: number;
  stdout: Buffer;
  out: string;
  err: string;
}

function mailhook(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { env: { PATH: process.env.PATH ?? '', ...env }, encoding: 'buffer', timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0;
      resolve({ code, stdout, out: stdout.toString('utf8'), err: stderr.toString('utf8') });
    });
  });
}

describe('mailhook CLI against a running server', () => {
  let app: TestApp;
  const ok = new Consumer();
  const broken = new Consumer();
  let conn: string[];
  const env = { MAILHOOK_ADMIN_TOKEN: ADMIN_TOKEN };

  before(async () => {
    assert.ok(existsSync(BUILT), 'dist/ is missing the CLI: run `npx tsc -p tsconfig.json` (npm test does it in pretest)');
    await ok.start();
    await broken.start();
    broken.respond = () => ({ status: 422, body: 'no such ticket' });
    app = await startAdminApp({
      routes: `
  - name: app
    addresses: ["app@in.test"]
    webhook: { url: "${ok.url}", secret: "${SECRET}" }
  - name: desk
    addresses: ["desk-%{key}@desk.test"]
    webhook: { url: "${broken.url}", secret: "${SECRET}" }
`,
    });
    conn = ['--url', app.httpUrl];
  });
  after(async () => {
    await app?.close();
    await ok.stop();
    await broken.stop();
  });

  test('send-test sends over SMTP and waits for the delivery: exit 0 when delivered', async () => {
    const r = await mailhook(['send-test', '--to', 'app@in.test', '--smtp', `127.0.0.1:${app.smtpPort}`, ...conn], env);
    assert.equal(r.code, 0, r.err + r.out);
    const id = /delivered: message ([a-z0-9]+)/.exec(r.out)?.[1];
    assert.ok(id, r.out);
    assert.match(r.out, /^ROUTE +STATUS +ATTEMPTS +HTTP +LATENCY +ERROR\napp +delivered +1 +200 +\d+ ms +-\n/m);
    assert.equal(ok.requests.length, 1);
    const payload = ok.json<{ message_id: string; message: { subject: string } }>(0);
    assert.equal(payload.message_id, id);
    assert.equal(payload.message.subject, 'mailhook send-test');
  });

  test('send-test exits 1 and says why when the delivery is dead-lettered (--json)', async () => {
    const r = await mailhook(['send-test', '--to', 'desk-42@desk.test', '--smtp', `127.0.0.1:${app.smtpPort}`, '--json', ...conn], env);
    assert.equal(r.code, 1, r.err);
    const out = JSON.parse(r.out) as { outcome: string; deliveries: Array<{ route: string; status: string; last_status_code: number; last_error: string; attempt_log: unknown[] }> };
    assert.equal(out.outcome, 'failed');
    assert.equal(out.deliveries[0]!.route, 'desk');
    assert.equal(out.deliveries[0]!.status, 'dead');
    assert.equal(out.deliveries[0]!.last_status_code, 422);
    assert.match(out.deliveries[0]!.last_error, /no such ticket/);
    assert.equal(out.deliveries[0]!.attempt_log.length, 1);
  });

  test('messages list: a table by default, filters, and --json', async () => {
    const table = await mailhook(['messages', 'list', ...conn], env);
    assert.equal(table.code, 0, table.err);
    const lines = table.out.trimEnd().split('\n');
    assert.match(lines[0]!, /^ID +RECEIVED \(UTC\) +FROM +TO +SUBJECT +DELIVERIES$/);
    assert.equal(lines.length, 3);
    assert.match(lines[1]!, /desk-42@desk\.test +mailhook send-test +desk:dead$/);
    assert.match(lines[2]!, /app@in\.test +mailhook send-test +app:delivered$/);
    const dead = await mailhook(['messages', 'list', '--status', 'dead', '--json', ...conn], env);
    const page = JSON.parse(dead.out) as { messages: Array<{ rcpt_to: string[] }>; next_cursor: string | null };
    assert.deepEqual(page.messages.map((m) => m.rcpt_to), [['desk-42@desk.test']]);
    const paged = await mailhook(['messages', 'list', '--limit', '1', ...conn], env);
    assert.match(paged.err, /^more: add --cursor \S+$/m);
    const bad = await mailhook(['messages', 'list', '--status', 'lost', ...conn], env);
    assert.equal(bad.code, 1);
    assert.match(bad.err, /^mailhook: query parameter status must be one of "pending", "delivering", "delivered", "dead", "dropped"\n/);
  });

  test('messages show and raw', async () => {
    const list = JSON.parse((await mailhook(['messages', 'list', '--key', '42', '--json', ...conn], env)).out) as { messages: Array<{ id: string }> };
    const id = list.messages[0]!.id;
    const show = await mailhook(['messages', 'show', id, ...conn], env);
    assert.equal(show.code, 0, show.err);
    assert.match(show.out, new RegExp(`^id +${id}$`, 'm'));
    assert.match(show.out, /^subject +mailhook send-test$/m);
    assert.match(show.out, /^delivery \w+ +route desk +dead +1 attempt\(s\)$/m);
    assert.match(show.out, /^ +1 +\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ +422 +\d+ ms +dead +HTTP 422.*no such ticket/m);
    assert.ok(show.out.endsWith('\n') && !/ +$/m.test(show.out), `no line ends in spaces, the output ends with a newline: ${JSON.stringify(show.out.slice(-40))}`);
    const raw = await mailhook(['messages', 'raw', id, ...conn], env);
    assert.equal(raw.code, 0, raw.err);
    assert.deepEqual(raw.stdout, await app.spool.readRaw(id));
    const dir = tempDir();
    const out = join(dir, 'm.eml');
    assert.equal((await mailhook(['messages', 'raw', id, '-o', out, ...conn], env)).code, 0);
    assert.deepEqual(readFileSync(out), await app.spool.readRaw(id));
    assert.equal(statSync(out).mode & 0o777, 0o600);
    // An existing file is not overwritten; a file that cannot be made is named, with why.
    writeFileSync(join(dir, 'keep'), 'mine');
    const exists = await mailhook(['messages', 'raw', id, '-o', join(dir, 'keep'), ...conn], env);
    assert.equal(exists.code, 1);
    assert.equal(exists.err, `mailhook: --output ${join(dir, 'keep')} exists; mailhook does not overwrite it: remove it or name a new file\n`);
    assert.equal(readFileSync(join(dir, 'keep'), 'utf8'), 'mine');
    const nowhere = await mailhook(['messages', 'raw', id, '-o', join(dir, 'no', 'such', 'x.eml'), ...conn], env);
    assert.equal(nowhere.code, 1);
    assert.equal(nowhere.err, `mailhook: cannot create --output ${join(dir, 'no', 'such', 'x.eml')}: ENOENT; check that its folder exists and is writable\n`);
    const missing = await mailhook(['messages', 'show', 'zzzzzzzz', ...conn], env);
    assert.equal(missing.code, 1);
    assert.match(missing.err, /no message zzzzzzzz/);
  });

  test('a reader that closes the pipe early (| head -c 10) ends the CLI quietly with exit 0, not an EPIPE crash', async () => {
    await sendMail(app.smtpPort, { from: 'big@x.test', to: 'app@in.test', subject: 'epipe-big', text: `${'0123456789abcdef'.repeat(64)}\n`.repeat(2048) });
    const list = JSON.parse((await mailhook(['messages', 'list', '--recipient', 'app@in.test', '--json', ...conn], env)).out) as { messages: Array<{ id: string; subject: string }> };
    const id = list.messages.find((m) => m.subject === 'epipe-big')!.id;
    for (const args of [['messages', 'raw', id], ['messages', 'list', '--json', '--limit', '500']]) {
      const child = spawn(process.execPath, [BIN, ...args, ...conn], { env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
      let err = '';
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      // Like head -c 10: read the first bytes, then close the pipe.
      await once(child.stdout, 'data');
      child.stdout.destroy();
      const [code] = (await once(child, 'exit')) as [number | null];
      assert.equal(err, '', `${args.join(' ')}: ${err}`);
      assert.equal(code, 0, args.join(' '));
    }
  });

  test('replay --route works through the backlog in batches, showing progress; the deliveries then succeed', async () => {
    // Four more dead letters on desk.
    for (let i = 0; i < 4; i++) {
      const r = await mailhook(['send-test', '--to', `desk-${i}@desk.test`, '--smtp', `127.0.0.1:${app.smtpPort}`, '--timeout', '10', ...conn], env);
      assert.equal(r.code, 1, r.err);
    }
    const dry = await mailhook(['replay', '--route', 'desk', '--dry-run', ...conn], env);
    assert.equal(dry.out, '5 dead-lettered deliveries match (dry run: nothing replayed)\n');
    broken.respond = () => ({ status: 200 });
    const before = broken.requests.length;
    const r = await mailhook(['replay', '--route', 'desk', '--batch', '2', ...conn], env);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.err, 'replayed 2/5\nreplayed 4/5\nreplayed 5/5\n');
    assert.equal(r.out, 'replayed 5 dead-lettered deliveries; they are due now\n');
    await broken.waitFor(before + 5);
    await until(() => app.spool.jobs.counts().dead === 0 && app.spool.jobs.counts().pending === 0 && app.spool.jobs.counts().delivering === 0, 10_000, 'replays to finish');
    const again = await mailhook(['replay', '--dead', '--json', ...conn], env);
    assert.deepEqual(JSON.parse(again.out), { replayed: 0, matched: 0, dry_run: true });
  });

  test('replay --delivery of a route no longer configured says why nothing is replayed, and what to do', async () => {
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'app@in.test', subject: 'old route', text: 'x' });
    await until(() => app.spool.queries.listMessages({}, { limit: 10 }).messages.some((m) => m.subject === 'old route' && m.status === 'delivered'), 10_000, 'the message delivered');
    const id = app.spool.queries.listMessages({}, { limit: 10 }).messages.find((m) => m.subject === 'old route')!.deliveries[0]!.id;
    // A spool from before the route was removed: its dead letter stays, replayable once the route is back.
    app.spool.db.prepare(`UPDATE deliveries SET route = 'retired', status = 'dead' WHERE id = ?`).run(id);
    try {
      const r = await mailhook(['replay', '--delivery', id, ...conn], env);
      assert.equal(r.code, 1, 'a named delivery left out is a failure for a script');
      assert.equal(r.out, '0 dead-lettered deliveries match; nothing to replay\n');
      assert.equal(r.err, `delivery ${id} not replayed: route "retired" is no longer in the configuration: a replayed delivery would be dead-lettered again at once; add the route back (or a route with renamed_from: [retired]), restart mailhook, then replay\n`);
      const json = JSON.parse((await mailhook(['replay', '--delivery', id, '--json', ...conn], env)).out) as { replayed: number; skipped: Array<{ id: string; route: string; status: string; reason: string }> };
      assert.equal(json.replayed, 0);
      assert.deepEqual(json.skipped.map((s) => [s.id, s.route, s.status]), [[id, 'retired', 'dead']]);
      assert.match(json.skipped[0]!.reason, /add the route back/);
      assert.equal((app.spool.db.prepare(`SELECT status FROM deliveries WHERE id = ?`).get(id) as { status: string }).status, 'dead', 'left dead');
    } finally {
      app.spool.db.prepare(`UPDATE deliveries SET route = 'app', status = 'delivered' WHERE id = ?`).run(id);
    }
    // A delivered one named without --delivered: left out with what to do; with it, sent again (exit 0).
    const delivered = await mailhook(['replay', '--delivery', id, ...conn], env);
    assert.equal(delivered.code, 1);
    assert.equal(delivered.err, `delivery ${id} not replayed: delivered: send it again with status delivered (mailhook replay --delivered)\n`);
    const again = await mailhook(['replay', '--delivered', '--delivery', id, ...conn], env);
    assert.equal(again.code, 0, again.err);
    assert.equal(again.out, 'replayed 1 delivered delivery; they are due now\n');
    await until(() => app.spool.getDelivery(id)?.status === 'delivered', 10_000, 'the delivery sent again');
  });

  test('retry --route sends a delivery waiting out a Retry-After now; --dry-run counts; no selector is a usage error', async () => {
    broken.respond = () => ({ status: 503, headers: { 'retry-after': '3600' } });
    const before = broken.requests.length;
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'desk-retry@desk.test', subject: 'retry', text: 'x' });
    await broken.waitFor(before + 1);
    await until(() => (app.spool.db.prepare(`SELECT COUNT(*) AS n FROM deliveries WHERE status = 'pending' AND attempts = 1`).get() as { n: number }).n === 1, 10_000, 'the 503 to be recorded');
    const vague = await mailhook(['retry', ...conn], env);
    assert.equal(vague.code, 2);
    assert.match(vague.err, /say what to retry/);
    const dry = await mailhook(['retry', '--route', 'desk', '--dry-run', ...conn], env);
    assert.equal(dry.out, '1 pending delivery waits for its next attempt (dry run: nothing changed)\n');
    // New mail for the paused route waits too: due, never tried, held only by the pause.
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'desk-retry@desk.test', subject: 'retry 2', text: 'x' });
    broken.respond = () => ({ status: 200 });
    const r = await mailhook(['retry', '--route', 'desk', ...conn], env);
    assert.equal(r.code, 0, r.err);
    // The 503's Retry-After had paused the route too: the retry lifts that and says so, and what that sends.
    assert.equal(r.out, "1 pending delivery made due now\nresumed, after a pause for their consumer's Retry-After: desk (1 more delivery, due and held only by the pause, go out now too)\n");
    await broken.waitFor(before + 3);
    await until(() => app.spool.jobs.counts().pending === 0 && app.spool.jobs.counts().delivering === 0, 10_000, 'the retry to finish');
    assert.deepEqual(JSON.parse((await mailhook(['retry', '--all', '--json', ...conn], env)).out), { retried: 0, dry_run: false, resumed: [], released: 0 });
  });

  test('status: each route\'s queue, success and consumer, each mailbox\'s state; exit 1 when a mailbox is not read', async () => {
    const r = await mailhook(['status', ...conn], env);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out.split('\n')[0]!, /^ROUTE +KIND +PENDING +DEAD +SUCCESS \(1h\) +CONSUMER +LAST FAILURE$/);
    assert.match(r.out, /^app +webhook +0 +0 +100% of [1-9]\d* +ok *$/m);
    assert.match(r.out, /^desk +webhook +0 +\d+ +[\d.]+% of [1-9]\d* +ok +\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ 503 HTTP 503$/m, 'the failures of the earlier tests, the last one (the retry test\'s 503)');
    assert.doesNotMatch(r.out, /MAILBOX/, 'no mailbox table without a bridge');
    const json = JSON.parse((await mailhook(['status', '--json', ...conn], env)).out) as { routes: { routes: Array<{ route: string }> }; mailboxes: { enabled: boolean } };
    assert.deepEqual(json.routes.routes.map((x) => x.route), ['app', 'desk']);
    assert.equal(json.mailboxes.enabled, false);
    // A mailbox whose server refuses connections: listed as not read, and the exit status says so.
    const closed = createServer();
    await new Promise<void>((ok) => closed.listen(0, '127.0.0.1', ok));
    const port = (closed.address() as { port: number }).port;
    await new Promise<void>((ok) => closed.close(() => ok()));
    const imap = `imap:\n  - name: support\n    host: 127.0.0.1\n    port: ${port}\n    ssl: false\n    user: u\n    password: p\n    reconnect_delay_ms: 50\n    reconnect_max_delay_ms: 100\n`;
    const other = await startTestApp({ routes: '', yaml: (dir) => `${adminYaml({ routes: '  - name: keep\n    addresses: ["*@keep.test"]\n    sink: true\n', dir })}${imap}` });
    try {
      await until(() => other.mailboxes.bridges[0]!.status.consecutiveFailures >= 1, 10_000, 'the mailbox to fail');
      const bad = await mailhook(['status', '--url', other.httpUrl], env);
      assert.equal(bad.code, 1, bad.err);
      assert.match(bad.out, /^MAILBOX +METHOD +STATE +SINCE \(UTC\) +FAILURES +LAST ERROR$/m);
      assert.match(bad.out, /^support \(NOT READ\) +imap +(backoff|connecting) +\S+ \S+ +[1-9]\d* +network: /m);
    } finally {
      await other.close();
    }
  });

  test('errors: a wrong token, no token, no server, nothing to replay, a token file', async () => {
    const wrong = await mailhook(['messages', 'list', ...conn], { MAILHOOK_ADMIN_TOKEN: 'wrong-token-wrong-token' });
    assert.equal(wrong.code, 77);
    assert.equal(wrong.err, 'mailhook: the admin API refused the token: the admin token is wrong\n');
    const none = await mailhook(['messages', 'list', ...conn]);
    assert.equal(none.code, 2);
    assert.match(none.err, /no admin token: pass --token-file FILE, set MAILHOOK_ADMIN_TOKEN/);
    // A port that was free a moment ago: nothing listens there.
    const probe = createServer().listen(0, '127.0.0.1');
    await once(probe, 'listening');
    const port = (probe.address() as { port: number }).port;
    await new Promise((r) => probe.close(r));
    const down = await mailhook(['messages', 'list', '--url', `http://127.0.0.1:${port}`], env);
    assert.equal(down.code, 69);
    assert.match(down.err, new RegExp(`cannot reach mailhook at http://127\\.0\\.0\\.1:${port}: ECONNREFUSED`));
    // A user and password in the URL: refused without repeating them.
    const creds = await mailhook(['messages', 'list', '--url', 'http://ops:ProxyPassw0rd@127.0.0.1:9'], env);
    assert.equal(creds.code, 2);
    assert.match(creds.err, /^mailhook: --url \(or MAILHOOK_URL\) must not carry a user or password/);
    assert.ok(!creds.err.includes('ProxyPassw0rd'), creds.err);
    // Not a URL at all (a port past 65535): a usage error, with a user and password in it not repeated either.
    const badPort = await mailhook(['messages', 'list', '--url', 'http://ops:ProxyPassw0rd@127.0.0.1:99999'], env);
    assert.equal(badPort.code, 2);
    assert.equal(badPort.err, 'mailhook: --url must be the listener\'s base URL, like http://127.0.0.1:8025 (got "http://…@127.0.0.1:99999")\n');
    const vague = await mailhook(['replay', ...conn], env);
    assert.equal(vague.code, 2);
    assert.match(vague.err, /say what to replay/);
    const dir = tempDir();
    writeFileSync(join(dir, 'token'), `${ADMIN_TOKEN}\n`);
    const viaFile = await mailhook(['messages', 'list', '--json', '--token-file', join(dir, 'token'), ...conn]);
    assert.equal(viaFile.code, 0, viaFile.err);
    // A token fetch cannot send (two lines, a control character) is refused before any request, and not repeated.
    writeFileSync(join(dir, 'two-lines'), `${ADMIN_TOKEN}\nsecond-line\n`);
    const twoLines = await mailhook(['messages', 'list', '--token-file', join(dir, 'two-lines'), ...conn]);
    assert.equal(twoLines.code, 2);
    assert.equal(twoLines.err, `mailhook: the admin token in the token file ${join(dir, 'two-lines')} must be one word of visible ASCII characters (no spaces, line breaks or control characters): it is sent as "Authorization: Bearer <token>"\n`);
    const control = await mailhook(['messages', 'list', ...conn], { MAILHOOK_ADMIN_TOKEN: `${ADMIN_TOKEN}\u0001` });
    assert.equal(control.code, 2);
    assert.match(control.err, /^mailhook: the admin token in MAILHOOK_ADMIN_TOKEN must be one word/);
    for (const r of [twoLines, control]) assert.ok(!r.err.includes(ADMIN_TOKEN) && !r.out.includes(ADMIN_TOKEN), r.err);
  });

  test('--config: secrets only the service can read (systemd credentials, its environment, a root-only key) do not stop the CLI', async () => {
    const dir = tempDir();
    const cfg = join(dir, 'mailhook.yaml');
    writeFileSync(cfg, `smtp:
  tls: { key_file: /run/credentials/mailhook.service/tls.key, cert_file: /run/credentials/mailhook.service/tls.crt }
http:
  listen: "${app.httpUrl.replace('http://', '')}"
routes:
  - name: gl
    addresses: ["incoming+%{key}@gl.test"]
    webhook: { url: "https://gl.test/api/v4/internal/mail_room/incoming_email", format: gitlab, secret_file: /run/credentials/mailhook.service/gitlab_secret }
imap:
  - { name: box, host: imap.x.test, user: u }
  - { name: graph, inbox_method: microsoft_graph, user: u, inbox_options: { tenant_id: t, client_id: c } }
`);
    const r = await mailhook(['messages', 'list', '--json', '-c', cfg], env);
    assert.equal(r.code, 0, r.err);
    assert.ok(Array.isArray((JSON.parse(r.out) as { messages: unknown[] }).messages));
    // check-config (and serve) stay strict.
    const check = await mailhook(['check-config', '--config', cfg]);
    assert.equal(check.code, 2);
    for (const key of ['routes[0].webhook.secret_file', 'imap[0].password_file', 'imap[1].inbox_options.client_secret_file']) assert.ok(check.err.includes(`${key}: `), `${key} in ${check.err}`);
  });
});

test('a 401 that is not JSON (a proxy in front) still exits 77, the refused-token code', async () => {
  const proxy = createServer((socket) => {
    socket.once('data', () => socket.end('HTTP/1.1 401 Unauthorized\r\ncontent-type: text/html\r\nwww-authenticate: Basic realm="x"\r\nconnection: close\r\ncontent-length: 22\r\n\r\n<h1>Unauthorized</h1>\n'));
  }).listen(0, '127.0.0.1');
  await once(proxy, 'listening');
  try {
    const r = await mailhook(['messages', 'list', '--url', `http://127.0.0.1:${(proxy.address() as { port: number }).port}`], { MAILHOOK_ADMIN_TOKEN: ADMIN_TOKEN });
    assert.equal(r.code, 77, r.err);
    assert.match(r.err, /^mailhook: the admin API refused the token: GET \/api\/messages\?.*HTTP 401, not JSON: <h1>Unauthorized/);
  } finally {
    proxy.close();
  }
});

describe('mailhook CLI with --config, as an operator runs it beside the service', () => {
  test('send-test -c against an LMTP listener; route secrets absent from the shell (they live in the service\'s environment)', async () => {
    const consumer = new Consumer();
    await consumer.start();
    const routes = `
  - name: app
    addresses: ["app@in.test"]
    webhook: { url: "${consumer.url}", secret: "${SECRET}" }
`;
    const app = await startTestApp({ routes: '', yaml: (dir) => adminYaml({ routes, dir }).replace('  greeting_delay_ms: 0\n', '  greeting_delay_ms: 0\n  lmtp: true\n') });
    try {
      const dir = tempDir();
      const cfg = join(dir, 'mailhook.yaml');
      // The operator's copy: the same listeners, the route's secret left to MAILHOOK_ROUTE_APP_SECRET (not set here).
      writeFileSync(cfg, `smtp:\n  listen: "127.0.0.1:${app.smtpPort}"\n  lmtp: true\nhttp:\n  listen: "${app.httpUrl.replace('http://', '')}"\nroutes:\n  - name: app\n    addresses: ["app@in.test"]\n    webhook: { url: "${consumer.url}" }\n`);
      const r = await mailhook(['send-test', '--to', 'app@in.test', '-c', cfg], { MAILHOOK_ADMIN_TOKEN: ADMIN_TOKEN });
      assert.equal(r.code, 0, r.err);
      await consumer.waitFor(1);
      // check-config stays strict: serving needs the secret.
      const check = await mailhook(['check-config', '--config', cfg]);
      assert.equal(check.code, 2);
      assert.match(check.err, /routes\[0\]\.webhook\.secret: missing/);
    } finally {
      await app.close();
      await consumer.stop();
    }
  });

  test('send-test upgrades with STARTTLS when offered (smtp.tls.required); --no-starttls gets the 530', { skip: opensslMissing() }, async () => {
    const consumer = new Consumer();
    await consumer.start();
    const routes = `
  - name: app
    addresses: ["app@in.test"]
    webhook: { url: "${consumer.url}", secret: "${SECRET}" }
`;
    const certs = makeCert(tempDir(), 'mx');
    const tls = `  tls:\n    key_file: ${certs.key}\n    cert_file: ${certs.cert}\n    required: true\n    watch: false\n`;
    const app = await startTestApp({ routes: '', yaml: (dir) => adminYaml({ routes, dir }).replace('  greeting_delay_ms: 0\n', `  greeting_delay_ms: 0\n${tls}`) });
    try {
      const args = ['send-test', '--to', 'app@in.test', '--smtp', `127.0.0.1:${app.smtpPort}`, '--url', app.httpUrl];
      const r = await mailhook(args, { MAILHOOK_ADMIN_TOKEN: ADMIN_TOKEN });
      assert.equal(r.code, 0, r.err + r.out);
      assert.match(r.err, /via 127\.0\.0\.1:\d+ \(STARTTLS, TLSv1\.[23]\): message [a-z0-9]+;/);
      await consumer.waitFor(1);
      const payload = consumer.json<{ envelope: { tls: { protocol: string } | null } }>(0);
      assert.match(payload.envelope.tls?.protocol ?? 'none', /^TLSv1\.[23]$/);
      const plain = await mailhook([...args, '--no-starttls'], { MAILHOOK_ADMIN_TOKEN: ADMIN_TOKEN });
      assert.equal(plain.code, 1, plain.err);
      assert.match(plain.err, /^mailhook: MAIL FROM refused: 530 5\.7\.0 /m);
      assert.equal(consumer.requests.length, 1);
    } finally {
      await app.close();
      await consumer.stop();
    }
  });
});

describe('mailhook CLI output is safe for a terminal', () => {
  test('control characters and bidi overrides from mail are shown as U+FFFD in messages list and show', async () => {
    const consumer = new Consumer();
    await consumer.start();
    const app = await startAdminApp({ routes: `\n  - name: app\n    addresses: ["app@in.test"]\n    webhook: { url: "${consumer.url}", secret: "${SECRET}" }\n` });
    try {
      // Sets the terminal's title, erases the line and moves the cursor up over the row before; then reverses text.
      const subject = 'invoice \u001b]0;owned\u0007\u001b[2K\u001b[1A paid \u202egnp.exe';
      await sendMail(app.smtpPort, { from: 'a@x.test', to: 'app@in.test', subject, text: 'x' });
      await consumer.waitFor(1);
      const conn = ['--url', app.httpUrl];
      const env = { MAILHOOK_ADMIN_TOKEN: ADMIN_TOKEN };
      const list = await mailhook(['messages', 'list', ...conn], env);
      assert.equal(list.code, 0, list.err);
      const shown = 'invoice \ufffd]0;owned\ufffd\ufffd[2K\ufffd[1A paid \ufffdgnp.exe';
      assert.ok(list.out.includes(shown), list.out);
      const id = /^([a-z0-9]+) /m.exec(list.out.split('\n')[1] ?? '')?.[1];
      assert.ok(id, list.out);
      const show = await mailhook(['messages', 'show', id, ...conn], env);
      assert.equal(show.code, 0, show.err);
      assert.match(show.out, new RegExp(`^subject +${shown.replace(/[[\]]/g, '\\$&')}$`, 'm'));
      for (const out of [list.out, show.out]) assert.doesNotMatch(out, /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e]/);
      // --json keeps the subject as it is (JSON escapes it).
      const json = JSON.parse((await mailhook(['messages', 'list', '--json', ...conn], env)).out) as { messages: Array<{ subject: string }> };
      assert.equal(json.messages[0]!.subject, subject);
    } finally {
      await app.close();
      await consumer.stop();
    }
  });
});

test('messages raw -o: a download cut short removes its file and says so (a listener that drops the connection mid-body)', async () => {
  // Not mailhook: a listener that answers 200, sends part of the message and resets the connection, as a proxy or a
  // network failure would; the CLI is what is tested.
  const server = createServer((socket) => {
    socket.once('data', () => {
      socket.write('HTTP/1.1 200 OK\r\ncontent-type: message/rfc822\r\ncontent-length: 100000\r\n\r\nSubject: cut short\r\n\r\nthe first part');
      setImmediate(() => socket.resetAndDestroy());
    });
  }).listen(0, '127.0.0.1');
  await once(server, 'listening');
  const dir = tempDir();
  const out = join(dir, 'cut.eml');
  try {
    const r = await mailhook(['messages', 'raw', 'abcdef12', '-o', out, '--url', `http://127.0.0.1:${(server.address() as { port: number }).port}`], { MAILHOOK_ADMIN_TOKEN: ADMIN_TOKEN });
    assert.equal(r.code, 1, r.err);
    assert.match(r.err, new RegExp(`^mailhook: the download of abcdef12 failed \\(.+\\); ${out.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} was removed: run the command again\\n$`));
    assert.equal(existsSync(out), false, 'no partial file left behind');
  } finally {
    server.close();
  }
});
