// The exact wire text of the replies smtp-server writes for mailhook (rewritten with enhanced codes), one by one.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { RawSmtp } from '../helpers/smtp-client.js';
import type { TestApp } from '../helpers/app.js';
import { session, startSmtpApp } from './support.js';

let app: TestApp;
before(async () => {
  app = await startSmtpApp();
});
after(() => app.close());

test('greeting and EHLO: no enhanced code (RFC 2034 §3); ENHANCEDSTATUSCODES advertised, STARTTLS only with TLS configured', async () => {
  const { smtp, banner } = await RawSmtp.open(app.smtpPort);
  assert.equal(banner.raw, '220 mx.test ESMTP mailhook\r\n');
  const ehlo = await smtp.cmd('EHLO client.test');
  // The first line names the client by its [address]: there is no reverse DNS lookup (the greeting never waits
  // for one). With the lookup on, a machine whose resolver names 127.0.0.1 ("localhost") would show that name.
  assert.equal(ehlo.lines[0], '250-mx.test Nice to meet you, [127.0.0.1]');
  assert.deepEqual(ehlo.lines.slice(1), ['250-PIPELINING', '250-ENHANCEDSTATUSCODES', '250-8BITMIME', '250-SMTPUTF8', '250 SIZE 26214400']);
  assert.equal((await smtp.cmd('HELO client.test')).raw, '250 mx.test Nice to meet you, [127.0.0.1]\r\n');
  await smtp.quit();
});

test('every other library reply carries the enhanced code its meaning calls for', async () => {
  const smtp = await session(app.smtpPort);
  const cases: Array<[string, string]> = [
    ['NOOP', '250 2.0.0 OK'],
    ['RSET', '250 2.0.0 Flushed'],
    ['HELP', '214 2.0.0 See https://tools.ietf.org/html/rfc5321 for details'],
    ['VRFY user@in.test', '252 2.0.0 Try to send something. No promises though'],
    ['VRFY', '501 5.5.4 Error: Syntax: VRFY address'],
    ['EHLO', '501 5.5.4 Error: syntax: EHLO hostname'],
    ['HELO a b', '501 5.5.4 Error: Syntax: HELO hostname'],
    ['EHLO bad\x01name', '501 5.5.4 Error: Bad hostname syntax'],
    ['EHLO client.test', ''],
    ['STARTTLS', '500 5.5.2 Error: command not recognized'],
    ['AUTH PLAIN AGFAYg==', '500 5.5.2 Error: command not recognized'],
    ['XCLIENT ADDR=192.0.2.1', '500 5.5.2 Error: command not recognized'],
    ['WIZ password', '500 5.5.2 Error: command not recognized'],
    ['MAIL FROM:<a@client.test> BODY=9BIT', '501 5.5.4 Invalid BODY parameter value. Must be 7BIT or 8BITMIME'],
    ['MAIL FROM:<a@client.test> SIZE=1 SIZE=2', '501 5.5.4 Error: duplicate SIZE parameter'],
    ['MAIL FROM:<a@client.test> SIZE', '501 5.5.4 Error: SIZE parameter requires a value'],
    ['MAIL FROM:<a@client.test> REQUIRETLS', '555 5.5.4 Error: unsupported parameter REQUIRETLS'], // not advertised (RFC 8689)
    ['MAIL FROM:<a@client.test> BODY=8BITMIME SMTPUTF8', '250 2.1.0 Accepted'],
    ['RCPT TO:<postmaster>', '550 5.1.1 Recipient address rejected: User unknown'], // smtp.postmaster_route unset
    ['RCPT TO:<user@in.test>', '250 2.1.5 Accepted'],
  ];
  for (const [command, reply] of cases) {
    const r = await smtp.cmd(command);
    if (reply) assert.equal(r.raw, `${reply}\r\n`, command);
  }
  assert.equal((await smtp.cmd('QUIT')).raw, '221 2.0.0 Bye\r\n');
});

test('ten unrecognized commands: 421 4.7.0; an HTTP request: 421 4.7.0', async () => {
  const smtp = await session(app.smtpPort);
  for (let i = 0; i < 9; i++) assert.equal((await smtp.cmd(`BOGUS${i}`)).raw, '500 5.5.2 Error: command not recognized\r\n');
  assert.equal((await smtp.cmd('BOGUS9')).raw, '421 4.7.0 Error: too many unrecognized commands\r\n');
  await smtp.waitClosed();
  const http = await session(app.smtpPort);
  assert.equal((await http.cmd('GET / HTTP/1.1')).raw, '421 4.7.0 HTTP requests not allowed\r\n');
  await http.waitClosed();
});
