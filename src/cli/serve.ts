// mailhook serve: load and validate the config, start the app, and stop it cleanly on a signal.
import { startApp } from '../app.js';
import { systemClock } from '../core/clock.js';
import { ConfigError, MailhookError } from '../core/errors.js';
import { createLogger } from '../core/logger.js';
import { loadConfigFile } from '../config/load.js';
import { configWarnings, spoolDiskWarnings, spoolModeWarnings } from '../config/check.js';
import type { CliIo } from './index.js';

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
  for (const w of [...configWarnings(config), ...spoolModeWarnings(config.spool.path), ...spoolDiskWarnings(config)]) log.warn({ key: w.path }, `${w.path}: ${w.message}`);
  let app;
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
  const started = app;
  io.onReload?.(() => {
    log.info({ signal: 'SIGHUP' }, 'reloading');
    started.reload();
  });
  return new Promise<number>((resolve) => {
    io.onSignal((signal) => {
      log.info({ signal }, 'stopping');
      started.stop().then(
        () => {
          log.info('stopped');
          resolve(0);
        },
        (err: unknown) => {
          log.error({ err }, 'error while stopping');
          resolve(1);
        },
      );
    });
  });
}
