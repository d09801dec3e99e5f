// Limits and abuse protection over real sockets: per-IP and global connection limits, rates, error limit,
// idle and slow-DATA timeouts, early talkers, spool failures (never 250 without a commit), shutdown mid-session.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { RawSmtp } from '../helpers/smtp-client.js';
import { until, type TestApp } from '../helpers/app.js';
import { RECIPIENT_OVERSHOOT_LIMIT } from '../../src/smtp/adapter.js';
import { connectFrom, countDeliveries, countMessages, queuedId, sendOne, session, startData, startSmtpApp, writeFlushed } from './support.js';

describe('connection limits', () => {
  let app: TestApp;
  before(async () => {
    app = await startSmtpApp({ smtp: '  max_clients: 3\n  limits:\n    max_connections_per_ip: 2\n    exempt: []' });
  });
  after(() => app.close());

  test('per client IP: 421 4.7.0 beyond smtp.limits.max_connections_per_ip; a slot freed is usable again', async () => {
    const a = await connectFrom(app.smtpPort, '127.0.0.1');
    const b = await connectFrom(app.smtpPort, '127.0.0.1');
    assert.equal((await a.read()).code, 220);
    assert.equal((await b.read()).code, 220);
    const c = await connectFrom(app.smtpPort, '127.0.0.1');
    assert.equal((await c.read()).raw, '421 4.7.0 mx.test Error: too many connections from 127.0.0.1\r\n');
    await c.waitClosed();
    // Another address is not affected.
    const d = await connectFrom(app.smtpPort, '127.0.0.2');
    assert.equal((await d.read()).code, 220);
    // Global limit (max_clients: 3): a fourth connection from yet another address.
    const e = await connectFrom(app.smtpPort, '127.0.0.3');
    assert.equal((await e.read()).raw, '421 4.7.0 mx.test Too many connected clients, try again in a moment\r\n');
    await e.waitClosed();
    assert.equal((await a.cmd('QUIT')).raw, '221 2.0.0 Bye\r\n');
    await a.waitClosed();
    // The server counts the slot free once its side of the socket has closed.
    await until(() => app.smtp.limits.connectionsFrom('127.0.0.1') === 1, 5000, 'the closed session to be uncounted');
    const f = await connectFrom(app.smtpPort, '127.0.0.1');
    const banner = await f.read();
    assert.equal(banner.code, 220, banner.raw);
    for (const s of [b, d, f]) s.socket.destroy();
  });
});

describe('rates and errors', () => {
  let app: TestApp;
  before(async () => {
    app = await startSmtpApp({ smtp: '  limits:\n    max_messages_per_ip: 2\n    max_recipients_per_ip: 3\n    max_errors: 3\n    exempt: []' });
  });
  after(() => app.close());

  test('per-IP message rate: 450 4.7.1 at MAIL beyond the limit per window', async () => {
    const s = await connectFrom(app.smtpPort, '127.0.0.2');
    await s.read();
    await s.cmd('EHLO client.test');
    assert.equal((await s.cmd('MAIL FROM:<a@client.test>')).raw, '250 2.1.0 Accepted\r\n');
    assert.equal((await s.cmd('RSET')).raw, '250 2.0.0 Flushed\r\n');
    assert.equal((await s.cmd('MAIL FROM:<a@client.test>')).raw, '250 2.1.0 Accepted\r\n');
    assert.equal((await s.cmd('RSET')).raw, '250 2.0.0 Flushed\r\n');
    assert.equal((await s.cmd('MAIL FROM:<a@client.test>')).raw, '450 4.7.1 Error: too much mail from 127.0.0.2\r\n');
    s.socket.destroy();
  });

  test('per-IP recipient rate: 450 4.7.1 at RCPT; the recipients accepted before are delivered', async () => {
    const s = await connectFrom(app.smtpPort, '127.0.0.3');
    await s.read();
    await s.cmd('EHLO client.test');
    await s.cmd('MAIL FROM:<a@client.test>');
    for (const r of ['incoming+1@in.test', 'incoming+2@in.test', 'incoming+3@in.test']) assert.equal((await s.cmd(`RCPT TO:<${r}>`)).raw, '250 2.1.5 Accepted\r\n');
    assert.equal((await s.cmd('RCPT TO:<incoming+4@in.test>')).raw, '450 4.7.1 Error: too many recipients from 127.0.0.3\r\n');
    assert.equal((await s.cmd('DATA')).code, 354);
    s.socket.write('Subject: rate\r\n\r\nx\r\n.\r\n');
    const id = queuedId(await s.read());
    assert.deepEqual(app.spool.getMessage(id)?.envelope.rcptTo, ['incoming+1@in.test', 'incoming+2@in.test', 'incoming+3@in.test']);
    s.socket.destroy();
  });

  test('error limit: the third error reply is followed by 421 4.7.0 and disconnect', async () => {
    const s = await connectFrom(app.smtpPort, '127.0.0.4');
    await s.read();
    await s.cmd('EHLO client.test');
    assert.equal((await s.cmd('FOO')).raw, '500 5.5.2 Error: command not recognized\r\n');
    assert.equal((await s.cmd('RCPT TO:<user@in.test>')).raw, '503 5.5.1 Error: need MAIL command\r\n');
    assert.equal((await s.cmd('MAIL FROM:<bad')).raw, '501 5.1.7 Error: Bad sender address syntax\r\n');
    assert.equal((await s.read()).raw, '421 4.7.0 mx.test Error: too many errors\r\n');
    await s.waitClosed();
    await sendOne(app.smtpPort);
  });
});

