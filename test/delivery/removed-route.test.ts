// A route removed from the configuration: its pending deliveries become dead letters at the next start (README),
// even those waiting out a long backoff, with the reason and no request counted; a replay after it is back sends them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Spool } from '../../src/spool/spool.js';
import { Consumer } from '../helpers/consumer.js';
import { SECRET, startTestApp, tempDir } from '../helpers/app.js';

test('pending deliveries of a removed route are dead-lettered at start, with the reason and no attempt counted', async () => {
  const consumer = await new Consumer().start();
  const dir = tempDir();
  const spool = new Spool({ path: join(dir, 'spool.db'), inlineMaxBytes: 65536, clock: { now: () => Date.now() } });
  const accepted = await spool.accept({
    source: 'smtp',
    envelope: { mailFrom: 'a@example.org', rcptTo: ['x@old.test', 'y@app.test'], remoteAddress: null, helo: null, tls: null },
    deliveries: [
      { route: 'old', recipients: [{ address: 'x@old.test', key: null }] },
      { route: 'app', recipients: [{ address: 'y@app.test', key: null }] },
    ],
    body: (async function* () {
      yield Buffer.from('Subject: s\r\n\r\nhi\r\n');
    })(),
    maxBytes: 1 << 20,
  });
  const [oldId, appId] = accepted.deliveryIds as [string, string];
  // Waiting out an hour's backoff after three failed attempts, as after a consumer outage.
  spool.db.prepare(`UPDATE deliveries SET attempts = 3, next_attempt_at = ? WHERE id = ?`).run(Date.now() + 3_600_000, oldId);
  await spool.close();
  const app = await startTestApp({ dir, routes: `\n  - name: app\n    addresses: ["*@app.test"]\n    webhook: { url: "${consumer.url}", secret: "${SECRET}" }\n` });
  try {
    const dead = app.spool.getDelivery(oldId)!;
    assert.equal(dead.status, 'dead');
    assert.equal(dead.attempts, 3, 'no request was made: none counted');
    assert.equal(dead.lastError, 'route "old" no longer exists in the configuration');
    const rows = app.spool.db.prepare(`SELECT attempt, outcome, error FROM attempts WHERE delivery_id = ?`).all(oldId);
    assert.deepEqual(rows, [{ attempt: 3, outcome: 'dead', error: 'route "old" no longer exists in the configuration' }]);
    const line = app.logs.map((l) => JSON.parse(l) as { msg: string; route?: string; deliveries?: number }).find((l) => l.route === 'old' && l.deliveries !== undefined);
    assert.equal(line?.msg, 'route "old" is no longer in the configuration: its 1 pending deliveries are dead-lettered (replay them once a route serves them again; a renamed route keeps them with renamed_from)');
    const metrics = await (await fetch(`${app.httpUrl}/metrics`)).text();
    assert.match(metrics, /^mailhook_deliveries_total\{route="old",outcome="dead"\} 1$/m);
    // The configured route's delivery is untouched and delivered.
    await consumer.received(1);
    assert.notEqual(app.spool.getDelivery(appId)!.status, 'dead');
  } finally {
    await app.close();
    await consumer.stop();
  }
});
