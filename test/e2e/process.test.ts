// Whole-process behaviour of bin/mailhook: durability across SIGKILL, clean SIGTERM, config errors, restarts.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execFile, spawnSync } from 'node:child_process';
import { Webhook } from 'standardwebhooks';
import { Consumer } from '../helpers/consumer.js';
import { RawSmtp, sendMail } from '../helpers/smtp-client.js';
import { SECRET, configYaml, tempDir } from '../helpers/app.js';
import { BIN, holdPort, spawnMailhook, type RunningProcess } from '../helpers/process.js';

/** What a test starts here ends with it, passed or failed: its mailhook processes are killed, its folders removed. */
function owned(t: TestContext): { dir(): string; proc<P extends RunningProcess>(p: P): P } {
  const procs: RunningProcess[] = [];
  const dirs: string[] = [];
  t.after(async () => {
    for (const p of procs) {
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
      await p.exit;
    }
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
  return {
    dir: () => {
      const d = tempDir();
      dirs.push(d);
      return d;
    },
    proc: (p) => {
      procs.push(p);
      return p;
    },
  };
}

function haveSwaks(): boolean {
  return spawnSync('swaks', ['--version'], { stdio: 'ignore' }).status === 0;
}

test('kill -9 after 250 while the consumer is down loses nothing: the delivery arrives after restart', async (t) => {
  const own = owned(t);
  const dir = own.dir();
  const down = await holdPort(); // the consumer is down: every connection is reset
  t.after(() => down.release());
  const port = down.port;
  const cfg = join(dir, 'mailhook.yaml');
  writeFileSync(cfg, configYaml({ dir, routes: `
  - name: app
    addresses: ["incoming+%{key}@app.test"]
    webhook: { url: "http://127.0.0.1:${port}/hook", secret: "${SECRET}" }
` }).replace('max_attempts: 5', 'max_attempts: 1000'));
  const first = own.proc(spawnMailhook(['serve', '--config', cfg]));
  await first.started;
  // Send with swaks (a second real client) when present, else nodemailer.
  let reply: string;
  if (haveSwaks()) {
    const out = await new Promise<string>((resolve, reject) =>
      execFile('swaks', ['--server', `127.0.0.1:${first.smtpPort}`, '--from', 'a@sender.test', '--to', 'incoming+durable@app.test', '--header', 'Subject: durable', '--body', 'must survive'], { encoding: 'utf8' }, (err, stdout) => (err ? reject(err) : resolve(stdout))),
    );
    reply = out.split('\n').find((l) => l.includes('<-  250 2.0.0')) ?? out;
  } else {
    if (process.env.CI === 'true') assert.fail('swaks is missing; .ci/run installs it');
    t.diagnostic('swaks not installed: sending with nodemailer instead');
    reply = (await sendMail(first.smtpPort, { from: 'a@sender.test', to: 'incoming+durable@app.test', subject: 'durable', text: 'must survive' })).response;
  }
  assert.match(reply, /250 2\.0\.0 Ok: queued as/);
  first.child.kill('SIGKILL'); // right after 250: no chance to flush anything more
  assert.equal((await first.exit).signal, 'SIGKILL');

  await down.release();
  const consumer = await new Consumer().start(port);
  const second = own.proc(spawnMailhook(['serve', '--config', cfg]));
  try {
    await second.started;
    const [req] = await consumer.waitFor(1);
    const payload = new Webhook(SECRET).verify(req!.body.toString('utf8'), {
      'webhook-id': String(req!.headers['webhook-id']),
      'webhook-timestamp': String(req!.headers['webhook-timestamp']),
      'webhook-signature': String(req!.headers['webhook-signature']),
    }) as { recipients: Array<{ key: string }>; message: { subject: string; text: string } };
    assert.equal(payload.message.subject, 'durable');
    assert.equal(payload.message.text.trim(), 'must survive');
    assert.equal(payload.recipients[0]!.key, 'durable');
    second.child.kill('SIGTERM');
    assert.equal((await second.exit).code, 0);
  } finally {
    if (second.child.exitCode === null) second.child.kill('SIGKILL');
    await consumer.stop();
  }
});

test('SIGKILL mid-delivery: the abandoned lease is resumed at start and the webhook arrives', async (t) => {
  const own = owned(t);
  const dir = own.dir();
  const consumer = await new Consumer().start();
  // The consumer never answers the first request: the process dies while the delivery is leased.
  let hold = true;
  const held: Array<() => void> = [];
  consumer.respond = () => (hold ? new Promise((r) => held.push(() => r({ status: 200 }))) : { status: 200 });
  const cfg = join(dir, 'mailhook.yaml');
  writeFileSync(cfg, configYaml({ dir, routes: `
  - name: app
    addresses: ["*@app.test"]
    webhook: { url: "${consumer.url}", secret: "${SECRET}" }
` }));
  const first = own.proc(spawnMailhook(['serve', '--config', cfg]));
  await first.started;
  const info = await sendMail(first.smtpPort, { from: 'a@sender.test', to: 'x@app.test', subject: 'lease', text: 'body' });
  assert.match(info.response, /^250 /);
  await consumer.received(1);
  first.child.kill('SIGKILL');
  await first.exit;
  hold = false;
  for (const h of held) h();

  const second = own.proc(spawnMailhook(['serve', '--config', cfg]));
  try {
    await second.started;
    const reqs = await consumer.waitFor(2);
    assert.equal(reqs[1]!.headers['webhook-id'], reqs[0]!.headers['webhook-id'], 'same delivery, same webhook-id');
    const payload = new Webhook(SECRET).verify(reqs[1]!.body.toString('utf8'), {
      'webhook-id': String(reqs[1]!.headers['webhook-id']),
      'webhook-timestamp': String(reqs[1]!.headers['webhook-timestamp']),
      'webhook-signature': String(reqs[1]!.headers['webhook-signature']),
    }) as { message: { subject: string } };
    assert.equal(payload.message.subject, 'lease');
    await second.waitForLog((l) => l.msg === 'delivered');
    second.child.kill('SIGTERM');
    assert.equal((await second.exit).code, 0);
  } finally {
    if (second.child.exitCode === null) second.child.kill('SIGKILL');
    await consumer.stop();
  }
});

test('a backlog follows the route as now configured: fixed URL delivers, removed route dead-letters', async (t) => {
  const own = owned(t);
  const dir = own.dir();
  const down = await holdPort();
  t.after(() => down.release());
  const port = down.port;
  const cfg = join(dir, 'mailhook.yaml');
  const write = (routes: string) => writeFileSync(cfg, configYaml({ dir, routes }));
  write(`
  - name: app
    addresses: ["*@app.test"]
    webhook: { url: "http://127.0.0.1:${port}/wrong", secret: "${SECRET}" }
  - name: old
    addresses: ["*@old.test"]
    webhook: { url: "http://127.0.0.1:${port}/old", secret: "${SECRET}" }
`);
  const first = own.proc(spawnMailhook(['serve', '--config', cfg]));
  await first.started;
  await sendMail(first.smtpPort, { from: 'a@s.test', to: ['x@app.test', 'y@old.test'], subject: 'backlog', text: 'x' });
  await first.waitForLog((l) => l.msg === 'delivery failed; will retry' && l.route === 'old');
  first.child.kill('SIGTERM');
  assert.equal((await first.exit).code, 0);

  const consumer = await new Consumer().start();
  write(`
  - name: app
    addresses: ["*@app.test"]
    webhook: { url: "${consumer.url}", secret: "${SECRET}" }
`);
  const second = own.proc(spawnMailhook(['serve', '--config', cfg]));
  try {
    await second.started;
    const [req] = await consumer.waitFor(1);
    assert.equal(req!.url, '/hook');
    const dead = await second.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('route "old" is no longer in the configuration'));
    assert.deepEqual([dead.route, dead.deliveries, dead.level], ['old', 1, 40]);
    second.child.kill('SIGTERM');
    assert.equal((await second.exit).code, 0);
  } finally {
    if (second.child.exitCode === null) second.child.kill('SIGKILL');
    await consumer.stop();
  }
});

test('a route renamed with renamed_from keeps its backlog: pending mail of the old name goes to the new route', async (t) => {
  const own = owned(t);
  const dir = own.dir();
  const down = await holdPort();
  t.after(() => down.release());
  const cfg = join(dir, 'mailhook.yaml');
  const write = (routes: string) => writeFileSync(cfg, configYaml({ dir, routes }));
  write(`
  - name: app-desk
    addresses: ["*@desk.test"]
    webhook: { url: "http://127.0.0.1:${down.port}/hook", secret: "${SECRET}" }
`);
  const first = own.proc(spawnMailhook(['serve', '--config', cfg]));
  await first.started;
  await sendMail(first.smtpPort, { from: 'a@s.test', to: ['x@desk.test'], subject: 'waiting', text: 'x' });
  await first.waitForLog((l) => l.msg === 'delivery failed; will retry' && l.route === 'app-desk');
  first.child.kill('SIGTERM');
  assert.equal((await first.exit).code, 0);

  // Renamed (app_desk would share app-desk's secret variable; the message says how to keep the mail).
  const consumer = await new Consumer().start();
  write(`
  - name: desk
    renamed_from: [app-desk]
    addresses: ["*@desk.test"]
    webhook: { url: "${consumer.url}", secret: "${SECRET}" }
`);
  const second = own.proc(spawnMailhook(['serve', '--config', cfg]));
  try {
    await second.started;
    const renamed = await second.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('route renamed'));
    assert.deepEqual({ from: renamed.from, route: renamed.route, deliveries: renamed.deliveries }, { from: 'app-desk', route: 'desk', deliveries: 1 });
    const [req] = await consumer.waitFor(1);
    const payload = JSON.parse(req!.body.toString('utf8')) as { route: string; message: { subject: string } };
    assert.deepEqual({ route: payload.route, subject: payload.message.subject }, { route: 'desk', subject: 'waiting' });
    second.child.kill('SIGTERM');
    assert.equal((await second.exit).code, 0);
    assert.ok(!second.lines.some((l) => /dead-lettered/.test(String(l.msg))), 'nothing dead-lettered');
  } finally {
    if (second.child.exitCode === null) second.child.kill('SIGKILL');
    await consumer.stop();
  }
});

