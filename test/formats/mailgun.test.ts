// format: mailgun end to end: SMTP in, Mailgun's forward() post out, checked by a verifier written from Mailgun's documented algorithm.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, timingSafeEqual } from 'node:crypto';
import { simpleParser } from 'mailparser';
import { Consumer, type ReceivedRequest } from '../helpers/consumer.js';
import { startTestApp, until, type TestApp } from '../helpers/app.js';
import { deliveriesOf, fixture, parseForm, rawPart, sendRaw, type ParsedForm } from './support.js';

const SIGNING_KEY = 'key-3ax6xnjp29jd6fds4gc373sgvjxteol0';

/**
 * Mailgun's "Securing Webhooks": concatenate timestamp and token, HMAC-SHA256 with the signing key, compare the
 * hex digest with signature. Like Action Mailbox's Mailgun ingress, also refuse a timestamp more than 2 minutes old;
 * and, as Mailgun advises, a token seen before (replay).
 */
function mailgunVerifier(key: string) {
  const seen = new Set<string>();
  return (form: { timestamp: string; token: string; signature: string }, nowSeconds = Math.floor(Date.now() / 1000)): string | true => {
    if (!/^\d+$/.test(form.timestamp)) return 'timestamp is not an integer';
    if (nowSeconds - Number(form.timestamp) > 120) return 'timestamp too old';
    if (form.token.length !== 50) return 'token is not 50 characters';
    if (seen.has(form.token)) return 'token replayed';
    const expected = Buffer.from(createHmac('sha256', key).update(form.timestamp + form.token).digest('hex'));
    const given = Buffer.from(form.signature);
    if (expected.length !== given.length || !timingSafeEqual(expected, given)) return 'signature mismatch';
    seen.add(form.token);
    return true;
  };
}

let app: TestApp;
const consumer = new Consumer();
const verify = mailgunVerifier(SIGNING_KEY);
const verdicts: Array<string | true> = [];
const forms = new Map<ReceivedRequest, ParsedForm>();
/** requests to /not-yet answered 404 before it takes them */
let notYet = 0;

before(async () => {
  await consumer.start();
  // The consumer answers as a Mailgun app does: 200 when the signature verifies, 406 (reject, no retry) when not.
  consumer.respond = async (req) => {
    if (req.url === '/not-yet' && notYet-- > 0) return { status: 404, body: 'no such ticket yet' };
    const form = await parseForm(req);
    forms.set(req, form);
    const verdict = verify({ timestamp: form.field('timestamp'), token: form.field('token'), signature: form.field('signature') });
    verdicts.push(verdict);
    return verdict === true ? { status: 200 } : { status: 406, body: String(verdict) };
  };
  const url = (path: string) => `http://127.0.0.1:${consumer.port}${path}`;
  app = await startTestApp({
    routes: `
  - name: parsed
    addresses: ["reply+%{key}@mg.test", "support+%{key}@mg.test", "desk+%{key}@mg.test"]
    webhook:
      url: "${url('/mailgun')}"
      format: mailgun
      secret: ${SIGNING_KEY}
  - name: mime
    addresses: ["*@mime.test"]
    webhook:
      url: "${url('/rails/action_mailbox/mailgun/inbound_emails/mime')}"
      format: mailgun
      secret: ${SIGNING_KEY}
      mime: true
  - name: notyet
    addresses: ["*@notyet.test"]
    webhook:
      url: "${url('/not-yet')}"
      format: mailgun
      secret: ${SIGNING_KEY}
  - name: forged
    addresses: ["*@forged.test"]
    webhook:
      url: "${url('/forged')}"
      format: mailgun
      secret: not-the-signing-key
`,
  });
});
after(async () => {
  await app.close();
  await consumer.stop();
});

async function deliver(raw: Buffer, to: string, route: string): Promise<{ req: ReceivedRequest; form: ParsedForm }> {
  const before = consumer.requests.length;
  await sendRaw(app.smtpPort, raw, [to], 'bounces+x@example.test');
  await consumer.waitFor(before + 1);
  const req = consumer.requests[before]!;
  await until(() => forms.get(req), 5000, 'form parsed');
  await until(() => deliveriesOf(app, route).every((d) => d.status !== 'pending' && d.status !== 'delivering'), 10_000, 'outcome recorded');
  return { req, form: forms.get(req)! };
}

