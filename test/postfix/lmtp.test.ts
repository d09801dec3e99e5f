// smtp.lmtp: true — mailhook speaks LMTP (RFC 2033) to an MTA in front: LHLO, and one reply per accepted recipient after DATA.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { configYaml, startTestApp, tempDir, type TestApp } from '../helpers/app.js';
import { RawSmtp } from '../helpers/smtp-client.js';

let app: TestApp;

before(async () => {
  const dir = tempDir();
  const routes = `
  - name: keep
    addresses: ["a@lmtp.test", "b@lmtp.test"]
    sink: true
`;
  const yaml = configYaml({ routes, dir }).replace('  greeting_delay_ms: 0\n', '  greeting_delay_ms: 0\n  lmtp: true\n  max_message_bytes: 2000\n');
  app = await startTestApp({ dir, routes, yaml });
});
after(() => app.close());

async function lhlo(): Promise<RawSmtp> {
  const { smtp, banner } = await RawSmtp.open(app.smtpPort);
  assert.match(banner.raw, /^220 mx\.test LMTP/);
  const r = await smtp.cmd('LHLO relay.test');
  assert.equal(r.code, 250, r.raw);
  return smtp;
}

test('EHLO and HELO are refused; LHLO is the greeting', async () => {
  const { smtp } = await RawSmtp.open(app.smtpPort);
  const ehlo = await smtp.cmd('EHLO relay.test');
  assert.equal(ehlo.code, 500, ehlo.raw);
  assert.equal((await smtp.cmd('HELO relay.test')).code, 500);
  assert.equal((await smtp.cmd('LHLO relay.test')).code, 250);
  await smtp.quit();
});

test('after DATA, one reply per accepted recipient, in RCPT order; a refused RCPT gets none', async () => {
  const smtp = await lhlo();
  assert.equal((await smtp.cmd('MAIL FROM:<s@example.test>')).code, 250);
  assert.equal((await smtp.cmd('RCPT TO:<a@lmtp.test>')).code, 250);
  assert.equal((await smtp.cmd('RCPT TO:<nobody@lmtp.test>')).raw, '550 5.1.1 Recipient address rejected: User unknown\r\n');
  assert.equal((await smtp.cmd('RCPT TO:<b@lmtp.test>')).code, 250);
  assert.equal((await smtp.cmd('DATA')).code, 354);
  smtp.write('Subject: lmtp\r\n\r\nbody\r\n.\r\n');
  const first = await smtp.read();
  const second = await smtp.read();
  assert.match(first.raw, /^250 2\.0\.0 Ok: queued as [a-z0-9]+\r\n$/);
  assert.equal(second.raw, first.raw, 'both recipients share the one durable commit');
  const id = /queued as (\w+)/.exec(first.text)![1]!;
  assert.deepEqual(app.spool.getMessage(id)?.envelope.rcptTo, ['a@lmtp.test', 'b@lmtp.test']);
  // Nothing further is pending: the next command gets its own reply.
  assert.equal((await smtp.cmd('NOOP')).code, 250);
  await smtp.quit();
});

test('a refusal after DATA is repeated for each recipient (here: over the size limit)', async () => {
  const smtp = await lhlo();
  await smtp.cmd('MAIL FROM:<s@example.test>');
  await smtp.cmd('RCPT TO:<a@lmtp.test>');
  await smtp.cmd('RCPT TO:<b@lmtp.test>');
  assert.equal((await smtp.cmd('DATA')).code, 354);
  smtp.write(`Subject: big\r\n\r\n${'x'.repeat(3000)}\r\n.\r\n`);
  const first = await smtp.read();
  const second = await smtp.read();
  assert.equal(first.code, 552, first.raw);
  assert.match(first.text, /^5\.3\.4 /);
  assert.equal(second.raw, first.raw);
  assert.equal((await smtp.cmd('NOOP')).code, 250);
  await smtp.quit();
});

