// The core pipeline end to end: a real SMTP client in, a real HTTP consumer out, signatures checked with standardwebhooks.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Webhook } from 'standardwebhooks';
import { createServer } from 'node:http';
import { once } from 'node:events';
import { renameSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { MailhookError } from '../../src/core/errors.js';
import { LARGE_MESSAGE_BYTES, leaseDurationMs } from '../../src/delivery/worker.js';
import { parseMessage, parseMessageJson } from '../../src/parse/message.js';
import { Consumer } from '../helpers/consumer.js';
import { sendMail } from '../helpers/smtp-client.js';
import { SECRET, configYaml, startTestApp, until, type TestApp } from '../helpers/app.js';

interface Payload {
  id: string;
  message_id: string;
  route: string;
  received_at: string;
  envelope: { mail_from: string; rcpt_to: string[]; remote_address: string; helo: string };
  recipients: Array<{ address: string; key: string | null }>;
  message: {
    message_id: string;
    subject: string;
    from: { address: string; name: string };
    to: Array<{ address: string; name: string }>;
    cc: Array<{ address: string }>;
    reply_to: Array<{ address: string }>;
    date: string;
    in_reply_to: string | null;
    references: string[];
    headers: Array<{ name: string; value: string }>;
    text: string;
    html: string | null;
    attachments: Array<{ filename: string; content_type: string; size: number; content_id: string | null; content_base64: string }>;
  };
  raw_base64: string;
}

function routes(main: Consumer, other: Consumer, extra = ''): string {
  return `
  - name: gitlab
    addresses: ["incoming+%{key}@gitlab.test", "incoming@gitlab.test", "*@catchall.test"]
    webhook: { url: "${main.url}", secret: "${SECRET}" }
  - name: desk
    addresses: ["desk-%{key}@desk.test"]
    webhook: { url: "${other.url}", secret: "${SECRET}" }
${extra}`;
}

describe('delivery to a webhook', () => {
  let app: TestApp;
  const main = new Consumer();
  const other = new Consumer();
  before(async () => {
    await main.start();
    await other.start();
    app = await startTestApp({ routes: routes(main, other) });
  });
  after(async () => {
    await app.close();
    await main.stop();
    await other.stop();
  });

  test('signed JSON payload with envelope, keys, decoded fields and the raw bytes', async () => {
    const start = main.requests.length;
    const info = await sendMail(app.smtpPort, {
      from: '"Zoë Sender" <zoe@sender.test>',
      to: 'incoming+AbC-123_x@gitlab.test',
      cc: 'someone@else.test',
      replyTo: 'reply@sender.test',
      subject: 'Grüße — 日本語',
      text: 'Hello wörld\n',
      html: '<p>Hello <b>wörld</b></p>',
      messageId: '<m1@sender.test>',
      inReplyTo: '<parent@gitlab.test>',
      references: ['<root@gitlab.test>', '<parent@gitlab.test>'],
      attachments: [{ filename: 'data.bin', content: Buffer.from([0, 1, 2, 255, 254]), contentType: 'application/octet-stream' }],
      envelope: { from: 'bounce@sender.test', to: ['incoming+AbC-123_x@gitlab.test'] },
    });
    assert.match(info.response, /^250 2\.0\.0 Ok: queued as /);
    const [req] = (await main.waitFor(start + 1)).slice(start);
    assert.ok(req);
    assert.equal(req.method, 'POST');
    assert.equal(req.headers['content-type'], 'application/json');
    // The consumer's side: verify exactly as a Standard Webhooks consumer does.
    const wh = new Webhook(SECRET);
    const payload = wh.verify(req.body.toString('utf8'), {
      'webhook-id': String(req.headers['webhook-id']),
      'webhook-timestamp': String(req.headers['webhook-timestamp']),
      'webhook-signature': String(req.headers['webhook-signature']),
    }) as Payload;
    assert.equal(payload.id, req.headers['webhook-id']);
    assert.equal(payload.route, 'gitlab');
    assert.ok(!Number.isNaN(Date.parse(payload.received_at)));
    assert.equal(payload.envelope.mail_from, 'bounce@sender.test');
    assert.deepEqual(payload.envelope.rcpt_to, ['incoming+AbC-123_x@gitlab.test']);
    assert.equal(payload.envelope.remote_address, '127.0.0.1');
    assert.ok(payload.envelope.helo);
    assert.deepEqual(payload.recipients, [{ address: 'incoming+AbC-123_x@gitlab.test', key: 'AbC-123_x' }]);
    const m = payload.message;
    assert.equal(m.subject, 'Grüße — 日本語');
    assert.deepEqual(m.from, { address: 'zoe@sender.test', name: 'Zoë Sender' });
    assert.deepEqual(m.to.map((a) => a.address), ['incoming+AbC-123_x@gitlab.test']);
    assert.deepEqual(m.cc.map((a) => a.address), ['someone@else.test']);
    assert.deepEqual(m.reply_to.map((a) => a.address), ['reply@sender.test']);
    assert.equal(m.message_id, '<m1@sender.test>');
    assert.equal(m.in_reply_to, '<parent@gitlab.test>');
    assert.deepEqual(m.references, ['<root@gitlab.test>', '<parent@gitlab.test>']);
    assert.ok(!Number.isNaN(Date.parse(m.date)));
    assert.equal(m.text.trim(), 'Hello wörld');
    assert.match(m.html ?? '', /Hello <b>wörld<\/b>/);
    assert.ok(m.headers.some((h) => h.name === 'Subject'));
    assert.equal(m.attachments.length, 1);
    assert.equal(m.attachments[0]!.filename, 'data.bin');
    assert.equal(m.attachments[0]!.size, 5);
    assert.deepEqual(Buffer.from(m.attachments[0]!.content_base64, 'base64'), Buffer.from([0, 1, 2, 255, 254]));
    const raw = Buffer.from(payload.raw_base64, 'base64').toString('utf8');
    assert.match(raw, /^Content-Type: multipart\/mixed|\r\nMessage-ID: <m1@sender\.test>\r\n/m);
    assert.ok(raw.includes('Message-ID: <m1@sender.test>'));
    // A tampered body fails verification: the signature really covers it.
    assert.throws(() =>
      wh.verify(req.body.toString('utf8').replace('gitlab', 'gitlaB'), {
        'webhook-id': String(req.headers['webhook-id']),
        'webhook-timestamp': String(req.headers['webhook-timestamp']),
        'webhook-signature': String(req.headers['webhook-signature']),
      }),
    );
  });

  test('non-UTF-8 charsets are decoded; raw_base64 keeps the original bytes', async () => {
    const start = main.requests.length;
    const latin1Body = Buffer.from('Caf\xe9 cr\xe8me\r\n', 'latin1');
    const raw = Buffer.concat([
      Buffer.from('From: a@sender.test\r\nTo: incoming@gitlab.test\r\nSubject: =?ISO-8859-1?Q?Caf=E9?=\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=ISO-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'),
      latin1Body,
    ]);
    await sendMail(app.smtpPort, { envelope: { from: 'a@sender.test', to: ['incoming@gitlab.test'] }, raw });
    await main.waitFor(start + 1);
    const p = main.json<Payload>(start);
    assert.deepEqual(p.recipients, [{ address: 'incoming@gitlab.test', key: null }]);
    assert.equal(p.message.subject, 'Café');
    assert.equal(p.message.text.trim(), 'Café crème');
    assert.ok(Buffer.from(p.raw_base64, 'base64').includes(latin1Body), 'raw bytes unchanged');
  });

  test('one message for two routes makes two deliveries, each with its own recipients', async () => {
    const m0 = main.requests.length;
    const o0 = other.requests.length;
    await sendMail(app.smtpPort, {
      from: 'a@sender.test',
      to: ['incoming+k1@gitlab.test', 'desk-42@desk.test', 'anything@catchall.test'],
      subject: 'two routes',
      text: 'x',
    });
    await main.waitFor(m0 + 1);
    await other.waitFor(o0 + 1);
    const pm = main.json<Payload>(m0);
    const po = other.json<Payload>(o0);
    assert.equal(pm.route, 'gitlab');
    assert.deepEqual(pm.recipients, [
      { address: 'incoming+k1@gitlab.test', key: 'k1' },
      { address: 'anything@catchall.test', key: null },
    ]);
    assert.equal(po.route, 'desk');
    assert.deepEqual(po.recipients, [{ address: 'desk-42@desk.test', key: '42' }]);
    assert.equal(pm.message_id, po.message_id, 'same stored message');
    assert.notEqual(pm.id, po.id, 'separate deliveries');
    // The envelope names this delivery's recipients only: the other route's are not this consumer's to see.
    assert.deepEqual(pm.envelope.rcpt_to, ['incoming+k1@gitlab.test', 'anything@catchall.test']);
    assert.deepEqual(po.envelope.rcpt_to, ['desk-42@desk.test']);
  });
});

describe('webhook deadline (route timeout_ms)', () => {
  // A consumer that never answers, and one that sends its headers and then stalls the body: both are bounded by
  // the route's timeout_ms, recorded as a retry with the reason, and the next attempt is delivered.
  let app: TestApp;
  let stallBody = true;
  const hang: Array<() => void> = [];
  const consumer = new Consumer();
  const stalling = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      if (req.url === '/chatty') {
        // An answer whose body goes on and on (and never ends): its status and first bytes are what counts.
        res.writeHead(503, { 'content-type': 'text/plain' });
        res.write(`busy: come back later ${'x'.repeat(100 * 1024)}`);
        hang.push(() => res.destroy());
        return;
      }
      if (!stallBody) return void res.end('ok');
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('partial');
      hang.push(() => res.destroy());
    });
  });
  before(async () => {
    await consumer.start();
    stalling.listen(0, '127.0.0.1');
    await once(stalling, 'listening');
    const port = (stalling.address() as AddressInfo).port;
    app = await startTestApp({
      routes: `
  - name: silent
    addresses: ["silent@t.test"]
    webhook: { url: "${consumer.url}", secret: "${SECRET}", timeout_ms: 300 }
  - name: stalled
    addresses: ["stalled@t.test"]
    webhook: { url: "http://127.0.0.1:${port}/hook", secret: "${SECRET}", timeout_ms: 300 }
  - name: chatty
    addresses: ["chatty@t.test"]
    webhook: { url: "http://127.0.0.1:${port}/chatty", secret: "${SECRET}", timeout_ms: 3000 }
`,
    });
  });
  after(async () => {
    await app.close();
    for (const h of hang) h();
    stalling.close();
    await consumer.stop();
  });

  const attemptsOf = (route: string) =>
    app.spool.db
      .prepare('SELECT a.attempt, a.outcome, a.error, a.duration_ms FROM attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE d.route = ? ORDER BY a.attempt')
      .all(route) as Array<{ attempt: number; outcome: string; error: string | null; duration_ms: number }>;

  test('no response at all: the attempt ends at timeout_ms as a retry, the next one is delivered', async () => {
    const start = consumer.requests.length;
    consumer.respond = (_r, i) => (i === start ? new Promise(() => {}) : { status: 200 });
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'silent@t.test', subject: 'silent', text: 'x' });
    await consumer.waitFor(start + 2);
    const attempts = await until(() => (attemptsOf('silent').length === 2 ? attemptsOf('silent') : undefined), 5000, 'two attempts recorded');
    assert.equal(attempts[0]!.outcome, 'retry');
    assert.equal(attempts[0]!.error, 'TIMEOUT: no complete response within 300 ms');
    assert.ok(attempts[0]!.duration_ms >= 290, `first attempt took ${attempts[0]!.duration_ms} ms`);
    assert.equal(attempts[1]!.outcome, 'delivered');
    consumer.respond = () => ({ status: 200 });
  });

  test('headers sent, body stalled: the same deadline covers reading the response', async () => {
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'stalled@t.test', subject: 'stalled', text: 'x' });
    const first = await until(() => attemptsOf('stalled')[0], 5000, 'first attempt recorded');
    assert.equal(first.outcome, 'retry');
    assert.equal(first.error, 'TIMEOUT: no complete response within 300 ms');
    stallBody = false;
    const second = await until(() => attemptsOf('stalled').find((a) => a.outcome === 'delivered'), 5000, 'a later attempt delivered');
    assert.ok(second.attempt >= 2);
  });

  test('a response body that goes on past 64 KiB is not read to its end: the status and its first bytes decide', async () => {
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'chatty@t.test', subject: 'chatty', text: 'x' });
    const first = await until(() => attemptsOf('chatty')[0], 5000, 'first attempt recorded');
    assert.equal(first.outcome, 'retry');
    assert.match(first.error ?? '', /503/);
    assert.match(first.error ?? '', /busy: come back later x/, 'the start of the body is in the attempt log');
    assert.ok((first.error ?? '').length < 1000, 'only a snippet of the body');
    assert.doesNotMatch(first.error ?? '', /TIMEOUT/, 'the body was not waited for until the deadline');
  });
});

