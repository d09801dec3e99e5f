// The parse pool: the same result as parsing on the main thread, and a thread that dies costs no request.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MessageChannel, threadId, Worker, type ResourceLimits } from 'node:worker_threads';
import { EventEmitter } from 'node:events';
import { Writable } from 'node:stream';
import { ParsePool, PARSE_THREAD_HEAP_MB, PIPELINE_DEPTH, respawnDelayMs, THREAD_MAX_BYTES } from '../../src/parse/pool.js';
import { parseMessage, type PayloadMessage, type PayloadMessageJson } from '../../src/parse/message.js';
import { createLogger } from '../../src/core/logger.js';
import { MailhookError } from '../../src/core/errors.js';
import { forTransfer, parseInboundMessage, type InboundMessage } from '../../src/parse/inbound.js';
import { inboundView, type InboundView } from '../../src/delivery/formats/inbound.js';
import { fixture } from '../formats/support.js';

const RAW = Buffer.from(
  'From: "Zoë" <zoe@sender.test>\r\nTo: incoming+abc@gitlab.test\r\nSubject: =?UTF-8?B?SMOpbGxv?=\r\nMessage-ID: <p1@sender.test>\r\n' +
    'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\n' +
    'Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9\r\n--b\r\nContent-Type: application/octet-stream; name=a.bin\r\n' +
    'Content-Transfer-Encoding: base64\r\n\r\nAAECAwQ=\r\n--b--\r\n',
);

const subjectOf = (json: PayloadMessageJson): string | null => (JSON.parse(json) as PayloadMessage).subject;

function pool(threads: number, timeoutMs?: number): { pool: ParsePool; logs: string[] } {
  const logs: string[] = [];
  const destination = new Writable({ write: (c: Buffer, _e, cb) => (logs.push(c.toString()), cb()) });
  return { pool: new ParsePool({ threads, log: createLogger({ level: 'debug', destination }), ...(timeoutMs ? { timeoutMs } : {}) }), logs };
}

/** Counts the requests the pool's (only) thread is sent. */
function countPosts(p: ParsePool): { n: number } {
  const worker = (p as unknown as { slots: Array<{ worker: { postMessage: (...a: unknown[]) => void } }> }).slots[0]!.worker;
  const count = { n: 0 };
  const post = worker.postMessage.bind(worker);
  worker.postMessage = (...a: unknown[]) => {
    count.n++;
    post(...a);
  };
  return count;
}

test('a thread parses exactly what the main thread would, off the main thread', async () => {
  const { pool: p, logs } = pool(2);
  try {
    const results = await Promise.all(Array.from({ length: 6 }, () => p.parse(RAW)));
    const here = (await parseMessage(RAW)).message;
    // The thread hands back the message as JSON text, exactly what JSON.stringify makes of the main thread's parse.
    for (const r of results) assert.equal(r, JSON.stringify(here));
    assert.equal(here.subject, 'Héllo');
    assert.equal(here.attachments[0]?.content_base64, 'AAECAwQ=');
    assert.deepEqual(logs, [], 'no thread failed (a failure falls back to the main thread and logs)');
    const threads = (p as unknown as { slots: Array<{ worker: { threadId: number } }> }).slots.map((s) => s.worker.threadId);
    assert.equal(threads.length, 2);
    assert.ok(threads.every((id) => id !== threadId));
  } finally {
    await p.stop();
  }
});

test('a thread that dies with requests waiting: they are parsed on the main thread and the thread is replaced', async () => {
  const { pool: p, logs } = pool(1);
  try {
    const slots = (p as unknown as { slots: Array<{ worker: { threadId: number; terminate(): Promise<number> } }> }).slots;
    const first = slots[0]!.worker;
    const waiting = Promise.all(Array.from({ length: 3 }, () => p.parse(RAW)));
    await first.terminate();
    const results = await waiting;
    for (const r of results) assert.equal(subjectOf(r), 'Héllo');
    assert.equal(slots.length, 1);
    assert.notEqual(slots[0]!.worker.threadId, first.threadId, 'replaced');
    assert.equal(subjectOf(await p.parse(RAW)), 'Héllo');
    assert.deepEqual(logs, []);
  } finally {
    await p.stop();
  }
});

