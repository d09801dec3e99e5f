// Hostile and malformed input over a raw socket: the exact reply, nothing half-stored, and the server keeps serving.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { RawSmtp } from '../helpers/smtp-client.js';
import type { TestApp } from '../helpers/app.js';
import { parseMessage } from '../../src/parse/message.js';
import { countMessages, queuedId, sendOne, session, startData, startSmtpApp, writeFlushed } from './support.js';

let app: TestApp;
let strict: TestApp;

before(async () => {
  app = await startSmtpApp({ smtp: '  ip_literals:\n    "192.0.2.10": in.test' });
  strict = await startSmtpApp({ smtp: '  bare_lf: reject' });
});
after(async () => {
  await app.close();
  await strict.close();
});

const LONE = /\r(?!\n)|(?<!\r)\n/;

describe('SMTP smuggling', () => {
  const SEQUENCES = ['\n.\n', '\n.\r\n', '\r.\r\n', '\r\n.\n', '\r.\r', '\n.\r', '\r.\n', '\r\n.\r', '\r\n\x00.\r\n', '\r\n.\x00\r\n'];
  const smuggled = 'MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<incoming+smuggled@in.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n';

  for (const seq of SEQUENCES) {
    test(`${JSON.stringify(seq)} followed by a smuggled transaction never ends DATA`, async () => {
      const before = countMessages(app);
      const smtp = await session(app.smtpPort);
      await startData(smtp, 'sender@client.test', ['incoming+real@in.test']);
      smtp.write(`Subject: outer\r\n\r\nhello${seq}${smuggled}\r\n.\r\n`);
      const id = queuedId(await smtp.read());
      // The smuggled commands were message content: the next reply is the one to our QUIT.
      assert.equal((await smtp.cmd('QUIT')).raw, '221 2.0.0 Bye\r\n');
      assert.equal(countMessages(app), before + 1);
      const m = app.spool.getMessage(id);
      assert.equal(m?.envelope.mailFrom, 'sender@client.test');
      assert.deepEqual(m?.envelope.rcptTo, ['incoming+real@in.test']);
      const raw = (await app.spool.readRaw(id)).toString('latin1');
      assert.ok(raw.includes('MAIL FROM:<evil@attacker.test>'), 'the smuggled lines are stored as content');
      assert.doesNotMatch(raw, LONE, 'normalize leaves no lone CR or LF');
    });
  }

  test('with bare_lf: reject, every sequence holding a lone CR or LF is refused with 550 5.5.2; NUL ones are content', async () => {
    for (const seq of SEQUENCES) {
      const before = countMessages(strict);
      const smtp = await session(strict.smtpPort);
      await startData(smtp);
      smtp.write(`Subject: outer\r\n\r\nhello${seq}${smuggled}\r\n.\r\n`);
      const r = await smtp.read();
      if (LONE.test(seq)) {
        assert.equal(r.raw, '550 5.5.2 Error: bare <CR> or <LF> received\r\n', JSON.stringify(seq));
        assert.equal(countMessages(strict), before, 'nothing stored');
      } else {
        queuedId(r);
        assert.equal(countMessages(strict), before + 1);
      }
      assert.equal((await smtp.cmd('QUIT')).raw, '221 2.0.0 Bye\r\n');
    }
    await sendOne(strict.smtpPort);
  });
});

describe('bare LF and bare CR in DATA', () => {
  test('normalize (the default): stored bytes have every line ending as CRLF', async () => {
    const smtp = await session(app.smtpPort);
    await startData(smtp);
    smtp.write('Subject: bare\nX-A: 1\r\rline one\nline two\rline three\r\n.\r\n');
    const id = queuedId(await smtp.read());
    await smtp.quit();
    const raw = (await app.spool.readRaw(id)).toString('latin1');
    assert.equal(raw, 'Subject: bare\r\nX-A: 1\r\n\r\nline one\r\nline two\r\nline three\r\n');
  });

  test('reject: 550 5.5.2 after the final dot, nothing stored, the session goes on', async () => {
    const before = countMessages(strict);
    const smtp = await session(strict.smtpPort);
    await startData(smtp);
    smtp.write('Subject: bare\r\n\r\nline\nmore\r\n.\r\n');
    assert.equal((await smtp.read()).raw, '550 5.5.2 Error: bare <CR> or <LF> received\r\n');
    assert.equal(countMessages(strict), before);
    await startData(smtp);
    smtp.write('Subject: clean\r\n\r\nok\r\n.\r\n');
    queuedId(await smtp.read());
    assert.equal(countMessages(strict), before + 1);
    await smtp.quit();
  });
});

