// The admin API over real HTTP against a running app: auth, filters and pagination, detail, raw, replay, redeliver, delete, OpenAPI.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { Consumer } from '../helpers/consumer.js';
import { RawSmtp } from '../helpers/smtp-client.js';
import { SECRET, until, type TestApp } from '../helpers/app.js';
import { ADMIN_TOKEN, call, startAdminApp } from './helpers.js';

/** Sends one message over a raw SMTP session; returns the spool id from "queued as". */
async function send(app: TestApp, from: string, to: string[], body: string): Promise<string> {
  const { smtp } = await RawSmtp.open(app.smtpPort);
  await smtp.cmd('EHLO client.test');
  const t = await smtp.transaction(from, to, body);
  await smtp.quit();
  assert.equal(t.end?.code, 250, t.end?.raw);
  return /queued as (\w+)/.exec(t.end!.text)![1]!;
}

describe('admin API without a token', () => {
  let app: TestApp;
  before(async () => {
    app = await startAdminApp({ token: null, routes: `
  - name: sink
    addresses: ["*@in.test"]
    sink: true
` });
  });
  after(() => app.close());

  test('is off: /api answers 404 admin_api_disabled, / says how to turn it on, health stays open', async () => {
    const r = await call(app, 'GET', '/api/messages', { token: 'whatever-it-is-16chars' });
    assert.equal(r.status, 404);
    assert.equal(r.body.error, 'admin_api_disabled');
    assert.match(r.body.message, /http\.admin_token_file/);
    const dash = await fetch(`${app.httpUrl}/`);
    assert.equal(dash.status, 404);
    assert.match(await dash.text(), /dashboard is off.*admin_token_file/);
    assert.equal((await fetch(`${app.httpUrl}/healthz`)).status, 200);
    assert.equal((await fetch(`${app.httpUrl}/metrics`)).status, 200);
  });
});

