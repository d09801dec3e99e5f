// format: sendgrid end to end: SMTP in, Inbound Parse's multipart post out, read back with @sendgrid/inbound-mail-parser.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { simpleParser } from 'mailparser';
import Parse from '@sendgrid/inbound-mail-parser';
import { Consumer, type ReceivedRequest } from '../helpers/consumer.js';
import { startTestApp, tempDir, until, type TestApp } from '../helpers/app.js';
import { deliveriesOf, fixture, parseForm, rawPart, sendRaw } from './support.js';

const KEYS = ['headers', 'to', 'from', 'cc', 'subject', 'text', 'html', 'envelope', 'charsets', 'SPF', 'dkim', 'sender_ip', 'attachments', 'attachment-info', 'content-ids', 'email'];

/**
 * The request an Express app hands the SendGrid parser: multer's upload.any() puts the text fields in req.body and
 * each file on disk, described as { fieldname, originalname, mimetype, path, size } in req.files. The multipart body
 * is parsed here with undici's FormData parser instead of multer (not installed); the files land on disk the same way.
 */
async function expressRequest(req: ReceivedRequest, dir: string): Promise<{ body: Record<string, string>; files: Array<{ fieldname: string; originalname: string; mimetype: string; path: string; size: number }> }> {
  const form = await parseForm(req);
  const body: Record<string, string> = {};
  for (const [name, values] of form.fields) body[name] = values[0] as string;
  const files = [];
  for (const [fieldname, file] of form.files) {
    const path = join(dir, `${files.length}-${fieldname}`);
    const bytes = Buffer.from(await file.arrayBuffer());
    writeFileSync(path, bytes);
    files.push({ fieldname, originalname: file.name, mimetype: file.type, path, size: bytes.length });
  }
  return { body, files };
}

function attachmentsOf(parse: Parse): Promise<Array<{ filename: string; type: string; content: string }>> {
  return new Promise((resolve) => parse.attachments((list) => resolve(list as unknown as Array<{ filename: string; type: string; content: string }>)));
}

let app: TestApp;
let dir: string;
const consumer = new Consumer();

