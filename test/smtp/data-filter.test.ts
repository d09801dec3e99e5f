// The DATA reader and filter and the per-IP counters as pure units: chunking never changes the result.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { Readable } from 'node:stream';
import { createDataFilter, parseContentType, type DataFilterOptions } from '../../src/smtp/data-filter.js';
import { ClientLimits, clientKey, parseCidr } from '../../src/smtp/limits.js';
import { enhanceReply, MailhookStream, parseProxyV2 } from '../../src/smtp/adapter.js';
import { MessageRefused } from '../../src/smtp/replies.js';
import { parseMessage } from '../../src/parse/message.js';

const OPTS: DataFilterOptions = { bareLf: 'normalize', maxBytes: 10_000_000, maxHeaderBytes: 1 << 20, maxReceived: 100, maxMimeParts: 1000, maxMimeDepth: 100 };

async function run(input: Buffer, chunkSize: number, opts: Partial<DataFilterOptions> = {}): Promise<{ out: Buffer; err: unknown; filter: ReturnType<typeof createDataFilter> }> {
  const chunks: Buffer[] = [];
  for (let i = 0; i < input.length; i += chunkSize) chunks.push(input.subarray(i, i + chunkSize));
  const filter = createDataFilter({ ...OPTS, ...opts });
  Readable.from(chunks).pipe(filter);
  const out: Buffer[] = [];
  try {
    for await (const c of filter) out.push(c as Buffer);
    return { out: Buffer.concat(out), err: undefined, filter };
  } catch (err) {
    return { out: Buffer.concat(out), err, filter };
  }
}

test('normalize turns every lone CR and LF into CRLF, whatever the chunking', async () => {
  const input = Buffer.from('a\nb\rc\r\nd\r\re\n\nf\r');
  for (const size of [1, 2, 3, 5, 64]) {
    const { out, err, filter } = await run(input, size);
    assert.equal(err, undefined);
    assert.equal(out.toString('latin1'), 'a\r\nb\r\nc\r\nd\r\n\r\ne\r\n\r\nf\r\n', `chunk size ${size}`);
    assert.equal(filter.stats.normalized, 7);
  }
});

test('clean input passes through unchanged (the same buffers, no copy)', async () => {
  const input = Buffer.from('Subject: x\r\n\r\nline\r\n');
  const { out, filter } = await run(input, 1000);
  assert.deepEqual(out, input);
  assert.equal(filter.stats.normalized, 0);
  const chunks = [Buffer.from('Subject: y\r\n\r\n'), Buffer.from('body line\r\n'), Buffer.from('last\r\n')];
  const passed = createDataFilter(OPTS);
  Readable.from(chunks).pipe(passed);
  // 'data' events hand on each pushed buffer as it is (reading with an iterator would join them).
  const seen: Buffer[] = [];
  passed.on('data', (c: Buffer) => seen.push(c));
  await once(passed, 'end');
  assert.equal(seen.length, chunks.length);
  seen.forEach((c, i) => assert.equal(c, chunks[i], `chunk ${i} is the buffer that came in`));
});

