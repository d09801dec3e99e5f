// RFC 5321 §4.5.2 over a raw socket: a DATA line starting with "." loses that character, however the bytes arrive.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { TestApp } from '../helpers/app.js';
import { countMessages, queuedId, sendOne, session, startData, startSmtpApp, writeFlushed } from './support.js';

let app: TestApp;
let small: TestApp;
const LIMIT = 4096;

before(async () => {
  app = await startSmtpApp();
  small = await startSmtpApp({ smtp: `  max_message_bytes: ${LIMIT}` });
});
after(async () => {
  await app.close();
  await small.close();
});

/** Wire bytes (without the final ".\r\n") and what RFC 5321 §4.5.2 makes of them. */
const WIRE = '.first\r\nSubject: not dot-stuffed\r\n\r\n.x\r\n..y\r\n. z\r\n...\r\n.\t\r\nplain.\r\n.a.b\r\nend\r\n';
const STORED = 'first\r\nSubject: not dot-stuffed\r\n\r\nx\r\n.y\r\n z\r\n..\r\n\t\r\nplain.\r\na.b\r\nend\r\n';

async function stored(target: TestApp, id: string): Promise<string> {
  return (await target.spool.readRaw(id)).toString('latin1');
}

test('a line starting with "." loses its first character: ".x" is "x", "..y" ".y", ". z" " z", on the first line and later', async () => {
  const smtp = await session(app.smtpPort);
  await startData(smtp);
  smtp.write(`${WIRE}.\r\n`);
  const id = queuedId(await smtp.read());
  await smtp.quit();
  assert.equal(await stored(app, id), STORED);
  assert.equal(app.spool.getMessage(id)?.size, Buffer.byteLength(STORED));
});

test('the same when every byte arrives in its own TCP segment', async () => {
  const smtp = await session(app.smtpPort);
  smtp.socket.setNoDelay(true);
  await startData(smtp);
  for (const b of `${WIRE}.\r\n`) {
    await writeFlushed(smtp, b);
    await new Promise((r) => setImmediate(r));
  }
  const id = queuedId(await smtp.read());
  await smtp.quit();
  assert.equal(await stored(app, id), STORED);
});

test('a "." alone on a line after a lone LF or before one is content, not the end; only CRLF.CRLF ends DATA', async () => {
  const smtp = await session(app.smtpPort);
  await startData(smtp);
  // bare_lf: normalize (the default) turns the lone LFs into CRLF once the dots are decided.
  smtp.write('Subject: lone\r\n\r\na\n.\r\nb\r\n.\nc\r\n.\r\n');
  const id = queuedId(await smtp.read());
  assert.equal((await smtp.cmd('NOOP')).raw, '250 2.0.0 OK\r\n');
  await smtp.quit();
  assert.equal(await stored(app, id), 'Subject: lone\r\n\r\na\r\n.\r\nb\r\n.\r\nc\r\n');
});

test('a 3 MB message of undotted and dot-stuffed lines, sent in odd slices, is stored exactly', async () => {
  let wire = 'Subject: big\r\n\r\n';
  let expected = wire;
  for (let i = 0; wire.length < 3_000_000; i++) {
    const text = `${i % 7 === 0 ? '' : 'line '}${i} ${'abcdefghij'.repeat(i % 9)}`;
    const lead = ['.', '..', '', '.', '. '][i % 5] as string;
    wire += `${lead}${text}\r\n`;
    expected += `${lead.slice(lead.length > 0 ? 1 : 0)}${text}\r\n`;
  }
  const smtp = await session(app.smtpPort);
  await startData(smtp);
  const bytes = Buffer.from(`${wire}.\r\n`, 'latin1');
  for (let at = 0, n = 1; at < bytes.length; at += n, n = ((n * 7 + 13) % 65_521) + 1) await writeFlushed(smtp, bytes.subarray(at, at + n));
  const id = queuedId(await smtp.read(20_000));
  await smtp.quit();
  const raw = await stored(app, id);
  assert.equal(raw.length, expected.length);
  assert.ok(raw === expected, 'stored bytes differ from the unstuffed message');
});

test('max_message_bytes counts the bytes stored: removed periods do not count, one byte over is 552 5.3.4', async () => {
  // 100 lines ".x…" of 40 bytes on the wire each, 39 stored: the wire is 100 bytes longer than what is stored.
  const header = 'Subject: size\r\n\r\n';
  const lines = (n: number) => `.${'x'.repeat(37)}\r\n`.repeat(n);
  const pad = (extra: number) => 'p'.repeat(LIMIT - header.length - 39 * 100 - 2 + extra) + '\r\n';
  const exact = header + lines(100) + pad(0);
  assert.equal(Buffer.byteLength(exact) - 100, LIMIT);
  const smtp = await session(small.smtpPort);
  await startData(smtp);
  smtp.write(`${exact}.\r\n`);
  const id = queuedId(await smtp.read());
  assert.equal(small.spool.getMessage(id)?.size, LIMIT);
  const before = countMessages(small);
  await startData(smtp);
  smtp.write(`${header}${lines(100)}${pad(1)}.\r\n`);
  assert.equal((await smtp.read()).raw, '552 5.3.4 Error: message exceeds fixed maximum message size\r\n');
  await smtp.quit();
  assert.equal(countMessages(small), before, 'nothing stored');
  await sendOne(small.smtpPort);
});