test('a message of a few MiB is parsed on a thread too, with the same result (its parse would hold up the event loop)', async () => {
  const { pool: p } = pool(1);
  try {
    const posts = countPosts(p);
    // 3 MiB: a text part of 2 MiB of lines and a 1 MiB attachment.
    const line = 'La la la la la la la la la la la la la la la la la la la la la la la la la la la la la la la la.\r\n';
    const attachment = Buffer.alloc(1024 * 1024, 7).toString('base64').replace(/.{76}/g, '$&\r\n');
    const big = Buffer.from(
      'Subject: big\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n' +
        line.repeat(Math.ceil((2 * 1024 * 1024) / line.length)) +
        '--b\r\nContent-Type: application/octet-stream; name=a.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n' +
        attachment +
        '\r\n--b--\r\n',
    );
    const there = await p.parse(big);
    assert.equal(posts.n, 1, 'sent to the thread');
    assert.equal(there, JSON.stringify((await parseMessage(big)).message));
    assert.equal((JSON.parse(there) as PayloadMessage).attachments[0]?.size, 1024 * 1024);
    assert.ok(big.length < THREAD_MAX_BYTES);
  } finally {
    await p.stop();
  }
});

test('a message over THREAD_MAX_BYTES is parsed on the calling thread (no copies to and from a thread)', async () => {
  const { pool: p } = pool(1);
  try {
    const posts = countPosts(p);
    const big = Buffer.concat([Buffer.from('Subject: big\r\n\r\n'), Buffer.alloc(THREAD_MAX_BYTES, 'a')]);
    assert.equal(subjectOf(await p.parse(big)), 'big');
    assert.equal(posts.n, 0);
    assert.equal(subjectOf(await p.parse(RAW)), 'Héllo');
    assert.equal(posts.n, 1);
  } finally {
    await p.stop();
  }
});

/** A message with attachments of every size the transfer handles: a few bytes (Node's shared pool) and 200 KiB. */
const BINARY = (() => {
  const small = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  const large = Buffer.from(Array.from({ length: 200 * 1024 }, (_, i) => (i * 7919) & 0xff));
  const part = (name: string, bytes: Buffer) =>
    `--b\r\nContent-Type: application/octet-stream; name=${name}\r\nContent-Transfer-Encoding: base64\r\nContent-ID: <${name}@x.test>\r\n\r\n${bytes.toString('base64').replace(/.{76}/g, '$&\r\n')}\r\n`;
  return Buffer.from(
    'From: "Zoë" <zoe@sender.test>\r\nTo: a@x.test, "B, C" <b@x.test>\r\nCc: c@x.test\r\nSubject: bytes\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n' +
      '--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<div><p>Only <b>HTML</b> here,</p><ul><li>one</li><li>two</li></ul></div>\r\n' +
      part('small.bin', small) +
      part('large.bin', large) +
      '--b--\r\n',
  );
})();

/** A view's fields with its plainText() awaited, to compare two views. */
async function dataOf(view: InboundView): Promise<Omit<InboundView, 'plainText'> & { plain: string }> {
  const { plainText, ...fields } = view;
  return { ...fields, plain: await plainText() };
}

