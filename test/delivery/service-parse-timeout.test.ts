// The service formats (here mailgun) parse on the parse pool's threads, as json does: a parse that runs past the
// timeout is abandoned with PARSE_TIMEOUT and retried, and the event loop (SMTP, HTTP) is free while it runs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker, type ResourceLimits } from 'node:worker_threads';
import { Consumer } from '../helpers/consumer.js';
import { RawSmtp } from '../helpers/smtp-client.js';
import { configYaml, startTestApp, until } from '../helpers/app.js';
import { startParseThread } from '../../src/parse/pool.js';
import { parseInboundMessage } from '../../src/parse/inbound.js';
import type { ParseRequest } from '../../src/parse/job.js';
import { fixture, parseForm, sendRaw } from '../formats/support.js';

/**
 * A parse thread stuck in a pathological parse: it takes the message, tells the test which parse it was asked
 * for (the pool ignores a message without the job's id), and never answers, as a thread deep in html-to-text.
 */
const STUCK_THREAD = `
const { parentPort } = require('node:worker_threads');
parentPort.on('message', ({ request }) => parentPort.postMessage({ stuckOn: request }));
parentPort.postMessage({ ready: true });
`;

test('a mailgun route: a parse past the timeout on its thread is PARSE_TIMEOUT and retried; SMTP and /healthz answer meanwhile', { timeout: 60_000 }, async () => {
  const consumer = await new Consumer().start();
  let stuck!: (job: ParseRequest) => void;
  const stuckOn = new Promise<ParseRequest>((resolve) => (stuck = resolve));
  let threads = 0;
  // The app's own pool (one thread, delivery.timeout_ms): its first thread is stuck, the ones replacing it are real.
  const startThread = (limits: ResourceLimits): Worker => {
    if (++threads > 1) return startParseThread(limits);
    const worker = new Worker(STUCK_THREAD, { eval: true });
    worker.on('message', (m: { stuckOn?: ParseRequest }) => m.stuckOn && stuck(m.stuckOn));
    return worker;
  };
  const app = await startTestApp({
    routes: '',
    yaml: (dir) =>
      configYaml({ dir, routes: `
  - name: mg
    addresses: ["*@mg.test"]
    webhook: { url: "${consumer.url}", format: mailgun, secret: key-3ax6xnjp29jd6fds4gc373sgvjxteol0 }
` }).replace('delivery:\n  timeout_ms: 5000\n', 'delivery:\n  timeout_ms: 3000\n  parse_threads: 1\n'),
    deps: { startParseThread: startThread },
  });
  let smtp: RawSmtp | undefined;
  try {
    assert.equal(app.config.delivery.timeout_ms, 3000);
    // HTML only, below the MIME root: body-plain is html-to-text's rendering, the expensive part of the parse.
    const raw = fixture('html-related.eml');
    await sendRaw(app.smtpPort, raw, ['reply+h1@mg.test']);
    const posted = consumer.received(1, 60_000).then(() => 'posted' as const, () => 'posted' as const);
    const first = await Promise.race([stuckOn, posted]);
    assert.notEqual(first, 'posted', 'the message was posted without its parse going to a parse thread');
    assert.deepEqual(first, { kind: 'inbound', plainText: true }, 'the view, with body-plain rendered on the thread');
    const attempts = () => app.spool.db.prepare('SELECT a.attempt, a.outcome, a.error FROM attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE d.route = ? ORDER BY a.attempt').all('mg') as Array<{ attempt: number; outcome: string; error: string | null }>;

    // While the parse runs (no attempt recorded yet: it ends only when the pool abandons it), the event loop answers.
    const health = await fetch(`${app.httpUrl}/healthz`);
    assert.equal(health.status, 200);
    const opened = await RawSmtp.open(app.smtpPort);
    smtp = opened.smtp;
    assert.equal(opened.banner.code, 220);
    assert.equal((await smtp.cmd('EHLO client.test')).code, 250);
    await smtp.quit();
    assert.deepEqual(attempts(), [], 'answered while the parse was still running');

    const [req] = await consumer.waitFor(1, 30_000);
    const recorded = await until(() => (attempts().at(-1)?.outcome === 'delivered' ? attempts() : undefined), 10_000, 'the delivery recorded');
    assert.deepEqual(recorded[0], { attempt: 1, outcome: 'retry', error: 'parsing the message took longer than 3000 ms and was abandoned' });
    assert.ok(threads >= 2, 'the stuck thread was replaced');
    // The retry parsed on the real replacement thread: the post carries what the calling thread would have made.
    const form = await parseForm(req!);
    const expected = await parseInboundMessage(raw, { plainText: true });
    assert.ok(expected.plainText, 'HTML-only mail has a rendered body-plain');
    assert.equal(form.field('body-plain'), expected.plainText);
    assert.equal(form.field('subject'), 'Re: Bestellung');
    const pdf = form.files.get('attachment-2');
    assert.ok(pdf);
    assert.ok(Buffer.from(await pdf.arrayBuffer()).equals(expected.attachments[1]!.content));
  } finally {
    smtp?.destroy();
    await app.close();
    await consumer.stop();
  }
});

test('shutdown does not wait for a parse still running on its thread: the delivery is given back uncounted at once', { timeout: 60_000 }, async () => {
  const consumer = await new Consumer().start();
  let stuck: () => void = () => {};
  const parsing = new Promise<void>((r) => (stuck = r));
  const startThread = () => {
    const worker = new Worker(STUCK_THREAD, { eval: true });
    worker.on('message', (m: { stuckOn?: ParseRequest }) => m.stuckOn && stuck());
    return worker;
  };
  // The parse would be abandoned only after delivery.timeout_ms, 10 minutes here: past the test's own timeout.
  const app = await startTestApp({
    routes: '',
    yaml: (dir) =>
      configYaml({ dir, routes: `
  - name: app
    addresses: ["*@app.test"]
    webhook: { url: "${consumer.url}", secret: "whsec_${Buffer.alloc(32, 7).toString('base64')}" }
` }).replace('delivery:\n  timeout_ms: 5000\n', 'delivery:\n  timeout_ms: 600000\n  parse_threads: 1\n'),
    deps: { startParseThread: startThread },
  });
  try {
    await sendRaw(app.smtpPort, Buffer.from('Subject: parsed at shutdown\r\n\r\nx\r\n'), ['one@app.test']);
    await parsing;
    await app.close();
    const lines = app.logs.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { msg: string });
    assert.ok(lines.some((l) => l.msg === 'delivery not attempted before shutdown; given back uncounted'), 'given back');
    assert.equal(consumer.requests.length, 0);
  } finally {
    await app.close();
    await consumer.stop();
  }
});
