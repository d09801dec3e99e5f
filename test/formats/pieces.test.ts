// Unit tests of the pure pieces behind the service formats: header decoding, form encoding, reply stripping, auth, classification, config.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { decodeAddressHeader, decodeEncodedWords, parseHeaderSection, bytesToText } from '../../src/parse/headers.js';
import { chooseBoundary, encodeMultipart, encodeUrlForm, type FormField } from '../../src/delivery/formats/multipart.js';
import { stripReply, stripQuotedHtml, STRIP_MAX_CHARS, STRIP_MAX_LINE_CHARS, STRIP_MAX_LINES } from '../../src/parse/strip.js';
import { credentialsFromUrl, mailboxHash, formatAddress } from '../../src/delivery/formats/inbound.js';
import { mailgunSignature, mailgunToken, classifyMailgun, mailgunParsedFields } from '../../src/delivery/formats/mailgun.js';
import { classifyActionMailbox, actionMailboxBody } from '../../src/delivery/formats/action_mailbox.js';
import { classifyPostmark, buildPostmarkPayload } from '../../src/delivery/formats/postmark.js';
import { inboundView, InboundViews } from '../../src/delivery/formats/inbound.js';
import { authenticationFields } from '../../src/delivery/formats/sendgrid.js';
import { classifyStatus } from '../../src/delivery/classify.js';
import { createFormats } from '../../src/delivery/formats/index.js';
import { parseInboundMessage } from '../../src/parse/inbound.js';
import { FORMAT_OPTIONS, WEBHOOK_FORMATS } from '../../src/config/schema.js';
import { parseMessageJson } from '../../src/parse/message.js';
import { ConfigError } from '../../src/core/errors.js';
import { parseTestConfig, tempDir } from '../helpers/app.js';
import { counterBytes, fixture, formatContext } from './support.js';

// ---------- RFC 2047 and header sections ----------

test('encoded words: Q and B, Latin-1, UTF-8, and plain text around them', () => {
  assert.equal(decodeEncodedWords('=?ISO-8859-1?Q?Andr=E9_Gon=E7alves?= <a@x.test>'), 'André Gonçalves <a@x.test>');
  assert.equal(decodeEncodedWords('Re: =?UTF-8?B?w6l0w6k=?= ok'), 'Re: été ok');
  assert.equal(decodeEncodedWords('=?utf-8?q?a?= =?utf-8?q?b?=  c'), 'ab  c', 'white space between adjacent words goes (RFC 2047 §6.2), after the last stays');
  assert.equal(decodeEncodedWords('no words here =? at all'), 'no words here =? at all');
});

test('encoded words: a Shift_JIS character split across two words comes out whole', () => {
  // 日本 in Shift_JIS is 93 FA 96 7B; split after the third byte.
  const a = Buffer.from([0x93, 0xfa, 0x96]).toString('base64');
  const b = Buffer.from([0x7b]).toString('base64');
  assert.equal(decodeEncodedWords(`=?Shift_JIS?B?${a}?=\r\n =?Shift_JIS?B?${b}?=`), '日本');
});

test('encoded words: ISO-2022-JP (stateful), charset*language, an unknown charset left as written', () => {
  const jis = Buffer.from('1b2442467c4b5c1b2842', 'hex'); // ESC $ B 日本 ESC ( B
  assert.equal(decodeEncodedWords(`=?ISO-2022-JP?B?${jis.toString('base64')}?=`), '日本');
  assert.equal(decodeEncodedWords('=?UTF-8*en?Q?hello?='), 'hello');
  assert.equal(decodeEncodedWords('=?x-unknown?Q?abc?= def'), '=?x-unknown?Q?abc?= def');
});