test('the replies after DATA count once towards max_errors: no 421 among them (RFC 2033 §4.2)', async () => {
  const dir = tempDir();
  const routes = `
  - name: keep
    addresses: ["*@lmtp.test"]
    sink: true
`;
  const yaml = configYaml({ routes, dir }).replace('  greeting_delay_ms: 0\n', '  greeting_delay_ms: 0\n  lmtp: true\n  max_message_bytes: 100\n  limits:\n    max_errors: 3\n');
  const small = await startTestApp({ dir, routes, yaml });
  try {
    const { smtp } = await RawSmtp.open(small.smtpPort);
    assert.equal((await smtp.cmd('LHLO relay.test')).code, 250);
    assert.equal((await smtp.cmd('MAIL FROM:<s@example.test>')).code, 250);
    for (const r of ['a', 'b', 'c', 'd', 'e']) assert.equal((await smtp.cmd(`RCPT TO:<${r}@lmtp.test>`)).code, 250);
    assert.equal((await smtp.cmd('DATA')).code, 354);
    smtp.write(`Subject: big\r\n\r\n${'z'.repeat(200)}\r\n.\r\n`);
    for (let i = 0; i < 5; i++) assert.equal((await smtp.read()).raw, '552 5.3.4 Error: message exceeds fixed maximum message size\r\n', `reply ${i + 1}`);
    // The refused message was one error: two more make three.
    assert.equal((await smtp.cmd('RCPT TO:<a@lmtp.test>')).code, 503);
    assert.equal((await smtp.cmd('NOOP')).code, 250);
    const third = await smtp.cmd('RCPT TO:<a@lmtp.test>');
    assert.equal(third.code, 503);
    assert.equal((await smtp.read()).raw, '421 4.7.0 mx.test Error: too many errors\r\n');
  } finally {
    await small.close();
  }
});

test('one reply after DATA per RCPT answered 250, a repeat of a recipient included; the message is stored for it once (RFC 2033 §4.2)', async () => {
  const dir = tempDir();
  const routes = `
  - name: keep
    addresses: ["user@lmtp.test", "other@lmtp.test"]
    sink: true
`;
  const yaml = configYaml({ routes, dir }).replace('  greeting_delay_ms: 0\n', '  greeting_delay_ms: 0\n  lmtp: true\n  ip_literals:\n    "192.0.2.10": lmtp.test\n');
  const app = await startTestApp({ dir, routes, yaml });
  try {
    const { smtp } = await RawSmtp.open(app.smtpPort);
    assert.equal((await smtp.cmd('LHLO relay.test')).code, 250);
    assert.equal((await smtp.cmd('MAIL FROM:<s@example.test>')).code, 250);
    // The same mailbox three ways (smtp-server keeps the IP-literal spelling as a second entry, replaces USER@), and another.
    for (const r of ['user@lmtp.test', 'user@[192.0.2.10]', 'other@lmtp.test', 'USER@lmtp.test']) assert.equal((await smtp.cmd(`RCPT TO:<${r}>`)).code, 250, r);
    assert.equal((await smtp.cmd('DATA')).code, 354);
    smtp.write('Subject: once\r\n\r\nbody\r\n.\r\n');
    for (let i = 0; i < 4; i++) assert.equal((await smtp.read()).code, 250, `reply ${i + 1} of 4`);
    // Nothing more is owed: the next reply is the NOOP's.
    assert.equal((await smtp.cmd('NOOP')).raw, '250 2.0.0 OK\r\n');
    const rows = app.spool.db.prepare(`SELECT rcpt_to FROM messages`).all() as Array<{ rcpt_to: string }>;
    assert.equal(rows.length, 1);
    assert.deepEqual(JSON.parse(rows[0]!.rcpt_to), ['user@lmtp.test', 'other@lmtp.test']);
    await smtp.quit();
  } finally {
    await app.close();
  }
});