before(async () => {
  dir = tempDir('mailhook-sendgrid-');
  await consumer.start();
  consumer.respond = () => ({ status: 200 });
  app = await startTestApp({
    routes: `
  - name: parse
    addresses: ["reply+%{key}@sg.test", "support+%{key}@sg.test", "desk+%{key}@sg.test"]
    webhook:
      url: "http://127.0.0.1:${consumer.port}/sendgrid"
      format: sendgrid
  - name: raw
    addresses: ["*@raw.sg.test"]
    webhook:
      url: "http://actionmailbox:pw@127.0.0.1:${consumer.port}/rails/action_mailbox/sendgrid/inbound_emails"
      format: sendgrid
      send_raw: true
`,
  });
});
after(async () => {
  await app.close();
  await consumer.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function deliver(raw: Buffer, to: string[], route: string): Promise<ReceivedRequest> {
  const before = consumer.requests.length;
  await sendRaw(app.smtpPort, raw, to, 'bounce@example.test');
  await consumer.waitFor(before + 1);
  await until(() => deliveriesOf(app, route).every((d) => d.status === 'delivered'), 10_000, 'delivered');
  return consumer.requests[before]!;
}

test('parsed post: the SendGrid parser reads back decoded fields and byte-exact attachments (ISO-8859-1)', async () => {
  const req = await deliver(fixture('latin1-reply.eml'), ['support+ticket-42@sg.test'], 'parse');
  assert.match(String(req.headers['content-type']), /^multipart\/form-data; boundary=/);
  assert.equal(req.headers.authorization, undefined);
  const parse = new Parse({ keys: KEYS }, await expressRequest(req, dir));
  const v = parse.keyValues();
  assert.equal(parse.hasRawEmail(), false);
  assert.equal(v.from, 'André Gonçalves <andre@example.test>');
  assert.equal(v.to, '"Support" <support+ticket-42@in.test>');
  assert.equal(v.cc, 'Zoë Müller <zoe@example.test>');
  assert.equal(v.subject, 'Réponse à votre question');
  assert.equal(v.text, 'Très bien, merci André!\nÇa marche à merveille.\n\nOn Tue, 2 Jan 2024 at 10:00, Zoë Müller <zoe@example.test> wrote:\n> Est-ce que ça marche?\n> Zoë\n');
  assert.match(v.html, /merci André!/);
  assert.deepEqual(JSON.parse(v.envelope), { to: ['support+ticket-42@sg.test'], from: 'bounce@example.test' });
  assert.deepEqual(JSON.parse(v.charsets), { to: 'UTF-8', from: 'UTF-8', cc: 'UTF-8', subject: 'UTF-8', text: 'UTF-8', html: 'UTF-8' });
  assert.equal(v.sender_ip, '127.0.0.1');
  assert.equal(v.SPF, 'none');
  assert.equal(v.dkim, '{}');
  assert.match(v.headers, /^Return-Path: <andre@example.test>\r\nFrom: =\?ISO-8859-1\?Q\?Andr=E9_Gon=E7alves\?= <andre@example.test>\r\n/, 'headers: the raw header block');
  assert.ok(!v.headers.endsWith('\n'));
  assert.equal(v.attachments, '3');
  assert.deepEqual(JSON.parse(v['attachment-info']), {
    attachment1: { filename: 'logo.png', name: 'logo.png', type: 'image/png', 'content-id': 'logo-1@mail.example.test' },
    attachment2: { filename: 'all-bytes.bin', name: 'all-bytes.bin', type: 'application/octet-stream' },
    attachment3: { filename: 'résumé "final".pdf', name: 'résumé "final".pdf', type: 'application/pdf' },
  });
  assert.deepEqual(JSON.parse(v['content-ids']), { 'logo-1@mail.example.test': 'attachment1' });
  const source = await simpleParser(fixture('latin1-reply.eml'));
  const attachments = await attachmentsOf(parse);
  assert.deepEqual(
    attachments.map((a) => [a.filename, a.type, Buffer.from(a.content, 'base64')]),
    source.attachments.map((a) => [a.filename, a.contentType, a.content]),
  );
});

test('parsed post: Shift_JIS and ISO-2022-JP fields come out right; no html field when the message has none', async () => {
  const sj = new Parse({ keys: KEYS }, await expressRequest(await deliver(fixture('shift_jis.eml'), ['reply+abc123@sg.test'], 'parse'), dir));
  const s = sj.keyValues();
  assert.equal(s.subject, '日本語の件名です');
  assert.equal(s.from, '山田太郎 <yamada@example.test>');
  assert.equal(s.text, 'こんにちは、世界。\n添付ファイルを送ります。');
  assert.equal(s.html, undefined);
  assert.equal(s['content-ids'], undefined);
  const [att] = await attachmentsOf(sj);
  assert.equal(att?.filename, '報告書.txt');
  assert.deepEqual(Buffer.from(att!.content, 'base64'), (await simpleParser(fixture('shift_jis.eml'))).attachments[0]?.content);

  const jp = new Parse({ keys: KEYS }, await expressRequest(await deliver(fixture('iso-2022-jp.eml'), ['desk+T-7@sg.test', 'support+x@sg.test'], 'parse'), dir));
  const j = jp.keyValues();
  assert.equal(j.subject, '会議の資料について');
  assert.equal(j.from, '佐藤花子 <sato@example.test>');
  assert.equal(j.to, '受付 <desk+T-7@in.test>, other@example.test');
  assert.equal(j.cc, '鈴木一郎 <suzuki@example.test>');
  assert.equal(j.text, 'お世話になっております。\n資料をお送りします。\n');
  assert.equal(j.attachments, '0');
  assert.deepEqual(JSON.parse(j.envelope).to, ['desk+T-7@sg.test', 'support+x@sg.test']);
  assert.deepEqual(await attachmentsOf(jp), []);
});

test('send_raw: the whole message byte for byte in "email", Basic auth from the URL, as Action Mailbox\'s SendGrid ingress reads it', async () => {
  const raw = fixture('shift_jis.eml'); // 8-bit body: a re-encoding would show
  const req = await deliver(raw, ['someone@raw.sg.test'], 'raw');
  assert.equal(req.url, '/rails/action_mailbox/sendgrid/inbound_emails');
  assert.equal(req.headers.authorization, `Basic ${Buffer.from('actionmailbox:pw').toString('base64')}`);
  assert.deepEqual(rawPart(req, 'email'), raw);
  const parse = new Parse({ keys: KEYS }, await expressRequest(req, dir));
  assert.equal(parse.hasRawEmail(), true);
  const v = parse.keyValues();
  assert.equal(v.subject, '日本語の件名です');
  assert.deepEqual(JSON.parse(v.envelope), { to: ['someone@raw.sg.test'], from: 'bounce@example.test' });
  assert.equal(v.text, undefined);
  assert.equal(v.attachments, undefined);
  // The package's own getRawEmail() crashes on Node 20 (its bundled mailparser 2), so the raw message is read as a
  // consumer would, with a current parser; Action Mailbox prepends X-Original-To from the envelope the same way.
  const mail = await simpleParser(Buffer.concat([Buffer.from('X-Original-To: someone@raw.sg.test\n'), rawPart(req, 'email')]));
  assert.equal(mail.subject, '日本語の件名です');
  assert.equal(mail.text?.trim(), 'こんにちは、世界。\n添付ファイルを送ります。');
});
