// Child processes for the bench: start a server, wait for its port, read its CPU time and RSS from /proc, stop it.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync, writeFileSync, openSync, closeSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { once } from 'node:events';

let clkTck: number | undefined;
function ticksPerSecond(): number {
  if (clkTck === undefined) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

/** User + system CPU time of a process (all its threads), in ms; 10 ms resolution on most kernels. */
export function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces) start after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  return ((utime + stime) * 1000) / ticksPerSecond();
}

function statusKb(pid: number, key: string): number {
  const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

export const rssKb = (pid: number): number => statusKb(pid, 'VmRSS');
export const peakRssKb = (pid: number): number => statusKb(pid, 'VmHWM');

/** Resets the kernel's peak-RSS mark (VmHWM) so the next reading is the peak of what follows; false if not allowed. */
export function resetPeakRss(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

/** Samples RSS while a phase runs (a fallback when clear_refs is not allowed, and for curves over time). */
export class RssSampler {
  private timer: NodeJS.Timeout | undefined;
  maxKb = 0;
  constructor(private readonly pid: number, intervalMs = 50) {
    this.timer = setInterval(() => this.sample(), intervalMs);
    this.timer.unref();
    this.sample();
  }
  sample(): number {
    try {
      const kb = rssKb(this.pid);
      if (kb > this.maxKb) this.maxKb = kb;
      return kb;
    } catch {
      return NaN;
    }
  }
  stop(): number {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.sample();
    return this.maxKb;
  }
}

/** CPU and peak RSS of one process over a phase. */
export class PhaseMeter {
  private readonly cpu0: number;
  private readonly t0: number;
  private readonly viaHwm: boolean;
  private readonly sampler: RssSampler;
  constructor(private readonly pid: number) {
    this.viaHwm = resetPeakRss(pid);
    this.sampler = new RssSampler(pid, 100);
    this.cpu0 = cpuMs(pid);
    this.t0 = performance.now();
  }
  stop(): { cpuMs: number; wallMs: number; peakRssKb: number } {
    const cpu = cpuMs(this.pid) - this.cpu0;
    const wallMs = performance.now() - this.t0;
    const sampled = this.sampler.stop();
    const peak = this.viaHwm ? Math.max(peakRssKb(this.pid), sampled) : sampled;
    return { cpuMs: cpu, wallMs, peakRssKb: peak };
  }
}

/** Processes in a process group (a server must be one process so its CPU and RSS are read from one pid). */
export function groupPids(pgid: number): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[2]) === pgid) out.push(Number(name));
    } catch {
      /* gone */
    }
  }
  return out;
}

export async function freePort(): Promise<number> {
  const srv = createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const addr = srv.address();
  const port = typeof addr === 'object' && addr ? addr.port : 0;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

/** Resolves when something accepts TCP connections on 127.0.0.1:port; bounded by timeoutMs. */
export async function waitForPort(port: number, timeoutMs = 20_000, child?: ChildProcess): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child && child.exitCode !== null) throw new Error(`process exited with ${child.exitCode} before listening on ${port}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listening on 127.0.0.1:${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface Spawned {
  child: ChildProcess;
  pid: number;
  /** SIGTERM to this process (and its group), SIGKILL after graceMs; resolves when it has exited. */
  stop(graceMs?: number): Promise<void>;
}

/** Starts a process in its own process group with output to a log file (never a pipe nobody drains). */
export function spawnLogged(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; logFile: string }): Spawned {
  const fd = openSync(opts.logFile, 'a');
  const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', fd, fd], detached: true });
  closeSync(fd);
  if (child.pid === undefined) throw new Error(`cannot start ${cmd}`);
  const pid = child.pid;
  const exited = once(child, 'exit').then(() => undefined);
  return {
    child,
    pid,
    async stop(graceMs = 10_000) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const kill = (sig: NodeJS.Signals) => {
        try {
          process.kill(-pid, sig);
        } catch {
          /* already gone */
        }
      };
      kill('SIGTERM');
      const t = setTimeout(() => kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(t);
    },
  };
}