describe('request slots: deliveries are prepared while the route\'s requests run', () => {
  // per_route_concurrency (default 4) bounds the requests a consumer sees; as many more deliveries of the route
  // are read, parsed and signed meanwhile. A message over 1 MiB is read only once a slot is free.
  let app: TestApp;
  const consumer = new Consumer();
  let held: Array<() => void> = [];
  before(async () => {
    await consumer.start();
    consumer.respond = () => new Promise((resolve) => held.push(() => resolve({ status: 200 })));
    app = await startTestApp({ routes: `
  - name: slow
    addresses: ["slow-%{key}@t.test"]
    webhook: { url: "${consumer.url}", secret: "${SECRET}" }
` });
  });
  after(async () => {
    for (const h of held) h();
    await app.close();
    await consumer.stop();
  });
  const waiting = async (prepared: 'true' | 'false') => {
    const text = await (await fetch(`${app.httpUrl}/metrics`)).text();
    const m = new RegExp(`^mailhook_deliveries_waiting\\{route="slow",prepared="${prepared}"\\} (\\d+)$`, 'm').exec(text);
    return m ? Number(m[1]) : 0;
  };
  const waitingReaches = async (prepared: 'true' | 'false', n: number) => {
    const start = Date.now();
    let last = -1;
    while ((last = await waiting(prepared)) !== n) {
      if (Date.now() - start > 5000) throw new Error(`mailhook_deliveries_waiting{prepared="${prepared}"} is ${last}, expected ${n}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  const release = () => {
    const h = held;
    held = [];
    for (const f of h) f();
  };

  test('four requests at once; four more prepared and waiting; then each is delivered once', async () => {
    for (let i = 0; i < 8; i++) await sendMail(app.smtpPort, { from: 'a@s.test', to: `slow-k${i}@t.test`, subject: `s${i}`, text: 'x' });
    await consumer.received(4);
    await waitingReaches('true', 4);
    assert.equal(consumer.requests.length, 4, 'per_route_concurrency bounds the requests');
    release();
    await consumer.received(8);
    release();
    await until(() => (app.spool.jobs.counts().delivered === 8 ? true : undefined), 5000, 'all eight delivered');
    const keys = consumer.requests.map((r) => JSON.parse(r.body.toString('utf8')).recipients[0].key).sort();
    assert.deepEqual(keys, ['k0', 'k1', 'k2', 'k3', 'k4', 'k5', 'k6', 'k7']);
    // A prepared request is signed before it waits; its signature still verifies.
    const wh = new Webhook(SECRET);
    for (const r of consumer.requests) wh.verify(r.body.toString('utf8'), { 'webhook-id': String(r.headers['webhook-id']), 'webhook-timestamp': String(r.headers['webhook-timestamp']), 'webhook-signature': String(r.headers['webhook-signature']) });
  });

  test('a message over 1 MiB waits for its slot before it is read', async () => {
    const start = consumer.requests.length;
    for (let i = 0; i < 4; i++) await sendMail(app.smtpPort, { from: 'a@s.test', to: `slow-small${i}@t.test`, subject: 'small', text: 'x' });
    await consumer.received(start + 4);
    const big = 'y'.repeat(76) + '\r\n';
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'slow-big@t.test', subject: 'big', text: big.repeat(15_000) });
    await waitingReaches('false', 1);
    assert.equal(await waiting('true'), 0);
    release();
    await consumer.received(start + 5);
    release();
    const bigReq = consumer.requests.slice(start).find((r) => JSON.parse(r.body.toString('utf8')).recipients[0].key === 'big');
    assert.ok(bigReq && bigReq.body.length > 1024 * 1024);
    await until(() => (app.spool.jobs.counts().delivered === 13 ? true : undefined), 5000, 'all delivered');
  });

  test(`messages over LARGE_MESSAGE_BYTES go one at a time per route; small ones pass beside them`, async () => {
    const start = consumer.requests.length;
    const line = 'z'.repeat(76) + '\r\n';
    const text = line.repeat(Math.ceil((LARGE_MESSAGE_BYTES + 65536) / line.length));
    for (const key of ['huge0', 'huge1']) await sendMail(app.smtpPort, { from: 'a@s.test', to: `slow-${key}@t.test`, subject: key, text });
    for (const key of ['tiny0', 'tiny1']) await sendMail(app.smtpPort, { from: 'a@s.test', to: `slow-${key}@t.test`, subject: key, text: 'x' });
    await consumer.received(start + 3);
    const keysSince = (from: number) => consumer.requests.slice(from).map((r) => JSON.parse(r.body.toString('utf8')).recipients[0].key as string);
    const first = keysSince(start).sort();
    assert.deepEqual(first.filter((k) => k.startsWith('tiny')), ['tiny0', 'tiny1'], 'small ones are not held up');
    assert.equal(first.filter((k) => k.startsWith('huge')).length, 1, 'one large message of the route at a time');
    // The other is not even leased (so no lease of it can run out while it waits): still pending, waiting for nothing.
    assert.equal(app.spool.jobs.counts().pending, 1);
    assert.equal(await waiting('false'), 0);
    release();
    await consumer.received(start + 4);
    assert.equal(keysSince(start).filter((k) => k.startsWith('huge')).length, 2);
    release();
    await until(() => (app.spool.jobs.counts().delivered === 17 ? true : undefined), 5000, 'all delivered');
  });
});

describe('settling: outcomes that finish while prepared deliveries wait are recorded together', () => {
  // When a request finishes and a prepared delivery of its route already took the freed slot, nothing idles:
  // the loop waits (settleDelayMs) for more outcomes and records them in one transaction. A long window here
  // (1 s, SETTLE_COALESCE_MS in production) lets the test space the four answers 30 ms apart, with room for a
  // loaded machine; the fourth answer ends the wait, so the window costs the test no time.
  test('four answers 30 ms apart, four prepared waiting: one transaction records all four', async () => {
    const consumer = new Consumer();
    await consumer.start();
    let held: Array<() => void> = [];
    consumer.respond = () => new Promise((resolve) => held.push(() => resolve({ status: 200 })));
    const app = await startTestApp({
      routes: `
  - name: slow
    addresses: ["slow-%{key}@t.test"]
    webhook: { url: "${consumer.url}", secret: "${SECRET}" }
`,
      deps: { settleCoalesceMs: 1000 },
    });
    try {
      const jobs = app.spool.jobs;
      const settle = jobs.settleAndLease;
      const recorded: number[] = [];
      jobs.settleAndLease = function (completions, lease) {
        if (completions.length > 0) recorded.push(completions.length);
        return settle.call(this, completions, lease);
      };
      for (let i = 0; i < 8; i++) await sendMail(app.smtpPort, { from: 'a@s.test', to: `slow-k${i}@t.test`, subject: `s${i}`, text: 'x' });
      await consumer.received(4);
      // The other four are leased and prepared, waiting for a request slot (leased is not enough: on a loaded
      // machine a parse can still be running when the first answer comes, and nothing waits for that slot yet).
      await until(() => (jobs.counts().delivering === 8 ? true : undefined), 5000, 'eight leased');
      const waiting = async () => /^mailhook_deliveries_waiting\{route="slow",prepared="true"\} 4$/m.test(await (await fetch(`${app.httpUrl}/metrics`)).text());
      for (const start = Date.now(); !(await waiting()); ) {
        if (Date.now() - start > 10_000) throw new Error('four prepared deliveries never waited for a slot');
        await new Promise((r) => setTimeout(r, 20));
      }
      const first = held;
      held = [];
      for (const answer of first) {
        answer();
        await new Promise((r) => setTimeout(r, 30));
      }
      await consumer.received(8);
      await until(() => (recorded.length > 0 ? true : undefined), 5000, 'the first four recorded');
      assert.deepEqual(recorded, [4], 'one transaction for the four outcomes');
      const rest = held;
      held = [];
      for (const answer of rest) answer();
      await until(() => (jobs.counts().delivered === 8 ? true : undefined), 5000, 'all eight delivered');
    } finally {
      for (const h of held) h();
      await app.close();
      await consumer.stop();
    }
  });
});

describe('attempts that shutdown, a clock jump or the spool interrupt', () => {
  const slowRoute = (url: string) => `
  - name: slow
    addresses: ["slow-%{key}@t.test"]
    webhook: { url: "${url}", secret: "${SECRET}" }
`;

  test('shutdown counts the attempts whose requests went out; those still waiting for a slot are given back uncounted', async () => {
    const consumer = new Consumer();
    await consumer.start();
    const held: Array<() => void> = [];
    consumer.respond = () => new Promise((resolve) => held.push(() => resolve({ status: 200 })));
    const app = await startTestApp({ routes: slowRoute(consumer.url) });
    try {
      for (let i = 0; i < 8; i++) await sendMail(app.smtpPort, { from: 'a@s.test', to: `slow-k${i}@t.test`, subject: `s${i}`, text: 'x' });
      await consumer.received(4);
      // Four requests out, four more leased, prepared and waiting for a request slot.
      await until(() => (app.spool.jobs.counts().delivering === 8 ? true : undefined), 5000, 'eight leased');
      await app.worker.stop(50); // the grace runs out: everything in flight is aborted
      const rows = app.spool.db.prepare('SELECT id, status, attempts FROM deliveries').all() as Array<{ id: string; status: string; attempts: number }>;
      assert.deepEqual(rows.map((r) => r.status), Array(8).fill('pending'), 'all eight due again');
      const sent = new Set(consumer.requests.map((r) => String(r.headers['webhook-id'])));
      assert.equal(sent.size, 4);
      for (const r of rows) assert.equal(r.attempts, sent.has(r.id) ? 1 : 0, `attempts of ${sent.has(r.id) ? 'a sent' : 'an unsent'} delivery`);
      const logged = app.spool.db.prepare('SELECT delivery_id FROM attempts').all() as Array<{ delivery_id: string }>;
      assert.deepEqual(logged.map((a) => a.delivery_id).sort(), [...sent].sort(), 'an attempt row only for the requests sent');
      assert.equal(app.logs.filter((l) => l.includes('given back uncounted')).length, 4);
    } finally {
      for (const h of held) h();
      await app.close();
      await consumer.stop();
    }
  });

  test('shutdown while a payload is still being parsed: given back uncounted, no request sent', async () => {
    const consumer = new Consumer();
    await consumer.start();
    let finishParse: (() => void) | undefined;
    const parsing = new Promise<void>((r) => (finishParse = r));
    let parseStarted: () => void = () => {};
    const started = new Promise<void>((r) => (parseStarted = r));
    const parse = async (raw: Buffer) => {
      parseStarted();
      await parsing; // a parse that outlasts the shutdown grace
      return parseMessageJson(raw);
    };
    const app = await startTestApp({ routes: slowRoute(consumer.url), deps: { parse } });
    try {
      await sendMail(app.smtpPort, { from: 'a@s.test', to: 'slow-p@t.test', subject: 'p', text: 'x' });
      await started;
      const stopping = app.worker.stop(0);
      // stop()'s grace timer was set first, so it has fired and the abort (its microtasks) has run before this one.
      await new Promise((r) => setTimeout(r, 0));
      finishParse!(); // the parse ends after the abort; a request slot is free at once
      await stopping;
      const row = app.spool.db.prepare('SELECT status, attempts FROM deliveries').get() as { status: string; attempts: number };
      assert.deepEqual(row, { status: 'pending', attempts: 0 });
      assert.equal(consumer.requests.length, 0);
      assert.equal((app.spool.db.prepare('SELECT COUNT(*) AS n FROM attempts').get() as { n: number }).n, 0);
    } finally {
      finishParse!();
      await app.close();
      await consumer.stop();
    }
  });

  test('a message file out of reach for a while (an I/O error reading the spool) is retried, then delivered', async () => {
    const consumer = new Consumer();
    await consumer.start();
    let gate: (() => void) | undefined;
    consumer.respond = (_req, i) => (i === 0 ? new Promise((resolve) => (gate = () => resolve({ status: 503 }))) : { status: 200 });
    const yaml = (dir: string) =>
      configYaml({ dir, routes: slowRoute(consumer.url) }).replace('spool:\n', 'spool:\n  inline_max_bytes: 64\n').replace('max_attempts: 5', 'max_attempts: 100');
    const app = await startTestApp({ routes: '', yaml });
    try {
      await sendMail(app.smtpPort, { from: 'a@s.test', to: 'slow-f@t.test', subject: 'file', text: 'x'.repeat(500) });
      await consumer.received(1); // attempt 1 has read the file and waits for its answer
      const { raw_file } = app.spool.db.prepare('SELECT raw_file FROM messages').get() as { raw_file: string };
      const path = app.spool.blobs.pathOf(raw_file);
      renameSync(path, `${path}.away`);
      gate!(); // 503: retried; the next attempt cannot open the file
      await until(() => (app.spool.db.prepare(`SELECT 1 FROM attempts WHERE error LIKE '%ENOENT%'`).get() ? true : undefined), 5000, 'an attempt that could not read the file');
      assert.equal(app.spool.jobs.counts().pending + app.spool.jobs.counts().delivering, 1, 'still to be delivered, not dead');
      renameSync(`${path}.away`, path);
      await until(() => (app.spool.jobs.counts().delivered === 1 ? true : undefined), 5000, 'delivered once the file is back');
      const errors = (app.spool.db.prepare('SELECT outcome, error FROM attempts ORDER BY id').all() as Array<{ outcome: string; error: string | null }>).filter((a) => a.outcome === 'retry' && a.error?.includes('ENOENT'));
      assert.match(errors[0]!.error!, /^cannot read the message from the spool: ENOENT/);
    } finally {
      gate?.();
      await app.close();
      await consumer.stop();
    }
  });

  test('a lease that expired in a clock jump while its request runs here is not taken again; the attempt records its outcome', async () => {
    const consumer = new Consumer();
    await consumer.start();
    const held: Array<() => void> = [];
    consumer.respond = () => new Promise((resolve) => held.push(() => resolve({ status: 200 })));
    let offset = 0;
    const app = await startTestApp({ routes: slowRoute(consumer.url), deps: { clock: { now: () => Date.now() + offset } } });
    try {
      const reclaims: number[] = [];
      const reclaimExpired = app.spool.jobs.reclaimExpired.bind(app.spool.jobs);
      app.spool.jobs.reclaimExpired = (now, own) => (reclaims.push(now), reclaimExpired(now, own));
      await sendMail(app.smtpPort, { from: 'a@s.test', to: 'slow-a@t.test', subject: 'a', text: 'x' });
      await consumer.received(1);
      offset = leaseDurationMs(app.config) + 60_000; // e.g. a VM suspended and resumed: the lease has run out
      const jumped = Date.now() + offset;
      // The next commit wakes the loop: it leases b, and leaves a's lease alone (its request is in flight here).
      await sendMail(app.smtpPort, { from: 'a@s.test', to: 'slow-b@t.test', subject: 'b', text: 'x' });
      await consumer.received(2);
      // The loop looks for expired leases once a second: wait for a look after the jump, with a still held.
      await until(() => (app.worker.wake(), reclaims.some((at) => at >= jumped) ? true : undefined), 5000, 'a look for expired leases after the jump');
      app.worker.wake();
      await until(() => (app.spool.jobs.counts().pending === 0 ? true : undefined), 5000, 'nothing left to lease');
      const ids = consumer.requests.map((r) => String(r.headers['webhook-id']));
      assert.equal(ids.length, 2, 'a is requested once');
      assert.notEqual(ids[0], ids[1]);
      assert.equal(app.worker.activeCount, 2, 'a and b');
      held[0]!(); // the first attempt of a ends: its lease was kept, so its outcome is recorded
      await until(() => (app.spool.getDelivery(ids[0]!)?.status === 'delivered' ? true : undefined), 5000, 'a delivered');
      for (const h of held.slice(1)) h();
      await until(() => (app.spool.jobs.counts().delivered === 2 ? true : undefined), 5000, 'both delivered');
      assert.equal(app.worker.activeCount, 0);
      assert.ok(!app.logs.some((l) => l.includes('lease lost before the outcome was recorded')));
      assert.equal(consumer.requests.length, 2);
    } finally {
      for (const h of held) h();
      await app.close();
      await consumer.stop();
    }
  });
});

describe('retries and dead letters', () => {
  let app: TestApp;
  const consumer = new Consumer();
  const other = new Consumer();
  before(async () => {
    await consumer.start();
    await other.start();
    app = await startTestApp({ routes: routes(consumer, other) });
  });
  after(async () => {
    await app.close();
    await consumer.stop();
    await other.stop();
  });

  const deliveryOf = (webhookId: string) => app.spool.getDelivery(webhookId)!;

  test('500 then 200: retried with the same webhook-id and a fresh signature', async () => {
    const start = consumer.requests.length;
    consumer.respond = (_r, i) => (i === start ? { status: 500, body: 'boom' } : { status: 200 });
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'incoming+r1@gitlab.test', subject: 'retry', text: 'x' });
    const reqs = (await consumer.waitFor(start + 2)).slice(start);
    const id = String(reqs[0]!.headers['webhook-id']);
    assert.equal(reqs[1]!.headers['webhook-id'], id);
    const wh = new Webhook(SECRET);
    for (const r of reqs) {
      wh.verify(r.body.toString('utf8'), {
        'webhook-id': String(r.headers['webhook-id']),
        'webhook-timestamp': String(r.headers['webhook-timestamp']),
        'webhook-signature': String(r.headers['webhook-signature']),
      });
    }
    const d = await until(() => (deliveryOf(id).status === 'delivered' ? deliveryOf(id) : undefined), 5000, 'delivered');
    assert.equal(d.attempts, 2);
    const attempts = app.spool.db.prepare('SELECT attempt, status_code, outcome, error FROM attempts WHERE delivery_id = ? ORDER BY attempt').all(id);
    assert.deepEqual(attempts, [
      { attempt: 1, status_code: 500, outcome: 'retry', error: 'HTTP 500: boom' },
      { attempt: 2, status_code: 200, outcome: 'delivered', error: null },
    ]);
    consumer.respond = () => ({ status: 200 });
  });

  test('Retry-After is honoured over the (shorter) backoff', async () => {
    const start = consumer.requests.length;
    consumer.respond = (_r, i) => (i === start ? { status: 429, headers: { 'retry-after': '1' } } : { status: 200 });
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'incoming+ra@gitlab.test', subject: 'ra', text: 'x' });
    const reqs = (await consumer.waitFor(start + 2)).slice(start);
    // Backoff here is at most 200 ms; the consumer asked for 1 s.
    assert.ok(reqs[1]!.at - reqs[0]!.at >= 1000, `second attempt came ${reqs[1]!.at - reqs[0]!.at} ms after the first`);
    consumer.respond = () => ({ status: 200 });
  });

  test('a 4xx refusal is dead-lettered at once', async () => {
    const start = consumer.requests.length;
    consumer.respond = () => ({ status: 422, body: 'unprocessable' });
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'incoming+dead@gitlab.test', subject: 'dead', text: 'x' });
    const [req] = (await consumer.waitFor(start + 1)).slice(start);
    const id = String(req!.headers['webhook-id']);
    const d = await until(() => (deliveryOf(id).status === 'dead' ? deliveryOf(id) : undefined), 5000, 'dead');
    assert.equal(d.attempts, 1);
    assert.equal(d.lastStatusCode, 422);
    assert.match(d.lastError ?? '', /HTTP 422.*unprocessable/);
    assert.equal(app.spool.jobs.nextDueAt(), null, 'nothing left to retry');
    consumer.respond = () => ({ status: 200 });
  });

  test('a redirect is not followed: dead-lettered at once as a configuration problem naming the Location', async () => {
    const start = consumer.requests.length;
    const elsewhere = new Consumer();
    await elsewhere.start();
    try {
      consumer.respond = () => ({ status: 308, headers: { location: `http://user:pw@127.0.0.1:${new URL(elsewhere.url).port}/moved` } });
      await sendMail(app.smtpPort, { from: 'a@s.test', to: 'incoming+moved@gitlab.test', subject: 'moved', text: 'x' });
      const [req] = (await consumer.waitFor(start + 1)).slice(start);
      const id = String(req!.headers['webhook-id']);
      const d = await until(() => (deliveryOf(id).status === 'dead' ? deliveryOf(id) : undefined), 5000, 'dead');
      assert.equal(d.attempts, 1);
      assert.equal(d.lastStatusCode, 308);
      assert.match(d.lastError ?? '', /^HTTP 308: the consumer redirects to http:\/\/\*\*\*@127\.0\.0\.1:\d+\/moved; redirects are not followed: set the route's webhook\.url to the new address$/);
      const line = await until(() => app.logs.find((l) => l.includes('configuration problem') && l.includes(id)), 5000, 'the error log line');
      assert.equal(JSON.parse(line).level, 50);
      assert.ok(!app.logs.some((l) => l.includes('user:pw')), 'credentials in the Location are not logged');
      assert.equal(elsewhere.requests.length, 0, 'the signed request was not sent on');
      // A relative Location is resolved against the webhook's URL: what to put in webhook.url.
      consumer.respond = () => ({ status: 301, headers: { location: '/v2/hook?x=1' } });
      await sendMail(app.smtpPort, { from: 'a@s.test', to: 'incoming+moved2@gitlab.test', subject: 'moved', text: 'x' });
      const [req2] = (await consumer.waitFor(start + 2)).slice(start + 1);
      const id2 = String(req2!.headers['webhook-id']);
      const d2 = await until(() => (deliveryOf(id2).status === 'dead' ? deliveryOf(id2) : undefined), 5000, 'dead');
      // Its query is left out, as a webhook URL's own is (it can hold a token).
      assert.match(d2.lastError ?? '', new RegExp(`^HTTP 301: the consumer redirects to ${consumer.url.replace(/\/[^/]*$/, '').replace(/[.]/g, '\\.')}/v2/hook \\(its query not shown\\);`));
      assert.ok(!app.logs.some((l) => l.includes('x=1')), 'the query is not logged');
    } finally {
      consumer.respond = () => ({ status: 200 });
      await elsewhere.stop();
    }
  });

  test('after max_attempts failures the delivery is dead-lettered', async () => {
    const start = consumer.requests.length;
    consumer.respond = () => ({ status: 503 });
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'incoming+giveup@gitlab.test', subject: 'giveup', text: 'x' });
    const reqs = (await consumer.waitFor(start + 5)).slice(start);
    const id = String(reqs[0]!.headers['webhook-id']);
    const d = await until(() => (deliveryOf(id).status === 'dead' ? deliveryOf(id) : undefined), 5000, 'dead');
    assert.equal(d.attempts, 5);
    assert.match(d.lastError ?? '', /gave up after 5 attempts; last error: HTTP 503/);
    consumer.respond = () => ({ status: 200 });
  });

  test('a consumer that does not answer does not stall another route', async () => {
    const hung: Array<() => void> = [];
    const start = consumer.requests.length;
    consumer.respond = () => new Promise((resolve) => hung.push(() => resolve({ status: 200 })));
    const o0 = other.requests.length;
    // Enough to fill the stuck route's concurrency.
    for (let i = 0; i < 6; i++) await sendMail(app.smtpPort, { from: 'a@s.test', to: `incoming+slow${i}@gitlab.test`, subject: 'slow', text: 'x' });
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'desk-fast@desk.test', subject: 'fast', text: 'x' });
    await other.waitFor(o0 + 1);
    assert.equal(other.json<Payload>(o0).recipients[0]!.key, 'fast');
    assert.ok(consumer.requests.length - start <= 4, 'per-route concurrency caps the stuck route');
    consumer.respond = () => ({ status: 200 });
    for (const h of hung) h();
    await consumer.waitFor(start + 6);
  });
});