test('recipients over max_recipients get 452 4.5.3 without counting as errors (up to the overshoot limit); the accepted ones are delivered', async () => {
  const app = await startSmtpApp({ smtp: '  max_recipients: 2\n  limits:\n    max_errors: 3' });
  try {
    const { smtp } = await RawSmtp.open(app.smtpPort);
    await smtp.cmd('EHLO client.test');
    await smtp.cmd('MAIL FROM:<a@client.test>');
    for (const i of [1, 2]) assert.equal((await smtp.cmd(`RCPT TO:<incoming+${i}@in.test>`)).raw, '250 2.1.5 Accepted\r\n');
    // Five more than the limit, with max_errors 3: a client sending a long list must not be cut off before DATA.
    for (const i of [3, 4, 5, 6, 7]) assert.equal((await smtp.cmd(`RCPT TO:<incoming+${i}@in.test>`)).raw, '452 4.5.3 Error: too many recipients\r\n');
    assert.equal((await smtp.cmd('DATA')).code, 354);
    const id = queuedId(await smtp.cmd('Subject: many\r\n\r\nx\r\n.'));
    assert.deepEqual(app.spool.getMessage(id)?.envelope.rcptTo, ['incoming+1@in.test', 'incoming+2@in.test']);
    // The overshoot is bounded: past RECIPIENT_OVERSHOOT_LIMIT in one session each one counts, and max_errors ends it.
    await smtp.cmd('MAIL FROM:<a@client.test>');
    for (const i of [1, 2]) await smtp.cmd(`RCPT TO:<incoming+${i}@in.test>`);
    for (let i = 0; i < RECIPIENT_OVERSHOOT_LIMIT; i++) assert.equal((await smtp.cmd(`RCPT TO:<incoming+x${i}@in.test>`)).code, 452);
    for (const i of [1, 2]) assert.equal((await smtp.cmd(`RCPT TO:<incoming+y${i}@in.test>`)).code, 452);
    assert.equal((await smtp.cmd('RCPT TO:<incoming+y3@in.test>')).code, 452);
    assert.equal((await smtp.read()).raw, '421 4.7.0 mx.test Error: too many errors\r\n');
    await smtp.waitClosed();
  } finally {
    await app.close();
  }
});