test('keep passes lone CRs and LFs as they are, yet ends lines at them: MIME parts and headers are still counted', async () => {
  const input = Buffer.from('a\nb\rc\r\nd\r\re\n\nf\r');
  for (const size of [1, 2, 3, 5, 64]) {
    const { out, err, filter } = await run(input, size, { bareLf: 'keep' });
    assert.equal(err, undefined);
    assert.deepEqual(out, input, `chunk size ${size}`);
    assert.equal(filter.stats.normalized, 0);
  }
  // A message with LF line ends (as some mailbox servers keep it): its three parts break the limit of 2.
  const lf = Buffer.from('Received: a\nReceived: b\nContent-Type: multipart/mixed; boundary=q\n\n--q\n\none\n--q\n\ntwo\n--q--\n');
  for (const size of [1, 7, 1000]) {
    const parts = await run(lf, size, { bareLf: 'keep', maxMimeParts: 2 });
    assert.ok(parts.err instanceof MessageRefused, `chunk size ${size}`);
    assert.equal(parts.err.reason, 'more than 2 MIME parts');
    const hops = await run(lf, size, { bareLf: 'keep', maxReceived: 1 });
    assert.ok(hops.err instanceof MessageRefused);
    assert.equal(hops.err.reason, 'more than 1 Received headers');
    const fine = await run(lf, size, { bareLf: 'keep' });
    assert.deepEqual(fine.out, lf);
    assert.equal(fine.filter.stats.mimeParts, 3);
  }
  // A lone CR ends no line for mailparser's splitter: the Content-Type after it is part of the X field, the message
  // no multipart, and a limit of 1 part holds (normalize, which stores a CRLF there, sees three parts).
  const cr = Buffer.from('X: a\rContent-Type: multipart/mixed; boundary=q\n\n--q\n\none\n--q\n\ntwo\n--q--\n');
  for (const size of [1, 4, 1000]) {
    const kept = await run(cr, size, { bareLf: 'keep', maxMimeParts: 1 });
    assert.equal(kept.err, undefined, `chunk size ${size}`);
    assert.deepEqual(kept.out, cr);
    assert.equal(kept.filter.stats.mimeParts, 1);
    const { message } = await parseMessage(kept.out, { htmlToText: false });
    assert.equal(message.attachments.length, 0);
    assert.equal(message.text?.includes('--q'), true, 'mailparser reads it the same way: no parts, the body is text');
    assert.equal((await run(cr, size)).filter.stats.mimeParts, 3);
  }
  const endsOnCr = await run(Buffer.from('Subject: x\n\nbody\r'), 3, { bareLf: 'keep' });
  assert.deepEqual(endsOnCr.out, Buffer.from('Subject: x\n\nbody\r'));
});

test('a body outside any multipart: every lone CR and LF is found, whatever the chunking, after plain CRLF lines', async () => {
  // The body's CRLF lines take a shorter path than the header's (nothing but their ends matters there); the lone
  // ones among and after them, and a CR split from its LF by a chunk boundary, are seen all the same.
  const lone = /\r(?!\n)|(?<!\r)\n/g;
  const bodies = ['one\r\ntwo\r\n\r\nthree\nfour\r\n', 'a\r\nb\r\nc\rd\r\ne\r\n', 'x\r\n\r\n\r\ny\r\r\nz\n\r\n', 'p\r\nq\r\nr\r'];
  const heads = [
    { head: 'Subject: plain\r\n\r\n', parts: 1 },
    { head: 'Content-Type: multipart/mixed; boundary=b\r\n\r\npreamble\r\n--b\r\n\r\npart\r\n--b\r\nX: y\r\n\r\n--b--\r\nepilogue\r\n', parts: 3 },
  ];
  for (const { head, parts } of heads) {
    for (const body of bodies) {
      const input = Buffer.from(head + body);
      const count = (body.match(lone) ?? []).length;
      for (let size = 1; size <= input.length; size++) {
        const what = `${JSON.stringify(head + body)} in chunks of ${size}`;
        const n = await run(input, size);
        assert.equal(n.err, undefined, what);
        assert.equal(n.out.toString('latin1'), (head + body).replace(lone, '\r\n'), what);
        assert.equal(n.filter.stats.normalized, count, what);
        assert.equal(n.filter.stats.mimeParts, parts, what);
        const k = await run(input, size, { bareLf: 'keep' });
        assert.deepEqual(k.out, input, what);
        const r = await run(input, size, { bareLf: 'reject' });
        assert.equal(r.err instanceof MessageRefused, count > 0, what);
      }
    }
  }
});

/** What MailhookStream hands on for a DATA phase given in these chunks, and what followed the terminator. */
async function dataPhase(chunks: Buffer[]): Promise<{ content: string; after: string }> {
  const stream = new MailhookStream();
  const after: string[] = [];
  stream.oncommand = (command: Buffer, cb?: () => void) => {
    after.push(command.toString('latin1'));
    cb?.();
  };
  const data = stream.startDataMode();
  const out: Buffer[] = [];
  data.on('data', (c: Buffer) => out.push(c));
  const ended = once(data, 'end');
  // Written as a socket would: the chunk holding the terminator completes only once the phase is over (continue).
  for (const c of chunks) stream.write(c);
  await ended;
  stream.continue();
  stream.end();
  await once(stream, 'finish');
  return { content: Buffer.concat(out).toString('latin1'), after: after.join('|') };
}

