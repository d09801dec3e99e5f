// The message detail's summary of an HTML-only message: its excerpt comes from the HTML in one pass, without
// mailparser's HTML-to-text rendering (seconds of event loop for a 10 MB HTML body, on every dashboard refresh).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sendMail } from '../helpers/smtp-client.js';
import { Consumer } from '../helpers/consumer.js';
import { SECRET, configYaml, startTestApp, until } from '../helpers/app.js';
import { ADMIN_TOKEN, call, startAdminApp } from './helpers.js';

test('an HTML-only message: subject and an excerpt of its HTML, not a text rendering (no link targets)', async () => {
  const app = await startAdminApp({ routes: `\n  - name: keep\n    addresses: ["*@sink.test"]\n    sink: true\n` });
  try {
    const info = await sendMail(app.smtpPort, {
      from: 'shop@example.test',
      to: 'x@sink.test',
      subject: 'Your order',
      html: '<html><body><h1>Order #42</h1><p>Shipped: <a href="https://track.example/42">track it</a></p></body></html>',
    });
    const id = /queued as (\S+)/.exec(info.response)![1]!;
    const r = await call(app, 'GET', `/api/messages/${id}`);
    assert.equal(r.status, 200);
    assert.equal(r.body.parse_error, null);
    assert.equal(r.body.summary.subject, 'Your order');
    assert.equal(r.body.summary.text_excerpt, 'Order #42 Shipped: track it');
  } finally {
    await app.close();
  }
});

test('deleting a message whose webhook request is in flight: 409, then with force the attempt ends quietly (no retry, counted)', async () => {
  const consumer = new Consumer();
  await consumer.start();
  const held: Array<() => void> = [];
  consumer.respond = () => new Promise((r) => held.push(() => r({ status: 200 })));
  const app = await startAdminApp({ routes: `\n  - name: app\n    addresses: ["*@app.test"]\n    webhook: { url: "${consumer.url}", secret: "${SECRET}" }\n` });
  try {
    const info = await sendMail(app.smtpPort, { from: 'a@s.test', to: 'x@app.test', subject: 'going', text: 'x' });
    const id = /queued as (\S+)/.exec(info.response)![1]!;
    await consumer.received(1);
    const refused = await call(app, 'DELETE', `/api/messages/${id}`);
    assert.equal(refused.status, 409);
    const forced = await call(app, 'DELETE', `/api/messages/${id}?force=true`);
    assert.equal(forced.status, 200);
    held.shift()!();
    const logs = () => app.logs.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
    const ended = await until(() => logs().find((l) => l.msg === 'delivery ended: its message was deleted meanwhile'), 5000, 'the log line');
    assert.deepEqual([ended.msgId, ended.status, ended.outcome], [id, 200, 'delivered']);
    assert.ok(!logs().some((l) => /lease lost/.test(String(l.msg))), 'not reported as a lost lease that will be attempted again');
    const metrics = await (await fetch(`${app.httpUrl}/metrics`)).text();
    assert.match(metrics, /^mailhook_deliveries_total\{route="app",outcome="delivered"\} 1$/m);
    assert.equal(app.spool.getMessage(id), undefined);
  } finally {
    for (const h of held) h();
    await app.close();
    await consumer.stop();
  }
});

test('a message deleted (force) while its delivery waits for a request slot, prepared, is never sent', async () => {
  const consumer = await new Consumer().start();
  const held: Array<() => void> = [];
  consumer.respond = () => new Promise((r) => held.push(() => r({ status: 200 })));
  const routes = `\n  - name: app\n    addresses: ["*@app.test"]\n    webhook: { url: "${consumer.url}", secret: "${SECRET}" }\n`;
  // One request at a time: the second message is leased and prepared, then waits for the first's slot.
  const app = await startTestApp({ routes, yaml: (dir) => configYaml({ dir, routes }).replace('http:\n  listen: "127.0.0.1:0"', `http:\n  listen: "127.0.0.1:0"\n  admin_token: "${ADMIN_TOKEN}"`).replace('delivery:\n', 'delivery:\n  per_route_concurrency: 1\n') });
  try {
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'one@app.test', subject: 'first', text: 'one' });
    await consumer.received(1);
    const info = await sendMail(app.smtpPort, { from: 'a@s.test', to: 'two@app.test', subject: 'deleted before it went out', text: 'two' });
    const id = /queued as (\S+)/.exec(info.response)![1]!;
    await until(() => app.spool.db.prepare(`SELECT 1 FROM deliveries WHERE message_id = ? AND status = 'delivering'`).get(id), 5000, 'the second leased');
    assert.equal((await call(app, 'DELETE', `/api/messages/${id}?force=true`)).status, 200);
    held.shift()!();
    const logs = () => app.logs.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
    const removed = await until(() => logs().find((l) => l.msg === 'delivery removed while it was prepared (its message was deleted); not sent'), 5000, 'the log line');
    assert.equal(removed.msgId, id);
    assert.deepEqual(consumer.requests.map((r) => (JSON.parse(r.body.toString()) as { message: { subject: string } }).message.subject), ['first']);
  } finally {
    for (const h of held) h();
    await app.close();
    await consumer.stop();
  }
});
