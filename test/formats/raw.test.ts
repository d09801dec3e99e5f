// format: raw — the exact bytes, the envelope in mailhook-* headers, a Standard Webhooks signature a real verifier accepts.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { Webhook } from 'standardwebhooks';
import { startTestApp, SECRET, until, type TestApp } from '../helpers/app.js';
import { Consumer } from '../helpers/consumer.js';
import { RawSmtp } from '../helpers/smtp-client.js';
import { headerValue } from '../../src/delivery/formats/raw.js';

let consumer: Consumer;
let app: TestApp;

before(async () => {
  consumer = await new Consumer().start();
  app = await startTestApp({
    routes: `
  - name: tickets
    addresses: ["support+%{key}@in.test", "help@in.test"]
    webhook:
      url: ${consumer.url}
      format: raw
      secret: ${SECRET}
`,
  });
});
after(async () => {
  await app.close();
  await consumer.stop();
});

async function send(from: string, rcpts: string[], message: string): Promise<void> {
  const { smtp } = await RawSmtp.open(app.smtpPort);
  await smtp.cmd('EHLO client.test');
  const r = await smtp.transaction(from, rcpts, message);
  assert.equal(r.end?.code, 250, JSON.stringify(r));
  await smtp.quit();
}

function headersOf(i: number): Record<string, string> {
  const h = consumer.requests[i]!.headers;
  return Object.fromEntries(Object.entries(h).map(([k, v]) => [k, Array.isArray(v) ? v.join(', ') : (v ?? '')]));
}

test('the body is the message exactly as stored, with the envelope and key in headers, signed', async () => {
  const start = consumer.requests.length;
  // 8-bit bytes (not UTF-8) must come through untouched. (Bare LFs are the SMTP edge's business: smtp.bare_lf.)
  const message = Buffer.from('From: a@example.test\r\nTo: support+T-1234@in.test\r\nSubject: caf\xe9\r\n\r\nline one\r\nline two \xff\r\n', 'latin1');
  // Sent as bytes (the helper's transaction() would normalise line ends and write UTF-8).
  const { smtp } = await RawSmtp.open(app.smtpPort);
  await smtp.cmd('EHLO client.test');
  assert.equal((await smtp.cmd('MAIL FROM:<a@example.test>')).code, 250);
  assert.equal((await smtp.cmd('RCPT TO:<support+T-1234@in.test>')).code, 250);
  assert.equal((await smtp.cmd('DATA')).code, 354);
  smtp.write(Buffer.concat([message, Buffer.from('.\r\n')]));
  assert.equal((await smtp.read()).code, 250);
  await smtp.quit();
  await consumer.waitFor(start + 1);
  const req = consumer.requests[start]!;
  const h = headersOf(start);
  const msgId = h['mailhook-message-id']!;
  const stored = await app.spool.readRaw(msgId);
  assert.ok(req.body.equals(stored), 'the body is byte for byte what the spool holds');
  assert.ok(stored.equals(message), 'the spool holds what was sent');
  assert.equal(h['content-type'], 'message/rfc822');
  assert.equal(h['mailhook-route'], 'tickets');
  assert.equal(h['mailhook-mail-from'], 'a@example.test');
  assert.equal(h['mailhook-rcpt-to'], 'support+T-1234@in.test');
  assert.equal(h['mailhook-key'], 'T-1234');
  assert.equal(h['mailhook-automatic'], 'false');
  // The signature is HMAC-SHA256 over "id.timestamp." and the body's bytes (Standard Webhooks). The reference
  // libraries decode the body as UTF-8 first, so for this non-UTF-8 message the check is done over the bytes.
  const expected = (body: Buffer) =>
    'v1,' + createHmac('sha256', Buffer.from(SECRET.slice('whsec_'.length), 'base64')).update(`${h['webhook-id']}.${h['webhook-timestamp']}.`).update(body).digest('base64');
  assert.equal(h['webhook-signature'], expected(req.body));
  const tampered = Buffer.from(req.body);
  tampered[tampered.length - 3] = tampered[tampered.length - 3]! ^ 1;
  assert.notEqual(h['webhook-signature'], expected(tampered));
  const d = await until(() => app.spool.getDelivery(h['webhook-id']!)?.status === 'delivered' && app.spool.getDelivery(h['webhook-id']!), 5000, 'delivered');
  assert.equal(d.attempts, 1);
});

test('null sender, an address without a key, and an automatic message', async () => {
  const start = consumer.requests.length;
  await send('', ['help@in.test'], 'From: MAILER-DAEMON@example.test\r\nAuto-Submitted: auto-replied\r\nSubject: out of office\r\n\r\naway\r\n');
  await consumer.waitFor(start + 1);
  const h = headersOf(start);
  assert.equal(h['mailhook-mail-from'], '<>');
  assert.equal(h['mailhook-rcpt-to'], 'help@in.test');
  assert.equal(h['mailhook-key'], undefined);
  assert.equal(h['mailhook-automatic'], 'true');
});

test('several recipients of the route are listed in order, keys likewise', async () => {
  const start = consumer.requests.length;
  await send('b@example.test', ['support+A@in.test', 'help@in.test', 'support+B@in.test'], 'Subject: x\r\n\r\ny\r\n');
  await consumer.waitFor(start + 1);
  const h = headersOf(start);
  assert.equal(h['mailhook-rcpt-to'], 'support+A@in.test, help@in.test, support+B@in.test');
  assert.equal(h['mailhook-key'], 'A, B');
  assert.equal(consumer.requests.length, start + 1, 'one request for the route');
  // A UTF-8 (here ASCII) message verifies with the reference Standard Webhooks library; a changed byte does not.
  const wh = new Webhook(SECRET);
  const body = consumer.requests[start]!.body;
  assert.doesNotThrow(() => wh.verify(body, h, { jsonParse: false }));
  const tampered = Buffer.from(body);
  tampered[tampered.length - 3] = tampered[tampered.length - 3]! ^ 1;
  assert.throws(() => wh.verify(tampered, h, { jsonParse: false }));
});

test('header values: printable ASCII as is; UTF-8, spaces, commas and "%" percent-encoded, reversible', () => {
  assert.equal(headerValue('a+b@example.test'), 'a+b@example.test');
  assert.equal(headerValue('jöran@exämple.test'), 'j%C3%B6ran@ex%C3%A4mple.test');
  assert.equal(headerValue('"a b,c"@x.test'), '"a%20b%2Cc"@x.test');
  assert.equal(headerValue('100%@x.test'), '100%25@x.test');
  for (const v of ['jöran@exämple.test', '"a b,c"@x.test', '100%@x.test', '日本@例え.jp']) assert.equal(decodeURIComponent(headerValue(v)), v);
});