test('the verifier refuses what Mailgun says to refuse (so the tests below can fail)', () => {
  const v = mailgunVerifier(SIGNING_KEY);
  const ts = String(Math.floor(Date.now() / 1000));
  const token = 'x'.repeat(50);
  const sig = createHmac('sha256', SIGNING_KEY).update(ts + token).digest('hex');
  assert.equal(v({ timestamp: ts, token, signature: sig.replace(/.$/, (c) => (c === '0' ? '1' : '0')) }), 'signature mismatch');
  assert.equal(v({ timestamp: String(Number(ts) - 600), token, signature: sig }), 'timestamp too old');
  assert.equal(v({ timestamp: ts, token, signature: sig }), true);
  assert.equal(v({ timestamp: ts, token, signature: sig }), 'token replayed');
});

test('parsed post: signed, charsets decoded in every field, reply stripped, attachments byte-exact with a content-id map', async () => {
  const { req, form } = await deliver(fixture('latin1-reply.eml'), 'support+ticket-42@mg.test', 'parsed');
  assert.equal(verdicts.at(-1), true);
  assert.match(String(req.headers['content-type']), /^multipart\/form-data; boundary=/, 'multipart when there are attachments');
  assert.equal(form.field('recipient'), 'support+ticket-42@mg.test');
  assert.equal(form.field('sender'), 'bounces+x@example.test');
  assert.equal(form.field('from'), 'André Gonçalves <andre@example.test>');
  assert.equal(form.field('subject'), 'Réponse à votre question');
  assert.equal(form.field('body-plain'), 'Très bien, merci André!\nÇa marche à merveille.\n\nOn Tue, 2 Jan 2024 at 10:00, Zoë Müller <zoe@example.test> wrote:\n> Est-ce que ça marche?\n> Zoë\n');
  assert.equal(form.field('stripped-text'), 'Très bien, merci André!\nÇa marche à merveille.');
  assert.match(form.field('body-html'), /<blockquote type="cite"><p>Est-ce que ça marche\?<\/p><\/blockquote>/);
  assert.ok(!form.field('stripped-html').includes('blockquote'), 'the quote is gone from stripped-html');
  assert.match(form.field('stripped-html'), /merci André!/);
  const headers = JSON.parse(form.field('message-headers')) as Array<[string, string]>;
  assert.ok(headers.every((h) => Array.isArray(h) && h.length === 2), 'a JSON list of pairs');
  assert.deepEqual(headers.find(([n]) => n === 'Subject'), ['Subject', 'Réponse à votre question']);
  assert.deepEqual(headers.find(([n]) => n === 'Cc'), ['Cc', 'Zoë Müller <zoe@example.test>']);
  assert.equal(form.field('Message-ID'), '<latin1-reply-1@example.test>', 'each header is also a field of its own');
  assert.equal(form.field('In-Reply-To'), '<question-1@in.test>');
  // Attachments, against the bytes the sender attached (decoded independently from the fixture).
  const source = await simpleParser(fixture('latin1-reply.eml'));
  assert.equal(form.field('attachment-count'), '3');
  assert.equal(source.attachments.length, 3);
  for (const [i, a] of source.attachments.entries()) {
    const file = form.files.get(`attachment-${i + 1}`);
    assert.ok(file, `attachment-${i + 1}`);
    assert.equal(file.name, a.filename);
    assert.equal(file.type, a.contentType);
    assert.deepEqual(Buffer.from(await file.arrayBuffer()), a.content, `attachment-${i + 1} byte for byte`);
  }
  assert.equal(form.files.get('attachment-3')?.name, 'résumé "final".pdf');
  assert.deepEqual(JSON.parse(form.field('content-id-map')), { '<logo-1@mail.example.test>': 'attachment-1' });
  assert.equal(deliveriesOf(app, 'parsed').at(-1)?.status, 'delivered');
});

test('parsed post without attachments is urlencoded; ISO-2022-JP and Shift_JIS fields come out right', async () => {
  const jp = await deliver(fixture('iso-2022-jp.eml'), 'desk+T-7@mg.test', 'parsed');
  assert.equal(verdicts.at(-1), true);
  assert.equal(jp.req.headers['content-type'], 'application/x-www-form-urlencoded');
  assert.equal(jp.form.field('from'), '佐藤花子 <sato@example.test>');
  assert.equal(jp.form.field('subject'), '会議の資料について');
  assert.equal(jp.form.field('To'), '受付 <desk+T-7@in.test>, other@example.test');
  assert.equal(jp.form.field('body-plain'), 'お世話になっております。\n資料をお送りします。\n');
  assert.equal(jp.form.field('stripped-text'), 'お世話になっております。\n資料をお送りします。');
  assert.equal(jp.form.field('attachment-count'), '0');
  assert.equal(jp.form.fields.has('body-html'), false, 'no HTML part, no body-html');

  const sj = await deliver(fixture('shift_jis.eml'), 'reply+abc123@mg.test', 'parsed');
  assert.equal(verdicts.at(-1), true);
  assert.equal(sj.form.field('subject'), '日本語の件名です');
  assert.equal(sj.form.field('from'), '山田太郎 <yamada@example.test>');
  assert.equal(sj.form.field('body-plain'), 'こんにちは、世界。\n添付ファイルを送ります。');
  const file = sj.form.files.get('attachment-1');
  assert.equal(file?.name, '報告書.txt');
  assert.deepEqual(Buffer.from(await file!.arrayBuffer()), (await simpleParser(fixture('shift_jis.eml'))).attachments[0]?.content);
});

