// backupSpool against a database another connection keeps writing to, as a busy server does: it finishes, and the copy is consistent.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { backupSpool } from '../../src/spool/backup.js';
import { tempDir } from '../helpers/app.js';

test('a backup of a database written to every millisecond by another connection finishes, with a consistent copy', async () => {
  const dir = tempDir();
  const path = join(dir, 'spool.db');
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.exec(`CREATE TABLE messages (id TEXT PRIMARY KEY, raw_file TEXT, raw BLOB); CREATE TABLE ticks (n INTEGER)`);
  // ~24 MB: thousands of pages, so a copy in steps of 100 pages takes many turns of the event loop.
  const insert = db.prepare(`INSERT INTO messages (id, raw_file, raw) VALUES (?, NULL, ?)`);
  db.transaction(() => {
    for (let i = 0; i < 400; i++) insert.run(`m${i}`, Buffer.alloc(60_000, i % 251));
  })();
  const tick = db.prepare(`INSERT INTO ticks (n) VALUES (?)`);
  let n = 0;
  const writer = setInterval(() => tick.run(n++), 1);
  try {
    const result = await Promise.race([
      backupSpool(path, join(dir, 'copy', 'spool.db')),
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error('the backup did not finish within 20 s while the database was written to')), 20_000)),
    ]);
    assert.equal(result.messages, 400);
    assert.ok(n > 0, 'the writer ran');
    const copy = new Database(join(dir, 'copy', 'spool.db'), { readonly: true });
    try {
      assert.equal(copy.pragma('integrity_check', { simple: true }), 'ok');
      assert.equal(copy.prepare(`SELECT COUNT(*) FROM messages`).pluck().get(), 400);
    } finally {
      copy.close();
    }
  } finally {
    clearInterval(writer);
    db.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