test('SIGTERM: SMTP stops taking mail, the process closes the spool and exits 0', async (t) => {
  const own = owned(t);
  const dir = own.dir();
  const cfg = join(dir, 'mailhook.yaml');
  writeFileSync(cfg, configYaml({ dir, routes: `
  - name: sink
    addresses: ["*@app.test"]
    sink: true
` }));
  const p = own.proc(spawnMailhook(['serve', '--config', cfg]));
  await p.started;
  const { smtp } = await RawSmtp.open(p.smtpPort);
  t.after(() => smtp.destroy());
  await smtp.cmd('EHLO c');
  p.child.kill('SIGTERM');
  await p.waitForLog((l) => l.msg === 'stopping');
  // A session that was open gets 421 for its next command, or has been closed (no answer, and the socket closed).
  const r = await smtp.cmd('MAIL FROM:<a@b.test>').catch((err: unknown) => {
    assert.ok(smtp.closed, `no reply, and the session is still open: ${String(err)}`);
    return undefined;
  });
  if (r) assert.equal(r.code, 421);
  assert.equal((await p.exit).code, 0);
  assert.ok(p.lines.some((l) => l.msg === 'stopped'));
  smtp.destroy();
});

test('a bad config exits non-zero before listening, with one line per problem', (t) => {
  const dir = owned(t).dir();
  const cfg = join(dir, 'bad.yaml');
  writeFileSync(cfg, `smtp:\n  listen: nope\n  colour: blue\nroutes:\n  - name: a\n    addresses: ["x@y.test"]\n    webhook: { url: "http://h/x" }\n`);
  const r = spawnSync(process.execPath, [BIN, 'serve', '--config', cfg], { encoding: 'utf8' });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /invalid configuration in .*bad\.yaml/);
  assert.match(r.stderr, /- smtp\.listen: "nope" is not a listen address/);
  assert.match(r.stderr, /- smtp: unknown key "colour"/);
  assert.match(r.stderr, /- routes\[0\]\.webhook\.secret: missing/);
  assert.equal(r.stdout.includes('mailhook started'), false);
  const check = spawnSync(process.execPath, [BIN, 'check-config', '--config', cfg], { encoding: 'utf8' });
  assert.equal(check.status, 2);
  assert.match(check.stderr, /smtp\.listen/);
});

