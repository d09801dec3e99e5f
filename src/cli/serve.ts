// mailhook serve: load and validate the config, start the app, and stop it cleanly on a signal.
import { startApp } from '../app.js';
import { systemClock } from '../core/clock.js';
import { ConfigError, MailhookError } from '../core/errors.js';
import { createLogger } from '../core/logger.js';
import { loadConfigFile } from '../config/load.js';
import { configWarnings, spoolDiskWarnings, spoolModeWarnings } from '../config/check.js';
import type { CliIo } from './index.js';

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
