// smtp.xforward_hosts: a listed relay's XFORWARD names the client SPF judges and the payload records, for one
// transaction; any other peer's is refused; the connection is still the relay's (counted once, per-IP limits).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { dkimSign, type DNSResolver } from 'mailauth';
import { Consumer } from '../helpers/consumer.js';
import { SECRET, until, type TestApp } from '../helpers/app.js';
import { RawSmtp, type SmtpReply } from '../helpers/smtp-client.js';
import { connectFrom, queuedId, startSmtpApp } from './support.js';
import { parseXforward, transactionClient } from '../../src/smtp/xforward.js';

const signer = (() => {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { privateKey: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), record: `v=DKIM1; k=rsa; p=${publicKey.export({ type: 'spki', format: 'der' }).toString('base64')}` };
})();

/** The sender's domain authorizes the forwarded client only, never the relay (127.0.0.1) or another peer. */
const TXT: Record<string, string[]> = {
  'sender.test': ['v=spf1 ip4:203.0.113.10 ip6:2001:db8::10 -all'],
  'unknown-client.test': ['v=spf1 ip4:203.0.113.10 -all'],
  'signed.test': ['v=spf1 ip4:203.0.113.10 -all'],
  'sel._domainkey.signed.test': [signer.record],
  '_dmarc.signed.test': ['v=DMARC1; p=reject'],
};
const lookups: string[] = [];
const resolver: DNSResolver = async (name, rrtype) => {
  lookups.push(`${rrtype} ${name.toLowerCase()}`);
  const key = name.toLowerCase().replace(/\.$/, '');
  if (rrtype === 'TXT' && TXT[key]) return (TXT[key] as string[]).map((v) => [v]);
  throw Object.assign(new Error(`queryTxt ENOTFOUND ${name}`), { code: 'ENOTFOUND' });
};

const ROUTES = (url: string) => `
  - name: hook
    addresses: ["user@in.test"]
    webhook:
      url: ${url}
      secret: ${SECRET}
`;

interface Payload {
  message_id: string;
  envelope: { mail_from: string; remote_address: string | null; helo: string | null };
  authentication: { spf: { result: string; domain: string | null }; dkim: { result: string }; dmarc: { result: string; domain: string | null } } | null;
  authentication_results: string | null;
}


function message(from: string, subject: string): string {
  return `From: ${from}\r\nTo: user@in.test\r\nSubject: ${subject}\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <${subject.replace(/\W/g, '')}@xforward.test>\r\n\r\nHello.\r\n`;
}

/** MAIL, RCPT, DATA, the message: the stored id. */
async function send(smtp: RawSmtp | Awaited<ReturnType<typeof connectFrom>>, mailFrom: string, subject: string, raw = message(mailFrom, subject)): Promise<string> {
  assert.equal((await smtp.cmd(`MAIL FROM:<${mailFrom}>`)).raw, '250 2.1.0 Accepted\r\n');
  assert.equal((await smtp.cmd('RCPT TO:<user@in.test>')).code, 250);
  assert.equal((await smtp.cmd('DATA')).code, 354);
  (smtp instanceof RawSmtp ? smtp : smtp.socket).write(raw + '.\r\n');
  return queuedId(await smtp.read(15_000));
}

function xforwardLine(r: SmtpReply): string | undefined {
  return r.lines.find((l) => /XFORWARD/.test(l));
}

