// Move claims against a real Dovecot that hides CONDSTORE (as Office 365 does): two instances take each message
// once, a claim left in the processing folder by a dead instance is taken over, a commit before a crash is only
// marked, after_delivery variants in the processing folder, and the single-instance warning without MOVE.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { startDovecot, dovecotSkip, type Dovecot } from '../helpers/dovecot.js';
import { Consumer } from '../helpers/consumer.js';
import { configYaml, parseTestConfig, startTestApp, tempDir, until, untilAsync, type TestApp } from '../helpers/app.js';
import { ImapFlow } from 'imapflow';
import { ImapBridge } from '../../src/imap/bridge.js';
import { MailboxIngest, ingestLimits } from '../../src/imap/ingest.js';
import { Spool } from '../../src/spool/spool.js';
import { Router } from '../../src/routing/router.js';
import { createMetrics } from '../../src/core/metrics.js';
import { createLogger } from '../../src/core/logger.js';
import { CLAIM_KEYWORD, SKIP_KEYWORD } from '../../src/imap/claim.js';
import type { ImapMailboxSettings } from '../../src/config/mailboxes.js';
import { count, imapBlock, mailboxYaml, message, routesYaml } from './setup.js';

const skip = dovecotSkip();
/** Dovecot's default list minus CONDSTORE and QRESYNC: what Office 365 offers that matters here (MOVE, UIDPLUS). */
const NO_CONDSTORE = 'IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ MOVE UIDPLUS';
const PROCESSING = 'mailhook-processing';

