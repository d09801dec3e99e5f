// How a delivery takes the parse pool's errors, for every format that parses: a crash on the message dead-letters it, a stopped pool or a timeout retries.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Consumer } from '../helpers/consumer.js';
import { sendMail } from '../helpers/smtp-client.js';
import { SECRET, startTestApp, until } from '../helpers/app.js';
import { MailhookError } from '../../src/core/errors.js';
import { parseMessageJson } from '../../src/parse/message.js';
import { parseInboundMessage } from '../../src/parse/inbound.js';

test('PARSE_CRASHED dead-letters the delivery at once; SHUTTING_DOWN (the parse threads stopped under it) is retried', async () => {
  const consumer = await new Consumer().start();
  let stoppedOnce = false;
  const app = await startTestApp({
    routes: `
  - name: app
    addresses: ["*@app.test"]
    webhook: { url: "${consumer.url}", secret: "${SECRET}", format: json }
`,
    deps: {
      parse: async (raw) => {
        const text = raw.toString('latin1');
        if (text.includes('Subject: crash')) throw new MailhookError('PARSE_CRASHED', 'parsing this message ended the parse thread twice (out of memory, over 512 MB); it is not parsed again');
        if (text.includes('Subject: stopped') && !stoppedOnce) {
          stoppedOnce = true;
          throw new MailhookError('SHUTTING_DOWN', 'the parse threads stopped');
        }
        return parseMessageJson(raw);
      },
    },
  });
  try {
    await sendMail(app.smtpPort, { from: 'a@example.test', to: 'c@app.test', subject: 'crash', text: 'x' });
    await sendMail(app.smtpPort, { from: 'a@example.test', to: 's@app.test', subject: 'stopped', text: 'x' });
    const rows = () => app.spool.db.prepare(`SELECT d.status, d.attempts, d.last_error, d.recipients FROM deliveries d`).all() as Array<{ status: string; attempts: number; last_error: string | null; recipients: string }>;
    const of = (who: string) => rows().find((r) => r.recipients.includes(who));
    const dead = await until(() => (of('c@app.test')?.status === 'dead' ? of('c@app.test') : undefined), 10_000, 'the crashing message dead-lettered');
    assert.equal(dead.attempts, 1);
    assert.match(dead.last_error ?? '', /^cannot build the json payload: parsing this message ended the parse thread twice/);
    const delivered = await until(() => (of('s@app.test')?.status === 'delivered' ? of('s@app.test') : undefined), 10_000, 'the other message delivered');
    assert.equal(delivered.attempts, 2, 'retried once');
    assert.equal(consumer.requests.length, 1);
  } finally {
    await app.close();
    await consumer.stop();
  }
});

test('the mailgun, postmark and sendgrid formats take their parse failures as json does: PARSE_CRASHED dead at once, SHUTTING_DOWN and PARSE_TIMEOUT retried', async () => {
  const consumer = await new Consumer().start();
  const failedOnce = new Set<string>();
  const app = await startTestApp({
    routes: `
  - name: mg
    addresses: ["*@mg.test"]
    webhook: { url: "${consumer.url}", format: mailgun, secret: key-3ax6xnjp29jd6fds4gc373sgvjxteol0 }
  - name: pm
    addresses: ["*@pm.test"]
    webhook: { url: "${consumer.url}", format: postmark }
  - name: sg
    addresses: ["*@sg.test"]
    webhook: { url: "${consumer.url}", format: sendgrid }
`,
    deps: {
      // The service formats' parse, as the parse pool rejects it.
      parseInbound: async (raw, options) => {
        const subject = /^Subject: (.*)$/m.exec(raw.toString('latin1'))?.[1]?.trim() ?? '';
        if (subject === 'crash') throw new MailhookError('PARSE_CRASHED', 'parsing this message ended the parse thread twice (out of memory, over 512 MB); it is not parsed again');
        if (!failedOnce.has(subject)) {
          failedOnce.add(subject);
          if (subject.startsWith('stopped')) throw new MailhookError('SHUTTING_DOWN', 'the parse threads stopped');
          if (subject.startsWith('slow')) throw new MailhookError('PARSE_TIMEOUT', 'parsing the message took longer than 5000 ms and was abandoned');
        }
        return parseInboundMessage(raw, options);
      },
    },
  });
  try {
    for (const domain of ['mg', 'pm', 'sg']) {
      await sendMail(app.smtpPort, { from: 'a@example.test', to: `c@${domain}.test`, subject: 'crash', text: 'x' });
      await sendMail(app.smtpPort, { from: 'a@example.test', to: `s@${domain}.test`, subject: `stopped ${domain}`, text: 'x' });
      await sendMail(app.smtpPort, { from: 'a@example.test', to: `t@${domain}.test`, subject: `slow ${domain}`, text: 'x' });
    }
    const rows = () => app.spool.db.prepare(`SELECT d.route, d.status, d.attempts, d.last_error, d.recipients FROM deliveries d`).all() as Array<{ route: string; status: string; attempts: number; last_error: string | null; recipients: string }>;
    const of = (who: string) => rows().find((r) => r.recipients.includes(who));
    const formats = { mg: 'mailgun', pm: 'postmark', sg: 'sendgrid' } as const;
    for (const [domain, format] of Object.entries(formats)) {
      const dead = await until(() => (of(`c@${domain}.test`)?.status === 'dead' ? of(`c@${domain}.test`) : undefined), 10_000, `the crashing message of ${format} dead-lettered`);
      assert.equal(dead.attempts, 1);
      assert.match(dead.last_error ?? '', new RegExp(`^cannot build the ${format} payload: parsing this message ended the parse thread twice`));
      for (const who of [`s@${domain}.test`, `t@${domain}.test`]) {
        const delivered = await until(() => (of(who)?.status === 'delivered' ? of(who) : undefined), 10_000, `${who} delivered`);
        assert.equal(delivered.attempts, 2, `${who}: retried once`);
      }
    }
    assert.equal(consumer.requests.length, 6, 'the retried ones, once each; never the crashing ones');
  } finally {
    await app.close();
    await consumer.stop();
  }
});