describe('XFORWARD from a listed relay (smtp.xforward_hosts: ["127.0.0.1"])', () => {
  let app: TestApp;
  let consumer: Consumer;
  before(async () => {
    consumer = await new Consumer().start();
    app = await startSmtpApp({ smtp: '  xforward_hosts: ["127.0.0.1"]\n  sender_auth:\n    enabled: true', routes: ROUTES(consumer.url), dnsResolver: resolver });
  });
  after(async () => {
    await app?.close();
    await consumer?.stop();
  });

  async function payloadFor(id: string): Promise<Payload> {
    for (;;) {
      const hit = consumer.requests.map((r) => JSON.parse(r.body.toString('utf8')) as Payload).find((p) => p.message_id === id);
      if (hit) return hit;
      await consumer.waitFor(consumer.requests.length + 1, 15_000);
    }
  }

  async function relaySession(): Promise<RawSmtp> {
    const { smtp, banner } = await RawSmtp.open(app.smtpPort);
    assert.equal(banner.code, 220, banner.raw);
    const ehlo = await smtp.cmd('EHLO relay.test');
    assert.equal(ehlo.code, 250, ehlo.raw);
    assert.match(xforwardLine(ehlo) ?? '', /^250[ -]XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE$/, `XFORWARD is announced to the listed relay: ${ehlo.raw}`);
    return smtp;
  }

  test('SPF is judged for the forwarded client (pass), the envelope names it, meta.relay keeps the relay; the next transaction without XFORWARD is the relay\'s again (fail)', async () => {
    const smtp = await relaySession();
    // Postfix splits the attributes over two commands when the line would be long; they add up.
    assert.equal((await smtp.cmd('XFORWARD NAME=mail.sender.test ADDR=203.0.113.10 PORT=40000 PROTO=ESMTP')).raw, '250 2.0.0 Ok\r\n');
    assert.equal((await smtp.cmd('XFORWARD HELO=Mail.Sender.Test IDENT=4XyZ SOURCE=REMOTE')).raw, '250 2.0.0 Ok\r\n');
    const forwarded = await send(smtp, 'alice@sender.test', 'forwarded');
    // Same connection, as Postfix reuses one: no XFORWARD for this transaction, so the client is the relay itself.
    const direct = await send(smtp, 'alice@sender.test', 'from the relay itself');
    await smtp.quit();

    const p = await payloadFor(forwarded);
    assert.equal(p.envelope.remote_address, '203.0.113.10');
    assert.equal(p.envelope.helo, 'mail.sender.test');
    assert.deepEqual(p.authentication?.spf, { result: 'pass', domain: 'sender.test' });
    assert.match(p.authentication_results ?? '', /spf=pass .*designates 203\.0\.113\.10 as permitted sender/);
    assert.deepEqual(app.spool.getMessage(forwarded)?.meta?.relay, { address: '127.0.0.1', helo: 'relay.test' });

    const q = await payloadFor(direct);
    assert.equal(q.envelope.remote_address, '127.0.0.1');
    assert.equal(q.envelope.helo, 'relay.test');
    assert.deepEqual(q.authentication?.spf, { result: 'fail', domain: 'sender.test' });
    assert.equal(app.spool.getMessage(direct)?.meta?.relay, undefined);
  });

  test('RSET and a new EHLO end what an XFORWARD said, as the end of a transaction does: the next message is the relay\'s', async () => {
    const smtp = await relaySession();
    assert.equal((await smtp.cmd('XFORWARD ADDR=203.0.113.10 HELO=mail.sender.test')).code, 250);
    assert.equal((await smtp.cmd('RSET')).code, 250);
    const afterRset = await send(smtp, 'alice@sender.test', 'after rset');
    assert.equal((await smtp.cmd('XFORWARD ADDR=203.0.113.10 HELO=mail.sender.test')).code, 250);
    assert.equal((await smtp.cmd('EHLO relay.test')).code, 250);
    const afterEhlo = await send(smtp, 'alice@sender.test', 'after ehlo');
    await smtp.quit();
    for (const id of [afterRset, afterEhlo]) {
      const p = await payloadFor(id);
      assert.equal(p.envelope.remote_address, '127.0.0.1', id);
      assert.deepEqual(p.authentication?.spf, { result: 'fail', domain: 'sender.test' });
      assert.equal(app.spool.getMessage(id)?.meta?.relay, undefined);
    }
  });

  test('an IPv6 client as Postfix writes it (ADDR=IPV6:…) is judged by its address', async () => {
    const smtp = await relaySession();
    assert.equal((await smtp.cmd('XFORWARD ADDR=IPV6:2001:DB8:0:0:0:0:0:10 HELO=v6.sender.test')).code, 250);
    const id = await send(smtp, 'bob@sender.test', 'over ipv6');
    await smtp.quit();
    const p = await payloadFor(id);
    assert.equal(p.envelope.remote_address, '2001:db8::10');
    assert.equal(p.envelope.helo, 'v6.sender.test');
    assert.equal(p.authentication?.spf.result, 'pass');
  });

  test('ADDR=[UNAVAILABLE] (after a forwarded transaction on the same connection): no address, SPF none and not looked up, DKIM and DMARC still judged; HELO=[UNAVAILABLE] keeps the relay\'s EHLO for the protocol', async () => {
    const smtp = await relaySession();
    assert.equal((await smtp.cmd('XFORWARD ADDR=203.0.113.10 HELO=mail.sender.test')).code, 250);
    await send(smtp, 'alice@sender.test', 'first of two');
    assert.equal((await smtp.cmd('XFORWARD NAME=[UNAVAILABLE] ADDR=[UNAVAILABLE] PORT=[UNAVAILABLE] HELO=[UNAVAILABLE] SOURCE=LOCAL')).code, 250);
    const before = lookups.length;
    const id = await send(smtp, 'cron@unknown-client.test', 'unknown client');
    await smtp.quit();
    const p = await payloadFor(id);
    assert.equal(p.envelope.remote_address, null, 'not the previous transaction\'s client, nor the relay');
    assert.equal(p.envelope.helo, null);
    assert.deepEqual(p.authentication?.spf, { result: 'none', domain: null });
    assert.equal(p.authentication?.dkim.result, 'none');
    assert.deepEqual(p.authentication?.dmarc, { result: 'none', domain: 'unknown-client.test', policy: null });
    assert.match(p.authentication_results ?? '', /^mx\.test; dkim=none .*; spf=none \(client address unknown: the relay did not give it\); dmarc=none /);
    const made = lookups.slice(before);
    assert.ok(!made.includes('TXT unknown-client.test'), `no SPF lookup without an address: ${made.join(', ')}`);
    assert.ok(made.includes('TXT _dmarc.unknown-client.test'), `DMARC was looked up: ${made.join(', ')}`);
    assert.deepEqual(app.spool.getMessage(id)?.meta?.relay, { address: '127.0.0.1', helo: 'relay.test' });
  });

  test('with no client address, DMARC is judged on DKIM alone: an aligned signature passes it', async () => {
    const key = { signingDomain: 'signed.test', selector: 'sel', privateKey: signer.privateKey };
    const plain = message('Carol <carol@signed.test>', 'signed unknown client');
    const signed = await dkimSign(plain, { ...key, signTime: new Date(), signatureData: [key] });
    assert.deepEqual(signed.errors, []);
    const smtp = await relaySession();
    assert.equal((await smtp.cmd('XFORWARD ADDR=[UNAVAILABLE] HELO=[UNAVAILABLE]')).code, 250);
    const id = await send(smtp, 'carol@signed.test', 'signed unknown client', signed.signatures + plain);
    await smtp.quit();
    const p = await payloadFor(id);
    assert.deepEqual(p.authentication?.spf, { result: 'none', domain: null });
    assert.equal(p.authentication?.dkim.result, 'pass');
    assert.deepEqual(p.authentication?.dmarc, { result: 'pass', domain: 'signed.test', policy: 'reject' });
  });

  test('XFORWARD SOURCE=LOCAL alone (Postfix forwarding mail submitted on its machine): no client address either, SPF none', async () => {
    const smtp = await relaySession();
    assert.equal((await smtp.cmd('XFORWARD SOURCE=LOCAL')).code, 250);
    const id = await send(smtp, 'cron@unknown-client.test', 'local submission');
    await smtp.quit();
    const p = await payloadFor(id);
    assert.equal(p.envelope.remote_address, null);
    assert.equal(p.envelope.helo, null);
    assert.deepEqual(p.authentication?.spf, { result: 'none', domain: null });
    assert.deepEqual(app.spool.getMessage(id)?.meta?.relay, { address: '127.0.0.1', helo: 'relay.test' });
  });

  test('a malformed XFORWARD, or one inside a transaction, is refused with the enhanced code and changes nothing', async () => {
    const smtp = await relaySession();
    assert.equal((await smtp.cmd('XFORWARD')).raw, '501 5.5.4 Syntax: XFORWARD attribute=value...\r\n');
    assert.equal((await smtp.cmd('XFORWARD ADDR=mail.sender.test')).raw, '501 5.5.4 Bad XFORWARD ADDR: not an IP address\r\n');
    assert.equal((await smtp.cmd('XFORWARD COLOR=blue')).raw, '501 5.5.4 Bad XFORWARD attribute name\r\n');
    assert.equal((await smtp.cmd('XFORWARD HELO=a+0D+0Ab')).raw, '501 5.5.4 Syntax: XFORWARD attribute=value...\r\n', 'no CR LF smuggled in xtext');
    assert.equal((await smtp.cmd('MAIL FROM:<alice@sender.test>')).code, 250);
    assert.equal((await smtp.cmd('XFORWARD ADDR=203.0.113.10')).raw, '503 5.5.1 Error: MAIL transaction in progress\r\n');
    assert.equal((await smtp.cmd('RCPT TO:<user@in.test>')).code, 250);
    assert.equal((await smtp.cmd('DATA')).code, 354);
    smtp.write(message('alice@sender.test', 'refused xforwards') + '.\r\n');
    const id = queuedId(await smtp.read(15_000));
    await smtp.quit();
    assert.equal((await payloadFor(id)).envelope.remote_address, '127.0.0.1');
  });

  test('a peer not on the list (127.0.0.2): XFORWARD is not announced and gets 550 5.7.0; SPF judges the peer', async () => {
    const s = await connectFrom(app.smtpPort, '127.0.0.2');
    try {
      assert.equal((await s.read()).code, 220);
      const ehlo = await s.cmd('EHLO client.test');
      assert.equal(ehlo.code, 250, ehlo.raw);
      assert.equal(xforwardLine(ehlo), undefined, ehlo.raw);
      assert.equal((await s.cmd('XFORWARD NAME=mail.sender.test ADDR=203.0.113.10 HELO=mail.sender.test')).raw, '550 5.7.0 Error: insufficient authorization\r\n');
      const id = await send(s, 'alice@sender.test', 'untrusted peer');
      const p = await payloadFor(id);
      assert.equal(p.envelope.remote_address, '127.0.0.2');
      assert.equal(p.envelope.helo, 'client.test');
      assert.equal(p.authentication?.spf.result, 'fail');
      assert.equal(app.spool.getMessage(id)?.meta?.relay, undefined);
    } finally {
      s.socket.destroy();
    }
  });
});

