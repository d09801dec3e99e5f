// The accept path's durability order and group commit: commit, then WAL sync, then resolve; concurrent messages share both.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Acceptor, type AcceptInput, type AcceptorOptions } from '../../src/spool/accept.js';
import { BlobStore, dropWritten } from '../../src/spool/blobs.js';
import { openDatabase, WAL_SIZE_LIMIT_BYTES, type Db } from '../../src/spool/db.js';
import { CoalescedSync } from '../../src/spool/fsync.js';
import { MailhookError } from '../../src/core/errors.js';
import { Spool } from '../../src/spool/spool.js';
import { tempDir, until } from '../helpers/app.js';

interface Rig {
  dir: string;
  db: Db;
  blobs: BlobStore;
  acceptor: Acceptor;
  /** a second connection, as another process would see the file */
  peek(sql: string, ...args: unknown[]): unknown;
  close(): Promise<void>;
}

function rig(options: AcceptorOptions = {}, inlineMaxBytes = 4096): Rig {
  const dir = tempDir('mailhook-accept-');
  const path = join(dir, 'spool.db');
  const db = openDatabase(path);
  const blobs = new BlobStore(join(dir, 'blobs'));
  const acceptor = new Acceptor(db, blobs, { now: () => Date.now() }, inlineMaxBytes, { checkpoint: false, ...options });
  const other = new Database(path, { readonly: true });
  return {
    dir,
    db,
    blobs,
    acceptor,
    peek: (sql, ...args) => other.prepare(sql).get(...args),
    async close() {
      await acceptor.close();
      other.close();
      db.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Every file below dir (none when it does not exist). */
function listFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((f) => statSync(join(dir, f)).isFile());
}

function input(body: string | Buffer, extra: Partial<AcceptInput> = {}): AcceptInput {
  const bytes = typeof body === 'string' ? Buffer.from(body) : body;
  return {
    source: 'smtp',
    envelope: { mailFrom: 'a@b.test', rcptTo: ['x@in.test'], remoteAddress: '127.0.0.1', helo: 'c', tls: null },
    deliveries: [{ route: 'r', recipients: [{ address: 'x@in.test', key: null }] }],
    body: (async function* () {
      yield bytes;
    })(),
    maxBytes: 50 * 1024 * 1024,
    ...extra,
  };
}

const messageCount = (r: Rig) => (r.peek('SELECT COUNT(*) AS n FROM messages') as { n: number }).n;

test('concurrent accepts ready in the same turn share one transaction and one WAL sync', async () => {
  const batches: number[] = [];
  let syncs = 0;
  const r = rig({
    onBatch: (n) => batches.push(n),
    syncWal: (done) => {
      syncs++;
      setImmediate(() => done(null));
    },
  });
  try {
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => r.acceptor.accept(input(`Subject: ${i}\r\n\r\nbody ${i}\r\n`))));
    assert.deepEqual(batches, [20]);
    assert.equal(syncs, 1);
    assert.equal(new Set(results.map((x) => x.id)).size, 20);
    assert.equal(messageCount(r), 20);
    const d = r.peek('SELECT COUNT(*) AS n FROM deliveries WHERE received_at IS NOT NULL') as { n: number };
    assert.equal(d.n, 20, 'deliveries carry the message received_at');
  } finally {
    await r.close();
  }
});

test('accept resolves only after the WAL sync that follows the commit, and delivery is woken only then', async () => {
  const events: string[] = [];
  let release: (() => void) | undefined;
  const r = rig({
    syncWal: (done) => {
      // The commit is already visible to another connection when the sync starts.
      events.push(`sync-start rows=${messageCount(r)}`);
      release = () => {
        events.push('sync-done');
        done(null);
      };
    },
  });
  r.acceptor.onCommitted = (ids) => events.push(`committed ${ids.length}`);
  try {
    let resolved = false;
    const p = r.acceptor.accept(input('Subject: one\r\n\r\nx\r\n')).then((res) => {
      resolved = true;
      events.push('resolved');
      return res;
    });
    await until(() => release !== undefined, 5000, 'the WAL sync to start');
    await new Promise((res) => setImmediate(res));
    assert.equal(resolved, false, 'no 250 before the sync finished');
    release!();
    const res = await p;
    assert.deepEqual(events, ['sync-start rows=1', 'sync-done', 'committed 1', 'resolved']);
    assert.ok(r.peek('SELECT id FROM messages WHERE id = ?', res.id));
  } finally {
    await r.close();
  }
});

