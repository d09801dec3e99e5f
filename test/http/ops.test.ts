// Health, readiness and Prometheus metrics over real HTTP, after real SMTP traffic; secrets and bodies stay out of logs.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Consumer } from '../helpers/consumer.js';
import { RawSmtp, sendMail } from '../helpers/smtp-client.js';
import { SECRET, startTestApp, type TestApp } from '../helpers/app.js';

let app: TestApp;
const consumer = new Consumer();

before(async () => {
  await consumer.start();
  app = await startTestApp({ routes: `
  - name: hooks
    addresses: ["in+%{key}@ops.test"]
    webhook: { url: "${consumer.url}", secret: "${SECRET}" }
` });
});
after(async () => {
  await app.close();
  await consumer.stop();
});

test('healthz and readyz', async () => {
  const h = await fetch(`${app.httpUrl}/healthz`);
  assert.equal(h.status, 200);
  assert.deepEqual(await h.json(), { status: 'ok' });
  const r = await fetch(`${app.httpUrl}/readyz`);
  assert.equal(r.status, 200);
  const body = (await r.json()) as { status: string; checks: Record<string, boolean> };
  assert.equal(body.status, 'ready');
  assert.equal(body.checks.spool_writable, true);
  assert.equal(body.checks.smtp_listening, true);
  assert.equal(body.checks.spool_disk_space, true);
  // mailboxes=required with no mailbox configured is the same answer; another value of it is refused, saying what
  // it takes; other parameters (a monitor's cache-buster) are left alone.
  assert.equal((await fetch(`${app.httpUrl}/readyz?mailboxes=required`)).status, 200);
  assert.equal((await fetch(`${app.httpUrl}/readyz?_=1700000000`)).status, 200);
  const bad = await fetch(`${app.httpUrl}/readyz?mailboxes=yes`);
  assert.equal(bad.status, 400);
  assert.deepEqual(await bad.json(), { error: 'bad_request', message: 'mailboxes="yes": /readyz takes mailboxes=required (count IMAP/Graph mailboxes not being read as not ready) or nothing' });
  // A probe with the wrong method is told so (405 and Allow), an unknown path gets the listener's {error, message}.
  const post = await fetch(`${app.httpUrl}/healthz`, { method: 'POST' });
  assert.equal(post.status, 405);
  assert.equal(post.headers.get('allow'), 'GET, HEAD');
  assert.deepEqual(await post.json(), { error: 'method_not_allowed', message: 'POST is not allowed for /healthz; use one of GET, HEAD' });
  const none = await fetch(`${app.httpUrl}/health?x=1`);
  assert.equal(none.status, 404);
  assert.deepEqual(await none.json(), { error: 'not_found', message: 'no route GET /health' });
});

test('metrics count accepted messages, rejected recipients by reason, deliveries and queue depth', async () => {
  await sendMail(app.smtpPort, { from: 'a@s.test', to: 'in+m1@ops.test', subject: 'metrics', text: 'TOP-SECRET-BODY-TEXT' });
  await consumer.waitFor(1);
  const { smtp } = await RawSmtp.open(app.smtpPort);
  await smtp.cmd('EHLO c');
  await smtp.cmd('MAIL FROM:<a@s.test>');
  assert.equal((await smtp.cmd('RCPT TO:<nobody@ops.test>')).code, 550);
  assert.equal((await smtp.cmd('RCPT TO:<x@elsewhere.test>')).code, 550);
  await smtp.quit();
  const res = await fetch(`${app.httpUrl}/metrics`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain/);
  const text = await res.text();
  assert.match(text, /^mailhook_messages_accepted_total\{source="smtp"\} 1$/m);
  assert.match(text, /^mailhook_recipients_rejected_total\{reason="unknown_recipient"\} 1$/m);
  assert.match(text, /^mailhook_recipients_rejected_total\{reason="unknown_domain"\} 1$/m);
  assert.match(text, /^mailhook_deliveries_total\{route="hooks",outcome="delivered"\} 1$/m);
  assert.match(text, /^mailhook_queue_depth\{route="hooks",status="delivered"\} 1$/m);
  assert.match(text, /^mailhook_delivery_duration_seconds_count\{route="hooks"\} 1$/m);
  assert.match(text, /^mailhook_spool_bytes [1-9]\d*$/m);
});

test('logs carry connection and message ids, never the secret or the body', async () => {
  await consumer.waitFor(1);
  const lines = app.logs.join('').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  const accepted = lines.find((l) => l.msg === 'message accepted');
  assert.ok(accepted?.cid && accepted.msgId, 'accepted line has cid and msgId');
  const delivered = lines.find((l) => l.msg === 'delivered');
  assert.ok(delivered?.msgId && delivered.deliveryId, 'delivered line has msgId and deliveryId');
  const all = app.logs.join('');
  assert.equal(all.includes(SECRET), false);
  assert.equal(all.includes(SECRET.slice(6)), false);
  assert.equal(all.includes('TOP-SECRET-BODY-TEXT'), false);
});

test('the sink reader shows sink routes\' messages only: another route\'s message is 404 even from loopback', async () => {
  const other = await startTestApp({ routes: `
  - name: hooks
    addresses: ["in+%{key}@ops.test"]
    webhook: { url: "${consumer.url}", secret: "${SECRET}" }
  - name: keep
    addresses: ["*@sink.test"]
    sink: true
` });
  try {
    const kept = await sendMail(other.smtpPort, { from: 'a@s.test', to: 'x@sink.test', subject: 'kept', text: 'sink body' });
    const hooked = await sendMail(other.smtpPort, { from: 'a@s.test', to: 'in+k@ops.test', subject: 'hooked', text: 'webhook body' });
    const idOf = (r: string) => /queued as (\S+)/.exec(r)![1]!;
    const list = (await (await fetch(`${other.httpUrl}/sink/messages`)).json()) as { messages: Array<{ id: string }> };
    assert.deepEqual(list.messages.map((m) => m.id), [idOf(kept.response)]);
    const ok = await fetch(`${other.httpUrl}/sink/messages/${idOf(kept.response)}/raw`);
    assert.equal(ok.status, 200);
    assert.match(await ok.text(), /sink body/);
    const refused = await fetch(`${other.httpUrl}/sink/messages/${idOf(hooked.response)}/raw`);
    assert.equal(refused.status, 404);
    assert.doesNotMatch(await refused.text(), /webhook body/);
  } finally {
    await other.close();
  }
});
