// The message detail's summary of an HTML-only message: its excerpt comes from the HTML in one pass, without
// mailparser's HTML-to-text rendering (seconds of event loop for a 10 MB HTML body, on every dashboard refresh).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sendMail } from '../helpers/smtp-client.js';
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
