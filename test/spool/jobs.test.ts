// The job queue's leasing: outcomes and new leases in one transaction, due order, and routes at their limit.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Spool } from '../../src/spool/spool.js';
import { SELECT_DUE_OF_SQL } from '../../src/spool/jobs.js';
import { tempDir } from '../helpers/app.js';

const NOW = 1_700_000_000_000;

async function spoolWith(routes: string[]): Promise<{ spool: Spool; dir: string; close(): Promise<void> }> {
  const dir = tempDir('mailhook-jobs-');
  let t = NOW - 100_000;
  const spool = new Spool({ path: join(dir, 'spool.db'), inlineMaxBytes: 65536, clock: { now: () => t++ } });
  for (const route of routes) {
    await spool.accept({
      source: 'smtp',
      envelope: { mailFrom: 'a@example.org', rcptTo: [`x@${route}.test`], remoteAddress: null, helo: null, tls: null },
      deliveries: [{ route, recipients: [{ address: `x@${route}.test`, key: null }] }],
      body: (async function* () {
        yield Buffer.from('Subject: x\r\n\r\nhi\r\n');
      })(),
      maxBytes: 1 << 20,
    });
  }
  return { spool, dir, close: async () => {
    await spool.close();
    rmSync(dir, { recursive: true, force: true });
  } };
}

test('leases come in due order and count the attempt; an outcome and the next leases commit together', async () => {
  const { spool, dir, close } = await spoolWith(['a', 'a', 'a']);
  try {
    const first = spool.jobs.leaseDue(NOW, 2, 60_000);
    assert.equal(first.length, 2);
    assert.deepEqual(first.map((l) => [l.delivery.status, l.delivery.attempts]), [['delivering', 1], ['delivering', 1]]);
    assert.ok(first[0]!.delivery.createdAt < first[1]!.delivery.createdAt, 'oldest first');

    const { kept, leases } = spool.jobs.settleAndLease(
      [{ lease: first[0]!, attempt: { attempt: 1, startedAt: NOW, durationMs: 3, statusCode: 200, outcome: 'delivered', error: null }, next: { status: 'delivered' }, now: NOW }],
      { now: NOW, limit: 4, leaseMs: 60_000, canTake: () => true },
    );
    assert.deepEqual(kept, [true]);
    assert.equal(leases.length, 1, 'only the third delivery was still due');

    // Another connection (as after a kill) sees the outcome, the attempt row and the new lease.
    const other = new Database(join(dir, 'spool.db'), { readonly: true });
    try {
      const rows = other.prepare(`SELECT id, status, attempts FROM deliveries ORDER BY created_at`).all() as Array<{ id: string; status: string; attempts: number }>;
      assert.deepEqual(rows.map((r) => r.status), ['delivered', 'delivering', 'delivering']);
      assert.equal((other.prepare(`SELECT COUNT(*) AS n FROM attempts WHERE delivery_id = ?`).get(first[0]!.delivery.id) as { n: number }).n, 1);
    } finally {
      other.close();
    }

    // A lease that is no longer held (expired and reclaimed) records nothing.
    spool.jobs.reclaimExpired(NOW + 120_000);
    const lost = spool.jobs.complete(first[1]!, { attempt: 1, startedAt: NOW, durationMs: 1, statusCode: 200, outcome: 'delivered', error: null }, { status: 'delivered' }, NOW);
    assert.equal(lost, false);
    assert.equal(spool.getDelivery(first[1]!.delivery.id)?.status, 'pending');
  } finally {
    await close();
  }
});

test('a route at its limit with a long backlog does not hide another route’s deliveries', async () => {
  // 40 deliveries of "busy" come first in due order, then 2 of "idle".
  const { spool, close } = await spoolWith([...Array.from({ length: 40 }, () => 'busy'), 'idle', 'idle']);
  try {
    const canTake = (route: string) => route !== 'busy';
    const blind = spool.jobs.settleAndLease([], { now: NOW, limit: 2, leaseMs: 60_000, canTake });
    assert.equal(blind.leases.length, 0, 'without openRoutes only the due-order window is read (the test can fail)');
    const { leases } = spool.jobs.settleAndLease([], { now: NOW, limit: 2, leaseMs: 60_000, openRoutes: ['idle'], canTake });
    assert.deepEqual(leases.map((l) => l.delivery.route), ['idle', 'idle']);
  } finally {
    await close();
  }
});

test('canTake can ask for the message size; the lease then carries it, and a refusal leaves the delivery pending', async () => {
  const { spool, close } = await spoolWith(['a', 'b']);
  try {
    const asked: string[] = [];
    const { leases } = spool.jobs.settleAndLease([], {
      now: NOW,
      limit: 4,
      leaseMs: 60_000,
      canTake: (route, sizeOf) => {
        if (route === 'b') return true; // never asks
        asked.push(route);
        return sizeOf() < 10; // the message is 18 bytes: refused
      },
    });
    assert.deepEqual(asked, ['a']);
    assert.deepEqual(leases.map((l) => [l.delivery.route, l.messageSize]), [['b', undefined]]);
    assert.equal(spool.jobs.counts().pending, 1);
    const again = spool.jobs.leaseDue(NOW, 4, 60_000, (_route, sizeOf) => sizeOf() === 18);
    assert.deepEqual(again.map((l) => [l.delivery.route, l.messageSize]), [['a', 18]]);
  } finally {
    await close();
  }
});

