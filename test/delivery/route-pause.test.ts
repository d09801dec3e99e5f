// A consumer's Retry-After pauses its whole route: new mail waits too, until the pause ends or an operator retries now.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Consumer } from '../helpers/consumer.js';
import { sendMail } from '../helpers/smtp-client.js';
import { SECRET, startTestApp, until, type TestApp } from '../helpers/app.js';
import { adminYaml, call } from '../admin/helpers.js';
import { ROUTE_PAUSE_MAX_MS } from '../../src/delivery/backoff.js';
import { blockedWaitMs } from '../../src/delivery/worker.js';

const subjectOf = (body: Buffer) => (JSON.parse(body.toString('utf8')) as { message: { subject: string } }).message.subject;

async function start(consumer: Consumer): Promise<TestApp> {
  const routes = `
  - name: app
    addresses: ["in@p.test"]
    webhook: { url: "${consumer.url}", secret: "${SECRET}" }
`;
  return startTestApp({ routes, yaml: (dir) => adminYaml({ routes, dir }) });
}

const logLines = (app: TestApp) => app.logs.join('').trim().split('\n').map((l) => JSON.parse(l) as { msg: string; route?: string; until?: string });

test('a 503 with Retry-After holds the route\'s new mail too until it has passed', async () => {
  const consumer = new Consumer();
  await consumer.start();
  consumer.respond = (_req, i) => (i === 0 ? { status: 503, headers: { 'retry-after': '2' }, body: 'shedding load' } : { status: 204 });
  const app = await start(consumer);
  try {
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'in@p.test', subject: 'first', text: 'x' });
    await consumer.waitFor(1);
    const askedAt = consumer.requests[0]!.at;
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'in@p.test', subject: 'second', text: 'y' });
    await consumer.waitFor(3);
    const second = consumer.requests.find((r) => subjectOf(r.body) === 'second');
    assert.ok(second, 'the second message was delivered');
    assert.ok(second.at >= askedAt + 2000, `the second message's first request came ${second.at - askedAt} ms after the Retry-After of 2 s`);
    const paused = logLines(app).filter((l) => l.msg.startsWith('route paused'));
    assert.equal(paused.length, 1);
    assert.equal(paused[0]!.route, 'app');
  } finally {
    await app.close();
    await consumer.stop();
  }
});

test('an operator\'s retry lifts the pause at once, even with nothing to make due', async () => {
  const consumer = new Consumer();
  await consumer.start();
  consumer.respond = (_req, i) => (i === 0 ? { status: 429, headers: { 'retry-after': '3600' }, body: 'slow down' } : { status: 204 });
  const app = await start(consumer);
  try {
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'in@p.test', subject: 'first', text: 'x' });
    await consumer.waitFor(1);
    await until(() => logLines(app).some((l) => l.msg.startsWith('route paused')), 10_000, 'the pause');
    // The admin API shows the pause: at most ROUTE_PAUSE_MAX_MS, though the consumer asked for an hour.
    const consumerOf = async () => (await call(app, 'GET', '/api/routes')).body.routes.find((r: { route: string }) => r.route === 'app').consumer as { failing_since: string | null; paused_until: string | null };
    const paused = await consumerOf();
    const left = Date.parse(paused.paused_until ?? '') - Date.now();
    assert.ok(left > ROUTE_PAUSE_MAX_MS - 60_000 && left <= ROUTE_PAUSE_MAX_MS, `paused for ${left} ms`);
    assert.equal(paused.failing_since, null, 'one failed request is not a failing consumer');
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'in@p.test', subject: 'second', text: 'y' });
    // The second message's delivery is due, never tried, held only by the pause: nothing for a retry to make due,
    // and the retry lifts the pause all the same. The first keeps waiting out its hour.
    const second = app.spool.db.prepare(`SELECT id FROM deliveries WHERE status = 'pending' AND attempts = 0`).pluck().all() as string[];
    assert.equal(second.length, 1);
    const r = await call(app, 'POST', '/api/deliveries/retry', { body: { ids: second } });
    assert.equal(r.status, 200);
    assert.equal(r.body.retried, 0);
    assert.deepEqual(r.body.resumed, ['app']);
    assert.equal(r.body.released, 1, 'the second message, due and held only by the pause');
    await consumer.waitFor(2);
    assert.equal(subjectOf(consumer.requests[1]!.body), 'second');
    assert.ok(logLines(app).some((l) => l.msg === 'route pauses lifted by an operator'));
    assert.deepEqual(await consumerOf(), { failing_since: null, paused_until: null });
  } finally {
    await app.close();
    await consumer.stop();
  }
});

