// Delivery jobs: leased by compare-and-swap with a token and expiry, attempts counted before the call.
//
// Bookkeeping runs with synchronous=NORMAL: a lease or an outcome is in the WAL when its transaction returns, so
// it survives the process being killed, and it reaches the disk with the next WAL sync (the accept path syncs
// after every batch, the checkpointer on its own). Only a power loss or kernel crash can lose the last few
// milliseconds of it, and both ways are safe for at-least-once: a lost outcome makes the delivery run again
// (same webhook-id), a lost lease leaves the attempt uncounted. Accepting a message is what promises durability
// to a sender; that path (accept.ts) syncs before anyone is told.
import { randomUUID } from 'node:crypto';
import type { Db } from './db.js';
import type Database from 'better-sqlite3';
import type { DeliveryRow, DeliveryStatus, Recipient } from './types.js';

export interface Lease {
  delivery: DeliveryRow;
  token: string;
  /** the message's size in bytes, when the lease asked for it (canTake's sizeOf) */
  messageSize?: number;
  /** JobQueue's revocation count when the lease was taken (holds() skips its query while nothing was revoked since) */
  revocations?: number;
}

interface DueRow {
  id: string;
  route: string;
  message_id: string;
}

/**
 * Whether the loop takes a due delivery of `route`; `sizeOf()` looks up its message's size (one indexed read,
 * made only when called). A true answer is a promise to run the lease, so the caller counts it then.
 */
export type CanTake = (route: string, sizeOf: () => number) => boolean;

export interface AttemptRecord {
  attempt: number;
  startedAt: number;
  durationMs: number;
  statusCode: number | null;
  outcome: 'delivered' | 'retry' | 'dead' | 'dropped';
  error: string | null;
}

/** A deliveries row as SQLite returns it (JSON columns still text). */
export interface DeliveryDbRow {
  id: string;
  message_id: string;
  route: string;
  recipients: string;
  status: DeliveryStatus;
  attempts: number;
  next_attempt_at: number;
  lease_token: string | null;
  last_status_code: number | null;
  last_error: string | null;
  created_at: number;
  updated_at: number;
  finished_at: number | null;
}

export function toDeliveryRow(r: DeliveryDbRow): DeliveryRow {
  return {
    id: r.id,
    messageId: r.message_id,
    route: r.route,
    recipients: JSON.parse(r.recipients) as Recipient[],
    status: r.status,
    attempts: r.attempts,
    nextAttemptAt: r.next_attempt_at,
    leaseToken: r.lease_token,
    lastStatusCode: r.last_status_code,
    lastError: r.last_error,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    finishedAt: r.finished_at,
  };
}

/** A delivery left in flight by a process that ended, dead-lettered at start because it had used up its attempts. */
export interface AbandonedDead {
  id: string;
  messageId: string;
  route: string;
  attempts: number;
  reason: string;
}

/**
 * What happened to a leased delivery, recorded by settleAndLease(). `given-back`: no request was sent (shutdown
 * came first, or its route was paused by a Retry-After); the delivery is due again as it was, its attempt not counted and no attempt row written.
 */
export interface Completion {
  lease: Lease;
  attempt: AttemptRecord;
  next: { status: 'delivered' | 'dead' | 'dropped' } | { status: 'pending'; at: number } | { status: 'given-back' };
  now: number;
}

/** A route's due deliveries, in due order: a search of deliveries_route_due, however long other routes' backlogs are. */
export const SELECT_DUE_OF_SQL = `SELECT id, route, message_id FROM deliveries WHERE route = ? AND status = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?`;

export class JobQueue {
  private readonly selectDue;
  private readonly selectDueOf;
  private readonly messageSize;
  private readonly claim;
  private readonly finish;
  private readonly reschedule;
  private readonly insertAttempt;
  private readonly release;
  private readonly nextDue;
  private readonly countByStatus;
  private readonly countByRoute;
  private readonly nextDueOfRoute;
  private readonly undeliveredOf;
  private readonly dueCountOfRoute;
  private readonly oldestOf;
  private readonly syncNormal;
  private readonly syncFull;

