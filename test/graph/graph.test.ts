// The Microsoft Graph inbox against the local Graph stand-in: delta pages and tokens, raw MIME, mark read /
// delete / move only after the spool commit, 429/503 Retry-After, token replacement, restarts without duplicates.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { GraphStandin } from '../helpers/graph-standin.js';
import { startTestApp, tempDir, until, type TestApp } from '../helpers/app.js';
import type { GraphInbox } from '../../src/imap/graph/inbox.js';
import { count, message, routesYaml } from '../imap/setup.js';
import { MailhookError } from '../../src/core/errors.js';
import type { MailboxIngest } from '../../src/imap/ingest.js';

let g: GraphStandin;
before(async () => {
  g = await new GraphStandin().start();
});
after(() => g.stop());

/** claim defaults to none here (ids stay put, so tests can follow them); the move-claim tests pass 'auto'. */
function graphYaml(name: string, opts: { folder?: string; after?: string; unmatched?: string; user?: string; claim?: string; claimTimeout?: number } = {}): string {
  return `
  - name: ${name}
    inbox_method: microsoft_graph
    claim: ${opts.claim ?? 'none'}
    claim_timeout: ${opts.claimTimeout ?? 300}
    user: ${opts.user ?? g.user}
    mailbox: ${opts.folder ?? 'inbox'}
    after_delivery: ${JSON.stringify(opts.after ?? 'flag')}
    unmatched: ${JSON.stringify(opts.unmatched ?? 'leave')}
    reconnect_delay_ms: 100
    reconnect_max_delay_ms: 400
    inbox_options:
      tenant_id: tenant-1
      client_id: graph-app
      client_secret: graph-secret
      poll_interval: 1
      azure_ad_endpoint: ${g.url}
      graph_endpoint: ${g.url}
`;
}

async function start(entries: string[], dir = tempDir()): Promise<TestApp> {
  return startTestApp({ routes: routesYaml('http://127.0.0.1:9/unused'), extra: `imap:${entries.join('')}`, dir });
}
const inbox = (app: TestApp, i = 0) => app.mailboxes.bridges[i] as GraphInbox;
const deltaRequests = () => g.requests.filter((r) => r.path.endsWith('/messages/delta'));

test('initial delta in @odata.nextLink pages, then the delta token; unread messages taken and marked read after commit', async () => {
  const read = [0, 1, 2].map((i) => g.add(message(`old${i}`, { to: 'desk@in.test', messageId: `old${i}@x` }), { isRead: true }));
  const ids = Array.from({ length: 120 }, (_, i) => g.add(message(`m${i}`, { to: 'desk@in.test', messageId: `m${i}@x` })));
  const before = g.requests.length;
  const dir = tempDir();
  const app = await start([graphYaml('graph-a')], dir);
  try {
    await until(() => count(app.spool.db) === 120, 15_000, '120 messages in the spool');
    await until(() => ids.every((id) => g.messages.get(id)?.isRead), 5000, 'every taken message marked read');
    assert.ok(read.every((id) => g.messages.get(id)?.isRead), 'read messages are left as they were');
    const first = deltaRequests().filter((r) => g.requests.indexOf(r) >= before);
    assert.equal(first[0]!.query.get('$select'), 'id,isRead,internetMessageId,receivedDateTime');
    assert.equal(first[0]!.prefer, 'odata.maxpagesize=50');
    assert.deepEqual(first.slice(0, 3).map((r) => [r.query.has('$skiptoken'), r.query.has('$deltatoken')]), [[false, false], [true, false], [true, false]], '123 messages: three pages');
    // Every taken message: its raw MIME fetched, then one PATCH isRead.
    assert.equal(g.requests.filter((r) => r.method === 'PATCH').length, 120);
    const key = (app.spool.db.prepare(`SELECT dedupe_key, source FROM messages LIMIT 1`).get() as { dedupe_key: string; source: string });
    assert.equal(key.source, 'graph');
    assert.match(key.dedupe_key, /^graph:graph-a:AAMkAD/);

    // New mail arrives: the next poll (1 s) asks with the delta token and gets only the change.
    await until(() => deltaRequests().some((r) => r.query.has('$deltatoken')), 5000, 'a poll with the delta token');
    const t0 = Date.now();
    g.add(message('late', { to: 'desk@in.test', messageId: 'late@x' }));
    await until(() => count(app.spool.db) === 121, 5000, 'the new message');
    const took = Date.now() - t0;
    assert.ok(took < 2500, `took ${took} ms with poll_interval 1 s`);
    assert.equal(inbox(app).status.state === 'polling' || inbox(app).status.state === 'connected', true);
  } finally {
    await app.close();
  }
  // A restart continues from the delta link saved in the spool: no full pass; mail that arrived while it was
  // down is taken from the changes.
  const whileDown = g.add(message('down', { to: 'desk@in.test', messageId: 'down@x' }));
  const beforeRestart = g.requests.length;
  const again = await start([graphYaml('graph-a')], dir);
  try {
    assert.equal(inbox(again).status.details.delta_link_restored, true);
    await until(() => g.messages.get(whileDown)?.isRead === true, 5000, 'the message that arrived while stopped');
    await until(() => inbox(again).status.state === 'polling', 5000, 'a finished pass');
    const after = deltaRequests().filter((r) => g.requests.indexOf(r) >= beforeRestart);
    assert.ok(after.length > 0 && after.every((r) => r.query.has('$deltatoken')), `every delta request after the restart used the saved token: ${after.map((r) => [...r.query.keys()].join('+')).join(', ')}`);
    assert.equal(count(again.spool.db), 122);
  } finally {
    await again.close();
  }
  // The saved token expires (410 Gone, SyncStateNotFound): a full pass, without loss or a second copy. A message
  // committed but never marked (as after a crash between commit and PATCH) is marked now, not stored again.
  g.expireDeltaTokens();
  g.messages.get(ids[7]!)!.isRead = false;
  const expired = g.add(message('expired', { to: 'desk@in.test', messageId: 'expired@x' }));
  const beforeExpiry = g.requests.length;
  const third = await start([graphYaml('graph-a')], dir);
  try {
    await until(() => g.messages.get(expired)?.isRead === true && g.messages.get(ids[7]!)?.isRead === true, 5000, 'the full pass after the expired token');
    await until(() => inbox(third).status.state === 'polling', 5000, 'a finished pass');
    const after = deltaRequests().filter((r) => g.requests.indexOf(r) >= beforeExpiry);
    assert.equal(after[0]!.status, 410, 'the saved token was tried first');
    assert.ok(after[0]!.query.has('$deltatoken'));
    assert.ok(!after[1]!.query.has('$deltatoken') && !after[1]!.query.has('$skiptoken'), 'then a full pass from the start');
    assert.equal(count(third.spool.db), 123);
    assert.ok(third.logs.some((l) => l.includes('delta token is no longer valid')));
    // The new delta link is saved again: the next restart is incremental.
    const saved = third.spool.db.prepare(`SELECT value FROM mailbox_state WHERE name = 'graph-a' AND key = 'graph_delta_link'`).pluck().get() as string;
    assert.match(JSON.parse(saved).link, /\$deltatoken=/);
  } finally {
    await third.close();
    rmSync(dir, { recursive: true, force: true });
  }
  for (const m of g.inFolder('inbox')) g.messages.delete(m.id);
});