test('deliveries already leased and prepared when the pause starts do not go out during it', async () => {
  const consumer = new Consumer();
  await consumer.start();
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  let answeredAt = 0;
  // The first four requests (per_route_concurrency) are held until four more are prepared behind them, then all
  // are told to wait 2 s; everything after that is taken.
  consumer.respond = async (_req, i) => {
    if (i >= 4) return { status: 204 };
    await released;
    answeredAt ||= Date.now();
    return { status: 503, headers: { 'retry-after': '2' }, body: 'deploying' };
  };
  const app = await start(consumer);
  try {
    for (let n = 0; n < 8; n++) await sendMail(app.smtpPort, { from: 'a@s.test', to: 'in@p.test', subject: `m${n}`, text: 'x' });
    await consumer.received(4);
    const prepared = async () => /^mailhook_deliveries_waiting\{route="app",prepared="true"\} (\d+)$/m.exec(await (await fetch(`${app.httpUrl}/metrics`)).text())?.[1];
    for (const t0 = Date.now(); (await prepared()) !== '4'; ) {
      if (Date.now() - t0 > 10_000) assert.fail('four deliveries to be prepared behind the four requests');
      await new Promise((r) => setTimeout(r, 20));
    }
    release();
    await consumer.waitFor(12); // 8 first tries, 4 of them answered 503, then those 4 again
    const during = consumer.requests.slice(4).filter((r) => r.at < answeredAt + 2000);
    assert.deepEqual(during.map((r) => subjectOf(r.body)), [], 'no request in the 2 s the consumer asked for');
    assert.equal(new Set(consumer.requests.map((r) => subjectOf(r.body))).size, 8);
    await until(() => app.spool.jobs.counts().delivered === 8, 10_000, 'all delivered');
    // The four held back were given back uncounted: one attempt each.
    const attempts = app.spool.db.prepare(`SELECT attempts FROM deliveries ORDER BY attempts`).pluck().all();
    assert.deepEqual(attempts, [1, 1, 1, 1, 2, 2, 2, 2]);
  } finally {
    await app.close();
    await consumer.stop();
  }
});

test('a wall-clock step back does not stretch a pause', async () => {
  const consumer = new Consumer();
  await consumer.start();
  consumer.respond = (_req, i) => (i === 0 ? { status: 503, headers: { 'retry-after': '1' } } : { status: 204 });
  let offsetMs = 0;
  const routes = `
  - name: app
    addresses: ["in@p.test"]
    webhook: { url: "${consumer.url}", secret: "${SECRET}" }
`;
  const app = await startTestApp({ routes, yaml: (dir) => adminYaml({ routes, dir }), deps: { clock: { now: () => Date.now() + offsetMs } } });
  try {
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'in@p.test', subject: 'first', text: 'x' });
    await until(() => logLines(app).some((l) => l.msg.startsWith('route paused')), 10_000, 'the pause');
    offsetMs = -3_600_000;
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'in@p.test', subject: 'second', text: 'y' });
    // Sent once the 1 s pause is over, not an hour later.
    await consumer.waitFor(2, 10_000);
    assert.equal(subjectOf(consumer.requests[1]!.body), 'second');
  } finally {
    await app.close();
    await consumer.stop();
  }
});

