// A consistent copy of a spool while mailhook runs: SQLite's online backup of the database, then the message files it names.
import Database from 'better-sqlite3';
import { constants, existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { copyFile, open } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { blobsDirOf } from './blobs.js';
import { MailhookError } from '../core/errors.js';

/** The largest page count one backup step takes (SQLite's int): "the rest of the database". */
const ALL_PAGES = 0x7fffffff;

export interface BackupResult {
  /** messages in the copy */
  messages: number;
  /** of them, kept as message files (copied into the copy's .blobs folder) */
  files: number;
  /** messages removed from the spool (retention, an operator) while the backup ran: left out of the copy */
  leftOut: number;
}

/**
 * Copies the spool at `spoolPath` to a new database `dest` and its message files to `dest`.blobs. Runs beside a
 * mailhook using the spool (a read-only connection that copies a snapshot in one read transaction; the server's
 * WAL cannot be checkpointed past it meanwhile, so it grows for the copy's duration), and never overwrites: `dest`
 * and its folder must not exist. Message files are immutable once their message is
 * committed, so each is copied after the database; one removed meanwhile takes its message out of the copy.
 * Everything written is fsynced before this resolves.
 */
export async function backupSpool(spoolPath: string, dest: string): Promise<BackupResult> {
  if (!existsSync(spoolPath)) throw new MailhookError('SPOOL_UNAVAILABLE', `no spool at ${spoolPath}: check spool.path in the configuration`, { userFault: true });
  const destBlobs = blobsDirOf(dest);
  for (const p of [dest, `${dest}-wal`, destBlobs]) {
    if (existsSync(p)) throw new MailhookError('SPOOL_UNAVAILABLE', `${p} already exists; a backup never overwrites: give a new --to path`, { userFault: true });
  }
  // Every message up to spool.inline_max_bytes is inside the database: the copy is for the service's user only,
  // whatever the umask (its journal files take the database file's mode).
  mkdirSync(dirname(dest), { recursive: true, mode: 0o700 });
  writeFileSync(dest, '', { flag: 'wx', mode: 0o600 });
  const source = new Database(spoolPath, { readonly: true, fileMustExist: true });
  try {
    source.pragma('busy_timeout = 5000');
    // All pages in one step, inside one read transaction: in steps of 100 pages (the default), every commit of
    // the server between two steps restarts the copy, and a busy server would keep it from ever finishing.
    await source.backup(dest, { progress: () => ALL_PAGES });
  } catch (err) {
    rmSync(dest, { force: true });
    throw new MailhookError('SPOOL_UNAVAILABLE', `cannot back up ${spoolPath} to ${dest}: ${(err as Error).message}`, { cause: err, userFault: true });
  } finally {
    source.close();
  }

  const copy = new Database(dest);
  try {
    copy.pragma('foreign_keys = ON');
    const files = copy.prepare(`SELECT id, raw_file FROM messages WHERE raw_file IS NOT NULL`).all() as Array<{ id: string; raw_file: string }>;
    if (files.length > 0) mkdirSync(destBlobs, { mode: 0o700 });
    const gone: string[] = [];
    for (const f of files) {
      if (!/^[a-z0-9]+\.eml$/.test(f.raw_file)) throw new MailhookError('SPOOL_UNAVAILABLE', `message ${f.id} names an unexpected file ${f.raw_file}; the spool is damaged`);
      const to = join(destBlobs, f.raw_file);
      try {
        await copyFile(join(blobsDirOf(spoolPath), f.raw_file), to, constants.COPYFILE_EXCL);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        gone.push(f.id);
        continue;
      }
      await fsyncPath(to, 'r');
    }
    const remove = copy.prepare(`DELETE FROM messages WHERE id = ?`);
    copy.transaction(() => {
      for (const id of gone) remove.run(id);
    })();
    const messages = copy.prepare(`SELECT COUNT(*) FROM messages`).pluck().get() as number;
    // Closing the last connection folds the copy's journal into its file and removes it: the file alone is the copy.
    copy.close();
    await fsyncPath(dest, 'r');
    if (files.length > 0) await fsyncPath(destBlobs, 'r');
    await fsyncPath(dirname(dest), 'r');
    return { messages, files: files.length - gone.length, leftOut: gone.length };
  } finally {
    if (copy.open) copy.close();
  }
}

async function fsyncPath(path: string, flags: string): Promise<void> {
  const handle = await open(path, flags);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