describe('admin API', () => {
  let app: TestApp;
  const ok = new Consumer();
  const broken = new Consumer();
  const ids: Record<string, string> = {};

  before(async () => {
    await ok.start();
    await broken.start();
    broken.respond = () => ({ status: 400, body: 'unknown project' });
    app = await startAdminApp({
      spoolExtra: '  inline_max_bytes: 2000',
      routes: `
  - name: gitlab
    addresses: ["incoming+%{key}@gitlab.test"]
    webhook: { url: "${ok.url}", secret: "${SECRET}" }
  - name: desk
    addresses: ["desk@desk.test"]
    webhook: { url: "${broken.url}", secret: "${SECRET}" }
  - name: archive
    addresses: ["*@archive.test"]
    sink: true
`,
    });
    ids.first = await send(app, 'alice@example.test', ['incoming+abc@gitlab.test'], 'Subject: first\r\nFrom: Alice <alice@example.test>\r\n\r\nhello one');
    ids.second = await send(app, 'bob@example.test', ['desk@desk.test'], 'Subject: =?UTF-8?B?w6lsw6h2ZQ==?= second\r\n\r\nhello two');
    ids.third = await send(app, 'Alice@Example.test', ['incoming+xyz@gitlab.test', 'desk@desk.test'], `Subject: third\r\n\r\n${'large body line\r\n'.repeat(300)}`);
    ids.fourth = await send(app, '', ['keep@archive.test'], 'Subject: fourth\r\n\r\nbounce');
    await ok.waitFor(2);
    await broken.waitFor(2);
    await until(() => app.spool.jobs.counts().dead === 2 && app.spool.jobs.counts().delivered >= 3, 10_000, 'deliveries to finish');
  });
  after(async () => {
    await app.close();
    await ok.stop();
    await broken.stop();
  });

  test('refuses a request without the token, with a wrong one, or with a malformed header', async () => {
    for (const headers of [{}, { authorization: 'Bearer wrong-token-wrong-token' }, { authorization: `Basic ${ADMIN_TOKEN}` }] as Array<Record<string, string>>) {
      const r = await call(app, 'GET', '/api/messages', { token: null, headers });
      assert.equal(r.status, 401);
      assert.equal(r.body.error, 'unauthorized');
      assert.equal(typeof r.body.message, 'string');
      assert.equal(r.headers.get('www-authenticate'), 'Bearer realm="mailhook"');
    }
    assert.equal((await call(app, 'GET', '/api/messages')).status, 200);
  });

  test('lists newest first with each delivery\'s status and the decoded subject', async () => {
    const r = await call(app, 'GET', '/api/messages');
    assert.equal(r.status, 200);
    assert.deepEqual(r.body.messages.map((m: any) => m.id), [ids.fourth, ids.third, ids.second, ids.first]);
    const second = r.body.messages[2];
    assert.equal(second.subject, 'élève second');
    assert.equal(second.status, 'dead');
    assert.equal(second.mail_from, 'bob@example.test');
    assert.deepEqual(second.rcpt_to, ['desk@desk.test']);
    assert.equal(second.deliveries[0].route, 'desk');
    assert.equal(second.deliveries[0].last_status_code, 400);
    assert.match(second.received_at, /^\d{4}-\d\d-\d\dT/);
    const third = r.body.messages[1];
    assert.equal(third.subject, 'third'); // read from the message file's head
    assert.deepEqual(third.deliveries.map((d: any) => [d.route, d.status]), [['desk', 'dead'], ['gitlab', 'delivered']]);
    assert.equal(third.status, 'dead');
    assert.equal(r.body.next_cursor, null);
  });

  test('filters by status, route, recipient, key, sender and time, all on the same delivery', async () => {
    const list = async (q: string) => {
      const r = await call(app, 'GET', `/api/messages?${q}`);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      return r.body.messages.map((m: any) => m.id);
    };
    assert.deepEqual(await list('status=dead'), [ids.third, ids.second]);
    assert.deepEqual(await list('route=gitlab'), [ids.third, ids.first]);
    assert.deepEqual(await list('route=gitlab&status=dead'), []);
    assert.deepEqual(await list('route=desk&status=dead'), [ids.third, ids.second]);
    assert.deepEqual(await list('recipient=DESK@desk.test'), [ids.third, ids.second]);
    assert.deepEqual(await list('recipient=desk@desk.test&route=gitlab'), []);
    assert.deepEqual(await list('key=xyz'), [ids.third]);
    assert.deepEqual(await list('key=abc&status=delivered'), [ids.first]);
    assert.deepEqual(await list('sender=alice@example.test'), [ids.third, ids.first]);
    assert.deepEqual(await list('sender='), [ids.fourth]);
    assert.deepEqual(await list('sender=alice@example.test&status=dead'), [ids.third]);
    const second = app.spool.getMessage(ids.second!)!.receivedAt;
    assert.deepEqual(await list(`since=${second}`), [ids.fourth, ids.third, ids.second]);
    assert.deepEqual(await list(`until=${new Date(second).toISOString()}`), [ids.first!].filter((id) => app.spool.getMessage(id)!.receivedAt < second));
    assert.deepEqual(await list(`since=${second}&until=${second + 1}&status=dead`), [ids.second]);
  });

  test('pages with a cursor, never repeating or skipping a message', async () => {
    const seen: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const r: { body: { messages: Array<{ id: string }>; next_cursor: string | null } } = await call(app, 'GET', `/api/messages?limit=1${cursor ? `&cursor=${cursor}` : ''}`);
      seen.push(...r.body.messages.map((m) => m.id));
      cursor = r.body.next_cursor;
      pages++;
    } while (cursor && pages < 10);
    assert.deepEqual(seen, [ids.fourth, ids.third, ids.second, ids.first]);
    assert.equal(pages, 4);
  });

  test('answers bad input with 400 and a message naming the parameter', async () => {
    const cases: Array<[string, RegExp]> = [
      ['/api/messages?stauts=dead', /unknown query parameter "stauts"; known: status, route/],
      ['/api/messages?status=lost', /^query parameter status must be one of "pending", .*"dead"/],
      ['/api/messages?limit=0', /limit must be >= 1/],
      ['/api/messages?limit=5000', /limit must be <= 500/],
      ['/api/messages?cursor=bm9wZQ', /cursor is not one this server handed out/],
      ['/api/messages?since=yesterday', /since: "yesterday" is not a time/],
      ['/api/messages/NOT-AN-ID', /params\/id must match pattern/],
      ['/api/routes?window=2y', /window must match pattern/],
      ['/api/messages?since=2024-05-02T00:00:00Z&until=2024-05-01T00:00:00Z', /^since \(2024-05-02T00:00:00Z\) must be before until \(2024-05-01T00:00:00Z\): nothing is received in that range; are they swapped\?$/],
    ];
    for (const [path, message] of cases) {
      const r = await call(app, 'GET', path);
      assert.equal(r.status, 400, path);
      assert.equal(r.body.error, 'bad_request', path);
      assert.match(r.body.message, message, path);
    }
    const notObject = await call(app, 'POST', '/api/deliveries/replay', { body: ['desk'] });
    assert.equal(notObject.status, 400);
    assert.match(notObject.body.message, /^the request needs a JSON object body/);
    const body = await call(app, 'POST', '/api/deliveries/replay', { body: { route: 'desk', limt: 5 } });
    assert.equal(body.status, 400);
    assert.match(body.body.message, /unknown body field "limt"/);
    // Refused before anything is replayed: a time past what a Date holds, more ids than the limit.
    const swapped = await call(app, 'POST', '/api/deliveries/replay', { body: { since: '1714608000000', until: '1714521600000' } });
    assert.equal(swapped.status, 400);
    assert.match(swapped.body.message, /^since \(1714608000000\) must be before until \(1714521600000\)/);
    const far = await call(app, 'POST', '/api/deliveries/replay', { body: { all: true, as_of: '9999999999999999' } });
    assert.equal(far.status, 400);
    assert.match(far.body.message, /as_of: "9999999999999999" is past the latest time there is/);
    const tooMany = await call(app, 'POST', '/api/deliveries/replay', { body: { ids: ['aaaaaaaa', 'bbbbbbbb', 'cccccccc'], limit: 2 } });
    assert.equal(tooMany.status, 400);
    assert.match(tooMany.body.message, /ids: 3 ids but limit is 2/);
    // A body value of the wrong JSON type is refused, not converted (fastify's validator made null false: a real replay).
    const wrongTypes: Array<[string, object, RegExp]> = [
      ['/api/deliveries/replay', { all: true, dry_run: null }, /^body field dry_run must be a boolean, not null$/],
      ['/api/deliveries/replay', { all: true, dry_run: 'true' }, /^body field dry_run must be a boolean, not a string$/],
      ['/api/deliveries/replay', { ids: 'abc' }, /^body field ids must be an array, not a string$/],
      ['/api/deliveries/replay', { ids: ['aaaaaaaa', 1] }, /^body field ids\[1\] must be a string, not an integer$/],
      ['/api/deliveries/replay', { all: true, limit: '10', dry_run: true }, /^body field limit must be an integer, not a string$/],
      ['/api/deliveries/replay', { all: true, limit: 1.5, dry_run: true }, /^body field limit must be an integer, not a number$/],
      ['/api/deliveries/retry', { route: true, dry_run: true }, /^body field route must be a string, not a boolean$/],
      ['/api/deliveries/retry', { all: 1 }, /^body field all must be a boolean, not an integer$/],
      ['/api/session', { token: ['x'] }, /^body field token must be a string, not an array$/],
    ];
    for (const [path, b, message] of wrongTypes) {
      const r = await call(app, 'POST', path, { body: b });
      assert.equal(r.status, 400, JSON.stringify(b));
      assert.match(r.body.message, message, JSON.stringify(b));
    }
    const messageId = (app.spool.db.prepare('SELECT id FROM messages LIMIT 1').get() as { id: string }).id;
    const route5 = await call(app, 'POST', `/api/messages/${messageId}/redeliver`, { body: { route: 5 } });
    assert.equal(route5.status, 400);
    assert.match(route5.body.message, /^body field route must be a string, not an integer$/);
    assert.equal((app.spool.db.prepare(`SELECT COUNT(*) AS n FROM deliveries WHERE replays > 0`).get() as { n: number }).n, 0, 'nothing replayed');
    const nf = await call(app, 'GET', '/api/nothing-here');
    assert.equal(nf.status, 404);
    assert.equal(nf.body.error, 'not_found');
    const missing = await call(app, 'GET', '/api/messages/zzzzzzzzzz');
    assert.equal(missing.status, 404);
    assert.match(missing.body.message, /no message zzzzzzzzzz/);
    // A path that exists under another method is a 405 naming the right ones (curl without -X POST), not a 404.
    const get = await call(app, 'GET', '/api/deliveries/replay');
    assert.equal(get.status, 405);
    assert.equal(get.headers.get('allow'), 'POST');
    assert.deepEqual(get.body, { error: 'method_not_allowed', message: 'GET is not allowed for /api/deliveries/replay; use POST' });
    const put = await call(app, 'PUT', '/api/messages/zzzzzzzzzz', { body: {} });
    assert.equal(put.status, 405);
    assert.equal(put.headers.get('allow'), 'DELETE, GET, HEAD');
    assert.equal(put.body.message, 'PUT is not allowed for /api/messages/zzzzzzzzzz; use one of DELETE, GET, HEAD');
    assert.equal((await call(app, 'GET', '/api/messages/zzzzzzzzzz/redeliver/x')).status, 404, 'deeper than any route');
    assert.equal((await call(app, 'PUT', '/api/messages/zzzzzzzzzz', { body: {}, token: null })).status, 401, 'behind the token like the rest');
    const xml = await call(app, 'POST', '/api/deliveries/retry', { headers: { 'content-type': 'text/xml' } });
    assert.equal(xml.status, 415);
    assert.deepEqual(xml.body, { error: 'unsupported_media_type', message: 'the request needs a JSON object body (Content-Type: application/json), not text/xml' });
    // fastify's own refusals before routing have the same {error, message} shape.
    const long = await call(app, 'POST', `/api/messages/${'a'.repeat(101)}/redeliver`, { body: {} });
    assert.equal(long.status, 414);
    assert.deepEqual(Object.keys(long.body).sort(), ['error', 'message']);
    assert.match(long.body.message, /^a segment of the path \/api\/messages\/a{101}\/redeliver is over 100 characters; ids are at most 64$/);
    const bad = await call(app, 'GET', '/api/messages/%E0%A4%A');
    assert.equal(bad.status, 400);
    assert.deepEqual(bad.body, { error: 'bad_request', message: 'the path /api/messages/%E0%A4%A is no valid URL (check its percent-encoding)' });
  });

  test('shows a message: envelope, parsed summary, every attempt with status code, latency and error', async () => {
    const r = await call(app, 'GET', `/api/messages/${ids.third}`);
    assert.equal(r.status, 200);
    const m = r.body;
    assert.equal(m.envelope.mail_from, 'Alice@Example.test');
    assert.deepEqual(m.envelope.rcpt_to, ['incoming+xyz@gitlab.test', 'desk@desk.test']);
    assert.equal(m.envelope.helo, 'client.test');
    assert.equal(m.envelope.remote_address, '127.0.0.1');
    assert.equal(m.summary.subject, 'third');
    assert.match(m.summary.text_excerpt, /^large body line/);
    assert.equal(m.raw_url, `/api/messages/${ids.third}/raw`);
    const desk = m.deliveries.find((d: any) => d.route === 'desk');
    assert.equal(desk.status, 'dead');
    assert.equal(desk.attempt_log.length, 1);
    const a = desk.attempt_log[0];
    assert.equal(a.attempt, 1);
    assert.equal(a.status_code, 400);
    assert.equal(a.outcome, 'dead');
    assert.match(a.error, /unknown project/);
    assert.equal(typeof a.latency_ms, 'number');
    assert.ok(a.latency_ms >= 0);
    const gitlab = m.deliveries.find((d: any) => d.route === 'gitlab');
    assert.deepEqual(gitlab.recipients, [{ address: 'incoming+xyz@gitlab.test', key: 'xyz' }]);
    assert.equal(gitlab.attempt_log[0].status_code, 200);
    assert.equal(gitlab.attempt_log[0].error, null);
  });

  test('raw download is the exact bytes as message/rfc822, streamed from the file for a large message', async () => {
    for (const id of [ids.first!, ids.third!]) {
      const res = await fetch(`${app.httpUrl}/api/messages/${id}/raw`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('content-type'), 'message/rfc822');
      assert.match(res.headers.get('content-disposition') ?? '', new RegExp(`attachment; filename="${id}.eml"`));
      assert.deepEqual(Buffer.from(await res.arrayBuffer()), await app.spool.readRaw(id));
    }
    const file = (app.spool.db.prepare('SELECT raw_file FROM messages WHERE id = ?').get(ids.third) as { raw_file: string | null }).raw_file;
    assert.ok(file, 'the large message is stored as a file');
  });

  test('bulk replay: needs a selector, counts in a dry run, replays with a fresh budget, and the delivery succeeds', async () => {
    const none = await call(app, 'POST', '/api/deliveries/replay', { body: {} });
    assert.equal(none.status, 400);
    assert.match(none.body.message, /pass "all": true/);
    const dry = await call(app, 'POST', '/api/deliveries/replay', { body: { route: 'desk', dry_run: true } });
    assert.equal(dry.status, 200);
    assert.equal(dry.body.remaining, 2);
    assert.equal(dry.body.replayed, 0);
    assert.equal(app.spool.jobs.counts().dead, 2, 'a dry run changes nothing');

    broken.respond = () => ({ status: 204 });
    const before = broken.requests.length;
    const first = await call(app, 'POST', '/api/deliveries/replay', { body: { route: 'desk', limit: 1 } });
    assert.equal(first.status, 200);
    assert.equal(first.body.replayed, 1);
    assert.equal(first.body.remaining, 1);
    const second = await call(app, 'POST', '/api/deliveries/replay', { body: { route: 'desk', limit: 1, as_of: first.body.as_of } });
    assert.equal(second.body.replayed, 1);
    assert.equal(second.body.remaining, 0);
    // Oldest first: the second message's delivery went in the first batch.
    const secondDelivery = app.spool.db.prepare(`SELECT id FROM deliveries WHERE message_id = ?`).get(ids.second) as { id: string };
    assert.deepEqual(first.body.ids, [secondDelivery.id]);
    await broken.waitFor(before + 2);
    await until(() => app.spool.jobs.counts().dead === 0 && app.spool.jobs.counts().pending === 0 && app.spool.jobs.counts().delivering === 0, 10_000, 'replayed deliveries to finish');
    const detail = await call(app, 'GET', `/api/messages/${ids.second}`);
    const d = detail.body.deliveries[0];
    assert.equal(d.status, 'delivered');
    assert.equal(d.replays, 1);
    assert.equal(d.attempts, 1, 'the attempt counter restarted');
    assert.deepEqual(d.attempt_log.map((a: any) => [a.attempt, a.status_code, a.outcome]), [[1, 400, 'dead'], [1, 204, 'delivered']]);
  });

  test('redeliver sends a delivered message again; a sink route is skipped; an unknown route is a 404', async () => {
    const before = ok.requests.length;
    // No body at all (curl -X POST …): the defaults, as {} gives them.
    const r = await call(app, 'POST', `/api/messages/${ids.first}/redeliver`);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.requeued.length, 1);
    await ok.waitFor(before + 1);
    assert.equal(ok.json<{ message_id: string }>(before).message_id, ids.first);
    const sink = await call(app, 'POST', `/api/messages/${ids.fourth}/redeliver`, { body: {} });
    assert.equal(sink.status, 409);
    assert.match(sink.body.message, /archive: sink route/);
    // Replay by id skips a sink route's delivery too, and its dry run counts what the replay would do.
    const sinkDelivery = (app.spool.db.prepare(`SELECT id FROM deliveries WHERE message_id = ?`).get(ids.fourth) as { id: string }).id;
    const dry = await call(app, 'POST', '/api/deliveries/replay', { body: { ids: [sinkDelivery], status: 'delivered', dry_run: true } });
    assert.equal(dry.status, 200);
    assert.equal(dry.body.remaining, 0);
    const real = await call(app, 'POST', '/api/deliveries/replay', { body: { ids: [sinkDelivery], status: 'delivered' } });
    assert.deepEqual([real.body.replayed, real.body.remaining], [0, 0]);
    for (const r of [dry, real]) assert.deepEqual(r.body.skipped, [{ id: sinkDelivery, route: 'archive', status: 'delivered', reason: 'sink route: nothing to deliver' }], 'the answer says why');
    const wrong = await call(app, 'POST', `/api/messages/${ids.third}/redeliver`, { body: { route: 'nope' } });
    assert.equal(wrong.status, 404);
    assert.match(wrong.body.message, /no delivery to route "nope"; its routes: desk, gitlab/);
  });

  test('replay leaves out a route no longer configured: naming it is a 409, all and ids skip it, redeliver says why', async () => {
    // A spool from before the route was removed: its dead letter stays, replayable once the route is back.
    const row = app.spool.db.prepare(`SELECT id, route, status, finished_at FROM deliveries WHERE message_id = ?`).get(ids.second) as { id: string; route: string; status: string; finished_at: number };
    app.spool.db.prepare(`UPDATE deliveries SET route = 'retired', status = 'dead' WHERE id = ?`).run(row.id);
    try {
      const named = await call(app, 'POST', '/api/deliveries/replay', { body: { route: 'retired' } });
      assert.equal(named.status, 409, JSON.stringify(named.body));
      assert.match(named.body.message, /route "retired" is no longer in the configuration: .*add the route back \(or a route with renamed_from: \[retired\]\), restart mailhook, then replay/);
      const dry = await call(app, 'POST', '/api/deliveries/replay', { body: { all: true, dry_run: true } });
      assert.equal(dry.body.remaining, 0, 'the dry run does not count it');
      const all = await call(app, 'POST', '/api/deliveries/replay', { body: { all: true } });
      const byId = await call(app, 'POST', '/api/deliveries/replay', { body: { ids: [row.id] } });
      assert.deepEqual([all.body.replayed, byId.body.replayed], [0, 0]);
      assert.deepEqual(all.body.skipped, [], 'only named ids are listed');
      assert.deepEqual(byId.body.skipped.map((s: any) => [s.id, s.route, s.status]), [[row.id, 'retired', 'dead']]);
      assert.equal(byId.body.skipped[0].reason, named.body.message, 'the same reason and advice as the 409 for a route filter');
      const redeliver = await call(app, 'POST', `/api/messages/${ids.second}/redeliver`, { body: {} });
      assert.equal(redeliver.status, 409);
      assert.match(redeliver.body.message, /retired: route no longer in the configuration/);
      assert.equal((app.spool.db.prepare(`SELECT status FROM deliveries WHERE id = ?`).get(row.id) as { status: string }).status, 'dead', 'left dead, never handed to the delivery loop');
    } finally {
      app.spool.db.prepare(`UPDATE deliveries SET route = ?, status = ?, finished_at = ? WHERE id = ?`).run(row.route, row.status, row.finished_at, row.id);
    }
  });

  test('replay by ids says why it left out each named delivery whose status is not the one asked for', async () => {
    await until(() => app.spool.jobs.counts().pending === 0 && app.spool.jobs.counts().delivering === 0, 10_000, 'queue to drain');
    const rows = app.spool.db.prepare(`SELECT id, status, finished_at, next_attempt_at FROM deliveries WHERE message_id IN (?, ?) ORDER BY id`).all(ids.first, ids.third) as Array<{ id: string; status: string; finished_at: number | null; next_attempt_at: number }>;
    assert.equal(rows.length, 3);
    const [pending, dropped, delivered] = rows as [(typeof rows)[0], (typeof rows)[0], (typeof rows)[0]];
    const set = app.spool.db.prepare(`UPDATE deliveries SET status = ?, next_attempt_at = ? WHERE id = ?`);
    // Pending but not due (a backoff): the delivery loop leaves it alone meanwhile.
    set.run('pending', Date.now() + 3_600_000, pending.id);
    set.run('dropped', dropped.next_attempt_at, dropped.id);
    set.run('delivered', delivered.next_attempt_at, delivered.id);
    try {
      const dead = await call(app, 'POST', '/api/deliveries/replay', { body: { ids: [pending.id, dropped.id, delivered.id] } });
      assert.equal(dead.status, 200, JSON.stringify(dead.body));
      assert.equal(dead.body.replayed, 0);
      assert.deepEqual(dead.body.skipped.map((s: any) => [s.id, s.status, s.reason]), [
        [pending.id, 'pending', 'pending: it goes out when due (mailhook retry --delivery ID sends it now)'],
        [dropped.id, 'dropped', 'dropped by its route (drop_automatic): it would be dropped again'],
        [delivered.id, 'delivered', 'delivered: send it again with status delivered (mailhook replay --delivered)'],
      ]);
      // Asked for delivered ones: the delivered one would be replayed (a dry run lists only the other).
      const dry = await call(app, 'POST', '/api/deliveries/replay', { body: { ids: [pending.id, delivered.id], status: 'delivered', dry_run: true } });
      assert.deepEqual([dry.body.remaining, dry.body.skipped.map((s: any) => s.id)], [1, [pending.id]]);
      set.run('dead', delivered.next_attempt_at, delivered.id);
      const asDelivered = await call(app, 'POST', '/api/deliveries/replay', { body: { ids: [delivered.id], status: 'delivered', dry_run: true } });
      assert.deepEqual(asDelivered.body.skipped.map((s: any) => [s.status, s.reason]), [['dead', 'dead-lettered: replay it with status dead (without --delivered)']]);
      const redeliver = await call(app, 'POST', `/api/messages/${ids.first}/redeliver`, { body: {} });
      assert.equal(redeliver.status, 409, 'its one delivery is pending');
      assert.match(redeliver.body.message, /pending: it goes out when due/);
    } finally {
      for (const r of rows) app.spool.db.prepare(`UPDATE deliveries SET status = ?, finished_at = ?, next_attempt_at = ? WHERE id = ?`).run(r.status, r.finished_at, r.next_attempt_at, r.id);
    }
  });

  test('delete removes the message, its deliveries and its file', async () => {
    await until(() => app.spool.jobs.counts().pending === 0 && app.spool.jobs.counts().delivering === 0, 10_000, 'queue to drain');
    const file = (app.spool.db.prepare('SELECT raw_file FROM messages WHERE id = ?').get(ids.third) as { raw_file: string }).raw_file;
    const path = app.spool.blobs.pathOf(file);
    assert.ok(existsSync(path));
    const r = await call(app, 'DELETE', `/api/messages/${ids.third}`);
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, { id: ids.third, deleted: true });
    assert.equal(existsSync(path), false);
    assert.equal((await call(app, 'GET', `/api/messages/${ids.third}`)).status, 404);
    assert.equal((app.spool.db.prepare('SELECT COUNT(*) AS n FROM deliveries WHERE message_id = ?').get(ids.third) as { n: number }).n, 0);
    assert.equal((app.spool.db.prepare('SELECT COUNT(*) AS n FROM delivery_recipients WHERE message_id = ?').get(ids.third) as { n: number }).n, 0);
    assert.equal((await call(app, 'DELETE', `/api/messages/${ids.third}`)).status, 404);
  });

  test('route health: queue depth, success rate and latency per route', async () => {
    const r = await call(app, 'GET', '/api/routes?window=1h');
    assert.equal(r.status, 200);
    const byName = Object.fromEntries(r.body.routes.map((x: any) => [x.route, x]));
    assert.deepEqual(Object.keys(byName).sort(), ['archive', 'desk', 'gitlab']);
    assert.equal(byName.desk.kind, 'webhook');
    assert.equal(byName.desk.endpoint, broken.url);
    assert.equal(byName.archive.kind, 'sink');
    // The third message (and its attempts) was deleted above: desk keeps the second message's 400 and its replayed 204.
    assert.equal(byName.desk.window.attempts, 2);
    assert.equal(byName.desk.window.delivered, 1);
    assert.equal(byName.desk.window.dead, 1);
    assert.equal(byName.desk.window.success_rate, 0.5);
    assert.equal(byName.desk.last_failure.status_code, 400);
    assert.equal(byName.gitlab.window.success_rate, 1);
    assert.equal(typeof byName.gitlab.window.latency_ms.p95, 'number');
    assert.equal(byName.gitlab.queue.dead, 0);
    const empty = await call(app, 'GET', '/api/mailboxes');
    assert.deepEqual(empty.body, { enabled: false, mailboxes: [] });
  });

  test('retry now: a pending delivery waiting out a Retry-After goes out at once, its attempt count kept', async () => {
    broken.respond = () => ({ status: 503, headers: { 'retry-after': '3600' }, body: 'down for maintenance' });
    const before = broken.requests.length;
    const id = await send(app, 'carol@example.test', ['desk@desk.test'], 'Subject: during the outage\r\n\r\nhello');
    await broken.waitFor(before + 1);
    const row = () => app.spool.db.prepare(`SELECT id, status, attempts, next_attempt_at FROM deliveries WHERE message_id = ?`).get(id) as { id: string; status: string; attempts: number; next_attempt_at: number };
    await until(() => row().status === 'pending' && row().attempts === 1, 10_000, 'the 503 to be recorded');
    assert.ok(row().next_attempt_at > Date.now() + 3_000_000, 'waits out the Retry-After');
    const none = await call(app, 'POST', '/api/deliveries/retry', { body: {} });
    assert.equal(none.status, 400);
    assert.match(none.body.message, /pass "all": true/);
    // A mistyped route is refused, not answered with "0 deliveries" as if nothing were waiting.
    for (const path of ['/api/deliveries/retry', '/api/deliveries/replay']) {
      const typo = await call(app, 'POST', path, { body: { route: 'dsek' } });
      assert.equal(typo.status, 404, path);
      assert.equal(typo.body.message, 'no route "dsek"; configured routes: gitlab, desk, archive');
      // So are ids that name no delivery (a typo, a message id), even beside a real one: nothing is done.
      const unknown = await call(app, 'POST', path, { body: { ids: [row().id, 'nosuchdelivery1', id] } });
      assert.equal(unknown.status, 404, path);
      assert.equal(unknown.body.error, 'not_found');
      assert.equal(unknown.body.message, `no delivery nosuchdelivery1, ${id} in the spool; ${id} is a message id: GET /api/messages/{id} (mailhook messages show) lists its delivery ids, POST /api/messages/{id}/redeliver sends it again; nothing was done`);
      const typoOnly = await call(app, 'POST', path, { body: { ids: ['nosuchdelivery1'], dry_run: true } });
      assert.equal(typoOnly.status, 404, path);
      assert.match(typoOnly.body.message, /^no delivery nosuchdelivery1 in the spool; GET \/api\/messages\/\{id\} \(mailhook messages show\) lists a message's delivery ids; nothing was done$/);
    }
    assert.ok(row().next_attempt_at > Date.now() + 3_000_000, 'a request naming an unknown id retries nothing');
    const dry = await call(app, 'POST', '/api/deliveries/retry', { body: { route: 'desk', dry_run: true } });
    assert.deepEqual(dry.body, { retried: 1, dry_run: true, resumed: [], released: 0 });
    assert.deepEqual(await call(app, 'POST', '/api/deliveries/retry', { body: { route: 'gitlab' } }).then((r) => r.body), { retried: 0, dry_run: false, resumed: [], released: 0 }, 'another route: nothing, and its pause stays');
    assert.ok(row().next_attempt_at > Date.now() + 3_000_000, 'a dry run and another route change nothing');
    broken.respond = () => ({ status: 204 });
    const now = await call(app, 'POST', '/api/deliveries/retry', { body: { ids: [row().id] } });
    assert.deepEqual(now.body, { retried: 1, dry_run: false, resumed: ['desk'], released: 0 }, "the 503's Retry-After had paused its route too");
    await broken.waitFor(before + 2);
    await until(() => row().status === 'delivered', 10_000, 'the retried delivery to succeed');
    assert.equal(row().attempts, 2, 'the attempt count went on (no fresh budget, unlike a replay)');
    assert.deepEqual(await call(app, 'POST', '/api/deliveries/retry', { body: { all: true } }).then((r) => r.body), { retried: 0, dry_run: false, resumed: [], released: 0 }, 'nothing left waiting');
  });

  test('dashboard session: login trades the token for a cookie; writes with it need the CSRF header', async () => {
    const bad = await call(app, 'POST', '/api/session', { token: null, body: { token: 'not-the-token-at-all' } });
    assert.equal(bad.status, 401);
    const good = await call(app, 'POST', '/api/session', { token: null, body: { token: ADMIN_TOKEN } });
    assert.equal(good.status, 200);
    const setCookie = good.headers.get('set-cookie')!;
    assert.match(setCookie, /^mailhook_session=\d+\.[A-Za-z0-9_-]{43}; Path=\/; HttpOnly; SameSite=Strict; Max-Age=43200$/);
    assert.ok(!setCookie.includes(ADMIN_TOKEN));
    const cookie = setCookie.split(';')[0]!;
    assert.equal((await call(app, 'GET', '/api/messages', { token: null, headers: { cookie } })).status, 200);
    const noCsrf = await call(app, 'POST', '/api/deliveries/replay', { token: null, headers: { cookie }, body: { all: true, dry_run: true } });
    assert.equal(noCsrf.status, 401);
    assert.match(noCsrf.body.message, /x-mailhook-csrf/);
    const withCsrf = await call(app, 'POST', '/api/deliveries/replay', { token: null, headers: { cookie, 'x-mailhook-csrf': '1' }, body: { all: true, dry_run: true } });
    assert.equal(withCsrf.status, 200);
    const forged = await call(app, 'GET', '/api/messages', { token: null, headers: { cookie: `mailhook_session=${'9'.repeat(15)}.${'A'.repeat(43)}` } });
    assert.equal(forged.status, 401);
    // Behind a proxy with HTTP Basic auth the browser sends "Authorization: Basic" on every request: not ours, the cookie counts.
    const basic = { authorization: `Basic ${Buffer.from('ops:proxy-password').toString('base64')}` };
    assert.equal((await call(app, 'GET', '/api/messages', { token: null, headers: { ...basic, cookie } })).status, 200);
    assert.equal((await call(app, 'GET', '/api/messages', { token: null, headers: basic })).status, 401);
    assert.match((await fetch(`${app.httpUrl}/`, { headers: { ...basic, cookie } }).then((r) => r.text())), /src="\/assets\/app.js"/);
    const page = await fetch(`${app.httpUrl}/`, { headers: { cookie } });
    assert.match(await page.text(), /<script type="module" src="\/assets\/app.js">/);
    const login = await fetch(`${app.httpUrl}/`);
    assert.match(await login.text(), /id="login"/);
    assert.equal((await fetch(`${app.httpUrl}/assets/app.js`)).status, 401);
    assert.equal((await fetch(`${app.httpUrl}/assets/app.js`, { headers: { cookie } })).status, 200);
    // Through a TLS proxy the cookie is Secure (set and cleared); over plain HTTP it cannot be.
    const proxied = await call(app, 'POST', '/api/session', { token: null, headers: { 'x-forwarded-proto': 'https' }, body: { token: ADMIN_TOKEN } });
    assert.match(proxied.headers.get('set-cookie')!, /; HttpOnly; SameSite=Strict; Max-Age=43200; Secure$/);
    const other = proxied.headers.get('set-cookie')!.split(';')[0]!;
    // Logging out ends the session on the server too: a copy of the cookie kept elsewhere no longer works.
    const out = await call(app, 'DELETE', '/api/session', { token: null, headers: { cookie, 'x-forwarded-proto': 'https' } });
    assert.equal(out.status, 200);
    assert.equal(out.headers.get('set-cookie'), 'mailhook_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0; Secure');
    const after = await call(app, 'GET', '/api/messages', { token: null, headers: { cookie } });
    assert.equal(after.status, 401);
    assert.match(after.body.message, /logged out/);
    assert.match((await fetch(`${app.httpUrl}/`, { headers: { cookie } }).then((r) => r.text())), /id="login"/, 'the dashboard page too');
    assert.equal((await fetch(`${app.httpUrl}/assets/app.js`, { headers: { cookie } })).status, 401);
    assert.equal((await call(app, 'GET', '/api/messages', { token: null, headers: { cookie: other } })).status, 200, 'another session is not logged out');
    // A forged or expired value is not kept (the list holds only real sessions): logging it out changes nothing.
    assert.equal((await call(app, 'DELETE', '/api/session', { token: null, headers: { cookie: `mailhook_session=${'9'.repeat(15)}.${'A'.repeat(43)}` } })).status, 200);
  });

  test('OpenAPI document lists every route with its parameters, body and responses', async () => {
    const r = await call(app, 'GET', '/api/openapi.json');
    assert.equal(r.status, 200);
    const doc = r.body;
    assert.equal(doc.openapi, '3.1.0');
    assert.deepEqual(Object.keys(doc.paths).sort(), [
      '/api/deliveries/replay',
      '/api/deliveries/retry',
      '/api/mailboxes',
      '/api/messages',
      '/api/messages/{id}',
      '/api/messages/{id}/raw',
      '/api/messages/{id}/redeliver',
      '/api/openapi.json',
      '/api/routes',
      '/api/session',
    ]);
    assert.deepEqual(Object.keys(doc.paths['/api/messages/{id}']).sort(), ['delete', 'get']);
    const list = doc.paths['/api/messages'].get;
    assert.deepEqual(list.parameters.map((p: any) => p.name), ['status', 'route', 'recipient', 'key', 'sender', 'since', 'until', 'cursor', 'limit']);
    assert.deepEqual(list.parameters[0].schema.enum, ['pending', 'delivering', 'delivered', 'dead', 'dropped']);
    assert.ok(list.responses['200'].content['application/json'].schema.properties.next_cursor);
    assert.equal(list.responses['401'].content['application/json'].schema.$ref, '#/components/schemas/Problem');
    const replay = doc.paths['/api/deliveries/replay'].post;
    assert.ok(replay.requestBody.content['application/json'].schema.properties.as_of);
    assert.equal(doc.paths['/api/messages/{id}/raw'].get.parameters[0].in, 'path');
    assert.ok(doc.paths['/api/messages/{id}/raw'].get.responses['200'].content['message/rfc822']);
    assert.deepEqual(doc.paths['/api/session'].post.security, []);
    assert.deepEqual(doc.components.securitySchemes.bearerAuth, { type: 'http', scheme: 'bearer', description: 'http.admin_token_file or MAILHOOK_ADMIN_TOKEN' });
  });
});