test('encoded words in address lists: a decoded name with specials is quoted, escaped inside quotes and comments', () => {
  // Outlook's "Last, First": as plain text the comma would end the first address.
  assert.equal(decodeAddressHeader('=?iso-8859-1?Q?M=FCller=2C_Hans?= <hans@x.test>, b@x.test'), '"Müller, Hans" <hans@x.test>, b@x.test');
  assert.equal(decodeAddressHeader('=?utf-8?Q?Zo=C3=AB_M=C3=BCller?= <z@x.test>'), 'Zoë Müller <z@x.test>', 'no specials: as decoded');
  assert.equal(decodeAddressHeader('=?utf-8?Q?Dr=2E_=22Q=22?= Smith <s@x.test>'), '"Dr. \\"Q\\"" Smith <s@x.test>');
  assert.equal(decodeAddressHeader('"=?utf-8?Q?A=2C_=22B=22?=" <a@x.test>'), '"A, \\"B\\"" <a@x.test>', 'inside a quoted string: escaped, not quoted again');
  assert.equal(decodeAddressHeader('a@x.test (=?utf-8?Q?x=29_y?=)'), 'a@x.test (x\\) y)', 'inside a comment');
  assert.equal(decodeAddressHeader('"a\\"(" <a@x.test>, =?utf-8?Q?b=2C?= <b@x.test>'), '"a\\"(" <a@x.test>, "b," <b@x.test>', 'an escaped quote does not end the string');
  const section = parseHeaderSection(Buffer.from('From: =?utf-8?Q?Support=2C_K=C3=BCche?= <s@x.test>\r\nSubject: =?utf-8?Q?a=2C_b?=\r\n\r\n'));
  assert.deepEqual(section.fields.map((f) => f.value), ['"Support, Küche" <s@x.test>', 'a, b'], 'only address fields are quoted');
});

test('header section: unfolding keeps the white space, values decode, the block ends before the blank line', () => {
  const raw = Buffer.from('Subject: =?UTF-8?Q?caf=C3=A9?=\r\n  and more\r\nX-Long: a\r\n\tb\r\nbroken line\r\nTo: t@x.test\r\n\r\nbody: not a header\r\n');
  const s = parseHeaderSection(raw);
  assert.deepEqual(s.fields.map((f) => [f.name, f.raw, f.value]), [
    ['Subject', '=?UTF-8?Q?caf=C3=A9?=  and more', 'café  and more'],
    ['X-Long', 'a\tb', 'a\tb'],
    ['To', 't@x.test', 't@x.test'],
  ]);
  assert.equal(s.block, 'Subject: =?UTF-8?Q?caf=C3=A9?=\r\n  and more\r\nX-Long: a\r\n\tb\r\nbroken line\r\nTo: t@x.test');
});

test('header section: raw 8-bit headers are UTF-8 when valid, Latin-1 otherwise, line by line', () => {
  const raw = Buffer.concat([Buffer.from('Subject: caf\xc3\xa9\r\nX-Legacy: caf', 'latin1'), Buffer.from([0xe9]), Buffer.from('\r\n\r\nhi')]);
  const s = parseHeaderSection(raw);
  assert.equal(s.fields[0]?.value, 'café');
  assert.equal(s.fields[1]?.value, 'café');
  assert.equal(bytesToText(Buffer.from([0xff, 0xfe])), 'ÿþ');
  assert.deepEqual(parseHeaderSection(Buffer.from('\r\nSubject: not a header\r\n')).fields, [], 'a leading blank line means no headers');
  assert.equal(parseHeaderSection(Buffer.from('Subject: only headers')).fields[0]?.value, 'only headers');
});

// ---------- form encoding ----------

test('multipart: text, raw bytes and files round-trip through a real form-data parser', async () => {
  const binary = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  const fields: FormField[] = [
    { name: 'subject', value: 'Grüße, 日本' },
    { name: 'multi\nline "name"', value: 'line1\r\nline2' },
    { name: 'attachment-1', filename: 'naïve "quote"\r\n.bin', contentType: 'application/octet-stream', data: binary },
    { name: 'empty', value: '' },
  ];
  const form = encodeMultipart(fields, 'BOUNDARY-x');
  assert.equal(form.contentType, 'multipart/form-data; boundary=BOUNDARY-x');
  const parsed = await new Response(new Uint8Array(form.body), { headers: { 'content-type': form.contentType } }).formData();
  assert.equal(parsed.get('subject'), 'Grüße, 日本');
  assert.equal(parsed.get('multi\nline "name"'), 'line1\r\nline2', 'LF and quote in a name survive the WHATWG escaping');
  assert.ok(form.body.includes('name="multi%0Aline %22name%22"'), 'escaped on the wire');
  assert.equal(parsed.get('empty'), '');
  const file = parsed.get('attachment-1') as File;
  assert.equal(file.name, 'naïve "quote"\r\n.bin');
  assert.ok(form.body.includes(Buffer.from('filename="naïve %22quote%22%0D%0A.bin"')), 'UTF-8 filename, escaped on the wire');
  assert.equal(file.type, 'application/octet-stream');
  assert.deepEqual(Buffer.from(await file.arrayBuffer()), binary);
  assert.ok(form.body.subarray(-16).toString('latin1').endsWith('--BOUNDARY-x--\r\n'));
});