test('DATA: periods and the terminator are read the same wherever the chunks split, bytes held back or not', async () => {
  // The stream holds a chunk's last 4 bytes back when they may begin a line or the terminator (at the start, or
  // holding a CR or an LF); otherwise the chunk goes whole and the next is not joined to them. One chunk is the reference.
  const phases = [
    'Subject: a\r\n\r\nabcd\n.x\r\nend\r\n.\r\nQUIT\r\n',
    'Subject: b\r\n\r\nabcdefgh\r\n..y\r\n.z\r\n.\r\n',
    'abcd\n.\n.\r.x\r\n...\r\nwxyz\r\n.\r\nNOOP\r\n',
    'ab.d\r\nefgh\r\n.\r\n',
    // the data's start: an empty message, a stuffed first line, an LF first
    '.\r\nNOOP\r\n',
    '..x\r\n.y\r\n.\r\n',
    '\n.x\r\n.\r\n',
    // SMTP smuggling: none of these ends the data, however it is split (hostile-input.test.ts sends them whole)
    ...['\n.\n', '\n.\r\n', '\r.\r\n', '\r\n.\n', '\r.\r', '\n.\r', '\r.\n', '\r\n.\r', '\r\n\x00.\r\n'].map((seq) => `hi${seq}RSET\r\n.\r\n`),
  ];
  for (const phase of phases) {
    const whole = Buffer.from(phase, 'latin1');
    const reference = await dataPhase([whole]);
    assert.ok(!reference.content.includes('\r\n.\r\n'), JSON.stringify(phase));
    if (phase.startsWith('hi')) assert.match(reference.content, /RSET\r\n$/, `${JSON.stringify(phase)}: the smuggled line is content`);
    // Every split into up to four chunks: the first chunk is held back at the data's start, so a chunk sent whole
    // followed by a short one needs the fourth.
    for (let a = 1; a < whole.length; a++) {
      for (let b = a + 1; b <= whole.length; b++) {
        for (let c = b; c <= whole.length; c++) {
          const chunks = [whole.subarray(0, a), whole.subarray(a, b), whole.subarray(b, c), whole.subarray(c)].filter((x) => x.length > 0);
          assert.deepEqual(await dataPhase(chunks), reference, `${JSON.stringify(phase)} split at ${a}, ${b} and ${c}`);
        }
      }
    }
  }
  assert.deepEqual(await dataPhase([Buffer.from('Subject: a\r\n\r\nabcd'), Buffer.from('\n.x\r\n.\r\n')]), { content: 'Subject: a\r\n\r\nabcd\nx\r\n', after: '' });
  assert.deepEqual(await dataPhase([Buffer.from('xyabcd'), Buffer.from('\n.'), Buffer.from('x\r\n.\r\n')]), { content: 'xyabcd\nx\r\n', after: '' });
  assert.deepEqual(await dataPhase(['Subject: a\r\n\r\nab', 'cdef', '\n.', 'x\r\n.\r\n'].map((c) => Buffer.from(c))), { content: 'Subject: a\r\n\r\nabcdef\nx\r\n', after: '' });
  // As the library: an LF that is the data's first byte starts no line of its own (the DATA line's CRLF did).
  assert.deepEqual(await dataPhase([Buffer.from('\n.x\r\n.\r\n')]), { content: '\n.x\r\n', after: '' });
});

test('reject refuses a lone LF with 550 5.5.2 and passes nothing further', async () => {
  const { err } = await run(Buffer.from('Subject: x\r\n\r\nline\nmore\r\n'), 4, { bareLf: 'reject' });
  assert.ok(err instanceof MessageRefused);
  assert.equal(err.reply.code, 550);
  assert.equal(err.reply.enhanced, '5.5.2');
});

