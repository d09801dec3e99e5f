// The servers under test, each started as its own process on a free loopback port: smtp-sink, Haraka, bare smtp-server, mailhook.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, groupPids, spawnLogged, waitForPort, type Spawned } from './proc.js';
import { SMTP_SINK } from './source.js';

export const SETUPS = ['smtp-sink', 'haraka', 'bare', 'mailhook', 'mailhook-g100', 'mailhook-accept', 'baseline', 'baseline-accept'] as const;
export type SetupName = (typeof SETUPS)[number];

export const SETUP_LABELS: Record<SetupName, string> = {
  'smtp-sink': 'smtp-sink (Postfix; protocol ceiling)',
  haraka: 'Haraka 3 (1 process, discard)',
  bare: 'bare smtp-server (discard)',
  mailhook: 'mailhook (fsync before 250, webhook delivery; greeting 0 ms)',
  'mailhook-g100': 'mailhook, greeting delay 100 ms (internet-facing default)',
  'mailhook-accept': 'mailhook with a sink route: the same durable accept (fsync before 250), no webhook delivery (diagnostic)',
  baseline: 'mailhook from another checkout (--baseline DIR), same configuration as mailhook',
  'baseline-accept': 'mailhook from another checkout (--baseline DIR), same configuration as mailhook-accept',
};

/** The domain every setup accepts; mailhook's route is one address in it so any other local part is unknown. */
export const DOMAIN = 'bench.test';
export const RCPT = `hook@${DOMAIN}`;
export const FROM = `load@source.${DOMAIN}`;
export const UNKNOWN_RCPT = `nobody@${DOMAIN}`;
export const UNKNOWN_DOMAIN_RCPT = 'nobody@elsewhere.example';
export const WEBHOOK_SECRET = 'whsec_' + Buffer.alloc(32, 42).toString('base64');

export interface SetupContext {
  repo: string;
  runDir: string;
  /** where mailhook delivers (required for the mailhook setups) */
  webhookUrl?: string;
  /** another mailhook checkout (built) to compare against, for the 'baseline' setup */
  baselineRepo?: string;
}

export interface RunningServer {
  name: SetupName;
  port: number;
  pid: number;
  httpPort?: number;
  /** the spool folder (mailhook) */
  dataDir?: string;
  stop(): Promise<void>;
}

export const HARAKA_PREFIX = (repo: string) => join(repo, 'bench', '.haraka');
const harakaBin = (repo: string) => join(HARAKA_PREFIX(repo), 'node_modules', 'Haraka', 'bin', 'haraka');
/** The server itself: bin/haraka would only spawn this as a child, which would hide its CPU and RSS from us. */
const harakaMain = (repo: string) => join(HARAKA_PREFIX(repo), 'node_modules', 'Haraka', 'haraka.js');

/** Installs Haraka 3 into bench/.haraka (its own npm prefix, not the project's node_modules) unless already there. */
export function ensureHaraka(repo: string, log: (s: string) => void): void {
  if (existsSync(harakaBin(repo))) return;
  log(`installing Haraka 3 into ${HARAKA_PREFIX(repo)} (npm install --prefix bench/.haraka Haraka@3) …`);
  mkdirSync(HARAKA_PREFIX(repo), { recursive: true });
  execFileSync('npm', ['install', '--prefix', HARAKA_PREFIX(repo), '--no-audit', '--no-fund', '--no-save', 'Haraka@3'], { stdio: 'inherit', timeout: 600_000 });
}