test('the inbound view: a thread parses exactly what the calling thread would, attachments\' bytes and Mailgun\'s body-plain included', async () => {
  const { pool: p, logs } = pool(1);
  try {
    const posts = countPosts(p);
    const messages = ['html-related.eml', 'latin1-reply.eml', 'shift_jis.eml', 'iso-2022-jp.eml', 'all-quote.eml'].map(fixture);
    messages.push(BINARY);
    for (const raw of messages) {
      for (const plainText of [true, false]) {
        const there = await p.parseInbound(raw, { plainText });
        const here = await parseInboundMessage(raw, { plainText });
        assert.deepStrictEqual(there, here, 'field for field, attachments as Buffers with the same bytes');
        assert.ok(there.attachments.every((a) => Buffer.isBuffer(a.content)));
        assert.equal(there.plainText === null, !plainText, 'rendered only when asked for');
      }
      // The views the formats read: through the pool as mailgun asks for it, and on this thread.
      const pooled = await inboundView(raw, (r, o) => p.parseInbound(r, o), { plainText: true });
      assert.deepStrictEqual(await dataOf(pooled), await dataOf(await inboundView(raw)));
    }
    assert.equal(posts.n, messages.length * 3, 'every parse went to the thread');
    // HTML-only mail (below the root, and at the root of a multipart): body-plain is a rendering of the HTML.
    const related = await p.parseInbound(fixture('html-related.eml'), { plainText: true });
    assert.equal(related.text, null);
    assert.match(related.plainText ?? '', /Guten Tag, die Lieferung ist angekommen\./);
    const binary = await p.parseInbound(BINARY, { plainText: true });
    assert.match(binary.plainText ?? '', /Only HTML here,[\s\S]*\* one\n \* two/);
    assert.deepEqual(binary.attachments.map((a) => [a.filename, a.content.length, a.contentId]), [['small.bin', 256, 'small.bin@x.test'], ['large.bin', 200 * 1024, 'large.bin@x.test']]);
    assert.equal(binary.attachments[0]!.content[255], 255);
    assert.deepEqual(logs, []);
  } finally {
    await p.stop();
  }
});

test('the inbound view keeps the pool\'s rules: over THREAD_MAX_BYTES, with no threads, and after stop() it is parsed on the calling thread', async () => {
  const big = Buffer.concat([Buffer.from('Subject: big\r\nContent-Type: text/html\r\n\r\n<p>'), Buffer.alloc(THREAD_MAX_BYTES, 'a'), Buffer.from('</p>\r\n')]);
  const { pool: p } = pool(1);
  const { pool: none } = pool(0);
  try {
    const posts = countPosts(p);
    assert.equal((await p.parseInbound(big, { plainText: false })).subject, 'big');
    assert.equal(posts.n, 0, 'not sent to the thread');
    assert.deepStrictEqual(await none.parseInbound(BINARY, { plainText: true }), await parseInboundMessage(BINARY, { plainText: true }));
    const waiting = [p.parseInbound(BINARY, { plainText: true }), p.parseInbound(BINARY, { plainText: false })];
    await p.stop();
    const [withPlain, without] = await Promise.all(waiting);
    assert.deepStrictEqual(withPlain, await parseInboundMessage(BINARY, { plainText: true }));
    assert.equal(without!.plainText, null);
    assert.deepStrictEqual(await p.parseInbound(BINARY, { plainText: true }), withPlain, 'stopped: on the calling thread');
  } finally {
    await p.stop();
    await none.stop();
  }
});

test('forTransfer: attachment bytes move to the other thread; bytes that share their memory are copied first', async () => {
  const parsed = await parseInboundMessage(BINARY, { plainText: false });
  const shared = Buffer.from('tiny'); // from Node's pool: its ArrayBuffer holds other Buffers too
  assert.notEqual(shared.byteLength, shared.buffer.byteLength);
  const message: InboundMessage = { ...parsed, attachments: [...parsed.attachments, { filename: 't', contentType: 'text/plain', content: shared, contentId: null }] };
  const { message: ready, transfer } = forTransfer(message);
  assert.equal(transfer.length, 3);
  assert.ok(ready.attachments.every((a) => a.content.byteOffset === 0 && a.content.byteLength === a.content.buffer.byteLength));
  assert.equal(ready.attachments[2]!.content.toString(), 'tiny');
  const copies = message.attachments.map((a) => Buffer.from(a.content));
  const { port1, port2 } = new MessageChannel();
  try {
    const received = new Promise<InboundMessage>((resolve) => port2.once('message', resolve));
    port1.postMessage(ready, transfer);
    const moved = await received;
    assert.ok(ready.attachments.every((a) => a.content.byteLength === 0), 'moved, not copied: the sender\'s views are detached');
    assert.equal(shared.toString(), 'tiny', 'the pooled original untouched');
    assert.equal(moved.attachments.length, 3);
    moved.attachments.forEach((a, i) => assert.ok(Buffer.from(a.content).equals(copies[i]!), `attachment ${i + 1}: the same bytes`));
  } finally {
    port1.close();
  }
});