describe('pipelining', () => {
  test('RFC 2920: MAIL, several RCPT and DATA in one packet work', async () => {
    const smtp = await session(app.smtpPort);
    smtp.write('MAIL FROM:<p@client.test>\r\nRCPT TO:<incoming+a@in.test>\r\nRCPT TO:<incoming+b@in.test>\r\nDATA\r\n');
    assert.equal((await smtp.read()).raw, '250 2.1.0 Accepted\r\n');
    assert.equal((await smtp.read()).raw, '250 2.1.5 Accepted\r\n');
    assert.equal((await smtp.read()).raw, '250 2.1.5 Accepted\r\n');
    assert.equal((await smtp.read()).raw, '354 End data with <CR><LF>.<CR><LF>\r\n');
    smtp.write('Subject: pipelined\r\n\r\nok\r\n.\r\n');
    const id = queuedId(await smtp.read());
    assert.deepEqual(app.spool.getMessage(id)?.envelope.rcptTo, ['incoming+a@in.test', 'incoming+b@in.test']);
    await smtp.quit();
  });

  test('content sent before the 354: 554 5.5.0 instead of 354, disconnect, nothing stored', async () => {
    const before = countMessages(app);
    const smtp = await session(app.smtpPort);
    smtp.write('MAIL FROM:<p@client.test>\r\nRCPT TO:<user@in.test>\r\nDATA\r\nSubject: too early\r\n\r\nbody\r\n.\r\n');
    assert.equal((await smtp.read()).raw, '250 2.1.0 Accepted\r\n');
    assert.equal((await smtp.read()).raw, '250 2.1.5 Accepted\r\n');
    assert.equal((await smtp.read()).raw, '554 5.5.0 Error: SMTP protocol synchronization\r\n');
    await smtp.waitClosed();
    assert.equal(countMessages(app), before);
    // Logged with the session's connection id, as its other lines are.
    const lines = app.logs.join('').trim().split('\n').map((l) => JSON.parse(l) as { msg: string; cid?: string });
    const early = lines.filter((l) => l.msg.startsWith('message content sent before the 354'));
    assert.equal(early.length, 1);
    assert.ok(early[0]!.cid && lines.some((l) => l !== early[0] && l.cid === early[0]!.cid), 'the cid of the session\'s other lines');
    await sendOne(app.smtpPort);
  });

  test('a MAIL pipelined right after the final dot starts a clean second transaction', async () => {
    const smtp = await session(app.smtpPort);
    await startData(smtp, 'first@client.test', ['incoming+one@in.test']);
    smtp.write('Subject: one\r\n\r\nfirst\r\n.\r\nMAIL FROM:<second@client.test>\r\nRCPT TO:<incoming+two@in.test>\r\nDATA\r\n');
    const first = queuedId(await smtp.read());
    assert.equal((await smtp.read()).raw, '250 2.1.0 Accepted\r\n');
    assert.equal((await smtp.read()).raw, '250 2.1.5 Accepted\r\n');
    assert.equal((await smtp.read()).raw, '354 End data with <CR><LF>.<CR><LF>\r\n');
    smtp.write('Subject: two\r\n\r\nsecond\r\n.\r\n');
    const second = queuedId(await smtp.read());
    await smtp.quit();
    assert.deepEqual(app.spool.getMessage(first)?.envelope, { mailFrom: 'first@client.test', rcptTo: ['incoming+one@in.test'], remoteAddress: '127.0.0.1', helo: 'client.test', tls: null });
    assert.deepEqual(app.spool.getMessage(second)?.envelope.rcptTo, ['incoming+two@in.test']);
    assert.equal(app.spool.getMessage(second)?.envelope.mailFrom, 'second@client.test');
  });
});