/** A spool and the ingest of one mailbox (no app around them), so a test can interpose on ingest.accept. */
function ingestRig(dovecot: Dovecot, user: string, opts: Record<string, string | number>) {
  const dir = tempDir();
  const yaml = configYaml({ dir, routes: routesYaml('http://127.0.0.1:9/unused'), extra: imapBlock(mailboxYaml(dovecot, user, opts)) });
  const config = parseTestConfig(yaml, dir);
  const spool = new Spool({ path: join(dir, 'spool.db'), inlineMaxBytes: 65536, clock: { now: () => Date.now() } });
  const metrics = createMetrics();
  const settings = config.imap[0] as ImapMailboxSettings;
  const ingest = new MailboxIngest({ router: new Router(config.routes), routes: config.routes, spool, metrics, maxBytes: 1_000_000, limits: ingestLimits(config.smtp.limits) }, settings, 'imap');
  return {
    spool,
    metrics,
    settings,
    ingest,
    async close(): Promise<void> {
      await spool.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const messageIds = (app: TestApp) => (app.spool.db.prepare(`SELECT json_extract(meta, '$.messageId') AS id FROM messages`).all() as Array<{ id: string }>).map((r) => r.id);

describe('move claims against Dovecot without CONDSTORE', { skip }, () => {
  let dovecot: Dovecot;
  before(async () => {
    dovecot = await startDovecot({ users: ['shared', 'stale', 'crash', 'cut', 'race', 'flag', 'del', 'move', 'reflag', 'redel', 'noperm'], capability: NO_CONDSTORE });
  });
  after(async () => {
    await dovecot?.close();
  });

  test('two instances on one mailbox (separate spools): claimed by MOVE, every message delivered exactly once', async (t) => {
    const N = 200;
    dovecot.deliverToMaildir(Array.from({ length: N }, (_, i) => message(`s${i}`, { to: 'desk@in.test', messageId: `mshared-${i}@x` })), 'shared');
    const consumer = await new Consumer().start();
    const block = imapBlock(mailboxYaml(dovecot, 'shared', { after_delivery: 'delete', batch_size: 10, claim_timeout: 5 }));
    const apps: TestApp[] = await Promise.all([0, 1].map(() => startTestApp({ routes: routesYaml(consumer.url), extra: block })));
    try {
      const total = () => apps.reduce((n, a) => n + count(a.spool.db), 0);
      await until(() => total() >= N, 30_000, `${N} messages across both spools`).catch((err) => {
        t.diagnostic(`spools hold ${apps.map((a) => count(a.spool.db)).join(' + ')}; states ${apps.map((a) => JSON.stringify(a.mailboxes.bridges[0]!.status.view())).join(' / ')}`);
        throw err;
      });
      for (const a of apps) {
        const d = a.mailboxes.bridges[0]!.status.details;
        // The path taken: imapflow did not enable CONDSTORE, so the bridge claims by MOVE.
        assert.equal(d.condstore, false, 'CONDSTORE is not in use');
        assert.equal(d.claim, 'move');
        assert.equal(d.claim_folder, PROCESSING);
        assert.ok(a.logs.some((l) => l.includes('claimed by MOVE to the processing folder')));
      }
      await Promise.all(apps.map((a) => until(() => a.mailboxes.bridges[0]!.status.state === 'idle', 10_000, 'idle')));
      await dovecot.append(Array.from({ length: 20 }, (_, i) => message(`late${i}`, { to: 'desk@in.test', messageId: `mlate-${i}@x` })), { user: 'shared' });
      await until(() => total() >= N + 20, 10_000, 'the late messages');
      await Promise.all(apps.map((a) => until(() => a.mailboxes.bridges[0]!.status.state === 'idle', 10_000, 'idle')));
      const ids = apps.map(messageIds);
      const all = [...ids[0]!, ...ids[1]!];
      t.diagnostic(`instance A took ${ids[0]!.length}, B took ${ids[1]!.length}`);
      assert.equal(all.length, N + 20, 'no message is in the spools twice');
      assert.equal(new Set(all).size, N + 20);
      assert.ok(ids[0]!.length > 0 && ids[1]!.length > 0, 'both instances took messages');
      const keys = apps.flatMap((a) => (a.spool.db.prepare(`SELECT dedupe_key FROM messages`).pluck().all() as string[]));
      assert.ok(keys.every((k) => k.startsWith('imap:shared:mid:mshared-') || k.startsWith('imap:shared:mid:mlate-')), 'keyed by Message-ID');
      const lost = apps.map((a) => a.logs.filter((l) => l.includes('a concurrent MOVE copied them first')).length);
      t.diagnostic(`batches where both MOVEs succeeded (Dovecot's MOVE is copy + expunge), settled by UID: ${lost.join(' / ')}`);
      assert.deepEqual(await dovecot.list('INBOX', 'shared'), []);
      // Delivered copies wait, \Deleted, for claim_timeout (5 s) before the expunge; then the folder is empty.
      const left = await dovecot.list(PROCESSING, 'shared');
      assert.ok(left.every((m) => m.flags.includes('\\Deleted')), 'only delivered copies remain for now');
      await untilAsync(async () => (await dovecot.list(PROCESSING, 'shared')).length === 0, 20_000, 'the deferred expunge');
    } finally {
      await Promise.all(apps.map((a) => a.close()));
      await consumer.stop();
    }
  });

  test('a claim whose holder died (left in the processing folder) is taken over after claim_timeout and delivered once', async () => {
    // As a dead instance leaves it: moved into the processing folder, never committed anywhere.
    const c = await dovecot.client('stale');
    await c.mailboxCreate(PROCESSING);
    await c.logout();
    await dovecot.append([message('orphan1', { to: 'desk@in.test', messageId: 'orphan1@x' }), message('orphan2', { to: 'desk@in.test', messageId: 'orphan2@x' })], { user: 'stale', folder: PROCESSING });
    await dovecot.append([message('fresh', { to: 'desk@in.test', messageId: 'fresh@x' })], { user: 'stale' });
    const apps: TestApp[] = await Promise.all([0, 1].map(() => startTestApp({ routes: routesYaml('http://127.0.0.1:9/unused'), extra: imapBlock(mailboxYaml(dovecot, 'stale', { after_delivery: 'delete', claim_timeout: 1 })) })));
    try {
      const t0 = Date.now();
      const total = () => apps.reduce((n, a) => n + count(a.spool.db), 0);
      await until(() => total() >= 1, 5000, 'the fresh message');
      await until(() => total() >= 3, 10_000, 'the orphans taken over');
      const took = Date.now() - t0;
      assert.ok(took >= 900, `taken over after ${took} ms, not before claim_timeout (1 s)`);
      await Promise.all(apps.map((a) => until(() => a.mailboxes.bridges[0]!.status.state === 'idle', 10_000, 'idle')));
      const all = apps.flatMap(messageIds).sort();
      assert.deepEqual(all, ['fresh@x', 'orphan1@x', 'orphan2@x'], 'each delivered once across both instances');
      assert.ok(apps.some((a) => a.logs.some((l) => l.includes('took over stale move claims'))));
      assert.deepEqual(await dovecot.list('INBOX', 'stale'), []);
      await untilAsync(async () => (await dovecot.list(PROCESSING, 'stale')).length === 0, 10_000, 'delivered copies expunged after claim_timeout');
    } finally {
      await Promise.all(apps.map((a) => a.close()));
    }
  });

  test('a crash between commit and marking: the message in the processing folder is only marked; a copy returning later is not stored again', async () => {
    const { spool, metrics, settings, ingest, close } = ingestRig(dovecot, 'crash', { after_delivery: 'delete', claim_timeout: 3600 });
    let bridge: ImapBridge | undefined;
    let crashes = 1;
    const accept = ingest.accept.bind(ingest);
    ingest.accept = async (plan, body, key, meta) => {
      const result = await accept(plan, body, key, meta);
      // Committed; the connection dies before the message is marked (as a killed process would leave it).
      if (crashes-- > 0) (bridge as unknown as { client?: { close(): void } }).client?.close();
      return result;
    };
    // INTERNALDATE is part of a moved message's dedupe key (with Message-ID and size): set, so the copies below are
    // the same message (same date) or a copy appended later (another date) whatever second the test runs in.
    const arrived = new Date('2024-01-05T09:00:00Z');
    await dovecot.append([message('c1', { to: 'desk@in.test', messageId: 'crash1@x' })], { user: 'crash', internalDate: arrived });
    bridge = new ImapBridge({ settings, ingest, log: createLogger({ level: 'silent' }), metrics, clock: { now: () => Date.now() }, random: Math.random });
    bridge.start();
    try {
      await until(() => bridge!.status.lastError?.kind === 'network', 10_000, 'the session cut after the commit');
      assert.equal(count(spool.db), 1);
      // Reconnected: the scan of the processing folder finds it committed (by Message-ID) and marks it deleted —
      // no claim_timeout wait (it is an hour here), no second copy.
      await untilAsync(async () => (await dovecot.list(PROCESSING, 'crash')).map((m) => m.flags.join(' ')).join() === '\\Deleted \\Seen', 10_000, 'the committed message marked');
      assert.equal(count(spool.db), 1);
      // The same message in the mailbox again (new UID, e.g. restored): its claim loses to the delivered copy in the
      // processing folder (same Message-ID, size and INTERNALDATE) and is expunged; not stored again.
      await dovecot.append([message('c1', { to: 'desk@in.test', messageId: 'crash1@x' })], { user: 'crash', internalDate: arrived });
      await untilAsync(async () => (await dovecot.list('INBOX', 'crash')).length === 0, 10_000, 'the copy taken');
      await until(() => bridge!.status.state === 'idle', 10_000, 'idle');
      assert.equal((await dovecot.list(PROCESSING, 'crash')).length, 1, 'only the delivered copy, waiting for its expunge');
      assert.equal(count(spool.db), 1);
      // Appended again later (another INTERNALDATE, so another key): recognised by its bytes as the message the
      // spool holds, not stored again, and marked for the deferred expunge like the delivered copy.
      await dovecot.append([message('c1', { to: 'desk@in.test', messageId: 'crash1@x' })], { user: 'crash', internalDate: new Date('2024-01-06T09:00:00Z') });
      await untilAsync(async () => (await dovecot.list('INBOX', 'crash')).length === 0, 10_000, 'the later copy taken');
      await untilAsync(async () => (await dovecot.list(PROCESSING, 'crash')).every((m) => m.flags.includes('\\Deleted')), 10_000, 'both copies marked for the expunge');
      assert.equal((await dovecot.list(PROCESSING, 'crash')).length, 2);
      assert.equal(count(spool.db), 1, 'not stored again');
    } finally {
      await bridge.stop(2000);
      await close();
    }
  });

  test('a connection lost after the MOVE, before the commit: the message is given back at reconnect, not after claim_timeout', async () => {
    const { spool, metrics, settings, ingest, close } = ingestRig(dovecot, 'cut', { after_delivery: 'delete', claim_timeout: 3600 });
    let bridge: ImapBridge | undefined;
    let cuts = 1;
    const accept = ingest.accept.bind(ingest);
    ingest.accept = async (plan, body, key, meta) => {
      if (cuts-- > 0) {
        (bridge as unknown as { client?: { close(): void } }).client?.close();
        throw new Error('connection lost while reading the message');
      }
      return accept(plan, body, key, meta);
    };
    await dovecot.append([message('cut1', { to: 'desk@in.test', messageId: 'cut1@x' })], { user: 'cut' });
    bridge = new ImapBridge({ settings, ingest, log: createLogger({ level: 'silent' }), metrics, clock: { now: () => Date.now() }, random: Math.random });
    bridge.start();
    try {
      await until(() => bridge!.status.lastError?.kind === 'network', 10_000, 'the session cut before the commit');
      await until(() => count(spool.db) === 1, 10_000, 'the message taken after the reconnect (claim_timeout is an hour)');
      await untilAsync(async () => (await dovecot.list('INBOX', 'cut')).length === 0, 5000, 'the mailbox emptied');
      await until(() => bridge!.status.state === 'idle', 10_000, 'idle');
      assert.equal(count(spool.db), 1);
    } finally {
      await bridge.stop(2000);
      await close();
    }
  });

  test('two MOVEs of one message that both succeed (Dovecot copies, then expunges): the lower UID holds the claim', async () => {
    const { spool, metrics, settings, ingest, close } = ingestRig(dovecot, 'race', { after_delivery: 'delete', claim_timeout: 1 });
    const logs: string[] = [];
    const c = await dovecot.client('race');
    await c.mailboxCreate(PROCESSING);
    await dovecot.append([message('r1', { to: 'desk@in.test', messageId: 'race1@x' }), message('r2', { to: 'desk@in.test', messageId: 'race2@x' })], { user: 'race' });
    const bridge = new ImapBridge({ settings, ingest, log: createLogger({ level: 'debug', destination: new Writable({ write: (chunk: Buffer, _e, cb) => (logs.push(chunk.toString()), cb()) }) }), metrics, clock: { now: () => Date.now() }, random: Math.random });
    // A competitor's MOVE lands first: its copies (lower UIDs) are in the processing folder before ours.
    let raced = false;
    const internals = bridge as unknown as { claimByMove(client: unknown, uids: number[]): Promise<Map<number, number>> };
    const claimByMove = internals.claimByMove.bind(bridge);
    internals.claimByMove = async (client, uids) => {
      if (!raced) {
        raced = true;
        await c.mailboxOpen('INBOX');
        assert.ok(await c.messageCopy(uids.join(','), PROCESSING, { uid: true }));
      }
      return claimByMove(client, uids);
    };
    bridge.start();
    try {
      await until(() => logs.some((l) => l.includes('a concurrent MOVE copied them first')), 10_000, 'our copies to lose');
      assert.equal(count(spool.db), 0, 'the lost copies are not taken');
      // The competitor never finishes (it died): after claim_timeout its copies are taken over, delivered once.
      await until(() => count(spool.db) === 2, 10_000, 'the takeover');
      await until(() => bridge.status.state === 'idle', 10_000, 'idle');
      assert.equal(count(spool.db), 2);
      assert.ok(logs.some((l) => l.includes('took over stale move claims')));
      assert.deepEqual(await dovecot.list('INBOX', 'race'), []);
    } finally {
      await c.logout();
      await bridge.stop(2000);
      await close();
    }
  });

  test('a new message that reuses the Message-ID of one delivered earlier is stored, not removed as a copy (flag: the old one stays; delete)', async () => {
    const first = (to: string) => message('old', { to, messageId: 'reused@x' });
    await dovecot.append([first('desk@in.test')], { user: 'reflag' });
    await dovecot.append([first('desk@in.test')], { user: 'redel' });
    const app = await startTestApp({
      routes: routesYaml('http://127.0.0.1:9/unused'),
      extra: imapBlock(mailboxYaml(dovecot, 'reflag', { after_delivery: 'flag', claim: 'move' }), mailboxYaml(dovecot, 'redel', { after_delivery: 'delete', claim: 'move', claim_timeout: 3600 })),
    });
    try {
      await until(() => count(app.spool.db) === 2, 10_000, 'the first messages');
      await Promise.all(app.mailboxes.bridges.map((b) => until(() => b.status.state === 'idle', 10_000, 'idle')));
      // The delivered copies are still in the processing folder (\Seen; \Deleted until the expunge an hour later).
      const next = message('new', { to: 'desk@in.test', messageId: 'reused@x', body: 'another message, the same Message-ID' });
      await dovecot.append([next], { user: 'reflag' });
      await dovecot.append([next], { user: 'redel' });
      await until(() => count(app.spool.db) === 4, 10_000, 'the new messages stored');
      await Promise.all(app.mailboxes.bridges.map((b) => until(() => b.status.state === 'idle', 10_000, 'idle')));
      assert.deepEqual(await dovecot.list('INBOX', 'reflag'), []);
      assert.deepEqual((await dovecot.list(PROCESSING, 'reflag')).map((m) => m.flags), [['\\Seen'], ['\\Seen']], 'both delivered, both kept');
      assert.equal(count(app.spool.db, `json_extract(meta, '$.messageId') = 'reused@x'`), 4);
    } finally {
      await app.close();
    }
  });

  test('a server that cannot store keywords (no PERMANENTFLAGS \\*, as Office 365): an unmatched message is looked at once per instance, not passed back and forth', async () => {
    // Dovecot offers \* everywhere; hidden here from every client in this process, as Exchange does not offer it.
    const open = ImapFlow.prototype.mailboxOpen;
    ImapFlow.prototype.mailboxOpen = async function (this: ImapFlow, ...args: Parameters<ImapFlow['mailboxOpen']>) {
      const box = await open.apply(this, args);
      box.permanentFlags?.delete('\\*');
      return box;
    };
    const apps: TestApp[] = [];
    try {
      await dovecot.append([message('u', { to: 'stranger@elsewhere.test', messageId: 'noperm-u@x' })], { user: 'noperm' });
      const block = imapBlock(mailboxYaml(dovecot, 'noperm', { after_delivery: 'delete', claim: 'move', idle_timeout: 1 }));
      for (let i = 0; i < 2; i++) apps.push(await startTestApp({ routes: routesYaml('http://127.0.0.1:9/unused'), extra: block }));
      const looked = () => apps.map((a) => a.logs.filter((l) => l.includes('no route accepts')).length);
      await until(() => looked().every((n) => n >= 1), 10_000, 'both instances to look at the message');
      // Then mail flows on (several IDLE restarts later) and the unmatched message stays where it is.
      await dovecot.append([message('d', { to: 'desk@in.test', messageId: 'noperm-d@x' })], { user: 'noperm' });
      await until(() => apps.reduce((n, a) => n + count(a.spool.db), 0) === 1, 10_000, 'the routed message');
      for (const a of apps) await until(() => a.mailboxes.bridges[0]!.status.state === 'idle', 10_000, 'idle');
      assert.deepEqual(looked(), [1, 1], 'each instance looked at it once');
      assert.deepEqual((await dovecot.list('INBOX', 'noperm')).map((m) => m.flags), [[]], 'left in the mailbox, unread (no keyword to mark it)');
    } finally {
      await Promise.all(apps.map((a) => a.close()));
      ImapFlow.prototype.mailboxOpen = open;
    }
  });

  test('after_delivery flag, delete and move:<folder> on the move path; unmatched leave goes back to the mailbox, marked', async () => {
    await dovecot.append([message('f1', { to: 'desk@in.test', messageId: 'f1@x' }), message('fu', { to: 'stranger@elsewhere.test', messageId: 'fu@x' })], { user: 'flag' });
    await dovecot.append([message('d1', { to: 'desk@in.test', messageId: 'd1@x' })], { user: 'del' });
    await dovecot.append([message('m1', { to: 'desk@in.test', messageId: 'm1@x' })], { user: 'move' });
    const app = await startTestApp({
      routes: routesYaml('http://127.0.0.1:9/unused'),
      extra: imapBlock(
        mailboxYaml(dovecot, 'flag', { after_delivery: 'flag', claim: 'move', claim_folder: 'Work' }),
        mailboxYaml(dovecot, 'del', { after_delivery: 'delete', claim: 'move', claim_timeout: 1 }),
        mailboxYaml(dovecot, 'move', { after_delivery: 'move:Done', claim: 'move', claim_timeout: 1 }),
      ),
    });
    try {
      await until(() => count(app.spool.db) === 3, 10_000, 'three messages');
      await Promise.all(app.mailboxes.bridges.map((b) => until(() => b.status.state === 'idle', 10_000, 'idle')));
      // flag: \Seen in the processing folder (here claim_folder: Work); the unmatched one back in INBOX, marked skipped.
      assert.deepEqual((await dovecot.list('Work', 'flag')).map((m) => m.flags), [['\\Seen']]);
      assert.deepEqual((await dovecot.list('INBOX', 'flag')).map((m) => m.flags), [[SKIP_KEYWORD]]);
      // delete: expunged from the processing folder (after claim_timeout, here 1 s).
      assert.deepEqual(await dovecot.list('INBOX', 'del'), []);
      await untilAsync(async () => (await dovecot.list(PROCESSING, 'del')).length === 0, 10_000, 'the delivered copy expunged');
      // move:Done: from the processing folder to Done.
      assert.equal((await dovecot.list('Done', 'move')).length, 1);
      await untilAsync(async () => (await dovecot.list(PROCESSING, 'move')).length === 0, 10_000, 'the delivered copy expunged');
      // The unmatched message is not claimed again on later passes.
      await dovecot.append([message('f2', { to: 'desk@in.test', messageId: 'f2@x' })], { user: 'flag' });
      await until(() => count(app.spool.db) === 4, 10_000, 'the next message');
      await until(() => app.mailboxes.bridges[0]!.status.state === 'idle', 10_000, 'idle');
      assert.deepEqual((await dovecot.list('INBOX', 'flag')).map((m) => m.flags), [[SKIP_KEYWORD]]);
      assert.equal(app.logs.filter((l) => l.includes('no route accepts')).length, 1, 'looked at once');
      for (const user of ['flag', 'del', 'move']) {
        for (const folder of ['INBOX', PROCESSING, 'Work', 'Done']) {
          const c = await dovecot.client(user);
          const exists = (await c.list()).some((l) => l.path === folder);
          await c.logout();
          if (exists) assert.ok((await dovecot.list(folder, user)).every((m) => !m.flags.includes(CLAIM_KEYWORD)), 'no claim keyword on the move path');
        }
      }
    } finally {
      await app.close();
    }
  });
});

describe('a server with neither CONDSTORE nor MOVE', { skip }, () => {
  let dovecot: Dovecot;
  before(async () => {
    dovecot = await startDovecot({ users: ['plain', 'insist'], capability: 'IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ UIDPLUS' });
  });
  after(async () => {
    await dovecot?.close();
  });

  test('claim: auto warns at start, naming the mailbox, and shows single-instance in the status; claim: move refuses to run', async () => {
    await dovecot.append([message('p1', { to: 'desk@in.test', messageId: 'p1@x' })], { user: 'plain' });
    const app = await startTestApp({
      routes: routesYaml('http://127.0.0.1:9/unused'),
      extra: imapBlock(mailboxYaml(dovecot, 'plain', { after_delivery: 'delete' }), mailboxYaml(dovecot, 'insist', { claim: 'move' })),
    });
    try {
      await until(() => count(app.spool.db) === 1, 10_000, 'the message (one instance needs no claim)');
      const warning = app.logs.find((l) => l.includes('are not claimed; run a single instance'));
      assert.ok(warning, 'a warning at start');
      assert.match(warning!, /mailbox plain \(INBOX\)/);
      const details = app.mailboxes.bridges[0]!.status.details;
      assert.equal(details.claim, 'none');
      assert.equal(details.single_instance_only, true);
      const body = (await (await fetch(`${app.httpUrl}/readyz`)).json()) as unknown;
      assert.match(JSON.stringify(body), /"single_instance_only":true/);
      const insist = app.mailboxes.bridges[1]!;
      await until(() => insist.status.lastError !== null, 5000, 'claim: move to fail');
      assert.match(insist.status.lastError!.message, /claim: move needs the MOVE and UIDPLUS extensions/);
    } finally {
      await app.close();
    }
  });
});