test('a redeliver or replay lifts the pause of its deliveries\' route only', async () => {
  const a = await new Consumer().start();
  const b = await new Consumer().start();
  // a: delivers m1, asks m2 to wait an hour, takes m1 again, asks m3 to wait an hour, takes m1 again.
  a.respond = (_req, i) => (i === 1 || i === 3 ? { status: 429, headers: { 'retry-after': '3600' } } : { status: 204 });
  b.respond = () => ({ status: 503, headers: { 'retry-after': '3600' } });
  const routes = `
  - name: a
    addresses: ["in@a.test"]
    webhook: { url: "${a.url}", secret: "${SECRET}" }
  - name: b
    addresses: ["in@b.test"]
    webhook: { url: "${b.url}", secret: "${SECRET}" }
`;
  const app = await startTestApp({ routes, yaml: (dir) => adminYaml({ routes, dir }) });
  try {
    const pausedLines = (route: string) => logLines(app).filter((l) => l.msg.startsWith('route paused') && l.route === route).length;
    const pausedUntil = async () =>
      Object.fromEntries(((await call(app, 'GET', '/api/routes')).body.routes as Array<{ route: string; consumer: { paused_until: string | null } }>).map((r) => [r.route, r.consumer.paused_until !== null]));
    await sendMail(app.smtpPort, { from: 'x@s.test', to: 'in@a.test', subject: 'm1', text: 'x' });
    await until(() => app.spool.jobs.counts().delivered === 1, 10_000, 'm1 delivered');
    const m1 = app.spool.db.prepare(`SELECT id, message_id FROM deliveries WHERE status = 'delivered'`).get() as { id: string; message_id: string };
    await sendMail(app.smtpPort, { from: 'x@s.test', to: 'in@a.test', subject: 'm2', text: 'x' });
    await sendMail(app.smtpPort, { from: 'x@s.test', to: 'in@b.test', subject: 'b1', text: 'x' });
    await until(() => pausedLines('a') === 1 && pausedLines('b') === 1, 10_000, 'both routes paused');
    assert.deepEqual(await pausedUntil(), { a: true, b: true });

    const r = await call(app, 'POST', `/api/messages/${m1.message_id}/redeliver`, { body: {} });
    assert.equal(r.status, 200);
    assert.deepEqual(r.body.requeued, [m1.id]);
    await a.waitFor(3);
    assert.equal(subjectOf(a.requests[2]!.body), 'm1', 'the redelivery went out during what was a pause');
    assert.deepEqual(await pausedUntil(), { a: false, b: true });

    await sendMail(app.smtpPort, { from: 'x@s.test', to: 'in@a.test', subject: 'm3', text: 'x' });
    await until(() => pausedLines('a') === 2, 10_000, 'route a paused again');
    await until(() => app.spool.jobs.counts().delivered === 1, 10_000, 'm1 delivered again');
    const replay = await call(app, 'POST', '/api/deliveries/replay', { body: { ids: [m1.id], status: 'delivered' } });
    assert.equal(replay.status, 200);
    assert.equal(replay.body.replayed, 1);
    await a.waitFor(5);
    assert.equal(subjectOf(a.requests[4]!.body), 'm1', 'the replay went out during what was a pause');
    assert.deepEqual(await pausedUntil(), { a: false, b: true });

    assert.equal(b.requests.length, 1, 'b stays paused: its delivery waits');
    const lifted = logLines(app).filter((l) => l.msg === 'route pauses lifted by an operator') as Array<{ routes?: string[] }>;
    assert.deepEqual(lifted.map((l) => l.routes), [['a'], ['a']]);
  } finally {
    await app.close();
    await a.stop();
    await b.stop();
  }
});

test('while a route is paused, the loop sleeps until the first pause ends or an open route\'s next delivery falls due', () => {
  const now = 1_000_000; // wall ms
  const mono = 5_000; // monotonic ms
  assert.equal(blockedWaitMs({ now, mono, pausesUntil: [], openNextDue: [] }), 1000, 'routes at their limit: look again in a second');
  assert.equal(blockedWaitMs({ now, mono, pausesUntil: [mono + 300, mono + 60_000], openNextDue: [] }), 300, 'the first pause to end');
  assert.equal(blockedWaitMs({ now, mono, pausesUntil: [mono + 60_000], openNextDue: [null, now + 250.5, now + 400] }), 251, 'an open route\'s retry due before the pause ends');
  assert.equal(blockedWaitMs({ now, mono, pausesUntil: [mono + 60_000], openNextDue: [now, now - 10] }), 1000, 'open routes\' due deliveries are at their limit: a finishing attempt wakes the loop');
  assert.equal(blockedWaitMs({ now, mono, pausesUntil: [mono - 50], openNextDue: [now + 500] }), 1, 'a pause just ended: look at once');
});
