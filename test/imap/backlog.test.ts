// A 5,000-message backlog against Dovecot: bounded batches, oldest first, every message once, well under a minute.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startDovecot, dovecotSkip, type Dovecot } from '../helpers/dovecot.js';
import { startTestApp, until } from '../helpers/app.js';
import { count, imapBlock, mailboxYaml, message, routesYaml } from './setup.js';

const skip = dovecotSkip();
const N = 5000;
let dovecot: Dovecot;
before(async () => {
  if (!skip) dovecot = await startDovecot({ users: ['backlog'] });
});
after(async () => {
  await dovecot?.close();
});

test(`a ${N}-message backlog is taken in bounded batches, oldest first, each message once`, { skip }, async (t) => {
  dovecot.deliverToMaildir(Array.from({ length: N }, (_, i) => message(`b${i}`, { to: 'desk@in.test', messageId: `backlog-${i}@x`, body: `message ${i} ${'x'.repeat(200)}` })), 'backlog');
  const t0 = Date.now();
  const app = await startTestApp({ routes: routesYaml('http://127.0.0.1:9/unused'), extra: imapBlock(mailboxYaml(dovecot, 'backlog', { after_delivery: 'delete', batch_size: 100 })) });
  try {
    const bridge = app.mailboxes.bridges[0]!;
    await until(() => count(app.spool.db) === N, 50_000, `${N} messages in the spool`);
    await until(() => bridge.status.state === 'idle', 10_000, 'idle after the backlog');
    const ms = Date.now() - t0;
    t.diagnostic(`${N} messages taken and expunged in ${ms} ms (${Math.round(N / (ms / 1000))}/s)`);
    const rows = app.spool.db.prepare(`SELECT json_extract(meta, '$.uid') AS uid, json_extract(meta, '$.messageId') AS mid FROM messages ORDER BY rowid`).all() as Array<{ uid: number; mid: string }>;
    assert.equal(new Set(rows.map((r) => r.mid)).size, N, 'each message once');
    // Oldest first: the first batch holds UIDs 1..100, the last the 100 highest.
    assert.deepEqual(rows.slice(0, 100).map((r) => r.uid).sort((a, b) => a - b), Array.from({ length: 100 }, (_, i) => i + 1));
    assert.deepEqual(rows.slice(-100).map((r) => r.uid).sort((a, b) => a - b), Array.from({ length: 100 }, (_, i) => N - 99 + i));
    // Bounded: no FETCH asked for more than batch_size messages.
    const batches = app.logs.map((l) => JSON.parse(l) as { msg?: string; count?: number }).filter((l) => l.msg === 'batch fetched');
    assert.ok(batches.length >= N / 100, `${batches.length} batches`);
    assert.ok(batches.every((b) => typeof b.count === "number" && b.count >= 1 && b.count <= 100), JSON.stringify(batches.slice(0, 3)));
    assert.deepEqual(await dovecot.list('INBOX', 'backlog'), []);
  } finally {
    await app.close();
  }
});