test('after_delivery delete and move:<folder>; unmatched leave (untouched) and route:<name>', async () => {
  const del = g.add(message('d1', { to: 'desk@in.test', messageId: 'd1@x' }));
  const leftAlone = g.add(message('u1', { to: 'stranger@elsewhere.test', messageId: 'u1@x' }));
  const mv = g.add(message('j1', { to: 'desk@in.test', messageId: 'j1@x' }), { folder: 'junkemail' });
  const routed = g.add(message('j2', { to: 'stranger@elsewhere.test', messageId: 'j2@x' }), { folder: 'junkemail' });
  const app = await start([graphYaml('g-del', { after: 'delete' }), graphYaml('g-move', { folder: 'junkemail', after: 'move:archive', unmatched: 'route:catchall' })]);
  try {
    await until(() => count(app.spool.db) === 3, 10_000, 'three messages');
    await until(() => !g.messages.has(del) && !g.messages.has(mv) && !g.messages.has(routed), 5000, 'deleted and moved');
    assert.equal(g.inFolder('archive').length, 2);
    assert.equal(g.messages.get(leftAlone)?.isRead, false, 'an unmatched message with policy leave is not touched');
    const catchall = app.spool.db.prepare(`SELECT recipients FROM deliveries WHERE route = 'catchall'`).all() as Array<{ recipients: string }>;
    assert.deepEqual(catchall.map((r) => JSON.parse(r.recipients)), [[{ address: 'stranger@elsewhere.test', key: null }]]);
  } finally {
    await app.close();
  }
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
});

test('a message past an smtp.limits check (1,001 MIME parts: it could never be parsed) is left unread in the inbox, not taken to be dead-lettered', async () => {
  const parts = Array.from({ length: 1001 }, (_, i) => `--b1\r\nContent-Type: text/plain\r\n\r\n${i}\r\n`).join('') + '--b1--';
  const loop = g.add(message('loop', { to: 'desk@in.test', messageId: 'loop@x', headers: 'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"', body: parts }));
  const fine = g.add(message('fine', { to: 'desk@in.test', messageId: 'fine@x' }));
  const app = await start([graphYaml('g-limits')]);
  try {
    await until(() => g.messages.get(fine)?.isRead, 10_000, 'the other message taken and marked read');
    await until(() => app.logs.some((l) => l.includes('message refused by smtp.limits')), 5000, 'the warning');
    assert.equal(count(app.spool.db), 1);
    assert.equal(g.messages.get(loop)?.isRead, false, 'left as it was');
    assert.match(await (await fetch(`${app.httpUrl}/metrics`)).text(), /^mailhook_mailbox_messages_total\{mailbox="g-limits",outcome="refused"\} 1$/m);
  } finally {
    await app.close();
  }
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
});