test('multipart: the boundary never occurs in a part, even when the random source repeats itself', () => {
  const fixed = Buffer.alloc(18, 0xab);
  let calls = 0;
  const random = (n: number) => (calls++ === 0 ? Buffer.alloc(n, 0xab) : Buffer.alloc(n, 0xcd));
  const clash = `----mailhook-${fixed.toString('hex')}`;
  const boundary = chooseBoundary([{ name: 'x', value: `before ${clash} after` }], random);
  assert.equal(calls, 2);
  assert.notEqual(boundary, clash);
  assert.ok(boundary.length <= 70, 'RFC 2046: at most 70 characters');
});

test('urlencoded: UTF-8 percent-encoding, space as +', async () => {
  const form = encodeUrlForm([{ name: 'body-plain', value: 'a b&c=é' }, { name: 'x', value: '' }]);
  assert.equal(form.contentType, 'application/x-www-form-urlencoded');
  assert.equal(form.body.toString(), 'body-plain=a+b%26c%3D%C3%A9&x=');
  const parsed = await new Response(new Uint8Array(form.body), { headers: { 'content-type': form.contentType } }).formData();
  assert.equal(parsed.get('body-plain'), 'a b&c=é');
});

// ---------- reply stripping ----------

test('stripReply: keeps the reply, drops the quote and the signature', () => {
  const r = stripReply('Sounds good, ship it.\n\nOn Tue, Jan 2, 2024 at 10:00 AM Bob <bob@x.test> wrote:\n> can we ship?\n> Bob\n');
  assert.equal(r.text, 'Sounds good, ship it.');
  assert.equal(r.stripped, true);
  const s = stripReply('Thanks!\r\n\r\n-- \r\nAlice\r\nACME Corp\r\n');
  assert.equal(s.text, 'Thanks!');
  assert.equal(s.signature, '-- \nAlice\nACME Corp');
});

test('stripReply: never empty — a message that is all quote or all signature comes back whole', () => {
  const allQuote = 'On Mon, 1 Jan 2024 at 10:00, Bob <bob@x.test> wrote:\n> the original\n> second line\n';
  assert.deepEqual(stripReply(allQuote), { text: allQuote, signature: '', stripped: false });
  const allQuoted = '> just\n> quoted lines\n';
  assert.equal(stripReply(allQuoted).text, allQuoted);
  const onlySig = '-- \nAlice\n';
  assert.equal(stripReply(onlySig).text.trimEnd(), onlySig.trimEnd());
  assert.equal(stripReply('').text, '');
  assert.equal(stripReply('  \n').text, '  \n');
});

test('stripReply: very long text, a very long line, or very many lines, is returned whole without running the parser', () => {
  // Long: few lines, each under the line limit, together over STRIP_MAX_CHARS.
  const long = 'Reply.\n\n' + `> ${'q'.repeat(STRIP_MAX_LINE_CHARS - 100)}\n`.repeat(Math.ceil(STRIP_MAX_CHARS / (STRIP_MAX_LINE_CHARS - 100)) + 1);
  assert.ok(long.split('\n').length < STRIP_MAX_LINES);
  assert.equal(stripReply(long).text, long);
  // Many short lines (blank lines cost the parser the square of their number).
  const many = 'Reply.\n' + '\n'.repeat(STRIP_MAX_LINES) + 'On Mon, Jan 1, 2024 at 10:00 AM Bob <bob@x.test> wrote:\n> q\n';
  assert.ok(many.length < STRIP_MAX_CHARS);
  assert.equal(stripReply(many).text, many);
  const fewer = 'Reply.\n' + '   \n'.repeat(STRIP_MAX_LINES - 10) + 'On Mon, Jan 1, 2024 at 10:00 AM Bob <bob@x.test> wrote:\n> q\n';
  assert.equal(stripReply(fewer).text, 'Reply.', 'under the line limit it is stripped (lines of spaces read as empty)');
  // One line of "On … wrote:" headers costs the parser seconds at 64 KB; it is not run.
  const unit = 'On Mon, Jan 1, 2024 at 10:00 AM Bob <bob@x.test> wrote: ';
  const hostile = 'Reply.\n' + unit.repeat(Math.ceil((STRIP_MAX_LINE_CHARS + 1) / unit.length)) + '\n> q\n';
  assert.equal(stripReply(hostile).text, hostile, 'not parsed: the parser would have cut it at the quote header');
  const fine = 'Reply.\n\nOn Mon, Jan 1, 2024 at 10:00 AM Bob <bob@x.test> wrote:\n> ' + 'q'.repeat(STRIP_MAX_LINE_CHARS - 10) + '\n';
  assert.equal(stripReply(fine).text, 'Reply.', 'a line just under the limit is still stripped');
});

