// The delivery loop under wall-clock steps (NTP, a VM resumed): no duplicate requests, no paused reclaim.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Consumer } from '../helpers/consumer.js';
import { sendMail } from '../helpers/smtp-client.js';
import { SECRET, startTestApp, until } from '../helpers/app.js';
import { leaseDurationMs } from '../../src/delivery/worker.js';

const routes = (url: string) => `
  - name: app
    addresses: ["*@app.test"]
    webhook: { url: "${url}", secret: "${SECRET}" }
`;

/** Counts the loop's reclaimExpired calls (the wall-clock time each was made at). */
function spyReclaim(app: { spool: { jobs: { reclaimExpired: (now: number, own?: Iterable<string>) => number } } }): number[] {
  const calls: number[] = [];
  const jobs = app.spool.jobs;
  const original = jobs.reclaimExpired.bind(jobs);
  jobs.reclaimExpired = (now, own) => {
    calls.push(now);
    return original(now, own);
  };
  return calls;
}

test('a forward clock step past the lease does not lease again a delivery whose request is still in flight', async () => {
  const consumer = await new Consumer().start();
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  consumer.respond = async (_req, index) => {
    if (index === 0) await held;
    return { status: 200 };
  };
  let offset = 0;
  const app = await startTestApp({ routes: routes(consumer.url), deps: { clock: { now: () => Date.now() + offset } } });
  try {
    const calls = spyReclaim(app);
    await sendMail(app.smtpPort, { from: 'a@example.test', to: 'one@app.test', subject: 'first', text: 'one' });
    await consumer.received(1);
    const leased = app.spool.db.prepare(`SELECT id, lease_token FROM deliveries`).get() as { id: string; lease_token: string };
    offset = leaseDurationMs(app.config) + 60_000; // the wall clock steps past the lease
    const jumped = Date.now() + offset;
    await sendMail(app.smtpPort, { from: 'a@example.test', to: 'two@app.test', subject: 'second', text: 'two' });
    // The loop looked for expired leases after the step (once a second) and the second message went out.
    await until(() => (app.worker.wake(), calls.some((at) => at >= jumped)), 10_000, 'a reclaim after the step');
    await until(() => app.spool.jobs.counts().delivered === 1, 10_000, 'the second message delivered');
    app.worker.wake();
    await until(() => app.spool.jobs.counts().pending === 0, 5000, 'nothing pending');
    assert.deepEqual(app.spool.db.prepare(`SELECT id, lease_token FROM deliveries WHERE status = 'delivering'`).all(), [leased], 'the held delivery keeps its lease');
    assert.equal(consumer.requests.length, 2, 'no second request for the held delivery');
    release();
    await until(() => app.spool.jobs.counts().delivered === 2, 5000, 'both delivered');
    assert.notEqual(consumer.requests[0]!.headers['webhook-id'], consumer.requests[1]!.headers['webhook-id']);
    assert.ok(!app.logs.some((l) => /lease lost/.test(l)), 'the held attempt recorded its outcome');
  } finally {
    release();
    await app.close();
    await consumer.stop();
  }
});

test('a backward clock step does not pause the once-a-second look for expired leases', async () => {
  const consumer = await new Consumer().start();
  let offset = 0;
  const app = await startTestApp({ routes: routes(consumer.url), deps: { clock: { now: () => Date.now() + offset } } });
  try {
    const calls = spyReclaim(app);
    await until(() => (app.worker.wake(), calls.length > 0), 5000, 'a first reclaim');
    offset = -3_600_000; // the wall clock steps an hour back
    const stepped = Date.now() + offset + 600_000;
    await until(() => (app.worker.wake(), calls.some((at) => at < stepped)), 5000, 'a reclaim after the step back');
  } finally {
    await app.close();
    await consumer.stop();
  }
});

test('an attempt\'s duration is not the wall clock\'s step: a step back of an hour during a request records its real latency', async () => {
  const consumer = await new Consumer().start();
  let release: () => void = () => {};
  const held = new Promise<void>((r) => (release = r));
  consumer.respond = async () => {
    await held;
    return { status: 200 };
  };
  let offset = 0;
  const app = await startTestApp({ routes: routes(consumer.url), deps: { clock: { now: () => Date.now() + offset } } });
  try {
    const t0 = performance.now();
    await sendMail(app.smtpPort, { from: 'a@example.test', to: 'one@app.test', subject: 'first', text: 'one' });
    await consumer.received(1);
    offset = -3_600_000;
    release();
    await until(() => app.spool.jobs.counts().delivered === 1, 5000, 'delivered');
    const elapsed = performance.now() - t0;
    const { duration_ms } = app.spool.db.prepare(`SELECT duration_ms FROM attempts`).get() as { duration_ms: number };
    assert.ok(duration_ms >= 0 && duration_ms <= elapsed, `duration_ms ${duration_ms}, ${Math.round(elapsed)} ms in all`);
    const metrics = await (await fetch(`${app.httpUrl}/metrics`)).text();
    const sum = Number(/^mailhook_delivery_duration_seconds_sum\{route="app"\} (\S+)$/m.exec(metrics)?.[1]);
    assert.ok(sum >= 0 && sum <= elapsed / 1000, `latency sum ${sum}`);
  } finally {
    release();
    await app.close();
    await consumer.stop();
  }
});