test('429 and 503 are retried after Retry-After; a failed PATCH leaves the message for the next pass, stored once', async () => {
  const app = await start([graphYaml('g-throttle')]);
  try {
    await until(() => inbox(app).status.state === 'polling', 5000, 'the first pass');
    g.throttle(1, 429, '1', (m, p) => m === 'GET' && p.endsWith('/$value'));
    g.throttle(1, 503, '1', (m, p) => m === 'GET' && p.endsWith('/$value'));
    const id = g.add(message('t1', { to: 'desk@in.test', messageId: 't1@x' }));
    await until(() => count(app.spool.db) === 1, 10_000, 'the throttled message');
    const raw = g.requests.filter((r) => r.path.endsWith('/$value') && r.path.includes(encodeURIComponent(id)));
    assert.deepEqual(raw.map((r) => r.status), [429, 503, 200]);
    assert.ok(raw[1]!.at - raw[0]!.at >= 990 && raw[2]!.at - raw[1]!.at >= 990, `retries waited ${raw[1]!.at - raw[0]!.at} and ${raw[2]!.at - raw[1]!.at} ms`);
    assert.equal(inbox(app).graph.throttled, 2);
    await until(() => g.messages.get(id)?.isRead === true, 5000, 'marked read');

    // Marking fails: the message is already committed; it is tried again by itself and only the marking is redone.
    g.fail(1, 500, (m) => m === 'PATCH');
    const id2 = g.add(message('t2', { to: 'desk@in.test', messageId: 't2@x' }));
    await until(() => g.messages.get(id2)?.isRead === true, 10_000, 'marked read on the next pass');
    assert.equal(count(app.spool.db), 2);
    assert.equal(inbox(app).status.lastError?.kind, 'server');
    assert.equal(g.requests.filter((r) => r.method === 'GET' && r.path.endsWith(`/messages/${encodeURIComponent(id2)}/$value`)).length, 1, 'the raw message was fetched once');
    // Found in the spool on the repeated pass: counted and logged as a duplicate, not stored again.
    assert.match(await (await fetch(`${app.httpUrl}/metrics`)).text(), /^mailhook_mailbox_messages_total\{mailbox="g-throttle",outcome="duplicate"\} 1$/m);
    assert.ok(app.logs.some((l) => l.includes('the spool holds this message already')));
  } finally {
    await app.close();
  }
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
});

test('a Retry-After of a day (a proxy\'s, a misread date) is taken as an hour: the mailbox backs off, shows when it tries again, and is not left unread for the day', async () => {
  const app = await start([graphYaml('g-long-throttle')]);
  try {
    await until(() => inbox(app).status.state === 'polling', 5000, 'the first pass');
    g.throttle(1, 429, '86400', (m, p) => m === 'GET' && p.endsWith('/$value'));
    g.add(message('lt1', { to: 'desk@in.test', messageId: 'lt1@x' }));
    await until(() => inbox(app).status.state === 'backoff', 10_000, 'the pass to end in backoff');
    const wait = inbox(app).status.nextAttemptAt! - Date.now();
    assert.ok(wait > 3_500_000 && wait <= 3_600_000, `next attempt in ${wait} ms`);
    assert.match(inbox(app).status.lastError?.message ?? '', /answered 429 with Retry-After 3600 s/);
    assert.equal(count(app.spool.db), 0);
  } finally {
    await app.close();
  }
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
});

test('a page in Graph\'s place (a proxy answering 200 with HTML) is a server error naming the request and what came back; the next pass goes on', async () => {
  const app = await start([graphYaml('g-proxy-page')]);
  try {
    await until(() => inbox(app).status.state === 'polling', 5000, 'the first pass');
    g.fail(1, 200, (m, p) => m === 'GET' && p.endsWith('/messages/delta'), '<html><body>Please sign in to the proxy</body></html>');
    inbox(app).poke();
    await until(() => inbox(app).status.lastError !== null, 10_000, 'the failed pass');
    const e = inbox(app).status.lastError!;
    assert.equal(e.kind, 'server');
    assert.match(e.message, /^Graph GET \/v1\.0\/users\/[^ ]+\/messages\/delta answered 200 with text\/html, not JSON; check graph_endpoint/);
    const id = g.add(message('pp1', { to: 'desk@in.test', messageId: 'pp1@x' }));
    inbox(app).poke();
    await until(() => g.messages.get(id)?.isRead === true, 15_000, 'the next pass taking a message');
  } finally {
    await app.close();
  }
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
});

test('client credentials for the Graph scope; a revoked token is replaced; a wrong user shows as not_found', async () => {
  const app = await start([graphYaml('g-token'), graphYaml('g-nouser', { user: 'nobody@corp.test' })]);
  try {
    await until(() => inbox(app).status.state === 'polling', 5000, 'the first pass');
    const req = g.oauth.tokenRequests.find((r) => r.grant === 'client_credentials');
    assert.equal(req?.path, '/tenant-1/oauth2/v2.0/token');
    assert.equal(req?.scope, `${g.url}/.default`);
    g.oauth.revokeAll();
    const id = g.add(message('r1', { to: 'desk@in.test', messageId: 'r1@x' }));
    await until(() => count(app.spool.db) === 1, 5000, 'the message after a new token');
    assert.ok(g.requests.some((r) => r.status === 401), 'the revoked token was refused once');
    await until(() => g.messages.get(id)?.isRead === true, 5000, 'marked read');
    await until(() => inbox(app, 1).status.lastError !== null, 5000, 'the wrong user to fail');
    assert.equal(inbox(app, 1).status.lastError?.kind, 'not_found');
    assert.match(inbox(app, 1).status.lastError?.message ?? '', /404: ErrorInvalidUser/);
    assert.equal(inbox(app, 1).status.state, 'backoff');
    assert.ok(!app.logs.join('').includes('graph-secret'), 'the client secret is never logged');
  } finally {
    await app.close();
  }
});