test('with one sync in flight the next messages gather and commit together once it is done', async () => {
  const batches: number[] = [];
  const pending: Array<() => void> = [];
  const r = rig({
    maxSyncsInFlight: 1,
    onBatch: (n) => batches.push(n),
    syncWal: (done) => pending.push(() => done(null)),
  });
  try {
    const first = r.acceptor.accept(input('Subject: first\r\n\r\nx\r\n'));
    await until(() => pending.length === 1, 5000, 'first sync');
    const more = Array.from({ length: 5 }, (_, i) => r.acceptor.accept(input(`Subject: m${i}\r\n\r\nx\r\n`)));
    await new Promise((res) => setImmediate(res));
    await new Promise((res) => setImmediate(res));
    assert.deepEqual(batches, [1], 'nothing else is committed while the sync runs');
    assert.equal(messageCount(r), 1);
    pending.shift()!();
    await first;
    await until(() => pending.length === 1, 5000, 'second sync');
    assert.deepEqual(batches, [1, 5]);
    pending.shift()!();
    assert.equal((await Promise.all(more)).length, 5);
  } finally {
    await r.close();
  }
});

test('a failed WAL sync answers every message of the batch with SPOOL_UNAVAILABLE', async () => {
  const r = rig({ syncWal: (done) => setImmediate(() => done(Object.assign(new Error('EIO: i/o error'), { code: 'EIO' }))) });
  try {
    const results = await Promise.allSettled([r.acceptor.accept(input('Subject: a\r\n\r\nx\r\n')), r.acceptor.accept(input('Subject: b\r\n\r\nx\r\n'))]);
    for (const x of results) {
      assert.equal(x.status, 'rejected');
      assert.ok(x.status === 'rejected' && x.reason instanceof MailhookError && x.reason.code === 'SPOOL_UNAVAILABLE');
    }
  } finally {
    await r.close();
  }
});

test('a failed WAL sync keeps the file of a committed file-backed message (its delivery runs); a message never committed leaves no file', async () => {
  const r = rig({ syncWal: (done) => setImmediate(() => done(Object.assign(new Error('EIO: i/o error'), { code: 'EIO' }))) }, 16);
  try {
    const big = 'Subject: big\r\n\r\n' + 'x'.repeat(100) + '\r\n';
    const failed = await Promise.allSettled([r.acceptor.accept(input(big))]);
    assert.ok(failed[0]!.status === 'rejected' && failed[0]!.reason instanceof MailhookError && failed[0]!.reason.code === 'SPOOL_UNAVAILABLE', '451 to the client');
    // The row is committed (only its durability is unknown), so the delivery will run: its file must be there.
    const row = r.db.prepare('SELECT raw_file FROM messages').get() as { raw_file: string | null };
    assert.ok(row.raw_file, 'file-backed');
    assert.ok(existsSync(r.blobs.pathOf(row.raw_file)), 'the committed message keeps its file');
    const d = r.db.prepare('SELECT status FROM deliveries').get() as { status: string };
    assert.equal(d.status, 'pending');
  } finally {
    await r.close();
  }
  // Never committed (the spool closed first): the file goes.
  const c = rig({}, 16);
  try {
    const accepting = c.acceptor.accept(input('Subject: late\r\n\r\n' + 'y'.repeat(100) + '\r\n'));
    void c.acceptor.close();
    await assert.rejects(accepting, (e: unknown) => e instanceof MailhookError && e.code === 'SPOOL_CLOSED');
    assert.equal((c.db.prepare('SELECT COUNT(*) AS n FROM messages').get() as { n: number }).n, 0);
    assert.deepEqual(listFiles(join(c.dir, 'blobs')), [], 'no file left behind');
  } finally {
    await c.close();
  }
});

test('close() settles a batch whose sync is in flight and commits queued messages with synchronous=FULL', async () => {
  const pending: Array<() => void> = [];
  const r = rig({ maxSyncsInFlight: 1, syncWal: (done) => pending.push(() => done(null)) });
  try {
    const first = r.acceptor.accept(input('Subject: first\r\n\r\nx\r\n'));
    await until(() => pending.length === 1, 5000, 'first sync');
    const second = r.acceptor.accept(input('Subject: second\r\n\r\nx\r\n'));
    await new Promise((res) => setImmediate(res));
    r.acceptor.close();
    const [a, b] = await Promise.all([first, second]);
    assert.ok(r.peek('SELECT id FROM messages WHERE id = ?', a.id));
    assert.ok(r.peek('SELECT id FROM messages WHERE id = ?', b.id));
    assert.equal(r.db.pragma('synchronous', { simple: true }), 2, 'the connection is back to FULL');
    pending.shift()!(); // the late threadpool callback changes nothing
    await assert.rejects(r.acceptor.accept(input('Subject: late\r\n\r\nx\r\n')), (e: unknown) => e instanceof MailhookError && e.code === 'SPOOL_CLOSED');
  } finally {
    await r.close();
  }
});