  constructor(private readonly db: Db) {
    // Only id, route and message_id to choose from (an index range plus one row lookup each; the message's size
    // only when canTake asks for it); the claimed rows come back whole from the UPDATE itself. selectDue is the
    // queue in due order; selectDueOf serves a route whose rows the first window did not reach (every row in it
    // belonged to routes without a free slot), in due order too, through its own index (deliveries_route_due).
    this.selectDue = db.prepare<[number, number], DueRow>(
      `SELECT id, route, message_id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?`,
    );
    this.selectDueOf = db.prepare<[string, number, number], DueRow>(SELECT_DUE_OF_SQL);
    this.messageSize = db.prepare<[string], number>(`SELECT size FROM messages WHERE id = ?`).pluck();
    this.claim = db.prepare(
      `UPDATE deliveries SET status = 'delivering', lease_token = @token, lease_expires_at = @expires, attempts = attempts + 1, updated_at = @now
       WHERE id = @id AND status = 'pending'
       RETURNING id, message_id, route, recipients, status, attempts, next_attempt_at, lease_token, last_status_code, last_error, created_at, updated_at, finished_at`,
    );
    this.syncNormal = db.prepare('PRAGMA synchronous = NORMAL');
    this.syncFull = db.prepare('PRAGMA synchronous = FULL');
    this.finish = db.prepare(
      `UPDATE deliveries SET status = @status, lease_token = NULL, lease_expires_at = NULL, last_status_code = @code, last_error = @error,
         updated_at = @now, finished_at = @now
       WHERE id = @id AND lease_token = @token`,
    );
    this.reschedule = db.prepare(
      `UPDATE deliveries SET status = 'pending', lease_token = NULL, lease_expires_at = NULL, next_attempt_at = @at, last_status_code = @code,
         last_error = @error, updated_at = @now
       WHERE id = @id AND lease_token = @token`,
    );
    this.release = db.prepare(
      `UPDATE deliveries SET status = 'pending', lease_token = NULL, lease_expires_at = NULL, attempts = MAX(attempts - 1, 0), updated_at = @now
       WHERE id = @id AND lease_token = @token`,
    );
    this.insertAttempt = db.prepare(
      `INSERT INTO attempts (delivery_id, route, attempt, started_at, duration_ms, status_code, outcome, error)
       VALUES (@delivery_id, @route, @attempt, @started_at, @duration_ms, @status_code, @outcome, @error)`,
    );
    // The head of the deliveries_due index (a covering index search that stops at the first entry).
    this.nextDue = db.prepare(`SELECT next_attempt_at AS at FROM deliveries WHERE status = 'pending' ORDER BY next_attempt_at LIMIT 1`);
    this.countByStatus = db.prepare(`SELECT status, COUNT(*) AS n FROM deliveries GROUP BY status`);
    // A scan of the covering index deliveries_route_status_received, then one search of it per route and status.
    this.countByRoute = db.prepare<[], { route: string; status: DeliveryStatus; n: number }>(`SELECT route, status, COUNT(*) AS n FROM deliveries GROUP BY route, status`);
    this.nextDueOfRoute = db.prepare<[string], number | null>(`SELECT MIN(next_attempt_at) FROM deliveries WHERE route = ? AND status = 'pending'`).pluck();
    this.dueCountOfRoute = db.prepare<[string, number], number>(`SELECT COUNT(*) FROM deliveries WHERE route = ? AND status = 'pending' AND next_attempt_at <= ?`).pluck();
    this.undeliveredOf = db.prepare<[string], number>(`SELECT 1 FROM deliveries WHERE route = ? AND status IN ('pending', 'delivering') LIMIT 1`).pluck();
    this.oldestOf = db.prepare<[string, string], number | null>(`SELECT MIN(received_at) FROM deliveries WHERE route = ? AND status = ?`).pluck();
  }