describe('XFORWARD without smtp.xforward_hosts (the default)', () => {
  let app: TestApp;
  before(async () => {
    app = await startSmtpApp();
  });
  after(async () => {
    await app?.close();
  });

  test('is neither announced nor understood, from loopback too', async () => {
    const { smtp } = await RawSmtp.open(app.smtpPort);
    const ehlo = await smtp.cmd('EHLO relay.test');
    assert.equal(xforwardLine(ehlo), undefined, ehlo.raw);
    assert.equal((await smtp.cmd('XFORWARD ADDR=203.0.113.10')).raw, '500 5.5.2 Error: command not recognized\r\n');
    await smtp.quit();
  });
});

describe('the relay\'s connection is counted once, whatever it forwards', () => {
  let app: TestApp;
  before(async () => {
    // One connection per address, loopback not exempt: were the forwarded client counted as a second connection,
    // or the relay again, the numbers below would show it.
    app = await startSmtpApp({ smtp: '  xforward_hosts: ["127.0.0.1"]\n  limits:\n    max_connections_per_ip: 1\n    exempt: []' });
  });
  after(async () => {
    await app?.close();
  });

  test('one connection in the metric and the per-IP count (the relay\'s), none for the forwarded clients, back to zero at close', async () => {
    const opened = (await app.metrics.smtpConnections.get()).values[0]?.value ?? 0;
    const { smtp } = await RawSmtp.open(app.smtpPort);
    assert.equal((await smtp.cmd('EHLO relay.test')).code, 250);
    for (const [i, addr] of ['203.0.113.10', '198.51.100.20'].entries()) {
      assert.equal((await smtp.cmd(`XFORWARD ADDR=${addr} HELO=client${i}.test`)).code, 250);
      assert.equal((await smtp.cmd('MAIL FROM:<a@sender.test>')).code, 250);
      assert.equal((await smtp.cmd('RCPT TO:<user@in.test>')).code, 250);
      assert.equal((await smtp.cmd('DATA')).code, 354);
      smtp.write(`Subject: ${i}\r\n\r\nx\r\n.\r\n`);
      assert.equal(app.spool.getMessage(queuedId(await smtp.read()))?.envelope.remoteAddress, addr);
      assert.equal(app.smtp.limits.connectionsFrom('127.0.0.1'), 1);
      assert.equal(app.smtp.limits.connectionsFrom(addr), 0);
    }
    assert.equal(((await app.metrics.smtpConnections.get()).values[0]?.value ?? 0) - opened, 1);
    await smtp.quit();
    await until(() => app.smtp.limits.connectionsFrom('127.0.0.1') === 0, 5000, 'the relay\'s connection released');
    // The limit of one still lets the relay in again: nothing was left counted.
    const again = await RawSmtp.open(app.smtpPort);
    assert.equal(again.banner.code, 220, again.banner.raw);
    await again.smtp.quit();
  });
});

