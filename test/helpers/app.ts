// Starts mailhook in-process for a test: a temp spool, port 0 listeners, and the test's own config text.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { startApp, type App, type AppDeps } from '../../src/app.js';
import { loadConfigText, type Config } from '../../src/config/load.js';
import { createLogger } from '../../src/core/logger.js';

export const SECRET = 'whsec_' + Buffer.alloc(32, 7).toString('base64');

export interface TestApp extends App {
  dir: string;
  logs: string[];
  smtpPort: number;
  httpUrl: string;
  close(): Promise<void>;
}

const madeDirs = new Set<string>();

/** A fresh folder under the OS temp dir, removed when this test process exits (whether or not the test removed it). */
export function tempDir(prefix = 'mailhook-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  if (madeDirs.size === 0) process.once('exit', removeMadeDirs);
  madeDirs.add(dir);
  return dir;
}

function removeMadeDirs(): void {
  for (const dir of madeDirs) {
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch {
      // a folder another user's process still writes to; leave it rather than fail the test run at exit
    }
  }
}

/** YAML for the given routes with fast retries; `extra` is merged in as YAML text after the defaults. */
export function configYaml(opts: { routes: string; dir: string; extra?: string }): string {
  return `
smtp:
  listen: "127.0.0.1:0"
  hostname: mx.test
  greeting_delay_ms: 0
http:
  listen: "127.0.0.1:0"
spool:
  path: ${join(opts.dir, 'spool.db')}
delivery:
  timeout_ms: 5000
  retry:
    initial_delay_ms: 50
    max_delay_ms: 200
    max_attempts: 5
log:
  level: debug
${opts.extra ?? ''}
routes:
${opts.routes}
`;
}

export function parseTestConfig(yaml: string, dir: string, env: Record<string, string> = {}): Config {
  return loadConfigText(yaml, { source: 'test.yaml', baseDir: dir, env });
}

/** `yaml` replaces the generated config: its text, or a function of the app's directory (a temp dir unless `dir`). */
export async function startTestApp(opts: { routes: string; extra?: string; dir?: string; yaml?: string | ((dir: string) => string); deps?: Partial<AppDeps> }): Promise<TestApp> {
  const dir = opts.dir ?? tempDir();
  const yaml = typeof opts.yaml === 'function' ? opts.yaml(dir) : opts.yaml;
  const config = parseTestConfig(yaml ?? configYaml({ routes: opts.routes, dir, extra: opts.extra }), dir);
  const logs: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      logs.push(chunk.toString('utf8'));
      cb();
    },
  });
  const app = await startApp({ config, log: createLogger({ level: 'debug', destination }), clock: { now: () => Date.now() }, random: Math.random, ...opts.deps });
  return Object.assign(app, {
    dir,
    logs,
    smtpPort: app.addresses.smtp.port,
    httpUrl: `http://127.0.0.1:${app.addresses.http.port}`,
    async close() {
      await app.stop();
      if (!opts.dir) rmSync(dir, { recursive: true, force: true });
    },
  });
}

/** Polls a condition driven by the app's own events; used where no event is exposed (bounded, not a sleep). */
export async function until<T>(fn: () => T | undefined | false, timeoutMs = 10_000, what = 'condition'): Promise<T> {
  const start = Date.now();
  for (;;) {
    const v = fn();
    // A promise is always truthy: the wait would end at once (untilAsync is for asynchronous conditions).
    if (v instanceof Promise) throw new Error(`until() was given an asynchronous condition (${what}); use untilAsync`);
    if (v) return v;
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** until() for a condition that must be asked over the network (an IMAP listing): polled every 50 ms. */
export async function untilAsync(fn: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const start = Date.now();
  while (!(await fn())) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
