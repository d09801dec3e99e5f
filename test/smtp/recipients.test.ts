// Which RCPTs name the same recipient, and how an address is matched: never 250 for a recipient that is then dropped.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { TestApp } from '../helpers/app.js';
import { queuedId, session, startSmtpApp } from './support.js';

let app: TestApp;

before(async () => {
  app = await startSmtpApp({
    routes: `
  - name: sink
    addresses: ["user@in.test", "incoming+%{key}@in.test", "*@catch.test", "info@xn--bcher-kva.example", "post@münchen.test", "k@kilo.test"]
    sink: true
`,
    smtp: '  max_recipients: 2\n  ip_literals:\n    "192.0.2.10": in.test',
  });
});
after(() => app.close());

const ACCEPTED = '250 2.1.5 Accepted\r\n';

/** RCPTs (each expecting `reply`), then a message; returns the stored envelope and the delivery rows. */
async function send(rcpts: Array<[string, string]>, mail = 'MAIL FROM:<a@client.test>'): Promise<{ rcptTo: string[] | undefined; deliveries: Array<{ address: string; key: string | null }[]> }> {
  const smtp = await session(app.smtpPort);
  assert.equal((await smtp.cmd(mail)).raw, '250 2.1.0 Accepted\r\n');
  for (const [rcpt, reply] of rcpts) assert.equal((await smtp.cmd(`RCPT TO:<${rcpt}>`)).raw, reply, rcpt);
  assert.equal((await smtp.cmd('DATA')).code, 354);
  smtp.write('Subject: r\r\n\r\nx\r\n.\r\n');
  const id = queuedId(await smtp.read());
  await smtp.quit();
  const rows = app.spool.db.prepare('SELECT recipients FROM deliveries WHERE message_id = ? ORDER BY id').all(id) as Array<{ recipients: string }>;
  return { rcptTo: app.spool.getMessage(id)?.envelope.rcptTo, deliveries: rows.map((r) => JSON.parse(r.recipients) as { address: string; key: string | null }[]) };
}

test('two sub-address keys differing only in case are two recipients: both 250, both keys in the delivery', async () => {
  // smtp-server files recipients by the lower-cased address and used to replace the first with the second.
  const r = await send([
    ['incoming+AbC@in.test', ACCEPTED],
    ['incoming+abc@in.test', ACCEPTED],
  ]);
  assert.deepEqual(r.rcptTo, ['incoming+AbC@in.test', 'incoming+abc@in.test']);
  assert.deepEqual(r.deliveries, [
    [
      { address: 'incoming+AbC@in.test', key: 'AbC' },
      { address: 'incoming+abc@in.test', key: 'abc' },
    ],
  ]);
});

test('a recipient already in the envelope gets 250 again at max_recipients and is stored once', async () => {
  // max_recipients is 2: a 452 for the repeat would have the client send it again in a second transaction.
  const r = await send([
    ['user@in.test', ACCEPTED],
    ['x@catch.test', ACCEPTED],
    ['user@in.test', ACCEPTED],
    ['USER@In.Test', ACCEPTED],
    ['user@[192.0.2.10]', ACCEPTED],
    ['"x"@catch.test', ACCEPTED],
    ['y@catch.test', '452 4.5.3 Error: too many recipients\r\n'],
  ]);
  assert.deepEqual(r.rcptTo, ['user@in.test', 'x@catch.test']);
  assert.deepEqual(r.deliveries, [
    [
      { address: 'user@in.test', key: null },
      { address: 'x@catch.test', key: null },
    ],
  ]);
});

test('internationalized domains: the A-label and the U-label of a routed domain are both taken, as one recipient', async () => {
  // The routes name one form or the other; each address is kept as the client wrote it (the first of the two forms
  // of one mailbox), not turned into Unicode as smtp-server does.
  const r = await send(
    [
      // U+212A KELVIN SIGN lower-cases to "k" in JavaScript, but is not the domain kilo.test.
      ['k@\u212Ailo.test', '550 5.7.1 Relaying denied\r\n'],
      ['info@xn--bcher-kva.example', ACCEPTED],
      ['post@xn--mnchen-3ya.test', ACCEPTED],
      ['info@bücher.example', ACCEPTED],
    ],
    'MAIL FROM:<a@client.test> SMTPUTF8',
  );
  assert.deepEqual(r.rcptTo, ['info@xn--bcher-kva.example', 'post@xn--mnchen-3ya.test']);
  assert.equal(r.deliveries.length, 1);
});

test('parameters of extensions not advertised: 555 5.5.4; a non-ASCII address without SMTPUTF8: 553 5.6.7', async () => {
  const smtp = await session(app.smtpPort);
  // DSN is not advertised (nor AUTH): RFC 5321 §4.1.1.11.
  assert.equal((await smtp.cmd('MAIL FROM:<a@client.test> FOO=bar')).raw, '555 5.5.4 Error: unsupported parameter FOO\r\n');
  assert.equal((await smtp.cmd('MAIL FROM:<a@client.test> RET=HDRS')).raw, '555 5.5.4 Error: unsupported parameter RET\r\n');
  assert.equal((await smtp.cmd('MAIL FROM:<ü@client.test>')).raw, '553 5.6.7 Error: non-ASCII address without SMTPUTF8\r\n');
  assert.equal((await smtp.cmd('MAIL FROM:<a@client.test> SIZE=100 BODY=8BITMIME')).raw, '250 2.1.0 Accepted\r\n');
  assert.equal((await smtp.cmd('RCPT TO:<user@in.test> NOTIFY=SUCCESS')).raw, '555 5.5.4 Error: unsupported parameter NOTIFY\r\n');
  assert.equal((await smtp.cmd('RCPT TO:<info@bücher.example>')).raw, '553 5.6.7 Error: non-ASCII address without SMTPUTF8\r\n');
  // The A-label is ASCII on the wire, whatever smtp-server makes of it; a needless quoting names the same mailbox.
  assert.equal((await smtp.cmd('RCPT TO:<info@xn--bcher-kva.example>')).raw, ACCEPTED);
  assert.equal((await smtp.cmd('RCPT TO:<"user"@in.test>')).raw, ACCEPTED);
  await smtp.cmd('RSET');
  assert.equal((await smtp.cmd('MAIL FROM:<ü@client.test> SMTPUTF8')).raw, '250 2.1.0 Accepted\r\n');
  assert.equal((await smtp.cmd('RCPT TO:<ünï@catch.test>')).raw, ACCEPTED);
  await smtp.quit();
});