test('stripQuotedHtml: linear on hostile HTML (a megabyte of "<", unclosed tags, giant attributes)', () => {
  for (const html of ['<'.repeat(1_000_000), '<blockquote'.repeat(90_000), '<div ' + 'class='.repeat(150_000) + '>', '<script>'.repeat(120_000)]) {
    const started = process.hrtime.bigint();
    stripQuotedHtml(html);
    // Linear takes well under a second here; the quadratic version took over a minute on the first input.
    assert.ok(process.hrtime.bigint() - started < 5_000_000_000n, `${html.slice(0, 12)}… took too long`);
  }
});

test('stripQuotedHtml: blockquotes and client quote containers go, nested ones too; never left empty', () => {
  const html = '<div>New text <b>here</b></div><div class="gmail_quote"><div>On … wrote:</div><blockquote class="gmail_quote"><div>old<blockquote>older</blockquote></div></blockquote></div><p>after</p>';
  assert.equal(stripQuotedHtml(html), '<div>New text <b>here</b></div><p>after</p>');
  const outlook = '<html><body><p>Reply</p><div id="appendonsend"></div><hr><div id="divRplyFwdMsg"><b>From:</b> x</div><div>quoted</div></body></html>';
  assert.equal(stripQuotedHtml(outlook), '<html><body><p>Reply</p></body></html>');
  const onlyQuote = '<blockquote>everything is quoted</blockquote>';
  assert.equal(stripQuotedHtml(onlyQuote), onlyQuote);
  assert.equal(stripQuotedHtml('<p>a</p><blockquote>unclosed'), '<p>a</p>');
});

// ---------- credentials, keys, addresses ----------

test('credentialsFromUrl: userinfo becomes Basic auth and leaves the URL', () => {
  const r = credentialsFromUrl('https://actionmailbox:p%40ss%3Aw0rd@app.example.test:8443/rails/action_mailbox/postmark/inbound_emails?x=1');
  assert.equal(r.url, 'https://app.example.test:8443/rails/action_mailbox/postmark/inbound_emails?x=1');
  assert.equal(r.authorization, `Basic ${Buffer.from('actionmailbox:p@ss:w0rd').toString('base64')}`);
  assert.deepEqual(credentialsFromUrl('http://app.test/hook'), { url: 'http://app.test/hook', authorization: undefined });
  assert.equal(credentialsFromUrl('http://user@app.test/').authorization, `Basic ${Buffer.from('user:').toString('base64')}`);
  // A "%" that starts no escape (the config accepts such a URL) is kept as written, not a URIError at every delivery.
  assert.equal(credentialsFromUrl('https://user:p%ss@app.test/').authorization, `Basic ${Buffer.from('user:p%ss').toString('base64')}`);
});

test('mailboxHash: the route key for our recipients, the plus part (Postmark) for others', () => {
  const recipients = [{ address: 'reply-abc@in.test', key: 'abc' }, { address: 'plain@in.test', key: null }];
  assert.equal(mailboxHash('Reply-ABC@in.test', recipients), 'abc');
  assert.equal(mailboxHash('plain@in.test', recipients), '');
  assert.equal(mailboxHash('someone+tag+more@else.test', recipients), 'tag+more');
  assert.equal(mailboxHash('someone@else.test', recipients), '');
  // A recipient of a route without a %{key} template (an exact address, a catch-all): Postmark's plus part.
  assert.equal(mailboxHash('desk+t-9@in.test', [{ address: 'desk+t-9@in.test', key: null }]), 't-9');
  assert.equal(formatAddress({ address: 'a@x.test', name: 'A "Q" \\ B' }), '"A \\"Q\\" \\\\ B" <a@x.test>');
});

