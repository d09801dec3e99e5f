// mailhook serve: load and validate the config, start the app, and stop it cleanly on a signal.
import { startApp } from '../app.js';
import { systemClock } from '../core/clock.js';
import { ConfigError, MailhookError } from '../core/errors.js';
import { createLogger, type Logger } from '../core/logger.js';
import { loadConfigFile, type Config } from '../config/load.js';
import { configWarnings, spoolDiskWarnings, spoolModeWarnings } from '../config/check.js';
import type { CliIo } from './index.js';
import { createHash } from 'node:crypto';
import { Secret } from '../config/secret.js';

type App = Awaited<ReturnType<typeof startApp>>;

export async function runServe(io: CliIo & { configFile: string }): Promise<number> {
  let config;
  try {
    config = loadConfigFile(io.configFile, io.env, io.cwd);
  } catch (err) {
    if (err instanceof ConfigError) {
      io.stderr(`mailhook: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  const log = createLogger({ level: config.log.level });
  // Signals are taken from here on: a start can take seconds (a spool upgrade), and SIGHUP's default action (a
  // certificate renewal's deploy hook) or SIGTERM's would end the process wherever it is. During the start they are
  // noted and acted on once it is done: a reload then, or a stop (a second SIGTERM ends the process at once).
  let app: App | undefined;
  const pending: { reload: boolean; stop?: string } = { reload: false };
  let resolveStopped: (code: number) => void = () => {};
  const stopped = new Promise<number>((resolve) => (resolveStopped = resolve));
  const reload = (started: App) => {
    log.info({ signal: 'SIGHUP' }, 'reloading');
    started.reload();
    reviewConfigFile(io, config, log);
  };
  const stop = (started: App, signal: string) => {
    log.info({ signal }, 'stopping');
    started.stop().then(
      () => {
        log.info('stopped');
        resolveStopped(0);
      },
      (err: unknown) => {
        log.error({ err }, 'error while stopping');
        resolveStopped(1);
      },
    );
  };
  io.onReload?.(() => {
    if (app) return reload(app);
    if (!pending.reload) log.info({ signal: 'SIGHUP' }, 'SIGHUP during start-up: reloading once started');
    pending.reload = true;
  });
  io.onSignal((signal) => {
    if (app) return stop(app, signal);
    log.info({ signal }, `${signal} during start-up: stopping once started`);
    pending.stop = signal;
  });
  for (const w of [...configWarnings(config), ...spoolModeWarnings(config.spool.path), ...spoolDiskWarnings(config)]) log.warn({ key: w.path }, `${w.path}: ${w.message}`);
  try {
    app = await startApp({ config, log, clock: systemClock, random: Math.random });
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    // A problem of the configuration or the machine is its message alone; a stack only for mailhook's own faults.
    if (err instanceof MailhookError && err.userFault) log.fatal({ code: err.code, reason: message }, 'mailhook could not start');
    else log.fatal({ err }, 'mailhook could not start');
    io.stderr(`mailhook: could not start: ${message}\n`);
    return err instanceof MailhookError && err.userFault ? 2 : 1;
  }
  if (pending.stop) stop(app, pending.stop);
  else if (pending.reload) reload(app);
  return stopped;
}

/** What a Config holds besides settings: where it came from and what was warned of. */
const NOT_SETTINGS = new Set(['source', 'fromEnvironment', 'fileWarnings', 'envWarnings']);

/**
 * SIGHUP reloads the TLS key and certificate, not the configuration: the file is read again only to say whether
 * it changed (which sections; a restart applies them) or now has problems (the running configuration stays, and a
 * restart would fail until they are fixed). Values are never logged, only section names and the loader's problems.
 */
export function reviewConfigFile(io: CliIo & { configFile: string }, running: Config, log: Logger): void {
  let next: Config;
  try {
    next = loadConfigFile(io.configFile, io.env, io.cwd);
  } catch (err) {
    // Never thrown out of a signal handler: the MX keeps running whatever the file holds.
    if (!(err instanceof ConfigError)) return void log.error({ err }, `${io.configFile} could not be read again; the running configuration stays`);
    log.error({ problems: err.problems.map((p) => `${p.path || '(top level)'}: ${p.message}`) }, `${io.configFile} has problems now: the running configuration stays, but a restart would fail until they are fixed (mailhook check-config)`);
    return;
  }
  const sections = [...new Set([...Object.keys(running), ...Object.keys(next)])].filter((k) => !NOT_SETTINGS.has(k));
  const changed = sections.filter((k) => settingsText(running[k as keyof Config]) !== settingsText(next[k as keyof Config]));
  if (changed.length > 0) log.warn({ changed }, `${io.configFile} has changed (${changed.join(', ')}): SIGHUP reloads only the TLS key and certificate; restart mailhook to apply the rest`);
}

/**
 * A section's settings as text to compare, secrets included: a Secret serialises as "[redacted]", so a rotated
 * webhook secret or admin token would look unchanged. Each stands as a hash of its value (compared, never logged),
 * except a secret read from a file that mailhook reads again at each use (IMAP/Graph): its file stands for it.
 */
function settingsText(value: unknown): string {
  return JSON.stringify(value, function (this: Record<string, unknown>, key: string, v: unknown) {
    const original = this[key];
    if (!(original instanceof Secret)) return v;
    return original.file !== undefined ? `secret file ${original.file}` : `secret ${createHash('sha256').update(original.reveal()).digest('hex')}`;
  });
}