describe('timeouts and early talkers', () => {
  let app: TestApp;
  let slow: TestApp;
  before(async () => {
    app = await startSmtpApp({ smtp: '  socket_timeout_ms: 300\n  limits:\n    min_data_rate: 1000' });
    slow = await startSmtpApp({ smtp: '  greeting_delay_ms: 400' });
  });
  after(async () => {
    await app.close();
    await slow.close();
  });

  test('idle timeout: 421 4.4.2 and disconnect', async () => {
    const smtp = await session(app.smtpPort);
    assert.equal((await smtp.read(3000)).raw, '421 4.4.2 Timeout - closing connection\r\n');
    await smtp.waitClosed();
  });

  test('slowloris DATA under smtp.limits.min_data_rate: 421 4.4.2, nothing stored, a quick message still passes', async () => {
    const before = countMessages(app);
    const smtp = await session(app.smtpPort);
    smtp.socket.setNoDelay(true);
    await startData(smtp);
    let stop = false;
    const trickle = (async () => {
      // One byte every 20 ms keeps the idle timeout (300 ms) from firing; the data-rate deadline does.
      const body = 'Subject: slow\r\n\r\n' + 'x'.repeat(1000);
      for (let i = 0; i < body.length && !stop && !smtp.closed; i++) {
        await writeFlushed(smtp, body[i] as string).catch(() => undefined);
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const r = await smtp.read(5000);
    stop = true;
    await trickle;
    assert.equal(r.raw, '421 4.4.2 mx.test Error: timeout exceeded\r\n');
    await smtp.waitClosed();
    assert.equal(countMessages(app), before);
    await sendOne(app.smtpPort, `Subject: quick\r\n\r\n${'y'.repeat(200_000)}\r\n`);
  });

  test('an early talker (before the banner) gets smtp-server\'s 421, others are served', async () => {
    const smtp = await RawSmtp.connect(slow.smtpPort);
    smtp.write('EHLO client.test\r\n');
    assert.equal((await smtp.read()).raw, '421 4.7.0 mx.test You talk too soon\r\n');
    await smtp.waitClosed();
    await sendOne(slow.smtpPort);
  });
});

describe('smtp.limits.max_session_ms', () => {
  const LIMIT_MS = 500;
  const EXPIRED = '421 4.4.2 mx.test Error: session time limit exceeded\r\n';
  let app: TestApp;
  before(async () => {
    app = await startSmtpApp({ smtp: `  limits:\n    max_session_ms: ${LIMIT_MS}` });
  });
  after(() => app.close());

  test('a session that keeps sending commands is ended with 421 4.4.2 once its time is up', async () => {
    const started = Date.now();
    const smtp = await session(app.smtpPort);
    let reply = await smtp.cmd('NOOP');
    // NOOPs are not errors: without the limit this session could last for ever.
    while (reply.code === 250 && Date.now() - started < 10_000) {
      await new Promise((r) => setTimeout(r, 10));
      reply = await smtp.cmd('NOOP');
    }
    assert.equal(reply.raw, EXPIRED);
    assert.ok(Date.now() - started >= LIMIT_MS, `ended after ${Date.now() - started} ms`);
    await smtp.waitClosed();
  });

  test('an idle session is ended when its time is up, long before the idle timeout', async () => {
    const smtp = await session(app.smtpPort);
    assert.equal((await smtp.read(5000)).raw, EXPIRED);
    await smtp.waitClosed();
  });

  test('a message being received when the time is up is not cut off: 250, stored, then 421', async () => {
    const before = countMessages(app);
    const started = Date.now();
    const smtp = await session(app.smtpPort);
    await startData(smtp);
    await writeFlushed(smtp, 'Subject: long session\r\n\r\n');
    // Past the limit while the message is still coming in.
    await new Promise((r) => setTimeout(r, LIMIT_MS + 200 - (Date.now() - started)));
    smtp.write('the rest\r\n.\r\n');
    const id = queuedId(await smtp.read(5000));
    assert.ok(app.spool.getMessage(id));
    assert.equal(countMessages(app), before + 1);
    assert.equal((await smtp.read(5000)).raw, EXPIRED);
    await smtp.waitClosed();
  });
});

describe('the spool cannot take the message: never 250', () => {
  let app: TestApp;
  let full: TestApp;
  before(async () => {
    app = await startSmtpApp();
    full = await startSmtpApp({ smtp: '  limits:\n    min_free_disk_bytes: 9000000000000000' });
  });
  after(async () => {
    await app.close();
    await full.close();
  });

  async function attempt(body = 'Subject: x\r\n\r\nbody\r\n'): Promise<string> {
    const smtp = await session(app.smtpPort);
    await startData(smtp);
    smtp.write(`${body}.\r\n`);
    const r = await smtp.read();
    await smtp.quit();
    return r.raw;
  }

  test('a database that refuses writes: 451 4.3.0, no rows, and 250 again once it recovers', async () => {
    const before = { m: countMessages(app), d: countDeliveries(app) };
    app.spool.db.pragma('query_only = ON');
    try {
      assert.equal(await attempt(), '451 4.3.0 Error: queue file write error, try again later\r\n');
      assert.equal(await attempt(`Subject: big\r\n\r\n${'z'.repeat(400_000)}\r\n`), '451 4.3.0 Error: queue file write error, try again later\r\n');
    } finally {
      app.spool.db.pragma('query_only = OFF');
    }
    assert.deepEqual({ m: countMessages(app), d: countDeliveries(app) }, before);
    assert.deepEqual(app.spool.blobs.list(), [], 'no message file left behind');
    queuedId({ raw: await attempt(), code: 250, lines: [], text: '' });
  });

  test('a full database (SQLITE_FULL): 452 4.3.1', async () => {
    const before = countMessages(app);
    const pages = app.spool.db.pragma('page_count', { simple: true }) as number;
    app.spool.db.pragma(`max_page_count = ${pages}`);
    try {
      assert.equal(await attempt(`Subject: full\r\n\r\n${'f'.repeat(100_000)}\r\n`), '452 4.3.1 Error: insufficient system storage\r\n');
    } finally {
      app.spool.db.pragma('max_page_count = 1073741823');
    }
    assert.equal(countMessages(app), before);
  });

  test('a disk that fills up while the message file is written (ENOSPC): 452 4.3.1', async () => {
    const before = countMessages(app);
    const original = app.spool.blobs.create.bind(app.spool.blobs);
    app.spool.blobs.create = async (name: string) => {
      const w = await original(name);
      w.write = async () => {
        throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      };
      return w;
    };
    try {
      assert.equal(await attempt(`Subject: big\r\n\r\n${'e'.repeat(400_000)}\r\n`), '452 4.3.1 Error: insufficient system storage\r\n');
    } finally {
      app.spool.blobs.create = original;
    }
    assert.equal(countMessages(app), before);
    assert.deepEqual(app.spool.blobs.list(), []);
  });

  test('free disk below smtp.limits.min_free_disk_bytes: 452 4.3.1 at MAIL', async () => {
    const smtp = await session(full.smtpPort);
    assert.equal((await smtp.cmd('MAIL FROM:<a@client.test>')).raw, '452 4.3.1 Error: insufficient system storage\r\n');
    await smtp.quit();
    assert.equal(countMessages(full), 0);
    // Not ready meanwhile: a load balancer sends the mail to an instance that can take it.
    const ready = await fetch(`${full.httpUrl}/readyz`);
    assert.equal(ready.status, 503);
    const body = (await ready.json()) as { checks: Record<string, boolean> };
    assert.deepEqual([body.checks.spool_disk_space, body.checks.spool_writable, body.checks.smtp_listening], [false, true, true]);
  });
});

describe('shutdown during a session', () => {
  test('new commands get 421 4.3.2; the DATA in flight is committed and answered 250', async () => {
    const app = await startSmtpApp();
    try {
      const busy = await session(app.smtpPort);
      await startData(busy);
      await writeFlushed(busy, 'Subject: in flight\r\n\r\nfirst half\r\n');
      const idle = await session(app.smtpPort);
      const stopping = app.smtp.shutdown(10_000);
      assert.equal((await idle.cmd('NOOP')).raw, '421 4.3.2 Service shutting down, closing transmission channel\r\n');
      await idle.waitClosed();
      const late = await RawSmtp.connect(app.smtpPort).catch(() => undefined);
      if (late) {
        // Still listening while DATA is in flight: the new session is refused in place of the banner.
        assert.equal((await late.read()).raw, '421 4.3.2 Service shutting down, closing transmission channel\r\n');
        late.destroy();
      }
      busy.write('second half\r\n.\r\n');
      const id = queuedId(await busy.read());
      assert.ok(app.spool.getMessage(id), '250 means committed');
      assert.equal((await busy.cmd('MAIL FROM:<a@client.test>')).raw, '421 4.3.2 Service shutting down, closing transmission channel\r\n');
      await stopping;
    } finally {
      await app.close();
    }
  });

  test('a DATA still incomplete when the grace period ends is refused with 421, nothing stored', async () => {
    const app = await startSmtpApp();
    try {
      const before = countMessages(app);
      const busy = await session(app.smtpPort);
      await startData(busy);
      await writeFlushed(busy, 'Subject: never finished\r\n\r\npartial\r\n');
      await app.smtp.shutdown(200);
      assert.equal((await busy.read()).raw, '421 4.3.2 Server shutting down\r\n');
      await busy.waitClosed();
      assert.equal(countMessages(app), before);
    } finally {
      await app.close();
    }
  });
});
