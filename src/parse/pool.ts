// Parse pool: worker threads that turn MIME into the payload's "message" so delivery does not parse on the event loop.
import { Worker } from 'node:worker_threads';
import { MailhookError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { parseMessageJson, type PayloadMessageJson } from './message.js';

export interface ParsePoolOptions {
  /** worker threads; 0 parses on the calling thread */
  threads: number;
  log: Logger;
  /**
   * A parse that takes longer is abandoned (rejected with PARSE_TIMEOUT) and its thread replaced, so one
   * pathological message cannot hold up every other; default 30 s.
   */
  timeoutMs?: number;
}

interface Pending {
  raw: Buffer;
  resolve: (json: PayloadMessageJson) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

interface Slot {
  worker: Worker;
  pending: Map<number, Pending>;
}

/**
 * Messages up to this size are parsed on a thread: a parse costs ~10 ms per MB (mailparser), which on the event
 * loop holds up every SMTP session. Larger ones are parsed on the calling thread, because a thread needs its own
 * copy of the bytes and hands back a copy of the result (text, base64 attachments): delivering 20 × 20 MB with
 * every size on the thread peaked at 1 GB of RSS against ~700 MB (bench memory phase, one run each).
 */
export const THREAD_MAX_BYTES = 4 * 1024 * 1024;

/** Runs where the sources run: the compiled .js in production, the .ts through tsx's loader (tests, bench). */
const FROM_SOURCE = import.meta.url.endsWith('.ts');
const WORKER_URL = new URL(FROM_SOURCE ? './worker.ts' : './worker.js', import.meta.url);

function startWorker(): Worker {
  if (!FROM_SOURCE) return new Worker(WORKER_URL);
  // A worker's entry is loaded before its --import hooks; register tsx first, then load the .ts entry.
  const tsx = import.meta.resolve('tsx/esm/api');
  return new Worker(`import(${JSON.stringify(tsx)}).then((m) => m.register()).then(() => import(${JSON.stringify(WORKER_URL.href)}))`, { eval: true });
}

/**
 * Requests go to the thread with the fewest waiting. A parse error comes back as a rejection (the message is
 * bad); a thread that dies is replaced and its requests go to the others (or are parsed here when no thread is
 * left), so a crash in a thread never fails a delivery; a parse past the timeout is rejected and its thread
 * replaced.
 */
export class ParsePool {
  private readonly slots: Slot[] = [];
  private nextId = 1;
  private stopped = false;
  /** threads that died in a row before answering anything; after three the pool parses on the main thread */
  private failures = 0;

  constructor(private readonly options: ParsePoolOptions) {
    for (let i = 0; i < options.threads; i++) this.slots.push(this.spawn());
  }

  /** The payload's message as JSON text (PayloadMessageJson). */
  parse(raw: Buffer): Promise<PayloadMessageJson> {
    if (this.stopped || this.slots.length === 0 || raw.length > THREAD_MAX_BYTES) return parseMessageJson(raw);
    const slot = this.slots.reduce((a, b) => (b.pending.size < a.pending.size ? b : a));
    const id = this.nextId++;
    return new Promise<PayloadMessageJson>((resolve, reject) => {
      const timer = setTimeout(() => this.abandon(slot, id), this.options.timeoutMs ?? 30_000);
      timer.unref();
      slot.pending.set(id, { raw, resolve, reject, timer });
      if (slot.pending.size === 1) slot.worker.ref();
      // A copy of just these bytes: posting the Buffer would clone the whole ArrayBuffer it may share with others.
      const bytes = new Uint8Array(raw);
      slot.worker.postMessage({ id, raw: bytes }, [bytes.buffer]);
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    const slots = this.slots.splice(0);
    await Promise.all(
      slots.map(async (slot) => {
        slot.worker.removeAllListeners('exit');
        await slot.worker.terminate();
        this.runHere(slot);
      }),
    );
  }

  private spawn(): Slot {
    const worker = startWorker();
    const slot: Slot = { worker, pending: new Map() };
    worker.unref(); // referenced only while it has work, so an idle pool never keeps the process alive
    worker.on('message', (m: { id: number; json?: PayloadMessageJson; error?: string }) => {
      const p = slot.pending.get(m.id);
      if (!p) return;
      slot.pending.delete(m.id);
      clearTimeout(p.timer);
      this.failures = 0;
      if (slot.pending.size === 0) worker.unref();
      if (m.json !== undefined) p.resolve(m.json);
      else p.reject(new Error(m.error ?? 'the message could not be parsed'));
    });
    worker.on('error', (err) => this.options.log.error({ err }, 'a parse thread failed; its messages are parsed on the main thread'));
    worker.on('exit', () => {
      const i = this.slots.indexOf(slot);
      if (i < 0) return; // abandoned (already replaced) or stopped
      this.slots.splice(i, 1);
      if (++this.failures >= 3) this.options.log.error('parse threads keep failing; parsing on the main thread from now on');
      else this.slots.push(this.spawn());
      this.redispatch(slot);
    });
    return slot;
  }

  /** The parse `id` ran past the timeout: reject it and replace its thread; what waited there goes to the others. */
  private abandon(slot: Slot, id: number): void {
    const p = slot.pending.get(id);
    if (!p) return;
    slot.pending.delete(id);
    const ms = this.options.timeoutMs ?? 30_000;
    p.reject(new MailhookError('PARSE_TIMEOUT', `parsing the message took longer than ${ms} ms and was abandoned`));
    this.options.log.warn({ bytes: p.raw.length, timeoutMs: ms }, 'a message took too long to parse; its parse thread is replaced');
    const i = this.slots.indexOf(slot);
    if (i >= 0) this.slots.splice(i, 1, this.spawn());
    this.redispatch(slot);
    void slot.worker.terminate();
  }

  /** Sends what waited on a thread that is gone to the others (or parses it here when none is left). */
  private redispatch(slot: Slot): void {
    const orphans = [...slot.pending.values()];
    slot.pending.clear();
    for (const p of orphans) {
      clearTimeout(p.timer);
      this.parse(p.raw).then(p.resolve, p.reject);
    }
  }

  private runHere(slot: Slot): void {
    for (const p of slot.pending.values()) {
      clearTimeout(p.timer);
      parseMessageJson(p.raw).then(p.resolve, p.reject);
    }
    slot.pending.clear();
  }
}
