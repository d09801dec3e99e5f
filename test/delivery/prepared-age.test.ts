// A request prepared ahead is signed again when it waited long for its slot, so its timestamp is fresh when sent.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Webhook } from 'standardwebhooks';
import { Consumer } from '../helpers/consumer.js';
import { configYaml, SECRET, startTestApp, until } from '../helpers/app.js';
import { sendMail } from '../helpers/smtp-client.js';

test('a prepared request that waited longer than preparedMaxAgeMs for its slot carries the time it was sent, validly signed', async () => {
  const consumer = new Consumer();
  await consumer.start();
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  consumer.respond = async (_req, index) => {
    if (index === 0) await held; // the route's one slot stays busy while the second message waits for it, prepared
    return { status: 200 };
  };
  const app = await startTestApp({
    routes: '',
    yaml: (dir) =>
      configYaml({ dir, routes: `
  - name: app
    addresses: ["*@app.test"]
    webhook: { url: "http://127.0.0.1:${consumer.port}/hook", secret: "${SECRET}" }
` }).replace('delivery:\n  timeout_ms: 5000\n', 'delivery:\n  timeout_ms: 5000\n  per_route_concurrency: 1\n'),
    deps: { preparedMaxAgeMs: 200 },
  });
  try {
    assert.equal(app.config.delivery.per_route_concurrency, 1);
    await sendMail(app.smtpPort, { from: 'a@example.test', to: 'one@app.test', subject: 'first', text: 'one' });
    await consumer.received(1);
    await sendMail(app.smtpPort, { from: 'a@example.test', to: 'two@app.test', subject: 'second', text: 'two' });
    const waitingPrepared = async () => (await app.metrics.deliveriesWaiting.get()).values.find((v) => v.labels.prepared === 'true')?.value ?? 0;
    let prepared = false;
    await until(() => {
      void waitingPrepared().then((n) => (prepared = n > 0));
      return prepared;
    }, 5000, 'the second delivery prepared and waiting for the slot');
    const preparedAt = Date.now();
    // Time passes while it waits: past the (test's) bound and into the next second, which webhook-timestamp counts.
    await until(() => Date.now() >= Math.max(preparedAt + 200, Math.ceil(preparedAt / 1000) * 1000) + 50, 3000, 'time to pass');
    const releasedAt = Date.now();
    release();
    await consumer.waitFor(2);
    const second = consumer.requests[1]!;
    const timestamp = Number(second.headers['webhook-timestamp']);
    assert.ok(timestamp >= Math.floor(releasedAt / 1000), `webhook-timestamp ${timestamp} is when the request was sent (>= ${Math.floor(releasedAt / 1000)}), not when it was prepared`);
    // Signed again with it: a Standard Webhooks verifier accepts the request as sent.
    const headers = { 'webhook-id': String(second.headers['webhook-id']), 'webhook-timestamp': String(second.headers['webhook-timestamp']), 'webhook-signature': String(second.headers['webhook-signature']) };
    assert.doesNotThrow(() => new Webhook(SECRET).verify(second.body.toString('utf8'), headers));
    assert.match(second.body.toString('utf8'), /"subject":"second"/);
  } finally {
    release();
    await app.close();
    await consumer.stop();
  }
});
