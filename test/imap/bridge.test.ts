// The IMAP bridge against a real Dovecot: IDLE latency, header order end to end, after_delivery variants,
// unmatched policies, XOAUTH2 with both token grants, and failures that back off instead of crashing.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startDovecot, dovecotSkip, type Dovecot } from '../helpers/dovecot.js';
import { Consumer } from '../helpers/consumer.js';
import { OAuthStandin } from '../helpers/oauth-standin.js';
import { configYaml, parseTestConfig, startTestApp, tempDir, until, type TestApp } from '../helpers/app.js';
import { createHash } from 'node:crypto';
import { CLAIM_KEYWORD, SKIP_KEYWORD, TOUCH_KEYWORD } from '../../src/imap/claim.js';
import { ImapFlow } from 'imapflow';
import { ImapBridge } from '../../src/imap/bridge.js';
import { MailboxIngest, ingestLimits } from '../../src/imap/ingest.js';
import { Spool } from '../../src/spool/spool.js';
import { Router } from '../../src/routing/router.js';
import { createMetrics } from '../../src/core/metrics.js';
import { createLogger } from '../../src/core/logger.js';
import type { ImapMailboxSettings } from '../../src/config/mailboxes.js';
import { count, crlf, imapBlock, mailboxYaml, message, routesYaml } from './setup.js';
import { PausingProxy } from '../helpers/pausing-proxy.js';

const skip = dovecotSkip();
const fixture = (name: string) => crlf(readFileSync(fileURLToPath(new URL(`../fixtures/imap/${name}`, import.meta.url))));