test('a port already in use is a clear start-up error', async (t) => {
  const dir = owned(t).dir();
  const cfg = join(dir, 'mailhook.yaml');
  const { createServer } = await import('node:net');
  const blocker = createServer().listen(0, '127.0.0.1');
  await new Promise((r) => blocker.once('listening', r));
  const port = (blocker.address() as { port: number }).port;
  writeFileSync(cfg, configYaml({ dir, routes: `
  - name: sink
    addresses: ["*@app.test"]
    sink: true
` }).replace('listen: "127.0.0.1:0"\n  hostname', `listen: "127.0.0.1:${port}"\n  hostname`));
  const r = spawnSync(process.execPath, [BIN, 'serve', '--config', cfg], { encoding: 'utf8' });
  // The HTTP port, set by the environment: the message names the variable.
  const viaEnv = spawnSync(process.execPath, [BIN, 'serve', '--config', cfg], { encoding: 'utf8', env: { ...process.env, MAILHOOK_SMTP_LISTEN: '127.0.0.1:0', MAILHOOK_HTTP_LISTEN: `127.0.0.1:${port}` } });
  blocker.close();
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, new RegExp(`cannot listen for SMTP on 127\\.0\\.0\\.1:${port}: .*EADDRINUSE.*another program .*; check smtp\\.listen\n`));
  assert.equal(viaEnv.status, 2, viaEnv.stderr);
  assert.match(viaEnv.stderr, new RegExp(`cannot listen for HTTP on 127\\.0\\.0\\.1:${port}: .*EADDRINUSE.*; check http\\.listen, set by the environment variable MAILHOOK_HTTP_LISTEN\n`));
  // A problem of the machine, not a bug: the log says it without a stack or a "connection error".
  for (const out of [r.stdout, viaEnv.stdout]) {
    assert.match(out, /mailhook could not start/);
    assert.doesNotMatch(out, /"stack"|smtp connection error/);
  }
});

