// Drives Postfix's smtp-source (the load generator), bounded in message count and in time.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';

export const SMTP_SOURCE = '/usr/sbin/smtp-source';
export const SMTP_SINK = '/usr/sbin/smtp-sink';

export interface SourceRun {
  port: number;
  sessions: number;
  messages: number;
  /** payload bytes per message (smtp-source adds ~200 bytes of headers) */
  size: number;
  /** keep the connection for the next message (-d) instead of a new connection per message */
  reuse: boolean;
  from: string;
  to: string;
  timeoutMs: number;
  /** -A: keep going when the server refuses (rejection flood) */
  ignoreRefusals?: boolean;
}

export interface SourceResult {
  ok: boolean;
  wallMs: number;
  code: number | null;
  timedOut: boolean;
  stderr: string;
}

export function sourceArgs(r: SourceRun): string[] {
  const args = ['-4', '-s', String(r.sessions), '-m', String(r.messages), '-l', String(r.size), '-f', r.from, '-t', r.to, '-M', 'bench.test'];
  if (r.reuse) args.push('-d');
  if (r.ignoreRefusals) args.push('-A');
  args.push(`127.0.0.1:${r.port}`);
  return args;
}

export function runSource(r: SourceRun): Promise<SourceResult> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const child = spawn(SMTP_SOURCE, sourceArgs(r), { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      if (stderr.length < 4000) stderr += d;
    });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, r.timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      const wallMs = performance.now() - t0;
      resolve({ ok: code === 0 && !timedOut, wallMs, code, timedOut, stderr: stderr.trim() });
    });
  });
}

export function missingPrograms(): string[] {
  return [SMTP_SOURCE, SMTP_SINK].filter((p) => !existsSync(p));
}