test('a large message is a file, fdatasynced and its folder synced, before the commit that names it', async () => {
  const events: string[] = [];
  const r = rig({
    syncWal: (done) => {
      events.push('wal-sync');
      done(null);
    },
  }, 1024);
  const create = r.blobs.create.bind(r.blobs);
  r.blobs.create = async (name) => {
    const w = await create(name);
    const finish = w.finish.bind(w);
    w.finish = async () => {
      await finish();
      events.push(`file-synced rows=${messageCount(r)}`);
    };
    return w;
  };
  const dirSyncsBefore = r.blobs.dirSync.count;
  const fileSyncsBefore = r.blobs.fileSyncs;
  try {
    const chunks = Array.from({ length: 40 }, (_, i) => Buffer.from(`${String(i).padStart(4, '0')}${'z'.repeat(8186)}\r\n`));
    const res = await r.acceptor.accept({
      ...input(''),
      body: (async function* () {
        yield* chunks;
      })(),
    });
    assert.deepEqual(events, ['file-synced rows=0', 'wal-sync']);
    assert.equal(r.blobs.dirSync.count, dirSyncsBefore + 1);
    assert.equal(r.blobs.fileSyncs, fileSyncsBefore + 1, 'the message file was fdatasynced');
    const row = r.peek('SELECT raw, raw_file, size FROM messages WHERE id = ?', res.id) as { raw: Buffer | null; raw_file: string; size: number };
    assert.equal(row.raw, null);
    assert.equal(row.size, 40 * 8192);
    assert.ok(existsSync(r.blobs.pathOf(row.raw_file)));
    const stored = await new Promise<Buffer>((resolve, reject) => {
      const parts: Buffer[] = [];
      r.blobs.openRead(row.raw_file).on('data', (c) => parts.push(c as Buffer)).on('end', () => resolve(Buffer.concat(parts))).on('error', reject);
    });
    assert.ok(stored.equals(Buffer.concat(chunks)), 'the file holds exactly the bytes received');
  } finally {
    await r.close();
  }
});

test('the default path fdatasyncs the real WAL file and the rows are there for another connection', async () => {
  let batches = 0;
  const r = rig({ checkpoint: false, onBatch: () => batches++ });
  try {
    const res = await Promise.all(Array.from({ length: 5 }, (_, i) => r.acceptor.accept(input(`Subject: ${i}\r\n\r\nx\r\n`))));
    for (const x of res) assert.ok(r.peek('SELECT id FROM messages WHERE id = ?', x.id));
    assert.ok(batches >= 1);
    assert.equal(r.acceptor.walSyncs, batches, 'one fdatasync of the WAL per committed batch, each finished before its accepts resolved');
    await r.acceptor.accept(input('Subject: alone\r\n\r\nx\r\n'));
    assert.equal(r.acceptor.walSyncs, batches);
    assert.equal(r.db.pragma('synchronous', { simple: true }), 2);
  } finally {
    await r.close();
  }
});

test('checkpoints run on the worker thread: the main connection does none, the WAL is copied into the database', async () => {
  const r = rig({ checkpoint: { intervalMs: 10 } });
  try {
    assert.equal(r.db.pragma('wal_autocheckpoint', { simple: true }), 0);
    await Promise.all(Array.from({ length: 50 }, (_, i) => r.acceptor.accept(input(`Subject: ${i}\r\n\r\n${'q'.repeat(2000)}\r\n`))));
    const cp = r.acceptor.checkpointer!;
    const runs = cp.runs;
    await until(() => cp.runs > runs, 10_000, 'a checkpoint after the writes');
    assert.equal(cp.lastError, undefined);
    // Everything in the WAL has been copied: a PASSIVE checkpoint from here finds nothing left to do.
    const check = new Database(join(r.dir, 'spool.db'));
    try {
      const row = check.pragma('wal_checkpoint(PASSIVE)') as Array<{ busy: number; log: number; checkpointed: number }>;
      assert.equal(row[0]!.log, row[0]!.checkpointed);
    } finally {
      check.close();
    }
  } finally {
    await r.close();
  }
});

