// A route's consumer health: the pure streak rules, then a real consumer failing and recovering, seen in the logs and /metrics.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RouteHealth, verdictOf, FAILING_AFTER, SUMMARY_EVERY_MS } from '../../src/delivery/route-health.js';
import { classifyError, classifyStatus } from '../../src/delivery/classify.js';
import { Consumer } from '../helpers/consumer.js';
import { sendMail } from '../helpers/smtp-client.js';
import { SECRET, startTestApp, until } from '../helpers/app.js';
import { adminYaml, call } from '../admin/helpers.js';
import { MailhookError } from '../../src/core/errors.js';
import { parseMessageJson } from '../../src/parse/message.js';

test('what an outcome says about the consumer', () => {
  assert.equal(verdictOf(classifyStatus(200), true), 'ok');
  for (const status of [408, 429, 500, 503]) assert.equal(verdictOf(classifyStatus(status), true), 'fail', String(status));
  assert.equal(verdictOf(classifyError(Object.assign(new Error('refused'), { code: 'ECONNREFUSED' })), true), 'fail');
  // Every message refused for our credentials or sent elsewhere: the route is broken, not the message.
  for (const status of [401, 403, 301]) assert.equal(verdictOf(classifyStatus(status), true), 'fail', String(status));
  // This message refused: the consumer answers.
  for (const status of [400, 404, 410, 422]) assert.equal(verdictOf(classifyStatus(status), true), 'none', String(status));
  assert.equal(verdictOf({ kind: 'retry', reason: 'parse timed out' }, false), 'none');
  assert.equal(verdictOf({ kind: 'dropped', reason: 'automatic' }, true), 'none');
});

test('failing after FAILING_AFTER failures in a row, a summary at most each SUMMARY_EVERY_MS, recovered at the first delivery', () => {
  const h = new RouteHealth();
  let t = 1_000_000;
  for (let i = 1; i < FAILING_AFTER; i++) assert.equal(h.record('a', 'fail', t++, 'HTTP 503'), undefined);
  // A delivery breaks the streak: the next failures start again from one.
  assert.equal(h.record('a', 'ok', t++), undefined);
  for (let i = 1; i < FAILING_AFTER; i++) assert.equal(h.record('a', 'fail', t++, 'HTTP 503'), undefined);
  // A message refused on its own neither breaks nor extends it.
  assert.equal(h.record('a', 'none', t++), undefined);
  assert.equal(h.failing('a'), false);
  const since = t;
  assert.deepEqual(h.record('a', 'fail', t, 'HTTP 502'), { kind: 'failing', route: 'a', failures: FAILING_AFTER, error: 'HTTP 502' });
  assert.equal(h.failing('a'), true);
  assert.deepEqual(h.failingRoutes(), ['a']);
  // Another route is on its own.
  assert.equal(h.failing('b'), false);
  assert.equal(h.record('b', 'fail', t, 'x'), undefined);
  for (let i = 0; i < 10; i++) assert.equal(h.record('a', 'fail', (t += 1000), 'HTTP 503'), undefined);
  t = since + SUMMARY_EVERY_MS;
  // failures: all since it started failing (the 5 that made it, 10, this one); sinceLastLine: since the 'failing' line.
  assert.deepEqual(h.record('a', 'fail', t, 'ECONNREFUSED'), { kind: 'still-failing', route: 'a', failures: FAILING_AFTER + 11, sinceLastLine: 11, failingForMs: SUMMARY_EVERY_MS, error: 'ECONNREFUSED' });
  assert.equal(h.record('a', 'fail', t + 1, 'ECONNREFUSED'), undefined);
  assert.deepEqual(h.record('a', 'ok', t + 5000), { kind: 'recovered', route: 'a', failures: FAILING_AFTER + 12, failingForMs: SUMMARY_EVERY_MS + 5000 });
  assert.equal(h.failing('a'), false);
  // Failing again takes a new streak.
  for (let i = 1; i < FAILING_AFTER; i++) assert.equal(h.record('a', 'fail', t + 6000 + i, 'HTTP 503'), undefined);
  assert.equal(h.record('a', 'fail', t + 7000, 'HTTP 503')?.kind, 'failing');
});

