// The json format's body is laid out and signed on the parse thread with its parse: none of that per-byte work runs on the event loop.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { ResourceLimits, Worker } from 'node:worker_threads';
import { Webhook } from 'standardwebhooks';
import { startParseThread } from '../../src/parse/pool.js';
import type { ParseRequest } from '../../src/parse/job.js';
import { Consumer } from '../helpers/consumer.js';
import { configYaml, SECRET, startTestApp } from '../helpers/app.js';
import { sendMail } from '../helpers/smtp-client.js';

test('json format: the parse thread is asked for the whole signed body (jsonBody), and what it makes is what a Standard Webhooks verifier accepts', async () => {
  const consumer = await new Consumer().start();
  const asked: ParseRequest['kind'][] = [];
  // The app's own pool with real threads; the test only notes what each is asked to do.
  const startThread = (limits: ResourceLimits): Worker => {
    const worker = startParseThread(limits);
    const post = worker.postMessage.bind(worker);
    worker.postMessage = (message: { request?: ParseRequest }, transfer?: Parameters<Worker['postMessage']>[1]) => {
      if (message.request) asked.push(message.request.kind);
      post(message, transfer);
    };
    return worker;
  };
  const app = await startTestApp({
    routes: '',
    yaml: (dir) => configYaml({ dir, routes: `
  - name: app
    addresses: ["hook@app.test"]
    webhook: { url: "${consumer.url}", secret: "${SECRET}" }
` }),
    deps: { startParseThread: startThread },
  });
  try {
    // One body past Node's Buffer pool (4 KiB: its own memory) and one inside it (a copy is moved back, not the pool).
    const text = 'Zoë says hi\n'.repeat(2000);
    await sendMail(app.smtpPort, { from: 'a@sender.test', to: 'hook@app.test', subject: 'big', text });
    await sendMail(app.smtpPort, { from: 'a@sender.test', to: 'hook@app.test', subject: 'small', text: 'hi' });
    const received = await consumer.waitFor(2, 20_000);
    for (const req of received) {
      const headers = { 'webhook-id': String(req.headers['webhook-id']), 'webhook-timestamp': String(req.headers['webhook-timestamp']), 'webhook-signature': String(req.headers['webhook-signature']) };
      const payload = new Webhook(SECRET).verify(req.body.toString('utf8'), headers) as { message: { subject: string; text: string }; raw_base64: string };
      assert.match(Buffer.from(payload.raw_base64, 'base64').toString('utf8'), new RegExp(`Subject: ${payload.message.subject}`));
      if (payload.message.subject === 'big') assert.equal(payload.message.text, text);
    }
    assert.deepEqual([...new Set(received.map((r) => (JSON.parse(r.body.toString('utf8')) as { message: { subject: string } }).message.subject))].sort(), ['big', 'small']);
    assert.deepEqual(asked, ['jsonBody', 'jsonBody'], 'each body was made on the thread, not just its parse');
  } finally {
    await app.close();
    await consumer.stop();
  }
});