test('MIME structure: parts and depth are counted across chunk boundaries; boundaries of outer parts close inner ones', async () => {
  const msg = [
    'Content-Type: multipart/mixed;\r\n boundary="outer"',
    '',
    '--outer',
    'Content-Type: multipart/alternative; boundary=inner',
    '',
    '--inner',
    'Content-Type: text/plain',
    '',
    'a',
    '--inner',
    'Content-Type: message/rfc822',
    '',
    'Content-Type: multipart/mixed; boundary="deep"',
    '',
    '--deep  ',
    '',
    'x',
    '--outer',
    '',
    'tail',
    '--outer--',
    '',
  ].join('\r\n');
  for (const size of [1, 7, 4096]) {
    const { err, filter } = await run(Buffer.from(msg), size);
    assert.equal(err, undefined);
    assert.equal(filter.stats.mimeParts, 7, `chunk size ${size}: the message, its five parts and the attached message`);
    assert.equal(filter.stats.maxDepth, 4);
  }
  const deep = await run(Buffer.from(msg), 3, { maxMimeDepth: 3 });
  assert.ok(deep.err instanceof MessageRefused);
  assert.equal(deep.err.reply.text, 'Error: MIME nesting too deep');
  assert.equal((await run(Buffer.from(msg), 3, { maxMimeParts: 7 })).err, undefined);
  const many = await run(Buffer.from(msg), 3, { maxMimeParts: 6 });
  assert.ok(many.err instanceof MessageRefused);
  assert.equal(many.err.reply.text, 'Error: too many MIME parts');
});

test('a boundary-like line of the body of a non-multipart message is content', async () => {
  const { err, filter } = await run(Buffer.from('Subject: x\r\n\r\n--outer\r\n--outer--\r\n'), 2);
  assert.equal(err, undefined);
  assert.equal(filter.stats.mimeParts, 1, 'the message alone');
});

test('Received headers count in the message header only; the From header size is measured', async () => {
  const msg = 'Received: a\r\nreceived : b\r\nFrom: x@y.test,\r\n z@y.test\r\n\r\nReceived: not a header\r\n';
  const { filter } = await run(Buffer.from(msg), 5);
  assert.equal(filter.stats.received, 2);
  assert.equal(filter.stats.fromHeaderBytes, 'From: x@y.test,\r\n z@y.test\r\n'.length);
  assert.equal(filter.stats.headerLines, 4, 'header lines of the message itself, continuations included');
  const loop = await run(Buffer.from(msg), 5, { maxReceived: 1 });
  assert.ok(loop.err instanceof MessageRefused);
  assert.equal(loop.err.reply.enhanced, '5.4.6');
});

test('the header limit applies to each header section; the size limit to the bytes received', async () => {
  const big = await run(Buffer.from(`Subject: ${'x'.repeat(200)}\r\n\r\nbody\r\n`), 16, { maxHeaderBytes: 100 });
  assert.ok(big.err instanceof MessageRefused);
  assert.equal(big.err.reply.text, 'Error: message header section exceeds size limit');
  // A header line that never ends is refused as soon as it passes the limit, not when (if ever) it ends: what a
  // tap (sender authentication) holds of the header stays within the limit.
  const tapped: Buffer[] = [];
  const open = createDataFilter({ ...OPTS, maxHeaderBytes: 100, tap: { write: (c) => tapped.push(c), end: () => {} } });
  open.write(Buffer.from('Subject: ' + 'x'.repeat(80)));
  open.write(Buffer.from('x'.repeat(80)));
  assert.ok(open.violation instanceof MessageRefused, 'refused before the line ends');
  assert.equal(open.violation.reply.enhanced, '5.3.4');
  open.write(Buffer.from('x'.repeat(10_000)));
  assert.ok(Buffer.concat(tapped).length <= 89, `the tap got ${Buffer.concat(tapped).length} bytes`);
  open.destroy();
  const large = await run(Buffer.from('Subject: x\r\n\r\n' + 'y'.repeat(200)), 16, { maxBytes: 100 });
  assert.equal((large.err as { code?: string }).code, 'MESSAGE_TOO_LARGE');
});