test('mailgun signature: HMAC-SHA256 hex of timestamp + token, as Mailgun documents it', () => {
  const key = Buffer.from('key-0123456789abcdef');
  const expected = createHmac('sha256', 'key-0123456789abcdef').update('1704445200' + 'a'.repeat(50)).digest('hex');
  assert.equal(mailgunSignature(key, '1704445200', 'a'.repeat(50)), expected);
  const token = mailgunToken(counterBytes());
  assert.equal(token.length, 50);
  assert.match(token, /^[0-9a-f]{50}$/);
});

test('action_mailbox body: one X-Original-To per recipient before the untouched message', () => {
  const raw = Buffer.from('Subject: x\r\n\r\nbody\xff', 'latin1');
  const body = actionMailboxBody({ raw, delivery: { recipients: [{ address: 'a@in.test', key: null }, { address: 'b+k@in.test', key: 'k' }] } as never });
  assert.deepEqual(body, Buffer.concat([Buffer.from('X-Original-To: a@in.test\r\nX-Original-To: b+k@in.test\r\n'), raw]));
  // A control character a catch-all accepted in a local part does not reach the header line.
  const odd = actionMailboxBody({ raw, delivery: { recipients: [{ address: 'a\x01b\x1b[2Jc@in.test', key: null }] } as never });
  assert.equal(odd.subarray(0, odd.length - raw.length).toString(), 'X-Original-To: ab[2Jc@in.test\r\n');
});

test('sendgrid SPF/dkim: taken from recorded results when present, otherwise "none" and "{}"', () => {
  assert.deepEqual(authenticationFields(null), { spf: 'none', dkim: '{}' });
  assert.deepEqual(authenticationFields({ authentication: { spf: { result: 'pass' }, dkim: [{ domain: 'x.test', result: 'pass' }, { signingDomain: 'y.test', result: 'fail' }] } }), { spf: 'pass', dkim: '{@x.test : pass, @y.test : fail}' });
  assert.deepEqual(authenticationFields({ authentication: { spf: 'softfail', dkim: 'garbage' } }), { spf: 'softfail', dkim: '{}' });
  // The shape mailhook's own sender authentication (smtp.sender_auth) records.
  const recorded = { authentication: { spf: { result: 'softfail', domain: 'x.test' }, dkim: { result: 'pass', signatures: [{ result: 'pass', domain: 'x.test', selector: 's1', aligned: true }] } } };
  assert.deepEqual(authenticationFields(recorded), { spf: 'softfail', dkim: '{@x.test : pass}' });
});

test('recorded sender authentication shows as the topmost Authentication-Results header (Postmark Headers, Mailgun message-headers)', async () => {
  const raw = fixture('iso-2022-jp.eml');
  const ar = 'mx.test; spf=pass smtp.mailfrom=example.test; dkim=none';
  const ctx = formatContext(raw, { recipients: [{ address: 'desk+T-7@in.test', key: 'T-7' }], meta: { authentication_results: ar } });
  const view = await inboundView(raw);
  assert.deepEqual(buildPostmarkPayload(ctx, view).Headers[0], { Name: 'Authentication-Results', Value: ar });
  const fields = await mailgunParsedFields(ctx, view, { timestamp: '1', token: 't', signature: 's' });
  const value = (name: string) => fields.find((f) => f.name === name && 'value' in f) as { value: string } | undefined;
  assert.deepEqual((JSON.parse(value('message-headers')!.value) as string[][])[0], ['Authentication-Results', ar]);
  assert.equal(value('Authentication-Results')?.value, ar);
  const plain = formatContext(raw, { recipients: [{ address: 'desk+T-7@in.test', key: 'T-7' }] });
  assert.equal(buildPostmarkPayload(plain, view).Headers[0]?.Name, 'From', 'nothing added when mailhook did not check');
});