  /**
   * Records finished attempts, then leases up to `limit` due deliveries skipping routes for which `canTake`
   * says no, all in one transaction (see the header on durability). The attempt is counted by the lease, before
   * the HTTP call, so a killed process still uses up an attempt. Returns, per completion, whether its lease was
   * still held (false: it expired and was reclaimed; the delivery runs again).
   */
  settleAndLease(
    completions: readonly Completion[],
    lease: { now: number; limit: number; leaseMs: number; openRoutes?: readonly string[]; canTake: CanTake } | null,
  ): { kept: boolean[]; leases: Lease[] } {
    const kept: boolean[] = [];
    const leases: Lease[] = [];
    const run = this.db.transaction(() => {
      for (const c of completions) kept.push(this.completeOne(c));
      if (!lease || lease.limit <= 0) return;
      const { now, limit, leaseMs, canTake } = lease;
      const take = (rows: DueRow[]): void => {
        for (const row of rows) {
          if (leases.length >= limit) return;
          let size: number | undefined;
          const sizeOf = (): number => (size ??= this.messageSize.get(row.message_id) ?? 0);
          if (!canTake(row.route, sizeOf)) continue;
          const token = randomUUID();
          const claimed = this.claim.get({ id: row.id, token, expires: now + leaseMs, now }) as DeliveryDbRow | undefined;
          if (claimed) leases.push({ token, delivery: toDeliveryRow(claimed), revocations: this.revocations, ...(size === undefined ? {} : { messageSize: size }) });
        }
      };
      const window = limit * 2;
      const rows = this.selectDue.all(now, window);
      take(rows);
      // A full window that left slots free was taken up by routes at their limit: look at the others directly.
      if (rows.length < window) return;
      for (const route of lease.openRoutes ?? []) {
        if (leases.length >= limit) return;
        take(this.selectDueOf.all(route, now, limit - leases.length));
      }
    });
    this.syncNormal.run();
    try {
      run();
    } finally {
      this.syncFull.run();
    }
    return { kept, leases };
  }

  /** Leases up to `limit` due deliveries (settleAndLease without completions). */
  leaseDue(now: number, limit: number, leaseMs: number, canTake: CanTake = () => true): Lease[] {
    return this.settleAndLease([], { now, limit, leaseMs, canTake }).leases;
  }

  /** Records the attempt and the delivery's new state together. Returns false if the lease was lost. */
  complete(lease: Lease, attempt: AttemptRecord, next: Completion['next'], now: number): boolean {
    return this.settleAndLease([{ lease, attempt, next, now }], null).kept[0] as boolean;
  }

  private completeOne({ lease, attempt, next, now }: Completion): boolean {
    if (next.status === 'given-back') return this.release.run({ id: lease.delivery.id, token: lease.token, now }).changes === 1;
    const common = { id: lease.delivery.id, token: lease.token, code: attempt.statusCode, error: attempt.error, now };
    const changes = next.status === 'pending' ? this.reschedule.run({ ...common, at: next.at }).changes : this.finish.run({ ...common, status: next.status }).changes;
    if (changes !== 1) return false;
    this.insertAttempt.run({
      delivery_id: lease.delivery.id,
      route: lease.delivery.route,
      attempt: attempt.attempt,
      started_at: attempt.startedAt,
      duration_ms: attempt.durationMs,
      status_code: attempt.statusCode,
      outcome: attempt.outcome,
      error: attempt.error,
    });
    return true;
  }

  /**
   * A route renamed in the configuration (routes[].renamed_from): every delivery under its old name, whatever its
   * state, and their attempts, become the new route's. Returns the deliveries moved (0 once done: a cheap no-op).
   */
  renameRoute(from: string, to: string): number {
    return this.db.transaction(() => {
      // Their attempts follow them (route health), found through the deliveries (both by index).
      this.db.prepare(`UPDATE attempts SET route = ? WHERE delivery_id IN (SELECT id FROM deliveries WHERE route = ?)`).run(to, from);
      return this.db.prepare(`UPDATE deliveries SET route = ? WHERE route = ?`).run(to, from).changes;
    })();
  }