test('a delivery left in flight at every start (the process dies on it) backs off, then is dead-lettered at max_attempts', async () => {
  const { spool, close } = await spoolWith(['a']);
  try {
    const maxAttempts = 5;
    const retryAt = (now: number) => (attempts: number) => now + 1000 * attempts;
    let now = NOW;
    // Each run: start (reclaim), lease when due, the process dies mid-attempt (nothing settled).
    for (let run = 0; run < maxAttempts; run++) {
      const { resumed, dead } = spool.jobs.reclaimAbandoned(now, { maxAttempts, retryAt: retryAt(now) });
      assert.deepEqual([resumed, dead.length], [run === 0 ? 0 : 1, 0]);
      if (run > 0) {
        assert.equal(spool.jobs.leaseDue(now, 16, 60_000).length, 0, 'not due at once after a restart');
        const d = spool.jobs.nextDueAt()!;
        assert.equal(d, now + 1000 * run, 'due after the retry backoff of the attempts made');
        now = d;
      }
      assert.equal(spool.jobs.leaseDue(now, 16, 60_000).length, 1);
    }
    const [id] = spool.jobs.leaseDue(now, 16, 60_000).map((l) => l.delivery.id);
    assert.equal(id, undefined, 'the fifth lease is still held');
    now += 5000;
    const { resumed, dead } = spool.jobs.reclaimAbandoned(now, { maxAttempts, retryAt: retryAt(now) });
    assert.equal(resumed, 0);
    assert.equal(dead.length, 1);
    const row = spool.getDelivery(dead[0]!.id)!;
    assert.equal(row.status, 'dead');
    assert.equal(row.attempts, maxAttempts);
    assert.equal(row.finishedAt, now);
    assert.match(row.lastError ?? '', /^gave up after 5 attempts: the process ended during attempt 5 \(killed, or crashed, possibly on this message\)/);
    const attempts = spool.db.prepare(`SELECT attempt, outcome, error FROM attempts WHERE delivery_id = ?`).all(row.id) as Array<{ attempt: number; outcome: string; error: string }>;
    assert.deepEqual(attempts.map((a) => [a.attempt, a.outcome]), [[5, 'dead']]);
    assert.equal(spool.jobs.counts().pending + spool.jobs.counts().delivering, 0, 'nothing left to lease');
  } finally {
    await close();
  }
});

test('a route’s due deliveries are found through their own index, not by reading every due row of every route', async () => {
  const { spool, close } = await spoolWith(['a']);
  try {
    const plan = (sql: string, ...args: unknown[]) => (spool.db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(...args) as Array<{ detail: string }>).map((r) => r.detail).join('; ');
    assert.match(plan(SELECT_DUE_OF_SQL, 'b', NOW, 16), /^SEARCH deliveries USING INDEX deliveries_route_due \(route=\? AND next_attempt_at<\?\)$/);
    // The due-order window and the next due time keep their index.
    assert.match(plan(`SELECT id, route, message_id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?`, NOW, 16), /USING INDEX deliveries_due/);
  } finally {
    await close();
  }
});

test('renameRoute moves every delivery of the old name, whatever its state, with its attempts; once done it is a no-op', async () => {
  const { spool, close } = await spoolWith(['old', 'old', 'old', 'other']);
  try {
    const db = spool.db;
    const ids = (db.prepare(`SELECT id FROM deliveries WHERE route = 'old' ORDER BY id`).pluck().all() as string[]);
    db.prepare(`UPDATE deliveries SET status = 'dead', finished_at = ? WHERE id = ?`).run(NOW, ids[0]);
    db.prepare(`UPDATE deliveries SET status = 'delivered', finished_at = ? WHERE id = ?`).run(NOW, ids[1]);
    const attempt = db.prepare(`INSERT INTO attempts (delivery_id, route, attempt, started_at, duration_ms, status_code, outcome, error) VALUES (?, 'old', 1, ?, 5, 500, 'retry', 'e')`);
    for (const id of ids) attempt.run(id, NOW);
    assert.equal(spool.jobs.renameRoute('old', 'new'), 3);
    assert.deepEqual(db.prepare(`SELECT route, COUNT(*) AS n FROM deliveries GROUP BY route ORDER BY route`).all(), [{ route: 'new', n: 3 }, { route: 'other', n: 1 }]);
    assert.deepEqual(db.prepare(`SELECT DISTINCT route FROM attempts`).pluck().all(), ['new'], 'route health follows');
    assert.equal(spool.jobs.renameRoute('old', 'new'), 0);
  } finally {
    await close();
  }
});
