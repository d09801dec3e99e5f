// The message detail's summary of an HTML-only message: its excerpt comes from the HTML in one pass, without
// mailparser's HTML-to-text rendering (seconds of event loop for a 10 MB HTML body, on every dashboard refresh).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sendMail } from '../helpers/smtp-client.js';
import { Consumer } from '../helpers/consumer.js';
import { SECRET, until } from '../helpers/app.js';
import { call, startAdminApp } from './helpers.js';

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