  /**
   * At start-up the spool belongs to this process alone (spool lock), so any 'delivering' row was left by a process
   * that ended during the attempt: killed, or crashed, possibly on this very message (a parse that ran out of memory,
   * a native crash). The attempt it counted stays counted. One that used up `maxAttempts` is dead-lettered now (with
   * an attempt row saying so): otherwise a message that kills the process would be leased again at every start, for
   * ever, since max_attempts is only looked at when an attempt finishes. The others wait their retry backoff
   * (`retryAt(attempts)`), not due at once: a crash loop then slows down instead of spinning.
   */
  reclaimAbandoned(now: number, policy: { maxAttempts: number; retryAt: (attempts: number) => number }): { resumed: number; dead: AbandonedDead[] } {
    this.abandoned ??= {
      select: this.db.prepare(`SELECT id, message_id, route, attempts FROM deliveries WHERE status = 'delivering'`),
      bury: this.db.prepare(
        `UPDATE deliveries SET status = 'dead', lease_token = NULL, lease_expires_at = NULL, last_status_code = NULL, last_error = @error, updated_at = @now, finished_at = @now
         WHERE id = @id AND status = 'delivering'`,
      ),
      resume: this.db.prepare(
        `UPDATE deliveries SET status = 'pending', lease_token = NULL, lease_expires_at = NULL, next_attempt_at = @at, last_error = @error, updated_at = @now
         WHERE id = @id AND status = 'delivering'`,
      ),
    };
    const { select, resume, bury } = this.abandoned;
    const dead: AbandonedDead[] = [];
    let resumed = 0;
    this.db.transaction(() => {
      for (const r of select.all() as Array<{ id: string; message_id: string; route: string; attempts: number }>) {
        const ended = `the process ended during attempt ${r.attempts} (killed, or crashed, possibly on this message)`;
        if (r.attempts >= policy.maxAttempts) {
          const reason = `gave up after ${r.attempts} attempts: ${ended}`;
          bury.run({ id: r.id, error: reason, now });
          this.insertAttempt.run({ delivery_id: r.id, route: r.route, attempt: r.attempts, started_at: now, duration_ms: 0, status_code: null, outcome: 'dead', error: reason });
          dead.push({ id: r.id, messageId: r.message_id, route: r.route, attempts: r.attempts, reason });
        } else {
          resume.run({ id: r.id, at: policy.retryAt(Math.max(r.attempts, 1)), error: `${ended}; retried`, now });
          resumed++;
        }
      }
    })();
    return { resumed, dead };
  }
  private abandoned: { select: Database.Statement; resume: Database.Statement; bury: Database.Statement } | undefined;

  /**
   * Whether the lease is still this delivery's: false once an operator deleted it (or its message) meanwhile. Only
   * a forced delete takes a lease away from under the delivery loop (retention keeps a message with a delivery in
   * flight, replay takes finished ones, reclaimExpired spares the loop's own leases), and it says so (revokeLeases):
   * until then the answer is known without a query. The query outside a transaction cost ~30 µs per delivery
   * (SQLite's read-transaction set-up on the shared WAL), a twentieth of a 1 KB delivery's CPU.
   */
  holds(lease: Lease): boolean {
    if (lease.revocations === this.revocations) return true;
    this.held ??= this.db.prepare(`SELECT 1 FROM deliveries WHERE id = ? AND lease_token = ?`);
    return this.held.get(lease.delivery.id, lease.token) !== undefined;
  }
  private held: Database.Statement | undefined;
  /** how many times a lease may have been taken away (see holds) */
  private revocations = 0;

  /** A delivery in flight was deleted (SpoolQueries.deleteMessage with force): holds() asks the spool again. */
  revokeLeases(): void {
    this.revocations++;
  }