describe('parseXforward and transactionClient (pure)', () => {
  test('xtext, [UNAVAILABLE] in any case, IPv6 normalized, unknown names and non-addresses refused', () => {
    assert.deepEqual(parseXforward(['name=a+2Bb.test', 'ADDR=IPv6:2001:DB8::A', 'HELO=[unavailable]']), {
      attributes: new Map<string, string | false>([
        ['NAME', 'a+b.test'],
        ['ADDR', '2001:db8::a'],
        ['HELO', false],
      ]),
    });
    assert.deepEqual(parseXforward(['ADDR=[UNAVAILABLE]']), { attributes: new Map([['ADDR', false]]) });
    assert.deepEqual(parseXforward([]), { error: 'syntax' });
    assert.deepEqual(parseXforward(['ADDR']), { error: 'syntax' });
    assert.deepEqual(parseXforward(['ADDR=+4']), { error: 'syntax' });
    assert.deepEqual(parseXforward(['LOGIN=root']), { error: 'attribute' });
    assert.deepEqual(parseXforward(['ADDR=999.1.1.1']), { error: 'address' });
    assert.deepEqual(parseXforward(['ADDR=IPV6:[UNAVAILABLE]']), { error: 'address' });
    // xtext bytes are UTF-8, as Postfix encodes an SMTPUTF8 client's HELO; bytes that are not UTF-8 are refused.
    assert.deepEqual(parseXforward(['HELO=M+C3+BCller.test']), { attributes: new Map([['HELO', 'müller.test']]) });
    assert.deepEqual(parseXforward(['HELO=a+FF.test']), { error: 'syntax' });
    assert.deepEqual(parseXforward(['ADDR=IPV6:::ffff:203.0.113.10']), { attributes: new Map([['ADDR', '203.0.113.10']]) });
    assert.deepEqual(parseXforward(['ADDR=IPV6:::FFFF:CB00:710A']), { attributes: new Map([['ADDR', '203.0.113.10']]) });
    assert.deepEqual(parseXforward(['ADDR=IPV6:::1:CB00:710A']), { attributes: new Map([['ADDR', '::1:cb00:710a']]) });
  });

  test('the client is the peer unless the transaction has an XFORWARD; then the peer is the relay, and what it did not send is unknown', () => {
    const session = (xForward: Map<string, string | number | false>) => ({ remoteAddress: '127.0.0.1', hostNameAppearsAs: 'relay.test', xForward });
    assert.deepEqual(transactionClient(session(new Map())), { address: '127.0.0.1', helo: 'relay.test', relay: null });
    assert.deepEqual(transactionClient(session(new Map([['SOURCE', 'LOCAL']]))), { address: null, helo: null, relay: { address: '127.0.0.1', helo: 'relay.test' } });
    assert.deepEqual(transactionClient(session(new Map([['ADDR', '192.0.2.7'], ['HELO', 'c.test']]))), { address: '192.0.2.7', helo: 'c.test', relay: { address: '127.0.0.1', helo: 'relay.test' } });
    assert.deepEqual(transactionClient(session(new Map<string, string | false>([['ADDR', false], ['HELO', false]]))), { address: null, helo: null, relay: { address: '127.0.0.1', helo: 'relay.test' } });
  });
});
