// format: postmark: the payload type-checked against the postmark package's InboundWebhook, and end to end over SMTP with Basic auth.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { simpleParser } from 'mailparser';
import type { Models } from 'postmark';
import { buildPostmarkPayload, type PostmarkInbound } from '../../src/delivery/formats/postmark.js';
import { inboundView } from '../../src/delivery/formats/inbound.js';
import { Consumer } from '../helpers/consumer.js';
import { startTestApp, until, type TestApp } from '../helpers/app.js';
import { postmarkLatin1Reply } from '../fixtures/formats/postmark-latin1-reply.js';
import { deliveriesOf, fixture, FIXTURES, formatContext, sendRaw } from './support.js';

// Compile-time: every payload mailhook's type allows is a Postmark InboundWebhook.
const asInboundWebhook = (p: PostmarkInbound): Models.InboundWebhook => p;

async function latin1Payload(): Promise<PostmarkInbound> {
  const raw = fixture('latin1-reply.eml');
  const ctx = formatContext(raw, {
    recipients: [{ address: 'support+ticket-42@in.test', key: 'ticket-42' }],
    webhook: { format: 'postmark', options: { mime: false, raw_email: true, send_raw: false } },
  });
  return buildPostmarkPayload(ctx, await inboundView(raw));
}

test('the committed fixture is what mailhook produces today (and it type-checks as Models.InboundWebhook)', async () => {
  const payload = await latin1Payload();
  if (process.env.UPDATE_FIXTURES === '1') {
    const text = `// Produced by mailhook's postmark encoder from latin1-reply.eml (test/formats/postmark.test.ts; UPDATE_FIXTURES=1 rewrites it).
// Typed as the postmark package's InboundWebhook: \`npm run typecheck\` checks mailhook's output against Postmark's own type.
import type { Models } from 'postmark';

export const postmarkLatin1Reply: Models.InboundWebhook = ${JSON.stringify(payload, null, 2)};
`;
    writeFileSync(join(FIXTURES, 'postmark-latin1-reply.ts'), text);
  }
  assert.deepEqual(JSON.parse(JSON.stringify(asInboundWebhook(payload))), JSON.parse(JSON.stringify(postmarkLatin1Reply)));
});

test('the fixture itself says the right things: decoded names, MailboxHash, stripped reply, byte-exact attachments, RawEmail', async () => {
  const p = postmarkLatin1Reply;
  assert.equal(p.FromName, 'André Gonçalves');
  assert.deepEqual(p.FromFull, { Email: 'andre@example.test', Name: 'André Gonçalves', MailboxHash: '' });
  assert.equal(p.To, '"Support" <support+ticket-42@in.test>');
  assert.deepEqual(p.ToFull, [{ Email: 'support+ticket-42@in.test', Name: 'Support', MailboxHash: 'ticket-42' }]);
  assert.deepEqual(p.CcFull, [{ Email: 'zoe@example.test', Name: 'Zoë Müller', MailboxHash: '' }]);
  assert.equal(p.MailboxHash, 'ticket-42');
  assert.equal(p.OriginalRecipient, 'support+ticket-42@in.test');
  assert.equal(p.Subject, 'Réponse à votre question');
  assert.equal(p.ReplyTo, 'andre.replies@example.test');
  assert.equal(p.Date, 'Wed, 03 Jan 2024 09:15:00 +0100');
  assert.equal(p.StrippedTextReply, 'Très bien, merci André!\nÇa marche à merveille.');
  assert.ok(p.Headers.some((h) => h.Name === 'Message-ID' && h.Value === '<latin1-reply-1@example.test>'));
  const source = await simpleParser(fixture('latin1-reply.eml'));
  assert.deepEqual(
    p.Attachments.map((a) => [a.Name, a.ContentType, a.ContentLength, a.ContentID]),
    source.attachments.map((a) => [a.filename, a.contentType, a.size, a.contentId?.replace(/^<|>$/g, '') ?? '']),
  );
  for (const [i, a] of p.Attachments.entries()) assert.deepEqual(Buffer.from(a.Content, 'base64'), source.attachments[i]?.content);
  assert.equal(p.RawEmail, fixture('latin1-reply.eml').toString('utf8'));
});