describe('mailbox states', () => {
  test('come from the provider passed to the HTTP app, as the bridge reports them', async () => {
    const { buildHttpApp } = await import('../../src/http/server.js');
    const { Spool } = await import('../../src/spool/spool.js');
    const { createMetrics } = await import('../../src/core/metrics.js');
    const { createLogger } = await import('../../src/core/logger.js');
    const { parseTestConfig, tempDir } = await import('../helpers/app.js');
    const { adminYaml } = await import('./helpers.js');
    const { rmSync } = await import('node:fs');
    const dir = tempDir();
    const config = parseTestConfig(adminYaml({ dir, routes: '\n  - name: sink\n    addresses: ["*@in.test"]\n    sink: true\n' }), dir);
    const spool = new Spool({ path: config.spool.path, inlineMaxBytes: 1000, clock: { now: () => Date.now() } });
    const http = buildHttpApp({
      config,
      spool,
      log: createLogger({ level: 'silent' }),
      metrics: createMetrics(),
      readiness: () => ({}),
      mailboxes: async () => [{ name: 'support', state: 'idle', healthy: true, last_error: null, uid_next: 42 }],
    });
    try {
      const r = await http.inject({ method: 'GET', url: '/api/mailboxes', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
      assert.equal(r.statusCode, 200);
      assert.deepEqual(r.json(), { enabled: true, mailboxes: [{ name: 'support', state: 'idle', healthy: true, last_error: null, uid_next: 42 }] });
    } finally {
      await http.close();
      await spool.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
