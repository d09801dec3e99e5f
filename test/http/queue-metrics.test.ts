// The queue metrics per route over real HTTP: depth by route and status, and the age of the oldest undelivered message.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Consumer } from '../helpers/consumer.js';
import { sendMail } from '../helpers/smtp-client.js';
import { configYaml, SECRET, startTestApp, type TestApp } from '../helpers/app.js';

let app: TestApp;
const up = new Consumer();
const down = new Consumer();
/** added to the app's clock: how far it has moved on */
let offsetMs = 0;

before(async () => {
  await up.start();
  await down.start();
  down.respond = () => ({ status: 503, body: 'maintenance' });
  const routes = `
  - name: up
    addresses: ["up@q.test"]
    webhook: { url: "${up.url}", secret: "${SECRET}" }
  - name: down
    addresses: ["down@q.test"]
    webhook: { url: "${down.url}", secret: "${SECRET}" }
  - name: idle
    addresses: ["idle@q.test"]
    webhook: { url: "${up.url}", secret: "${SECRET}" }
`;
  // A failed delivery waits an hour for its next attempt, so it stays pending while the clock moves on.
  const yaml = (dir: string) => configYaml({ routes, dir }).replace('initial_delay_ms: 50', 'initial_delay_ms: 3600000').replace('max_delay_ms: 200', 'max_delay_ms: 7200000');
  app = await startTestApp({ routes, yaml, deps: { clock: { now: () => Date.now() + offsetMs } } });
});
after(async () => {
  await app.close();
  await up.stop();
  await down.stop();
});

async function scrape(): Promise<string> {
  return (await fetch(`${app.httpUrl}/metrics`)).text();
}

function value(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

test('queue depth by route and status; the oldest undelivered message of each route by age', async () => {
  await sendMail(app.smtpPort, { from: 'a@s.test', to: 'up@q.test', subject: 'fine', text: 'x' });
  await sendMail(app.smtpPort, { from: 'a@s.test', to: 'down@q.test', subject: 'stuck', text: 'y' });
  await up.waitFor(1);
  await down.waitFor(1);
  let text = '';
  for (const start = Date.now(); ; ) {
    text = await scrape();
    if (value(text, 'mailhook_queue_depth{route="down",status="pending"}') === 1 && value(text, 'mailhook_queue_depth{route="up",status="delivered"}') === 1) break;
    if (Date.now() - start > 10_000) assert.fail(`the deliveries did not settle:\n${text}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  // Every configured route has its series, zeros included (an alert on a route's pending count needs it there).
  for (const status of ['pending', 'delivering', 'delivered', 'dead', 'dropped']) assert.equal(value(text, `mailhook_queue_depth{route="idle",status="${status}"}`), 0, status);
  assert.equal(value(text, 'mailhook_queue_depth{route="up",status="pending"}'), 0);
  assert.equal(value(text, 'mailhook_queue_depth{route="down",status="delivered"}'), 0);
  assert.equal(value(text, 'mailhook_oldest_undelivered_seconds{route="up"}'), 0);
  assert.equal(value(text, 'mailhook_oldest_undelivered_seconds{route="idle"}'), 0);
  // Every outcome's counter is there from the start (an increase() alert misses a series that appears at 1).
  for (const outcome of ['delivered', 'retry', 'dead', 'dropped']) assert.equal(value(text, `mailhook_deliveries_total{route="idle",outcome="${outcome}"}`), 0, outcome);
  assert.equal(value(text, 'mailhook_deliveries_total{route="down",outcome="dead"}'), 0);
  const fresh = value(text, 'mailhook_oldest_undelivered_seconds{route="down"}');
  assert.ok(fresh !== undefined && fresh > 0 && fresh < 60, `a message just received is seconds old: ${fresh}`);

  // Two minutes later the stuck message is two minutes old; the delivered one still counts nothing.
  offsetMs = 120_000;
  text = await scrape();
  const later = value(text, 'mailhook_oldest_undelivered_seconds{route="down"}');
  assert.ok(later !== undefined && later >= 120 && later < 180, `two minutes on: ${later}`);
  assert.equal(value(text, 'mailhook_oldest_undelivered_seconds{route="up"}'), 0);
  assert.equal(down.requests.length, 1, 'no second attempt: the retry is an hour away');
});