test('a parse that never answers is rejected with PARSE_TIMEOUT; the thread is replaced and what waited behind it is parsed', async () => {
  const { pool: p, logs } = pool(1, 3000); // well above a thread's start-up under tsx
  try {
    const slots = (p as unknown as { slots: Array<{ worker: { threadId: number; postMessage: (...a: unknown[]) => void } }> }).slots;
    const stuck = slots[0]!.worker;
    // The thread never sees these requests: to the pool it is a thread stuck in a pathological parse.
    stuck.postMessage = () => {};
    const first = p.parse(RAW);
    const behind = p.parse(RAW);
    await assert.rejects(first, (err: unknown) => err instanceof MailhookError && err.code === 'PARSE_TIMEOUT');
    assert.equal(subjectOf(await behind), 'Héllo', 'the request queued behind the stuck one was re-sent and answered');
    assert.notEqual(slots[0]!.worker.threadId, stuck.threadId, 'replaced');
    assert.equal(subjectOf(await p.parse(RAW)), 'Héllo');
    assert.ok(logs.some((l) => /took too long to parse/.test(l)));
  } finally {
    await p.stop();
  }
});

/**
 * A stand-in parse thread (plain JS, starts in milliseconds): answers {thread, text}; a message containing POISON
 * allocates until the thread's heap limit ends it (a real ERR_WORKER_OUT_OF_MEMORY); SLOW:<ms> keeps it busy that long;
 * DIE ends the thread (after SLOW, if both).
 */
const FAKE_THREAD = `
const { parentPort, threadId } = require('node:worker_threads');
parentPort.on('message', ({ id, raw }) => {
  const text = Buffer.from(raw).toString();
  if (text.includes('POISON')) { const hog = []; for (;;) hog.push(new Array(100000).fill(threadId + 0.5)); }
  const slow = /SLOW:(\\d+)/.exec(text);
  if (slow) { const end = Date.now() + Number(slow[1]); while (Date.now() < end); }
  if (text.includes('DIE')) process.exit(1);
  parentPort.postMessage({ id, result: JSON.stringify({ thread: threadId, text }) });
});
parentPort.postMessage({ ready: true });
`;

function fakePool(opts: { threads: number; timeoutMs?: number; code?: string }): { pool: ParsePool; logs: string[]; limits: ResourceLimits[]; started: () => number } {
  const logs: string[] = [];
  const limits: ResourceLimits[] = [];
  const destination = new Writable({ write: (c: Buffer, _e, cb) => (logs.push(c.toString()), cb()) });
  const p = new ParsePool({
    threads: opts.threads,
    log: createLogger({ level: 'debug', destination }),
    ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}),
    startThread: (resourceLimits) => {
      limits.push(resourceLimits);
      // The production limit is asked for; a small one here so the poison dies in milliseconds.
      return new Worker(opts.code ?? FAKE_THREAD, { eval: true, resourceLimits: { maxOldGenerationSizeMb: 16 } });
    },
  });
  return { pool: p, logs, limits, started: () => limits.length };
}

const threadOf = (json: PayloadMessageJson): number => (JSON.parse(json) as { thread: number }).thread;

