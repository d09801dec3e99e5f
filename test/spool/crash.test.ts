// Kill -9 in the middle of a stream of accepts: every message whose accept() resolved is in the spool afterwards.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Spool } from '../../src/spool/spool.js';
import { tempDir } from '../helpers/app.js';

const CHILD = fileURLToPath(new URL('./crash-child.ts', import.meta.url));

test('acknowledged messages (inline and files) survive SIGKILL of the process at a random point', async () => {
  const dir = tempDir('mailhook-crash-');
  const path = join(dir, 'spool.db');
  let child: ReturnType<typeof spawn> | undefined;
  try {
    child = spawn(process.execPath, ['--import', 'tsx', CHILD, path], { stdio: ['ignore', 'pipe', 'inherit'] });
    const acked = new Map<string, number>();
    let buf = '';
    const proc = child;
    const exited = new Promise<NodeJS.Signals | null>((resolve) => proc.on('exit', (_code, signal) => resolve(signal)));
    const drained = new Promise((resolve) => proc.stdout!.on('close', resolve));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`only ${acked.size} acks within 60 s`)), 60_000);
      proc.stdout!.setEncoding('utf8').on('data', (d: string) => {
        buf += d;
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const [id, size] = buf.slice(0, i).split(' ');
          buf = buf.slice(i + 1);
          acked.set(id as string, Number(size));
        }
        // Kill while sessions are mid-flight: commits and WAL syncs are in progress at this moment.
        if (acked.size >= 300 && proc.exitCode === null && !proc.killed) {
          clearTimeout(timer);
          proc.kill('SIGKILL');
          resolve();
        }
      });
      void exited.then(() => reject(new Error('the child exited before it was killed')));
    });
    assert.equal(await exited, 'SIGKILL');
    // Acks printed before the kill may still sit in the pipe: read them all.
    await drained;
    const spool = new Spool({ path, inlineMaxBytes: 4096, clock: { now: () => Date.now() } });
    try {
      let files = 0;
      for (const [id, size] of acked) {
        const m = spool.getMessage(id);
        assert.ok(m, `acknowledged message ${id} is missing after the crash`);
        assert.equal(m.size, size);
        const raw = await spool.readRaw(id);
        assert.equal(raw.length, size);
        const row = spool.db.prepare('SELECT raw_file FROM messages WHERE id = ?').get(id) as { raw_file: string | null };
        if (row.raw_file) {
          files++;
          assert.ok(existsSync(spool.blobs.pathOf(row.raw_file)));
          assert.equal(statSync(spool.blobs.pathOf(row.raw_file)).size, size);
        }
        const d = spool.db.prepare('SELECT COUNT(*) AS n FROM deliveries WHERE message_id = ?').get(id) as { n: number };
        assert.equal(d.n, 1);
      }
      assert.ok(files > 0, 'some acknowledged messages were files');
    } finally {
      await spool.close();
    }
  } finally {
    // A failure before the kill (no acks in time) must not leave the child writing forever.
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});
