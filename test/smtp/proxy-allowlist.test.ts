// smtp.proxy_protocol as a list of balancer addresses: only a listed peer's PROXY header names the client; any other
// peer talks SMTP directly, and a PROXY header it sends is never taken as its address.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { RawSmtp } from '../helpers/smtp-client.js';
import type { TestApp } from '../helpers/app.js';
import { connectFrom, proxyV2v4 as v2v4, queuedId, startData, startSmtpApp, type Lines } from './support.js';


/** MAIL, RCPT, DATA and a body on a Lines session; the final reply. */
async function sendOn(s: Lines, subject: string): Promise<string> {
  assert.equal((await s.cmd('MAIL FROM:<sender@client.test>')).code, 250);
  assert.equal((await s.cmd('RCPT TO:<user@in.test>')).code, 250);
  assert.equal((await s.cmd('DATA')).code, 354);
  s.socket.write(`Subject: ${subject}\r\n\r\nx\r\n.\r\n`);
  return (await s.read()).raw;
}

function remoteOf(app: TestApp, reply: string): string | null | undefined {
  return app.spool.getMessage(queuedId({ code: 250, lines: [], text: '', raw: reply }))?.envelope.remoteAddress;
}

/** Every stored message's remote address. */
function remotes(app: TestApp): string[] {
  return (app.spool.db.prepare('SELECT remote_address AS r FROM messages').all() as Array<{ r: string | null }>).map((x) => x.r ?? '');
}

describe('PROXY protocol from listed balancers only', () => {
  let app: TestApp;
  before(async () => {
    app = await startSmtpApp({ smtp: '  proxy_protocol: ["127.0.0.1"]' });
  });
  after(async () => {
    await app?.close();
  });

  test('a listed peer (127.0.0.1): its v1 and v2 headers give the spooled envelope the client\'s address', async () => {
    const one = await RawSmtp.connect(app.smtpPort);
    try {
      one.write('PROXY TCP4 203.0.113.7 192.0.2.1 56324 25\r\n');
      assert.equal((await one.read()).code, 220);
      assert.equal((await one.cmd('EHLO client.test')).code, 250);
      await startData(one);
      one.write('Subject: proxied v1\r\n\r\nx\r\n.\r\n');
      const id = queuedId(await one.read());
      assert.equal(app.spool.getMessage(id)?.envelope.remoteAddress, '203.0.113.7');
    } finally {
      one.destroy();
    }
    const two = await RawSmtp.connect(app.smtpPort);
    try {
      two.write(v2v4([198, 51, 100, 9], 40000));
      assert.equal((await two.read()).code, 220);
      assert.equal((await two.cmd('EHLO client.test')).code, 250);
      await startData(two);
      two.write('Subject: proxied v2\r\n\r\nx\r\n.\r\n');
      const id = queuedId(await two.read());
      assert.equal(app.spool.getMessage(id)?.envelope.remoteAddress, '198.51.100.9');
    } finally {
      two.destroy();
    }
  });

  test('a peer not on the list (127.0.0.2) talks SMTP directly and is recorded as itself', async () => {
    const s = await connectFrom(app.smtpPort, '127.0.0.2');
    try {
      assert.equal((await s.read()).code, 220);
      assert.equal((await s.cmd('EHLO client.test')).code, 250);
      const reply = await sendOn(s, 'direct');
      assert.equal(remoteOf(app, reply), '127.0.0.2');
    } finally {
      s.socket.destroy();
    }
  });

  test('a v1 PROXY line after the banner from a peer not on the list is an unknown command: the session keeps the peer\'s address', async () => {
    const s = await connectFrom(app.smtpPort, '127.0.0.2');
    try {
      assert.equal((await s.read()).code, 220, 'the banner comes at once: no header is awaited from this peer');
      assert.equal((await s.cmd('PROXY TCP4 192.0.2.78 192.0.2.1 56324 25')).raw, '500 5.5.2 Error: command not recognized\r\n');
      const ehlo = await s.cmd('EHLO client.test');
      assert.equal(ehlo.lines[0], '250-mx.test Nice to meet you, [127.0.0.2]');
      const reply = await sendOn(s, 'forged');
      assert.equal(remoteOf(app, reply), '127.0.0.2', 'the address in the line is not recorded');
    } finally {
      s.socket.destroy();
    }
    assert.equal(remotes(app).includes('192.0.2.78'), false);
  });
});

// A header sent at connect is early talk for a peer that is not a balancer. With greeting_delay_ms 0 the banner can
// win the race against the client's first bytes, so these run with a greeting delay (the product's early-talker
// window): the header is certain to arrive inside it.
describe('PROXY header sent at connect by a peer not on the list', () => {
  let app: TestApp;
  before(async () => {
    app = await startSmtpApp({ smtp: '  greeting_delay_ms: 1000\n  proxy_protocol: ["127.0.0.1"]' });
  });
  after(async () => {
    await app?.close();
  });

  test('a v1 PROXY header sent at connect by a peer not on the list is refused (421, early talker) and nothing is stored', async () => {
    const before = remotes(app).length;
    const s = await connectFrom(app.smtpPort, '127.0.0.2');
    try {
      // Sent at once on connect, as a balancer (or one posing as one) would: from a listed peer this gets the banner.
      s.socket.write('PROXY TCP4 192.0.2.77 192.0.2.1 56324 25\r\n');
      assert.equal((await s.read()).raw, '421 4.7.0 mx.test You talk too soon\r\n');
      await s.waitClosed();
    } finally {
      s.socket.destroy();
    }
    assert.equal(remotes(app).length, before);
    assert.equal(remotes(app).includes('192.0.2.77'), false);
  });

  test('a v2 PROXY header sent at connect by a peer not on the list is refused (421, early talker) and nothing is stored', async () => {
    const before = remotes(app).length;
    const s = await connectFrom(app.smtpPort, '127.0.0.2');
    try {
      s.socket.write(v2v4([198, 51, 100, 77], 40002));
      assert.equal((await s.read()).raw, '421 4.7.0 mx.test You talk too soon\r\n');
      await s.waitClosed();
    } finally {
      s.socket.destroy();
    }
    // The peer is still served as itself afterwards.
    const again = await connectFrom(app.smtpPort, '127.0.0.2');
    try {
      assert.equal((await again.read()).code, 220);
      assert.equal((await again.cmd('EHLO client.test')).code, 250);
      assert.equal(remoteOf(app, await sendOn(again, 'after v2')), '127.0.0.2');
    } finally {
      again.socket.destroy();
    }
    assert.equal(remotes(app).length, before + 1);
    assert.equal(remotes(app).includes('198.51.100.77'), false);
  });
});
