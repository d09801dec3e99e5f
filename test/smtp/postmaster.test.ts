// smtp.postmaster_route: mail to postmaster@ each served domain and to the bare <postmaster> (RFC 5321 §4.5.1) reaches a route's webhook.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Consumer } from '../helpers/consumer.js';
import { RawSmtp, sendMail } from '../helpers/smtp-client.js';
import { SECRET, type TestApp } from '../helpers/app.js';
import { startSmtpApp } from './support.js';

let app: TestApp;
const ops = new Consumer();
before(async () => {
  await ops.start();
  app = await startSmtpApp({
    smtp: '  postmaster_route: ops',
    routes: `
  - name: app
    addresses: ["incoming+%{key}@app.test", "*@all.test"]
    sink: true
  - name: ops
    addresses: ["ops@ops.test"]
    webhook: { url: "${ops.url}", secret: "${SECRET}" }
`,
  });
});
after(async () => {
  await app.close();
  await ops.stop();
});

const recipientsOf = (i: number) => (JSON.parse(ops.requests[i]!.body.toString('utf8')) as { route: string; recipients: Array<{ address: string; key: string | null }>; envelope: { rcpt_to: string[] } });

test('postmaster@ a served domain (a template domain, a catch-all domain) is accepted and delivered to the postmaster route', async () => {
  const info = await sendMail(app.smtpPort, { from: 'mailer-daemon@remote.test', to: ['PostMaster@app.test', 'postmaster@all.test'], subject: 'abuse report', text: 'see attached' });
  assert.match(info.response, /^250 2\.0\.0 /);
  await ops.received(1);
  const p = recipientsOf(0);
  assert.equal(p.route, 'ops');
  assert.deepEqual(p.recipients.map((r) => r.address).sort(), ['PostMaster@app.test', 'postmaster@all.test']);
  assert.deepEqual(p.recipients.map((r) => r.key), [null, null]);
});

test('the bare RCPT TO:<Postmaster> is accepted and delivered; postmaster@ a domain nobody serves is still a relay attempt', async () => {
  const { smtp } = await RawSmtp.open(app.smtpPort);
  await smtp.cmd('EHLO client.test');
  assert.equal((await smtp.cmd('MAIL FROM:<a@remote.test>')).raw, '250 2.1.0 Accepted\r\n');
  assert.equal((await smtp.cmd('RCPT TO:<postmaster@elsewhere.test>')).raw, '550 5.7.1 Relaying denied\r\n');
  assert.equal((await smtp.cmd('RCPT TO:<Postmaster>')).raw, '250 2.1.5 Accepted\r\n');
  assert.equal((await smtp.cmd('DATA')).code, 354);
  const queued = await smtp.cmd('Subject: to the postmaster\r\n\r\nhello\r\n.');
  assert.match(queued.raw, /^250 2\.0\.0 /);
  await smtp.quit();
  await ops.received(2);
  const p = recipientsOf(1);
  assert.deepEqual(p.recipients, [{ address: 'Postmaster', key: null }], 'as the client wrote it');
  assert.deepEqual(p.envelope.rcpt_to, ['Postmaster']);
});
