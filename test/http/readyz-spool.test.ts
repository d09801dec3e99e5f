// /readyz answers 503 while the spool cannot be written (README "Operations"). The tests run as root, so chmod
// cannot make the file unwritable and no small full file system is at hand; what does make it unwritable, for
// real, is another SQLite connection holding the database's write lock (BEGIN IMMEDIATE; a second writer, or a
// stuck sqlite3 shell on the spool, in production): mailhook's write probe then fails after its short wait for
// the lock (src/spool/spool.ts isWritable), as an accept would after the connection's busy_timeout.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { startTestApp, type TestApp } from '../helpers/app.js';

test('readyz is 503 with spool_writable false while another connection holds the spool\'s write lock, 200 again once it lets go', async () => {
  let app: TestApp | undefined;
  let other: Database.Database | undefined;
  try {
    app = await startTestApp({ routes: `
  - name: keep
    addresses: ["*@sink.test"]
    sink: true
` });
    const before = await fetch(`${app.httpUrl}/readyz`);
    assert.equal(before.status, 200);

    other = new Database(join(app.dir, 'spool.db'));
    other.pragma('busy_timeout = 0');
    other.exec('BEGIN IMMEDIATE');

    const locked = await fetch(`${app.httpUrl}/readyz`);
    assert.equal(locked.status, 503);
    const body = (await locked.json()) as { status: string; checks: Record<string, boolean> };
    assert.equal(body.status, 'not ready');
    assert.equal(body.checks.spool_writable, false);
    assert.equal(body.checks.smtp_listening, true, 'only the spool check fails');
    // Liveness is not readiness.
    assert.equal((await fetch(`${app.httpUrl}/healthz`)).status, 200);

    // The probe left the connection's own wait for a lock as it was.
    assert.equal(app.spool.db.pragma('busy_timeout', { simple: true }), 5000);
    other.exec('ROLLBACK');
    const after = await fetch(`${app.httpUrl}/readyz`);
    assert.equal(after.status, 200);
    assert.equal(((await after.json()) as { checks: Record<string, boolean> }).checks.spool_writable, true);
  } finally {
    if (other?.inTransaction) other.exec('ROLLBACK');
    other?.close();
    await app?.close();
  }
});
