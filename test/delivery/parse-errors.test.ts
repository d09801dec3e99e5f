// How a delivery takes the parse pool's errors: a crash on the message dead-letters it, a stopped pool retries.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Consumer } from '../helpers/consumer.js';
import { sendMail } from '../helpers/smtp-client.js';
import { SECRET, startTestApp, until } from '../helpers/app.js';
import { MailhookError } from '../../src/core/errors.js';
import { parseMessageJson } from '../../src/parse/message.js';

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
