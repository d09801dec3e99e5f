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
}

/**
 * The ids of messages past retention: every delivery finished (delivered, dropped or dead), and each finished
 * longer ago than its status's retention (dropped counts as delivered). A message with a delivery still pending,
 * in flight or recent stays.
 */
export function expiredMessagesQuery(): string {
  return `SELECT DISTINCT d.message_id AS id FROM deliveries d
    WHERE ((d.status IN ('delivered', 'dropped') AND d.finished_at < @deliveredCut) OR (d.status = 'dead' AND d.finished_at < @deadCut))
      AND NOT EXISTS (
        SELECT 1 FROM deliveries o WHERE o.message_id = d.message_id
          AND (o.status IN ('pending', 'delivering')
               OR (o.status IN ('delivered', 'dropped') AND o.finished_at >= @deliveredCut)
               OR (o.status = 'dead' AND o.finished_at >= @deadCut)))
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
    const select = db.prepare(expiredMessagesQuery());
    const fileOf = db.prepare(`SELECT raw_file FROM messages WHERE id = ?`);
    const remove = db.prepare(`DELETE FROM messages WHERE id = ?`);
    const result: RetentionRun = { removed: 0, files: 0, freedPages: 0 };
    const now = clock.now();
    const cuts = { deliveredCut: now - this.opts.delivered, deadCut: now - this.opts.dead };
    for (;;) {
      if (this.stopped) break;
      const files: string[] = [];
      let n = 0;
      db.transaction(() => {
        const ids = (select.all({ ...cuts, limit: this.batchSize }) as Array<{ id: string }>).map((r) => r.id);
        for (const id of ids) {
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
      this.deps.onBatch?.(n);
      if (n < this.batchSize) break;
      await new Promise((r) => setImmediate(r));
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
      log.info({ removed: result.removed, files: result.files, freedPages: result.freedPages }, 'retention removed expired messages');
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
