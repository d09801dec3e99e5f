// `npm run bench`: starts each server in turn, loads it with smtp-source, and prints/writes the comparison (see bench/README.md).
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync, rmSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BenchConsumer } from './lib/consumer.js';
import { cellsFor, parseOptions, USAGE, type BenchOptions } from './lib/options.js';
import { missingPrograms } from './lib/source.js';
import { ensureHaraka, harakaVersion, startSetup, SETUP_LABELS, type SetupName } from './lib/setups.js';
import { label, runCell, warmUp, type CellResult } from './lib/throughput.js';
import { runE2e, runMemory, runReject, type E2eResult, type MemoryResult, type RejectResult } from './lib/scenarios.js';
import { renderReport } from './lib/report.js';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');

export interface BenchResults {
  startedAt: string;
  finishedAt?: string;
  options: Omit<BenchOptions, 'help' | 'out' | 'build'>;
  machine: Record<string, unknown>;
  matrix: CellResult[];
  e2e?: E2eResult;
  memory?: MemoryResult;
  reject?: RejectResult;
  errors: string[];
}

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
  const { help: _h, out: _o, build: _b, ...recorded } = opts;
  const results: BenchResults = { startedAt: new Date().toISOString(), options: recorded, machine: machine(), matrix: [], errors: [] };
  const save = () => {
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(out, JSON.stringify(results, null, 2));
  };

  const consumer = await new BenchConsumer().start();
  const ctx = { repo, runDir, webhookUrl: consumer.url };
  try {
    if (opts.phases.includes('matrix')) {
      for (const setup of opts.setups) {
        const cells = cellsFor(setup, opts);
        if (cells.length === 0) continue;
        log(`== ${SETUP_LABELS[setup]}`);
        let server;
        try {
          server = await startSetup(setup, ctx);
        } catch (err) {
          results.errors.push(`${setup}: ${(err as Error).message}`);
          log(`!! ${(err as Error).message}`);
          continue;
        }
        try {
          await warmUp(server, setup.startsWith('mailhook') ? consumer : undefined, opts.quick ? 1000 : 3000);
          for (const cell of cells) {
            try {
              results.matrix.push(await runCell(cell, server, opts.plan, setup.startsWith('mailhook') ? consumer : undefined, log));
            } catch (err) {
              results.errors.push(`${label(cell)}: ${(err as Error).message}`);
              log(`!! ${label(cell)}: ${(err as Error).message}`);
            }
            save();
          }
        } finally {
          await server.stop();
        }
      }
    }
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
      results.e2e = await mailhookPhase('e2e', (s) => runE2e(s, consumer, opts, log));
      save();
    }
    if (opts.phases.includes('memory')) {
      results.memory = await mailhookPhase('memory', (s) => runMemory(s, consumer, opts, log));
      save();
    }
    if (opts.phases.includes('reject')) {
      results.reject = await runReject(ctx, opts, log);
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