test('move claims: two Graph inboxes (separate spools) on one mailbox take each message once', async (t) => {
  for (const m of [...g.messages.values()]) g.messages.delete(m.id); // what earlier tests left
  const N = 100;
  for (let i = 0; i < N; i++) g.add(message(`c${i}`, { to: 'desk@in.test', messageId: `claim-${i}@x` }));
  const before = g.requests.length;
  const apps = await Promise.all([0, 1].map(() => start([graphYaml('g-claim', { claim: 'auto' })])));
  try {
    const total = () => apps.reduce((n, a) => n + count(a.spool.db), 0);
    await until(() => total() >= N, 20_000, `${N} messages across both spools`);
    await Promise.all(apps.map((a) => until(() => inbox(a).status.state === 'polling', 5000, 'a finished pass')));
    const ids = apps.map((a) => a.spool.db.prepare(`SELECT json_extract(meta, '$.messageId') FROM messages`).pluck().all() as string[]);
    t.diagnostic(`instance A took ${ids[0]!.length}, B took ${ids[1]!.length}`);
    assert.equal(ids[0]!.length + ids[1]!.length, N, 'no message in the spools twice');
    assert.equal(new Set([...ids[0]!, ...ids[1]!]).size, N);
    assert.equal(inbox(apps[0]!).status.details.claim, 'move');
    const moves = g.requests.slice(before).filter((r) => r.method === 'POST' && r.path.endsWith('/move'));
    const lost = moves.filter((r) => r.status === 404).length;
    t.diagnostic(`${moves.length} claim moves, ${lost} answered 404 (the other instance had it)`);
    assert.ok(lost > 0, 'the instances competed for messages');
    // One processing folder, created once (the second instance found it, or got 409 and looked again).
    const created = [...g.folders].filter(([, name]) => name === 'mailhook-processing');
    assert.equal(created.length, 1);
    // after_delivery flag: read, in the processing folder; the inbox holds none of them.
    const processing = g.inFolder(created[0]![0]);
    assert.equal(processing.length, N);
    assert.ok(processing.every((m) => m.isRead));
    assert.equal(g.inFolder('inbox').length, 0);
    const keys = apps.flatMap((a) => a.spool.db.prepare(`SELECT dedupe_key FROM messages`).pluck().all() as string[]);
    assert.ok(keys.every((k) => k.startsWith('graph:g-claim:mid:claim-')), 'keyed by Message-ID (the id changes on every move)');
  } finally {
    await Promise.all(apps.map((a) => a.close()));
  }
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
});

test('move claims: a claim whose holder died is taken over after claim_timeout; delete in the processing folder', async () => {
  const app0 = await start([graphYaml('g-stale', { claim: 'auto', after: 'delete', claimTimeout: 1 })]);
  let folder: string;
  try {
    await until(() => inbox(app0).status.state === 'polling', 5000, 'the first pass');
    folder = [...g.folders].find(([, name]) => name === 'mailhook-processing')![0];
  } finally {
    await app0.close();
  }
  // As a dead instance leaves it: moved to the processing folder, unread, never committed.
  g.add(message('orphan', { to: 'desk@in.test', messageId: 'gorphan@x' }), { folder });
  const t0 = Date.now();
  const apps = await Promise.all([0, 1].map(() => start([graphYaml('g-stale', { claim: 'auto', after: 'delete', claimTimeout: 1 })])));
  try {
    const total = () => apps.reduce((n, a) => n + count(a.spool.db), 0);
    await until(() => total() === 1, 10_000, 'the orphan taken over');
    const took = Date.now() - t0;
    assert.ok(took >= 900, `taken over after ${took} ms, not before claim_timeout (1 s)`);
    await until(() => g.inFolder(folder).length === 0 && g.inFolder('inbox').length === 0, 5000, 'deleted after delivery');
    await Promise.all(apps.map((a) => until(() => inbox(a).status.state === 'polling', 5000, 'a finished pass')));
    assert.equal(total(), 1, 'delivered once');
    assert.ok(apps.some((a) => a.logs.some((l) => l.includes('took over stale move claims'))));
  } finally {
    await Promise.all(apps.map((a) => a.close()));
  }
});

test('move claims: marking fails after the commit: the message stays claimed (not handed to another instance) and is marked on a later pass', async () => {
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
  g.fail(1, 500, (method) => method === 'PATCH');
  g.add(message('once', { to: 'desk@in.test', messageId: 'once@x' }));
  const a = await start([graphYaml('g-mark', { claim: 'auto' })]);
  let b: TestApp | undefined;
  try {
    await until(() => count(a.spool.db) === 1, 10_000, 'A committed');
    // The failed PATCH did not move it back to the inbox, where another instance would take it again.
    const processing = () => [...g.folders].find(([, name]) => name === 'mailhook-processing')?.[0];
    await until(() => (processing() && g.inFolder(processing()!).some((m) => m.isRead) ? true : undefined), 10_000, 'marked read on a later pass');
    assert.equal(g.inFolder('inbox').length, 0);
    b = await start([graphYaml('g-mark', { claim: 'auto' })]);
    await until(() => (inbox(b!).status.state === 'polling' ? true : undefined), 10_000, 'B finished a pass');
    assert.equal(count(b.spool.db), 0, 'B found nothing to take');
    assert.equal(count(a.spool.db), 1);
  } finally {
    await a.close();
    await b?.close();
  }
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
});