test('parseContentType reads quoted and token boundaries', () => {
  assert.deepEqual(parseContentType(' Multipart/Mixed; charset=x; BOUNDARY="a b\\"c"'), { type: 'multipart', subtype: 'mixed', boundary: 'a b"c' });
  assert.deepEqual(parseContentType('multipart/related;boundary=abc;type=x'), { type: 'multipart', subtype: 'related', boundary: 'abc' });
  assert.deepEqual(parseContentType('text/plain; boundary=abc'), { type: 'text', subtype: 'plain', boundary: undefined });
});

test('per-IP counters: connections, rates per window, exemptions by CIDR', () => {
  let now = 0;
  const limits = new ClientLimits({ maxConnectionsPerIp: 2, maxMessagesPerIp: 2, maxRecipientsPerIp: 3, windowMs: 1000, exempt: ['10.0.0.0/8', '2001:db8::/32'] }, { now: () => now });
  assert.equal(limits.openConnection('192.0.2.1'), true);
  assert.equal(limits.openConnection('192.0.2.1'), true);
  assert.equal(limits.openConnection('192.0.2.1'), false);
  assert.equal(limits.openConnection('10.1.2.3'), true);
  assert.equal(limits.openConnection('10.1.2.3'), true);
  assert.equal(limits.openConnection('10.1.2.3'), true, 'exempt');
  limits.closeConnection('192.0.2.1');
  assert.equal(limits.openConnection('192.0.2.1'), true);
  assert.equal(limits.takeMessage('192.0.2.1'), true);
  assert.equal(limits.takeMessage('192.0.2.1'), true);
  assert.equal(limits.takeMessage('192.0.2.1'), false);
  assert.equal(limits.takeMessage('2001:db8::5'), true);
  now = 999;
  assert.equal(limits.takeMessage('192.0.2.1'), false);
  now = 1000;
  assert.equal(limits.takeMessage('192.0.2.1'), true, 'a new window');
  for (let i = 0; i < 3; i++) assert.equal(limits.takeRecipient('192.0.2.9'), true);
  assert.equal(limits.takeRecipient('192.0.2.9'), false);
  assert.deepEqual(parseCidr('10.0.0.0/8'), { address: '10.0.0.0', prefix: 8, family: 'ipv4' });
  assert.equal(parseCidr('10.0.0.0/33'), undefined);
  assert.equal(parseCidr('example.com'), undefined);
});

test('per-IP counters count IPv6 clients by prefix (84 bits by default, as Postfix), IPv4-mapped ones as IPv4', () => {
  const limits = new ClientLimits({ maxConnectionsPerIp: 50, maxMessagesPerIp: 0, maxRecipientsPerIp: 0, windowMs: 1000, exempt: [] }, { now: () => 0 });
  // Sixty addresses of one /64 (the host's own block) are one client.
  const opened = Array.from({ length: 60 }, (_, i) => limits.openConnection(`2001:db8:1:2::${(i + 1).toString(16)}`));
  assert.equal(opened.filter(Boolean).length, 50);
  assert.equal(limits.connectionsFrom('2001:db8:1:2:0:ff:abcd:1'), 50, 'same first 84 bits');
  assert.equal(limits.openConnection('2001:db8:1:2:1000::1'), true, 'another /84');
  // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d: still one IPv4 client each, not one IPv6 block.
  assert.equal(limits.openConnection('::ffff:192.0.2.1'), true);
  assert.equal(limits.connectionsFrom('192.0.2.1'), 1);
  assert.equal(limits.connectionsFrom('::ffff:192.0.2.2'), 0);
  assert.equal(clientKey('2001:DB8:1:2:3:4:5:6', 64), clientKey('2001:db8:1:2::', 64));
  assert.notEqual(clientKey('2001:db8:1:2:3:4:5:6', 128), clientKey('2001:db8:1:2:3:4:5:7', 128));
  assert.equal(clientKey('::1', 128), clientKey('0:0:0:0:0:0:0:1', 128));
  const perAddress = new ClientLimits({ maxConnectionsPerIp: 1, maxMessagesPerIp: 0, maxRecipientsPerIp: 0, windowMs: 1000, exempt: [], ipv6PrefixLength: 128 }, { now: () => 0 });
  assert.equal(perAddress.openConnection('2001:db8::1'), true);
  assert.equal(perAddress.openConnection('2001:db8::2'), true);
  assert.equal(perAddress.openConnection('2001:db8::2'), false);
});

