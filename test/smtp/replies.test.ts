// Exact wire replies of the SMTP edge, over a raw socket.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { RawSmtp } from '../helpers/smtp-client.js';
import { startTestApp, type TestApp } from '../helpers/app.js';

let app: TestApp;

before(async () => {
  app = await startTestApp({
    routes: `
  - name: sink
    addresses: ["incoming+%{key}@in.test", "incoming@in.test"]
    sink: true
`,
  });
});
after(() => app.close());

async function session(): Promise<RawSmtp> {
  const { smtp, banner } = await RawSmtp.open(app.smtpPort);
  assert.equal(banner.code, 220);
  assert.match(banner.text, /^mx\.test ESMTP/);
  const ehlo = await smtp.cmd('EHLO client.test');
  assert.equal(ehlo.code, 250);
  return smtp;
}

test('EHLO advertises SIZE with the configured limit and PIPELINING', async () => {
  const { smtp } = await RawSmtp.open(app.smtpPort);
  const ehlo = await smtp.cmd('EHLO client.test');
  assert.ok(ehlo.lines.some((l) => l === '250-SIZE 26214400' || l === '250 SIZE 26214400'), ehlo.raw);
  assert.ok(ehlo.lines.some((l) => /PIPELINING/.test(l)), ehlo.raw);
  await smtp.quit();
});

test('unknown recipient of a served domain: 550 5.1.1 at RCPT', async () => {
  const smtp = await session();
  assert.equal((await smtp.cmd('MAIL FROM:<a@b.test>')).code, 250);
  const r = await smtp.cmd('RCPT TO:<nobody@in.test>');
  assert.equal(r.raw, '550 5.1.1 Recipient address rejected: User unknown\r\n');
  await smtp.quit();
});

test('a domain no route serves: 550 5.7.1 relaying denied', async () => {
  const smtp = await session();
  await smtp.cmd('MAIL FROM:<a@b.test>');
  const r = await smtp.cmd('RCPT TO:<victim@gmail.example>');
  assert.equal(r.raw, '550 5.7.1 Relaying denied\r\n');
  await smtp.quit();
});

test('accepted recipient, null sender, and the queued reply after DATA', async () => {
  const smtp = await session();
  assert.equal((await smtp.cmd('MAIL FROM:<>')).code, 250);
  assert.equal((await smtp.cmd('RCPT TO:<incoming+abc@in.test>')).code, 250);
  assert.equal((await smtp.cmd('DATA')).code, 354);
  smtp.write('Subject: t\r\n\r\nbody\r\n.\r\n');
  const end = await smtp.read();
  assert.match(end.raw, /^250 2\.0\.0 Ok: queued as [a-z0-9]{22}\r\n$/);
  await smtp.quit();
});

test('MAIL FROM with SIZE over the limit: 552 5.3.4', async () => {
  const smtp = await session();
  const r = await smtp.cmd('MAIL FROM:<a@b.test> SIZE=26214401');
  assert.equal(r.code, 552);
  assert.match(r.raw, /^552 5\.3\.4 /);
  await smtp.quit();
});

test('DATA before RCPT is a bad sequence: 503 5.5.1', async () => {
  const smtp = await session();
  await smtp.cmd('MAIL FROM:<a@b.test>');
  const r = await smtp.cmd('DATA');
  assert.match(r.raw, /^503 5\.5\.1 /);
  await smtp.quit();
});