test('a consumer that fails, then recovers: one line when it starts failing, its further failures at debug, one line when it recovers', async () => {
  const consumer = new Consumer();
  await consumer.start();
  const FAILURES = FAILING_AFTER + 2;
  let app: Awaited<ReturnType<typeof startTestApp>> | undefined;
  const gaugeSeen: string[] = [];
  const failingSince: Array<string | null> = [];
  const consumerOf = async () => (await call(app!, 'GET', '/api/routes')).body.routes.find((r: { route: string }) => r.route === 'app').consumer as { failing_since: string | null; paused_until: string | null };
  const gauge = async () => /^mailhook_route_failing\{route="app"\} (\d+)$/m.exec(await (await fetch(`${app!.httpUrl}/metrics`)).text())?.[1] ?? 'absent';
  consumer.respond = async (_req, i) => {
    if (i >= FAILING_AFTER) gaugeSeen.push(await gauge());
    if (i >= FAILING_AFTER) failingSince.push((await consumerOf()).failing_since);
    return i < FAILURES ? { status: 503, body: 'down for maintenance' } : { status: 204 };
  };
  const routes = `
  - name: app
    addresses: ["in@h.test"]
    webhook: { url: "${consumer.url}", secret: "${SECRET}" }
`;
  app = await startTestApp({ routes, yaml: (dir) => adminYaml({ routes, dir }).replace('max_attempts: 5', 'max_attempts: 20') });
  try {
    assert.equal(await gauge(), '0', 'the series is there before any failure');
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'in@h.test', subject: 'hello', text: 'x' });
    await consumer.waitFor(FAILURES + 1);
    const lines = () => app!.logs.join('').trim().split('\n').map((l) => JSON.parse(l) as { level: number; msg: string; route?: string; failedAttempts?: number; failingForMs?: number; error?: string });
    await until(() => lines().some((l) => l.msg === 'route consumer recovered'), 10_000, 'the recovered line');
    const all = lines();
    const failed = all.filter((l) => l.msg === 'delivery failed; will retry');
    assert.deepEqual(failed.map((l) => l.level), [...Array<number>(FAILING_AFTER).fill(40), ...Array<number>(FAILURES - FAILING_AFTER).fill(20)], 'warn until the route is failing, then debug');
    const failing = all.filter((l) => l.msg.startsWith('route consumer failing'));
    assert.equal(failing.length, 1);
    assert.equal(failing[0]!.level, 40);
    assert.equal(failing[0]!.failedAttempts, FAILING_AFTER);
    assert.match(failing[0]!.error ?? '', /^HTTP 503: down for maintenance/);
    const recovered = all.filter((l) => l.msg === 'route consumer recovered');
    assert.equal(recovered.length, 1);
    assert.equal(recovered[0]!.level, 30);
    assert.equal(recovered[0]!.failedAttempts, FAILURES);
    assert.ok((recovered[0]!.failingForMs ?? -1) >= 0);
    assert.equal(all.filter((l) => l.msg === 'delivered').length, 1);
    // The gauge while the consumer was failing, then after it recovered.
    assert.deepEqual(gaugeSeen.slice(0, FAILURES - FAILING_AFTER), Array<string>(FAILURES - FAILING_AFTER).fill('1'));
    assert.equal(await gauge(), '0');
    // The admin API said since when, and says nothing once it recovered.
    assert.equal(failingSince.length, FAILURES - FAILING_AFTER + 1);
    assert.ok(failingSince.slice(0, FAILURES - FAILING_AFTER).every((s) => s !== null && s === failingSince[0]), JSON.stringify(failingSince));
    assert.deepEqual(await consumerOf(), { failing_since: null, paused_until: null });
  } finally {
    await app.close();
    await consumer.stop();
  }
});

