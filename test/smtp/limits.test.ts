// Size and recipient limits over a raw socket: exact replies and nothing stored on refusal.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { RawSmtp } from '../helpers/smtp-client.js';
import { configYaml, startTestApp, tempDir, type TestApp } from '../helpers/app.js';

let app: TestApp;

before(async () => {
  const dir = tempDir();
  const yaml = configYaml({ dir, routes: `
  - name: sink
    addresses: ["*@in.test"]
    sink: true
` }).replace('greeting_delay_ms: 0', 'greeting_delay_ms: 0\n  max_message_bytes: 10000\n  max_recipients: 3');
  app = await startTestApp({ routes: '', yaml, dir });
});
after(() => app.close());

const count = () => (app.spool.db.prepare('SELECT COUNT(*) AS n FROM messages').get() as { n: number }).n;

test('a message over max_message_bytes gets 552 5.3.4 and is not stored; the session goes on', async () => {
  const before = count();
  const { smtp } = await RawSmtp.open(app.smtpPort);
  await smtp.cmd('EHLO c');
  await smtp.cmd('MAIL FROM:<a@b.test>');
  await smtp.cmd('RCPT TO:<x@in.test>');
  assert.equal((await smtp.cmd('DATA')).code, 354);
  smtp.write('Subject: big\r\n\r\n' + ('x'.repeat(998) + '\r\n').repeat(20) + '.\r\n');
  const r = await smtp.read();
  assert.equal(r.raw, '552 5.3.4 Error: message exceeds fixed maximum message size\r\n');
  assert.equal(count(), before);
  // The same connection still works.
  const t = await smtp.transaction('a@b.test', ['y@in.test'], 'Subject: small\r\n\r\nok');
  assert.equal(t.end?.code, 250);
  assert.equal(count(), before + 1);
  await smtp.quit();
});

test('the recipient over max_recipients gets 452 4.5.3; the accepted ones are delivered', async () => {
  const { smtp } = await RawSmtp.open(app.smtpPort);
  await smtp.cmd('EHLO c');
  const t = await smtp.transaction('a@b.test', ['r1@in.test', 'r2@in.test', 'r3@in.test', 'r4@in.test'], 'Subject: many\r\n\r\nhi');
  assert.deepEqual(t.rcpts.map((r) => r.code), [250, 250, 250, 452]);
  assert.equal(t.rcpts[3]!.raw, '452 4.5.3 Error: too many recipients\r\n');
  assert.equal(t.end?.code, 250);
  const id = /queued as (\w+)/.exec(t.end!.text)![1]!;
  assert.deepEqual(app.spool.getMessage(id)?.envelope.rcptTo, ['r1@in.test', 'r2@in.test', 'r3@in.test']);
  await smtp.quit();
});