let app: TestApp;
const consumer = new Consumer();
const received: Models.InboundWebhook[] = [];
/** the statuses /not-yet answers before it takes a post */
let notYet: number[] = [];

before(async () => {
  await consumer.start();
  // A Postmark consumer as an app writes one: Basic auth checked, the body read as Postmark's InboundWebhook.
  consumer.respond = (req) => {
    // Action Mailbox's Postmark ingress answers 422 to a post without RawEmail; a deploy's proxy may answer 404.
    if (req.url === '/not-yet' && notYet.length > 0) return { status: notYet.shift()!, body: 'not yet' };
    if (req.headers.authorization !== `Basic ${Buffer.from('actionmailbox:s3cr3t/pa:ss').toString('base64')}`) return { status: 401 };
    if (req.headers['content-type'] !== 'application/json') return { status: 415 };
    received.push(JSON.parse(req.body.toString('utf8')) as Models.InboundWebhook);
    return { status: 200 };
  };
  app = await startTestApp({
    routes: `
  - name: pm
    addresses: ["reply+%{key}@pm.test", "support+%{key}@pm.test", "desk+%{key}@pm.test", "plain@pm.test"]
    webhook:
      url: "http://actionmailbox:s3cr3t%2Fpa%3Ass@127.0.0.1:${consumer.port}/rails/action_mailbox/postmark/inbound_emails"
      format: postmark
      raw_email: true
  - name: notyet
    addresses: ["*@notyet.test"]
    webhook:
      url: "http://actionmailbox:s3cr3t%2Fpa%3Ass@127.0.0.1:${consumer.port}/not-yet"
      format: postmark
`,
  });
});
after(async () => {
  await app.close();
  await consumer.stop();
});

async function deliver(raw: Buffer, to: string[]): Promise<Models.InboundWebhook> {
  const before = received.length;
  await sendRaw(app.smtpPort, raw, to);
  await consumer.waitFor(consumer.requests.length + 1);
  await until(() => received.length > before, 5000, 'payload');
  return received[before]!;
}

test('over SMTP: Basic auth from the URL, userinfo not in the request, fields decoded from Shift_JIS', async () => {
  const p = await deliver(fixture('shift_jis.eml'), ['reply+abc123@pm.test']);
  const req = consumer.requests.at(-1)!;
  assert.equal(req.url, '/rails/action_mailbox/postmark/inbound_emails');
  assert.equal(req.headers.host, `127.0.0.1:${consumer.port}`);
  assert.equal(p.Subject, '日本語の件名です');
  assert.equal(p.FromName, '山田太郎');
  assert.equal(p.TextBody, 'こんにちは、世界。\n添付ファイルを送ります。');
  assert.equal(p.MailboxHash, 'abc123');
  assert.deepEqual(p.ToFull, [{ Email: 'reply+abc123@in.test', Name: '', MailboxHash: 'abc123' }]);
  assert.equal(p.Attachments[0]?.Name, '報告書.txt');
  const source = await simpleParser(fixture('shift_jis.eml'));
  assert.deepEqual(Buffer.from(p.Attachments[0]!.Content, 'base64'), source.attachments[0]?.content);
  assert.equal(p.MessageStream, 'inbound');
  await until(() => deliveriesOf(app, 'pm').every((d) => d.status === 'delivered'), 5000, 'delivered');
});

