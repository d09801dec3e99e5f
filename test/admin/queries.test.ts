// Spool queries: keyset pagination matches a plain filter over every row; 100,000 messages are listed through indexes.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { Spool } from '../../src/spool/spool.js';
import { ROUTES_IN_SPOOL_SQL, ROUTE_HEALTH_SQL, buildListQuery, decodeCursor, encodeCursor, headerSubject, latencyOf, type MessageFilter } from '../../src/spool/queries.js';
import { expiredMessagesQuery } from '../../src/spool/retention.js';
import { tempDir } from '../helpers/app.js';

/** What the accept path writes beside each delivery: its recipients, lower-cased, for recipient and key search. */
function indexRecipients(spool: Spool): void {
  spool.db.exec(
    `INSERT INTO delivery_recipients (delivery_id, message_id, received_at, address, key)
     SELECT d.id, d.message_id, d.received_at, lower(json_extract(j.value, '$.address')), json_extract(j.value, '$.key')
     FROM deliveries d, json_each(d.recipients) j`,
  );
}

const BASE = 1_700_000_000_000;

function openSpool(dir: string): Spool {
  return new Spool({ path: join(dir, 'spool.db'), inlineMaxBytes: 4096, clock: { now: () => BASE } });
}

/** Plans of a query: the detail lines of EXPLAIN QUERY PLAN. */
function plan(spool: Spool, sql: string, params: unknown[]): string[] {
  return (spool.db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(...params) as Array<{ detail: string }>).map((r) => r.detail);
}