test('move claims: a new message that reuses the internetMessageId of one delivered earlier is stored, not deleted as already taken', async () => {
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
  g.add(message('first', { to: 'desk@in.test', messageId: 'gre@x' }), { receivedDateTime: '2025-03-03T10:00:00Z' });
  const app = await start([graphYaml('g-reuse', { claim: 'auto', after: 'delete' })]);
  try {
    await until(() => count(app.spool.db) === 1, 10_000, 'the first message');
    await until(() => g.messages.size === 0, 5000, 'deleted after delivery');
    g.add(message('second', { to: 'desk@in.test', messageId: 'gre@x', body: 'another message' }), { receivedDateTime: '2025-03-04T09:00:00Z' });
    inbox(app).poke();
    await until(() => count(app.spool.db) === 2, 10_000, 'the second message stored');
    await until(() => g.messages.size === 0, 5000, 'deleted after delivery');
  } finally {
    await app.close();
  }
});

test('move claims: the processing folder deleted while running is looked up again and recreated; new mail is still taken', async () => {
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
  const app = await start([graphYaml('g-gone', { claim: 'auto' })]);
  try {
    g.add(message('a', { to: 'desk@in.test', messageId: 'gone-a@x' }));
    await until(() => count(app.spool.db) === 1, 10_000, 'the first message');
    // Someone deletes the processing folder with what it holds.
    for (const [id] of g.folders) {
      for (const m of g.inFolder(id)) g.messages.delete(m.id);
      g.folders.delete(id);
    }
    g.add(message('b', { to: 'desk@in.test', messageId: 'gone-b@x' }));
    inbox(app).poke();
    await until(() => count(app.spool.db) === 2, 10_000, 'the next message taken');
    const folder = [...g.folders].find(([, name]) => name === 'mailhook-processing')?.[0];
    assert.ok(folder, 'recreated');
    await until(() => g.inFolder(folder)[0]?.isRead === true, 5000, 'marked read there after the commit');
    assert.equal(g.inFolder(folder).length, 1);
  } finally {
    await app.close();
  }
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
});

test('a message whose $value keeps failing is passed over: later messages are taken, it is taken once it can be read', async () => {
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
  const bad = g.add(message('bad', { to: 'desk@in.test', messageId: 'bad@x' }));
  const good = g.add(message('good', { to: 'desk@in.test', messageId: 'good@x' }));
  g.fail(1000, 500, (method, path) => method === 'GET' && path.includes(encodeURIComponent(bad)) && path.endsWith('/$value'));
  const app = await start([graphYaml('g-stuck')]);
  try {
    await until(() => count(app.spool.db) === 1, 10_000, 'the message after the failing one');
    await until(() => g.messages.get(good)?.isRead === true, 5000, 'it marked read');
    assert.equal(g.messages.get(bad)?.isRead, false);
    assert.match(inbox(app).status.lastError?.message ?? '', /answered 500/);
    assert.ok(app.logs.some((l) => l.includes('passed over, and tried again by itself')));
    g.clearFailures();
    await until(() => count(app.spool.db) === 2, 10_000, 'the failing message, once readable');
    await until(() => g.messages.get(bad)?.isRead === true, 5000, 'marked read');
  } finally {
    g.clearFailures();
    await app.close();
  }
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
});