test('over SMTP: ISO-2022-JP names in To and Cc; two recipients get a post each, a Bcc\'d one listed in BccFull with its key', async () => {
  const before = received.length;
  await sendRaw(app.smtpPort, fixture('iso-2022-jp.eml'), ['desk+T-7@pm.test', 'support+hidden-1@pm.test']);
  await until(() => received.length >= before + 2, 5000, 'two payloads');
  await until(() => deliveriesOf(app, 'pm').every((d) => d.status === 'delivered'), 5000, 'delivered');
  assert.equal(received.length, before + 2, 'one post per recipient, no more');
  const posts = received.slice(before);
  // An app that keeps MessageID to drop a repeated post must not drop the other recipient's.
  assert.notEqual(posts[0]!.MessageID, posts[1]!.MessageID);
  const ids = app.spool.db.prepare(`SELECT id FROM deliveries WHERE route = 'pm' ORDER BY id`).pluck().all() as string[];
  for (const post of posts) assert.ok(ids.includes(post.MessageID), 'the id of its delivery, stable across retries');
  const p = posts.find((x) => x.OriginalRecipient === 'desk+T-7@pm.test')!;
  const hidden = posts.find((x) => x.OriginalRecipient === 'support+hidden-1@pm.test')!;
  assert.ok(p && hidden, 'each recipient is the OriginalRecipient of one post (Action Mailbox routes by it alone)');
  assert.equal(p.Subject, '会議の資料について');
  assert.equal(p.To, '"受付" <desk+T-7@in.test>, other@example.test');
  assert.equal(p.Cc, '"鈴木一郎" <suzuki@example.test>');
  assert.equal(p.CcFull[0]?.Name, '鈴木一郎');
  assert.equal(p.TextBody, 'お世話になっております。\n資料をお送りします。\n');
  assert.equal(p.MailboxHash, 'T-7');
  assert.deepEqual(p.BccFull, [{ Email: 'desk+T-7@pm.test', Name: '', MailboxHash: 'T-7' }]);
  assert.equal(hidden.MailboxHash, 'hidden-1');
  assert.deepEqual(hidden.BccFull, [{ Email: 'support+hidden-1@pm.test', Name: '', MailboxHash: 'hidden-1' }]);
  assert.equal(p.RawEmail, fixture('iso-2022-jp.eml').toString('latin1'), '7-bit message: RawEmail is exact');
  assert.equal(hidden.RawEmail, p.RawEmail);
});

test('over SMTP: ISO-8859-1 reply with attachments, RawEmail byte-exact for a 7-bit message', async () => {
  const raw = fixture('latin1-reply.eml');
  const p = await deliver(raw, ['support+ticket-42@pm.test']);
  assert.equal(p.StrippedTextReply, 'Très bien, merci André!\nÇa marche à merveille.');
  assert.equal(p.Attachments.length, 3);
  assert.deepEqual(Buffer.from(p.RawEmail!, 'utf8'), raw);
  // What Action Mailbox's Postmark ingress does with it: RawEmail, X-Original-To prepended, parsed by the mail gem.
  const mail = await simpleParser(Buffer.concat([Buffer.from(`X-Original-To: ${p.OriginalRecipient}\n`), Buffer.from(p.RawEmail!, 'utf8')]));
  assert.equal(mail.subject, 'Réponse à votre question');
});

test('over SMTP: an all-quote reply keeps its text in StrippedTextReply (never empty)', async () => {
  const p = await deliver(fixture('all-quote.eml'), ['plain@pm.test']);
  assert.equal(p.StrippedTextReply, p.TextBody);
  assert.match(p.StrippedTextReply, /the original message/);
  assert.equal(p.MailboxHash, '');
});

test('over SMTP: a 404 or a 422 is retried, as Postmark retries every answer but 403', async () => {
  notYet = [404, 422];
  const before = consumer.requests.length;
  await sendRaw(app.smtpPort, fixture('shift_jis.eml'), ['x@notyet.test']);
  await consumer.waitFor(before + 3);
  await until(() => deliveriesOf(app, 'notyet').every((d) => d.status === 'delivered'), 10_000, 'delivered');
  assert.deepEqual(deliveriesOf(app, 'notyet').map((d) => [d.status, d.attempts]), [['delivered', 3]]);
  const failed = app.spool.db.prepare(`SELECT a.status_code, a.outcome, a.error FROM attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE d.route = 'notyet' AND a.attempt < 3 ORDER BY a.attempt`).all();
  assert.deepEqual(failed, [404, 422].map((code) => ({ status_code: code, outcome: 'retry', error: `HTTP ${code} (retried, as Postmark does for every status but 403): not yet` })));
});
