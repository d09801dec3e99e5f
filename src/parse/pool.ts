// Parse pool: worker threads that turn MIME into what the payload formats read (json's message, the service formats' inbound view) so delivery does not parse on the event loop.
import { Worker, type ResourceLimits } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { MailhookError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { InboundMessage, InboundParseOptions } from './inbound.js';
import { fromPost, parseHere, type ParseRequest, type ParseResult } from './job.js';
import type { PayloadMessageJson } from './message.js';

export interface ParsePoolOptions {
  /** worker threads; 0 parses on the calling thread */
  threads: number;
  log: Logger;
  /**
   * A parse that runs longer on its thread (time waiting for a thread not counted) is abandoned (rejected with
   * PARSE_TIMEOUT) and its thread replaced, so one pathological message cannot hold up every other; default 30 s.
   */
  timeoutMs?: number;
  /** starts one parse thread with these limits (tests put in a thread of their own); startParseThread when absent */
  startThread?: (resourceLimits: ResourceLimits) => Worker;
}

/**
 * Messages up to this size are parsed on a thread: a parse costs ~10 ms per MB (mailparser), which on the event
 * loop holds up every SMTP session. Larger ones are parsed on the calling thread, because a thread needs its own
 * copy of the bytes and hands back a copy of the result (text, base64 attachments; the inbound view's attachment
 * bytes are moved, but its text and HTML are copied): delivering 20 × 20 MB with every size on the thread peaked
 * at 1 GB of RSS against ~700 MB (bench memory phase, json, one run each).
 */
export const THREAD_MAX_BYTES = 4 * 1024 * 1024;

/**
 * A parse thread's V8 heap limit: a message whose parse blows up memory kills its thread (ERR_WORKER_OUT_OF_MEMORY),
 * not the process (or the pod). Messages of up to THREAD_MAX_BYTES need up to ~240 MB of heap, measured with
 * 4 MB messages of several shapes (script, not a test): text 54 MB, a base64 attachment 34 MB, 4 MB of nested
 * <div>s 33 MB, anchor-heavy HTML ~150 MB (OOM at 96), 4 MB of <i>a</i> OOM at 128 and fine at 256, a 4 MB
 * <table> of cells 237 MB (OOM at 128; 102 s, so PARSE_TIMEOUT first). Twice the worst, so no real message meets it.
 */
export const PARSE_THREAD_HEAP_MB = 512;

/**
 * Messages handed to one thread at a time: it parses them one after another, and while it parses one the next
 * already waits in its port, so the thread never sits idle waiting for a busy event loop to answer and hand it
 * more. With one at a time (the eighth session), 1 KB messages were delivered ~30 % slower end to end than with
 * no limit (bench, first byte to last webhook, 807 against 1,157 msg/s), and 1,430 with parse_threads 0. A
 * message that ends or stalls its thread puts the others back in the queue, not counted against them. The price,
 * with parse_threads above 1: the messages handed to a thread wait behind its slow parse (up to the timeout) even
 * when another thread is idle, since a message handed over is not taken back.
 */
export const PIPELINE_DEPTH = 8;

/** A message that ended this many threads while they parsed it is rejected (PARSE_CRASHED), never parsed again. */
export const THREAD_DEATHS_PER_MESSAGE = 2;

/**
 * Delay before replacing a thread after `deaths` threads ended in a row with no parse answered between: at once
 * for the first few (one bad message ends two), then doubling from 1 s to at most 30 s (a thread that cannot even
 * start, or a run of messages that kill threads, does not turn into a busy loop of thread starts). Pure.
 */
export function respawnDelayMs(deaths: number): number {
  if (deaths <= 3) return 0;
  return Math.min(1000 * 2 ** (deaths - 4), 30_000);
}

/** Runs where the sources run: the compiled .js in production, the .ts through tsx's loader (tests, bench). */
const FROM_SOURCE = import.meta.url.endsWith('.ts');
const WORKER_URL = new URL(FROM_SOURCE ? './worker.ts' : './worker.js', import.meta.url);

/** Starts one real parse thread (src/parse/worker); what the pool starts unless given its own startThread. */
export function startParseThread(resourceLimits: ResourceLimits): Worker {
  if (!FROM_SOURCE) return new Worker(WORKER_URL, { resourceLimits });
  // A worker's entry is loaded before its --import hooks; register tsx first, then load the .ts entry.
  const tsx = import.meta.resolve('tsx/esm/api');
  return new Worker(`import(${JSON.stringify(tsx)}).then((m) => m.register()).then(() => import(${JSON.stringify(WORKER_URL.href)}))`, { eval: true, resourceLimits });
}

interface Job {
  raw: Buffer;
  /** what the thread makes of it */
  request: ParseRequest;
  /** with what parseHere(raw, request) returns */
  resolve: (result: unknown) => void;
  reject: (err: Error) => void;
  /** threads that ended while parsing it */
  deaths: number;
  /** performance.now() when it was queued (or queued again) */
  queuedAt: number;
}

interface Running extends Job {
  id: number;
  /** armed while it is the one its thread parses (the first of the slot's jobs) */
  timer: NodeJS.Timeout | undefined;
}

interface Slot {
  worker: Worker;
  /** the thread has loaded its code and said so: it takes work */
  ready: boolean;
  /** the messages handed to the thread, in order: it parses the first, the others wait in its port (PIPELINE_DEPTH) */
  jobs: Running[];
  /** the thread's uncaught error (out of memory, an exception), reported with its exit */
  error: unknown;
  referenced: boolean;
}

/**
 * Each thread parses one message at a time, taken from a queue here, so the timeout counts a parse's own time
 * and abandoning one never cuts short another's. A parse error comes back as a rejection (the message is bad). A
 * thread that ends while parsing (a crash, out of memory) is replaced and the message tried once more on the new
 * thread; a message that ended THREAD_DEATHS_PER_MESSAGE threads is rejected with PARSE_CRASHED and never parsed on
 * the main thread, where the same crash would end the process. Threads are always replaced (see respawnDelayMs).
 */
export class ParsePool {
  private readonly slots: Slot[] = [];
  private readonly queue: Job[] = [];
  private nextId = 1;
  private stopped = false;
  /** threads that ended in a row with no parse answered between (see respawnDelayMs) */
  private deathsInARow = 0;
  private readonly respawns = new Set<NodeJS.Timeout>();
  /** armed while messages wait and no thread is ready: see watchStarvation */
  private starveTimer: NodeJS.Timeout | undefined;
  /** performance.now() when the pool was last left without a ready thread while messages wait */
  private starvingSince: number | undefined;
  private readonly timeoutMs: number;

  constructor(private readonly options: ParsePoolOptions) {
    this.timeoutMs = options.timeoutMs ?? 30_000;
    for (let i = 0; i < options.threads; i++) this.slots.push(this.spawn());
  }

  /** The payload's message as JSON text (PayloadMessageJson), for the json format. */
  parse(raw: Buffer): Promise<PayloadMessageJson> {
    return this.submit(raw, { kind: 'json' });
  }

  /**
   * The service formats' inbound message (Mailgun, Postmark, SendGrid), attachments' bytes moved from the thread
   * rather than copied; its plainText (html-to-text for HTML-only mail) is rendered on the thread when asked for.
   */
  parseInbound(raw: Buffer, options: InboundParseOptions): Promise<InboundMessage> {
    return this.submit(raw, { kind: 'inbound', plainText: options.plainText });
  }

  /** Every kind of parse goes the same way: the same threads, queue, timeout, crash and starvation rules. */
  private submit<R extends ParseRequest>(raw: Buffer, request: R): Promise<ParseResult<R>> {
    if (this.stopped || this.options.threads === 0 || raw.length > THREAD_MAX_BYTES) return parseHere(raw, request);
    return new Promise<ParseResult<R>>((resolve, reject) => {
      this.queue.push({ raw, request, resolve: resolve as (result: unknown) => void, reject, deaths: 0, queuedAt: performance.now() });
      this.pump();
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.respawns) clearTimeout(t);
    this.respawns.clear();
    if (this.starveTimer) clearTimeout(this.starveTimer);
    const slots = this.slots.splice(0);
    await Promise.all(
      slots.map(async (slot) => {
        slot.worker.removeAllListeners('exit');
        for (const job of slot.jobs) clearTimeout(job.timer);
        await slot.worker.terminate();
      }),
    );
    const left = [...slots.flatMap((s) => s.jobs), ...this.queue.splice(0)];
    for (const job of left) {
      // One that already ended a thread is not risked on this one.
      if (job.deaths > 0) job.reject(new MailhookError('SHUTTING_DOWN', 'the parse threads stopped'));
      else parseHere(job.raw, job.request).then(job.resolve, job.reject);
    }
  }

  private spawn(): Slot {
    const worker = (this.options.startThread ?? startParseThread)({ maxOldGenerationSizeMb: PARSE_THREAD_HEAP_MB });
    const slot: Slot = { worker, ready: false, jobs: [], error: undefined, referenced: true };
    this.reference(slot, false); // referenced only while it has work, so an idle pool never keeps the process alive
    worker.on('message', (m: { ready?: true; id?: number; result?: unknown; error?: string }) => {
      if (m.ready) {
        slot.ready = true;
        this.pump();
        return;
      }
      // The thread answers in the order it was given its messages (worker.ts parses one at a time).
      const job = slot.jobs[0];
      if (!job || job.id !== m.id) return;
      clearTimeout(job.timer);
      slot.jobs.shift();
      this.deathsInARow = 0;
      if (m.result !== undefined) job.resolve(fromPost(job.request, m.result));
      else job.reject(new Error(m.error ?? 'the message could not be parsed'));
      // An answer that arrives while stop() waits for the thread to end is taken; the messages behind it are stop()'s.
      if (this.stopped) return;
      this.startClock(slot);
      this.pump();
    });
    worker.on('error', (err) => {
      slot.error = err;
    });
    worker.on('exit', (code) => this.ended(slot, code));
    return slot;
  }

  /** A thread ended on its own (not abandoned, not stopped): its message is tried again or rejected; it is replaced. */
  private ended(slot: Slot, code: number): void {
    const i = this.slots.indexOf(slot);
    if (i < 0) return; // abandoned (already replaced) or stopped
    this.slots.splice(i, 1);
    this.deathsInARow++;
    const [job, ...waiting] = slot.jobs;
    slot.jobs = [];
    for (const w of waiting) clearTimeout(w.timer);
    // The messages waiting behind the one being parsed did not end the thread: queued again as they were.
    this.queue.unshift(...waiting.map(requeued));
    const err = slot.error;
    if (job) {
      clearTimeout(job.timer);
      job.deaths++;
      const fields = { err, exitCode: code, bytes: job.raw.length, kind: job.request.kind, deaths: job.deaths };
      if (job.deaths >= THREAD_DEATHS_PER_MESSAGE) {
        this.options.log.error(fields, 'a message ended its parse thread again; it is not parsed any more');
        job.reject(new MailhookError('PARSE_CRASHED', `parsing this message ended the parse thread ${job.deaths === 2 ? 'twice' : `${job.deaths} times`} (${describe(err, code)}); it is not parsed again`));
      } else {
        this.options.log.warn(fields, 'a parse thread ended while parsing a message; the message is tried once more on a new thread');
        this.queue.unshift(requeued(job));
      }
    } else if (err !== undefined) {
      this.options.log.error({ err, exitCode: code }, 'a parse thread failed before it took any work');
    }
    this.replace();
    this.pump();
  }

  /** Starts a thread in place of one that ended: at once, or after respawnDelayMs when threads keep ending. */
  private replace(): void {
    if (this.stopped) return;
    const delay = respawnDelayMs(this.deathsInARow);
    if (delay === 0) {
      this.slots.push(this.spawn());
      return;
    }
    this.options.log.error({ deaths: this.deathsInARow, delayMs: delay }, 'parse threads keep ending; the next one starts after a delay');
    const t = setTimeout(() => {
      this.respawns.delete(t);
      if (this.stopped) return;
      this.slots.push(this.spawn());
      this.pump();
    }, delay);
    this.respawns.add(t);
  }

  /**
   * Hands waiting messages to ready threads, up to PIPELINE_DEPTH each, the least busy first; keeps threads
   * referenced exactly while work waits for them.
   */
  private pump(): void {
    while (this.queue.length > 0) {
      let slot: Slot | undefined;
      for (const s of this.slots) if (s.ready && s.jobs.length < PIPELINE_DEPTH && (!slot || s.jobs.length < slot.jobs.length)) slot = s;
      if (!slot) break;
      this.run(slot, this.queue.shift() as Job);
    }
    for (const slot of this.slots) this.reference(slot, slot.jobs.length > 0 || (!slot.ready && this.queue.length > 0));
    this.watchStarvation();
  }

  private run(slot: Slot, job: Job): void {
    const id = this.nextId++;
    slot.jobs.push({ ...job, id, timer: undefined });
    this.startClock(slot);
    // A copy of just these bytes: posting the Buffer would clone the whole ArrayBuffer it may share with others.
    const bytes = new Uint8Array(job.raw);
    slot.worker.postMessage({ id, raw: bytes, request: job.request }, [bytes.buffer]);
  }

  /**
   * The timeout of the message the thread now parses starts when it becomes the first of the slot's (the thread
   * starts on it once it has answered the one before, which the pool learns a moment later): time waiting behind
   * other messages does not count, and a parse is never given less than timeoutMs.
   */
  private startClock(slot: Slot): void {
    const head = slot.jobs[0];
    if (!head || head.timer) return;
    head.timer = setTimeout(() => this.abandon(slot), this.timeoutMs);
    head.timer.unref();
  }

  /** The thread's parse ran past the timeout: reject it and replace the thread; the messages behind it wait again. */
  private abandon(slot: Slot): void {
    const [job, ...waiting] = slot.jobs;
    if (!job) return;
    slot.jobs = [];
    for (const w of waiting) clearTimeout(w.timer);
    this.queue.unshift(...waiting.map(requeued));
    job.reject(new MailhookError('PARSE_TIMEOUT', `parsing the message took longer than ${this.timeoutMs} ms and was abandoned`));
    this.options.log.warn({ bytes: job.raw.length, kind: job.request.kind, timeoutMs: this.timeoutMs }, 'a message took too long to parse; its parse thread is replaced');
    const i = this.slots.indexOf(slot);
    if (i >= 0) this.slots.splice(i, 1, this.spawn());
    void slot.worker.terminate();
    this.pump();
  }

  /**
   * Messages wait for a thread without a bound while threads parse (each parse is bounded), but while no thread is
   * ready (threads that fail to start, a replacement waiting out its delay or one that never says it is ready) a
   * message that waited timeoutMs in that state is rejected with PARSE_TIMEOUT (retried like a slow parse) rather
   * than waiting for ever. The wait counts from when the pool was left without a ready thread: a message that
   * waited behind a parse that then ended its thread still gets the full time for the replacement to start.
   */
  private watchStarvation(): void {
    const starving = !this.stopped && !this.slots.some((s) => s.ready) && this.queue.length > 0;
    if (!starving) {
      if (this.starveTimer) clearTimeout(this.starveTimer);
      this.starveTimer = undefined;
      this.starvingSince = undefined;
      return;
    }
    const since = (this.starvingSince ??= performance.now());
    if (this.starveTimer) return;
    const waitedSince = (j: Job): number => Math.max(j.queuedAt, since);
    const oldest = Math.min(...this.queue.map(waitedSince));
    this.starveTimer = setTimeout(() => {
      this.starveTimer = undefined;
      if (!this.slots.some((s) => s.ready)) {
        const now = performance.now();
        for (const job of this.queue.filter((j) => now - waitedSince(j) >= this.timeoutMs)) {
          this.queue.splice(this.queue.indexOf(job), 1);
          job.reject(new MailhookError('PARSE_TIMEOUT', `no parse thread could take the message within ${this.timeoutMs} ms (none was ready: they keep ending or do not start)`));
        }
      }
      this.pump();
    }, Math.max(0, oldest + this.timeoutMs - performance.now()));
  }

  private reference(slot: Slot, on: boolean): void {
    if (slot.referenced === on) return;
    slot.referenced = on;
    if (on) slot.worker.ref();
    else slot.worker.unref();
  }
}

/** A message handed to a thread that is gone, made a queued one again (its deaths kept). */
function requeued(job: Running): Job {
  return { raw: job.raw, request: job.request, resolve: job.resolve, reject: job.reject, deaths: job.deaths, queuedAt: performance.now() };
}

function describe(err: unknown, code: number): string {
  const c = (err as { code?: unknown } | undefined)?.code;
  if (c === 'ERR_WORKER_OUT_OF_MEMORY') return `out of memory, over ${PARSE_THREAD_HEAP_MB} MB`;
  if (err instanceof Error) return err.message;
  return `exit code ${code}`;
}
