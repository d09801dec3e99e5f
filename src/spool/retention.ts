// Retention: removes messages whose deliveries all finished long enough ago, files included, and gives the space back.
import type { Clock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import type { Db } from './db.js';
import type { BlobStore } from './blobs.js';

export interface RetentionOptions {
  /** ms a message is kept after its last delivery succeeded */
  delivered: number;
  /** ms a message is kept after a delivery was dead-lettered */
  dead: number;
  /** ms between runs */
  interval: number;
  /** messages removed per transaction; the event loop gets a turn between batches */
  batchSize?: number;
  /** free pages handed back per incremental_vacuum step */
  vacuumPages?: number;
}

export interface RetentionDeps {
  db: Db;
  blobs: BlobStore;
  clock: Clock;
  log: Logger;
  /** told how many messages each run removed (metrics) */
  onRemoved?: (messages: number) => void;
  /** told after each batch's commit how many it removed (tests stop a run between batches with it) */
  onBatch?: (messages: number) => void;
}

export interface RetentionRun {
  removed: number;
  files: number;
  freedPages: number;
  /** finished deliveries past their retention looked at (each once per pass, whether its message could go or not) */
  scanned: number;
}

/** Whether any delivery of message `d.message_id` keeps it: unfinished, or finished within its retention. */
const KEPT_BY_ANOTHER = `EXISTS (
        SELECT 1 FROM deliveries o WHERE o.message_id = d.message_id
          AND (o.status IN ('pending', 'delivering')
               OR (o.status IN ('delivered', 'dropped') AND o.finished_at >= @deliveredCut)
               OR (o.status = 'dead' AND o.finished_at >= @deadCut)))`;

/**
 * The ids of messages past retention: every delivery finished (delivered, dropped or dead), and each finished
 * longer ago than its status's retention (dropped counts as delivered). A message with a delivery still pending,
 * in flight or recent stays. (The definition; a pass walks the same conditions with expiredBatchQuery.)
 */
export function expiredMessagesQuery(): string {
  return `SELECT DISTINCT d.message_id AS id FROM deliveries d
    WHERE ((d.status IN ('delivered', 'dropped') AND d.finished_at < @deliveredCut) OR (d.status = 'dead' AND d.finished_at < @deadCut))
      AND NOT ${KEPT_BY_ANOTHER}
    LIMIT @limit`;
}

/**
 * One batch of a pass: the next `@limit` deliveries of one status finished before `@cut`, after the cursor
 * (finished_at, rowid) in the order of the deliveries_finished index, each with whether its message can go. The
 * cursor moves past the ones whose message must stay too: the batch query without one searched from the start
 * every time and read again every delivery it had skipped (a message delivered to one route and still retrying
 * for another): 373 ms per batch with 100,000 of them, on the event loop.
 */
export function expiredBatchQuery(): string {
  return `SELECT d.rowid AS rid, d.finished_at AS at, d.message_id AS id, NOT ${KEPT_BY_ANOTHER} AS expired
    FROM deliveries d
    WHERE d.status = @status AND d.finished_at < @cut AND (d.finished_at, d.rowid) > (@afterAt, @afterRid)
    ORDER BY d.finished_at, d.rowid
    LIMIT @limit`;
}

export class Retention {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<RetentionRun> | undefined;
  private stopped = false;
  private readonly batchSize: number;
  private readonly vacuumPages: number;

  constructor(
    private readonly deps: RetentionDeps,
    private readonly opts: RetentionOptions,
  ) {
    this.batchSize = opts.batchSize ?? 500;
    this.vacuumPages = opts.vacuumPages ?? 1000;
  }

  /** Runs now, then every interval. */
  start(): void {
    this.stopped = false;
    this.schedule(0);
  }

  /** Stops the timer and waits for a run in progress (it stops between batches). */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.running?.catch(() => undefined);
  }

  /** One pass: remove every expired message in batches, then vacuum. Concurrent calls share the pass. */
  runOnce(): Promise<RetentionRun> {
    this.running ??= this.pass().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private schedule(delay: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.runOnce()
        .catch((err: unknown) => this.deps.log.error({ err }, 'retention run failed; trying again at the next interval'))
        .finally(() => this.schedule(this.opts.interval));
    }, delay);
    this.timer.unref();
  }

  private async pass(): Promise<RetentionRun> {
    const { db, blobs, clock, log } = this.deps;
    const select = db.prepare(expiredBatchQuery());
    const fileOf = db.prepare(`SELECT raw_file FROM messages WHERE id = ?`);
    const remove = db.prepare(`DELETE FROM messages WHERE id = ?`);
    const result: RetentionRun = { removed: 0, files: 0, freedPages: 0, scanned: 0 };
    const now = clock.now();
    const cuts = { deliveredCut: now - this.opts.delivered, deadCut: now - this.opts.dead };
    // One walk per finished status, each through its part of deliveries_finished with a cursor.
    const walks = [
      { status: 'delivered', cut: cuts.deliveredCut },
      { status: 'dropped', cut: cuts.deliveredCut },
      { status: 'dead', cut: cuts.deadCut },
    ];
    for (const walk of walks) {
      let after = { afterAt: Number.MIN_SAFE_INTEGER, afterRid: Number.MIN_SAFE_INTEGER };
      for (;;) {
        if (this.stopped) break;
        const files: string[] = [];
        let n = 0;
        let scanned = 0;
        db.transaction(() => {
          const rows = select.all({ ...cuts, ...after, status: walk.status, cut: walk.cut, limit: this.batchSize }) as Array<{ rid: number; at: number; id: string; expired: number }>;
          scanned = rows.length;
          const last = rows.at(-1);
          if (last) after = { afterAt: last.at, afterRid: last.rid };
          for (const id of new Set(rows.filter((r) => r.expired).map((r) => r.id))) {
            const row = fileOf.get(id) as { raw_file: string | null } | undefined;
            // Deliveries, attempts and recipient rows go with the message (ON DELETE CASCADE).
            if (remove.run(id).changes === 1) {
              n++;
              if (row?.raw_file) files.push(row.raw_file);
            }
          }
        })();
        // Files go after the commit: a crash in between leaves orphans, which the spool removes at start.
        for (const f of files) blobs.removeSync(f);
        result.removed += n;
        result.files += files.length;
        result.scanned += scanned;
        if (scanned > 0) this.deps.onBatch?.(n);
        if (scanned < this.batchSize) break;
        await new Promise((r) => setImmediate(r));
      }
    }
    result.freedPages = await this.vacuum();
    if (result.removed > 0) {
      // The WAL grew with the deletes; reset it so the files on disk shrink back. While the checkpoint thread runs
      // a checkpoint of its own this one reports busy and does nothing (the file stayed large until the next
      // pass; seen once in the suite under load): try again shortly, for up to a second.
      for (let i = 0; i < 40; i++) {
        const [r] = db.pragma('wal_checkpoint(TRUNCATE)') as Array<{ busy: number }>;
        if (!r || r.busy === 0 || this.stopped) break;
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
      this.deps.onRemoved?.(result.removed);
      log.info({ removed: result.removed, files: result.files, freedPages: result.freedPages, scanned: result.scanned }, 'retention removed expired messages');
    }
    return result;
  }

  /** Hands free pages back to the file system, a step at a time so SMTP commits are not held up long. */
  private async vacuum(): Promise<number> {
    const { db } = this.deps;
    let freed = 0;
    for (;;) {
      const free = db.pragma('freelist_count', { simple: true }) as number;
      if (free === 0 || this.stopped) break;
      const step = Math.min(free, this.vacuumPages);
      db.pragma(`incremental_vacuum(${step})`);
      freed += step;
      if (step === free) break;
      await new Promise((r) => setImmediate(r));
    }
    return freed;
  }
}
