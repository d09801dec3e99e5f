// Retention batches walk the finished deliveries with a cursor: each is looked at once per pass, kept ones included.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { Spool } from '../../src/spool/spool.js';
import { Retention } from '../../src/spool/retention.js';
import { createLogger } from '../../src/core/logger.js';
import { tempDir } from '../helpers/app.js';

const DAY = 86_400_000;
const T0 = 1_700_000_000_000;
const log = createLogger({ level: 'silent', destination: new Writable({ write: (_c, _e, cb) => cb() }) });

test('a pass looks at each old finished delivery once, however many it must keep, and removes exactly the expired messages', async () => {
  const dir = tempDir();
  const clock = { t: T0, now() { return this.t; } };
  const spool = new Spool({ path: join(dir, 'spool.db'), inlineMaxBytes: 4096, clock });
  try {
    const accept = (routes: string[]) =>
      spool.accept({
        source: 'smtp',
        envelope: { mailFrom: 'a@x.test', rcptTo: ['u@in.test'], remoteAddress: null, helo: null, tls: null },
        deliveries: routes.map((route) => ({ route, recipients: [{ address: 'u@in.test', key: null }] })),
        body: (async function* () {
          yield Buffer.from('Subject: x\r\n\r\nhi');
        })(),
        maxBytes: 1 << 20,
      });
    const kept: string[] = [];
    const expired: string[] = [];
    let old = 0;
    for (let i = 0; i < 150; i++) {
      // Every fifth message was delivered to both of its routes; the others wait for route b (its consumer is down).
      const both = i % 5 === 0;
      const r = await accept(both ? ['a', 'a2'] : ['a', 'b']);
      (both ? expired : kept).push(r.id);
      old += both ? 2 : 1;
      // All finished at the same millisecond: batches end in the middle of a run of equal finished_at.
      spool.db.prepare(`UPDATE deliveries SET status = 'delivered', finished_at = ? WHERE message_id = ? AND route != 'b'`).run(T0, r.id);
    }
    clock.t = T0 + 8 * DAY;
    const batches: number[] = [];
    const retention = new Retention({ db: spool.db, blobs: spool.blobs, clock, log, onBatch: (n) => batches.push(n) }, { delivered: 7 * DAY, dead: 30 * DAY, interval: DAY, batchSize: 50 });
    const run = await retention.runOnce();
    assert.equal(run.removed, expired.length);
    assert.ok(expired.every((id) => spool.getMessage(id) === undefined));
    assert.ok(kept.every((id) => spool.getMessage(id) !== undefined));
    // 180 old finished deliveries: each read once (a batch query from the start read the kept ones again each batch).
    assert.ok(run.scanned <= old, `scanned ${run.scanned} of ${old}`);
    assert.ok(run.scanned >= old - expired.length, `scanned ${run.scanned}: the second delivery of a removed message may be gone before it is reached`);
    assert.equal((await retention.runOnce()).scanned, kept.length, 'the next pass reads the kept ones once');
  } finally {
    await spool.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
