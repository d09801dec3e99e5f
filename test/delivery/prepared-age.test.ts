// A request prepared ahead is signed again when it waited long for its slot, so its timestamp is fresh when sent.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Webhook } from 'standardwebhooks';
import { MailhookError } from '../../src/core/errors.js';
import { parseMessageJson } from '../../src/parse/message.js';
import { parseInboundMessage, type InboundParseOptions } from '../../src/parse/inbound.js';
import type { AppDeps } from '../../src/app.js';
import { Consumer } from '../helpers/consumer.js';
import { configYaml, SECRET, startTestApp, until, type TestApp } from '../helpers/app.js';
import { sendMail } from '../helpers/smtp-client.js';

/**
 * One route with one request slot, held by a first message while a second one is prepared and waits for it past
 * preparedMaxAgeMs (200 ms) and into the next second (webhook-timestamp counts seconds); then the slot is freed.
 */
async function secondWaitsForTheSlot(deps: Partial<AppDeps>, check: (app: TestApp, consumer: Consumer, releasedAt: number) => Promise<void>, format = `secret: "${SECRET}"`): Promise<void> {
  const consumer = new Consumer();
  await consumer.start();
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  consumer.respond = async (_req, index) => {
    if (index === 0) await held;
    return { status: 200 };
  };
  const app = await startTestApp({
    routes: '',
    yaml: (dir) =>
      configYaml({ dir, routes: `
  - name: app
    addresses: ["*@app.test"]
    webhook: { url: "http://127.0.0.1:${consumer.port}/hook", ${format} }
` }).replace('delivery:\n  timeout_ms: 5000\n', 'delivery:\n  timeout_ms: 5000\n  per_route_concurrency: 1\n'),
    deps: { preparedMaxAgeMs: 200, ...deps },
  });
  try {
    assert.equal(app.config.delivery.per_route_concurrency, 1);
    await sendMail(app.smtpPort, { from: 'a@example.test', to: 'one@app.test', subject: 'first', text: 'one' });
    await consumer.received(1);
    await sendMail(app.smtpPort, { from: 'a@example.test', to: 'two@app.test', subject: 'second', text: 'two' });
    let prepared = false;
    await until(() => {
      // prom-client reads a gauge asynchronously: the poll sees the last answer
      void app.metrics.deliveriesWaiting.get().then((g) => (prepared = (g.values.find((v) => v.labels.prepared === 'true')?.value ?? 0) > 0));
      return prepared;
    }, 5000, 'the second delivery prepared and waiting for the slot');
    const preparedAt = Date.now();
    await until(() => Date.now() >= Math.max(preparedAt + 200, Math.ceil(preparedAt / 1000) * 1000) + 50, 3000, 'time to pass');
    const releasedAt = Date.now();
    release();
    await check(app, consumer, releasedAt);
  } finally {
    release();
    await app.close();
    await consumer.stop();
  }
}

test('a prepared request that waited longer than preparedMaxAgeMs for its slot carries the time it was sent, validly signed', async () => {
  await secondWaitsForTheSlot({}, async (_app, consumer, releasedAt) => {
    await consumer.waitFor(2);
    const second = consumer.requests[1]!;
    const timestamp = Number(second.headers['webhook-timestamp']);
    assert.ok(timestamp >= Math.floor(releasedAt / 1000), `webhook-timestamp ${timestamp} is when the request was sent (>= ${Math.floor(releasedAt / 1000)}), not when it was prepared`);
    // Signed again with it: a Standard Webhooks verifier accepts the request as sent.
    const headers = { 'webhook-id': String(second.headers['webhook-id']), 'webhook-timestamp': String(second.headers['webhook-timestamp']), 'webhook-signature': String(second.headers['webhook-signature']) };
    assert.doesNotThrow(() => new Webhook(SECRET).verify(second.body.toString('utf8'), headers));
    assert.match(second.body.toString('utf8'), /"subject":"second"/);
  });
});

test('building the payload again fails as the first build would: a message that ended two parse threads is dead-lettered, not retried', async () => {
  let parses = 0;
  const parse = async (raw: Buffer) => {
    // the second message's second build (the first message is parsed once, the second before it waits)
    if (++parses === 3) throw new MailhookError('PARSE_CRASHED', 'parsing this message ended the parse thread twice');
    return parseMessageJson(raw);
  };
  await secondWaitsForTheSlot({ parse }, (app, consumer) => secondDeadOnRebuild(app, consumer, () => parses, 'json'));
});

/** The first message delivered, the second dead-lettered at its first attempt by the failed second build, never sent. */
async function secondDeadOnRebuild(app: TestApp, consumer: Consumer, parses: () => number, format: string): Promise<void> {
  await until(() => app.spool.jobs.counts().pending === 0 && app.spool.jobs.counts().delivering === 0, 5000, 'both outcomes recorded');
  const rows = app.spool.db.prepare(`SELECT status, attempts, last_error FROM deliveries ORDER BY created_at, id`).all() as Array<{ status: string; attempts: number; last_error: string | null }>;
  assert.equal(parses(), 3);
  assert.deepEqual(rows.map((r) => r.status).sort(), ['dead', 'delivered']);
  const dead = rows.find((r) => r.status === 'dead')!;
  assert.equal(dead.attempts, 1);
  assert.match(dead.last_error ?? '', new RegExp(`^cannot build the ${format} payload: parsing this message ended the parse thread twice`));
  assert.equal(consumer.requests.length, 1, 'the second message was never sent');
}

test('a service format (sendgrid) builds again with the inbound parse it was given, and its failure counts as the first build\'s would', async () => {
  let parses = 0;
  const parseInbound = async (raw: Buffer, options: InboundParseOptions) => {
    // the second message's second build (the first message is parsed once, the second before it waits)
    if (++parses === 3) throw new MailhookError('PARSE_CRASHED', 'parsing this message ended the parse thread twice');
    return parseInboundMessage(raw, options);
  };
  await secondWaitsForTheSlot({ parseInbound }, (app, consumer) => secondDeadOnRebuild(app, consumer, () => parses, 'sendgrid'), 'format: sendgrid');
});
