// The one ingest entry: stream a message into the spool and resolve only once it is durably committed.
import { closeSync, fdatasync, fdatasyncSync, fstatSync, openSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { MailhookError } from '../core/errors.js';
import { newId } from '../core/ids.js';
import type { Clock } from '../core/clock.js';
import type { Db } from './db.js';
import type { BlobStore, BlobWriter } from './blobs.js';
import { Checkpointer, type CheckpointerOptions } from './checkpoint.js';
import type { Envelope, PlannedDelivery } from './types.js';

export interface AcceptInput {
  source: 'smtp' | 'imap' | 'graph';
  envelope: Envelope;
  deliveries: PlannedDelivery[];
  body: AsyncIterable<Buffer>;
  /** bytes beyond this are not stored and the accept fails with MESSAGE_TOO_LARGE (the stream is still drained) */
  maxBytes: number;
  /** a message already stored under this key is not stored again (IMAP UIDs, Message-ID fallbacks) */
  dedupeKey?: string;
  meta?: Record<string, unknown>;
}

export interface AcceptResult {
  id: string;
  size: number;
  /** true when dedupeKey matched an earlier message; id is then that message's */
  duplicate: boolean;
  deliveryIds: string[];
}

interface Committed {
  p: PendingCommit;
  result: AcceptResult;
}

interface InFlight {
  done: Committed[];
  /** close() may settle the batch itself (synchronously) before the threadpool's sync returns */
  settled: boolean;
}

interface PendingCommit {
  row: MessageRow;
  deliveries: Array<{ id: string; route: string; recipients: string; status: string; addresses: Array<{ address: string; key: string | null }> }>;
  resolve: (r: AcceptResult) => void;
  reject: (err: unknown) => void;
  /** set once the row is in a committed transaction: from then on its file belongs to the spool, even if the WAL sync fails */
  committed?: boolean;
}

interface MessageRow {
  id: string;
  received_at: number;
  source: string;
  mail_from: string;
  rcpt_to: string;
  remote_address: string | null;
  helo: string | null;
  tls: string | null;
  size: number;
  raw: Buffer | null;
  raw_file: string | null;
  dedupe_key: string | null;
  meta: string | null;
}

/** How the acceptor makes a commit durable; tests pass their own to observe the order of events. */
export interface AcceptorOptions {
  /**
   * Makes everything committed so far durable: called after a batch was committed with synchronous=NORMAL, and
   * the batch is acknowledged only when `done(null)` is called. Default: fdatasync(2) of the -wal file on libuv's
   * threadpool. `null` forces the old path (each batch committed with synchronous=FULL on the event loop), which
   * is also what a database that is not a WAL file gets.
   */
  syncWal?: ((done: (err: Error | null) => void) => void) | null;
  /** observes each committed batch (size), for tests */
  onBatch?: (messages: number) => void;
  /** WAL syncs in flight at once (each covers every batch committed before it started); default 2 */
  maxSyncsInFlight?: number;
  /** checkpoints on a worker thread (default) or, with false, inside the main connection's commits */
  checkpoint?: CheckpointerOptions | false;
}

/**
 * Group commit without stalling the event loop. Messages whose bytes are ready gather in a queue; at the end of
 * the event-loop turn one SQLite transaction commits them together with synchronous=NORMAL (the frames are
 * written to the WAL, nothing waits for the disk), then the WAL file is fdatasync'ed on libuv's threadpool while
 * the event loop keeps serving every other session. Only when that sync has finished do the batch's accept()
 * calls resolve (and SMTP answers 250). With `maxSyncsInFlight` syncs running, the next batch gathers until one
 * finishes, so one fsync serves everything that arrived meanwhile. WAL checkpoints run on a worker thread
 * (checkpoint.ts) instead of inside a commit on the event loop.
 *
 * Why this is as durable as synchronous=FULL: in WAL mode FULL differs from NORMAL only by the fsync of the WAL
 * once the commit's frames are written; fdatasync on another descriptor of the same file flushes the same pages
 * (fsync works on the file, not the descriptor), and a sync that starts after the commit covers its frames. A
 * crash before the sync loses at most batches nobody was told about; SQLite's recovery drops a WAL tail whose
 * checksums do not match. The WAL file is not replaced while this connection holds the database open (its
 * inode is checked anyway, see walFd()). Readers (delivery) may see a batch's rows from its commit on, before
 * the sync: a crash in that window can lose a message already delivered whose sender got no 250 and sends it
 * again, the same at-least-once outcome as a crash between a FULL commit and the 250 reaching the sender.
 */
export class Acceptor {
  private queue: PendingCommit[] = [];
  private scheduled = false;
  private readonly inFlight = new Set<InFlight>();
  private readonly maxInFlight: number;
  readonly checkpointer: Checkpointer | undefined;
  private closed = false;
  private readonly insertMessage;
  private readonly insertDelivery;
  private readonly insertRecipient;
  private readonly findDuplicate;
  private readonly syncNormal;
  private readonly syncFull;
  private readonly walPath: string | undefined;
  private wal: { fd: number; ino: number; checkedAt: number } | undefined;
  private readonly syncWal: ((done: (err: Error | null) => void) => void) | null;
  private readonly onBatch: (messages: number) => void;
  /** fdatasyncs of the WAL that succeeded (the default syncWal; tests check that each batch had its own) */
  walSyncs = 0;
  /** called after each durable commit with the ids of new pending deliveries (not sinks), so delivery can wake up */
  onCommitted: (deliveryIds: string[]) => void = () => {};

  constructor(
    private readonly db: Db,
    private readonly blobs: BlobStore,
    private readonly clock: Clock,
    private readonly inlineMaxBytes: number,
    options: AcceptorOptions = {},
  ) {
    this.insertMessage = db.prepare(
      `INSERT INTO messages (id, received_at, source, mail_from, rcpt_to, remote_address, helo, tls, size, raw, raw_file, dedupe_key, meta)
       VALUES (@id, @received_at, @source, @mail_from, @rcpt_to, @remote_address, @helo, @tls, @size, @raw, @raw_file, @dedupe_key, @meta)`,
    );
    // received_at is given here so the deliveries_received_at trigger (for rows written elsewhere) has nothing to do.
    this.insertDelivery = db.prepare(
      `INSERT INTO deliveries (id, message_id, route, recipients, status, attempts, next_attempt_at, created_at, updated_at, finished_at, received_at)
       VALUES (@id, @message_id, @route, @recipients, @status, 0, @now, @now, @now, @finished_at, @received_at)`,
    );
    this.insertRecipient = db.prepare(
      `INSERT INTO delivery_recipients (delivery_id, message_id, received_at, address, key) VALUES (@delivery_id, @message_id, @received_at, @address, @key)`,
    );
    this.findDuplicate = db.prepare(`SELECT id, size FROM messages WHERE dedupe_key = ?`);
    this.syncNormal = db.prepare('PRAGMA synchronous = NORMAL');
    this.syncFull = db.prepare('PRAGMA synchronous = FULL');
    const isWal = String(db.pragma('journal_mode', { simple: true })).toLowerCase() === 'wal' && !db.memory && db.name !== '';
    this.walPath = isWal ? `${resolve(db.name)}-wal` : undefined;
    this.syncWal = options.syncWal === null || !isWal ? null : (options.syncWal ?? ((done) => this.fdatasyncWal(done)));
    this.onBatch = options.onBatch ?? (() => {});
    this.maxInFlight = Math.max(1, options.maxSyncsInFlight ?? 2);
    if (isWal && options.checkpoint !== false) this.checkpointer = new Checkpointer(db, options.checkpoint || {});
  }

  /**
   * Stops taking new messages. Synchronous, so the spool can close right after: a batch waiting for its WAL sync
   * is synced here on the spot, and messages still queued are committed with synchronous=FULL. The promise
   * resolves once the checkpoint thread has closed its own connection.
   */
  close(): Promise<void> {
    this.closed = true;
    const waiting = [...this.inFlight].filter((f) => !f.settled);
    if (waiting.length > 0) {
      let error: unknown = null;
      try {
        if (this.wal) fdatasyncSync(this.wal.fd);
      } catch (err) {
        error = err;
      }
      for (const f of waiting) this.settle(f, error);
    }
    if (this.queue.length > 0) {
      const batch = this.queue;
      this.queue = [];
      const done = this.commit(batch, true);
      if (done) this.finishBatch(done, null);
    }
    if (this.inFlight.size === 0) this.closeWal();
    return this.checkpointer?.stop() ?? Promise.resolve();
  }

  async accept(input: AcceptInput): Promise<AcceptResult> {
    if (this.closed) throw new MailhookError('SPOOL_CLOSED', 'the spool is shutting down');
    if (input.dedupeKey) {
      const dup = this.findDuplicate.get(input.dedupeKey) as { id: string; size: number } | undefined;
      if (dup) {
        await drain(input.body);
        return { id: dup.id, size: dup.size, duplicate: true, deliveryIds: [] };
      }
    }
    const now = this.clock.now();
    const id = newId(now);
    const stored = await this.storeBody(id, input.body, input.maxBytes);
    const row: MessageRow = {
      id,
      received_at: now,
      source: input.source,
      mail_from: input.envelope.mailFrom,
      rcpt_to: JSON.stringify(input.envelope.rcptTo),
      remote_address: input.envelope.remoteAddress,
      helo: input.envelope.helo,
      tls: input.envelope.tls ? JSON.stringify(input.envelope.tls) : null,
      size: stored.size,
      raw: stored.inline,
      raw_file: stored.file,
      dedupe_key: input.dedupeKey ?? null,
      meta: input.meta ? JSON.stringify(input.meta) : null,
    };
    const deliveries = input.deliveries.map((d) => ({
      id: newId(now),
      route: d.route,
      recipients: JSON.stringify(d.recipients),
      status: d.status ?? 'pending',
      // lower-cased for case-insensitive search (the admin API lower-cases the address it looks for)
      addresses: d.recipients.map((r) => ({ address: r.address.toLowerCase(), key: r.key })),
    }));
    let pending: PendingCommit | undefined;
    try {
      return await new Promise<AcceptResult>((resolve, reject) => {
        if (this.closed) return reject(new MailhookError('SPOOL_CLOSED', 'the spool is shutting down'));
        this.queue.push((pending = { row, deliveries, resolve, reject }));
        this.schedule();
      });
    } catch (err) {
      // A failed WAL sync rejects rows that are committed (and will be delivered): their files stay.
      if (stored.file && !pending?.committed) await this.blobs.remove(stored.file);
      throw err;
    }
  }

  /** Commit at the end of this event-loop turn (so sessions ready together share it), unless a sync runs. */
  private schedule(): void {
    if (this.scheduled || this.inFlight.size >= this.maxInFlight || this.queue.length === 0) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.flush();
    });
  }

  private async storeBody(id: string, body: AsyncIterable<Buffer>, maxBytes: number): Promise<{ size: number; inline: Buffer | null; file: string | null }> {
    const chunks: Buffer[] = [];
    let size = 0;
    let writer: BlobWriter | undefined;
    let tooLarge = false;
    try {
      for await (const chunk of body) {
        if (tooLarge) continue; // drain so the client gets its reply
        size += chunk.length;
        if (size > maxBytes) {
          tooLarge = true;
          chunks.length = 0;
          continue;
        }
        if (writer) {
          await writer.write(chunk);
        } else if (size > this.inlineMaxBytes) {
          writer = await this.blobs.create(`${id}.eml`);
          for (const c of chunks) await writer.write(c);
          chunks.length = 0;
          await writer.write(chunk);
        } else {
          chunks.push(chunk);
        }
      }
      if (tooLarge) throw new MailhookError('MESSAGE_TOO_LARGE', `message exceeds ${maxBytes} bytes`, { userFault: true });
      if (writer) {
        await writer.finish();
        await this.blobs.syncDir();
        return { size, inline: null, file: writer.name };
      }
      return { size, inline: Buffer.concat(chunks, size), file: null };
    } catch (err) {
      if (writer) await writer.abort();
      if (err instanceof MailhookError) throw err;
      throw new MailhookError('SPOOL_UNAVAILABLE', `cannot store the message: ${(err as Error).message}`, { cause: err });
    }
  }

  private flush(): void {
    if (this.inFlight.size >= this.maxInFlight || this.queue.length === 0) return;
    const batch = this.queue;
    this.queue = [];
    const durable = this.syncWal === null;
    const done = this.commit(batch, durable);
    if (!done) {
      this.schedule();
      return;
    }
    if (durable) {
      this.finishBatch(done, null);
      this.schedule();
      return;
    }
    const inflight: InFlight = { done, settled: false };
    this.inFlight.add(inflight);
    (this.syncWal as (cb: (err: Error | null) => void) => void)((err) => {
      this.inFlight.delete(inflight);
      if (!inflight.settled) this.settle(inflight, err);
      if (this.closed) {
        if (this.inFlight.size === 0) this.closeWal();
      } else this.schedule();
    });
  }

  /**
   * One transaction for the batch. With durable=false it runs with synchronous=NORMAL and the caller must sync
   * the WAL before anyone is told. Returns undefined (and rejects the batch) when the commit failed.
   */
  private commit(batch: PendingCommit[], durable: boolean): Committed[] | undefined {
    const results: Committed[] = [];
    const now = this.clock.now();
    const run = this.db.transaction(() => {
      for (const p of batch) {
        // A dedupe key seen twice in one batch, or already committed: keep the first message.
        if (p.row.dedupe_key) {
          const dup = this.findDuplicate.get(p.row.dedupe_key) as { id: string; size: number } | undefined;
          if (dup) {
            results.push({ p, result: { id: dup.id, size: dup.size, duplicate: true, deliveryIds: [] } });
            continue;
          }
        }
        this.insertMessage.run(p.row);
        for (const d of p.deliveries) {
          this.insertDelivery.run({ id: d.id, route: d.route, recipients: d.recipients, status: d.status, message_id: p.row.id, now, finished_at: d.status === 'delivered' ? now : null, received_at: p.row.received_at });
          for (const r of d.addresses) this.insertRecipient.run({ delivery_id: d.id, message_id: p.row.id, received_at: p.row.received_at, address: r.address, key: r.key });
        }
        results.push({ p, result: { id: p.row.id, size: p.row.size, duplicate: false, deliveryIds: p.deliveries.map((d) => d.id) } });
      }
    });
    try {
      if (!durable) this.syncNormal.run();
      try {
        run();
      } finally {
        if (!durable) this.syncFull.run();
      }
      for (const { p, result } of results) if (!result.duplicate) p.committed = true;
    } catch (err) {
      const error = new MailhookError('SPOOL_UNAVAILABLE', `spool commit failed: ${(err as Error).message}`, { cause: err });
      for (const p of batch) p.reject(error);
      return undefined;
    }
    this.onBatch(batch.length);
    return results;
  }

  private settle(inflight: InFlight, err: unknown): void {
    inflight.settled = true;
    this.finishBatch(inflight.done, err);
  }

  /** Tell the batch's callers: resolved once durable, or rejected when the WAL sync failed. */
  private finishBatch(done: Committed[], err: unknown): void {
    if (err) {
      // The rows are committed but not known to be on disk: the client gets 451 and sends again (at least once).
      const error = new MailhookError('SPOOL_UNAVAILABLE', `spool sync failed: ${(err as Error).message}`, { cause: err });
      for (const { p } of done) p.reject(error);
      return;
    }
    const newDeliveries: string[] = [];
    for (const { p, result } of done) {
      if (result.duplicate && p.row.raw_file) this.blobs.removeSync(p.row.raw_file);
      if (!result.duplicate) for (const d of p.deliveries) if (d.status === 'pending') newDeliveries.push(d.id);
      p.resolve(result);
    }
    if (newDeliveries.length > 0) this.onCommitted(newDeliveries);
  }

  private fdatasyncWal(done: (err: Error | null) => void): void {
    let fd: number;
    try {
      fd = this.walFd();
    } catch (err) {
      done(err as Error);
      return;
    }
    fdatasync(fd, (err) => {
      if (!err) this.walSyncs++;
      done(err);
    });
  }

  /**
   * The -wal file, opened once. SQLite keeps that file (same inode) while any connection has the database open
   * and only truncates or rewrites it in place; once a second the inode is compared in case something outside
   * replaced it, and the descriptor is reopened if so.
   */
  private walFd(): number {
    const now = Date.now();
    if (this.wal && now - this.wal.checkedAt < 1000) return this.wal.fd;
    const path = this.walPath as string;
    if (this.wal) {
      this.wal.checkedAt = now;
      let current: number | undefined;
      try {
        current = statSync(path).ino;
      } catch {
        current = undefined;
      }
      if (current === this.wal.ino && fstatSync(this.wal.fd).nlink > 0) return this.wal.fd;
      this.closeWal();
    }
    const fd = openSync(path, 'r+');
    this.wal = { fd, ino: fstatSync(fd).ino, checkedAt: now };
    return fd;
  }

  private closeWal(): void {
    if (!this.wal) return;
    try {
      closeSync(this.wal.fd);
    } catch {
      /* already closed */
    }
    this.wal = undefined;
  }
}

async function drain(body: AsyncIterable<Buffer>): Promise<void> {
  for await (const _ of body) {
    /* discard */
  }
}
