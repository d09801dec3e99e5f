// Retention: which messages go and when, files removed with them, space handed back; old spools get auto-vacuum.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, rmSync, statSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import Database from 'better-sqlite3';
import { Spool } from '../../src/spool/spool.js';
import { MIGRATIONS } from '../../src/spool/db.js';
import { Retention } from '../../src/spool/retention.js';
import { createLogger } from '../../src/core/logger.js';
import { tempDir, until } from '../helpers/app.js';

const DAY = 86_400_000;
const T0 = 1_700_000_000_000;
const log = createLogger({ level: 'silent', destination: new Writable({ write: (_c, _e, cb) => cb() }) });

function setup(inlineMaxBytes = 4096) {
  const dir = tempDir();
  const clock = { t: T0, now() { return this.t; } };
  const spool = new Spool({ path: join(dir, 'spool.db'), inlineMaxBytes, clock });
  const removed: number[] = [];
  const retention = new Retention({ db: spool.db, blobs: spool.blobs, clock, log, onRemoved: (n) => removed.push(n) }, { delivered: 7 * DAY, dead: 30 * DAY, interval: DAY, batchSize: 50 });
  return {
    dir, clock, spool, retention, removed,
    async accept(routes: Array<'pending' | 'delivered'>, body = 'Subject: x\r\n\r\nhello') {
      const r = await spool.accept({
        source: 'smtp',
        envelope: { mailFrom: 'a@x.test', rcptTo: ['u@in.test'], remoteAddress: '127.0.0.1', helo: 'c', tls: null },
        deliveries: routes.map((status, i) => ({ route: `r${i}`, recipients: [{ address: 'u@in.test', key: null }], status })),
        body: (async function* () { yield Buffer.from(body); })(),
        maxBytes: 10_000_000,
      });
      return r;
    },
    finish(deliveryId: string, status: 'delivered' | 'dead', at: number) {
      spool.db.prepare(`UPDATE deliveries SET status = ?, finished_at = ? WHERE id = ?`).run(status, at, deliveryId);
    },
    exists: (id: string) => spool.getMessage(id) !== undefined,
    async close() {
      await spool.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

test('delivered messages go after spool.retention.delivered, dead ones after .dead, unfinished ones stay', async () => {
  const s = setup(1024);
  try {
    const delivered = await s.accept(['delivered']);
    const dead = await s.accept(['pending']);
    s.finish(dead.deliveryIds[0]!, 'dead', T0);
    const mixed = await s.accept(['delivered', 'pending']); // one route still retrying
    const recent = await s.accept(['pending']);
    s.finish(recent.deliveryIds[0]!, 'delivered', T0 + 6 * DAY);
    const deadAndDelivered = await s.accept(['delivered', 'pending']);
    s.finish(deadAndDelivered.deliveryIds[1]!, 'dead', T0);
    const large = await s.accept(['delivered'], `Subject: big\r\n\r\n${'x'.repeat(5000)}`);
    const file = (s.spool.db.prepare('SELECT raw_file FROM messages WHERE id = ?').get(large.id) as { raw_file: string }).raw_file;
    assert.ok(file && existsSync(s.spool.blobs.pathOf(file)));

    s.clock.t = T0 + 7 * DAY - 1;
    assert.equal((await s.retention.runOnce()).removed, 0, 'nothing is due a millisecond early');

    s.clock.t = T0 + 7 * DAY + 1;
    const run = await s.retention.runOnce();
    assert.equal(run.removed, 2);
    assert.equal(run.files, 1);
    assert.equal(s.exists(delivered.id), false);
    assert.equal(s.exists(large.id), false);
    assert.equal(existsSync(s.spool.blobs.pathOf(file)), false, 'the message file went with the row');
    for (const kept of [dead, mixed, recent, deadAndDelivered]) assert.ok(s.exists(kept.id));
    assert.equal((s.spool.db.prepare('SELECT COUNT(*) AS n FROM deliveries WHERE message_id IN (?, ?)').get(delivered.id, large.id) as { n: number }).n, 0);
    assert.equal((s.spool.db.prepare('SELECT COUNT(*) AS n FROM delivery_recipients WHERE message_id IN (?, ?)').get(delivered.id, large.id) as { n: number }).n, 0);

    s.clock.t = T0 + 30 * DAY + 1;
    await s.retention.runOnce();
    assert.equal(s.exists(dead.id), false);
    assert.equal(s.exists(recent.id), false);
    assert.equal(s.exists(deadAndDelivered.id), false);
    assert.ok(s.exists(mixed.id), 'a message with a pending delivery is never removed');
    assert.deepEqual(s.removed, [2, 3]);
  } finally {
    await s.close();
  }
});

test('disk use goes back down after a burst and stays flat under steady traffic', async () => {
  const s = setup(4096);
  try {
    assert.equal(s.spool.db.pragma('auto_vacuum', { simple: true }), 2, 'a new spool has incremental auto-vacuum');
    const body = `Subject: load\r\n\r\n${'y'.repeat(3000)}`;
    // Concurrent accepts share a commit (group commit), which keeps the test quick.
    const burst = async (n: number) => {
      for (let i = 0; i < n; i += 100) await Promise.all(Array.from({ length: Math.min(100, n - i) }, () => s.accept(['delivered'], body)));
    };
    const pages = () => s.spool.db.pragma('page_count', { simple: true }) as number;
    const fileSize = () => statSync(join(s.dir, 'spool.db')).size;

    await burst(20);
    s.clock.t += 8 * DAY;
    await s.retention.runOnce();
    const baseline = pages();

    await burst(1500);
    const peak = pages();
    assert.ok(peak > baseline * 10, `the burst grew the file (${baseline} → ${peak} pages)`);
    s.clock.t += 8 * DAY;
    const run = await s.retention.runOnce();
    assert.equal(run.removed, 1500);
    assert.ok(run.freedPages > 0);
    assert.equal(s.spool.db.pragma('freelist_count', { simple: true }), 0, 'every free page was handed back');
    assert.ok(pages() < peak / 5, `the file shrank back (${peak} → ${pages()} pages)`);
    assert.equal(fileSize(), pages() * (s.spool.db.pragma('page_size', { simple: true }) as number));
    assert.equal(statSync(join(s.dir, 'spool.db-wal')).size, 0, 'the WAL was reset');

    // Steady traffic: the same load every "day", retention each day; the size settles instead of growing.
    const sizes: number[] = [];
    for (let day = 0; day < 6; day++) {
      await burst(100);
      s.clock.t += DAY;
      await s.retention.runOnce();
      sizes.push(pages());
    }
    // Days 0–6 accumulate a week of mail; from then on each day's removal matches each day's intake.
    s.clock.t += 2 * DAY;
    for (let day = 0; day < 4; day++) {
      await burst(100);
      s.clock.t += DAY;
      await s.retention.runOnce();
      sizes.push(pages());
    }
    const settled = sizes.slice(-4);
    assert.ok(Math.max(...settled) <= Math.min(...settled) * 1.1, `flat: ${sizes.join(', ')}`);
  } finally {
    await s.close();
  }
});

test('a spool from before this version gets the new indexes filled in and auto-vacuum turned on', async () => {
  const dir = tempDir();
  const path = join(dir, 'spool.db');
  try {
    const old = new Database(path);
    old.pragma('journal_mode = WAL');
    old.exec(MIGRATIONS[0]!);
    old.pragma('user_version = 1');
    old.prepare(`INSERT INTO messages (id, received_at, source, mail_from, rcpt_to, size, raw) VALUES ('m1', ?, 'smtp', 'a@x.test', '["U@In.test"]', 5, X'4869')`).run(T0);
    old.prepare(`INSERT INTO deliveries (id, message_id, route, recipients, status, next_attempt_at, created_at, updated_at, finished_at) VALUES ('d1', 'm1', 'r', '[{"address":"U@In.test","key":"k9"}]', 'dead', 0, 0, 0, ?)`).run(T0);
    old.prepare(`INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code, outcome, error) VALUES ('d1', 1, ?, 12, 410, 'dead', 'gone')`).run(T0);
    assert.equal(old.pragma('auto_vacuum', { simple: true }), 0);
    old.close();

    const spool = new Spool({ path, inlineMaxBytes: 100, clock: { now: () => T0 } });
    try {
      assert.equal(spool.db.pragma('auto_vacuum', { simple: true }), 2);
      assert.equal(spool.db.pragma('user_version', { simple: true }), MIGRATIONS.length);
      const byRecipient = spool.queries.listMessages({ recipient: 'u@in.test', status: 'dead' }, { limit: 10 });
      assert.deepEqual(byRecipient.messages.map((m) => m.id), ['m1']);
      assert.deepEqual(spool.queries.listMessages({ key: 'k9' }, { limit: 10 }).messages.map((m) => m.id), ['m1']);
      assert.equal((spool.db.prepare(`SELECT received_at FROM deliveries WHERE id = 'd1'`).get() as { received_at: number }).received_at, T0);
      // Attempts name their route (migration 5), so route health counts the old ones too.
      const [health] = spool.queries.routeHealth(['r'], T0 - 1);
      assert.deepEqual({ attempts: health!.window.attempts, dead: health!.window.dead, max: health!.window.latency_ms.max, error: health!.last_failure?.error }, { attempts: 1, dead: 1, max: 12, error: 'gone' });
    } finally {
      await spool.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** A schema-1 spool (no auto-vacuum) of `n` messages of 4 KiB each, as a mailhook before 010ddb6 left it. */
function oldSpool(path: string, n: number): void {
  const old = new Database(path);
  old.pragma('journal_mode = WAL');
  old.exec(MIGRATIONS[0]!);
  old.pragma('user_version = 1');
  const insert = old.prepare(`INSERT INTO messages (id, received_at, source, mail_from, rcpt_to, size, raw) VALUES (?, ?, 'smtp', 'a@x.test', '["u@in.test"]', 4096, ?)`);
  old.transaction(() => {
    for (let i = 0; i < n; i++) insert.run(`m${i}`, T0, Buffer.alloc(4096, i % 251));
  })();
  old.pragma('wal_checkpoint(TRUNCATE)');
  old.close();
}

function capture(): { log: ReturnType<typeof createLogger>; lines: Array<{ level: number; msg: string; [k: string]: unknown }> } {
  const lines: Array<{ level: number; msg: string }> = [];
  const log = createLogger({ level: 'info', destination: new Writable({ write: (c: Buffer, _e, cb) => (lines.push(JSON.parse(c.toString())), cb()) }) });
  return { log, lines };
}

test('upgrading an old spool says so, and the one-time rebuild leaves no WAL as big as the spool behind', async () => {
  const dir = tempDir();
  const path = join(dir, 'spool.db');
  try {
    oldSpool(path, 2000);
    const { log, lines } = capture();
    const spool = new Spool({ path, inlineMaxBytes: 100, clock: { now: () => T0 }, log });
    try {
      assert.equal(spool.db.pragma('auto_vacuum', { simple: true }), 2);
      assert.deepEqual(lines.map((l) => l.msg.replace(/\(.*?\)/, '(…)')), [
        `upgrading the spool's schema from 1 to ${MIGRATIONS.length}; it is served when this is done`,
        'spool schema upgraded',
        'rebuilding the spool once for incremental vacuum (…); it is served when this is done',
        'spool rebuilt for incremental vacuum',
      ]);
      assert.ok(statSync(path).size > 8_000_000, 'the messages are there');
      // The rebuild wrote the whole database through the WAL; it is cut back, not left at the spool's size.
      assert.ok(statSync(`${path}-wal`).size < 1_000_000, `WAL ${statSync(`${path}-wal`).size} bytes`);
      assert.equal((spool.db.prepare('SELECT COUNT(*) FROM messages').pluck().get() as number), 2000);
    } finally {
      await spool.close();
    }
    const again = capture();
    const reopened = new Spool({ path, inlineMaxBytes: 100, clock: { now: () => T0 }, log: again.log });
    await reopened.close();
    assert.deepEqual(again.lines, [], 'an up-to-date spool opens without a word');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('without room for the rebuild an old spool is upgraded and served, the rebuild put off with a warning', async () => {
  const dir = tempDir();
  const path = join(dir, 'spool.db');
  try {
    oldSpool(path, 500);
    const size = statSync(path).size;
    const { log, lines } = capture();
    const asked: string[] = [];
    const diskFree = (d: string) => (asked.push(d), 2 * size); // short of twice the spool plus the WAL's limit
    const spool = new Spool({ path, inlineMaxBytes: 100, clock: { now: () => T0 }, log, diskFree });
    try {
      assert.deepEqual(asked, [dir]);
      assert.equal(spool.db.pragma('user_version', { simple: true }), MIGRATIONS.length, 'upgraded');
      assert.equal(spool.db.pragma('auto_vacuum', { simple: true }), 0, 'not rebuilt');
      const warning = lines.find((l) => l.level === 40)!;
      assert.match(warning.msg, new RegExp(`^spool not rebuilt for incremental vacuum: the rebuild needs [0-9.]+ MiB free beside ${path.replace(/[.]/g, '\\.')}, [0-9.]+ MiB is; the spool works as before, but its file does not shrink when retention removes messages; free space and restart mailhook to rebuild it$`));
      assert.equal(warning.freeBytes, 2 * size);
      const m = await spool.accept({
        source: 'smtp',
        envelope: { mailFrom: 'a@x.test', rcptTo: ['u@in.test'], remoteAddress: '127.0.0.1', helo: 'c', tls: null },
        deliveries: [{ route: 'r', recipients: [{ address: 'u@in.test', key: null }], status: 'pending' }],
        body: (async function* () { yield Buffer.from('Subject: after\r\n\r\nhi\r\n'); })(),
        maxBytes: 10_000_000,
      });
      assert.ok(spool.getMessage(m.id), 'and it takes new mail');
    } finally {
      await spool.close();
    }
    // With room the next start rebuilds it.
    const later = new Spool({ path, inlineMaxBytes: 100, clock: { now: () => T0 }, diskFree: () => 1e12 });
    assert.equal(later.db.pragma('auto_vacuum', { simple: true }), 2);
    await later.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the timer runs a pass at start on its own', async () => {
  const s = setup();
  try {
    const m = await s.accept(['delivered']);
    s.clock.t = T0 + 8 * DAY;
    s.retention.start();
    await until(() => !s.exists(m.id), 5000, 'the pass start() schedules');
    assert.deepEqual(s.removed, [1]);
    await s.retention.stop();
  } finally {
    await s.close();
  }
});

test('stop() during a pass ends it between batches and resolves once it has settled', async () => {
  const s = setup();
  try {
    for (let i = 0; i < 120; i++) await s.accept(['delivered']);
    s.clock.t = T0 + 8 * DAY;
    let stopped: Promise<void> | undefined;
    let left = -1;
    let firstBatch!: () => void;
    const reached = new Promise<void>((r) => (firstBatch = r));
    const retention = new Retention(
      { db: s.spool.db, blobs: s.spool.blobs, clock: s.clock, log, onRemoved: (n) => s.removed.push(n), onBatch: () => {
        // After the first batch of 50: stop while the pass waits for its next turn (a microtask: the batch's
        // synchronous part has returned by then, as a SIGTERM's handler would find it).
        if (left >= 0) return;
        left = count(s);
        queueMicrotask(() => {
          stopped = retention.stop();
          firstBatch();
        });
      } },
      { delivered: 7 * DAY, dead: 30 * DAY, interval: DAY, batchSize: 50 },
    );
    retention.start();
    await reached;
    await stopped;
    assert.equal(left, 70);
    assert.deepEqual(s.removed, [50], 'the pass had finished (and reported) when stop() resolved');
    assert.equal(count(s), 70, 'no batch after stop()');
  } finally {
    await s.close();
  }
});

function count(s: ReturnType<typeof setup>): number {
  return (s.spool.db.prepare('SELECT count(*) AS n FROM messages').get() as { n: number }).n;
}

test('the spool size counts message files by their recorded sizes, from an index (no stat of each file per scrape)', async () => {
  const s = setup(1024);
  const path = join(s.dir, 'spool.db');
  const dbFiles = () => [path, `${path}-wal`, `${path}-shm`].reduce((n, f) => n + (existsSync(f) ? statSync(f).size : 0), 0);
  try {
    assert.equal(s.spool.diskUsage() - dbFiles(), 0, 'no message files yet');
    await s.accept(['delivered'], 'Subject: small\r\n\r\nx');
    const m = await s.accept(['delivered'], 'Subject: big\r\n\r\n' + 'x'.repeat(50_000));
    const file = (s.spool.db.prepare('SELECT raw_file FROM messages WHERE id = ?').get(m.id) as { raw_file: string | null }).raw_file;
    assert.ok(file, 'stored as a file');
    assert.equal(statSync(s.spool.blobs.pathOf(file)).size, m.size);
    assert.equal(s.spool.diskUsage() - dbFiles(), m.size, 'the database files plus the message file');
    // The row's size is what counts, not a stat() of the file (made to differ here: the file cut short).
    truncateSync(s.spool.blobs.pathOf(file), 10);
    assert.equal(s.spool.diskUsage() - dbFiles(), m.size);
    const plan = (s.spool.db.prepare('EXPLAIN QUERY PLAN SELECT COALESCE(SUM(size), 0) FROM messages INDEXED BY messages_file_size WHERE raw_file IS NOT NULL').all() as Array<{ detail: string }>).map((r) => r.detail);
    assert.deepEqual(plan, ['SCAN messages USING COVERING INDEX messages_file_size']);
    s.spool.queries.deleteMessage(m.id, true);
    assert.equal(s.spool.diskUsage() - dbFiles(), 0, 'the file is gone');
  } finally {
    await s.close();
  }
});
