// A server that names the UID in unsolicited FETCH (FLAGS) updates (RFC 7162 requires it under QRESYNC; some servers
// always do), through a proxy in front of Dovecot that follows every FETCH row with such an update for the same
// message: in each claim mode, each message is stored once, delivered once and marked as after_delivery says.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startDovecot, dovecotSkip, type Dovecot } from '../helpers/dovecot.js';
import { Consumer } from '../helpers/consumer.js';
import { EchoFetchProxy } from '../helpers/echo-fetch-proxy.js';
import { startTestApp, until, untilAsync } from '../helpers/app.js';
import { CLAIM_KEYWORD } from '../../src/imap/claim.js';
import { count, imapBlock, mailboxYaml, message, routesYaml } from './setup.js';

const skip = dovecotSkip();
const PROCESSING = 'mailhook-processing';

type Claim = 'keyword' | 'move' | 'none';
type After = 'flag' | 'delete' | 'move:Archive';
const cases: Array<[Claim, After]> = [
  ['keyword', 'flag'],
  ['keyword', 'delete'],
  ['keyword', 'move:Archive'],
  ['move', 'flag'],
  ['move', 'delete'],
  ['move', 'move:Archive'],
  ['none', 'flag'],
  ['none', 'delete'],
];
const userOf = (claim: Claim, after: After) => `${claim}-${after.replace(':', '-')}`.toLowerCase(); // Dovecot lowercases user names

