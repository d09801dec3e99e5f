// Automatic-message detection: every rule on literal messages, then the payload flag and drop_automatic end to end.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { automaticOf, detectAutomatic, headerSection, parseHeaderFields } from '../../src/parse/automatic.js';
import { startTestApp, SECRET, until, type TestApp } from '../helpers/app.js';
import { Consumer } from '../helpers/consumer.js';
import { RawSmtp } from '../helpers/smtp-client.js';

function verdict(headers: string, mailFrom: string | null = 'alice@example.test') {
  return detectAutomatic({ mailFrom, headers: parseHeaderFields(headerSection(Buffer.from(`${headers}\r\n\r\nbody\r\n`))) });
}

test('a person\'s message is not automatic', () => {
  assert.deepEqual(verdict('From: alice@example.test\r\nTo: bob@example.test\r\nSubject: hi'), { automatic: false, reasons: [] });
});

test('Auto-Submitted: any value but "no" (RFC 3834), case and comments ignored', () => {
  assert.deepEqual(verdict('Auto-Submitted: auto-replied').reasons, ['auto-submitted: auto-replied']);
  assert.deepEqual(verdict('auto-submitted: Auto-Generated (vacation); owner-email="x@y"').reasons, ['auto-submitted: auto-generated']);
  assert.equal(verdict('Auto-Submitted: no').automatic, false);
  assert.equal(verdict('Auto-Submitted: No (a person wrote this)').automatic, false);
});

test('X-Autoreply', () => {
  assert.deepEqual(verdict('X-Autoreply: yes').reasons, ['x-autoreply']);
  assert.equal(verdict('X-Autoreply: no').automatic, false);
});

test('Precedence bulk, junk and list; not first-class', () => {
  for (const v of ['bulk', 'junk', 'list', 'BULK']) assert.deepEqual(verdict(`Precedence: ${v}`).reasons, [`precedence: ${v.toLowerCase()}`]);
  assert.equal(verdict('Precedence: first-class').automatic, false);
});

test('null sender: the envelope, or Return-Path: <> when there is no envelope', () => {
  assert.deepEqual(verdict('Subject: x', '').reasons, ['null sender']);
  assert.deepEqual(verdict('Return-Path: <>', null).reasons, ['null sender']);
  assert.equal(verdict('Return-Path: <bob@example.test>', null).automatic, false);
  // Counted once even when both say so.
  assert.deepEqual(verdict('Return-Path: <>', '').reasons, ['null sender']);
});

test('delivery status notifications and other multipart/report messages', () => {
  const dsn = verdict('Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="b1"', '');
  assert.deepEqual(dsn.reasons, ['null sender', 'report: delivery-status']);
  assert.deepEqual(verdict('Content-Type: Multipart/Report; boundary=x; report-type="disposition-notification"').reasons, ['report: disposition-notification']);
  assert.equal(verdict('Content-Type: multipart/mixed; boundary=x').automatic, false);
});

test('only the header section counts: the same words in the body do not', () => {
  const raw = Buffer.from('From: a@b.test\r\nSubject: about Precedence\r\n\r\nAuto-Submitted: auto-replied\r\nPrecedence: bulk\r\n');
  assert.equal(automaticOf({ source: 'smtp', envelope: { mailFrom: 'a@b.test', rcptTo: [], remoteAddress: null, helo: null, tls: null } }, raw).automatic, false);
});

test('folded fields are unfolded; bare-LF messages work', () => {
  const raw = Buffer.from('From: a@b.test\nAuto-Submitted:\n auto-replied\n\nbody\n');
  assert.deepEqual(parseHeaderFields(headerSection(raw)), [
    { name: 'from', value: 'a@b.test' },
    { name: 'auto-submitted', value: 'auto-replied' },
  ]);
  assert.equal(automaticOf({ source: 'smtp', envelope: { mailFrom: 'a@b.test', rcptTo: [], remoteAddress: null, helo: null, tls: null } }, raw).automatic, true);
});

