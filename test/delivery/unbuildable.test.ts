// A message no payload can be built for is dead-lettered at once (README "Pointing a route at a webhook"; the
// catch around format.encode in src/delivery/worker.ts): one attempt, the reason recorded, no retries, and the
// message's other deliveries and other messages go on as usual.
//
// The input: a multipart message of 1000 body parts. mailparser (mailsplit: at most 1000 MIME nodes, the message
// itself counted) refuses it, so the json format, which parses the message, cannot build its payload; the raw
// format, which sends the bytes as they are, can. The SMTP edge refuses it (smtp.limits.max_mime_parts counts the
// message too, so what SMTP takes can be parsed: checked below at 1000 and 999 parts); a mailbox bridge stores
// what the mailbox holds, so it comes in the way the IMAP and Graph bridges hand a message to the spool.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Consumer } from '../helpers/consumer.js';
import { RawSmtp, sendMail } from '../helpers/smtp-client.js';
import { SECRET, startTestApp, until, type TestApp } from '../helpers/app.js';

function manyParts(n: number): string {
  let s = 'From: a@s.test\r\nTo: x@parsed.test, y@raw.test\r\nSubject: many parts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n';
  for (let i = 0; i < n; i++) s += `--b\r\nContent-Type: text/plain\r\n\r\npart ${i}\r\n`;
  return s + '--b--\r\n';
}

interface Row {
  id: string;
  route: string;
  status: string;
  attempts: number;
  last_error: string | null;
}

test('a message the json format cannot parse is dead-lettered after one attempt; its raw delivery and other mail go through', async () => {
  const parsed = await new Consumer().start();
  const raw = await new Consumer().start();
  let app: TestApp | undefined;
  let smtp: RawSmtp | undefined;
  try {
    app = await startTestApp({ routes: `
  - name: parsed
    addresses: ["*@parsed.test"]
    webhook: { url: "${parsed.url}", secret: "${SECRET}", format: json }
  - name: rawroute
    addresses: ["*@raw.test"]
    webhook: { url: "${raw.url}", secret: "${SECRET}", format: raw }
` });
    const a = app;
    const deliveries = (messageId: string) => a.spool.db.prepare('SELECT id, route, status, attempts, last_error FROM deliveries WHERE message_id = ? ORDER BY route').all(messageId) as Row[];

    ({ smtp } = await RawSmtp.open(app.smtpPort));
    assert.equal((await smtp.cmd('EHLO client.test')).code, 250);
    const refused = await smtp.transaction('a@s.test', ['x@parsed.test'], manyParts(1000));
    assert.match(refused.end?.raw ?? '', /^554 5\.6\.0 /, 'SMTP refuses what could not be parsed');
    const most = await smtp.transaction('a@s.test', ['x@parsed.test'], manyParts(999));
    assert.match(most.end?.raw ?? '', /^250 2\.0\.0 Ok: queued as [a-z0-9]+\r\n$/, 'the most SMTP takes');
    const parsable = /queued as ([a-z0-9]+)/.exec(most.end!.raw)![1]!;
    await smtp.quit();

    const { id: bad } = await app.spool.accept({
      source: 'imap',
      envelope: { mailFrom: 'a@s.test', rcptTo: ['x@parsed.test', 'y@raw.test'], remoteAddress: null, helo: null, tls: null },
      deliveries: [
        { route: 'parsed', recipients: [{ address: 'x@parsed.test', key: null }] },
        { route: 'rawroute', recipients: [{ address: 'y@raw.test', key: null }] },
      ],
      body: (async function* () {
        yield Buffer.from(manyParts(1000));
      })(),
      maxBytes: 10_000_000,
    });

    // Another message for the same json route, sent afterwards: not held up by the one that cannot be built.
    const ok = await sendMail(app.smtpPort, { from: 'a@s.test', to: 'z@parsed.test', subject: 'plain', text: 'fine' });
    const good = /queued as (\S+)/.exec(ok.response)![1]!;

    const dead = await until(() => deliveries(bad).find((d) => d.route === 'parsed' && d.status === 'dead'), 15_000, 'the json delivery to be dead-lettered');
    assert.equal(dead.attempts, 1, 'dead at the first attempt, no retries (max_attempts is 5)');
    assert.match(dead.last_error ?? '', /^cannot build the json payload: Max allowed child nodes exceeded/);
    const attempts = app.spool.db.prepare('SELECT attempt, outcome, status_code, error FROM attempts WHERE delivery_id = ?').all(dead.id) as Array<{ attempt: number; outcome: string; status_code: number | null; error: string }>;
    assert.equal(attempts.length, 1);
    assert.equal(attempts[0]!.outcome, 'dead');
    assert.equal(attempts[0]!.status_code, null, 'no request was made');
    assert.match(attempts[0]!.error, /cannot build the json payload/);
    const logged = await until(() => app!.logs.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.msg === 'delivery dead-lettered' && l.deliveryId === dead.id), 5000, 'the dead-letter log line');
    assert.match(String(logged.error), /cannot build the json payload/);

    // The same message's raw delivery: its bytes, as received, at the raw route's consumer.
    await until(() => deliveries(bad).find((d) => d.route === 'rawroute' && d.status === 'delivered'), 15_000, 'the raw delivery');
    const rawReq = raw.requests.find((q) => q.headers['mailhook-message-id'] === bad);
    assert.ok(rawReq, 'the raw route received the message');
    assert.ok(rawReq.body.equals(await app.spool.readRaw(bad)), 'the bytes as stored');

    // The other messages reached the json consumer (999 parts parse); the unbuildable one never did.
    await until(() => deliveries(good).find((d) => d.status === 'delivered'), 15_000, 'the plain message');
    await until(() => deliveries(parsable).find((d) => d.status === 'delivered'), 15_000, 'the 999-part message');
    assert.deepEqual(parsed.requests.map((q) => (JSON.parse(q.body.toString('utf8')) as { message_id: string }).message_id).sort(), [good, parsable].sort());
    assert.equal(deliveries(bad).find((d) => d.route === 'parsed')!.attempts, 1, 'still one attempt');

    const metrics = await (await fetch(`${app.httpUrl}/metrics`)).text();
    assert.match(metrics, /^mailhook_deliveries_total\{route="parsed",outcome="dead"\} 1$/m);
    // Never retried (the series is there from the start, at 0).
    assert.match(metrics, /^mailhook_deliveries_total\{route="parsed",outcome="retry"\} 0$/m);
  } finally {
    smtp?.destroy();
    await app?.close();
    await parsed.stop();
    await raw.stop();
  }
});