test('postmark MailboxHash: the route key, or the plus part for a catch-all or exact-address route', async () => {
  const raw = fixture('iso-2022-jp.eml');
  const view = await inboundView(raw);
  const keyed = buildPostmarkPayload(formatContext(raw, { recipients: [{ address: 'desk+T-7@in.test', key: 'T-7' }] }), view);
  assert.equal(keyed.MailboxHash, 'T-7');
  const catchAll = buildPostmarkPayload(formatContext(raw, { recipients: [{ address: 'reply+abc123@in.test', key: null }] }), view);
  assert.equal(catchAll.MailboxHash, 'abc123');
  assert.deepEqual(catchAll.BccFull.at(-1), { Email: 'reply+abc123@in.test', Name: '', MailboxHash: 'abc123' });
  const exact = buildPostmarkPayload(formatContext(raw, { recipients: [{ address: 'support@in.test', key: null }] }), view);
  assert.equal(exact.MailboxHash, '');
});

test('the deliveries of one message share its parsed view (mailgun and postmark post once per recipient); another message, or time, ends it', async () => {
  const cache = new InboundViews(50);
  const views = { of: (id: string, raw: Buffer) => cache.of(id, raw, parseInboundMessage, { plainText: false }) };
  const raw = fixture('iso-2022-jp.eml');
  const a = views.of('msg_a', raw);
  assert.equal(views.of('msg_a', Buffer.from(raw)), a, 'the same message: the same parse');
  assert.equal((await a).subject, '会議の資料について');
  const b = views.of('msg_b', fixture('shift_jis.eml'));
  assert.notEqual(b, a);
  assert.notEqual(views.of('msg_a', raw), a, 'one message kept: the other was parsed again');
  const again = views.of('msg_a', raw);
  await new Promise((r) => setTimeout(r, 120)); // past the keep time (50 ms here), not timing anything
  assert.notEqual(views.of('msg_a', raw), again, 'not kept past its keep time');
});

test('the service formats parse with the context\'s inbound parse (the parse pool), asking for body-plain only for mailgun; mime and send_raw do not parse', async () => {
  const raw = fixture('html-related.eml');
  const asked: Array<{ plainText: boolean }> = [];
  const parseInbound = (r: Buffer, options: { plainText: boolean }) => (asked.push({ ...options }), parseInboundMessage(r, options));
  const recipients = [{ address: 'reply+h1@mg.test', key: 'h1' }];
  const formats = createFormats({ randomBytes: counterBytes() });
  const key = Buffer.from('key-abc');
  const encode = (format: 'mailgun' | 'postmark' | 'sendgrid', options: { mime?: boolean; send_raw?: boolean } = {}) =>
    formats[format].encode({ ...formatContext(raw, { recipients, webhook: { format, signingKeyBytes: key, options: { mime: false, raw_email: false, send_raw: false, ...options } } }), parseInbound });
  const mailgun = await encode('mailgun');
  assert.deepEqual(asked, [{ plainText: true }]);
  const expected = await parseInboundMessage(raw, { plainText: true });
  assert.ok(mailgun.body.includes(expected.plainText!), 'body-plain as the parse rendered it');
  await encode('postmark');
  assert.deepEqual(asked, [{ plainText: true }], 'postmark: the view mailgun parsed (same message, within the keep time)');
  await encode('sendgrid');
  assert.deepEqual(asked, [{ plainText: true }, { plainText: false }]);
  await encode('mailgun', { mime: true });
  await encode('sendgrid', { send_raw: true });
  assert.equal(asked.length, 2, 'mime and send_raw read only the header section');
});

test('every format asks the context for exactly the parse its parses() names, for every combination of options (the parse pool starts threads by it)', async () => {
  const key = Buffer.from('key-abc');
  const recipients = [{ address: 'reply+h1@mg.test', key: 'h1' }];
  const optionKeys = Object.keys(FORMAT_OPTIONS) as Array<keyof typeof FORMAT_OPTIONS>;
  let checked = 0;
  for (const name of ['html-related.eml', 'latin1-reply.eml']) {
    const raw = fixture(name);
    for (const format of WEBHOOK_FORMATS) {
      for (let bits = 0; bits < 1 << optionKeys.length; bits++) {
        const options = Object.fromEntries(optionKeys.map((k, i) => [k, (bits & (1 << i)) !== 0])) as Record<keyof typeof FORMAT_OPTIONS, boolean>;
        const asked = new Set<string>();
        // A fresh set each time: a view kept from an earlier encode would hide a parse.
        const formats = createFormats({ randomBytes: counterBytes() });
        await formats[format].encode({
          ...formatContext(raw, { recipients, webhook: { format, signingKeyBytes: key, options } }),
          parse: (r) => (asked.add('json'), parseMessageJson(r)),
          parseInbound: (r, o) => (asked.add('inbound'), parseInboundMessage(r, o)),
        });
        const declared = formats[format].parses(options);
        assert.deepEqual([...asked], declared === undefined ? [] : [declared], `${format} ${JSON.stringify(options)} (${name})`);
        checked++;
      }
    }
  }
  assert.equal(checked, 2 * WEBHOOK_FORMATS.length * 8);
});