describe('list query on 100,000 messages', () => {
  let dir: string;
  let spool: Spool;
  before(() => {
    dir = tempDir();
    spool = openSpool(dir);
    // Seeded in one transaction with SQL; delivery_recipients is filled as the accept path fills it.
    spool.db.transaction(() => {
      spool.db
        .prepare(
          `WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < 99999)
           INSERT INTO messages (id, received_at, source, mail_from, rcpt_to, size, raw)
           SELECT printf('%010d%012d', i, i), ? + i * 1000, 'smtp', 'sender' || (i % 100) || '@ex.test', json_array('user' || (i % 1000) || '@in.test'), 11, CAST('Subject: hi' AS BLOB) FROM seq`,
        )
        .run(BASE);
      spool.db
        .prepare(
          `INSERT INTO deliveries (id, message_id, route, recipients, status, attempts, next_attempt_at, created_at, updated_at, finished_at, received_at)
           SELECT 'd' || id, id, CASE WHEN received_at % 3000 = 0 THEN 'a' ELSE 'b' END,
                  json_array(json_object('address', json_extract(rcpt_to, '$[0]'), 'key', 'k' || ((received_at - ?) / 1000 % 50))),
                  CASE WHEN received_at % 97000 = 0 THEN 'dead' ELSE 'delivered' END, 1, received_at, received_at, received_at, received_at, received_at
           FROM messages`,
        )
        .run(BASE);
      indexRecipients(spool);
    })();
  });
  after(async () => {
    await spool.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const filters: MessageFilter[] = [
    {},
    { status: 'dead' },
    { route: 'a' },
    { route: 'a', status: 'dead' },
    { recipient: 'User5@in.test' },
    { key: 'k3' },
    { key: 'k3', status: 'dead', route: 'b' },
    { sender: 'sender5@ex.test' },
    { sender: 'sender5@ex.test', status: 'dead' },
    { recipient: 'user5@in.test', status: 'dead' },
    { since: BASE + 5000, until: BASE + 90_000_000 },
    { route: 'b', since: BASE + 5000, until: BASE + 90_000_000 },
  ];

  for (const filter of filters) {
    test(`${JSON.stringify(filter)} walks an index in order, with no sort and no full scan`, () => {
      for (const cursor of [undefined, { receivedAt: BASE + 50_000_000, id: '0000050000000000050000' }]) {
        const q = buildListQuery(filter, cursor, 51);
        const lines = plan(spool, q.sql, q.params);
        const driving = lines[0] ?? '';
        // SCAN … USING INDEX with no filter at all: the index read in order, stopping at the limit.
        assert.match(driving, Object.keys(filter).length === 0 && !cursor ? /^SCAN x USING (COVERING )?INDEX messages_received_id$/ : /^SEARCH x USING (COVERING )?INDEX \w+ \(/, `${lines.join(' | ')}`);
        if (cursor) assert.match(driving, /\(received_at,(message_)?id\)<\(\?,\?\)/, 'the cursor is an index range');
        for (const line of lines) {
          assert.doesNotMatch(line, /^SCAN \w+$/, `full table scan: ${lines.join(' | ')}`);
          assert.doesNotMatch(line, /TEMP B-TREE FOR ORDER BY/, `sorts: ${lines.join(' | ')}`);
        }
      }
    });
  }

  test('a page comes back right: 50 newest dead messages, then the next page after the cursor', () => {
    const first = spool.queries.listMessages({ status: 'dead' }, { limit: 50 });
    assert.equal(first.messages.length, 50);
    assert.ok(first.messages.every((m) => m.status === 'dead'));
    assert.ok(first.next_cursor);
    const next = spool.queries.listMessages({ status: 'dead' }, { limit: 50, cursor: decodeCursor(first.next_cursor!) });
    assert.ok(next.messages[0]!.received_at < first.messages[49]!.received_at);
    const total = (spool.db.prepare(`SELECT COUNT(*) AS n FROM deliveries WHERE status = 'dead'`).get() as { n: number }).n;
    assert.equal(first.messages.length + next.messages.length, Math.min(100, total));
    assert.equal(first.messages[0]!.subject, 'hi');
  });

  test('the retention and health queries use indexes too', () => {
    const health = plan(spool, ROUTE_HEALTH_SQL, [BASE]);
    assert.match(health[0]!, /^SEARCH attempts USING COVERING INDEX attempts_window \(started_at>\?\)$/, health.join(' | '));
    const expired = plan(spool, expiredMessagesQuery(), [{ deliveredCut: BASE, deadCut: BASE, limit: 500 }] as unknown[]);
    assert.ok(expired.some((l) => /deliveries_finished/.test(l)), expired.join(' | '));
    for (const line of expired) assert.doesNotMatch(line, /^SCAN \w+$/, expired.join(' | '));
  });

  test('the routes in the spool (each replay asks) are found one index seek per route, not by walking every delivery', () => {
    assert.deepEqual(spool.queries.routesInSpool(), ['a', 'b']);
    const lines = plan(spool, ROUTES_IN_SPOOL_SQL, []);
    assert.ok(lines.some((l) => /^SEARCH deliveries USING COVERING INDEX \w+ \(route>\?\)$/.test(l)), lines.join(' | '));
    for (const line of lines) assert.doesNotMatch(line, /^SCAN deliveries/, lines.join(' | '));
  });
});

describe('keyset pagination agrees with a plain filter', () => {
  let dir: string;
  let spool: Spool;
  interface Row { id: string; at: number; from: string; deliveries: Array<{ route: string; status: string; rcpt: string; key: string | null }> }
  const rows: Row[] = [];
  before(() => {
    dir = tempDir();
    spool = openSpool(dir);
    let seed = 42;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return Math.floor(seed / 65536) % n; // the low bits of this generator are not random
    };
    const insertM = spool.db.prepare(`INSERT INTO messages (id, received_at, source, mail_from, rcpt_to, size, raw) VALUES (?, ?, 'smtp', ?, '[]', 1, X'00')`);
    const insertD = spool.db.prepare(`INSERT INTO deliveries (id, message_id, route, recipients, status, next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 0, 0, 0)`);
    spool.db.transaction(() => {
      for (let i = 0; i < 300; i++) {
        // Few distinct times, so many messages share a received_at and the id decides the order.
        const at = BASE + rnd(40) * 1000;
        const id = `m${String(i).padStart(4, '0')}${'abcdefghij'[rnd(10)]}`;
        const from = ['a@x.test', 'B@x.test', ''][rnd(3)]!;
        insertM.run(id, at, from);
        const row: Row = { id, at, from, deliveries: [] };
        for (const route of ['r1', 'r2', 'r3'].slice(0, 1 + rnd(3))) {
          const status = ['pending', 'delivered', 'dead'][rnd(3)]!;
          const rcpt = `u${rnd(4)}@in.test`;
          const key = rnd(2) ? `k${rnd(3)}` : null;
          insertD.run(`${id}${route}`, id, route, JSON.stringify([{ address: rcpt, key }]), status);
          row.deliveries.push({ route, status, rcpt, key });
        }
        rows.push(row);
      }
      indexRecipients(spool);
    })();
  });
  after(async () => {
    await spool.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const cases: MessageFilter[] = [
    {},
    { status: 'dead' },
    { route: 'r2' },
    { route: 'r3', status: 'pending' },
    { recipient: 'U1@IN.test' },
    { key: 'k2' },
    { key: 'k1', route: 'r2', status: 'delivered' },
    { sender: 'b@x.test' },
    { sender: '' },
    { sender: 'a@x.test', status: 'dead', recipient: 'u0@in.test' },
    { since: BASE + 10_000, until: BASE + 30_000 },
    { status: 'dead', until: BASE + 20_000 },
  ];
  for (const filter of cases) {
    test(`pages of 7 for ${JSON.stringify(filter)} are exactly the filtered rows, newest first`, () => {
      const expected = rows
        .filter((r) => filter.sender === undefined || r.from.toLowerCase() === filter.sender.toLowerCase())
        .filter((r) => filter.since === undefined || r.at >= filter.since)
        .filter((r) => filter.until === undefined || r.at < filter.until)
        .filter((r) =>
          r.deliveries.some(
            (d) =>
              (filter.status === undefined || d.status === filter.status) &&
              (filter.route === undefined || d.route === filter.route) &&
              (filter.recipient === undefined || d.rcpt === filter.recipient.toLowerCase()) &&
              (filter.key === undefined || d.key === filter.key),
          ),
        )
        .sort((a, b) => b.at - a.at || (a.id < b.id ? 1 : -1))
        .map((r) => r.id);
      assert.ok(expected.length > 0, 'the case selects something');
      const got: string[] = [];
      let cursor: string | null = null;
      for (let i = 0; i < 100; i++) {
        const page: { messages: Array<{ id: string }>; next_cursor: string | null } = spool.queries.listMessages(filter, { limit: 7, cursor: cursor ? decodeCursor(cursor) : undefined });
        assert.ok(page.messages.length <= 7);
        got.push(...page.messages.map((m) => m.id));
        cursor = page.next_cursor;
        if (!cursor) break;
      }
      assert.deepEqual(got, expected);
    });
  }
});

test('cursor round-trips and refuses what the server did not hand out', () => {
  const c = { receivedAt: BASE, id: 'abc123' };
  assert.deepEqual(decodeCursor(encodeCursor(c)), c);
  assert.throws(() => decodeCursor('garbage'), /cursor is not one this server handed out/);
  assert.throws(() => decodeCursor(Buffer.from('1:ABC').toString('base64url')), /cursor/);
});

test('subject from the head: folded, RFC 2047 B and Q words, raw UTF-8, absent', () => {
  assert.equal(headerSubject(Buffer.from('From: a\r\nSubject: hello\r\n world\r\n\r\nSubject: body')), 'hello world');
  assert.equal(headerSubject(Buffer.from('Subject: =?UTF-8?B?w6lsw6h2ZQ==?= =?utf-8?q?_caf=C3=A9?= x\r\n\r\n')), 'élève café x');
  assert.equal(headerSubject(Buffer.from('Subject: =?ISO-8859-1?Q?gr=FC=DFe?=\n\n')), 'grüße');
  assert.equal(headerSubject(Buffer.from('Subject: naïve\r\n\r\n', 'utf8')), 'naïve');
  assert.equal(headerSubject(Buffer.from('From: a\r\n\r\nSubject: in the body')), null);
});

test('route health counts and ranks in SQL what a sort of every attempt in the window gives', async () => {
  const dir = tempDir();
  const spool = new Spool({ path: join(dir, 'spool.db'), inlineMaxBytes: 4096, clock: { now: () => BASE } });
  try {
    const db = spool.db;
    const insertMessage = db.prepare(`INSERT INTO messages (id, received_at, source, mail_from, rcpt_to, size, raw) VALUES (?, ?, 'smtp', 'a@x.test', '[]', 1, x'00')`);
    const insertDelivery = db.prepare(`INSERT INTO deliveries (id, message_id, route, recipients, status, attempts, next_attempt_at, created_at, updated_at, received_at) VALUES (?, ?, ?, '[]', 'delivered', 1, 0, 0, 0, ?)`);
    const insertAttempt = db.prepare(`INSERT INTO attempts (delivery_id, route, attempt, started_at, duration_ms, status_code, outcome, error) VALUES (?, ?, 1, ?, ?, ?, ?, ?)`);
    const since = BASE - 3_600_000;
    const expected = new Map<string, { outcomes: string[]; ms: number[]; dropped: number; lastDelivered: number | null; lastFailure: { at: number; code: number | null; error: string | null } | null }>();
    let seed = 7;
    const rand = (n: number) => (seed = (seed * 1103515245 + 12345) % 2147483648) % n;
    db.transaction(() => {
      for (let i = 0; i < 3000; i++) {
        const route = ['a', 'b', 'c'][rand(3)]!;
        const at = since - 600_000 + rand(4_200_000); // some before the window
        const outcome = ['delivered', 'delivered', 'delivered', 'retry', 'dead', 'dropped'][rand(6)]!;
        const ms = rand(5) === 0 ? rand(30_000) : 20 + rand(40); // a few slow ones among many alike
        const code = outcome === 'delivered' ? 200 : outcome === 'dead' ? 400 : null;
        const error = outcome === 'delivered' ? null : outcome === 'dropped' ? 'dropped: automatic message (auto-submitted)' : `e${i}`;
        insertMessage.run(`m${i}`, at);
        insertDelivery.run(`d${i}`, `m${i}`, route, at);
        insertAttempt.run(`d${i}`, route, at, ms, code, outcome, error);
        if (at < since) continue;
        const e = expected.get(route) ?? { outcomes: [], ms: [], dropped: 0, lastDelivered: null, lastFailure: null };
        expected.set(route, e);
        // A drop made no request: counted apart, never an attempt, a latency or a failure.
        if (outcome === 'dropped') {
          e.dropped++;
          continue;
        }
        e.outcomes.push(outcome);
        e.ms.push(ms);
        if (outcome === 'delivered') e.lastDelivered = Math.max(e.lastDelivered ?? 0, at);
        else if (!e.lastFailure || at >= e.lastFailure.at) e.lastFailure = { at, code, error };
        expected.set(route, e);
      }
      // A drop in the same millisecond as a route's last failure, recorded after it, is still not that failure.
      const a = expected.get('a')!;
      insertMessage.run('mdrop', a.lastFailure!.at);
      insertDelivery.run('ddrop', 'mdrop', 'a', a.lastFailure!.at);
      insertAttempt.run('ddrop', 'a', a.lastFailure!.at, 1, null, 'dropped', 'dropped: automatic message (auto-submitted)');
      a.dropped++;
    })();
    const health = spool.queries.routeHealth(['a', 'b', 'c', 'idle'], since);
    assert.deepEqual(health.map((h) => h.route), ['a', 'b', 'c', 'idle']);
    for (const h of health) {
      const e = expected.get(h.route);
      if (!e) {
        assert.equal(h.window.attempts, 0);
        assert.deepEqual(h.window.latency_ms, { avg: null, p50: null, p95: null, max: null });
        continue;
      }
      const sorted = [...e.ms].sort((x, y) => x - y);
      const pick = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
      const delivered = e.outcomes.filter((o) => o === 'delivered').length;
      assert.deepEqual(h.window, {
        attempts: e.outcomes.length,
        delivered,
        retried: e.outcomes.filter((o) => o === 'retry').length,
        dead: e.outcomes.filter((o) => o === 'dead').length,
        dropped: e.dropped,
        success_rate: delivered / e.outcomes.length,
        latency_ms: { avg: Math.round(sorted.reduce((s, v) => s + v, 0) / sorted.length), p50: pick(0.5), p95: pick(0.95), max: sorted[sorted.length - 1] },
      }, h.route);
      assert.equal(h.last_delivered_at, e.lastDelivered);
      assert.deepEqual(h.last_failure, e.lastFailure && { at: e.lastFailure.at, status_code: e.lastFailure.code, error: e.lastFailure.error });
    }
    assert.deepEqual(latencyOf(new Map(), 0), { avg: null, p50: null, p95: null, max: null });
  } finally {
    await spool.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
