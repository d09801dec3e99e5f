// Runs the real `bin/mailhook` as a child process and reads its JSON log lines (ports, events).
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';

export const BIN = fileURLToPath(new URL('../../bin/mailhook', import.meta.url));

export interface RunningProcess {
  child: ChildProcess;
  lines: Array<Record<string, unknown>>;
  stderr: string[];
  smtpPort: number;
  httpPort: number;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  waitForLog(pred: (l: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
}

export function spawnMailhook(args: string[], env: Record<string, string> = {}, cwd?: string): RunningProcess & { started: Promise<void> } {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: Array<Record<string, unknown>> = [];
  const stderr: string[] = [];
  const watchers: Array<{ pred: (l: Record<string, unknown>) => boolean; resolve: (l: Record<string, unknown>) => void }> = [];
  let buf = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      let obj: Record<string, unknown>;
      try {
        obj = JSON.parse(line) as Record<string, unknown>;
      } catch {
        obj = { text: line };
      }
      lines.push(obj);
      for (const w of [...watchers]) {
        if (w.pred(obj)) {
          watchers.splice(watchers.indexOf(w), 1);
          w.resolve(obj);
        }
      }
    }
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => stderr.push(d));
  const exit = once(child, 'exit').then(([code, signal]) => ({ code: code as number | null, signal: signal as NodeJS.Signals | null }));
  const proc: RunningProcess = {
    child,
    lines,
    stderr,
    smtpPort: 0,
    httpPort: 0,
    exit,
    waitForLog(pred, timeoutMs = 15_000) {
      const found = lines.find(pred);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`log line not seen within ${timeoutMs} ms; stderr: ${stderr.join('')}`)), timeoutMs);
        watchers.push({
          pred,
          resolve: (l) => {
            clearTimeout(t);
            resolve(l);
          },
        });
        void exit.then(() => {
          clearTimeout(t);
          reject(new Error(`mailhook exited before the expected log line; stderr: ${stderr.join('')}`));
        });
      });
    },
  };
  const started = proc.waitForLog((l) => l.msg === 'mailhook started').then((l) => {
    proc.smtpPort = (l.smtp as { port: number }).port;
    proc.httpPort = (l.http as { port: number }).port;
  });
  return Object.assign(proc, { started });
}

/**
 * A port kept taken by a server that resets every connection: a consumer that is down, which no other test (the
 * files run in parallel) can be handed for its own port 0 meanwhile. release() frees it, e.g. to start the
 * consumer there at last.
 */
export async function holdPort(): Promise<{ port: number; release(): Promise<void> }> {
  const s = createServer((socket) => socket.resetAndDestroy());
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  return {
    port: (s.address() as { port: number }).port,
    release: () => new Promise<void>((r) => s.close(() => r())),
  };
}

/** A port that was free a moment ago (another test may take it meanwhile: prefer holdPort for a consumer that is down). */
export async function freePort(): Promise<number> {
  const s = createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}