test('a message that ends its parse thread twice is rejected (PARSE_CRASHED), never parsed on the main thread; threads keep being replaced', async () => {
  const { pool: p, logs, limits } = fakePool({ threads: 2 });
  try {
    assert.ok(limits.every((l) => l.maxOldGenerationSizeMb === PARSE_THREAD_HEAP_MB), 'threads get the heap limit');
    const poison = p.parse(Buffer.from('Subject: POISON\r\n\r\nx\r\n'));
    const healthy = Array.from({ length: 3 }, (_, i) => p.parse(Buffer.from(`Subject: ok ${i}\r\n\r\nx\r\n`)));
    await assert.rejects(poison, (err: unknown) => err instanceof MailhookError && err.code === 'PARSE_CRASHED' && /parsing this message ended the parse thread twice \(out of memory/.test(err.message));
    for (const r of await Promise.all(healthy)) assert.notEqual(threadOf(r), threadId, 'parsed on a thread');
    // Later messages still go to threads: two replacements, two threads alive.
    assert.notEqual(threadOf(await p.parse(Buffer.from('Subject: later\r\n\r\nx\r\n'))), threadId);
    assert.equal(limits.length, 4, 'two threads at start, two replacements');
    assert.equal((p as unknown as { slots: unknown[] }).slots.length, 2);
    assert.ok(logs.some((l) => /tried once more on a new thread/.test(l)));
    assert.ok(logs.some((l) => /it is not parsed any more/.test(l)));
  } finally {
    await p.stop();
  }
});

test('the parse timeout counts a parse’s own time on its thread, not the time it waited behind others', async () => {
  // One thread, four messages of 400 ms each: the last finishes ~1.6 s after it was handed in, each under 1 s.
  const { pool: p, logs } = fakePool({ threads: 1, timeoutMs: 1000 });
  try {
    const results = await Promise.all(Array.from({ length: 4 }, (_, i) => p.parse(Buffer.from(`Subject: SLOW:400 ${i}\r\n\r\nx\r\n`)).then(threadOf, (err: Error) => err.message)));
    assert.equal(new Set(results).size, 1, `all parsed by the one thread, none abandoned: ${results.join(', ')}`);
    assert.equal(typeof results[0], 'number');
    assert.deepEqual(logs, []);
  } finally {
    await p.stop();
  }
});

test('a thread is handed the next messages while it parses one (up to PIPELINE_DEPTH), in order, each answered', async () => {
  const { pool: p, logs } = fakePool({ threads: 1, timeoutMs: 5000 });
  try {
    await p.parse(Buffer.from('Subject: ready\r\n\r\nx\r\n')); // the thread is up
    const posts = countPosts(p);
    const n = PIPELINE_DEPTH + 4;
    const results = Array.from({ length: n }, (_, i) => p.parse(Buffer.from(`Subject: ${i === 0 ? 'SLOW:200 ' : ''}m${i}\r\n\r\nx\r\n`)));
    // Handed over at once, without waiting for the first answer: the thread never waits for the event loop.
    assert.ok(PIPELINE_DEPTH > 1);
    assert.equal(posts.n, PIPELINE_DEPTH);
    const texts = (await Promise.all(results)).map((r) => (JSON.parse(r) as { text: string }).text);
    assert.deepEqual(texts.map((t) => /m\d+/.exec(t)?.[0]), Array.from({ length: n }, (_, i) => `m${i}`));
    assert.equal(posts.n, n);
    assert.deepEqual(logs, []);
  } finally {
    await p.stop();
  }
});

test('the messages waiting behind one that ends its thread are not counted against: they are parsed, the poison is not', async () => {
  const { pool: p } = fakePool({ threads: 1 });
  try {
    await p.parse(Buffer.from('Subject: ready\r\n\r\nx\r\n'));
    const poison = p.parse(Buffer.from('Subject: POISON\r\n\r\nx\r\n'));
    const behind = Array.from({ length: 3 }, (_, i) => p.parse(Buffer.from(`Subject: behind ${i}\r\n\r\nx\r\n`)));
    await assert.rejects(poison, (err: unknown) => err instanceof MailhookError && err.code === 'PARSE_CRASHED');
    for (const r of await Promise.all(behind)) assert.notEqual(threadOf(r), threadId);
  } finally {
    await p.stop();
  }
});

test('an answer that arrives while stop() waits for its thread is taken; nothing is timed after stop()', async () => {
  // A stand-in Worker whose terminate() the test ends, so an answer can arrive in between (as one already in the port does).
  class Stub extends EventEmitter {
    posted: Array<{ id: number }> = [];
    end: () => void = () => {};
    postMessage(m: { id: number }): void {
      this.posted.push(m);
    }
    ref(): void {}
    unref(): void {}
    terminate(): Promise<number> {
      return new Promise((resolve) => (this.end = () => resolve(1)));
    }
  }
  const stub = new Stub();
  const logs: string[] = [];
  const destination = new Writable({ write: (c: Buffer, _e, cb) => (logs.push(c.toString()), cb()) });
  const p = new ParsePool({ threads: 1, timeoutMs: 100, log: createLogger({ level: 'debug', destination }), startThread: () => stub as unknown as Worker });
  stub.emit('message', { ready: true });
  const a = p.parse(Buffer.from('Subject: a\r\n\r\nx\r\n'));
  const b = p.parse(Buffer.from('Subject: b\r\n\r\nx\r\n'));
  assert.equal(stub.posted.length, 2);
  const stopping = p.stop();
  stub.emit('message', { id: stub.posted[0]!.id, result: JSON.stringify('from the thread') });
  stub.end();
  await stopping;
  assert.equal(await a, JSON.stringify('from the thread'));
  assert.equal(subjectOf(await b), 'b', 'parsed here by stop()');
  // Past the timeout: no parse is abandoned, nothing is queued.
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(logs, []);
});

test('threads that cannot start: a message is rejected with PARSE_TIMEOUT after timeoutMs, not parsed on the main thread; starts back off', async () => {
  const { pool: p, logs, started } = fakePool({ threads: 1, timeoutMs: 500, code: `throw new Error('cannot load the parser')` });
  try {
    await assert.rejects(p.parse(RAW), (err: unknown) => err instanceof MailhookError && err.code === 'PARSE_TIMEOUT' && /no parse thread could take the message/.test(err.message));
    assert.ok(started() >= 2, 'replaced');
    assert.ok(logs.some((l) => /cannot load the parser/.test(l)));
  } finally {
    await p.stop();
  }
});

test('a message that waited behind a parse that then ended its thread still gets the full timeout for the replacement', async () => {
  // A (0.6 s) answers, B (0.6 s) ends its thread: C has waited 1.2 s, over the 1 s timeout, when no thread is left.
  const { pool: p } = fakePool({ threads: 1, timeoutMs: 1000 });
  try {
    const a = p.parse(Buffer.from('Subject: SLOW:600 a\r\n\r\nx\r\n'));
    const b = p.parse(Buffer.from('Subject: SLOW:600 DIE\r\n\r\nx\r\n'));
    const c = p.parse(Buffer.from('Subject: c\r\n\r\nx\r\n'));
    assert.equal(typeof threadOf(await a), 'number');
    await assert.rejects(b, (err: unknown) => err instanceof MailhookError && err.code === 'PARSE_CRASHED' && /exit code 1/.test(err.message));
    assert.equal(typeof threadOf(await c), 'number', 'parsed by the replacement thread');
  } finally {
    await p.stop();
  }
});

test('a replacement thread that never gets ready (after a parse was abandoned): a waiting message is rejected after timeoutMs, not left waiting for ever', { timeout: 20_000 }, async () => {
  let started = 0;
  const p = new ParsePool({
    threads: 1,
    log: createLogger({ level: 'silent' }),
    timeoutMs: 300,
    // The first thread works; the one that replaces it hangs while loading (never ready, never ends).
    startThread: () => new Worker(++started === 1 ? FAKE_THREAD : 'setInterval(() => {}, 1000);', { eval: true }),
  });
  try {
    await assert.rejects(p.parse(Buffer.from('Subject: SLOW:3000 a\r\n\r\nx\r\n')), (err: unknown) => err instanceof MailhookError && err.code === 'PARSE_TIMEOUT' && /took longer/.test(err.message));
    assert.equal(started, 2, 'replaced');
    await assert.rejects(p.parse(Buffer.from('Subject: b\r\n\r\nx\r\n')), (err: unknown) => err instanceof MailhookError && err.code === 'PARSE_TIMEOUT' && /no parse thread could take the message/.test(err.message));
  } finally {
    await p.stop();
  }
});

test('respawnDelayMs: at once for the first few deaths in a row, then doubling from 1 s up to 30 s', () => {
  assert.deepEqual([1, 2, 3, 4, 5, 6, 9, 10, 50].map(respawnDelayMs), [0, 0, 0, 1000, 2000, 4000, 30_000, 30_000, 30_000]);
});
