// Opens the spool database with durable settings and applies schema migrations in order.
import Database from 'better-sqlite3';
import { closeSync, mkdirSync, openSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { MailhookError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { diskFree } from './disk.js';

export type Db = Database.Database;

// Each entry moves the schema from version i to i+1; never edit a shipped entry, append a new one.
export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE messages (
    id              TEXT PRIMARY KEY,
    received_at     INTEGER NOT NULL,            -- ms since epoch
    source          TEXT NOT NULL,               -- smtp | imap | graph
    mail_from       TEXT NOT NULL,               -- '' for the null sender
    rcpt_to         TEXT NOT NULL,               -- JSON array of accepted envelope recipients
    remote_address  TEXT,
    helo            TEXT,
    tls             TEXT,                        -- JSON {protocol, cipher} or NULL
    size            INTEGER NOT NULL,
    raw             BLOB,                        -- the bytes as received, when small
    raw_file        TEXT,                        -- file name under the blob folder, when large
    dedupe_key      TEXT UNIQUE,                 -- e.g. imap:<mailbox>:<uidvalidity>:<uid>
    meta            TEXT                         -- JSON, source-specific facts
  );
  CREATE INDEX messages_received_at ON messages(received_at);

  CREATE TABLE deliveries (
    id               TEXT PRIMARY KEY,           -- also the webhook-id, stable across retries
    message_id       TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    route            TEXT NOT NULL,
    recipients       TEXT NOT NULL,              -- JSON [{address, key}]
    status           TEXT NOT NULL,              -- pending | delivering | delivered | dead
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    lease_token      TEXT,
    lease_expires_at INTEGER,
    last_status_code INTEGER,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    finished_at      INTEGER
  );
  CREATE INDEX deliveries_due ON deliveries(status, next_attempt_at);
  CREATE INDEX deliveries_message ON deliveries(message_id);
  CREATE INDEX deliveries_route_status ON deliveries(route, status);

  CREATE TABLE attempts (
    id           INTEGER PRIMARY KEY,
    delivery_id  TEXT NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    attempt      INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    duration_ms  INTEGER NOT NULL,
    status_code  INTEGER,
    outcome      TEXT NOT NULL,                  -- delivered | retry | dead
    error        TEXT
  );
  CREATE INDEX attempts_delivery ON attempts(delivery_id);
  `,
  // 2: operator queries (admin API, dashboard) and retention. Keyset pagination runs on (received_at, id), so
  // deliveries and their recipients carry the message's received_at (filled by triggers, the accept path is
  // unchanged); recipient addresses and keys get their own table so a filter on them is an index search.
  `
  ALTER TABLE deliveries ADD COLUMN received_at INTEGER;
  ALTER TABLE deliveries ADD COLUMN replays INTEGER NOT NULL DEFAULT 0;
  UPDATE deliveries SET received_at = (SELECT received_at FROM messages WHERE messages.id = deliveries.message_id);
  CREATE TRIGGER deliveries_received_at AFTER INSERT ON deliveries WHEN NEW.received_at IS NULL BEGIN
    UPDATE deliveries SET received_at = (SELECT received_at FROM messages WHERE id = NEW.message_id) WHERE id = NEW.id;
  END;

  CREATE TABLE delivery_recipients (
    delivery_id  TEXT NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    message_id   TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    address      TEXT NOT NULL,                  -- lower-cased, for case-insensitive search
    key          TEXT
  );
  INSERT INTO delivery_recipients (delivery_id, message_id, received_at, address, key)
    SELECT d.id, d.message_id, d.received_at, lower(json_extract(j.value, '$.address')), json_extract(j.value, '$.key')
    FROM deliveries d, json_each(d.recipients) j;
  CREATE TRIGGER deliveries_recipients AFTER INSERT ON deliveries BEGIN
    INSERT INTO delivery_recipients (delivery_id, message_id, received_at, address, key)
      SELECT NEW.id, NEW.message_id, (SELECT received_at FROM messages WHERE id = NEW.message_id),
             lower(json_extract(value, '$.address')), json_extract(value, '$.key')
      FROM json_each(NEW.recipients);
  END;
  CREATE INDEX delivery_recipients_delivery ON delivery_recipients(delivery_id);
  CREATE INDEX delivery_recipients_address ON delivery_recipients(address, received_at, message_id);
  CREATE INDEX delivery_recipients_key ON delivery_recipients(key, received_at, message_id);

  -- (received_at, id) replaces (received_at); (route, status, received_at, message_id) replaces (route, status).
  DROP INDEX messages_received_at;
  CREATE INDEX messages_received_id ON messages(received_at, id);
  CREATE INDEX messages_sender ON messages(mail_from COLLATE NOCASE, received_at, id);
  DROP INDEX deliveries_route_status;
  CREATE INDEX deliveries_route_status_received ON deliveries(route, status, received_at, message_id);
  CREATE INDEX deliveries_status_received ON deliveries(status, received_at, message_id);
  CREATE INDEX deliveries_route_received ON deliveries(route, received_at, message_id);
  CREATE INDEX deliveries_finished ON deliveries(status, finished_at);
  CREATE INDEX attempts_started ON attempts(started_at);
  `,
  // 3: small per-mailbox state that must survive a restart (the Graph delta link), see src/imap/state.ts.
  `
  CREATE TABLE mailbox_state (
    name        TEXT NOT NULL,               -- the mailbox name from imap[].name
    key         TEXT NOT NULL,               -- e.g. delta_link
    value       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,            -- ms since epoch
    PRIMARY KEY (name, key)
  ) WITHOUT ROWID;
  `,
  // 4: the accept path writes delivery_recipients itself (it knows the addresses and received_at already); the
  // trigger's json_each and messages lookup cost about half of an accept's SQL time.
  `
  DROP TRIGGER deliveries_recipients;
  `,
  // 5: route health (admin API, dashboard) counts and ranks a window of attempts by route: each attempt names its
  // route, and one covering index serves the whole window without a lookup into deliveries per attempt.
  `
  ALTER TABLE attempts ADD COLUMN route TEXT;
  UPDATE attempts SET route = (SELECT route FROM deliveries WHERE deliveries.id = attempts.delivery_id);
  DROP INDEX attempts_started;
  CREATE INDEX attempts_window ON attempts(started_at, route, outcome, duration_ms);
  `,
  // 6: the bytes of the message files, summed for the spool-size metric from this index instead of a stat() of
  // every file on each scrape.
  `
  CREATE INDEX messages_file_size ON messages(size, raw_file) WHERE raw_file IS NOT NULL;
  `,
  // 7: due deliveries of one route (leasing for a route the due-order window did not reach, jobs.ts selectDueOf).
  // Through deliveries_due the search read every due row of every route to find that route's: a 100,000 backlog
  // on one saturated route cost the others ~50 ms per lease pass, now <1 ms. Partial, so only pending rows are in
  // it: lease and retry each add or remove one entry (accept, lease and settle cost unchanged within noise, measured).
  `
  CREATE INDEX deliveries_route_due ON deliveries(route, next_attempt_at) WHERE status = 'pending';
  `,
];

/** Creates an empty file readable by its owner only, unless it exists (an empty file is a new SQLite database). */
function createPrivate(path: string): void {
  try {
    closeSync(openSync(path, 'wx', 0o600));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
}

/**
 * The most a WAL grown past its usual size (a burst of large inline messages, the one-time rebuild below) keeps of
 * the disk once the next checkpoint has caught up: SQLite truncates it to this when it starts it again.
 */
export const WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024;

/** What the one-time rebuild (VACUUM) needs free beside the spool: its new copy goes through the WAL. */
export function rebuildNeedsBytes(databaseBytes: number): number {
  return 2 * databaseBytes + WAL_SIZE_LIMIT_BYTES;
}

export interface OpenOptions {
  /** hears of a schema upgrade and the one-time rebuild */
  log?: Logger;
  /** bytes free for an unprivileged user in a folder (statfs; tests pass their own) */
  diskFree?: (dir: string) => number;
}

/** Opens (creating if absent) and upgrades the spool database. */
export function openDatabase(path: string, opts: OpenOptions = {}): Db {
  const { log } = opts;
  let db: Db;
  try {
    if (path !== ':memory:') {
      // The database holds message bodies (all but the large ones): readable by mailhook's user alone, whatever the
      // umask, as the message files are. SQLite gives its -wal and -shm files the database file's mode.
      mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
      createPrivate(path);
    }
    db = new Database(path);
  } catch (err) {
    throw new MailhookError('SPOOL_UNAVAILABLE', `cannot open the spool database ${path}: ${(err as Error).message}; check spool.path and its folder's permissions`, { cause: err, userFault: true });
  }
  // Incremental auto-vacuum lets retention hand freed pages back to the file system. It only takes effect on a
  // database that has no tables yet, and before WAL mode writes the header; older spools get it by one VACUUM below.
  try {
    db.pragma('auto_vacuum = INCREMENTAL');
  } catch (err) {
    db.close();
    if ((err as { code?: unknown }).code !== 'SQLITE_NOTADB') throw err;
    throw new MailhookError('SPOOL_UNAVAILABLE', `spool.path ${path} is not a mailhook spool (${(err as Error).message}); point spool.path at the spool's database, or at a new file`, { cause: err, userFault: true });
  }
  // WAL + synchronous=FULL: a commit is on disk (the WAL fsynced) when it returns; that is what 250 promises.
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 5000');
  db.pragma(`journal_size_limit = ${WAL_SIZE_LIMIT_BYTES}`);
  migrate(db, log);
  if (path !== ':memory:') ensureIncrementalVacuum(db, path, log, opts.diskFree ?? diskFree);
  return db;
}

