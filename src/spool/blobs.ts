// Message files for messages too large to keep inside the database: write, fsync, and read back.
import { createReadStream, mkdirSync, readdirSync, rmSync, type ReadStream } from 'node:fs';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';

export class BlobStore {
  constructor(readonly dir: string) {
    mkdirSync(dir, { recursive: true });
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

  async remove(name: string): Promise<void> {
    await unlink(this.pathOf(name)).catch(() => undefined);
  }

  removeSync(name: string): void {
    rmSync(this.pathOf(name), { force: true });
  }

  list(): string[] {
    return readdirSync(this.dir).filter((n) => n.endsWith('.eml'));
  }

  /** fsync the folder so a new file's directory entry survives a crash. */
  async syncDir(): Promise<void> {
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
  constructor(
    private readonly store: BlobStore,
    readonly name: string,
    private readonly handle: FileHandle,
  ) {}

  async write(chunk: Buffer): Promise<void> {
    let offset = 0;
    while (offset < chunk.length) {
      const { bytesWritten } = await this.handle.write(chunk, offset, chunk.length - offset);
      offset += bytesWritten;
    }
    this.bytes += chunk.length;
  }

  /** Flush to disk and close; after this the bytes survive a crash once the folder is synced. */
  async finish(): Promise<void> {
    try {
      await this.handle.sync();
    } finally {
      await this.handle.close();
    }
  }

  async abort(): Promise<void> {
    await this.handle.close().catch(() => undefined);
    await this.store.remove(this.name);
  }
}
