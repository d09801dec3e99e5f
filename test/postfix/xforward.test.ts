// END TO END: swaks → real Postfix (configured from deploy/postfix/) → mailhook. swaks poses as an outside client with
// Postfix's XCLIENT; Postfix forwards that client to mailhook with XFORWARD; mailhook judges SPF for it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { DNSResolver } from 'mailauth';
import { SECRET } from '../helpers/app.js';
import { rcptUntilDecided, requirePostfix, requireSwaks, SWAKS, withMailhookBehindPostfix } from '../helpers/postfix.js';

const run = promisify(execFile);
const DOMAIN = 'incoming.example.com';
/** Outside Postfix's mynetworks (192.0.2.0/24 in the test instance): an ordinary sender on the internet. */
const CLIENT = '203.0.113.10';

/** sender.test authorizes the posing client only: SPF passes for it and fails for Postfix's 127.0.0.1. */
const resolver: DNSResolver = async (name, rrtype) => {
  if (rrtype === 'TXT' && name.toLowerCase().replace(/\.$/, '') === 'sender.test') return [[`v=spf1 ip4:${CLIENT} -all`]];
  throw Object.assign(new Error(`queryTxt ENOTFOUND ${name}`), { code: 'ENOTFOUND' });
};

interface Payload {
  envelope: { mail_from: string; remote_address: string | null; helo: string | null };
  authentication: { spf: { result: string; domain: string | null } } | null;
  authentication_results: string | null;
  message_id: string;
  message: { subject: string };
}

function throughPostfix(lmtp: boolean): Promise<void> {
  const routes = (url: string) => `
  - name: app
    addresses: ["incoming+%{key}@${DOMAIN}"]
    webhook:
      url: ${url}
      secret: ${SECRET}
`;
  // mailhook as deploy/postfix/README.md sets it up behind Postfix, with sender authentication on.
  const smtp = `  xforward_hosts: ["127.0.0.1"]\n  sender_auth:\n    enabled: true\n${lmtp ? '  lmtp: true\n' : ''}`;
  return withMailhookBehindPostfix({ routes, smtp, deps: { dnsResolver: resolver }, postfix: { xclient: true, lmtp } }, async ({ app, postfix, consumer }) => {
    const rcpt = `incoming+xf-${lmtp ? 'lmtp' : 'smtp'}@${DOMAIN}`;
    // Postfix verifies the recipient with mailhook first (its probe carries "XFORWARD SOURCE=LOCAL" alone).
    const decided = await rcptUntilDecided(postfix.port, rcpt);
    assert.equal(decided.code, 250, decided.raw);

    const swaks = await run(SWAKS, [
      '--server', `127.0.0.1:${postfix.port}`,
      '--xclient-addr', CLIENT,
      '--xclient-name', 'mail.sender.test',
      '--ehlo', 'mail.sender.test',
      '--from', 'alice@sender.test',
      '--to', rcpt,
      '--header', 'Subject: via xclient and xforward',
      '--body', 'hello from 203.0.113.10',
    ], { timeout: 30_000 });
    assert.match(swaks.stdout, /<-\s+250 2\.0\.0 Ok: queued as/, swaks.stdout);
    assert.match(swaks.stdout, /->\s+XCLIENT .*ADDR=203\.0\.113\.10/, 'swaks posed with XCLIENT');

    const [req] = await consumer.waitFor(1, 30_000);
    const p = JSON.parse(req!.body.toString()) as Payload;
    assert.equal(p.message.subject, 'via xclient and xforward');
    assert.equal(p.envelope.remote_address, CLIENT);
    assert.equal(p.envelope.helo, 'mail.sender.test');
    assert.deepEqual(p.authentication?.spf, { result: 'pass', domain: 'sender.test' });
    assert.match(p.authentication_results ?? '', /spf=pass .*designates 203\.0\.113\.10 as permitted sender/);
    assert.deepEqual(app.spool.getMessage(p.message_id)?.meta?.relay, { address: '127.0.0.1', helo: 'postfix.test' });
    // Postfix's log names the client it posed as, and mailhook's answer.
    assert.match(postfix.log(), /client=mail\.sender\.test\[203\.0\.113\.10\]/);
    assert.match(postfix.log(), /relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*status=sent \(250 2\.0\.0 Ok: queued as \w+\)/);
    assert.match(postfix.log(), lmtp ? /postfix\/lmtp\[\d+\]: \w+: to=<incoming\+xf-lmtp@/ : /postfix\/smtp\[\d+\]: \w+: to=<incoming\+xf-smtp@/);
  });
}

test('over SMTP: swaks poses as 203.0.113.10 to Postfix (XCLIENT); Postfix forwards it with XFORWARD (smtp_send_xforward_command); mailhook judges SPF for 203.0.113.10 and records it', async (t) => {
  if (!requirePostfix(t) || !requireSwaks(t)) return;
  await throughPostfix(false);
});

test('over LMTP: the same through Postfix\'s lmtp client (lmtp_send_xforward_command) to mailhook with smtp.lmtp: true', async (t) => {
  if (!requirePostfix(t) || !requireSwaks(t)) return;
  await throughPostfix(true);
});
