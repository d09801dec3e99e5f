// Delivery jobs: leased by compare-and-swap with a token and expiry, attempts counted before the call.
import { randomUUID } from 'node:crypto';
import type { Db } from './db.js';
import type Database from 'better-sqlite3';
import type { DeliveryRow, DeliveryStatus, Recipient } from './types.js';

export interface Lease {
  delivery: DeliveryRow;
  token: string;
}

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

export class JobQueue {
  private readonly selectDue;
  private readonly claim;
  private readonly finish;
  private readonly reschedule;
  private readonly insertAttempt;
  private readonly release;
  private readonly nextDue;
  private readonly countByStatus;

  constructor(private readonly db: Db) {
    this.selectDue = db.prepare(
      `SELECT * FROM deliveries WHERE status = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?`,
    );
    this.claim = db.prepare(
      `UPDATE deliveries SET status = 'delivering', lease_token = @token, lease_expires_at = @expires, attempts = attempts + 1, updated_at = @now
       WHERE id = @id AND status = 'pending'`,
    );
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
      `INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code, outcome, error)
       VALUES (@delivery_id, @attempt, @started_at, @duration_ms, @status_code, @outcome, @error)`,
    );
    this.nextDue = db.prepare(`SELECT MIN(next_attempt_at) AS at FROM deliveries WHERE status = 'pending'`);
    this.countByStatus = db.prepare(`SELECT status, COUNT(*) AS n FROM deliveries GROUP BY status`);
  }

  /**
   * Leases up to `limit` due deliveries, skipping routes for which `canTake` says no. The attempt is
   * counted here, before the HTTP call, so a crash mid-call still uses up an attempt.
   */
  leaseDue(now: number, limit: number, leaseMs: number, canTake: (route: string) => boolean): Lease[] {
    const leases: Lease[] = [];
    this.db.transaction(() => {
      const rows = this.selectDue.all(now, Math.max(limit * 4, 32)) as DeliveryDbRow[];
      for (const row of rows) {
        if (leases.length >= limit) break;
        if (!canTake(row.route)) continue;
        const token = randomUUID();
        const changed = this.claim.run({ id: row.id, token, expires: now + leaseMs, now }).changes;
        if (changed === 1) {
          leases.push({ token, delivery: toDeliveryRow({ ...row, status: 'delivering', attempts: row.attempts + 1, lease_token: token }) });
        }
      }
    })();
    return leases;
  }

  /** Records the attempt and the delivery's new state together. Returns false if the lease was lost. */
  complete(lease: Lease, attempt: AttemptRecord, next: { status: 'delivered' | 'dead' | 'dropped' } | { status: 'pending'; at: number }, now: number): boolean {
    let ok = false;
    this.db.transaction(() => {
      const common = { id: lease.delivery.id, token: lease.token, code: attempt.statusCode, error: attempt.error, now };
      const changes = next.status === 'pending' ? this.reschedule.run({ ...common, at: next.at }).changes : this.finish.run({ ...common, status: next.status }).changes;
      ok = changes === 1;
      if (ok) {
        this.insertAttempt.run({
          delivery_id: lease.delivery.id,
          attempt: attempt.attempt,
          started_at: attempt.startedAt,
          duration_ms: attempt.durationMs,
          status_code: attempt.statusCode,
          outcome: attempt.outcome,
          error: attempt.error,
        });
      }
    })();
    return ok;
  }

  /** Gives a lease back without counting the attempt (shutdown before the request was sent). */
  giveBack(lease: Lease, now: number): void {
    this.release.run({ id: lease.delivery.id, token: lease.token, now });
  }

  /**
   * At start-up the spool belongs to this process alone, so any 'delivering' row was left by a crash:
   * put it back in the queue, due now. The attempt it counted stays counted.
   */
  reclaimAbandoned(now: number): number {
    return this.db
      .prepare(`UPDATE deliveries SET status = 'pending', lease_token = NULL, lease_expires_at = NULL, next_attempt_at = MIN(next_attempt_at, ?), updated_at = ? WHERE status = 'delivering'`)
      .run(now, now).changes;
  }

  /** Reclaims leases that expired while this process runs (a stuck request past its deadline). */
  reclaimExpired(now: number): number {
    // Prepared once: the delivery loop calls this on every tick.
    this.expired ??= this.db.prepare<[number, number]>(
      `UPDATE deliveries SET status = 'pending', lease_token = NULL, lease_expires_at = NULL, updated_at = ? WHERE status = 'delivering' AND lease_expires_at < ?`,
    );
    return this.expired.run(now, now).changes;
  }
  private expired: Database.Statement<[number, number]> | undefined;

  nextDueAt(): number | null {
    const row = this.nextDue.get() as { at: number | null };
    return row.at;
  }

  counts(): Record<DeliveryStatus, number> {
    const out: Record<DeliveryStatus, number> = { pending: 0, delivering: 0, delivered: 0, dead: 0, dropped: 0 };
    for (const r of this.countByStatus.all() as Array<{ status: DeliveryStatus; n: number }>) out[r.status] = r.n;
    return out;
  }
}