test('a WAL grown past WAL_SIZE_LIMIT_BYTES by a burst is cut back to it once a checkpoint has caught up', () => {
  const dir = tempDir();
  const path = join(dir, 'spool.db');
  const db = openDatabase(path);
  try {
    db.pragma('wal_autocheckpoint = 0'); // as the acceptor runs it: checkpoints come from the checkpoint thread
    db.exec('CREATE TABLE burst (b BLOB)');
    const insert = db.prepare('INSERT INTO burst VALUES (?)');
    db.transaction(() => {
      for (let i = 0; i < WAL_SIZE_LIMIT_BYTES / 65536 + 64; i++) insert.run(Buffer.alloc(65536, i));
    })();
    assert.ok(statSync(`${path}-wal`).size > WAL_SIZE_LIMIT_BYTES);
    db.pragma('wal_checkpoint(PASSIVE)');
    insert.run(Buffer.alloc(10)); // the writer starts the WAL again from its beginning, and truncates it
    assert.ok(statSync(`${path}-wal`).size <= WAL_SIZE_LIMIT_BYTES, `WAL ${statSync(`${path}-wal`).size} bytes`);
  } finally {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a new spool is readable by its owner alone whatever the umask: database, WAL, message files and their folders', async () => {
  const dir = tempDir('mailhook-modes-');
  const umask = process.umask(0o022);
  const path = join(dir, 'new', 'spool.db');
  const spool = new Spool({ path, inlineMaxBytes: 4096, clock: { now: () => Date.now() } });
  try {
    await spool.accept(input('Subject: small\r\n\r\nhi\r\n'));
    await spool.accept(input(`Subject: large\r\n\r\n${'x'.repeat(10_000)}\r\n`));
    const blobs = readdirSync(`${path}.blobs`);
    assert.equal(blobs.length, 1, 'the large message is in a file');
    const mode = (p: string) => (statSync(p).mode & 0o777).toString(8);
    assert.deepEqual(
      [mode(join(dir, 'new')), mode(path), mode(`${path}-wal`), mode(`${path}-shm`), mode(`${path}.blobs`), mode(join(`${path}.blobs`, blobs[0]!))],
      ['700', '600', '600', '600', '700', '600'],
    );
  } finally {
    await spool.close();
    process.umask(umask);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('readRaw gives a file-backed message\'s bytes exactly, read in pieces: sizes below, at and past a piece, not a multiple of one', async () => {
  const dir = tempDir('mailhook-readraw-');
  const spool = new Spool({ path: join(dir, 'spool.db'), inlineMaxBytes: 4096, clock: { now: () => Date.now() } });
  try {
    for (const size of [5000, 65_536, 65_537, 300_001]) {
      const body = Buffer.alloc(size);
      for (let i = 0; i < size; i++) body[i] = 0x20 + ((i * 7 + (i >> 9)) % 90); // printable, varied, no line ends
      const raw = Buffer.concat([Buffer.from('Subject: pieces\r\n\r\n'), body, Buffer.from('\r\n')]);
      const { id } = await spool.accept(input(raw));
      assert.equal(spool.getMessage(id)?.size, raw.length);
      assert.ok((await spool.readRaw(id)).equals(raw), `${raw.length} bytes read back`);
    }
  } finally {
    await spool.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('Spool.close() resolves once the checkpoint thread has closed its connection: the files are left alone after it', async () => {
  const dir = tempDir('mailhook-close-');
  try {
    const path = join(dir, 'spool.db');
    const spool = new Spool({ path, inlineMaxBytes: 4096, clock: { now: () => Date.now() } });
    await spool.accept(input('Subject: x\r\n\r\nhi\r\n'));
    assert.ok(existsSync(`${path}-wal`), 'the accepted message is in the WAL');
    // The thread has its connection open once it has looked at the database (its first look counts as a run).
    await until(() => spool.acceptor.checkpointer!.runs > 0, 10_000, 'the checkpoint thread connected');
    await spool.close();
    // The checkpoint thread's connection is the last to close: SQLite checkpoints the WAL and removes it then.
    // Had close() resolved before that, the file would still be there (and a clean-up could race the thread).
    assert.equal(existsSync(`${path}-wal`), false, 'the WAL is removed by the last connection, before close() resolves');
    assert.equal(spool.close(), spool.close(), 'closing again returns the same promise');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('CoalescedSync: callers during a sync share the next one; each waits for a sync that started after it', async () => {
  const started: Array<() => void> = [];
  const s = new CoalescedSync(() => new Promise<void>((resolve) => started.push(resolve)));
  const order: string[] = [];
  const a = s.sync().then(() => order.push('a'));
  assert.equal(started.length, 1);
  const b = s.sync().then(() => order.push('b'));
  const c = s.sync().then(() => order.push('c'));
  assert.equal(started.length, 1, 'b and c wait; they do not start a sync of their own yet');
  started[0]!();
  await a;
  await until(() => started.length === 2, 5000, 'the shared second sync');
  assert.deepEqual(order, ['a']);
  started[1]!();
  await Promise.all([b, c]);
  assert.deepEqual(order, ['a', 'b', 'c']);
  assert.equal(s.count, 2);
});

test('dropWritten keeps exactly the bytes a short writev left', () => {
  const chunks = [Buffer.from('abc'), Buffer.from('defg'), Buffer.from('hi')];
  assert.deepEqual(dropWritten(chunks, 0).map(String), ['abc', 'defg', 'hi']);
  assert.deepEqual(dropWritten(chunks, 3).map(String), ['defg', 'hi']);
  assert.deepEqual(dropWritten(chunks, 5).map(String), ['fg', 'hi']);
  assert.deepEqual(dropWritten(chunks, 9).map(String), []);
});