test('the rate table is swept of expired windows once it is large, so it stays bounded', () => {
  let now = 0;
  const limits = new ClientLimits({ maxConnectionsPerIp: 0, maxMessagesPerIp: 5, maxRecipientsPerIp: 0, windowMs: 1000, exempt: [] }, { now: () => now });
  const ip = (i: number) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
  for (let i = 0; i < 50_000; i++) limits.takeMessage(ip(i));
  assert.equal(limits.trackedIps, 50_000);
  now = 1000; // every window has ended
  limits.takeMessage('192.0.2.1');
  assert.equal(limits.trackedIps, 1);
});

test('enhanced codes for library replies', () => {
  assert.equal(enhanceReply(250, 'Accepted', 'MAIL_FROM_OK'), '2.1.0 Accepted');
  assert.equal(enhanceReply(250, 'Accepted', 'RCPT_TO_OK'), '2.1.5 Accepted');
  assert.equal(enhanceReply(220, 'mx.test ESMTP mailhook', false), 'mx.test ESMTP mailhook');
  assert.equal(enhanceReply(354, 'End data with <CR><LF>.<CR><LF>', undefined), 'End data with <CR><LF>.<CR><LF>');
  assert.equal(enhanceReply(550, '5.1.1 Recipient address rejected: User unknown', undefined), '5.1.1 Recipient address rejected: User unknown');
  assert.equal(enhanceReply(421, 'mx.test You talk too soon', 'MAIL'), '4.7.0 mx.test You talk too soon');
  assert.equal(enhanceReply(501, 'Error: syntax: EHLO hostname', false), '5.5.4 Error: syntax: EHLO hostname');
});

test('PROXY v2 headers: TCP4, TCP6, LOCAL, partial, garbage', () => {
  const sig = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
  const v4 = Buffer.concat([sig, Buffer.from([0x21, 0x11, 0x00, 0x0c, 203, 0, 113, 7, 192, 0, 2, 1, 0xdc, 0x04, 0x00, 0x19])]);
  assert.deepEqual(parseProxyV2(v4), { remoteAddress: '203.0.113.7', remotePort: 56324, length: 28 });
  assert.equal(parseProxyV2(v4.subarray(0, 20)), 'more');
  assert.equal(parseProxyV2(Buffer.from('PROXY TCP4 ')), 'v1');
  const v6body = Buffer.alloc(36);
  Buffer.from('20010db8000000000000000000000042', 'hex').copy(v6body, 0);
  v6body.writeUInt16BE(4242, 32);
  const v6 = Buffer.concat([sig, Buffer.from([0x21, 0x21, 0x00, 36]), v6body]);
  assert.deepEqual(parseProxyV2(v6), { remoteAddress: '2001:db8:0:0:0:0:0:42', remotePort: 4242, length: 52 });
  assert.deepEqual(parseProxyV2(Buffer.concat([sig, Buffer.from([0x20, 0x00, 0x00, 0x00])])), { length: 16 });
  assert.ok(parseProxyV2(Buffer.concat([sig.subarray(0, 5), Buffer.from('xx')])) instanceof Error);
  assert.ok(parseProxyV2(Buffer.concat([sig, Buffer.from([0x31, 0x11, 0x00, 0x0c])])) instanceof Error);
});