test('a message that keeps failing is tried again by itself on its own backoff: the delta link moves on and new mail still comes every poll_interval', async () => {
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
  const bad = g.add(message('bad2', { to: 'desk@in.test', messageId: 'bad2@x' }));
  g.add(message('good2', { to: 'desk@in.test', messageId: 'good2@x' }));
  const badValue = (r: { method: string; path: string }) => r.method === 'GET' && r.path.endsWith(`/messages/${encodeURIComponent(bad)}/$value`);
  g.fail(1000, 500, (method, path) => badValue({ method, path }));
  // poll_interval 1 s; the failing message's own backoff starts at 60 s (half of it at least, with jitter)
  const dir = tempDir();
  const yaml = graphYaml('g-backoff').replace('reconnect_delay_ms: 100', 'reconnect_delay_ms: 60000').replace('reconnect_max_delay_ms: 400', 'reconnect_max_delay_ms: 120000');
  const app = await start([yaml], dir);
  try {
    await until(() => count(app.spool.db) === 1, 10_000, 'the message after the failing one');
    const status = inbox(app).status;
    assert.equal(status.details.failing_messages, 1);
    const saved = () => app.spool.db.prepare(`SELECT key, value FROM mailbox_state WHERE name = 'g-backoff'`).all() as Array<{ key: string; value: string }>;
    await until(() => saved().some((r) => r.key === 'graph_delta_link'), 5000, 'the delta link saved though a message was passed over');
    const failing = JSON.parse(saved().find((r) => r.key === 'graph_failing')!.value) as { items: Array<{ id: string; tries: number; nextAt: number }> };
    assert.deepEqual(failing.items.map((m) => [m.id, m.tries]), [[bad, 1]]);
    assert.ok(failing.items[0]!.nextAt - Date.now() > 20_000, `tried again after its backoff, not at the next pass: in ${failing.items[0]!.nextAt - Date.now()} ms`);
    // New mail is taken at the next poll, incrementally, while the failing message waits its turn.
    const t0 = Date.now();
    const late = g.add(message('late2', { to: 'desk@in.test', messageId: 'late2@x' }));
    await until(() => g.messages.get(late)?.isRead === true, 5000, 'the new message');
    assert.ok(Date.now() - t0 < 2500, `new mail took ${Date.now() - t0} ms with poll_interval 1 s`);
    assert.ok(deltaRequests().at(-1)!.query.has('$deltatoken'), 'an incremental pass');
    assert.equal(g.requests.filter(badValue).length, 1, 'the failing message was not asked for again before its backoff');
    // Passes run every second now: one may be under way (connected) as well as between passes (polling).
    assert.ok(status.healthy && ['polling', 'connected'].includes(status.state), `a failing message does not make the mailbox unhealthy: ${status.state}`);
    assert.equal(status.nextAttemptAt, null);
  } finally {
    g.clearFailures();
    await app.close();
  }
  // After a restart: the delta link lists nothing new (it moved past the message), the saved list still has it.
  const again = await start([graphYaml('g-backoff')], dir);
  try {
    assert.equal(inbox(again).status.details.failing_messages, 1, 'the list survived the restart');
    // Its nextAt is a minute away: make it due as the clock would.
    again.spool.db.prepare(`UPDATE mailbox_state SET value = json_set(value, '$.items[0].nextAt', 0) WHERE name = 'g-backoff' AND key = 'graph_failing'`).run();
    await again.close();
  } catch (err) {
    await again.close();
    throw err;
  }
  const third = await start([graphYaml('g-backoff')], dir);
  try {
    await until(() => g.messages.get(bad)?.isRead === true, 10_000, 'the failing message taken once Graph serves it');
    assert.equal(count(third.spool.db), 3);
    // Marked read before the PATCH's answer is back; it leaves the list once take() returns.
    await until(() => inbox(third).status.details.failing_messages === 0, 5000, 'no longer in the list');
    assert.ok(deltaRequests().at(-1)!.query.has('$deltatoken'), 'no full pass was needed');
    assert.ok(third.logs.some((l) => l.includes('a message passed over earlier was taken')));
    assert.equal((third.spool.db.prepare(`SELECT count(*) FROM mailbox_state WHERE name = 'g-backoff' AND key = 'graph_failing'`).pluck().get() as number), 0, 'the list is emptied in the spool');
  } finally {
    await third.close();
  }
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
});

test('a stored message whose marking keeps failing is counted a duplicate once, not at every try', async () => {
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
  g.fail(3, 500, (m) => m === 'PATCH');
  const id = g.add(message('mark3', { to: 'desk@in.test', messageId: 'mark3@x' }));
  const from = g.requests.length;
  const app = await start([graphYaml('g-mark3')]);
  try {
    await until(() => g.messages.get(id)?.isRead === true, 10_000, 'marked read on the fourth try');
    assert.equal(count(app.spool.db), 1);
    assert.equal(g.requests.slice(from).filter((r) => r.method === 'PATCH').length, 4);
    assert.match(await (await fetch(`${app.httpUrl}/metrics`)).text(), /^mailhook_mailbox_messages_total\{mailbox="g-mark3",outcome="duplicate"\} 1$/m);
    assert.equal(app.logs.filter((l) => l.includes('the spool holds this message already')).length, 1);
  } finally {
    g.clearFailures();
    await app.close();
  }
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
});

test('a message passed over that is then deleted (or moved out) is no longer tried', async () => {
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
  const bad = g.add(message('gone', { to: 'desk@in.test', messageId: 'gone@x' }));
  g.fail(1000, 500, (method, path) => method === 'GET' && path.endsWith(`/messages/${encodeURIComponent(bad)}/$value`));
  const app = await start([graphYaml('g-gone')]);
  try {
    await until(() => inbox(app).status.details.failing_messages === 1, 10_000, 'passed over');
    g.messages.delete(bad);
    await until(() => inbox(app).status.details.failing_messages === 0, 10_000, 'no longer tried');
    assert.ok(app.logs.some((l) => l.includes('a message passed over earlier is gone from the folder')));
    const lookups = g.requests.filter((r) => r.method === 'GET' && r.path.endsWith(`/messages/${encodeURIComponent(bad)}`));
    assert.equal(lookups.at(-1)?.status, 404);
    const after = g.requests.length;
    await until(() => deltaRequests().filter((r) => g.requests.indexOf(r) >= after).length >= 2, 5000, 'two more passes');
    assert.equal(g.requests.slice(after).filter((r) => r.path.includes(encodeURIComponent(bad))).length, 0, 'not asked for again');
  } finally {
    g.clearFailures();
    await app.close();
  }
});

