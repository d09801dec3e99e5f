// Real Postfix in front of mailhook, configured from deploy/postfix/: relay over SMTP and LMTP, unknown recipients refused by Postfix at RCPT.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SECRET } from '../helpers/app.js';
import { RawSmtp, type SmtpReply } from '../helpers/smtp-client.js';
import { rcptUntilDecided, requirePostfix, withMailhookBehindPostfix } from '../helpers/postfix.js';

const DOMAIN = 'incoming.example.com';

interface Payload {
  envelope: { mail_from: string; rcpt_to: string[]; remote_address: string };
  recipients: Array<{ address: string; key: string | null }>;
  message: { subject: string; headers: Array<{ name: string; value: string }> };
}

function withRelay(opts: { lmtp: boolean; relayRecipientMaps: boolean }, body: Parameters<typeof withMailhookBehindPostfix>[1]): Promise<void> {
  return withMailhookBehindPostfix(
    {
      routes: (url) => `
  - name: gitlab
    addresses: ["incoming+%{key}@${DOMAIN}", "incoming@${DOMAIN}"]
    webhook:
      url: ${url}
      secret: ${SECRET}
`,
      // As deploy/postfix/README.md's step 1: postmaster@ goes to the route.
      smtp: `  postmaster_route: gitlab\n${opts.lmtp ? '  lmtp: true\n' : ''}`,
      postfix: { lmtp: opts.lmtp, relayRecipientMaps: opts.relayRecipientMaps },
    },
    body,
  );
}

async function sendThrough(port: number, rcpt: string, subject: string): Promise<SmtpReply | undefined> {
  const { smtp } = await RawSmtp.open(port);
  await smtp.cmd('EHLO sender.example.net');
  const r = await smtp.transaction('someone@example.net', [rcpt], `From: someone@example.net\r\nTo: ${rcpt}\r\nSubject: ${subject}\r\n\r\nhello through postfix\r\n`);
  await smtp.quit();
  return r.end;
}

test('Postfix relays to mailhook over SMTP; mailhook\'s answer makes Postfix refuse an unknown recipient at RCPT (reject_unverified_recipient)', async (t) => {
  if (!requirePostfix(t)) return;
  await withRelay({ lmtp: false, relayRecipientMaps: false }, async ({ app, postfix, consumer }) => {
    // Unknown: Postfix asked mailhook (RCPT without DATA), got 550 5.1.1, and refuses the client itself.
    const unknown = await rcptUntilDecided(postfix.port, `nobody@${DOMAIN}`);
    assert.equal(unknown.code, 550, unknown.raw);
    // In Postfix's words from main.cf (unverified_recipient_reject_reason), not its probe's conversation, which
    // named mailhook's internal address and port to the sender.
    assert.equal(unknown.text, '5.1.1 <nobody@incoming.example.com>: Recipient address rejected: undeliverable address: Recipient address lookup failed');
    // A domain neither serves: relaying denied, mailhook never asked.
    const other = await rcptUntilDecided(postfix.port, 'victim@elsewhere.example');
    assert.equal(other.code, 454, other.raw);

    const known = await rcptUntilDecided(postfix.port, `incoming+proj-7@${DOMAIN}`);
    assert.equal(known.code, 250, known.raw);
    const end = await sendThrough(postfix.port, `incoming+proj-7@${DOMAIN}`, 'via postfix smtp');
    assert.equal(end?.code, 250, end?.raw);
    assert.match(end?.text ?? '', /^2\.0\.0 Ok: queued as /);

    const [req] = await consumer.waitFor(1, 20_000);
    const p = JSON.parse(req!.body.toString()) as Payload;
    assert.equal(p.message.subject, 'via postfix smtp');

    // mailhook down: a new address is deferred (450), and that reply does not name mailhook's address either.
    await app.close();
    const down = await rcptUntilDecided(postfix.port, `incoming+new-1@${DOMAIN}`);
    assert.equal(down.code, 450, down.raw);
    assert.equal(down.text, `4.1.1 <incoming+new-1@${DOMAIN}>: Recipient address rejected: unverified address: Recipient address lookup failed`);
    assert.deepEqual(p.envelope.rcpt_to, [`incoming+proj-7@${DOMAIN}`]);
    assert.equal(p.envelope.mail_from, 'someone@example.net');
    assert.deepEqual(p.recipients, [{ address: `incoming+proj-7@${DOMAIN}`, key: 'proj-7' }]);
    // Postfix's own trace field shows the hop: received by postfix.test over ESMTP.
    assert.ok(p.message.headers.some((h) => h.name === 'Received' && /by postfix\.test \(Postfix\) with ESMTP/.test(h.value)), JSON.stringify(p.message.headers));
    assert.equal(consumer.requests.length, 1, 'only the accepted message reached mailhook');
  });
});

test('Postfix relays over LMTP to mailhook with smtp.lmtp: true; relay_recipient_maps refuses unknown recipients without asking', async (t) => {
  if (!requirePostfix(t)) return;
  await withRelay({ lmtp: true, relayRecipientMaps: true }, async ({ postfix, consumer }) => {
    const unknown = await rcptUntilDecided(postfix.port, `nobody@${DOMAIN}`);
    assert.equal(unknown.code, 550, unknown.raw);
    assert.match(unknown.text, /^5\.1\.1 <nobody@incoming\.example\.com>: Recipient address rejected: User unknown in relay recipient table/);

    // postmaster@ is in the list too (RFC 5321), and mailhook takes it (postmaster_route).
    const postmaster = await rcptUntilDecided(postfix.port, `postmaster@${DOMAIN}`);
    assert.equal(postmaster.code, 250, postmaster.raw);

    // A listed address is still verified with mailhook, now over LMTP.
    const known = await rcptUntilDecided(postfix.port, `incoming+lmtp-1@${DOMAIN}`);
    assert.equal(known.code, 250, known.raw);
    assert.match(postfix.log(), /postfix\/lmtp\[\d+\]: \w+: to=<incoming\+lmtp-1@incoming\.example\.com>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*status=deliverable/);
    const end = await sendThrough(postfix.port, `incoming+lmtp-1@${DOMAIN}`, 'via postfix lmtp');
    assert.equal(end?.code, 250, end?.raw);
    const [req] = await consumer.waitFor(1, 20_000);
    const p = JSON.parse(req!.body.toString()) as Payload;
    assert.equal(p.message.subject, 'via postfix lmtp');
    assert.deepEqual(p.recipients, [{ address: `incoming+lmtp-1@${DOMAIN}`, key: 'lmtp-1' }]);
    assert.match(postfix.log(), /relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*status=sent \(250 2\.0\.0 Ok: queued as \w+\)/);
    assert.match(postfix.log(), /postfix\/lmtp\[/, 'Postfix delivered with its lmtp client');
  });
});
