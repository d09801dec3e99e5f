// MailboxIngest without a server: which failed accepts make a stored copy unsure (a refused message does not).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { ImapMailboxSettings } from '../../src/config/mailboxes.js';
import { MailhookError } from '../../src/core/errors.js';
import { createMetrics } from '../../src/core/metrics.js';
import { MailboxIngest, ingestLimits } from '../../src/imap/ingest.js';
import { Router } from '../../src/routing/router.js';
import { Spool } from '../../src/spool/spool.js';
import { configYaml, parseTestConfig, tempDir } from '../helpers/app.js';
import { imapBlock, message, routesYaml } from './setup.js';

function rig() {
  const dir = tempDir();
  const mailbox = `
  - name: box
    host: 127.0.0.1
    port: 9
    ssl: false
    user: u
    password: p
`;
  const config = parseTestConfig(configYaml({ dir, routes: routesYaml('http://127.0.0.1:9/unused'), extra: imapBlock(mailbox) }), dir);
  const spool = new Spool({ path: join(dir, 'spool.db'), inlineMaxBytes: 65536, clock: { now: () => Date.now() } });
  const ingest = new MailboxIngest({ router: new Router(config.routes), routes: config.routes, spool, metrics: createMetrics(), maxBytes: 400, limits: ingestLimits(config.smtp.limits) }, config.imap[0] as ImapMailboxSettings, 'imap');
  const take = (raw: string, key: string) => {
    const bytes = Buffer.from(raw);
    const plan = ingest.plan(bytes);
    assert.equal(plan.kind, 'deliver');
    return ingest.accept(plan as Extract<typeof plan, { kind: 'deliver' }>, Readable.from([bytes]), key, {});
  };
  return { spool, ingest, take };
}

test('a message refused as too large does not make stored copies unsure; a spool failure makes only its own key unsure', async () => {
  const { spool, ingest, take } = rig();
  try {
    const kept = message('kept', { to: 'desk@in.test', messageId: 'kept@x' });
    await take(kept, 'imap:box:mid:<kept@x>:1');
    assert.equal(await ingest.holdsCopy(Buffer.from(kept), 'kept@x'), true);

    // Too large: refused, nothing committed; the copy above is still recognised by its bytes.
    await assert.rejects(take(message('big', { to: 'desk@in.test', body: 'x'.repeat(1000) }), 'imap:box:mid:<big@example.test>:1'), (err: MailhookError) => err.code === 'MESSAGE_TOO_LARGE');
    assert.equal(await ingest.holdsCopy(Buffer.from(kept), 'kept@x'), true, 'a refused message does not turn the byte comparison off');

    // The spool fails after the commit (a failed WAL sync): that row is not taken as held, the others still are.
    const synced = message('synced', { to: 'desk@in.test', messageId: 'synced@x' });
    const accept = spool.accept.bind(spool);
    spool.accept = async (input) => {
      await accept(input);
      throw new MailhookError('SPOOL_UNAVAILABLE', 'spool sync failed: EIO');
    };
    await assert.rejects(take(synced, 'imap:box:mid:<synced@x>:1'));
    spool.accept = accept;
    assert.equal(ingest.isCommitted('imap:box:mid:<synced@x>:1'), false);
    assert.equal(await ingest.holdsCopy(Buffer.from(synced), 'synced@x'), false, 'perhaps not on disk');
    assert.equal(await ingest.holdsCopy(Buffer.from(kept), 'kept@x'), true);
  } finally {
    await spool.close();
  }
});