describe('protocol edge cases', () => {
  test('dot-stuffing: "..x" is stored as ".x", on the first body line and later', async () => {
    const smtp = await session(app.smtpPort);
    await startData(smtp);
    smtp.write('..first\r\nSubject: dots\r\n\r\n..x\r\n...\r\n.\r\n');
    const id = queuedId(await smtp.read());
    await smtp.quit();
    assert.equal((await app.spool.readRaw(id)).toString('latin1'), '.first\r\nSubject: dots\r\n\r\n.x\r\n..\r\n');
  });

  test('end of data split across many TCP segments', async () => {
    const smtp = await session(app.smtpPort);
    smtp.socket.setNoDelay(true);
    await startData(smtp);
    await writeFlushed(smtp, 'Subject: split\r\n\r\nbody');
    for (const b of ['\r', '\n', '.', '\r', '\n']) {
      await writeFlushed(smtp, b);
      await new Promise((r) => setImmediate(r));
    }
    const id = queuedId(await smtp.read());
    await smtp.quit();
    assert.equal((await app.spool.readRaw(id)).toString('latin1'), 'Subject: split\r\n\r\nbody\r\n');
  });

  test('a line-starting period right after a segment boundary is removed, whatever the bytes held before it', async () => {
    // The server holds a segment's last 4 bytes back when they may begin a line or the terminator (a CR or an LF
    // among them) and sends the rest whole: segments ending either way, a next segment shorter than 4 bytes or not. The header goes first, on its own: the first body segment
    // can join the DATA line's when the server is still busy with it. (data-filter.test.ts splits every way.)
    const cases: Array<{ segments: string[]; stored: string }> = [
      { segments: ['abcd', '\n.x\r\nend\r\n.\r\n'], stored: 'abcd\r\nx\r\nend\r\n' },
      { segments: ['abcd', '\n.', 'x\r\n.\r\n'], stored: 'abcd\r\nx\r\n' },
      { segments: ['abcd', '\r\n.', '.y\r\n.\r\n'], stored: 'abcd\r\n.y\r\n' },
      { segments: ['ab.d', '\r\n..z\r\n', '.\r\n'], stored: 'ab.d\r\n.z\r\n' },
      { segments: ['wxyz\r', '\n.\r\n'], stored: 'wxyz\r\n' },
    ];
    for (const c of cases) {
      const smtp = await session(app.smtpPort);
      smtp.socket.setNoDelay(true);
      await startData(smtp);
      for (const s of ['Subject: split\r\n\r\n', ...c.segments]) {
        await writeFlushed(smtp, s);
        await new Promise((r) => setImmediate(r));
      }
      const id = queuedId(await smtp.read());
      await smtp.quit();
      assert.equal((await app.spool.readRaw(id)).toString('latin1'), `Subject: split\r\n\r\n${c.stored}`, JSON.stringify(c.segments));
    }
  });

  test('empty DATA: 250 with an empty message stored', async () => {
    const smtp = await session(app.smtpPort);
    await startData(smtp);
    smtp.write('.\r\n');
    const id = queuedId(await smtp.read());
    await smtp.quit();
    assert.equal(app.spool.getMessage(id)?.size, 0);
  });

  test('out-of-order commands: 503 5.5.1', async () => {
    const { smtp } = await RawSmtp.open(app.smtpPort);
    assert.equal((await smtp.cmd('MAIL FROM:<a@b.test>')).raw, '503 5.5.1 Error: send HELO/EHLO first\r\n');
    await smtp.cmd('EHLO client.test');
    assert.equal((await smtp.cmd('RCPT TO:<user@in.test>')).raw, '503 5.5.1 Error: need MAIL command\r\n');
    assert.equal((await smtp.cmd('DATA')).raw, '503 5.5.1 Error: need RCPT command\r\n');
    await smtp.cmd('MAIL FROM:<a@b.test>');
    assert.equal((await smtp.cmd('MAIL FROM:<a@b.test>')).raw, '503 5.5.1 Error: nested MAIL command\r\n');
    assert.equal((await smtp.cmd('DATA')).raw, '503 5.5.1 Error: need RCPT command\r\n');
    await smtp.quit();
  });

  test('syntax errors and control characters in addresses: 501', async () => {
    const smtp = await session(app.smtpPort);
    assert.equal((await smtp.cmd('MAIL FROM:<a b@client.test>')).raw, '501 5.1.7 Error: Bad sender address syntax\r\n');
    assert.equal((await smtp.cmd('MAIL FROM:<a\x01b@client.test>')).raw, '501 5.1.7 Error: Bad sender address syntax\r\n');
    assert.equal((await smtp.cmd('MAIL FROM:a@client.test')).raw, '501 5.1.7 Error: Bad sender address syntax\r\n');
    assert.equal((await smtp.cmd('MAIL FROM:<a@client.test> SIZE=12x')).raw, '501 5.5.4 Error: Bad message size syntax\r\n');
    await smtp.cmd('MAIL FROM:<a@client.test>');
    assert.equal((await smtp.cmd('RCPT TO:<us\x7fer@in.test>')).raw, '501 5.1.3 Error: Bad recipient address syntax\r\n');
    assert.equal((await smtp.cmd('RCPT TO:<user@in.test\x00>')).raw, '501 5.1.3 Error: Bad recipient address syntax\r\n');
    assert.equal((await smtp.cmd('RCPT TO:<>')).raw, '501 5.1.3 Error: Bad recipient address syntax\r\n');
    assert.equal((await smtp.cmd('RCPT TO:<user@in..test>')).raw, '501 5.1.3 Error: Bad recipient address syntax\r\n');
    await smtp.quit();
  });

  test('SIZE= over the limit: 552 5.3.4', async () => {
    const smtp = await session(app.smtpPort);
    assert.equal((await smtp.cmd('MAIL FROM:<a@client.test> SIZE=26214401')).raw, '552 5.3.4 Error: message exceeds fixed maximum message size 26214400\r\n');
    await smtp.quit();
  });

  test('routing tricks are refused or taken strictly as local parts; nothing is relayed', async () => {
    const smtp = await session(app.smtpPort);
    await smtp.cmd('MAIL FROM:<a@client.test>');
    // RFC 5321 §4.1.2: a source route is accepted and ignored; what is left is routed like any address.
    assert.equal((await smtp.cmd('RCPT TO:<@relay.test:user@in.test>')).raw, '250 2.1.5 Accepted\r\n');
    assert.equal((await smtp.cmd('RCPT TO:<@relay.test:victim@elsewhere.test>')).raw, '550 5.7.1 Relaying denied\r\n');
    assert.equal((await smtp.cmd('RCPT TO:<victim%elsewhere.test@in.test>')).raw, '550 5.1.1 Recipient address rejected: User unknown\r\n');
    assert.equal((await smtp.cmd('RCPT TO:<elsewhere.test!victim@in.test>')).raw, '550 5.1.1 Recipient address rejected: User unknown\r\n');
    assert.equal((await smtp.cmd('RCPT TO:<"victim@elsewhere.test"@in.test>')).raw, '501 5.1.3 Error: Bad recipient address syntax\r\n');
    // A catch-all takes the characters literally: the recipient stays in our domain.
    assert.equal((await smtp.cmd('RCPT TO:<victim%elsewhere.test@catch.test>')).raw, '250 2.1.5 Accepted\r\n');
    assert.equal((await smtp.cmd('RCPT TO:<elsewhere.test!victim@catch.test>')).raw, '250 2.1.5 Accepted\r\n');
    assert.equal((await smtp.cmd('DATA')).code, 354);
    smtp.write('Subject: tricks\r\n\r\nx\r\n.\r\n');
    const id = queuedId(await smtp.read());
    await smtp.quit();
    assert.deepEqual(app.spool.getMessage(id)?.envelope.rcptTo, ['user@in.test', 'victim%elsewhere.test@catch.test', 'elsewhere.test!victim@catch.test']);
    const recipients = (app.spool.db.prepare('SELECT recipients FROM deliveries WHERE message_id = ?').get(id) as { recipients: string }).recipients;
    assert.deepEqual(
      (JSON.parse(recipients) as Array<{ address: string }>).map((r) => r.address),
      ['user@in.test', 'victim%elsewhere.test@catch.test', 'elsewhere.test!victim@catch.test'],
    );
  });

  test('IP-literal domains are refused unless configured in smtp.ip_literals', async () => {
    const smtp = await session(app.smtpPort);
    await smtp.cmd('MAIL FROM:<a@client.test>');
    assert.equal((await smtp.cmd('RCPT TO:<user@[127.0.0.1]>')).raw, '550 5.7.1 Relaying denied\r\n');
    assert.equal((await smtp.cmd('RCPT TO:<user@[IPv6:::1]>')).raw, '550 5.7.1 Relaying denied\r\n');
    assert.equal((await smtp.cmd('RCPT TO:<nobody@[192.0.2.10]>')).raw, '550 5.1.1 Recipient address rejected: User unknown\r\n');
    assert.equal((await smtp.cmd('RCPT TO:<user@[192.0.2.10]>')).raw, '250 2.1.5 Accepted\r\n');
    assert.equal((await smtp.cmd('DATA')).code, 354);
    smtp.write('Subject: literal\r\n\r\nx\r\n.\r\n');
    const id = queuedId(await smtp.read());
    await smtp.quit();
    const row = app.spool.db.prepare('SELECT route, recipients FROM deliveries WHERE message_id = ?').get(id) as { route: string; recipients: string };
    assert.equal(row.route, 'sink');
    assert.deepEqual(JSON.parse(row.recipients), [{ address: 'user@[192.0.2.10]', key: null }]);
  });
});

