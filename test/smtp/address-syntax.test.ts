// RCPT local parts that are neither an RFC 5321 Dot-string nor a Quoted-string: 501 5.1.3 for every route kind.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { TestApp } from '../helpers/app.js';
import { queuedId, session, startSmtpApp } from './support.js';

let app: TestApp;

before(async () => {
  app = await startSmtpApp({ smtp: '  max_recipients: 8\n  ip_literals:\n    "192.0.2.10": in.test' });
});
after(() => app.close());

const ACCEPTED = '250 2.1.5 Accepted\r\n';
const BAD = '501 5.1.3 Bad recipient address syntax\r\n';
/** smtp-server's own wording of the same refusal, for what it refuses before mailhook is asked */
const BAD_LIBRARY = '501 5.1.3 Error: Bad recipient address syntax\r\n';

/** Local parts with an RFC 5321 special outside a quoted string, or a quoted string that is not the whole local part. */
const NOT_A_MAILBOX = ['x"y', 'x(y', 'x)y', 'x\\y', 'x[y', 'x]y', 'x;y', 'x,y', 'x:y', '"x"y', 'x"y"', '"a"b"', '"x\\"', 'a."b"'];

/** The stored envelope's recipients and each delivery's recipients of one message. */
function stored(id: string): { rcptTo: string[] | undefined; recipients: Array<{ address: string; key: string | null }> } {
  const rows = app.spool.db.prepare('SELECT recipients FROM deliveries WHERE message_id = ? ORDER BY id').all(id) as Array<{ recipients: string }>;
  return { rcptTo: app.spool.getMessage(id)?.envelope.rcptTo, recipients: rows.flatMap((r) => JSON.parse(r.recipients) as Array<{ address: string; key: string | null }>) };
}

test('a local part with an unquoted special is refused 501 5.1.3 by a key template, a catch-all and an IP literal; nothing of it is stored', async () => {
  for (const bad of NOT_A_MAILBOX) {
    // One session each: 20 errors in a session end it (smtp.limits.max_errors).
    const smtp = await session(app.smtpPort);
    assert.equal((await smtp.cmd('MAIL FROM:<a@client.test>')).raw, '250 2.1.0 Accepted\r\n');
    for (const rcpt of [`incoming+${bad}@in.test`, `${bad}@catch.test`, `${bad}@[192.0.2.10]`, `${bad}@[192.0.2.99]`]) {
      assert.equal((await smtp.cmd(`RCPT TO:<${rcpt}>`)).raw, BAD, rcpt);
    }
    assert.equal((await smtp.cmd('RCPT TO:<user@in.test>')).raw, ACCEPTED);
    assert.equal((await smtp.cmd('DATA')).code, 354);
    smtp.write('Subject: syntax\r\n\r\nx\r\n.\r\n');
    const id = queuedId(await smtp.read());
    await smtp.quit();
    assert.deepEqual(stored(id), { rcptTo: ['user@in.test'], recipients: [{ address: 'user@in.test', key: null }] }, bad);
  }
});

test('quoted local parts stay as documented: "user" is user, a needed quoting goes to the catch-all only, "x@y" is 501', async () => {
  const smtp = await session(app.smtpPort);
  assert.equal((await smtp.cmd('MAIL FROM:<a@client.test>')).raw, '250 2.1.0 Accepted\r\n');
  assert.equal((await smtp.cmd('RCPT TO:<"user"@in.test>')).raw, ACCEPTED);
  assert.equal((await smtp.cmd('RCPT TO:<"incoming+A\\bC"@in.test>')).raw, ACCEPTED);
  assert.equal((await smtp.cmd('RCPT TO:<"x(y"@catch.test>')).raw, ACCEPTED);
  assert.equal((await smtp.cmd('RCPT TO:<"x\\"y"@catch.test>')).raw, ACCEPTED);
  assert.equal((await smtp.cmd('RCPT TO:<"incoming+x(y"@in.test>')).raw, '550 5.1.1 Recipient address rejected: User unknown\r\n');
  assert.equal((await smtp.cmd('RCPT TO:<"x@y"@in.test>')).raw, BAD_LIBRARY);
  assert.equal((await smtp.cmd('RCPT TO:<incoming+a.b-c_d/e=f+g{h}~i#j$k%l&m\'n*o?p^q`r|s!t@in.test>')).raw, ACCEPTED);
  assert.equal((await smtp.cmd('DATA')).code, 354);
  smtp.write('Subject: quoted\r\n\r\nx\r\n.\r\n');
  const id = queuedId(await smtp.read());
  await smtp.quit();
  const key = "a.b-c_d/e=f+g{h}~i#j$k%l&m'n*o?p^q`r|s!t";
  assert.deepEqual(stored(id), {
    rcptTo: ['"user"@in.test', '"incoming+A\\bC"@in.test', '"x(y"@catch.test', '"x\\"y"@catch.test', `incoming+${key}@in.test`],
    recipients: [
      { address: '"user"@in.test', key: null },
      { address: '"incoming+A\\bC"@in.test', key: 'AbC' },
      { address: '"x(y"@catch.test', key: null },
      { address: '"x\\"y"@catch.test', key: null },
      { address: `incoming+${key}@in.test`, key },
    ],
  });
});