test('move claims: a claimed message whose $value fails is given back and tried again by itself under its new id', async () => {
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
  g.fail(2, 500, (method, path) => method === 'GET' && path.endsWith('/$value'));
  const first = g.add(message('mv-fail', { to: 'desk@in.test', messageId: 'mv-fail@x' }));
  const app = await start([graphYaml('g-mvfail', { claim: 'auto' })]);
  try {
    await until(() => count(app.spool.db) === 1, 10_000, 'taken on the third try');
    await until(() => inbox(app).status.details.failing_messages === 0, 5000, 'no longer in the list');
    const mine = [...g.messages.values()].filter((m) => m.internetMessageId === '<mv-fail@x>' || m.internetMessageId === 'mv-fail@x');
    assert.equal(mine.length, 1, 'one copy of the message left');
    assert.notEqual(mine[0]!.id, first);
    assert.equal(mine[0]!.isRead, true);
    assert.equal(mine[0]!.folder, [...g.folders].find(([, name]) => name === 'mailhook-processing')![0]);
    const tries = app.logs.filter((l) => l.includes('passed over, and tried again by itself'));
    assert.equal(tries.length, 2);
    // Each failure recorded the id the give-back left the message with: the retry looked that id up.
    const given = tries.map((l) => (JSON.parse(l) as { graphId: string }).graphId);
    for (const id of given) assert.ok(g.requests.some((r) => r.method === 'GET' && r.path.endsWith(`/messages/${encodeURIComponent(id)}`)), `looked up ${id}`);
  } finally {
    g.clearFailures();
    await app.close();
  }
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
});

test('move claims, after_delivery flag: the look for stale claims lists only unread messages, not the read ones piling up in the processing folder', async () => {
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
  const N = 60;
  for (let i = 0; i < N; i++) g.add(message(`p${i}`, { to: 'desk@in.test', messageId: `pile-${i}@x` }));
  const app = await start([graphYaml('g-pile', { claim: 'auto', claimTimeout: 1 })]);
  try {
    await until(() => count(app.spool.db) === N, 10_000, `${N} messages`);
    const folder = [...g.folders].find(([, name]) => name === 'mailhook-processing')![0];
    await until(() => g.inFolder(folder).filter((m) => m.isRead).length === N, 5000, 'all read in the processing folder');
    const from = g.requests.length;
    const lists = () => g.requests.slice(from).filter((r) => r.method === 'GET' && r.path.endsWith(`/mailFolders/${folder}/messages`));
    await until(() => lists().length > 0 && inbox(app).status.state === 'polling', 5000, 'a scan of the processing folder');
    assert.ok(lists().every((r) => r.query.get('$filter') === 'isRead eq false'), 'unread only');
    assert.equal(lists().filter((r) => r.query.has('$skip')).length, 0, 'one page, not every read message');
  } finally {
    await app.close();
  }
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
});

test('after_delivery move:<folder id> to a folder that was deleted: a failure shown, not a silent no-op', async () => {
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
  const gone = 'aamkfolder00000000deadbeef'; // a well-formed id of a folder that no longer exists
  const id = g.add(message('mv', { to: 'desk@in.test', messageId: 'mv-gone@x' }));
  const app = await start([graphYaml('g-mvgone', { after: `move:${gone}` })]);
  try {
    await until(() => count(app.spool.db) === 1, 10_000, 'committed');
    await until(() => /folder aamkfolder00000000deadbeef: the folder was not found/.test(inbox(app).status.lastError?.message ?? ''), 5000, 'the failed move reported');
    assert.equal(g.messages.get(id)?.folder, 'inbox', 'still where it was');
  } finally {
    await app.close();
  }
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
});

test('claim none: a listed message whose $value answers 404 once is looked up again by itself and taken (the delta link moved past it)', async () => {
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
  g.fail(1, 404, (method, path) => method === 'GET' && path.endsWith('/$value'));
  const id = g.add(message('late', { to: 'desk@in.test', messageId: 'late@x' }));
  const app = await start([graphYaml('g-404')]);
  try {
    await until(() => count(app.spool.db) === 1, 10_000, 'taken on a later pass');
    await until(() => (g.messages.get(id)?.isRead ? true : undefined), 5000, 'marked read');
  } finally {
    await app.close();
  }
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
});

test('a $value that breaks off part-way (Graph resets the connection) is passed over, not stored cut short, and does not stop later mail', async () => {
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
  const cut = g.add(message('cut', { to: 'desk@in.test', messageId: 'cut@x', body: 'x'.repeat(200_000) }));
  g.messages.get(cut)!.cutValueAt = 50_000;
  const later = g.add(message('later', { to: 'desk@in.test', messageId: 'later@x' }));
  const app = await start([graphYaml('g-cut')]);
  try {
    await until(() => g.messages.get(later)?.isRead === true, 10_000, 'the message after the cut one taken');
    assert.equal(count(app.spool.db), 1, 'the cut message was not stored');
    assert.equal(g.messages.get(cut)?.isRead, false);
    const err = inbox(app).status.lastError;
    assert.equal(err?.kind, 'server');
    assert.match(err?.message ?? '', /\$value of message \S+ broke off after 50000 bytes/);
    assert.ok(inbox(app).status.healthy, 'one broken message does not make the mailbox unhealthy');
    delete g.messages.get(cut)!.cutValueAt;
    await until(() => g.messages.get(cut)?.isRead === true, 10_000, 'taken whole once Graph sends it whole');
    const stored = app.spool.db.prepare(`SELECT size FROM messages WHERE json_extract(meta, '$.messageId') = 'cut@x'`).pluck().get() as number;
    assert.equal(stored, g.messages.get(cut)!.raw.length);
  } finally {
    await app.close();
  }
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
});