describe('size and structure limits', () => {
  async function refused(body: string, reply: string): Promise<void> {
    const before = countMessages(app);
    const smtp = await session(app.smtpPort);
    await startData(smtp);
    smtp.write(body + '.\r\n');
    assert.equal((await smtp.read(20_000)).raw, reply);
    assert.equal(countMessages(app), before, 'nothing stored');
    // The same session can still deliver.
    await startData(smtp);
    smtp.write('Subject: after\r\n\r\nok\r\n.\r\n');
    queuedId(await smtp.read());
    await smtp.quit();
  }

  async function accepted(body: string): Promise<string> {
    const smtp = await session(app.smtpPort);
    await startData(smtp);
    smtp.write(body + '.\r\n');
    const id = queuedId(await smtp.read(20_000));
    await smtp.quit();
    return id;
  }

  function multipart(parts: number): string {
    let s = 'Subject: parts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b0"\r\n\r\npreamble\r\n';
    for (let i = 0; i < parts; i++) s += `--b0\r\nContent-Type: text/plain\r\n\r\npart ${i}\r\n`;
    return s + '--b0--\r\n';
  }

  function nested(depth: number): string {
    let s = 'Subject: nested\r\nMIME-Version: 1.0\r\n';
    for (let i = 0; i < depth; i++) s += `Content-Type: multipart/mixed; boundary="n${i}"\r\n\r\n--n${i}\r\n`;
    s += 'Content-Type: text/plain\r\n\r\ndeep\r\n';
    for (let i = depth - 1; i >= 0; i--) s += `--n${i}--\r\n`;
    return s;
  }

  test('a header section over 1 MiB: 552 5.3.4', async () => {
    const line = `X-Filler: ${'a'.repeat(990)}\r\n`;
    await refused(`Subject: big header\r\n${line.repeat(1060)}\r\nbody\r\n`, '552 5.3.4 Error: message header section exceeds size limit\r\n');
  });

  test('header lines count as mailparser counts them (at least 64 bytes each): 16,500 short lines (132 KB): 552 5.3.4', async () => {
    await refused(`Subject: short lines\r\n${'X-A: a\r\n'.repeat(16_500)}\r\nbody\r\n`, '552 5.3.4 Error: message header section exceeds size limit\r\n');
  });

  test('boundaries as mailparser reads them: 1,000 parts under a 201-character or an RFC 2231 boundary: 554 5.6.0', async () => {
    const parts = (b: string) => `--${b}\r\nContent-Type: text/plain\r\n\r\np\r\n`.repeat(1000) + `--${b}--\r\n`;
    const long = 'b'.repeat(201);
    await refused(`Subject: long\r\nContent-Type: multipart/mixed; boundary="${long}"\r\n\r\n${parts(long)}`, '554 5.6.0 Error: too many MIME parts\r\n');
    await refused(`Subject: 2231\r\nContent-Type: multipart/mixed; boundary*0=z; boundary*1=z\r\n\r\n${parts('zz')}`, '554 5.6.0 Error: too many MIME parts\r\n');
  });

  test('more than 100 Received headers: 554 5.4.6; exactly 100 passes', async () => {
    const received = (n: number) => 'Received: from a.test by b.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n'.repeat(n);
    await refused(`${received(101)}Subject: loop\r\n\r\nx\r\n`, '554 5.4.6 Error: too many hops (mail forwarding loop)\r\n');
    await accepted(`${received(100)}Subject: long path\r\n\r\nx\r\n`);
  });

  test('more than 1000 MIME parts, the message itself counted: 554 5.6.0; exactly 1000 (999 body parts) passes', async () => {
    // mailparser counts the message as a part too: 1000 body parts could be accepted but never parsed.
    await refused(multipart(1000), '554 5.6.0 Error: too many MIME parts\r\n');
    await accepted(multipart(999));
  });

  test('MIME nesting over 100: 554 5.6.0; exactly 100 passes', async () => {
    await refused(nested(101), '554 5.6.0 Error: MIME nesting too deep\r\n');
    await accepted(nested(100));
  });

  test('a 1 MB command line: 421 4.5.0 and disconnect; others are served', async () => {
    const { smtp } = await RawSmtp.open(app.smtpPort);
    await smtp.cmd('EHLO client.test');
    smtp.write(`MAIL FROM:<${'a'.repeat(1_000_000)}@client.test>\r\n`);
    assert.equal((await smtp.read()).raw, '421 4.5.0 Error: Command line too long\r\n');
    await smtp.waitClosed();
    await sendOne(app.smtpPort);
  });

  test('a 1 MB body line is stored whole (250 only after commit)', async () => {
    const body = `Subject: long line\r\n\r\n${'x'.repeat(1_000_000)}\r\n`;
    const id = await accepted(body);
    const raw = await app.spool.readRaw(id);
    assert.equal(raw.length, Buffer.byteLength(body));
    assert.equal(raw.toString('latin1'), body);
  });
});

