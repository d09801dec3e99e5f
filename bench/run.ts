// `npm run bench`: starts each server in turn, loads it with smtp-source, and prints/writes the comparison (see bench/README.md).
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BenchConsumer } from './lib/consumer.js';
import { cellsFor, parseOptions, USAGE, type BenchOptions } from './lib/options.js';
import { missingPrograms } from './lib/source.js';
import { ensureHaraka, harakaVersion, startSetup, SETUP_LABELS, type RunningServer, type SetupContext, type SetupName } from './lib/setups.js';
import { describeRun, label, probe, roundOrder, runOnce, summarize, warmUp, type Cell, type CellResult, type RunResult } from './lib/throughput.js';
import { runE2e, runMemory, runReject, type E2eResult, type MemoryResult, type RejectResult } from './lib/scenarios.js';
import { renderReport } from './lib/report.js';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');

export interface BenchResults {
  startedAt: string;
  finishedAt?: string;
  options: Omit<BenchOptions, 'help' | 'out' | 'build' | 'report'>;
  machine: Record<string, unknown>;
  matrix: CellResult[];
  e2e?: E2eResult;
  memory?: MemoryResult;
  reject?: RejectResult;
  errors: string[];
  /** load average (1 min) when each phase started and ended: the machine may be shared */
  phaseLoad: Record<string, { start: number; end?: number }>;
}

const isMailhook = (s: SetupName) => s === 'mailhook' || s === 'mailhook-g100' || s === 'baseline'; // webhook deliveries to wait for

function log(s: string): void {
  process.stderr.write(`${s}\n`);
}