test('what the MIME-part limit lets through mailparser can parse: attached messages, inline or not, nested parts', async () => {
  const message = (text: number, attached: number, disposition: string, innerParts: number): Buffer => {
    let s = 'Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n';
    for (let i = 0; i < text; i++) s += `--b\r\nContent-Type: text/plain\r\n\r\npart ${i}\r\n`;
    const inner = innerParts > 0 ? `Content-Type: multipart/mixed; boundary="i"\r\n\r\n${'--i\r\n\r\nin\r\n'.repeat(innerParts)}--i--\r\n` : 'Subject: inner\r\n\r\nbody\r\n';
    for (let i = 0; i < attached; i++) s += `--b\r\nContent-Type: message/rfc822\r\n${disposition}\r\n${inner}`;
    return Buffer.from(s + '--b--\r\n');
  };
  let accepted = 0;
  for (const disposition of ['Content-Disposition: inline\r\n', 'Content-Disposition: attachment\r\n', '']) {
    for (const attached of [1, 3]) {
      for (const innerParts of [0, 2]) {
        for (let text = 990; text <= 1000; text++) {
          const raw = message(text, attached, disposition, innerParts);
          const { err } = await run(raw, 65536);
          if (err) continue;
          accepted++;
          await assert.doesNotReject(parseMessage(raw), `${text} text parts, ${attached} attached (${JSON.stringify(disposition)}, ${innerParts} inner parts) passed the limit`);
        }
      }
    }
  }
  assert.ok(accepted > 0, 'some of them are under the limit');
});

test('what the filter accepts mailparser can parse: boundaries, header sections and delimiters as mailparser\'s splitter reads them', async () => {
  // Each message hides more than 1,000 MIME parts (or a header section over 1 MiB as mailsplit counts it) from a
  // reading that differs from mailsplit's; accepted, it would be answered 250 and then found unparseable.
  const parts = (b: string, n = 1001): string => `--${b}\r\nContent-Type: text/plain\r\n\r\np\r\n`.repeat(n) + `--${b}--\r\n`;
  const long = 'b'.repeat(201);
  const cases: Record<string, string> = {
    'a 201-character boundary': `Content-Type: multipart/mixed; boundary="${long}"\r\n\r\n${parts(long)}`,
    'RFC 2231 boundary*0=': 'Content-Type: multipart/mixed; boundary*0="z"; boundary*1=z\r\n\r\n' + parts('zz'),
    "RFC 2231 boundary*=utf-8''": "Content-Type: multipart/mixed; boundary*=utf-8''z%7A\r\n\r\n" + parts('zz'),
    'RFC 2231 overriding a plain boundary': "Content-Type: multipart/mixed; boundary=x; boundary*=''zz\r\n\r\n" + parts('zz'),
    'short header lines (mailsplit counts each as at least 64 bytes)': 'Subject: x\r\n' + 'X-A: a\r\n'.repeat(16_500) + '\r\nbody\r\n',
    'the first of two Content-Type fields': 'Content-Type: multipart/mixed; boundary=zz\r\nContent-Type: text/plain\r\n\r\n' + parts('zz'),
    'parts without a blank line after their header': 'Content-Type: multipart/mixed; boundary=zz\r\n\r\n' + '--zz\r\nX-A: a\r\n'.repeat(1001) + '--zz--\r\n',
    'a closing delimiter in the preamble': 'Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz--\r\n' + parts('zz'),
    'a delimiter padded past what mailsplit takes': `Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--a${' '.repeat(1001)}\r\n${parts('b')}--a--\r\n`,
    'the first of two Content-Transfer-Encoding fields, with a comment': 'Content-Type: message/rfc822\r\nContent-Disposition: inline\r\nContent-Transfer-Encoding: 7bit (plain)\r\nContent-Transfer-Encoding: base64\r\n\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n' + parts('zz'),
    'a field name on a line without a colon': 'Subject: x\r\nContent-Type\r\n : multipart/mixed; boundary=zz\r\n\r\n' + parts('zz'),
    'a name padded past the line kept': `Subject: x\r\nContent-Type${' '.repeat(9000)}: multipart/mixed; boundary=zz\r\n\r\n` + parts('zz'),
    'a message typed by its filename': 'Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Disposition: inline; filename="x.eml"\r\n\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n' + parts('zz') + '--a--\r\n',
    'a part whose first line starts with a space': 'Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\n Content-Type: multipart/mixed; boundary=zz\r\n\r\n' + parts('zz') + '--a--\r\n',
    'folding inside a quoted boundary': 'Content-Type: multipart/mixed; boundary="y\r\n   y"\r\n\r\n' + parts('y y'),
    'a comment before the type': 'Content-Type: (x) multipart/mixed; boundary=zz\r\n\r\n' + parts('zz'),
    'a 1,100-character boundary': `Content-Type: multipart/mixed; boundary=${'c'.repeat(1100)}\r\n\r\n${parts('c'.repeat(1100))}`,
    'a boundary in another character set': "Content-Type: multipart/mixed; boundary*=utf-16''%00z%00z\r\n\r\n" + parts('zz'),
  };
  for (const [name, text] of Object.entries(cases)) {
    const raw = Buffer.from(`MIME-Version: 1.0\r\n${text}`, 'latin1');
    const { err } = await run(raw, 4096);
    if (err === undefined) await assert.doesNotReject(parseMessage(raw), `${name}: accepted but mailparser cannot parse it`);
    else assert.ok(err instanceof MessageRefused, `${name}: ${String(err)}`);
  }
  // The refusals: the header as 552 5.3.4, the parts as 554 5.6.0, what cannot be read the same way as 554 5.6.0.
  const reply = async (text: string) => ((await run(Buffer.from(text, 'latin1'), 4096)).err as MessageRefused).reply;
  assert.equal((await reply(cases['short header lines (mailsplit counts each as at least 64 bytes)']!)).text, 'Error: message header section exceeds size limit');
  assert.equal((await reply(cases['RFC 2231 boundary*0=']!)).text, 'Error: too many MIME parts');
  assert.equal((await reply(cases['a 1,100-character boundary']!)).text, 'Error: MIME header not understood');
  // What mailsplit takes: 16,000 such lines are under 1 MiB.
  const fine = Buffer.from('Subject: x\r\n' + 'X-A: a\r\n'.repeat(16_000) + '\r\nbody\r\n');
  assert.equal((await run(fine, 4096)).err, undefined);
  await assert.doesNotReject(parseMessage(fine));
});