test('the envelope sender counts only for SMTP: an IMAP message with no known envelope is judged by its headers', () => {
  const raw = Buffer.from('From: a@b.test\r\n\r\nbody');
  const env = { mailFrom: '', rcptTo: [], remoteAddress: null, helo: null, tls: null };
  assert.equal(automaticOf({ source: 'smtp', envelope: env }, raw).automatic, true);
  assert.equal(automaticOf({ source: 'imap', envelope: env }, raw).automatic, false);
});

describe('end to end: the JSON payload says automatic, and drop_automatic finishes such deliveries as dropped', () => {
  let consumer: Consumer;
  let app: TestApp;

  before(async () => {
    consumer = await new Consumer().start();
    app = await startTestApp({
      routes: `
  - name: plain
    addresses: ["plain@in.test"]
    webhook: { url: "${consumer.url}?route=plain", secret: "${SECRET}" }
  - name: quiet
    addresses: ["quiet@in.test"]
    drop_automatic: true
    webhook: { url: "${consumer.url}?route=quiet", secret: "${SECRET}" }
`,
    });
  });
  after(async () => {
    await app.close();
    await consumer.stop();
  });

  async function send(from: string, rcpt: string, message: string): Promise<string> {
    const { smtp } = await RawSmtp.open(app.smtpPort);
    await smtp.cmd('EHLO client.test');
    const r = await smtp.transaction(from, [rcpt], message);
    await smtp.quit();
    const id = /queued as (\w+)/.exec(r.end?.text ?? '')?.[1];
    assert.ok(id, JSON.stringify(r));
    return id;
  }

  const autoReply = 'From: bob@example.test\r\nAuto-Submitted: auto-replied\r\nSubject: Out of office\r\n\r\naway\r\n';
  const person = 'From: carol@example.test\r\nSubject: hello\r\n\r\nhi\r\n';

  test('automatic: true / false in the JSON payload', async () => {
    const start = consumer.requests.length;
    await send('bob@example.test', 'plain@in.test', autoReply);
    await send('carol@example.test', 'plain@in.test', person);
    await consumer.waitFor(start + 2);
    const got = consumer.requests.slice(start).map((r) => JSON.parse(r.body.toString()) as { automatic: boolean; message: { subject: string } });
    assert.deepEqual(got.map((p) => [p.message.subject, p.automatic]).sort(), [
      ['Out of office', true],
      ['hello', false],
    ]);
  });

  test('a route with drop_automatic: the automatic message is finished as dropped, with the reason, and never posted', async () => {
    const start = consumer.requests.length;
    const dropped = await send('', 'quiet@in.test', autoReply);
    const row = await until(
      () => app.spool.db.prepare(`SELECT id, status, attempts, last_error, finished_at FROM deliveries WHERE message_id = ?`).get(dropped) as { id: string; status: string; attempts: number; last_error: string; finished_at: number | null } | undefined,
      5000,
      'delivery row',
    );
    const done = await until(() => {
      const d = app.spool.getDelivery(row.id);
      return d && d.status !== 'pending' && d.status !== 'delivering' ? d : undefined;
    }, 5000, 'a final status');
    assert.equal(done.status, 'dropped');
    assert.equal(done.lastError, 'dropped: automatic message (null sender, auto-submitted: auto-replied); route has drop_automatic');
    assert.ok(done.finishedAt);
    const attempts = app.spool.db.prepare(`SELECT outcome, status_code FROM attempts WHERE delivery_id = ?`).all(row.id);
    assert.deepEqual(attempts, [{ outcome: 'dropped', status_code: null }]);
    assert.deepEqual(app.spool.jobs.counts().dropped, 1);
    assert.ok(app.logs.some((l) => /delivery dropped: automatic message/.test(l)));
    // A person's message to the same route is delivered; the dropped one never reached the consumer.
    await send('carol@example.test', 'quiet@in.test', person);
    await consumer.waitFor(start + 1);
    assert.deepEqual(
      consumer.requests.slice(start).map((r) => (JSON.parse(r.body.toString()) as { message: { subject: string } }).message.subject),
      ['hello'],
    );
  });
});