test('a kept view parsed without body-plain (postmark first) renders it with the same parse when mailgun asks, once', async () => {
  const raw = fixture('html-related.eml');
  const asked: Array<{ plainText: boolean }> = [];
  const parse = (r: Buffer, options: { plainText: boolean }) => (asked.push({ ...options }), parseInboundMessage(r, options));
  const views = new InboundViews(10_000);
  const first = await views.of('msg_a', raw, parse, { plainText: false });
  const again = await views.of('msg_a', raw, parse, { plainText: true });
  assert.equal(again, first, 'the kept view');
  assert.deepEqual(asked, [{ plainText: false }]);
  const plain = await again.plainText();
  assert.equal(plain, (await parseInboundMessage(raw, { plainText: true })).plainText);
  assert.match(plain, /Guten Tag/);
  assert.equal(await first.plainText(), plain);
  assert.deepEqual(asked, [{ plainText: false }, { plainText: true }], 'rendered by the parse it was given (the pool), not on this thread, and once');
});

test('a kept view parsed without body-plain needs no second parse when the message has a text part, or no body at all', async () => {
  for (const [raw, expected] of [
    [Buffer.from('Subject: t\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nplain words\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>html words</p>\r\n--b--\r\n'), 'plain words'],
    [Buffer.from('Subject: empty\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=a.bin\r\n\r\nAAAA\r\n'), ''],
  ] as const) {
    const asked: Array<{ plainText: boolean }> = [];
    const parse = (r: Buffer, options: { plainText: boolean }) => (asked.push({ ...options }), parseInboundMessage(r, options));
    const view = await new InboundViews(10_000).of('msg_b', raw, parse, { plainText: false });
    const plain = await view.plainText();
    assert.equal(plain.trim(), expected);
    assert.equal(plain, (await parseInboundMessage(raw, { plainText: true })).plainText, 'what the parse would have rendered');
    assert.deepEqual(asked, [{ plainText: false }], 'one parse');
  }
});

// ---------- outcomes ----------

test('action_mailbox outcomes: 204 delivered, 401/404 dead loudly, 415/422 dead, 5xx retry', () => {
  assert.deepEqual(classifyActionMailbox(204), { kind: 'delivered' });
  const o401 = classifyActionMailbox(401);
  assert.equal(o401?.kind, 'dead');
  assert.equal(o401?.kind === 'dead' && o401.loud, true);
  assert.equal(classifyActionMailbox(404)?.kind === 'dead' && classifyActionMailbox(404)?.kind, 'dead');
  for (const s of [415, 422]) {
    const o = classifyActionMailbox(s);
    assert.equal(o?.kind, 'dead');
    assert.notEqual(o?.kind === 'dead' && o.loud, true);
  }
  for (const s of [500, 502, 503, 429, 408]) assert.equal(classifyActionMailbox(s)?.kind, 'retry');
  assert.equal(classifyActionMailbox(400), undefined, 'the standard rule decides the rest');
});

test('mailgun 406 and postmark 403: dead but not loud (the consumer refused on purpose); other 4xx retried as the services do; the rest by the standard rule', () => {
  const mg = classifyMailgun(406);
  assert.equal(mg?.kind, 'dead');
  assert.notEqual(mg?.kind === 'dead' && mg.loud, true);
  for (const s of [401, 403]) assert.equal(classifyMailgun(s), undefined, `${s}: a refused signature, by the standard rule`);
  assert.equal(classifyStatus(401).kind === 'dead' && (classifyStatus(401) as { loud?: boolean }).loud, true, 'a refused signature is loud');
  const pm = classifyPostmark(403);
  assert.equal(pm?.kind, 'dead');
  assert.notEqual(pm?.kind === 'dead' && pm.loud, true);
  assert.equal(classifyPostmark(401), undefined, 'refused credentials, by the standard rule');
  for (const s of [400, 404, 410, 413, 415, 422]) {
    assert.equal(classifyMailgun(s)?.kind, 'retry', `mailgun ${s}`);
    assert.equal(classifyPostmark(s)?.kind, 'retry', `postmark ${s}`);
  }
  for (const s of [200, 301, 500, 503]) {
    assert.equal(classifyMailgun(s), undefined, `mailgun ${s}`);
    assert.equal(classifyPostmark(s), undefined, `postmark ${s}`);
  }
});