test('a part without Content-Type is typed by its filename as mailsplit decodes it, in any character set mailsplit decodes', async () => {
  const parts = (b: string, n: number): string => `--${b}\r\nContent-Type: text/plain\r\n\r\np\r\n`.repeat(n) + `--${b}--\r\n`;
  const message = (disposition: string, content: string): Buffer =>
    Buffer.from(`MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Disposition: ${disposition}\r\n\r\n${content}--a--\r\n`, 'latin1');
  // "файл.txt" in KOI8-R: an ordinary attachment, which the filter refused as unreadable (554 5.6.0).
  const koi8 = message("attachment; filename*=koi8-r''%C6%C1%CA%CC.txt", 'text\r\n');
  assert.equal((await run(koi8, 4096)).err, undefined);
  assert.deepEqual((await parseMessage(koi8)).parsed.attachments.map((a) => a.filename), ['файл.txt']);
  // "あ.eml" in ISO-2022-JP: an attached message, read as one.
  const jp = message("inline; filename*=iso-2022-jp''%1B%24B%24%22%1B%28B.eml", 'Subject: inner\r\n\r\nbody\r\n');
  assert.equal((await run(jp, 4096)).err, undefined);
  await assert.doesNotReject(parseMessage(jp));
  // The same name hiding 1,001 parts: counted as mailparser counts them, so refused.
  const hidden = message("inline; filename*=koi8-r''%C6%C1%CA%CC.eml", `Content-Type: multipart/mixed; boundary=zz\r\n\r\n${parts('zz', 1001)}`);
  assert.equal(((await run(hidden, 4096)).err as MessageRefused).reply.text, 'Error: too many MIME parts');
  await assert.rejects(parseMessage(hidden));
});
