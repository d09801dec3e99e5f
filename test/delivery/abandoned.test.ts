// Deliveries left in flight by a process that ended: resumed after their backoff, or dead-lettered at max_attempts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Spool } from '../../src/spool/spool.js';
import { Consumer } from '../helpers/consumer.js';
import { SECRET, startTestApp, tempDir, until } from '../helpers/app.js';

test('at start, a delivery whose process died during its last allowed attempt is dead-lettered, not sent again', async () => {
  const consumer = await new Consumer().start();
  const dir = tempDir();
  // The state a process killed mid-attempt leaves: leased ('delivering'); here on its 5th attempt of max_attempts 5.
  const spool = new Spool({ path: join(dir, 'spool.db'), inlineMaxBytes: 65536, clock: { now: () => Date.now() } });
  const accepted = await Promise.all(
    ['last', 'second'].map((subject) =>
      spool.accept({
        source: 'smtp',
        envelope: { mailFrom: 'a@example.org', rcptTo: ['x@app.test'], remoteAddress: null, helo: null, tls: null },
        deliveries: [{ route: 'app', recipients: [{ address: 'x@app.test', key: null }] }],
        body: (async function* () {
          yield Buffer.from(`Subject: ${subject}\r\n\r\nhi\r\n`);
        })(),
        maxBytes: 1 << 20,
      }),
    ),
  );
  const [last, second] = accepted.map((r) => r.deliveryIds[0]!) as [string, string];
  assert.equal(spool.jobs.leaseDue(Date.now(), 16, 600_000).length, 2);
  spool.db.prepare(`UPDATE deliveries SET attempts = 5 WHERE id = ?`).run(last);
  spool.db.prepare(`UPDATE deliveries SET attempts = 2 WHERE id = ?`).run(second);
  await spool.close();

  const app = await startTestApp({ dir, routes: `
  - name: app
    addresses: ["*@app.test"]
    webhook: { url: "${consumer.url}", secret: "${SECRET}" }
` });
  try {
    const dead = app.spool.getDelivery(last)!;
    assert.equal(dead.status, 'dead');
    assert.match(dead.lastError ?? '', /gave up after 5 attempts: the process ended during attempt 5/);
    assert.ok(app.logs.some((l) => JSON.parse(l).msg === 'delivery dead-lettered' && JSON.parse(l).deliveryId === last));
    // The other one is retried after its backoff (test config: 50-200 ms), and is the only request.
    await until(() => app.spool.getDelivery(second)?.status === 'delivered', 5000, 'the resumed delivery');
    assert.equal(consumer.requests.length, 1);
    assert.equal(app.spool.getDelivery(second)!.attempts, 3);
  } finally {
    await app.close();
    await consumer.stop();
  }
});