function machine(): Record<string, unknown> {
  const sh = (cmd: string, args: string[]) => {
    try {
      return execFileSync(cmd, args, { encoding: 'utf8', cwd: repo, stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    } catch {
      return 'unknown';
    }
  };
  return {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model,
    memMb: Math.round(totalmem() / 2 ** 20),
    loadavg: loadavg(),
    node: process.version,
    postfix: sh('postconf', ['-h', 'mail_version']),
    haraka: harakaVersion(repo),
    commit: sh('git', ['rev-parse', '--short', 'HEAD']),
    dirty: sh('git', ['status', '--porcelain', '--untracked-files=no']) !== '',
  };
}

/**
 * Every server runs at once (idle while another is measured); each cell is measured on every setup in turn and
 * the timed runs alternate between setups, so a change in background load spreads over all of them instead of
 * landing on one, in an order rotated each round (roundOrder). mailhook's webhook backlog is drained after each of its runs.
 */
async function runMatrix(opts: BenchOptions, ctx: SetupContext, consumer: BenchConsumer, results: BenchResults, save: () => void): Promise<void> {
  const servers = new Map<SetupName, RunningServer>();
  try {
    for (const setup of opts.setups) {
      if (cellsFor(setup, opts).length === 0) continue;
      try {
        const server = await startSetup(setup, ctx);
        servers.set(setup, server);
        log(`== ${SETUP_LABELS[setup]} on port ${server.port}, warming up`);
        await warmUp(server, isMailhook(setup) ? consumer : undefined, opts.quick ? 1000 : 3000);
      } catch (err) {
        results.errors.push(`${setup}: ${(err as Error).message}`);
        log(`!! ${(err as Error).message}`);
      }
    }
    const keys = new Map<string, Omit<Cell, 'setup'>>();
    for (const setup of servers.keys()) for (const c of cellsFor(setup, opts)) keys.set(`${c.reuse}/${c.size}/${c.sessions}`, { size: c.size, sessions: c.sessions, reuse: c.reuse });
    for (const key of keys.values()) {
      const cells = [...servers.keys()].filter((s) => cellsFor(s, opts).some((c) => c.reuse === key.reuse && c.size === key.size && c.sessions === key.sessions)).map((setup) => ({ ...key, setup }));
      log(`-- ${label({ ...key, setup: 'smtp-sink' }).replace(/^smtp-sink /, '')}`);
      const counts = new Map<SetupName, number>();
      const runs = new Map<SetupName, RunResult[]>();
      for (const c of cells) {
        try {
          counts.set(c.setup, await probe(c, servers.get(c.setup)!, opts.plan, isMailhook(c.setup) ? consumer : undefined));
          runs.set(c.setup, []);
        } catch (err) {
          results.errors.push(`${label(c)}: ${(err as Error).message}`);
        }
      }
      for (let i = 1; i <= opts.plan.runs; i++) {
        for (const c of roundOrder(cells, i - 1)) {
          const n = counts.get(c.setup);
          if (n === undefined) continue;
          try {
            const r = await runOnce(c, servers.get(c.setup)!, n, opts.plan, isMailhook(c.setup) ? consumer : undefined);
            runs.get(c.setup)!.push(r);
            log(describeRun(c, i, opts.plan.runs, r));
          } catch (err) {
            results.errors.push(`${label(c)}: ${(err as Error).message}`);
          }
        }
      }
      for (const c of cells) if (runs.get(c.setup)?.length) results.matrix.push(summarize(c, runs.get(c.setup)!));
      save();
    }
  } finally {
    for (const s of servers.values()) await s.stop();
  }
}

async function main(): Promise<number> {
  let opts: BenchOptions;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    log(`bench: ${(err as Error).message}\n${USAGE}`);
    return 64;
  }
  if (opts.help) {
    log(USAGE);
    return 0;
  }
  if (opts.report) {
    process.stdout.write(renderReport(JSON.parse(readFileSync(opts.report, 'utf8')) as BenchResults));
    return 0;
  }
  const missing = missingPrograms();
  if (missing.length > 0) {
    log(`bench: needs Postfix's load tools, missing ${missing.join(', ')}; install the Debian "postfix" package (apt-get install postfix, choose "No configuration")`);
    return 69;
  }
  if (opts.setups.includes('haraka') && opts.phases.some((p) => p === 'matrix' || p === 'reject')) ensureHaraka(repo, log);
  if (opts.build) {
    log('building mailhook (npm run build) …');
    execFileSync('npm', ['run', 'build', '--silent'], { cwd: repo, stdio: ['ignore', 'ignore', 'inherit'] });
  }

  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const runDir = join(repo, 'bench', 'results', `run-${stamp}`);
  mkdirSync(runDir, { recursive: true });
  const out = opts.out ?? join(repo, 'bench', 'results', `${stamp}.json`);
  if (opts.setups.some((s) => s.startsWith('baseline')) && !opts.baseline) {
    log('bench: the baseline setup needs --baseline DIR (a built mailhook checkout)');
    return 64;
  }
  const { help: _h, out: _o, build: _b, report: _r, ...recorded } = opts;
  const results: BenchResults = { startedAt: new Date().toISOString(), options: recorded, machine: machine(), matrix: [], errors: [], phaseLoad: {} };
  const phase = async (name: string, fn: () => Promise<void>) => {
    results.phaseLoad[name] = { start: loadavg()[0] as number };
    try {
      await fn();
    } finally {
      (results.phaseLoad[name] as { end?: number }).end = loadavg()[0] as number;
    }
  };
  const save = () => {
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(out, JSON.stringify(results, null, 2));
  };

  const consumer = await new BenchConsumer().start();
  const ctx = { repo, runDir, webhookUrl: consumer.url, baselineRepo: opts.baseline ? resolve(opts.baseline) : undefined };
  try {
    if (opts.phases.includes('matrix')) await phase('matrix', () => runMatrix(opts, ctx, consumer, results, save));
    const mailhookPhase = async <T>(name: string, fn: (s: Awaited<ReturnType<typeof startSetup>>) => Promise<T>, setup: SetupName = 'mailhook'): Promise<T | undefined> => {
      log(`== ${name}`);
      const server = await startSetup(setup, { ...ctx, runDir: join(runDir, name) });
      try {
        return await fn(server);
      } catch (err) {
        results.errors.push(`${name}: ${(err as Error).message}`);
        log(`!! ${name}: ${(err as Error).message}`);
        return undefined;
      } finally {
        await server.stop();
      }
    };
    if (opts.phases.includes('e2e')) {
      await phase('e2e', async () => {
        results.e2e = await mailhookPhase('e2e', (s) => runE2e(s, consumer, opts, log));
      });
      save();
    }
    if (opts.phases.includes('memory')) {
      await phase('memory', async () => {
        results.memory = await mailhookPhase('memory', (s) => runMemory(s, consumer, opts, log));
      });
      save();
    }
    if (opts.phases.includes('reject')) {
      await phase('reject', async () => {
        results.reject = await runReject(ctx, opts, log);
      });
      save();
    }
  } finally {
    await consumer.stop();
    results.finishedAt = new Date().toISOString();
    (results.machine as { loadavgAtEnd?: number[] }).loadavgAtEnd = loadavg();
    save();
    // Spools and logs of this run are scratch; the JSON is the record.
    if (results.errors.length === 0) rmSync(runDir, { recursive: true, force: true });
  }
  process.stdout.write(renderReport(results));
  log(`results: ${out}`);
  return results.errors.length === 0 ? 0 : 1;
}

process.exitCode = await main();
