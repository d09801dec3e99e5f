// format: action_mailbox end to end: SMTP in, raw message out to a stand-in of Rails' relay ingress that checks what Rails checks.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { timingSafeEqual } from 'node:crypto';
import { simpleParser } from 'mailparser';
import { Consumer, type ReceivedRequest } from '../helpers/consumer.js';
import { startTestApp, until, type TestApp } from '../helpers/app.js';
import { deliveriesOf, fixture, formatContext, sendRaw } from './support.js';
import { actionMailboxFormat } from '../../src/delivery/formats/action_mailbox.js';

const PASSWORD = 'ingress-pa$$word:with-colon';
const RELAY_PATH = '/rails/action_mailbox/relay/inbound_emails';

/**
 * What ActionMailbox::Ingresses::Relay::InboundEmailsController does before it stores a message: 404 unless the
 * relay ingress is configured, http_basic_authenticate_or_request_with(name: "actionmailbox", password:) (401 with
 * a Basic challenge otherwise), 415 unless request.media_type is message/rfc822, 422 without a body; then 204.
 */
function railsRelayIngress(password: string) {
  const secureCompare = (a: string, b: string) => {
    const x = Buffer.from(a);
    const y = Buffer.from(b);
    return x.length === y.length && timingSafeEqual(x, y);
  };
  return (req: ReceivedRequest) => {
    if (req.method !== 'POST' || req.url !== RELAY_PATH) return { status: 404 };
    const auth = /^Basic (.+)$/i.exec(String(req.headers.authorization ?? ''));
    const decoded = auth ? Buffer.from(auth[1] as string, 'base64').toString('utf8') : '';
    const colon = decoded.indexOf(':');
    const [name, pass] = colon === -1 ? ['', ''] : [decoded.slice(0, colon), decoded.slice(colon + 1)];
    if (!auth || !(secureCompare(name, 'actionmailbox') && secureCompare(pass, password))) {
      return { status: 401, headers: { 'www-authenticate': 'Basic realm="Action Mailbox"' }, body: 'HTTP Basic: Access denied.\n' };
    }
    const mediaType = String(req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (mediaType !== 'message/rfc822') return { status: 415 };
    if (req.body.length === 0) return { status: 422 };
    return { status: 204 };
  };
}

let app: TestApp;
const rails = new Consumer();
const wrongPassword = new Consumer();
const flaky = new Consumer();

before(async () => {
  await Promise.all([rails.start(), wrongPassword.start(), flaky.start()]);
  rails.respond = railsRelayIngress(PASSWORD);
  wrongPassword.respond = railsRelayIngress('the-real-password');
  const flakyIngress = railsRelayIngress(PASSWORD);
  flaky.respond = (req, i) => (i === 0 ? { status: 503, body: 'maintenance' } : flakyIngress(req));
  const base = (c: Consumer) => `http://127.0.0.1:${c.port}${RELAY_PATH}`;
  app = await startTestApp({
    routes: `
  - name: rails
    addresses: ["reply+%{key}@am.test", "support@am.test"]
    webhook:
      url: "${base(rails)}"
      format: action_mailbox
      secret: ${JSON.stringify(PASSWORD)}
  - name: wrong
    addresses: ["*@wrong.test"]
    webhook:
      url: "${base(wrongPassword)}"
      format: action_mailbox
      secret: not-the-password
  - name: flaky
    addresses: ["*@flaky.test"]
    webhook:
      url: "${base(flaky)}"
      format: action_mailbox
      secret: ${JSON.stringify(PASSWORD)}
`,
  });
});
after(async () => {
  await app.close();
  await Promise.all([rails.stop(), wrongPassword.stop(), flaky.stop()]);
});

test('the stand-in refuses what Rails refuses (so the tests below can fail)', async () => {
  const ingress = railsRelayIngress(PASSWORD);
  const req = (headers: Record<string, string>, body = Buffer.from('Subject: x\r\n\r\nx')): ReceivedRequest => ({ method: 'POST', url: RELAY_PATH, headers, body, at: 0 });
  const basic = (u: string, p: string) => `Basic ${Buffer.from(`${u}:${p}`).toString('base64')}`;
  assert.equal(ingress(req({ 'content-type': 'message/rfc822' })).status, 401);
  assert.equal(ingress(req({ 'content-type': 'message/rfc822', authorization: basic('actionmailbox', 'nope') })).status, 401);
  assert.equal(ingress(req({ 'content-type': 'message/rfc822', authorization: basic('someone', PASSWORD) })).status, 401);
  assert.equal(ingress(req({ 'content-type': 'text/plain', authorization: basic('actionmailbox', PASSWORD) })).status, 415);
  assert.equal(ingress(req({ 'content-type': 'message/rfc822', authorization: basic('actionmailbox', PASSWORD) }, Buffer.alloc(0))).status, 422);
  assert.equal(ingress(req({ 'content-type': 'Message/RFC822; charset=binary', authorization: basic('actionmailbox', PASSWORD) })).status, 204);
});

test('credentials written into the URL are not sent: the ingress password is the secret (the config refuses such a URL; the encoder strips it anyway)', async () => {
  const req = await actionMailboxFormat.encode(formatContext(Buffer.from('Subject: x\r\n\r\nx'), {
    recipients: [{ address: 'support@am.test', key: null }],
    webhook: { format: 'action_mailbox', url: `http://someone:ignored@127.0.0.1:9${RELAY_PATH}`, signingKeyBytes: Buffer.from(PASSWORD) },
  }));
  assert.equal(req.url, `http://127.0.0.1:9${RELAY_PATH}`);
  assert.equal((req.headers as Record<string, string>).authorization, `Basic ${Buffer.from(`actionmailbox:${PASSWORD}`).toString('base64')}`);
});

test('messages in three legacy charsets reach the ingress byte for byte, authenticated, as message/rfc822', async () => {
  const names = ['latin1-reply.eml', 'shift_jis.eml', 'iso-2022-jp.eml'];
  const recipients = ['reply+abc123@am.test', 'support@am.test', 'reply+T-7@am.test'];
  for (const [i, name] of names.entries()) await sendRaw(app.smtpPort, fixture(name), [recipients[i]!]);
  const reqs = await rails.waitFor(3);
  await until(() => deliveriesOf(app, 'rails').filter((d) => d.status === 'delivered').length === 3, 10_000, 'three delivered');
  for (const [i, name] of names.entries()) {
    // Requests may arrive in any order: find this message's by its recipient line.
    const prefix = Buffer.from(`X-Original-To: ${recipients[i]}\r\n`);
    const req = reqs.find((r) => r.body.subarray(0, prefix.length).equals(prefix));
    assert.ok(req, `a request for ${name}`);
    assert.equal(req.headers['content-type'], 'message/rfc822');
    assert.equal(req.url, RELAY_PATH, 'userinfo in the configured URL is not sent');
    assert.deepEqual(req.body, Buffer.concat([prefix, fixture(name)]), `${name}: the message exactly as received, after X-Original-To`);
  }
  for (const d of deliveriesOf(app, 'rails')) assert.deepEqual([d.status, d.attempts, d.last_status_code], ['delivered', 1, 204]);
  // What the Rails app then reads out of it, with the header Action Mailbox routes Bcc'd mail by.
  const sjis = await simpleParser(reqs.find((r) => r.body.includes(Buffer.from('sjis-1@')))!.body);
  assert.equal(sjis.subject, '日本語の件名です');
  assert.equal(sjis.headers.get('x-original-to'), 'support@am.test');
  assert.equal(sjis.attachments[0]?.filename, '報告書.txt');
});

test('a wrong ingress password (401) is dead-lettered after one attempt and logged as a configuration problem', async () => {
  await sendRaw(app.smtpPort, fixture('all-quote.eml'), ['x@wrong.test']);
  await wrongPassword.waitFor(1);
  const [d] = await until(() => {
    const rows = deliveriesOf(app, 'wrong');
    return rows[0]?.status === 'dead' ? rows : undefined;
  }, 10_000, 'dead-lettered');
  assert.equal(d?.attempts, 1);
  assert.equal(d?.last_status_code, 401);
  assert.match(d?.last_error ?? '', /ingress password/);
  assert.equal(wrongPassword.requests.length, 1, 'not retried');
  const line = app.logs.find((l) => l.includes('configuration problem') && l.includes('"route":"wrong"'));
  assert.ok(line, 'logged loudly');
  assert.equal(JSON.parse(line).level, 50, 'at error level');
  assert.ok(!app.logs.some((l) => l.includes(PASSWORD) || l.includes('not-the-password')), 'the password is never logged');
});

test('a 503 from the app is retried and the next attempt is delivered', async () => {
  await sendRaw(app.smtpPort, fixture('iso-2022-jp.eml'), ['desk@flaky.test']);
  await flaky.waitFor(2);
  await until(() => deliveriesOf(app, 'flaky')[0]?.status === 'delivered', 10_000, 'delivered on retry');
  const [d] = deliveriesOf(app, 'flaky');
  assert.deepEqual([d?.attempts, d?.last_status_code], [2, 204]);
  assert.deepEqual(flaky.requests[0]?.body, flaky.requests[1]?.body, 'the retry sends the same bytes');
});
