// The throughput matrix: setup × size × sessions × connection mode, each cell a probe then N timed smtp-source runs.
import { PhaseMeter } from './proc.js';
import { runSource } from './source.js';
import { FROM, RCPT, type RunningServer, type SetupName } from './setups.js';
import { spread, type Spread } from './stats.js';
import type { BenchConsumer } from './consumer.js';

export interface Cell {
  setup: SetupName;
  size: number;
  sessions: number;
  reuse: boolean;
}

export interface RunResult {
  messages: number;
  wallMs: number;
  msgsPerSec: number;
  cpuMs: number;
  cpuMsPerMsg: number;
  peakRssKb: number;
  ok: boolean;
  error?: string;
  /** mailhook: time and server CPU after the last 250 until every webhook of the run had arrived */
  drainMs?: number;
  drainCpuMs?: number;
  drained?: boolean;
}

export interface CellResult extends Cell {
  runs: RunResult[];
  msgsPerSec: Spread;
  cpuMsPerMsg: Spread;
  peakRssMb: number;
  failures: number;
}

export interface MatrixPlan {
  runs: number;
  /** aim for this much wall time per measured run (the message count comes from the probe's rate) */
  targetSeconds: number;
  maxMessages: number;
  /** bound on waiting for mailhook's webhook backlog after a run */
  drainTimeoutMs: number;
}

export function probeCount(c: Cell): number {
  const base = c.size >= 1 << 20 ? Math.max(c.sessions, 10) : Math.max(c.sessions * 2, 40);
  return base;
}

/** Messages for a timed run: enough for targetSeconds at the probe's rate, at least 5 per session, bounded. */
export function measuredCount(rate: number, c: Cell, plan: MatrixPlan): number {
  const want = Math.round(rate * plan.targetSeconds);
  return Math.min(Math.max(want, c.sessions * 5, 20), plan.maxMessages);
}

/** One timed smtp-source run against one server; for mailhook, then waits for every webhook of the run. */
export async function runOnce(c: Cell, server: RunningServer, messages: number, plan: MatrixPlan, consumer: BenchConsumer | undefined): Promise<RunResult> {
  const before = consumer?.count ?? 0;
  const meter = new PhaseMeter(server.pid);
  const res = await runSource({ port: server.port, sessions: c.sessions, messages, size: c.size, reuse: c.reuse, from: FROM, to: RCPT, timeoutMs: Math.min(600_000, Math.max(60_000, messages * 50)) });
  const m = meter.stop();
  const r: RunResult = {
    messages,
    wallMs: res.wallMs,
    msgsPerSec: (messages * 1000) / res.wallMs,
    cpuMs: m.cpuMs,
    cpuMsPerMsg: m.cpuMs / messages,
    peakRssKb: m.peakRssKb,
    ok: res.ok,
    ...(res.ok ? {} : { error: res.timedOut ? 'smtp-source timed out' : `smtp-source exited ${res.code}: ${res.stderr.slice(0, 300)}` }),
  };
  if (consumer) {
    const dm = new PhaseMeter(server.pid);
    const drained = await consumer.waitForCount(before + messages, plan.drainTimeoutMs);
    const d = dm.stop();
    r.drainMs = d.wallMs;
    r.drainCpuMs = d.cpuMs;
    r.drained = drained;
    r.peakRssKb = Math.max(r.peakRssKb, d.peakRssKb);
    if (!drained) {
      r.ok = false;
      r.error = `${r.error ? r.error + '; ' : ''}webhooks: ${consumer.count - before} of ${messages} within ${plan.drainTimeoutMs} ms`;
    }
  }
  return r;
}

/**
 * The setups' order in timed round `round` (0-based): rotated by one each round, so that over as many rounds as
 * setups each runs once in every position. With a fixed order the setup measured first in every round came out
 * 30-40 % slower at 1 KB in one run and faster than the others in the next with the order reversed (seventeenth
 * session): a position effect of this VM, not of the build.
 */
export function roundOrder<T>(cells: readonly T[], round: number): T[] {
  if (cells.length === 0) return [];
  const k = ((round % cells.length) + cells.length) % cells.length;
  return [...cells.slice(k), ...cells.slice(0, k)];
}

/** The probe run's rate decides how many messages a timed run sends. */
export async function probe(c: Cell, server: RunningServer, plan: MatrixPlan, consumer: BenchConsumer | undefined): Promise<number> {
  const r = await runOnce(c, server, probeCount(c), plan, consumer);
  return measuredCount(r.ok ? r.msgsPerSec : 10, c, plan);
}

export function describeRun(c: Cell, i: number, n: number, r: RunResult): string {
  return `  ${label(c)} run ${i}/${n}: ${r.messages} msgs ${r.msgsPerSec.toFixed(0)} msg/s cpu ${r.cpuMsPerMsg.toFixed(3)} ms/msg rss ${(r.peakRssKb / 1024).toFixed(0)} MB${r.drainMs !== undefined ? ` drain ${(r.drainMs / 1000).toFixed(1)} s` : ''}${r.ok ? '' : ` FAILED ${r.error}`}`;
}

export function summarize(c: Cell, runs: RunResult[]): CellResult {
  const good = runs.filter((r) => r.ok);
  return {
    ...c,
    runs,
    msgsPerSec: spread(good.map((r) => r.msgsPerSec)),
    cpuMsPerMsg: spread(good.map((r) => r.cpuMsPerMsg)),
    peakRssMb: Math.max(0, ...runs.map((r) => r.peakRssKb / 1024)),
    failures: runs.length - good.length,
  };
}

/** Untimed load before a server's first cell: JIT, caches and first-use costs stay out of the figures. */
export async function warmUp(server: RunningServer, consumer: BenchConsumer | undefined, messages: number): Promise<void> {
  const before = consumer?.count ?? 0;
  await runSource({ port: server.port, sessions: 20, messages, size: 1024, reuse: true, from: FROM, to: RCPT, timeoutMs: 120_000 });
  await runSource({ port: server.port, sessions: 20, messages: Math.ceil(messages / 4), size: 1024, reuse: false, from: FROM, to: RCPT, timeoutMs: 120_000 });
  if (consumer) await consumer.waitForCount(before + messages + Math.ceil(messages / 4), 300_000);
}

export function label(c: Cell): string {
  return `${c.setup} ${sizeLabel(c.size)} ×${c.sessions} ${c.reuse ? 'reuse' : 'new-conn'}`;
}

export function sizeLabel(bytes: number): string {
  if (bytes >= 1 << 20) return `${bytes / (1 << 20)} MB`;
  return `${bytes / 1024} KB`;
}