test('a message header named like an attachment field (attachment-1, attachment-2) is not posted as a text field beside the file', async () => {
  const raw = Buffer.from(
    'From: Mallory <m@example.test>\r\nTo: desk+h1@mg.test\r\nSubject: forged fields\r\nMessage-ID: <forged-1@example.test>\r\n' +
      'attachment-1: not the file\r\nattachment-2: nor this\r\nattachment-count: 7\r\nX-Kept: yes\r\nMIME-Version: 1.0\r\n' +
      'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n' +
      '--b\r\nContent-Type: text/plain; name="real.txt"\r\nContent-Disposition: attachment; filename="real.txt"\r\n\r\nthe real file\r\n--b--\r\n',
  );
  const { form } = await deliver(raw, 'desk+h1@mg.test', 'parsed');
  assert.equal(verdicts.at(-1), true);
  assert.equal(form.field('attachment-count'), '1');
  assert.equal(form.fields.has('attachment-1'), false, 'no text field attachment-1 beside the file');
  assert.equal(form.fields.has('attachment-2'), false, 'nor one naming a file that is not there');
  assert.equal(await form.files.get('attachment-1')?.text(), 'the real file');
  assert.equal(form.field('X-Kept'), 'yes', 'other headers are still fields');
  // The headers are all still in message-headers.
  const headers = JSON.parse(form.field('message-headers')) as Array<[string, string]>;
  assert.deepEqual(headers.find(([n]) => n === 'attachment-1'), ['attachment-1', 'not the file']);
});

test('a message header whose name a form parser reads as structure (recipient[], timestamp[], subject[x]) is not posted as a field', async () => {
  // Express's urlencoded({ extended: true }) (qs), multer and Rack merge "recipient[]" into "recipient": the sender
  // would add an address of its choosing to the application's recipient, or break the signature check.
  const raw = Buffer.from(
    'From: Mallory <m@example.test>\r\nTo: desk+h2@mg.test\r\nSubject: forged structure\r\nMessage-ID: <forged-2@example.test>\r\n' +
      'recipient[]: injected@evil.test\r\ntimestamp[]: 1\r\nsubject[x]: y\r\ntoken]: z\r\nX-Kept: yes\r\n\r\nhello\r\n',
  );
  const { form } = await deliver(raw, 'desk+h2@mg.test', 'parsed');
  assert.equal(verdicts.at(-1), true);
  assert.deepEqual([...form.fields.keys()].filter((n) => /[[\]]/.test(n)), [], 'no field name with a bracket');
  assert.equal(form.field('recipient'), 'desk+h2@mg.test');
  assert.equal(form.field('X-Kept'), 'yes', 'other headers are still fields');
  const headers = JSON.parse(form.field('message-headers')) as Array<[string, string]>;
  assert.deepEqual(headers.find(([n]) => n === 'recipient[]'), ['recipient[]', 'injected@evil.test'], 'message-headers keeps every header');
});

test('a reply that is all quote keeps its text in stripped-text (never empty)', async () => {
  const { form } = await deliver(fixture('all-quote.eml'), 'reply+k9@mg.test', 'parsed');
  assert.equal(form.field('stripped-text'), form.field('body-plain'));
  assert.match(form.field('stripped-text'), /the original message/);
});

