// One owner per spool: a second Spool (a second `mailhook serve`) is refused before it touches files or leases.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Spool } from '../../src/spool/spool.js';
import { SpoolInUseError } from '../../src/spool/lock.js';
import { SECRET, startTestApp, tempDir, until } from '../helpers/app.js';
import { Consumer } from '../helpers/consumer.js';
import { sendMail } from '../helpers/smtp-client.js';

const envelope = { mailFrom: 'a@example.org', rcptTo: ['x@in.test'], remoteAddress: null, helo: null, tls: null };

test('a second Spool on a spool in use is refused and leaves the file of a message still being received alone', async () => {
  const dir = tempDir('mailhook-lock-');
  const path = join(dir, 'spool.db');
  const a = new Spool({ path, inlineMaxBytes: 1024, clock: { now: () => Date.now() } });
  try {
    let resume!: () => void;
    const gate = new Promise<void>((r) => (resume = r));
    let firstChunk!: () => void;
    const written = new Promise<void>((r) => (firstChunk = r));
    const accepted = a.accept({
      source: 'smtp',
      envelope,
      deliveries: [{ route: 'app', recipients: [{ address: 'x@in.test', key: null }] }],
      body: (async function* () {
        yield Buffer.alloc(4096, 'a');
        firstChunk();
        await gate;
        yield Buffer.alloc(4096, 'b');
      })(),
      maxBytes: 1 << 20,
    });
    await written;
    // The slow sender's file exists, its row does not yet.
    await until(() => a.blobs.list().length === 1, 5000, 'the message file');
    assert.throws(
      () => new Spool({ path, inlineMaxBytes: 1024, clock: { now: () => Date.now() } }),
      (err: unknown) => err instanceof SpoolInUseError && err.message.includes('another mailhook process is using this spool') && err.message.includes(path),
    );
    // Read-only inspection needs no lock.
    const peek = new Database(path, { readonly: true });
    assert.equal((peek.prepare('SELECT COUNT(*) AS n FROM messages').get() as { n: number }).n, 0);
    peek.close();
    resume();
    const r = await accepted;
    assert.equal((await a.readRaw(r.id)).length, 8192, 'the acknowledged message is readable');
  } finally {
    await a.close();
  }
  // Closed: the spool can be opened again.
  const again = new Spool({ path, inlineMaxBytes: 1024, clock: { now: () => Date.now() } });
  await again.close();
  rmSync(dir, { recursive: true, force: true });
});

test('orphan files are removed at open unless written since this process started', async () => {
  const dir = tempDir('mailhook-lock-');
  const path = join(dir, 'spool.db');
  await new Spool({ path, inlineMaxBytes: 1024, clock: { now: () => Date.now() } }).close();
  const blobs = join(dir, 'spool.db.blobs');
  writeFileSync(join(blobs, 'old.eml'), 'left by a crash');
  const old = new Date(performance.timeOrigin - 60_000);
  utimesSync(join(blobs, 'old.eml'), old, old);
  writeFileSync(join(blobs, 'new.eml'), 'written since this process started');
  const spool = new Spool({ path, inlineMaxBytes: 1024, clock: { now: () => Date.now() } });
  try {
    assert.equal(existsSync(join(blobs, 'old.eml')), false, 'an orphan from before this process is removed');
    assert.equal(existsSync(join(blobs, 'new.eml')), true, 'a file written since this process started is kept');
  } finally {
    await spool.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a second app on the same spool fails to start and leaves the running app\'s lease alone', async () => {
  const consumer = new Consumer();
  await consumer.start();
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  consumer.respond = async () => {
    await held;
    return { status: 200 };
  };
  const routes = `
  - name: app
    addresses: ["*@app.test"]
    webhook: { url: "http://127.0.0.1:${consumer.port}/hook", secret: "${SECRET}" }
`;
  const a = await startTestApp({ routes });
  try {
    await sendMail(a.smtpPort, { from: 'a@example.test', to: 'one@app.test', subject: 'held', text: 'one' });
    await consumer.received(1);
    const before = a.spool.db.prepare(`SELECT status, lease_token FROM deliveries`).all();
    await assert.rejects(startTestApp({ routes, dir: a.dir }), (err: unknown) => err instanceof SpoolInUseError);
    assert.deepEqual(a.spool.db.prepare(`SELECT status, lease_token FROM deliveries`).all(), before, 'still leased by the running app');
    release();
    await until(() => a.spool.jobs.counts().delivered === 1, 5000, 'delivered');
    assert.equal(consumer.requests.length, 1);
  } finally {
    release();
    await a.close();
    await consumer.stop();
  }
});