describe('IMAP bridge against Dovecot', { skip }, () => {
  let dovecot: Dovecot;
  let oauth: OAuthStandin;
  before(async () => {
    oauth = await new OAuthStandin().start();
    dovecot = await startDovecot({
      users: ['idle', 'order', 'del', 'flag', 'move', 'leave', 'unmove', 'unroute', 'o365', 'gmail', 'big', 'interrupted', 'gen', 'large', 'retry', 'kwmove', 'kwheld', 'kwrace', 'kwcut', 'kwcut2', 'pwfile', 'limits', 'reuse', 'unsol', 'unread', 'remark', 'lister'],
      introspectionUrl: oauth.introspectionUrl,
    });
  });
  after(async () => {
    await dovecot?.close();
    await oauth?.stop();
  });

  const bridgeOf = (app: TestApp, i = 0) => app.mailboxes.bridges[i] as ImapBridge;

  test('IDLE: a message appended to the mailbox reaches the spool and the webhook without waiting for a reconnect (idle_timeout 30 s)', async (t) => {
    const consumer = await new Consumer().start();
    const app = await startTestApp({ routes: routesYaml(consumer.url), extra: imapBlock(mailboxYaml(dovecot, 'idle', { after_delivery: 'delete' })) });
    try {
      const bridge = bridgeOf(app);
      await until(() => bridge.status.state === 'idle', 10_000, 'the bridge to idle');
      const spoolMs: number[] = [];
      const webhookMs: number[] = [];
      for (let i = 0; i < 3; i++) {
        await until(() => bridge.status.state === 'idle', 10_000, 'the bridge to idle again');
        const t0 = Date.now();
        await dovecot.append([message(`idle-${i}`)], { user: 'idle' });
        const reqs = await consumer.waitFor(i + 1, 5000);
        const row = app.spool.db.prepare(`SELECT received_at FROM messages WHERE json_extract(meta, '$.messageId') = ?`).get(`idle-${i}@example.test`) as { received_at: number };
        spoolMs.push(row.received_at - t0);
        webhookMs.push(reqs[i]!.at - t0);
      }
      t.diagnostic(`APPEND → spool commit: ${spoolMs.join(', ')} ms; APPEND → webhook received: ${webhookMs.join(', ')} ms`);
      const body = consumer.json<{ recipients: Array<{ address: string; key: string }>; envelope: { rcpt_to?: string[] } }>(0);
      assert.deepEqual(body.recipients, [{ address: 'incoming+idle-0@in.test', key: 'idle-0' }]);
      await until(() => bridge.status.state === 'idle', 5000, 'the bridge to finish the pass');
      assert.deepEqual(await dovecot.list('INBOX', 'idle'), [], 'after_delivery delete expunges the delivered messages');
    } finally {
      await app.close();
      await consumer.stop();
    }
  });

  test('header order cases end to end: the first routed header in GitLab order names route and key', async () => {
    const files = [
      ['delivered-to-first-of-two.eml', 'alpha-42', 'delivered-to'],
      ['envelope-to-with-display-address.eml', 'beta-7', 'envelope-to'],
      ['x-envelope-to-angle.eml', 'gamma-9', 'x-envelope-to'],
      ['received-for-folded.eml', 'delta-1', 'received'],
      ['received-for-bare.eml', 'epsilon-5', 'received'],
      ['cc-only.eml', 'zeta-3', 'cc'],
      ['to-beats-delivered-to.eml', 'from-to', 'to'],
      ['forwarded-x-forwarded-to.eml', 'eta-8', 'x-forwarded-to'],
      ['leading-blank-line.eml', 'theta-2', 'delivered-to'],
      ['glued-header.eml', 'iota-4', 'to'],
    ] as const;
    await dovecot.append([...files.map(([f]) => fixture(f)), fixture('unmatched.eml')], { user: 'order' });
    const consumer = await new Consumer().start();
    const app = await startTestApp({ routes: routesYaml(consumer.url), extra: imapBlock(mailboxYaml(dovecot, 'order')) });
    try {
      const reqs = await consumer.waitFor(files.length, 10_000);
      const keys = reqs.map((r) => (JSON.parse(r.body.toString()) as { recipients: Array<{ key: string }> }).recipients[0]!.key).sort();
      assert.deepEqual(keys, files.map(([, k]) => k).sort());
      const meta = app.spool.db.prepare(`SELECT json_extract(meta, '$.recipientHeader') AS h, rcpt_to FROM messages ORDER BY rcpt_to`).all() as Array<{ h: string; rcpt_to: string }>;
      const byKey = new Map(meta.map((m) => [(JSON.parse(m.rcpt_to) as string[])[0]!.replace(/^incoming\+|@in\.test$/g, ''), m.h]));
      for (const [, key, header] of files) assert.equal(byKey.get(key), header, key);
      // The unmatched one stays, unread, marked so it is not fetched again (policy "leave", the default).
      await until(() => bridgeOf(app).status.state === 'idle', 5000, 'the bridge to finish the pass');
      const left = await dovecot.list('INBOX', 'order');
      const unmatched = left.filter((m) => !m.flags.includes('\\Seen'));
      assert.equal(unmatched.length, 1);
      assert.deepEqual(unmatched[0]!.flags, [SKIP_KEYWORD]);
      assert.equal(left.filter((m) => m.flags.includes('\\Seen')).length, files.length, 'after_delivery flag (the default) marks delivered messages read');
      assert.ok(left.every((m) => !m.flags.includes(CLAIM_KEYWORD)), 'no claim keyword is left behind');
    } finally {
      await app.close();
      await consumer.stop();
    }
  });

  test('after_delivery: delete expunges, flag marks \\Seen, move:<folder> moves (created when missing)', async () => {
    const consumer = await new Consumer().start();
    for (const user of ['del', 'flag', 'move']) await dovecot.append([message('a', { to: 'desk@in.test', messageId: `${user}-a@x` }), message('b', { to: 'desk@in.test', messageId: `${user}-b@x` })], { user });
    const app = await startTestApp({
      routes: routesYaml(consumer.url),
      extra: imapBlock(mailboxYaml(dovecot, 'del', { after_delivery: 'delete' }), mailboxYaml(dovecot, 'flag', { after_delivery: 'flag' }), mailboxYaml(dovecot, 'move', { after_delivery: 'move:Processed' })),
    });
    try {
      await until(() => count(app.spool.db) === 6, 10_000, 'six messages in the spool');
      await until(() => app.mailboxes.bridges.every((b) => b.status.state === 'idle'), 10_000, 'all bridges idle');
      assert.deepEqual(await dovecot.list('INBOX', 'del'), []);
      assert.deepEqual((await dovecot.list('INBOX', 'flag')).map((m) => m.flags), [['\\Seen'], ['\\Seen']]);
      assert.deepEqual(await dovecot.list('INBOX', 'move'), []);
      assert.deepEqual((await dovecot.list('Processed', 'move')).map((m) => m.flags), [[CLAIM_KEYWORD], [CLAIM_KEYWORD]], 'keyword claims (Dovecot has CONDSTORE): the claim travels with the moved copy (see the race test)');
      // Dedupe keys: imap:<mailbox name>:<uidvalidity>:<uid>.
      const keys = (app.spool.db.prepare(`SELECT dedupe_key FROM messages ORDER BY dedupe_key`).all() as Array<{ dedupe_key: string }>).map((r) => r.dedupe_key);
      for (const k of keys) assert.match(k, /^imap:(del|flag|move):\d+:[12]$/);
      const msg = app.spool.getMessage((app.spool.db.prepare(`SELECT id FROM messages LIMIT 1`).get() as { id: string }).id)!;
      assert.equal(msg.source, 'imap');
      assert.deepEqual(msg.envelope.rcptTo, ['desk@in.test']);
      assert.equal(msg.envelope.mailFrom, 'sender@example.test');
    } finally {
      await app.close();
      await consumer.stop();
    }
  });

  test('keyword claims, after_delivery move: a MOVE the server refuses puts the claim back; no other instance takes the message', async () => {
    const consumer = await new Consumer().start();
    const entry = (delay: number) => imapBlock(mailboxYaml(dovecot, 'kwmove', { after_delivery: 'move:Archive', claim: 'keyword', reconnect_delay_ms: delay, reconnect_max_delay_ms: delay }));
    const a = await startTestApp({ routes: routesYaml(consumer.url), extra: entry(60_000) });
    let b: TestApp | undefined;
    try {
      await until(() => bridgeOf(a).status.state === 'idle', 10_000, 'A idle (Archive created)');
      const c = await dovecot.client('kwmove');
      await c.mailboxDelete('Archive');
      await c.logout();
      await dovecot.append([message('k1', { to: 'desk@in.test', messageId: 'kwmove-1@x' })], { user: 'kwmove' });
      await until(() => bridgeOf(a).status.state === 'backoff', 10_000, 'the MOVE refused');
      assert.match(bridgeOf(a).status.lastError?.message ?? '', /^after_delivery move:Archive failed for 1 message\(s\) \(the server: \[TRYCREATE\] Mailbox doesn't exist: Archive.*\); they are in the spool/, 'the server\'s reason is shown');
      assert.equal(count(a.spool.db), 1, 'in A\'s spool');
      assert.deepEqual((await dovecot.list('INBOX', 'kwmove')).map((m) => m.flags), [[CLAIM_KEYWORD]], 'still claimed');
      b = await startTestApp({ routes: routesYaml(consumer.url), extra: entry(100) });
      await until(() => bridgeOf(b!).status.state === 'idle', 10_000, 'B finished a pass');
      assert.equal(count(b.spool.db), 0, 'B left it to its claimant');
    } finally {
      await a.close();
      await b?.close();
      await consumer.stop();
    }
  });

  test('keyword claims: a MOVE refused again and again touches the claim each time, so another instance does not take it for stale', async () => {
    const consumer = await new Consumer().start();
    const a = await startTestApp({ routes: routesYaml(consumer.url), extra: imapBlock(mailboxYaml(dovecot, 'kwheld', { after_delivery: 'move:Archive', claim: 'keyword', reconnect_delay_ms: 100, reconnect_max_delay_ms: 100 })) });
    const archive = ['tmp', 'new', 'cur'].map((sub) => join(dovecot.dir, 'home', 'kwheld', 'Maildir', '.Archive', sub));
    let b: TestApp | undefined;
    let aClosed = false;
    try {
      await until(() => bridgeOf(a).status.state === 'idle', 10_000, 'A idle (Archive created)');
      // Archive stays, but Dovecot (running as nobody) cannot write into it: every MOVE is refused, session after session.
      for (const sub of archive) chmodSync(sub, 0o555);
      await dovecot.append([message('h1', { to: 'desk@in.test', messageId: 'kwheld-1@x' })], { user: 'kwheld' });
      await until(() => bridgeOf(a).status.consecutiveFailures >= 1, 10_000, 'the MOVE refused');
      // B would take over a claim left unchanged for 1 s.
      b = await startTestApp({ routes: routesYaml(consumer.url), extra: imapBlock(mailboxYaml(dovecot, 'kwheld', { after_delivery: 'move:Archive', claim: 'keyword', claim_timeout: 1 })) });
      await until(() => bridgeOf(b!).status.state === 'idle', 10_000, 'B finished a pass');
      const t0 = Date.now();
      const refusals = () => a.logs.filter((l) => l.includes('after_delivery move:Archive failed')).length;
      const r0 = refusals();
      await until(() => Date.now() - t0 > 3000 && refusals() >= r0 + 10, 15_000, 'three claim timeouts of B, and ten more refused moves of A');
      assert.equal(count(b.spool.db), 0, 'B left it to its claimant');
      assert.ok(!b.logs.some((l) => l.includes('took over a stale claim')));
      // INBOX is looked at with both instances stopped, B first (once A's touches end, B would take the claim a second
      // later). While A runs it touches the claim every ~150 ms, and a listing then can see the message mid-touch
      // ($MailhookTouched set for the moment between A's two STOREs), a real but passing state this assertion is not
      // about. (The one CI failure here, two claimed messages listed, was the listing helper taking Dovecot's unsolicited
      // FLAGS update for a second message; see dovecot.ts list().) What mailhook leaves stays: two messages, a lost
      // claim or a touch keyword left set still fail.
      await b.close();
      b = undefined;
      await a.close();
      aClosed = true;
      const listed = await dovecot.list('INBOX', 'kwheld');
      assert.deepEqual(listed.map((m) => m.flags), [[CLAIM_KEYWORD]], `claimed, the touch keyword gone again: ${JSON.stringify(listed)}; Dovecot: ${dovecot.log().slice(-2000)}`);
    } finally {
      for (const sub of archive) chmodSync(sub, 0o700);
      if (!aClosed) await a.close();
      await b?.close();
      await consumer.stop();
    }
  });

  test('the test listing (dovecot.list) lists each message once while another session changes their flags', async () => {
    // Dovecot ends a FETCH with an unsolicited "* n FETCH (MODSEQ (m) FLAGS (...))" for a message another session
    // changed meanwhile, and imapflow's fetch() yields it too: the helper listed such a message twice (the refused-MOVE
    // test above failed so while its instance touched the claim). Two real messages must still list as two.
    await dovecot.append([message('l1', { messageId: 'lister-1@x' }), message('l2', { messageId: 'lister-2@x' })], { user: 'lister' });
    const c = await dovecot.client('lister');
    let stop = false;
    let toucher: Promise<void> | undefined;
    try {
      await c.mailboxOpen('INBOX');
      toucher = (async () => {
        while (!stop) {
          await c.messageFlagsAdd('1:2', [TOUCH_KEYWORD], { uid: true });
          await c.messageFlagsRemove('1:2', [TOUCH_KEYWORD], { uid: true });
        }
      })();
      for (let i = 0; i < 20; i++) assert.deepEqual((await dovecot.list('INBOX', 'lister')).map((m) => m.uid), [1, 2], `listing ${i + 1}`);
    } finally {
      stop = true;
      await toucher;
      await c.logout();
    }
  });

  test('keyword claims, after_delivery move: while the MOVE is on its way the message stays claimed, so another instance does not take it', async () => {
    const consumer = await new Consumer().start();
    // A's connection goes through a proxy that holds its UID MOVE: the window between its STORE and its MOVE.
    const proxy = await new PausingProxy(dovecot.port, /UID MOVE/i).start();
    const entry = (port: number) => imapBlock(mailboxYaml(dovecot, 'kwrace', { after_delivery: 'move:Processed', claim: 'keyword', port }));
    const a = await startTestApp({ routes: routesYaml(consumer.url), extra: entry(proxy.port) });
    let b: TestApp | undefined;
    try {
      await until(() => bridgeOf(a).status.state === 'idle', 10_000, 'A idle');
      await dovecot.append([message('r1', { messageId: 'kwrace-1@x' })], { user: 'kwrace' }); // to incoming+r1@: a webhook route
      await proxy.caught;
      assert.equal(count(a.spool.db), 1, "in A's spool");
      assert.deepEqual((await dovecot.list('INBOX', 'kwrace')).map((m) => m.flags), [[CLAIM_KEYWORD]], 'still claimed');
      b = await startTestApp({ routes: routesYaml(consumer.url), extra: entry(dovecot.port) });
      await until(() => bridgeOf(b!).status.state === 'idle', 10_000, 'B finished a pass');
      assert.equal(count(b.spool.db), 0, 'B did not take it');
      proxy.go();
      let moved: Array<{ flags: string[] }> = [];
      for (const t0 = Date.now(); moved.length === 0 && Date.now() - t0 < 10_000; ) {
        moved = await dovecot.list('Processed', 'kwrace');
        if (moved.length === 0) await new Promise((r) => setTimeout(r, 20));
      }
      assert.deepEqual(moved.map((m) => m.flags), [[CLAIM_KEYWORD]], 'moved with its claim');
      assert.deepEqual(await dovecot.list('INBOX', 'kwrace'), []);
      await consumer.waitFor(1, 5000);
      assert.equal(consumer.requests.length, 1, 'delivered once');
    } finally {
      await a.close();
      await b?.close();
      await proxy.stop();
      await consumer.stop();
    }
  });

  test('keyword claims: a connection lost between claim and commit; the next session takes its own claim back at once, not after claim_timeout', async () => {
    const consumer = await new Consumer().start();
    // The proxy holds the first body FETCH (the message is claimed by then) and the test drops the connection there.
    const proxy = await new PausingProxy(dovecot.port, /BODY\.PEEK\[\]/i).start();
    const app = await startTestApp({ routes: routesYaml(consumer.url), extra: imapBlock(mailboxYaml(dovecot, 'kwcut', { after_delivery: 'delete', claim: 'keyword', claim_timeout: 300, port: proxy.port })) });
    try {
      await until(() => bridgeOf(app).status.state === 'idle', 10_000, 'idle');
      await dovecot.append([message('cut1', { messageId: 'kwcut-1@x' })], { user: 'kwcut' });
      await proxy.caught;
      assert.deepEqual((await dovecot.list('INBOX', 'kwcut')).map((m) => m.flags), [[CLAIM_KEYWORD]], 'claimed, not yet fetched');
      proxy.cut();
      await consumer.waitFor(1, 15_000); // claim_timeout is 300 s
      for (const t0 = Date.now(); (await dovecot.list('INBOX', 'kwcut')).length > 0; ) {
        assert.ok(Date.now() - t0 < 10_000, 'deleted after delivery');
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(count(app.spool.db), 1);
      const lines = app.logs.map((l) => JSON.parse(l) as { msg: string; count?: number });
      assert.equal(lines.find((l) => l.msg.startsWith('taking back messages this process claimed'))?.count, 1);
      assert.ok(!lines.some((l) => l.msg.startsWith('took over a stale claim')));
    } finally {
      await app.close();
      await proxy.stop();
      await consumer.stop();
    }
  });

  test('keyword claims: a claim changed by someone else while the connection was down is not taken back (it waits as another instance\'s)', async () => {
    const consumer = await new Consumer().start();
    const proxy = await new PausingProxy(dovecot.port, /BODY\.PEEK\[\]/i).start();
    const app = await startTestApp({ routes: routesYaml(consumer.url), extra: imapBlock(mailboxYaml(dovecot, 'kwcut2', { after_delivery: 'delete', claim: 'keyword', claim_timeout: 300, port: proxy.port, reconnect_delay_ms: 1500, reconnect_max_delay_ms: 1500 })) });
    try {
      await until(() => bridgeOf(app).status.state === 'idle', 10_000, 'idle');
      await dovecot.append([message('cut2', { messageId: 'kwcut-2@x' })], { user: 'kwcut2' });
      await proxy.caught;
      proxy.cut();
      // Another instance took the claim over meanwhile (released and claimed it afresh: a new mod-sequence).
      const other = await dovecot.client('kwcut2');
      await other.mailboxOpen('INBOX');
      await other.messageFlagsRemove('1:*', [CLAIM_KEYWORD], { uid: true });
      await other.messageFlagsAdd('1:*', [CLAIM_KEYWORD], { uid: true });
      await other.logout();
      await until(() => bridgeOf(app).status.consecutiveFailures === 0 && bridgeOf(app).status.state === 'idle', 10_000, 'reconnected and idle');
      assert.equal(count(app.spool.db), 0, 'left to the claim\'s new holder');
      assert.equal(consumer.requests.length, 0);
      assert.deepEqual((await dovecot.list('INBOX', 'kwcut2')).map((m) => m.flags), [[CLAIM_KEYWORD]]);
    } finally {
      await app.close();
      await proxy.stop();
      await consumer.stop();
    }
  });

  test('smtp.limits apply to mailbox messages: one SMTP would refuse as unparseable is left in the mailbox, marked, not dead-lettered after taking it', async () => {
    const consumer = await new Consumer().start();
    const parts = Array.from({ length: 8 }, (_, i) => `--b1\r\nContent-Type: text/plain\r\n\r\npart ${i}\r\n`).join('') + '--b1--';
    const received = Array.from({ length: 4 }, (_, i) => `Received: from hop${i}.example.test by mx.example.test; Mon, 3 Mar 2025 10:00:0${i} +0000`).join('\r\n');
    await dovecot.append(
      [
        message('parts', { headers: 'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"', body: parts }),
        message('head', { headers: `X-Long: ${'h'.repeat(5000)}` }),
        message('hops', { headers: received }),
        message('fine'),
      ],
      { user: 'limits' },
    );
    const limits = '  greeting_delay_ms: 0\n  limits:\n    max_mime_parts: 5\n    max_header_bytes: 4096\n    max_received_headers: 3\n';
    const app = await startTestApp({ routes: '', yaml: (dir) => configYaml({ routes: routesYaml(consumer.url), dir, extra: imapBlock(mailboxYaml(dovecot, 'limits', { after_delivery: 'delete' })) }).replace('  greeting_delay_ms: 0\n', limits) });
    try {
      const reqs = await consumer.waitFor(2, 10_000);
      await until(() => bridgeOf(app).status.state === 'idle', 10_000, 'idle');
      // A hop count stops relay loops; a message in a mailbox has arrived, and a long forwarding chain is delivered.
      assert.deepEqual(reqs.map((r) => /test (\w+)/.exec(r.body.toString())?.[1]).sort(), ['fine', 'hops']);
      assert.equal(count(app.spool.db), 2, 'only the messages that can be parsed are in the spool');
      assert.deepEqual((await dovecot.list('INBOX', 'limits')).map((m) => m.flags), [[SKIP_KEYWORD], [SKIP_KEYWORD]], 'the two others stay, marked');
      const warnings = app.logs.map((l) => JSON.parse(l) as { msg: string; reason?: string }).filter((l) => l.msg.startsWith('message refused by smtp.limits'));
      assert.deepEqual(warnings.map((w) => w.reason).sort(), ['header section over 4096 bytes', 'more than 5 MIME parts']);
      assert.match(await (await fetch(`${app.httpUrl}/metrics`)).text(), /^mailhook_mailbox_messages_total\{mailbox="limits",outcome="refused"\} 2$/m);
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(consumer.requests.length, 2, 'nothing else delivered');
    } finally {
      await app.close();
      await consumer.stop();
    }
  });

  test('unmatched policies: leave (marked, never refetched), move:<folder>, route:<name>; none is dropped', async () => {
    const consumer = await new Consumer().start();
    for (const user of ['leave', 'unmove', 'unroute']) await dovecot.append([fixture('unmatched.eml'), message(`${user}-ok`)], { user });
    const yaml = imapBlock(
      mailboxYaml(dovecot, 'leave', { unmatched: 'leave', after_delivery: 'delete' }),
      mailboxYaml(dovecot, 'unmove', { unmatched: 'move:Unrouted', after_delivery: 'delete' }),
      mailboxYaml(dovecot, 'unroute', { unmatched: 'route:catchall', after_delivery: 'delete' }),
    );
    const dir = tempDir();
    let app = await startTestApp({ routes: routesYaml(consumer.url), extra: yaml, dir });
    try {
      await consumer.waitFor(3, 10_000);
      await until(() => count(app.spool.db) === 4, 10_000, 'three routed messages and one for the catchall route');
      await until(() => app.mailboxes.bridges.every((b) => b.status.state === 'idle'), 10_000, 'all bridges idle');
      const left = await dovecot.list('INBOX', 'leave');
      assert.equal(left.length, 1);
      assert.deepEqual(left[0]!.flags, [SKIP_KEYWORD]);
      assert.deepEqual(await dovecot.list('INBOX', 'unmove'), []);
      assert.equal((await dovecot.list('Unrouted', 'unmove')).length, 1);
      assert.deepEqual(await dovecot.list('INBOX', 'unroute'), []);
      const catchall = app.spool.db.prepare(`SELECT d.route, d.recipients FROM deliveries d JOIN messages m ON m.id = d.message_id WHERE d.route = 'catchall'`).all() as Array<{ route: string; recipients: string }>;
      assert.equal(catchall.length, 1);
      assert.deepEqual(JSON.parse(catchall[0]!.recipients), [{ address: 'newsletter@elsewhere.test', key: null }]);
      assert.ok(app.logs.some((l) => l.includes('no route accepts any recipient')), 'unmatched messages are logged');
    } finally {
      await app.close();
    }
    // A restart does not take the left message again.
    app = await startTestApp({ routes: routesYaml(consumer.url), extra: yaml, dir });
    try {
      await until(() => app.mailboxes.bridges.every((b) => b.status.state === 'idle'), 10_000, 'all bridges idle after restart');
      assert.equal(count(app.spool.db), 4);
      assert.equal((await dovecot.list('INBOX', 'leave')).length, 1);
    } finally {
      await app.close();
      await consumer.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('XOAUTH2: client credentials (Office 365) and refresh token (Gmail); a refused token is replaced', async () => {
    oauth.clients.push({ clientId: 'o365-app', clientSecret: 'o365-secret', username: 'o365' }, { clientId: 'gmail-app', clientSecret: 'gmail-secret', username: 'gmail' });
    oauth.refreshTokens.set('rt-gmail-1', { clientId: 'gmail-app', username: 'gmail' });
    oauth.rotateRefreshTokens = true;
    const entry = (user: string, oauth2: string) => `
  - name: ${user}
    host: 127.0.0.1
    port: ${dovecot.port}
    ssl: false
    user: ${user}
    after_delivery: delete
    reconnect_delay_ms: 100
    reconnect_max_delay_ms: 500
    oauth2:
${oauth2}`;
    const yaml = imapBlock(
      entry('o365', `      grant: client_credentials\n      tenant_id: tenant-1\n      azure_ad_endpoint: ${oauth.url}\n      client_id: o365-app\n      client_secret: o365-secret\n`),
      entry('gmail', `      grant: refresh_token\n      token_url: ${oauth.url}/token\n      client_id: gmail-app\n      client_secret: gmail-secret\n      refresh_token: rt-gmail-1\n`),
    );
    const consumer = await new Consumer().start();
    const app = await startTestApp({ routes: routesYaml(consumer.url), extra: yaml });
    try {
      await until(() => app.mailboxes.bridges.every((b) => b.status.state === 'idle'), 10_000, 'both OAuth mailboxes idle');
      await dovecot.append([message('o365-1')], { user: 'o365' });
      await dovecot.append([message('gmail-1')], { user: 'gmail' });
      await consumer.waitFor(2, 5000);
      const cc = oauth.tokenRequests.find((r) => r.grant === 'client_credentials');
      assert.equal(cc?.path, '/tenant-1/oauth2/v2.0/token');
      assert.equal(cc?.scope, 'https://outlook.office365.com/.default');
      assert.ok(oauth.tokenRequests.some((r) => r.grant === 'refresh_token' && r.clientId === 'gmail-app'));
      assert.match(dovecot.log(), /user=<o365>, method=XOAUTH2/);
      assert.match(dovecot.log(), /user=<gmail>, method=XOAUTH2/);

      // Tokens revoked and connections dropped: the cached token is refused, dropped, and a new one obtained.
      const before = oauth.tokenRequests.length;
      oauth.revokeAll();
      await dovecot.stop();
      await until(() => app.mailboxes.bridges.every((b) => b.status.state === 'backoff' || b.status.state === 'connecting'), 5000, 'both mailboxes down');
      await dovecot.start();
      await until(() => app.mailboxes.bridges.every((b) => b.status.state === 'idle'), 15_000, 'both mailboxes back with new tokens');
      assert.ok(oauth.tokenRequests.length >= before + 2, 'new tokens were fetched');
      // Counted, not read from lastError: a network error while Dovecot was still starting can come after it.
      assert.match(await (await fetch(`${app.httpUrl}/metrics`)).text(), /^mailhook_mailbox_errors_total\{mailbox="(o365|gmail)",kind="auth"\} [1-9]/m, 'the refused token shows as an auth error');
      await dovecot.append([message('o365-2')], { user: 'o365' });
      await dovecot.append([message('gmail-2')], { user: 'gmail' });
      await consumer.waitFor(4, 5000);
      const secrets = app.logs.join('\n');
      assert.ok(!secrets.includes('o365-secret') && !secrets.includes('rt-gmail-1') && !/at-[0-9a-f]{32}/.test(secrets), 'no secret or token is logged');
    } finally {
      await app.close();
      await consumer.stop();
    }
  });

  test('network, TLS and authentication failures back off and show in /readyz (503 only with mailboxes=required) and metrics; the process keeps serving', async () => {
    const consumer = await new Consumer().start();
    // A port held for the test that drops every connection at once (a port closed after binding it could be taken by
    // another test's server meanwhile: CI once saw an IMAP server there, and an authentication failure).
    const { createServer } = await import('node:net');
    const dropping = createServer((socket) => socket.destroy());
    await new Promise<void>((r) => dropping.listen(0, '127.0.0.1', r));
    const closedPort = (dropping.address() as { port: number }).port;
    const yaml = imapBlock(
      mailboxYaml(dovecot, 'big', { port: closedPort }, 'refused'),
      mailboxYaml(dovecot, 'big', { ssl: true }, 'tls'),
      mailboxYaml(dovecot, 'big', { password: 'wrong' }, 'badpass'),
    );
    const app = await startTestApp({ routes: routesYaml(consumer.url), extra: yaml });
    try {
      await until(() => app.mailboxes.bridges.every((b) => b.status.consecutiveFailures >= 3), 10_000, 'every mailbox to fail three times');
      const kinds = Object.fromEntries(app.mailboxes.bridges.map((b) => [b.status.name, b.status.lastError?.kind]));
      assert.deepEqual(kinds, { refused: 'network', tls: 'tls', badpass: 'auth' }, JSON.stringify(app.mailboxes.statuses()));
      type Ready = { status: string; checks: Record<string, boolean>; mailboxes: Array<{ name: string; state: string; healthy: boolean; last_error: { kind: string } | null }> };
      // Ready to take mail over SMTP (a Service keeps sending it), the mailboxes' trouble in the body.
      const ready = await fetch(`${app.httpUrl}/readyz`);
      assert.equal(ready.status, 200);
      const body = (await ready.json()) as Ready;
      assert.deepEqual(Object.keys(body.checks).sort(), ['smtp_listening', 'spool_disk_space', 'spool_writable']);
      assert.deepEqual(body.mailboxes.map((m) => m.name), ['refused', 'tls', 'badpass']);
      assert.ok(body.mailboxes.every((m) => !m.healthy && m.last_error !== null && ['backoff', 'connecting'].includes(m.state)));
      // A monitor that counts the mailboxes asks for them.
      const strict = await fetch(`${app.httpUrl}/readyz?mailboxes=required`);
      assert.equal(strict.status, 503);
      const strictBody = (await strict.json()) as Ready;
      assert.equal(strictBody.status, 'not ready');
      assert.equal(strictBody.checks['mailbox:refused'], false);
      assert.equal(strictBody.checks.smtp_listening, true);
      const metrics = await (await fetch(`${app.httpUrl}/metrics`)).text();
      assert.match(metrics, /mailhook_mailbox_errors_total\{mailbox="badpass",kind="auth"\} [1-9]/);
      assert.match(metrics, /mailhook_mailbox_state\{mailbox="refused",state="(backoff|connecting)"\} 1/);
      // Backoff grows: reconnect_delay_ms 100, the step doubles per failure and the pause is jittered within
      // [half, all] of it, so the first three pauses fall in [50, 100], [100, 200] and [200, 400] ms.
      const pauses = app.logs
        .map((l) => JSON.parse(l) as { msg?: string; mailbox?: string; failures?: number; pauseMs?: number })
        .filter((l) => l.msg === 'mailbox session ended; reconnecting after a pause' && l.mailbox === 'refused')
        .slice(0, 3);
      assert.deepEqual(pauses.map((p) => p.failures), [1, 2, 3]);
      pauses.forEach((p, i) => assert.ok(p.pauseMs! >= 50 * 2 ** i && p.pauseMs! <= 100 * 2 ** i, `pause ${i + 1}: ${p.pauseMs} ms`));
      assert.ok(!app.logs.some((l) => l.includes('pw-big')), 'the password is never logged');
    } finally {
      await app.close();
      await consumer.stop();
      dropping.close();
    }
  });

  test('password_file is read again at each login: a wrong password fixed in the file is used without a restart', async () => {
    const dir = tempDir();
    const consumer = await new Consumer().start();
    const file = join(dir, 'imap-password');
    writeFileSync(file, 'not-the-password\n');
    const entry = mailboxYaml(dovecot, 'pwfile', { reconnect_delay_ms: 50, reconnect_max_delay_ms: 200 }).replace(/\n {4}password: .*\n/, `\n    password_file: ${file}\n`);
    const app = await startTestApp({ routes: routesYaml(consumer.url), extra: imapBlock(entry) });
    try {
      // Dovecot answers a login from an address with earlier failures late (its auth penalty; the test above failed some).
      await until(() => bridgeOf(app).status.consecutiveFailures >= 1, 30_000, 'a refused login');
      assert.equal(bridgeOf(app).status.lastError?.kind, 'auth');
      const password = dovecot.users.find((u) => u.user === 'pwfile')!.password;
      writeFileSync(file, `${password}\n`);
      await until(() => bridgeOf(app).status.state === 'idle', 30_000, 'logged in with the fixed password');
      await dovecot.append([message('pw1')], { user: 'pwfile' });
      await consumer.waitFor(1, 5000);
      const lines = app.logs.map((l) => JSON.parse(l) as { msg: string; mailbox?: string });
      assert.equal(lines.filter((l) => l.msg === 'password_file changed; logging in with the new one' && l.mailbox === 'pwfile').length, 1);
      assert.ok(!app.logs.some((l) => l.includes(password) || l.includes('not-the-password')), 'neither password is logged');
    } finally {
      await app.close();
      await consumer.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a delete cut off between STORE \\Deleted and EXPUNGE is finished next session; \\Deleted mail not ours is left', async () => {
    const dir = tempDir();
    const consumer = await new Consumer().start();
    await dovecot.append([message('i1', { to: 'desk@in.test', messageId: 'i1@x' })], { user: 'interrupted' });
    // First run marks it read (flag), which leaves it in the mailbox with its spool entry.
    let app = await startTestApp({ routes: routesYaml(consumer.url), extra: imapBlock(mailboxYaml(dovecot, 'interrupted', { after_delivery: 'flag' }, 'intr')), dir });
    try {
      await until(() => count(app.spool.db) === 1, 10_000, 'the message in the spool');
      await until(() => bridgeOf(app).status.state === 'idle', 5000, 'idle');
    } finally {
      await app.close();
    }
    // The state a crash between the two commands leaves: ours \Deleted (unread again), plus a stranger's \Deleted.
    const c = await dovecot.client('interrupted');
    await c.mailboxOpen('INBOX');
    await c.messageFlagsRemove('1', ['\\Seen'], { uid: true });
    await c.messageFlagsAdd('1', ['\\Deleted'], { uid: true });
    await c.append('INBOX', message('stranger', { to: 'desk@in.test', messageId: 'stranger@x' }), ['\\Deleted']);
    await c.logout();
    app = await startTestApp({ routes: routesYaml(consumer.url), extra: imapBlock(mailboxYaml(dovecot, 'interrupted', { after_delivery: 'delete' }, 'intr')), dir });
    try {
      await until(() => bridgeOf(app).status.state === 'idle', 5000, 'idle');
      const left = await dovecot.list('INBOX', 'interrupted');
      assert.deepEqual(left, [{ uid: 2, flags: ['\\Deleted'] }], 'ours expunged, the stranger\'s \\Deleted message left alone');
      assert.equal(count(app.spool.db), 1);
    } finally {
      await app.close();
      await consumer.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a message committed but left unmarked (a crash in between) is only marked at the next start, and counted and logged as a duplicate', async () => {
    const dir = tempDir();
    const consumer = await new Consumer().start();
    await dovecot.append([message('r1', { to: 'incoming+r1@in.test', messageId: 'r1@x' })], { user: 'remark' });
    const yaml = imapBlock(mailboxYaml(dovecot, 'remark', { after_delivery: 'flag' }, 'remark'));
    let app = await startTestApp({ routes: routesYaml(consumer.url), extra: yaml, dir });
    try {
      await consumer.waitFor(1, 10_000);
      await until(() => bridgeOf(app).status.state === 'idle', 5000, 'idle');
    } finally {
      await app.close();
    }
    // The state a crash between the commit and the STORE \Seen leaves: in the spool, unread in the mailbox.
    const c = await dovecot.client('remark');
    await c.mailboxOpen('INBOX');
    await c.messageFlagsRemove('1', ['\\Seen'], { uid: true });
    await c.logout();
    app = await startTestApp({ routes: routesYaml(consumer.url), extra: yaml, dir });
    try {
      const deadline = Date.now() + 10_000;
      while (!(await dovecot.list('INBOX', 'remark'))[0]?.flags.includes('\\Seen')) {
        assert.ok(Date.now() < deadline, 'marked read again within 10 s');
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal(count(app.spool.db), 1, 'not stored again');
      const metrics = await (await fetch(`${app.httpUrl}/metrics`)).text();
      assert.match(metrics, /^mailhook_mailbox_messages_total\{mailbox="remark",outcome="duplicate"\} 1$/m);
      assert.doesNotMatch(metrics, /mailbox="remark",outcome="accepted"/, 'this process accepted nothing');
      assert.ok(app.logs.some((l) => l.includes('the spool holds these messages already')));
      assert.equal(consumer.requests.length, 1, 'no second webhook');
    } finally {
      await app.close();
      await consumer.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('UIDVALIDITY changes (folder recreated): known messages are recognised by Message-ID, new ones taken', async () => {
    const dir = tempDir();
    const consumer = await new Consumer().start();
    const c = await dovecot.client('gen');
    await c.mailboxCreate('Work');
    await c.logout();
    const msgs = [1, 2, 3].map((i) => message(`g${i}`, { to: 'desk@in.test', messageId: `gen-${i}@x` }));
    await dovecot.append(msgs, { user: 'gen', folder: 'Work' });
    const yaml = imapBlock(mailboxYaml(dovecot, 'gen', { mailbox: 'Work', after_delivery: 'flag' }));
    let app = await startTestApp({ routes: routesYaml(consumer.url), extra: yaml, dir });
    let firstGen: string;
    try {
      await until(() => count(app.spool.db) === 3, 10_000, 'three messages');
      await until(() => bridgeOf(app).status.state === 'idle', 5000, 'idle');
      firstGen = String(bridgeOf(app).status.details.uid_validity);
    } finally {
      await app.close();
    }
    // Recreated with the same messages (a restore, a server move): UIDs start again under a new UIDVALIDITY.
    const c2 = await dovecot.client('gen');
    await c2.mailboxDelete('Work');
    await c2.mailboxCreate('Work');
    await c2.logout();
    await dovecot.append([...msgs, message('g4', { to: 'desk@in.test', messageId: 'gen-4@x' })], { user: 'gen', folder: 'Work' });
    app = await startTestApp({ routes: routesYaml(consumer.url), extra: yaml, dir });
    try {
      await until(() => count(app.spool.db) === 4, 10_000, 'the new message');
      await until(() => bridgeOf(app).status.state === 'idle', 5000, 'idle');
      assert.notEqual(String(bridgeOf(app).status.details.uid_validity), firstGen);
      assert.equal(count(app.spool.db), 4, 'the three known messages were not stored again');
      assert.deepEqual((await dovecot.list('Work', 'gen')).map((m) => m.flags), [['\\Seen'], ['\\Seen'], ['\\Seen'], ['\\Seen']], 'all marked');
      assert.ok(app.logs.some((l) => l.includes('deduplicating by Message-ID')));
    } finally {
      await app.close();
      await consumer.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('after a UIDVALIDITY change a new message that reuses a stored Message-ID is stored, not expunged unstored (after_delivery: delete)', async () => {
    const dir = tempDir();
    const c = await dovecot.client('reuse');
    await c.mailboxCreate('Work');
    await c.logout();
    await dovecot.append([message('r1', { to: 'desk@in.test', messageId: 'reuse-1@x' })], { user: 'reuse', folder: 'Work' });
    const yaml = imapBlock(mailboxYaml(dovecot, 'reuse', { mailbox: 'Work', after_delivery: 'delete' }));
    let app = await startTestApp({ routes: routesYaml('http://127.0.0.1:9/unused'), extra: yaml, dir });
    try {
      await until(() => count(app.spool.db) === 1, 10_000, 'the first message');
      await until(() => bridgeOf(app).status.state === 'idle', 5000, 'idle');
    } finally {
      await app.close();
    }
    const c2 = await dovecot.client('reuse');
    await c2.mailboxDelete('Work');
    await c2.mailboxCreate('Work');
    await c2.logout();
    // Under the new UIDVALIDITY: a different message with the first one's Message-ID (a sender reusing it).
    await dovecot.append([message('r2', { to: 'desk@in.test', messageId: 'reuse-1@x', body: 'a different message' })], { user: 'reuse', folder: 'Work' });
    app = await startTestApp({ routes: routesYaml('http://127.0.0.1:9/unused'), extra: yaml, dir });
    try {
      await until(() => bridgeOf(app).status.state === 'idle', 10_000, 'idle');
      assert.ok(app.logs.some((l) => l.includes('deduplicating by Message-ID')));
      assert.equal(count(app.spool.db), 2, 'the new message is stored');
      assert.deepEqual(await dovecot.list('Work', 'reuse'), [], 'and only then expunged');
    } finally {
      await app.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('keyword claims: an unsolicited FETCH (FLAGS) from another client during the batch FETCH is not taken for a message to claim', async () => {
    await dovecot.append([message('left', { to: 'stranger@elsewhere.test', messageId: 'unsol-left@x' })], { user: 'unsol' });
    const app = await startTestApp({ routes: routesYaml('http://127.0.0.1:9/unused'), extra: imapBlock(mailboxYaml(dovecot, 'unsol', { after_delivery: 'flag', claim: 'keyword' })) });
    const other = await dovecot.client('unsol');
    await other.mailboxOpen('INBOX');
    const fetch = ImapFlow.prototype.fetch;
    let armed = false;
    try {
      await until(() => bridgeOf(app).status.state === 'idle', 10_000, 'idle, the unmatched message left');
      armed = true;
      // While the bridge's next batch FETCH runs, a user flags the left message: Dovecot reports that as an
      // untagged FETCH (FLAGS) without UID inside the bridge's FETCH.
      ImapFlow.prototype.fetch = async function* (this: ImapFlow, ...args: Parameters<ImapFlow['fetch']>) {
        if (armed && this !== other && (args[1] as { size?: boolean }).size) {
          armed = false;
          await other.messageFlagsAdd('1', ['\\Flagged'], { uid: true });
        }
        yield* fetch.apply(this, args);
      } as ImapFlow['fetch'];
      await dovecot.append([message('next', { to: 'desk@in.test', messageId: 'unsol-next@x' })], { user: 'unsol' });
      await until(() => count(app.spool.db) === 1, 10_000, 'the next message');
      await until(() => bridgeOf(app).status.state === 'idle', 10_000, 'idle again');
      assert.equal(armed, false, 'the flag change happened during the batch FETCH');
      assert.equal(bridgeOf(app).status.lastError, null, 'the session went on');
      assert.deepEqual((await dovecot.list('INBOX', 'unsol')).map((m) => m.flags.filter((f) => f !== '\\Recent').sort()), [['$MailhookSkipped', '\\Flagged'], ['\\Seen']]);
    } finally {
      ImapFlow.prototype.fetch = fetch;
      await other.logout();
      await app.close();
    }
  });

  test('a message the server refuses to send (FETCH answered NO) is passed over: the rest of its batch is taken, it is tried again later', async () => {
    await dovecot.append([message('bad', { to: 'desk@in.test', messageId: 'unread-bad@x' }), message('good', { to: 'desk@in.test', messageId: 'unread-good@x' })], { user: 'unread' });
    // Dovecot answers NO to a FETCH of a message it cannot read (a broken file); here its FETCH of UID 1 fails so.
    const fetch = ImapFlow.prototype.fetch;
    let broken = true;
    ImapFlow.prototype.fetch = async function* (this: ImapFlow, ...args: Parameters<ImapFlow['fetch']>) {
      const [range, query] = args as [string, { source?: boolean }];
      if (broken && query.source && String(range).split(/[,:]/).includes('1')) {
        throw Object.assign(new Error('Command failed'), { responseStatus: 'NO', responseText: 'Internal error occurred. Refer to server log for more information.' });
      }
      yield* fetch.apply(this, args);
    } as ImapFlow['fetch'];
    const app = await startTestApp({ routes: routesYaml('http://127.0.0.1:9/unused'), extra: imapBlock(mailboxYaml(dovecot, 'unread', { after_delivery: 'delete', claim: 'keyword', idle_timeout: 1 })) });
    try {
      await until(() => count(app.spool.db) === 1, 10_000, 'the readable message');
      assert.equal(count(app.spool.db, `json_extract(meta, '$.messageId') = 'unread-good@x'`), 1);
      await until(() => /Internal error occurred/.test(bridgeOf(app).status.lastError?.message ?? ''), 5000, 'the refusal shown');
      await until(() => bridgeOf(app).status.state === 'idle', 5000, 'idle');
      assert.deepEqual((await dovecot.list('INBOX', 'unread')).map((m) => m.flags.filter((f) => f !== '\\Recent')), [[]], 'left, its claim released');
      broken = false;
      await until(() => count(app.spool.db) === 2, 10_000, 'taken once readable');
    } finally {
      ImapFlow.prototype.fetch = fetch;
      await app.close();
    }
  });

  test('a message over 1 MiB is streamed byte for byte; one over smtp.max_message_bytes is left, marked', async () => {
    const consumer = await new Consumer().start();
    const line = 'y'.repeat(76) + '\r\n';
    const big = message('big1', { to: 'desk@in.test', messageId: 'big1@x', body: line.repeat(Math.ceil(2_000_000 / line.length)) });
    const huge = message('huge1', { to: 'desk@in.test', messageId: 'huge1@x', body: line.repeat(Math.ceil(4_000_000 / line.length)) });
    await dovecot.append([big, huge], { user: 'large' });
    const dir = tempDir();
    const yaml = configYaml({ dir, routes: routesYaml(consumer.url), extra: imapBlock(mailboxYaml(dovecot, 'large', { after_delivery: 'delete' })) }).replace('greeting_delay_ms: 0', 'greeting_delay_ms: 0\n  max_message_bytes: 3000000');
    const app = await startTestApp({ routes: '', yaml, dir });
    try {
      await until(() => count(app.spool.db) === 1, 10_000, 'the big message');
      await until(() => bridgeOf(app).status.state === 'idle', 5000, 'idle');
      const id = (app.spool.db.prepare(`SELECT id FROM messages`).get() as { id: string }).id;
      const raw = await app.spool.readRaw(id);
      assert.equal(raw.length, Buffer.byteLength(big));
      assert.equal(createHash('sha256').update(raw).digest('hex'), createHash('sha256').update(big).digest('hex'));
      const left = await dovecot.list('INBOX', 'large');
      assert.deepEqual(left.map((m) => m.flags), [[SKIP_KEYWORD]], 'the oversized message stays, marked, unread');
      assert.ok(app.logs.some((l) => l.includes('exceeds 3000000 bytes')));
    } finally {
      await app.close();
      await consumer.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a server without IDLE is polled every poll_interval', async () => {
    const plain = await startDovecot({ users: ['poll'], capability: 'IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE LITERAL+ NAMESPACE UIDPLUS CONDSTORE MOVE' });
    const consumer = await new Consumer().start();
    const app = await startTestApp({ routes: routesYaml(consumer.url), extra: imapBlock(mailboxYaml(plain, 'poll', { poll_interval: 1, after_delivery: 'delete' })) });
    try {
      const bridge = bridgeOf(app);
      await until(() => bridge.status.state === 'polling', 10_000, 'polling');
      assert.equal(bridge.status.details.idle, false);
      const t0 = Date.now();
      await plain.append([message('polled')], { user: 'poll' });
      await consumer.waitFor(1, 5000);
      const ms = Date.now() - t0;
      assert.ok(ms < 2500, `took ${ms} ms with poll_interval 1 s`);
    } finally {
      await app.close();
      await consumer.stop();
      await plain.close();
    }
  });

  test('a server without IDLE, poll_interval longer than idle_timeout + a command\'s time: the quiet pause is no socket timeout', async () => {
    const plain = await startDovecot({ users: ['slowpoll'], capability: 'IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE LITERAL+ NAMESPACE UIDPLUS CONDSTORE MOVE' });
    const dir = tempDir();
    const yaml = configYaml({ dir, routes: routesYaml('http://127.0.0.1:9/unused'), extra: imapBlock(mailboxYaml(plain, 'slowpoll', { poll_interval: 3, idle_timeout: 1, after_delivery: 'delete' })) });
    const config = parseTestConfig(yaml, dir);
    const spool = new Spool({ path: join(dir, 'spool.db'), inlineMaxBytes: 65536, clock: { now: () => Date.now() } });
    const metrics = createMetrics();
    const settings = config.imap[0] as ImapMailboxSettings;
    const ingest = new MailboxIngest({ router: new Router(config.routes), routes: config.routes, spool, metrics, maxBytes: 1_000_000, limits: ingestLimits(config.smtp.limits) }, settings, 'imap');
    // A command's time shortened to 1 s (as poll_interval 120 s against idle_timeout 60 s + 60 s in production).
    const bridge = new ImapBridge({ settings, ingest, log: createLogger({ level: 'silent' }), metrics, clock: { now: () => Date.now() }, random: Math.random, timeouts: { commandMs: 1000, connectMs: 2000 } });
    bridge.start();
    try {
      await until(() => bridge.status.state === 'polling', 10_000, 'polling');
      await plain.append([message('quiet', { to: 'desk@in.test' })], { user: 'slowpoll' });
      await until(() => count(spool.db) === 1, 10_000, 'the message, at the next poll');
      await until(() => bridge.status.state === 'polling', 5000, 'polling again');
      assert.equal(bridge.status.lastError, null, 'the session lasted through the 3 s pause');
    } finally {
      await bridge.stop(2000);
      await spool.close();
      await plain.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('mail_room lost mail when delivery failed after marking: here the spool holds it and the webhook is retried', async () => {
    const consumer = await new Consumer().start();
    consumer.respond = (_req, i) => (i < 2 ? { status: 503, body: 'down' } : { status: 200, body: 'ok' });
    const app = await startTestApp({ routes: routesYaml(consumer.url), extra: imapBlock(mailboxYaml(dovecot, 'retry', { after_delivery: 'delete' })) });
    try {
      await until(() => bridgeOf(app).status.state === 'idle', 10_000, 'idle');
      await dovecot.append([message('retry-1')], { user: 'retry' });
      const reqs = await consumer.waitFor(3, 10_000);
      assert.deepEqual(reqs.map((r) => r.headers['webhook-id']), Array(3).fill(reqs[0]!.headers['webhook-id']), 'one delivery, retried');
      assert.deepEqual(await dovecot.list('INBOX', 'retry'), [], 'deleted from the mailbox once committed, whatever the webhook said');
      const d = app.spool.db.prepare(`SELECT status, attempts FROM deliveries`).get() as { status: string; attempts: number };
      await until(() => (app.spool.db.prepare(`SELECT status FROM deliveries`).get() as { status: string }).status === 'delivered', 5000, 'delivered');
      assert.ok(d.attempts >= 2);
    } finally {
      await app.close();
      await consumer.stop();
    }
  });
});