test('HTML-only mail below the root (multipart/related, as Gmail sends it): body-plain and stripped-text carry its text; an encoded "Last, First" name stays one address', async () => {
  const { form } = await deliver(fixture('html-related.eml'), 'reply+h1@mg.test', 'parsed');
  assert.equal(verdicts.at(-1), true);
  // Mailgun: body-plain is always there, a text rendering when the message has only HTML. mailparser renders only
  // HTML at the root of the MIME tree, so these were "" for such mail.
  assert.match(form.field('body-plain'), /^Guten Tag, die Lieferung ist angekommen\./);
  assert.match(form.field('body-plain'), /^> Ist die Lieferung da\?$/m);
  assert.match(form.field('stripped-text'), /^Guten Tag, die Lieferung ist angekommen\./);
  assert.doesNotMatch(form.field('stripped-text'), /Ist die Lieferung da/, 'the quote is stripped');
  assert.match(form.field('body-html'), /<p>Guten Tag/);
  // =?iso-8859-1?Q?M=FCller=2C_Hans?= decoded as plain text would read as two addresses, "Müller" and "Hans <…>".
  assert.equal(form.field('from'), '"Müller, Hans" <hans@example.test>');
  assert.equal(form.field('To'), '"Support, Küche" <reply+h1@mg.test>, other@example.test');
  const headers = new Map(JSON.parse(form.field('message-headers')) as Array<[string, string]>);
  assert.equal(headers.get('From'), '"Müller, Hans" <hans@example.test>');
  assert.equal(form.field('attachment-count'), '2');
});

test('two recipients of one message on a route get a post each, with their one address in recipient (as Action Mailbox\'s Mailgun ingress routes)', async () => {
  const before = consumer.requests.length;
  const formsBefore = forms.size;
  await sendRaw(app.smtpPort, fixture('iso-2022-jp.eml'), ['desk+a1@mg.test', 'support+b2@mg.test'], 'bounces+x@example.test');
  await until(() => forms.size >= formsBefore + 2, 5000, 'two posts');
  await until(() => deliveriesOf(app, 'parsed').every((d) => d.status === 'delivered'), 10_000, 'delivered');
  assert.equal(consumer.requests.length, before + 2, 'one post per recipient, no more');
  const recipients = consumer.requests.slice(before).map((r) => forms.get(r)!.field('recipient')).sort();
  assert.deepEqual(recipients, ['desk+a1@mg.test', 'support+b2@mg.test']);
  assert.deepEqual(verdicts.slice(-2), [true, true]);
});

test('mime: true posts the message byte for byte in body-mime, signed, as Action Mailbox\'s Mailgun ingress reads it', async () => {
  const raw = fixture('shift_jis.eml'); // 8-bit Shift_JIS body: any re-encoding would show
  const { req, form } = await deliver(raw, 'anyone@mime.test', 'mime');
  assert.equal(verdicts.at(-1), true);
  assert.equal(req.url, '/rails/action_mailbox/mailgun/inbound_emails/mime');
  assert.deepEqual(rawPart(req, 'body-mime'), raw);
  assert.equal(form.field('recipient'), 'anyone@mime.test');
  assert.equal(form.field('subject'), '日本語の件名です');
  assert.equal(form.fields.has('body-plain'), false);
  assert.equal(form.fields.has('attachment-count'), false);
});

test('a wrong signing key: the consumer answers 406 and the delivery is dead-lettered without retries', async () => {
  const before = consumer.requests.length;
  await deliver(fixture('iso-2022-jp.eml'), 'x@forged.test', 'forged');
  assert.equal(verdicts.at(-1), 'signature mismatch');
  const [d] = deliveriesOf(app, 'forged');
  assert.deepEqual([d?.status, d?.attempts, d?.last_status_code], ['dead', 1, 406]);
  assert.equal(consumer.requests.length, before + 1);
});

test('a 404 is retried, as Mailgun retries every status but 406', async () => {
  notYet = 1;
  const before = consumer.requests.length;
  await sendRaw(app.smtpPort, fixture('iso-2022-jp.eml'), ['x@notyet.test'], 'bounces+x@example.test');
  await consumer.waitFor(before + 2);
  await until(() => deliveriesOf(app, 'notyet').every((d) => d.status === 'delivered'), 10_000, 'delivered');
  const [d] = deliveriesOf(app, 'notyet');
  assert.deepEqual([d?.status, d?.attempts, d?.last_status_code], ['delivered', 2, 200]);
  const first = app.spool.db.prepare(`SELECT a.status_code, a.outcome, a.error FROM attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE d.route = 'notyet' AND a.attempt = 1`).get() as { status_code: number; outcome: string; error: string };
  assert.deepEqual([first.status_code, first.outcome], [404, 'retry']);
  assert.match(first.error, /^HTTP 404 \(retried, as Mailgun does for every status but 406\): no such ticket yet/);
});

test('every post carries a fresh 50-character token', () => {
  const tokens = [...forms.values()].map((f) => f.field('token'));
  assert.ok(tokens.length >= 5);
  assert.equal(new Set(tokens).size, tokens.length);
  for (const t of tokens) assert.equal(t.length, 50);
});
