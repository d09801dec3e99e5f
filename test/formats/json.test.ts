// format: json — the bytes sent are exactly JSON.stringify of the payload object, for every message in the fixtures.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { buildJsonPayload, encodeJsonPayload } from '../../src/delivery/formats/json.js';
import { parseMessage, parseMessageJson, payloadMessageJson } from '../../src/parse/message.js';
import { FIXTURES, fixture, formatContext } from './support.js';

const EMLS = readdirSync(FIXTURES).filter((f) => f.endsWith('.eml'));

test('encodeJsonPayload equals the UTF-8 of JSON.stringify(buildJsonPayload) (fixtures, non-UTF-8 charsets included)', async () => {
  assert.ok(EMLS.length >= 4);
  const cases: Array<[string, Buffer]> = EMLS.map((f) => [f, fixture(f)]);
  // Sizes whose base64 ends in "=", "==" and no padding, an empty body, quotes and a U+2028 in a header.
  for (const n of [0, 1, 2, 3]) cases.push([`pad${n}`, Buffer.from(`Subject: "q" \u2028 ${'x'.repeat(n)}\r\n\r\nbody${'y'.repeat(n)}\r\n`, 'utf8')]);
  // Larger than the pieces raw_base64 is written in (48 KiB), ending in each padding: the pieces must join.
  for (const n of [0, 1, 2]) cases.push([`large${n}`, Buffer.from(`Subject: large\r\n\r\n${'0123456789abcdef\r\n'.repeat(8192)}${'z'.repeat(n)}`, 'utf8')]);
  // Attachments (their base64 is put into the message JSON as it is): empty, padded each way, an odd filename,
  // no filename, an inline one with a Content-ID, one large.
  const part = (headers: string, body: Buffer) => `--b\r\n${headers}\r\nContent-Transfer-Encoding: base64\r\n\r\n${body.toString('base64').replace(/.{76}/g, '$&\r\n')}\r\n`;
  cases.push(['attachments', Buffer.from(`Subject: files\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee "these"\r\n${[
    part('Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="empty.bin"', Buffer.alloc(0)),
    part('Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="one.bin"', Buffer.from('a')),
    part('Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="two.bin"', Buffer.from('ab')),
    part('Content-Type: text/plain\r\nContent-Disposition: attachment; filename="q\\"uote \\\\ \u00e9t\u00e9.txt"', Buffer.from('été\n', 'utf8')),
    part('Content-Type: application/pdf', Buffer.alloc(3000, 1)),
    part('Content-Type: image/png\r\nContent-ID: <img1@x>\r\nContent-Disposition: inline', Buffer.alloc(100, 2)),
    part('Content-Type: application/zip\r\nContent-Disposition: attachment; filename=big.zip', Buffer.alloc(200_000, 3)),
  ].join('')}--b--\r\n`, 'utf8')]);
  for (const [name, raw] of cases) {
    const ctx = formatContext(raw, { recipients: [{ address: 'incoming+k@in.test', key: 'k' }], meta: { authentication_results: 'mx; spf=pass' } });
    const { message } = await parseMessage(raw);
    if (name === 'attachments') assert.equal(message.attachments.length, 7);
    assert.equal(payloadMessageJson(message), JSON.stringify(message), `${name}: the message JSON`);
    const fast = encodeJsonPayload(ctx, await parseMessageJson(raw));
    const plain = Buffer.from(JSON.stringify(buildJsonPayload(ctx, message)), 'utf8');
    assert.ok(fast.equals(plain), `${name}: bytes differ`);
    assert.ok(Buffer.from(JSON.parse(fast.toString('utf8')).raw_base64, 'base64').equals(raw), `${name}: raw_base64 round trip`);
  }
});

test('header values: 8-bit UTF-8 (RFC 6532) read as UTF-8, other 8-bit bytes as Latin-1, folds unfolded keeping the white space', async () => {
  const raw = Buffer.concat([
    Buffer.from('Subject: Grüße\r\nFrom: Jörg <j@x.test>\r\nX-Fold: a\r\n\tb\r\n', 'utf8'),
    Buffer.from('X-Latin: caf\xe9\r\n\r\nhi\r\n', 'latin1'),
  ]);
  const { message } = await parseMessage(raw);
  assert.deepEqual(message.headers, [
    { name: 'Subject', value: 'Grüße' },
    { name: 'From', value: 'Jörg <j@x.test>' },
    { name: 'X-Fold', value: 'a\tb' },
    { name: 'X-Latin', value: 'café' },
  ]);
  assert.equal(message.subject, 'Grüße', 'the same as the decoded field');
});

test('text: the text part, or for HTML-only mail a rendering of its HTML wherever it sits in the MIME tree (Gmail\'s multipart/related)', async () => {
  const { message } = await parseMessage(fixture('html-related.eml'));
  assert.match(message.text ?? '', /^Guten Tag, die Lieferung ist angekommen\./);
  assert.match(message.html ?? '', /<p>Guten Tag/);
  const root = await parseMessage(Buffer.from('Subject: h\r\nContent-Type: text/html\r\n\r\n<p>at the <b>root</b></p>\r\n'));
  assert.equal(root.message.text, 'at the root');
  assert.equal((await parseMessage(fixture('html-related.eml'), { htmlToText: false })).message.text, null, 'not rendered when not asked for');
  assert.equal((await parseMessage(fixture('latin1-reply.eml'))).message.text, (await parseMessage(fixture('latin1-reply.eml'), { htmlToText: false })).message.text, 'a text part is taken as it is');
});