test('stop is not held by a token endpoint that hangs', async () => {
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
  const app = await start([graphYaml('g-hang')]);
  try {
    await until(() => inbox(app).status.state === 'polling', 5000, 'the first pass');
    g.oauth.revokeAll(); // the next request answers 401 and a new token is asked for
    g.oauth.overrides.push('hang');
    const asked = g.oauth.tokenRequests.length;
    inbox(app).poke();
    await until(() => g.oauth.tokenRequests.length > asked, 5000, 'the token request');
    const t0 = Date.now();
    await inbox(app).stop(200);
    const took = Date.now() - t0;
    assert.ok(took < 3000, `stop took ${took} ms with a grace of 200 ms`);
    assert.equal(inbox(app).status.state, 'stopped');
    // The token request itself is given up when the mailboxes stop, not left to its 30 s timeout (it would keep a
    // stopped process alive that long).
    const closedBefore = g.oauth.hungClosed;
    await app.mailboxes.stop(200);
    await until(() => g.oauth.hungClosed > closedBefore, 3000, 'the hung token request to be given up');
  } finally {
    g.oauth.overrides.length = 0;
    await app.close();
  }
});

test('403 ErrorAccessDenied names the permission to grant; once granted the mailbox recovers without a restart', async () => {
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
  const id = g.add(message('perm', { to: 'desk@in.test', messageId: 'perm@x' }));
  g.permission = 'Mail.Read';
  const app = await start([graphYaml('g-perm')]);
  try {
    // Mail.Read: read and stored, but marking it read is refused.
    await until(() => /PATCH/.test(inbox(app).status.lastError?.message ?? ''), 10_000, 'the refused PATCH');
    const readOnly = inbox(app).status.lastError!;
    assert.equal(readOnly.kind, 'auth');
    assert.match(readOnly.message, /answered 403: ErrorAccessDenied Access is denied\. Check credentials and try again\.; reading is allowed but changing is not: the application needs Mail\.ReadWrite, not only Mail\.Read/);
    assert.equal(count(app.spool.db), 1);
    // An application access policy that leaves the mailbox out refuses the reads too.
    g.permission = 'policy';
    await until(() => /GET .*403/.test(inbox(app).status.lastError?.message ?? ''), 10_000, 'the refused read');
    assert.match(inbox(app).status.lastError!.message, /AppOnly AccessPolicy settings\.; the application needs the Mail\.ReadWrite application permission \(admin consent granted\), and an application access policy, if the tenant has one, must include this mailbox/);
    assert.equal(inbox(app).status.state, 'backoff');
    g.permission = 'Mail.ReadWrite';
    await until(() => g.messages.get(id)?.isRead === true, 10_000, 'marked read once the permission is granted');
    assert.equal(count(app.spool.db), 1);
  } finally {
    g.permission = 'Mail.ReadWrite';
    await app.close();
  }
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
});

test('a spool that cannot take the message shows as a spool error (it said protocol); the message stays unread and is taken later', async () => {
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
  const app = await start([graphYaml('g-spool')]);
  try {
    await until(() => inbox(app).status.state === 'polling', 5000, 'the first pass');
    const ingest = (inbox(app) as unknown as { deps: { ingest: MailboxIngest } }).deps.ingest;
    const accept = ingest.accept.bind(ingest);
    ingest.accept = async (_plan, body) => {
      for await (const _ of body) {
        /* the disk is full */
      }
      throw new MailhookError('SPOOL_UNAVAILABLE', 'cannot store the message: ENOSPC');
    };
    const id = g.add(message('full', { to: 'desk@in.test', messageId: 'full@x' }));
    inbox(app).poke();
    await until(() => inbox(app).status.lastError, 5000, 'the failure');
    assert.deepEqual({ ...inbox(app).status.lastError, at: 0 }, { kind: 'spool', code: 'MAILBOX_SPOOL', message: 'the spool could not take the message: cannot store the message: ENOSPC', at: 0 });
    assert.match(await (await fetch(`${app.httpUrl}/metrics`)).text(), /^mailhook_mailbox_errors_total\{mailbox="g-spool",kind="spool"\} [1-9]/m);
    assert.equal(g.messages.get(id)?.isRead, false);
    ingest.accept = accept;
    await until(() => g.messages.get(id)?.isRead === true, 10_000, 'taken once the spool takes it');
    assert.equal(count(app.spool.db), 1);
  } finally {
    await app.close();
  }
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
});

test('stop during a $value download that hangs: returns after the grace, nothing stored; the next start takes the message', async () => {
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
  const dir = tempDir();
  const id = g.add(message('stall', { to: 'desk@in.test', messageId: 'stall@x', body: 'y'.repeat(300_000) }));
  g.messages.get(id)!.stallValueAt = 100_000;
  const app = await start([graphYaml('g-stall')], dir);
  try {
    await until(() => g.requests.some((r) => r.path.endsWith('/$value') && r.path.includes(encodeURIComponent(id))), 5000, 'the download under way');
    const t0 = Date.now();
    await inbox(app).stop(300);
    assert.ok(Date.now() - t0 < 3000, `stop took ${Date.now() - t0} ms with a grace of 300 ms`);
    assert.equal(count(app.spool.db), 0, 'nothing stored cut short');
  } finally {
    await app.close();
  }
  delete g.messages.get(id)!.stallValueAt;
  const again = await start([graphYaml('g-stall')], dir);
  try {
    await until(() => g.messages.get(id)?.isRead === true, 10_000, 'taken after the restart');
    assert.equal(count(again.spool.db), 1);
  } finally {
    await again.close();
    rmSync(dir, { recursive: true, force: true });
  }
  for (const m of [...g.messages.values()]) g.messages.delete(m.id);
});