test('every configured format has an encoder registered under its name', () => {
  const formats = createFormats();
  for (const name of WEBHOOK_FORMATS) assert.equal(formats[name]?.name, name);
});

// ---------- configuration ----------

function configFor(webhook: string): string {
  return `
routes:
  - name: r
    addresses: ["*@in.test"]
    webhook:
${webhook}
`;
}

function problems(yaml: string): string[] {
  try {
    parseTestConfig(yaml, tempDir());
  } catch (err) {
    if (err instanceof ConfigError) return err.problems.map((p) => `${p.path}: ${p.message}`);
    throw err;
  }
  return [];
}

test('config: action_mailbox and mailgun need their secret; postmark and sendgrid take none', () => {
  assert.match(problems(configFor('      url: https://app.test/rails/action_mailbox/relay/inbound_emails\n      format: action_mailbox')).join('\n'), /routes\[0\]\.webhook\.secret: missing: format action_mailbox needs a secret/);
  assert.match(problems(configFor('      url: https://app.test/mg\n      format: mailgun')).join('\n'), /webhook\.secret: missing: format mailgun/);
  assert.match(problems(configFor('      url: https://app.test/pm\n      format: postmark\n      secret: nope')).join('\n'), /format postmark takes no secret/);
  assert.deepEqual(problems(configFor('      url: https://u:p@app.test/pm\n      format: postmark\n      raw_email: true')), []);
  const ok = parseTestConfig(configFor('      url: https://app.test/mg\n      format: mailgun\n      secret: key-abc\n      mime: true'), tempDir());
  assert.equal(ok.routes[0]?.webhook?.options.mime, true);
  assert.deepEqual(ok.routes[0]?.webhook?.signingKeyBytes, Buffer.from('key-abc'));
});

test('config: a format option on another format is refused, naming the key and the fix', () => {
  const p = problems(configFor('      url: https://app.test/sg\n      format: sendgrid\n      mime: true'));
  assert.ok(p.includes('routes[0].webhook.mime: applies only to format mailgun; remove it or set format: mailgun'), p.join('\n'));
  assert.match(problems(configFor('      url: https://app.test/j\n      secret: whsec_' + Buffer.alloc(32, 1).toString('base64') + '\n      send_raw: true')).join('\n'), /webhook\.send_raw: applies only to format sendgrid/);
  assert.match(problems(configFor('      url: https://app.test/j\n      format: postmark\n      raw_email: "yes"')).join('\n'), /raw_email/);
});

test('mailgun mime and sendgrid send_raw forward what a full parse refuses (1,100 MIME parts): only the header is read', async () => {
  const parts = Array.from({ length: 1100 }, (_, i) => `--b\r\nContent-Type: text/plain\r\n\r\npart ${i}\r\n`).join('');
  const raw = Buffer.from(`From: A <a@x.test>\r\nTo: b@in.test\r\nSubject: =?UTF-8?Q?gr=C3=BC=C3=9Fe?=\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n${parts}--b--\r\n`);
  await assert.rejects(inboundView(raw), 'a full parse refuses it');
  const recipients = [{ address: 'b@in.test', key: null }];
  const formats = createFormats();
  const mailgun = await formats.mailgun.encode(formatContext(raw, { recipients, webhook: { format: 'mailgun', signingKeyBytes: Buffer.from('key-abc'), options: { mime: true, raw_email: false, send_raw: false } } }));
  const sendgrid = await formats.sendgrid.encode(formatContext(raw, { recipients, webhook: { format: 'sendgrid', options: { mime: false, raw_email: false, send_raw: true } } }));
  for (const req of [mailgun, sendgrid]) {
    const body = Buffer.from(req.body as Uint8Array);
    assert.ok(body.includes(raw), 'the message byte for byte');
    assert.ok(body.includes(Buffer.from('grüße')), 'the subject decoded');
  }
});
