// The spool as one object: database, message files, the ingest entry, the job queue and raw-message access.
import { Readable } from 'node:stream';
import { statSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import type { Clock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import { MailhookError } from '../core/errors.js';
import { Acceptor, type AcceptInput, type AcceptResult } from './accept.js';
import { BlobStore, blobsDirOf } from './blobs.js';
import { openDatabase, type Db } from './db.js';
import { JobQueue, toDeliveryRow } from './jobs.js';
import { SpoolLock } from './lock.js';
import { SpoolQueries } from './queries.js';
import type { DeliveryRow, StoredMessage, TlsInfo } from './types.js';

export interface SpoolOptions {
  path: string;
  inlineMaxBytes: number;
  clock: Clock;
  /** hears of a schema upgrade and the one-time rebuild at open */
  log?: Logger;
  /** free bytes in a folder, for the rebuild's room check (statfs unless given) */
  diskFree?: (dir: string) => number;
}

interface MessageDbRow {
  id: string;
  received_at: number;
  source: string;
  mail_from: string;
  rcpt_to: string;
  remote_address: string | null;
  helo: string | null;
  tls: string | null;
  size: number;
  raw_file: string | null;
  dedupe_key: string | null;
  meta: string | null;
}

/** When this process started (wall clock, as file times are): orphan files written since are not removed. */
const PROCESS_STARTED_AT = performance.timeOrigin;

/** How long the readiness probe waits for the spool's write lock. */
const READY_PROBE_BUSY_MS = 250;

export class Spool {
  readonly db: Db;
  readonly blobs: BlobStore;
  readonly acceptor: Acceptor;
  readonly jobs: JobQueue;
  /** operator queries: listing, detail, route health, replay, delete (admin API, dashboard) */
  readonly queries: SpoolQueries;
  private readonly getMessageRow;
  private readonly getInlineRaw;
  private readonly fileBytes;
  private readonly getDeliveryRow;
  /** set by close(): resolves once the checkpoint thread has closed its connection */
  private closing: Promise<void> | undefined;
  /** this process's ownership of the spool (none for ':memory:'), released by close() */
  private readonly lock: SpoolLock | undefined;

  /**
   * Opens the spool as its owner: takes the spool's lock first (SpoolInUseError when another process, or another
   * Spool here, has it), before anything that assumes the spool is ours alone (removing orphan files, and the
   * delivery loop's reclaimAbandoned, which runs after this). Read-only inspection opens the database directly.
   */
  constructor(readonly options: SpoolOptions) {
    this.lock = options.path === ':memory:' ? undefined : SpoolLock.acquire(options.path);
    let db: Db | undefined;
    let acceptor: Acceptor | undefined;
    try {
      this.db = db = openDatabase(options.path, { log: options.log, diskFree: options.diskFree });
      this.blobs = new BlobStore(blobsDirOf(options.path));
      this.acceptor = acceptor = new Acceptor(this.db, this.blobs, options.clock, options.inlineMaxBytes);
      this.jobs = new JobQueue(this.db);
      const jobs = this.jobs;
      this.queries = new SpoolQueries(this.db, this.blobs, () => jobs.revokeLeases());
      this.getMessageRow = this.db.prepare(
        `SELECT id, received_at, source, mail_from, rcpt_to, remote_address, helo, tls, size, raw_file, dedupe_key, meta FROM messages WHERE id = ?`,
      );
      this.getInlineRaw = this.db.prepare(`SELECT raw, raw_file FROM messages WHERE id = ?`);
      this.fileBytes = this.db.prepare(`SELECT COALESCE(SUM(size), 0) FROM messages INDEXED BY messages_file_size WHERE raw_file IS NOT NULL`).pluck();
      this.getDeliveryRow = this.db.prepare(`SELECT * FROM deliveries WHERE id = ?`);
      this.removeOrphanFiles();
    } catch (err) {
      // Not opened: close what was, then let the spool go.
      const closed = acceptor ? acceptor.close() : Promise.resolve();
      if (db?.open) db.close();
      void closed.finally(() => this.lock?.release());
      throw err;
    }
  }

  accept(input: AcceptInput): Promise<AcceptResult> {
    return this.acceptor.accept(input);
  }

  getMessage(id: string): StoredMessage | undefined {
    const r = this.getMessageRow.get(id) as MessageDbRow | undefined;
    if (!r) return undefined;
    return {
      id: r.id,
      receivedAt: r.received_at,
      source: r.source,
      envelope: {
        mailFrom: r.mail_from,
        rcptTo: JSON.parse(r.rcpt_to) as string[],
        remoteAddress: r.remote_address,
        helo: r.helo,
        tls: r.tls ? (JSON.parse(r.tls) as TlsInfo) : null,
      },
      size: r.size,
      dedupeKey: r.dedupe_key,
      meta: r.meta ? (JSON.parse(r.meta) as Record<string, unknown>) : null,
    };
  }

  getDelivery(id: string): DeliveryRow | undefined {
    const r = this.getDeliveryRow.get(id) as Parameters<typeof toDeliveryRow>[0] | undefined;
    return r ? toDeliveryRow(r) : undefined;
  }

  /** The message bytes exactly as received, as a stream (never loads a large message whole). */
  openRaw(id: string): Readable {
    const r = this.rawRow(id);
    if (r.raw_file) return this.blobs.openRead(r.raw_file);
    return Readable.from([r.raw ?? Buffer.alloc(0)]);
  }

  /** The message bytes as one buffer, for formats that need them whole (bounded by smtp.max_message_bytes). */
  async readRaw(id: string): Promise<Buffer> {
    const r = this.rawRow(id);
    if (!r.raw_file) return r.raw ?? Buffer.alloc(0);
    // Read at a stream's pace, not in one go: read at once, the deliveries of large messages that start while others
    // still stream in got far enough to lift RSS in that phase from ~200 to 260-360 MB (bench memory phase, measured).
    return this.blobs.readAll(r.raw_file);
  }

  /** Where a message's bytes are: inline in its row, or in a file beside the database. */
  private rawRow(id: string): { raw: Buffer | null; raw_file: string | null } {
    const r = this.getInlineRaw.get(id) as { raw: Buffer | null; raw_file: string | null } | undefined;
    if (!r) throw new MailhookError('MESSAGE_NOT_FOUND', `no message ${id} in the spool`, { userFault: true });
    return r;
  }

  /**
   * Database plus WAL plus message files, in bytes. The files are counted by the sizes their rows record (an index
   * holds them): a stat() of each file on every metrics scrape took ~300 ms of the event loop at 50,000 files, and
   * /metrics needs no token.
   */
  diskUsage(): number {
    let total = 0;
    for (const f of [this.options.path, `${this.options.path}-wal`, `${this.options.path}-shm`]) {
      try {
        total += statSync(f).size;
      } catch {
        /* absent */
      }
    }
    return total + (this.fileBytes.get() as number);
  }

  /**
   * A quick write probe for readiness: the database answers and accepts a write transaction. It waits for a lock
   * held elsewhere (another process on the spool file) at most READY_PROBE_BUSY_MS, not the connection's 5 s: the
   * wait blocks the event loop, and a readiness probe gives up after a second (Kubernetes' default).
   */
  isWritable(): boolean {
    if (this.closing) return false;
    const busy = this.db.pragma('busy_timeout', { simple: true }) as number;
    try {
      this.db.pragma(`busy_timeout = ${READY_PROBE_BUSY_MS}`);
      this.db.prepare('BEGIN IMMEDIATE').run();
      this.db.prepare('ROLLBACK').run();
      return true;
    } catch {
      return false;
    } finally {
      this.db.pragma(`busy_timeout = ${busy}`);
    }
  }

  /**
   * Closes the spool at once (no message is accepted after this returns); the promise resolves when the
   * checkpoint thread has closed its connection too, after which the database's files are no longer touched.
   */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    const lock = this.lock;
    // The lock goes last, once nothing of ours touches the spool's files any more.
    this.closing = this.acceptor.close().finally(() => lock?.release());
    this.db.close();
    return this.closing;
  }

  /**
   * Files left by a crash between write and commit have no row: remove them. A file written since this process
   * started is left alone (a second safety besides the lock: it may belong to a message still being received here,
   * its row not yet committed); it goes at the next start if it is still an orphan then.
   */
  private removeOrphanFiles(): void {
    const known = new Set(
      (this.db.prepare(`SELECT raw_file FROM messages WHERE raw_file IS NOT NULL`).all() as Array<{ raw_file: string }>).map((r) => r.raw_file),
    );
    for (const name of this.blobs.list()) {
      if (known.has(name)) continue;
      let mtimeMs: number;
      try {
        mtimeMs = statSync(this.blobs.pathOf(name)).mtimeMs;
      } catch {
        continue; // gone meanwhile
      }
      if (mtimeMs >= PROCESS_STARTED_AT) continue;
      this.blobs.removeSync(name);
    }
  }
}