  /**
   * Dead-letters the pending deliveries of routes not in `routes` (removed from the configuration), with an attempt
   * row saying why (its attempt number the last one made: no request is counted). One transaction; counts by route.
   */
  deadLetterUnrouted(routes: readonly string[], now: number, reason: (route: string) => string): Map<string, number> {
    const select = this.db.prepare(`SELECT id, route, attempts FROM deliveries WHERE status = 'pending' AND route NOT IN (SELECT value FROM json_each(?))`);
    const bury = this.db.prepare(
      `UPDATE deliveries SET status = 'dead', last_status_code = NULL, last_error = @error, updated_at = @now, finished_at = @now
       WHERE id = @id AND status = 'pending'`,
    );
    const counts = new Map<string, number>();
    this.db.transaction(() => {
      for (const r of select.all(JSON.stringify(routes)) as Array<{ id: string; route: string; attempts: number }>) {
        const error = reason(r.route);
        bury.run({ id: r.id, error, now });
        this.insertAttempt.run({ delivery_id: r.id, route: r.route, attempt: r.attempts, started_at: now, duration_ms: 0, status_code: null, outcome: 'dead', error });
        counts.set(r.route, (counts.get(r.route) ?? 0) + 1);
      }
    })();
    return counts;
  }

  /**
   * Reclaims leases that expired while this process runs (a stuck request past its deadline), except `own`: the
   * tokens of attempts this process still runs. Expiry is wall-clock time, and a forward step of the clock (NTP,
   * a VM resumed) larger than the lease would otherwise hand a delivery whose request is still in flight here to
   * the next lease: the same webhook-id sent twice at once. Those finish and record their outcome as usual.
   */
  reclaimExpired(now: number, own: Iterable<string> = []): number {
    // Prepared once: the delivery loop calls this once a second.
    this.expired ??= this.db.prepare<[number, number, string]>(
      `UPDATE deliveries SET status = 'pending', lease_token = NULL, lease_expires_at = NULL, updated_at = ?
       WHERE status = 'delivering' AND lease_expires_at < ? AND lease_token NOT IN (SELECT value FROM json_each(?))`,
    );
    return this.expired.run(now, now, JSON.stringify([...own])).changes;
  }
  private expired: Database.Statement<[number, number, string]> | undefined;

  nextDueAt(): number | null {
    const row = this.nextDue.get() as { at: number } | undefined;
    return row?.at ?? null;
  }

  /**
   * Deliveries by route and status, and per route when the oldest message not yet delivered (pending or being
   * delivered) came in (null when none): for the queue metrics.
   */
  routeCounts(): { counts: Array<{ route: string; status: DeliveryStatus; n: number }>; oldestUndelivered: Map<string, number | null> } {
    const counts = this.countByRoute.all();
    const oldestUndelivered = new Map<string, number | null>();
    for (const { route, status } of counts) {
      if (!oldestUndelivered.has(route)) oldestUndelivered.set(route, null);
      if (status !== 'pending' && status !== 'delivering') continue;
      const at = this.oldestOf.get(route, status) ?? null;
      const before = oldestUndelivered.get(route) ?? null;
      if (at !== null && (before === null || at < before)) oldestUndelivered.set(route, at);
    }
    return { counts, oldestUndelivered };
  }

  /** When the route's next pending delivery falls due (the head of deliveries_route_due), or null. */
  nextDueOf(route: string): number | null {
    return this.nextDueOfRoute.get(route) ?? null;
  }

  /** The route's pending deliveries due at `now` (a range of deliveries_route_due). */
  dueCountOf(route: string, now: number): number {
    return this.dueCountOfRoute.get(route, now) as number;
  }

  /** Whether the route has a delivery pending or being delivered. */
  hasUndelivered(route: string): boolean {
    return this.undeliveredOf.get(route) !== undefined;
  }

  counts(): Record<DeliveryStatus, number> {
    const out: Record<DeliveryStatus, number> = { pending: 0, delivering: 0, delivered: 0, dead: 0, dropped: 0 };
    for (const r of this.countByStatus.all() as Array<{ status: DeliveryStatus; n: number }>) out[r.status] = r.n;
    return out;
  }
}
