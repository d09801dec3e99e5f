// Spool ownership: an exclusive SQLite lock on a file beside the spool, held until close; the kernel drops it when the process dies.
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { MailhookError } from '../core/errors.js';

/** Another process (or another Spool in this one) owns the spool: starting would delete its files and steal its leases. */
export class SpoolInUseError extends MailhookError {
  constructor(
    readonly spoolPath: string,
    readonly lockPath: string,
    cause: unknown,
  ) {
    super(
      'SPOOL_UNAVAILABLE',
      `another mailhook process is using this spool (spool.path ${spoolPath}; its lock ${lockPath} is held): stop that process first, or give this one its own spool.path`,
      { cause, userFault: true },
    );
    this.name = 'SpoolInUseError';
  }
}

/**
 * The lock is SQLite's own: a small database `<spool>.lock` opened by its own connection, busy_timeout 0, inside a
 * BEGIN EXCLUSIVE that stays open until release(). SQLite locks with POSIX advisory locks, which the kernel releases
 * when the process ends however it ends (SIGKILL, OOM kill), so a crash never leaves a stale lock; a pid file would
 * (containers all run as pid 1). Two Spools in one process exclude each other too (SQLite tracks its locks per file
 * across connections). Only the owning Spool takes it: read-only connections to the spool database do not.
 */
export class SpoolLock {
  private constructor(
    readonly path: string,
    private readonly db: Database.Database,
  ) {}

  static acquire(spoolPath: string): SpoolLock {
    const lockPath = `${spoolPath}.lock`;
    let db: Database.Database;
    try {
      mkdirSync(dirname(lockPath), { recursive: true, mode: 0o700 }); // the spool's folder, as openDatabase makes it
      db = new Database(lockPath);
      db.pragma('busy_timeout = 0');
    } catch (err) {
      throw new MailhookError('SPOOL_UNAVAILABLE', `cannot open the spool's lock file ${lockPath}: ${(err as Error).message}; check spool.path and its folder's permissions`, { cause: err, userFault: true });
    }
    try {
      // Something to lock: an empty file is a database with no pages yet (the table is created once).
      db.exec('CREATE TABLE IF NOT EXISTS owner (pid INTEGER)');
      db.exec('BEGIN EXCLUSIVE');
    } catch (err) {
      db.close();
      if ((err as { code?: string }).code?.startsWith('SQLITE_BUSY')) throw new SpoolInUseError(spoolPath, lockPath, err);
      throw new MailhookError('SPOOL_UNAVAILABLE', `cannot lock the spool's lock file ${lockPath}: ${(err as Error).message}`, { cause: err, userFault: true });
    }
    return new SpoolLock(lockPath, db);
  }

  /** Ends the transaction and closes the connection: another process may own the spool from now on. */
  release(): void {
    if (!this.db.open) return;
    try {
      if (this.db.inTransaction) this.db.exec('ROLLBACK');
    } finally {
      this.db.close();
    }
  }
}