export function harakaVersion(repo: string): string {
  try {
    return (JSON.parse(execFileSync('node', ['-p', 'JSON.stringify(require(process.argv[1]))', join(HARAKA_PREFIX(repo), 'node_modules', 'Haraka', 'package.json')], { encoding: 'utf8' })) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

export async function startSetup(name: SetupName, ctx: SetupContext, opts: { greetingDelayMs?: number } = {}): Promise<RunningServer> {
  const port = await freePort();
  const dir = join(ctx.runDir, name);
  mkdirSync(dir, { recursive: true });
  const logFile = join(dir, 'server.log');
  let proc: Spawned;
  let httpPort: number | undefined;
  switch (name) {
    case 'smtp-sink':
      // -u: smtp-sink drops privileges when run as root; backlog 1024 for the 100-session runs.
      proc = spawnLogged(SMTP_SINK, ['-4', '-u', 'nobody', `127.0.0.1:${port}`, '1024'], { logFile });
      break;
    case 'haraka': {
      writeHarakaConfig(ctx.repo, dir, port);
      // YES_REALLY_DO_DISCARD: the discard queue plugin accepts and drops every message (stores nothing).
      proc = spawnLogged(process.execPath, [harakaMain(ctx.repo)], { logFile, cwd: dir, env: { ...process.env, HARAKA: dir, YES_REALLY_DO_DISCARD: '1' } });
      break;
    }
    case 'bare':
      proc = spawnLogged(process.execPath, [join(ctx.repo, 'bench', 'servers', 'bare-smtp.mjs'), String(port), String(opts.greetingDelayMs ?? 0)], { logFile, cwd: ctx.repo });
      break;
    case 'mailhook':
    case 'mailhook-g100':
    case 'mailhook-accept':
    case 'baseline':
    case 'baseline-accept': {
      if (!ctx.webhookUrl) throw new Error('mailhook needs a webhook consumer');
      httpPort = await freePort();
      const cfg = join(dir, 'mailhook.yaml');
      writeFileSync(cfg, mailhookConfig({ port, httpPort, spool: join(dir, 'spool', 'spool.db'), webhookUrl: ctx.webhookUrl, greetingDelayMs: opts.greetingDelayMs ?? (name === 'mailhook-g100' ? 100 : 0), sink: name.endsWith('-accept') }));
      const from = name.startsWith('baseline') ? ctx.baselineRepo : ctx.repo;
      if (!from) throw new Error('the baseline setup needs --baseline DIR');
      proc = spawnLogged(process.execPath, [join(from, 'bin', 'mailhook'), 'serve', '--config', cfg], { logFile, cwd: dir });
      break;
    }
  }
  try {
    await waitForPort(port, 30_000, proc.child);
    if (httpPort) await waitForPort(httpPort, 30_000, proc.child);
    const pids = groupPids(proc.pid);
    if (pids.length !== 1) throw new Error(`expected one server process, found ${pids.length} (${pids.join(', ')}); CPU and RSS would be misread`);
  } catch (err) {
    await proc.stop(2000);
    throw new Error(`${name} did not start: ${(err as Error).message}; see ${logFile}`);
  }
  return { name, port, pid: proc.pid, httpPort, dataDir: join(dir, 'spool'), stop: () => proc.stop() };
}

/** mailhook's real configuration: defaults everywhere (info logging, fsync before 250, 16/4 webhook concurrency). */
export function mailhookConfig(o: { port: number; httpPort: number; spool: string; webhookUrl: string; greetingDelayMs: number; sink?: boolean }): string {
  const route = o.sink
    ? `    sink: true\n`
    : `    webhook:\n      url: ${JSON.stringify(o.webhookUrl)}\n      secret: ${JSON.stringify(WEBHOOK_SECRET)}\n`;
  return `# written by bench/run.ts: mailhook's defaults, loopback ports, one webhook route
smtp:
  listen: "127.0.0.1:${o.port}"
  hostname: mx.${DOMAIN}
  greeting_delay_ms: ${o.greetingDelayMs}
http:
  listen: "127.0.0.1:${o.httpPort}"
spool:
  path: ${JSON.stringify(o.spool)}
routes:
  - name: bench
    addresses: ["${RCPT}"]
${route}`;
}

function writeHarakaConfig(repo: string, dir: string, port: number): void {
  if (!existsSync(join(dir, 'config'))) execFileSync(process.execPath, [harakaBin(repo), '-i', dir], { stdio: 'ignore' });
  const c = (f: string, text: string) => writeFileSync(join(dir, 'config', f), text);
  // One process (nodes=0: no cluster master/worker pair), listening on loopback; warn-level logging.
  c('smtp.ini', `listen=127.0.0.1:${port}\nnodes=0\n`);
  c('log.ini', '[main]\nlevel=warn\ntimestamps=false\n');
  // Accept RCPT for the bench domain, refuse others; the discard queue drops the message after DATA.
  c('plugins', 'rcpt_to.in_host_list\nqueue/discard\n');
  c('host_list', `${DOMAIN}\n`);
  c('me', `haraka.${DOMAIN}\n`);
}