/**
 * A spool created before auto_vacuum was set is rebuilt once (VACUUM) so the setting takes effect. The rebuild
 * writes a new copy of the database through the WAL: without room for it, it is put off to a later start (with a
 * warning; the spool works as before, its file just does not shrink when retention removes messages) rather than
 * filling the disk the MX receives onto. Afterwards the WAL, as big as the database by then, is cut back.
 */
function ensureIncrementalVacuum(db: Db, path: string, log: Logger | undefined, freeIn: (dir: string) => number): void {
  if ((db.pragma('auto_vacuum', { simple: true }) as number) === 2) return;
  const bytes = statSync(path).size;
  const free = freeIn(dirname(path));
  const needs = rebuildNeedsBytes(bytes);
  const later = `the spool works as before, but its file does not shrink when retention removes messages; free space and restart mailhook to rebuild it`;
  if (free < needs) {
    log?.warn({ databaseBytes: bytes, freeBytes: free, needsBytes: needs }, `spool not rebuilt for incremental vacuum: the rebuild needs ${mib(needs)} free beside ${path}, ${mib(free)} is; ${later}`);
    return;
  }
  log?.info({ databaseBytes: bytes }, `rebuilding the spool once for incremental vacuum (${mib(bytes)}); it is served when this is done`);
  const started = Date.now();
  try {
    db.pragma('auto_vacuum = INCREMENTAL');
    db.exec('VACUUM');
  } catch (err) {
    // SQLite rolled the rebuild back; the spool is as it was.
    log?.warn({ err: { message: (err as Error).message, code: (err as { code?: unknown }).code } }, `spool rebuild for incremental vacuum failed (${(err as Error).message}); ${later}`);
  } finally {
    try {
      db.pragma('wal_checkpoint(TRUNCATE)');
    } catch (err) {
      // The spool is whole either way; the WAL is cut back at a later checkpoint (journal_size_limit).
      log?.warn({ err: { message: (err as Error).message } }, 'could not cut the WAL back after the rebuild; a later checkpoint does');
    }
  }
  if ((db.pragma('auto_vacuum', { simple: true }) as number) === 2) log?.info({ ms: Date.now() - started }, 'spool rebuilt for incremental vacuum');
}

function mib(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

function migrate(db: Db, log: Logger | undefined): void {
  const version = db.pragma('user_version', { simple: true }) as number;
  if (version > MIGRATIONS.length) {
    throw new MailhookError('SPOOL_UNAVAILABLE', `the spool was written by a newer mailhook (schema ${version}, this one knows ${MIGRATIONS.length}); upgrade mailhook`, { userFault: true });
  }
  if (version === MIGRATIONS.length) return;
  // An existing spool's upgrade can take a while (seconds for a few hundred thousand messages): say so first.
  if (version > 0) log?.info({ from: version, to: MIGRATIONS.length }, `upgrading the spool's schema from ${version} to ${MIGRATIONS.length}; it is served when this is done`);
  const started = Date.now();
  for (let v = version; v < MIGRATIONS.length; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v] as string);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
  if (version > 0) log?.info({ ms: Date.now() - started }, "spool schema upgraded");
}