describe('unsolicited FETCH updates that carry the UID (a proxy adds one after every FETCH row)', { skip }, () => {
  let dovecot: Dovecot;
  before(async () => {
    dovecot = await startDovecot({ users: [...cases.map(([c, a]) => userOf(c, a)), 'changed', 'changed-now'] });
  });
  after(async () => {
    await dovecot?.close();
  });

  test('keyword claims: a message the server reports changed while the batch FETCH ran (a higher MODSEQ) is not claimed with that MODSEQ; a later pass claims and delivers it once', async () => {
    const user = 'changed';
    await dovecot.append([message('changed-1')], { user });
    const consumer = await new Consumer().start();
    // The first FETCH row with a MODSEQ (the batch FETCH's) is followed by an update one MODSEQ higher.
    const proxy = await new EchoFetchProxy(dovecot.port, 1).start();
    const app = await startTestApp({
      routes: routesYaml(consumer.url),
      extra: imapBlock(mailboxYaml(dovecot, user, { port: proxy.port, claim: 'keyword', after_delivery: 'flag', idle_timeout: 1 })),
    });
    try {
      await consumer.waitFor(1, 15_000);
      assert.equal(proxy.bumped.length, 1, 'one update claimed a change');
      // The claim: UID STORE … (UNCHANGEDSINCE m) +FLAGS ($MailhookClaimed).
      const claims = proxy.commands.filter((c) => /\+FLAGS/i.test(c) && c.includes(CLAIM_KEYWORD));
      const unchangedSince = claims.flatMap((c) => [...c.matchAll(/UNCHANGEDSINCE (\d+)/gi)].map((m) => BigInt(m[1]!)));
      assert.ok(unchangedSince.length > 0, `the claim was a conditional STORE: ${JSON.stringify(proxy.commands)}`);
      assert.ok(unchangedSince.every((m) => m < proxy.bumped[0]!), `no claim counted the changed MODSEQ ${proxy.bumped[0]}: ${unchangedSince}`);
      assert.equal(count(app.spool.db), 1);
      assert.equal(consumer.requests.length, 1, 'delivered once');
    } finally {
      await app.close();
      await proxy.stop();
      await consumer.stop();
    }
  });

  test('keyword claims: the message left for changing during the batch FETCH is taken in the same drain, not at the next new message or IDLE restart', async () => {
    const user = 'changed-now';
    await dovecot.append([message('changed-now-1')], { user });
    const consumer = await new Consumer().start();
    const proxy = await new EchoFetchProxy(dovecot.port, 1).start();
    // idle_timeout 300 s: only another look in the same drain delivers it within the wait below.
    const app = await startTestApp({
      routes: routesYaml(consumer.url),
      extra: imapBlock(mailboxYaml(dovecot, user, { port: proxy.port, claim: 'keyword', after_delivery: 'flag', idle_timeout: 300 })),
    });
    try {
      await consumer.waitFor(1, 15_000);
      assert.equal(proxy.bumped.length, 1, 'one update claimed a change');
      assert.equal(count(app.spool.db), 1);
      assert.equal(consumer.requests.length, 1, 'delivered once');
      // A message reported changed at every look is looked at a bounded number of times per drain, no busy loop.
      const batchFetches = () => proxy.commands.filter((c) => /^\S+ UID FETCH \d+ \(UID FLAGS RFC822\.SIZE MODSEQ\)$/i.test(c)).length;
      // In IDLE first: the drain that delivered the first message is over, so the new message is one drain's work
      // (appended while that drain ran, it would be looked at by it and by the drain its EXISTS starts).
      await until(() => app.mailboxes.bridges[0]!.status.state === 'idle', 10_000, 'in IDLE');
      const before = batchFetches();
      const bumpedBefore = proxy.bumped.length;
      proxy.bump = Number.POSITIVE_INFINITY;
      await dovecot.append([message('changed-now-2')], { user });
      await until(() => proxy.bumped.length - bumpedBefore >= 4, 10_000, 'four looks at the ever-changing message');
      await until(() => app.mailboxes.bridges[0]!.status.state === 'idle', 10_000, 'back in IDLE');
      assert.equal(batchFetches() - before, 4, `one look and three more rounds: ${JSON.stringify(proxy.commands.slice(-12))}`);
      assert.equal(consumer.requests.length, 1, 'not taken while it keeps changing');
    } finally {
      await app.close();
      await proxy.stop();
      await consumer.stop();
    }
  });

  for (const [claim, afterDelivery] of cases) {
    test(`claim: ${claim}, after_delivery: ${afterDelivery}: each message stored once, delivered once, marked`, async (t) => {
      const user = userOf(claim, afterDelivery);
      const keys = [1, 2, 3].map((i) => `${user}-${i}`);
      await dovecot.append(keys.map((k) => message(k)), { user });
      const consumer = await new Consumer().start();
      const proxy = await new EchoFetchProxy(dovecot.port).start();
      const app = await startTestApp({
        routes: routesYaml(consumer.url),
        extra: imapBlock(mailboxYaml(dovecot, user, { port: proxy.port, claim, after_delivery: afterDelivery, claim_timeout: 1 })),
      });
      const bridge = app.mailboxes.bridges[0]!;
      try {
        await until(() => count(app.spool.db) >= keys.length, 10_000, 'the messages in the spool');
        await consumer.waitFor(keys.length, 10_000);
        await until(() => bridge.status.state === 'idle', 10_000, 'idle');
        // A message stored twice is in the spool by now (stored before it is marked); its deliveries too, until sent.
        const undelivered = () => (app.spool.db.prepare(`SELECT count(*) AS n FROM deliveries WHERE status != 'delivered'`).get() as { n: number }).n;
        await until(() => undelivered() === 0, 10_000, 'every delivery sent');
        const rows = app.spool.db.prepare(`SELECT json_extract(meta, '$.messageId') AS id, dedupe_key AS key FROM messages ORDER BY id`).all() as Array<{ id: string; key: string }>;
        t.diagnostic(`spool: ${JSON.stringify(rows)}; webhooks: ${consumer.requests.length}; logged as already in the spool: ${app.logs.filter((l) => l.includes('message was already in the spool')).length}; proxy added ${proxy.echoed.length} rows, e.g. ${JSON.stringify(proxy.echoed.slice(0, 2))}`);
        assert.ok(proxy.echoed.some((e) => /RFC822\.SIZE/.test(e.original)), 'the batch FETCH rows were followed by flags-only rows with the UID');
        assert.ok(proxy.echoed.some((e) => /BODY\[\] \{\d+\}$/.test(e.original)), 'the source FETCH rows too');
        assert.deepEqual(rows.map((r) => r.id), keys.map((k) => `${k}@example.test`), 'each message stored once');
        const delivered = consumer.requests.map((r) => (JSON.parse(r.body.toString()) as { recipients: Array<{ key: string }> }).recipients[0]!.key).sort();
        assert.deepEqual(delivered, keys, 'each webhook delivered once');
        const errors = app.logs.map((l) => JSON.parse(l) as { level: number; msg: string }).filter((l) => l.level >= 50);
        assert.deepEqual(errors, [], 'no error logged');
        assert.equal(bridge.status.lastError, null, 'the session went on');
        assert.ok(!app.logs.some((l) => l.includes('message was already in the spool')), 'no message taken twice in a batch');
        if (afterDelivery === 'flag') {
          const folder = claim === 'move' ? PROCESSING : 'INBOX';
          assert.deepEqual((await dovecot.list(folder, user)).map((m) => m.flags), keys.map(() => ['\\Seen']), `\\Seen in ${folder}`);
        } else {
          assert.deepEqual(await dovecot.list('INBOX', user), [], 'gone from INBOX');
        }
        if (afterDelivery === 'move:Archive') {
          // Keyword claims: the claim travels with the moved message (see bridge.test.ts).
          assert.deepEqual((await dovecot.list('Archive', user)).map((m) => m.flags), keys.map(() => (claim === 'keyword' ? [CLAIM_KEYWORD] : [])), 'moved to Archive');
        }
        if (claim === 'move' && afterDelivery !== 'flag') {
          await untilAsync(async () => (await dovecot.list(PROCESSING, user)).length === 0, 10_000, 'the delivered copies expunged from the processing folder');
        }
        if (claim === 'move') assert.ok(proxy.echoed.some((e) => /BODY\[HEADER\.FIELDS/i.test(e.original)), 'the processing-folder FETCH rows too');
      } finally {
        await app.close();
        await proxy.stop();
        await consumer.stop();
      }
    });
  }
});