test('a failing route whose last delivery is dead-lettered is no longer counted as failing', async () => {
  const consumer = new Consumer();
  await consumer.start();
  consumer.respond = () => ({ status: 503, body: 'down' });
  const routes = `
  - name: app
    addresses: ["in@h.test"]
    webhook: { url: "${consumer.url}", secret: "${SECRET}" }
`;
  // One attempt more than it takes to count as failing: the last one gives up.
  const app = await startTestApp({ routes, yaml: (dir) => adminYaml({ routes, dir }).replace('max_attempts: 5', `max_attempts: ${FAILING_AFTER + 1}`) });
  try {
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'in@h.test', subject: 'hello', text: 'x' });
    const msgs = () => app.logs.join('').trim().split('\n').map((l) => (JSON.parse(l) as { msg: string }).msg);
    await until(() => msgs().includes('route has nothing left to deliver; no longer counted as failing until new mail finds its consumer failing again'), 10_000, 'the line');
    const all = msgs();
    assert.ok(all.findIndex((m) => m.startsWith('route consumer failing')) < all.indexOf('delivery dead-lettered'));
    assert.equal(consumer.requests.length, FAILING_AFTER + 1);
    assert.match(await (await fetch(`${app.httpUrl}/metrics`)).text(), /^mailhook_route_failing\{route="app"\} 0$/m);
    const r = await call(app, 'GET', '/api/routes');
    assert.equal(r.body.routes[0].consumer.failing_since, null);
  } finally {
    await app.close();
    await consumer.stop();
  }
});

test('while a route is failing, a failure that is not its consumer\'s (a parse timeout) is still logged at warn', async () => {
  const consumer = new Consumer();
  await consumer.start();
  let up = false;
  consumer.respond = () => (up ? { status: 204 } : { status: 503, body: 'down' });
  let timedOut = false;
  const routes = `
  - name: app
    addresses: ["in@h.test"]
    webhook: { url: "${consumer.url}", secret: "${SECRET}", format: json }
`;
  const app = await startTestApp({
    routes,
    yaml: (dir) => adminYaml({ routes, dir }).replace('max_attempts: 5', 'max_attempts: 50'),
    deps: {
      parse: async (raw) => {
        if (raw.toString('latin1').includes('Subject: slow') && !timedOut) {
          timedOut = true;
          throw new MailhookError('PARSE_TIMEOUT', 'parsing the message took longer than 5000 ms and was abandoned');
        }
        return parseMessageJson(raw);
      },
    },
  });
  try {
    const lines = () => app.logs.join('').trim().split('\n').map((l) => JSON.parse(l) as { level: number; msg: string; deliveryId?: string; error?: string });
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'in@h.test', subject: 'hello', text: 'x' });
    await until(() => lines().some((l) => l.msg.startsWith('route consumer failing')), 10_000, 'the route failing');
    const deliveryIds = () => app.spool.db.prepare('SELECT id FROM deliveries').pluck().all() as string[];
    const [helloId] = deliveryIds();
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'in@h.test', subject: 'slow', text: 'y' });
    const slowId = deliveryIds().find((id) => id !== helloId);
    await until(() => timedOut, 10_000, 'the parse timeout');
    up = true;
    await until(() => app.spool.jobs.counts().delivered === 2, 10_000, 'both delivered');
    const slowFailures = lines().filter((l) => l.msg === 'delivery failed; will retry' && l.deliveryId === slowId);
    assert.equal(slowFailures.length, 1);
    assert.equal(slowFailures[0]!.level, 40, 'a parse timeout is not the consumer failing again');
    assert.match(slowFailures[0]!.error ?? '', /longer than 5000 ms/);
  } finally {
    await app.close();
    await consumer.stop();
  }
});