test('a spool.path that is not a mailhook spool: exit 2 naming the key and the file', async (t) => {
  const dir = owned(t).dir();
  const cfg = join(dir, 'mailhook.yaml');
  writeFileSync(cfg, configYaml({ dir, routes: `
  - name: sink
    addresses: ["*@app.test"]
    sink: true
` }));
  const notSpool = join(dir, 'cert.pem');
  writeFileSync(notSpool, '-----BEGIN CERTIFICATE-----\n' + 'QUJD'.repeat(200) + '\n-----END CERTIFICATE-----\n');
  const r = spawnSync(process.execPath, [BIN, 'serve', '--config', cfg], { encoding: 'utf8', env: { ...process.env, MAILHOOK_SPOOL_PATH: notSpool } });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, new RegExp(`spool\\.path ${notSpool.replace(/[.]/g, '\\.')} is not a mailhook spool \\(file is not a database\\)`));
  assert.doesNotMatch(r.stdout, /"stack"/);
});

test('the shipped default config starts, accepts mail for *@localhost and lists it in the sink', async (t) => {
  const own = owned(t);
  const dir = own.dir();
  const p = own.proc(spawnMailhook(['serve', '--config', new URL('../../config/mailhook.yaml', import.meta.url).pathname], {
    MAILHOOK_SMTP_LISTEN: '127.0.0.1:0',
    MAILHOOK_HTTP_LISTEN: '127.0.0.1:0',
    MAILHOOK_SPOOL_PATH: join(dir, 'spool.db'),
  }));
  try {
    await p.started;
    const info = await sendMail(p.smtpPort, { from: 'me@example.test', to: 'you@localhost', subject: 'hello sink', text: 'hi' });
    assert.match(info.response, /^250 2\.0\.0 Ok: queued as (\w+)/);
    const id = /queued as (\w+)/.exec(info.response)![1];
    const list = (await (await fetch(`http://127.0.0.1:${p.httpPort}/sink/messages`)).json()) as { messages: Array<{ id: string; recipients: unknown }> };
    assert.equal(list.messages[0]?.id, id);
    assert.deepEqual(list.messages[0]?.recipients, [{ address: 'you@localhost', key: null }]);
    const raw = await (await fetch(`http://127.0.0.1:${p.httpPort}/sink/messages/${id}/raw`)).text();
    assert.match(raw, /Subject: hello sink/);
    p.child.kill('SIGTERM');
    assert.equal((await p.exit).code, 0);
  } finally {
    if (p.child.exitCode === null) p.child.kill('SIGKILL');
  }
});