describe('a parse that runs out of time', () => {
  // PARSE_TIMEOUT may come from a loaded machine rather than the message: the attempt is retried, not dead-lettered.
  let app: TestApp;
  const consumer = new Consumer();
  let calls = 0;
  before(async () => {
    await consumer.start();
    app = await startTestApp({
      routes: `
  - name: slowparse
    addresses: ["slowparse@t.test"]
    webhook: { url: "${consumer.url}", secret: "${SECRET}" }
`,
      deps: {
        parse: async (raw) => {
          if (++calls === 1) throw new MailhookError('PARSE_TIMEOUT', 'parsing the message took longer than 5000 ms and was abandoned');
          return JSON.stringify((await parseMessage(raw)).message);
        },
      },
    });
  });
  after(async () => {
    await app.close();
    await consumer.stop();
  });

  test('is retried and then delivered', async () => {
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'slowparse@t.test', subject: 'slow parse', text: 'x' });
    const [req] = await consumer.waitFor(1);
    const id = String(req!.headers['webhook-id']);
    const attempts = await until(() => {
      const rows = app.spool.db.prepare('SELECT attempt, outcome, error FROM attempts WHERE delivery_id = ? ORDER BY attempt').all(id) as Array<{ attempt: number; outcome: string; error: string | null }>;
      return rows.length === 2 ? rows : undefined;
    }, 5000, 'two attempts recorded');
    assert.deepEqual(attempts, [
      { attempt: 1, outcome: 'retry', error: 'parsing the message took longer than 5000 ms and was abandoned' },
      { attempt: 2, outcome: 'delivered', error: null },
    ]);
  });
});
