// Message files for messages too large to keep inside the database: write, fsync, and read back.
import { createReadStream, mkdirSync, readdirSync, rmSync, type ReadStream } from 'node:fs';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { CoalescedSync } from './fsync.js';

/** Bytes a writer gathers before one writev: fewer threadpool round trips, bounded memory per message. */
const WRITE_BUFFER_BYTES = 256 * 1024;
/** Bytes per read of BlobStore.readAll: a read stream's chunk. */
const READ_PIECE_BYTES = 64 * 1024;

/** The folder of the message files of the spool database at `spoolPath`: `<spool>.blobs` beside it. */
export function blobsDirOf(spoolPath: string): string {
  return join(dirname(spoolPath), `${basename(spoolPath)}.blobs`);
}

export class BlobStore {
  /** Folder fsyncs, shared by files finished at the same time (one fsync covers every entry created before it). */
  readonly dirSync: CoalescedSync;
  /** message files fdatasynced so far (tests check that a file-backed message was synced before its commit) */
  fileSyncs = 0;

  constructor(readonly dir: string) {
    mkdirSync(dir, { recursive: true, mode: 0o700 }); // message files: mailhook's user alone, whatever the umask
    this.dirSync = new CoalescedSync(() => this.fsyncDir());
  }

  pathOf(name: string): string {
    if (!/^[a-z0-9]+\.eml$/.test(name)) throw new Error(`bad blob name ${name}`);
    return join(this.dir, name);
  }

  async create(name: string): Promise<BlobWriter> {
    const handle = await open(this.pathOf(name), 'wx', 0o600);
    return new BlobWriter(this, name, handle);
  }

  openRead(name: string): ReadStream {
    return createReadStream(this.pathOf(name));
  }

  /**
   * A message file's bytes in one buffer of the file's size, read READ_PIECE_BYTES at a time: the pace of a read
   * stream (deliveries of large messages that start together take their bytes no sooner), without the stream's
   * chunks and the copy that joins them (twice the message in memory for a moment, and a copy per delivery).
   */
  async readAll(name: string): Promise<Buffer> {
    const handle = await open(this.pathOf(name), 'r');
    try {
      const { size } = await handle.stat();
      const out = Buffer.allocUnsafe(size);
      let at = 0;
      while (at < size) {
        const { bytesRead } = await handle.read(out, at, Math.min(READ_PIECE_BYTES, size - at), at);
        if (bytesRead === 0) break;
        at += bytesRead;
      }
      return at === size ? out : out.subarray(0, at);
    } finally {
      await handle.close();
    }
  }

  async remove(name: string): Promise<void> {
    await unlink(this.pathOf(name)).catch(() => undefined);
  }

  removeSync(name: string): void {
    rmSync(this.pathOf(name), { force: true });
  }

  list(): string[] {
    return readdirSync(this.dir).filter((n) => n.endsWith('.eml'));
  }

  /** fsync the folder so a new file's directory entry survives a crash; concurrent callers share one fsync. */
  syncDir(): Promise<void> {
    return this.dirSync.sync();
  }

  private async fsyncDir(): Promise<void> {
    const handle = await open(this.dir, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  }
}

export class BlobWriter {
  bytes = 0;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  constructor(
    private readonly store: BlobStore,
    readonly name: string,
    private readonly handle: FileHandle,
  ) {}

  /** Takes the chunk (the caller must not reuse it); writes once WRITE_BUFFER_BYTES have gathered. */
  async write(chunk: Buffer): Promise<void> {
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    this.bytes += chunk.length;
    if (this.pendingBytes >= WRITE_BUFFER_BYTES) await this.flushPending();
  }

  private async flushPending(): Promise<void> {
    let chunks = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    while (chunks.length > 0) {
      const { bytesWritten } = await this.handle.writev(chunks);
      chunks = dropWritten(chunks, bytesWritten);
    }
  }

  /** Write what is gathered, fdatasync and close; the bytes survive a crash once the folder is synced too. */
  async finish(): Promise<void> {
    try {
      await this.flushPending();
      await this.handle.datasync();
      this.store.fileSyncs++;
    } finally {
      await this.handle.close();
    }
  }

  async abort(): Promise<void> {
    await this.handle.close().catch(() => undefined);
    await this.store.remove(this.name);
  }
}

/** The chunks left after a short writev of `written` bytes. */
export function dropWritten(chunks: Buffer[], written: number): Buffer[] {
  let i = 0;
  let left = written;
  while (i < chunks.length && left >= (chunks[i] as Buffer).length) {
    left -= (chunks[i] as Buffer).length;
    i++;
  }
  const rest = chunks.slice(i);
  if (left > 0 && rest.length > 0) rest[0] = (rest[0] as Buffer).subarray(left);
  return rest;
}
