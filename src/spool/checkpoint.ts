// WAL checkpoints on a worker thread with its own connection, so copying the WAL into the database never blocks the event loop.
import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import { Worker } from 'node:worker_threads';
import type { Db } from './db.js';

/**
 * SQLite checkpoints a WAL database from the connection that commits, inside that commit, once the WAL passes
 * 1000 pages: it syncs the WAL, copies pages into the database file and syncs that, which here blocked the event
 * loop (and every SMTP session) for 10-200 ms at a time. The main connection's auto-checkpoint is turned off and
 * this worker runs PASSIVE checkpoints instead: it looks every `intervalMs` whether anything was committed
 * (PRAGMA data_version moves when another connection commits) and copies what is there. PASSIVE never waits for
 * or blocks a writer, and the writer restarts the WAL from the beginning once a checkpoint has caught up.
 * Should the WAL still grow past `restartPages` (a writer that never pauses), one RESTART checkpoint resets it;
 * that one makes writers wait for its duration (busy_timeout), which is the old behaviour, rarely.
 */
export interface CheckpointerOptions {
  intervalMs?: number;
  restartPages?: number;
}

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.sqlite);
const db = new Database(workerData.path, { fileMustExist: true });
db.pragma('busy_timeout = 5000');
db.pragma('wal_autocheckpoint = 0');
const version = db.prepare('PRAGMA data_version').pluck();
const passive = db.prepare('PRAGMA wal_checkpoint(PASSIVE)');
const restart = db.prepare('PRAGMA wal_checkpoint(RESTART)');
let seen = -1;
let stopped = false;
function tick() {
  if (stopped) return;
  try {
    const v = version.get();
    if (v !== seen) {
      seen = v;
      const r = passive.get();
      if (r && r.log > workerData.restartPages) restart.get();
      parentPort.postMessage({ type: 'checkpointed', log: r ? r.log : 0, checkpointed: r ? r.checkpointed : 0 });
    }
  } catch (err) {
    parentPort.postMessage({ type: 'error', message: String(err && err.message || err) });
  }
}
const timer = setInterval(tick, workerData.intervalMs);
parentPort.on('message', (m) => {
  if (m === 'stop') {
    stopped = true;
    clearInterval(timer);
    try { db.close(); } catch {}
    parentPort.close();
  }
});
`;

export class Checkpointer {
  private worker: Worker | undefined;
  /** checkpoints run so far and the last error, for tests and diagnostics */
  runs = 0;
  lastError: string | undefined;

  constructor(db: Db, options: CheckpointerOptions = {}) {
    const sqlite = createRequire(import.meta.url).resolve('better-sqlite3');
    // The worker opens its own connection; the main connection stops checkpointing inside its commits.
    db.pragma('wal_autocheckpoint = 0');
    this.worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { sqlite, path: resolve(db.name), intervalMs: options.intervalMs ?? 100, restartPages: options.restartPages ?? 20_000 },
      // A TypeScript loader in execArgv (tests run under tsx) is not needed for this plain script.
      execArgv: [],
    });
    this.worker.unref();
    this.worker.on('message', (m: { type: string; message?: string }) => {
      if (m.type === 'checkpointed') this.runs++;
      else if (m.type === 'error') this.lastError = m.message;
    });
    // If the worker cannot run, the main connection goes back to checkpointing inside its commits.
    const fallBack = () => {
      if (!this.worker) return;
      this.worker = undefined;
      try {
        if (db.open) db.pragma('wal_autocheckpoint = 1000');
      } catch {
        /* closing */
      }
    };
    this.worker.on('error', (err) => {
      this.lastError = err.message;
      fallBack();
    });
    this.worker.on('exit', fallBack);
  }

  /**
   * Stops the worker; its connection closes (a checkpoint in progress finishes first). Resolves once the thread
   * has exited: until then its connection may still write the database's files (the last connection to close
   * checkpoints the WAL and removes it), so whoever removes or copies them waits for this.
   */
  stop(): Promise<void> {
    const w = this.worker;
    this.worker = undefined;
    if (!w) return Promise.resolve();
    // Keep the process alive until the worker has closed its connection: a worker torn down with its
    // better-sqlite3 statements still open aborts the whole process on Node 24 (a native assertion in
    // Statement's destructor), so it must never be left to die with the process.
    w.ref();
    const exited = new Promise<void>((resolve) => w.once('exit', () => resolve()));
    w.postMessage('stop');
    return exited;
  }
}