describe('address parser denial of service', () => {
  const HOSTILE: Record<string, string> = {
    'comment-joined atoms': `${'a(b)'.repeat(60_000)}@example.com`,
    'a long address list': 'a@b.test,'.repeat(40_000),
    'nested groups': `${'g:'.repeat(5000)}a@b.test${';'.repeat(5000)}`,
    'nested comments': `${'('.repeat(20_000)}a@b.test${')'.repeat(20_000)}`,
    'a whitespace-free run': 'x'.repeat(200_000),
    'an encoded-word address': '=?utf-8?q?=40attacker.com?=@example.com',
  };

  for (const [name, from] of Object.entries(HOSTILE)) {
    test(`From: ${name} is accepted quickly and parses in bounded time`, async () => {
      const started = Date.now();
      const id = await sendOne(app.smtpPort, `From: ${from}\r\nTo: user@in.test\r\nSubject: dos\r\n\r\nbody\r\n`);
      const raw = await app.spool.readRaw(id);
      const t = Date.now();
      const { message } = await parseMessage(raw);
      const parseMs = Date.now() - t;
      assert.ok(parseMs < 3000, `mailparser took ${parseMs} ms`);
      assert.ok(Date.now() - started < 10_000);
      if (name === 'an encoded-word address') {
        // RFC 2047 §5: no encoded words in an addr-spec; the domain must not turn into attacker.com.
        assert.doesNotMatch(message.from?.address ?? '', /@attacker\.com$/);
      }
    });
  }
});