test('with SMTPUTF8, non-ASCII is atext and qtext (RFC 6531 §3.3); a special beside it is still 501 5.1.3', async () => {
  const smtp = await session(app.smtpPort);
  assert.equal((await smtp.cmd('MAIL FROM:<ä@client.test> SMTPUTF8')).raw, '250 2.1.0 Accepted\r\n');
  assert.equal((await smtp.cmd('RCPT TO:<incoming+ünï"@in.test>')).raw, BAD);
  assert.equal((await smtp.cmd('RCPT TO:<ü;x@catch.test>')).raw, BAD);
  assert.equal((await smtp.cmd('RCPT TO:<incoming+ünï.ç@in.test>')).raw, ACCEPTED);
  assert.equal((await smtp.cmd('RCPT TO:<"ü(x"@catch.test>')).raw, ACCEPTED);
  assert.equal((await smtp.cmd('DATA')).code, 354);
  smtp.write('Subject: utf8\r\n\r\nx\r\n.\r\n');
  const id = queuedId(await smtp.read());
  await smtp.quit();
  assert.deepEqual(stored(id).recipients, [
    { address: 'incoming+ünï.ç@in.test', key: 'ünï.ç' },
    { address: '"ü(x"@catch.test', key: null },
  ]);
});

test('a bad local part is 501 5.1.3 also at max_recipients (not 452, which asks for a retry)', async () => {
  const smtp = await session(app.smtpPort);
  assert.equal((await smtp.cmd('MAIL FROM:<a@client.test>')).raw, '250 2.1.0 Accepted\r\n');
  for (let i = 0; i < 8; i++) assert.equal((await smtp.cmd(`RCPT TO:<r${i}@catch.test>`)).raw, ACCEPTED);
  assert.equal((await smtp.cmd('RCPT TO:<r8@catch.test>')).raw, '452 4.5.3 Error: too many recipients\r\n');
  assert.equal((await smtp.cmd('RCPT TO:<x"y@catch.test>')).raw, BAD);
  await smtp.quit();
});

test('a trailing dot in the domain is 501 5.1.3 (RFC 5321 §4.1.2), for a routed domain too', async () => {
  const smtp = await session(app.smtpPort);
  assert.equal((await smtp.cmd('MAIL FROM:<a@client.test>')).raw, '250 2.1.0 Accepted\r\n');
  assert.equal((await smtp.cmd('RCPT TO:<user@IN.TEST.>')).raw, BAD_LIBRARY);
  assert.equal((await smtp.cmd('RCPT TO:<x@catch.test.>')).raw, BAD_LIBRARY);
  await smtp.quit();
});

test('MAIL FROM is left as smtp-server parses it: a sender with an unquoted special is taken and stored as sent', async () => {
  // Deliberate: the sender is never routed nor a key, and refusing odd senders loses real mail (see README).
  const smtp = await session(app.smtpPort);
  assert.equal((await smtp.cmd('MAIL FROM:<x"y@client.test>')).raw, '250 2.1.0 Accepted\r\n');
  assert.equal((await smtp.cmd('RCPT TO:<user@in.test>')).raw, ACCEPTED);
  assert.equal((await smtp.cmd('DATA')).code, 354);
  smtp.write('Subject: sender\r\n\r\nx\r\n.\r\n');
  const id = queuedId(await smtp.read());
  await smtp.quit();
  assert.equal(app.spool.getMessage(id)?.envelope.mailFrom, 'x"y@client.test');
});

test('addresses are stored as the client wrote their domains: an A-label stays ASCII (smtp-server turned it into Unicode), a U-label stays Unicode', async () => {
  const idn = await startSmtpApp({ routes: '\n  - name: idn\n    addresses: ["*@münchen.test", "*@xn--bcher-kva.example"]\n    sink: true\n' });
  try {
    const smtp = await session(idn.smtpPort);
    assert.equal((await smtp.cmd('MAIL FROM:<sender@xn--bcher-kva.example>')).raw, '250 2.1.0 Accepted\r\n');
    assert.equal((await smtp.cmd('RCPT TO:<alabel@xn--mnchen-3ya.test>')).raw, ACCEPTED);
    assert.equal((await smtp.cmd('RCPT TO:<Info@XN--BCHER-KVA.example>')).raw, ACCEPTED);
    assert.equal((await smtp.cmd('DATA')).code, 354);
    smtp.write('Subject: idn\r\n\r\nx\r\n.\r\n');
    const ascii = queuedId(await smtp.read());
    assert.equal((await smtp.cmd('MAIL FROM:<jörg@bücher.example> SMTPUTF8')).raw, '250 2.1.0 Accepted\r\n');
    assert.equal((await smtp.cmd('RCPT TO:<ulabel@münchen.test>')).raw, ACCEPTED);
    assert.equal((await smtp.cmd('DATA')).code, 354);
    smtp.write('Subject: idn\r\n\r\nx\r\n.\r\n');
    const unicode = queuedId(await smtp.read());
    await smtp.quit();
    const envelope = (id: string) => {
      const m = idn.spool.getMessage(id)!;
      const rows = idn.spool.db.prepare('SELECT recipients FROM deliveries WHERE message_id = ?').all(id) as Array<{ recipients: string }>;
      return { mailFrom: m.envelope.mailFrom, rcptTo: m.envelope.rcptTo, recipients: rows.flatMap((r) => (JSON.parse(r.recipients) as Array<{ address: string }>).map((x) => x.address)) };
    };
    assert.deepEqual(envelope(ascii), { mailFrom: 'sender@xn--bcher-kva.example', rcptTo: ['alabel@xn--mnchen-3ya.test', 'Info@XN--BCHER-KVA.example'], recipients: ['alabel@xn--mnchen-3ya.test', 'Info@XN--BCHER-KVA.example'] });
    assert.deepEqual(envelope(unicode), { mailFrom: 'jörg@bücher.example', rcptTo: ['ulabel@münchen.test'], recipients: ['ulabel@münchen.test'] });
  } finally {
    await idn.close();
  }
});
