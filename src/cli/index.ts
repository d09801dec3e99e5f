// The mailhook command line: subcommands parsed with commander; process access stays in main.ts.
import { Command, CommanderError } from 'commander';
import { readFileSync } from 'node:fs';
import { loadConfigFile, type Env } from '../config/load.js';
import { ConfigError, MailhookError } from '../core/errors.js';
import { backupSpool } from '../spool/backup.js';
import { resolve } from 'node:path';
import { checkResources, configWarnings, spoolDiskWarnings, spoolModeWarnings, tlsWarnings } from '../config/check.js';
import { runServe } from './serve.js';
import { configReferenceMarkdown } from '../config/reference.js';
import { registerAdminCommands } from './admin-commands.js';

export interface CliIo {
  argv: string[];
  env: Env;
  cwd: string;
  stdout: (s: string) => void;
  stderr: (s: string) => void;
  /** raw bytes to standard output (messages raw); resolves once they are written */
  stdoutBytes?: (chunk: Uint8Array) => Promise<void>;
  /** resolves when the process is asked to stop (SIGTERM/SIGINT) */
  onSignal: (handler: (signal: string) => void) => void;
  /** called on SIGHUP: reload the TLS key and certificate without a restart */
  onReload?: (handler: () => void) => void;
}

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/** Runs the CLI; resolves to the process exit code. */
export async function runCli(io: CliIo): Promise<number> {
  let exitCode = 0;
  const program = new Command()
    .name('mailhook')
    .description('SMTP in, signed webhooks out')
    .version(version())
    .exitOverride()
    .configureOutput({ writeOut: io.stdout, writeErr: io.stderr });

  program
    .command('serve')
    .description('run the SMTP server, delivery worker and HTTP listener in the foreground')
    .requiredOption('-c, --config <file>', 'configuration file (YAML)')
    .action(async (opts: { config: string }) => {
      exitCode = await runServe({ ...io, configFile: opts.config });
    });

  program
    .command('config-reference')
    .description('print the configuration reference (Markdown) generated from the schema')
    .action(() => {
      io.stdout(configReferenceMarkdown());
    });

  program
    .command('check-config')
    .description('validate a configuration file and print every problem')
    .requiredOption('-c, --config <file>', 'configuration file (YAML)')
    .action((opts: { config: string }) => {
      try {
        const config = loadConfigFile(opts.config, io.env, io.cwd);
        const problems = checkResources(config);
        if (problems.length > 0) throw new ConfigError(opts.config, problems);
        for (const w of [...configWarnings(config), ...spoolModeWarnings(config.spool.path), ...spoolDiskWarnings(config), ...tlsWarnings(config, Date.now())]) io.stderr(`${opts.config}: warning: ${w.path}: ${w.message}\n`);
        io.stdout(`${opts.config}: ok (${config.routes.length} route${config.routes.length === 1 ? '' : 's'}: ${config.routes.map((r) => r.name).join(', ')})\n`);
      } catch (err) {
        if (!(err instanceof ConfigError)) throw err;
        io.stderr(`${err.message}\n`);
        exitCode = 2;
      }
    });

  program
    .command('backup')
    .description('copy the spool (database and message files) to a new path while mailhook runs; restore by stopping mailhook and putting the copy at spool.path')
    .option('-c, --config <file>', 'configuration file (YAML): its spool.path is backed up (the whole file must be valid, secret files readable)')
    .option('--spool <file>', 'the spool database to back up, instead of --config (needs nothing else: no secrets)')
    .requiredOption('--to <file>', 'the copy\'s database file (new; its message files go to <file>.blobs)')
    .action(async (opts: { config?: string; spool?: string; to: string }) => {
      try {
        if ((opts.config === undefined) === (opts.spool === undefined)) {
          io.stderr('mailhook backup: give the spool as --spool FILE, or --config FILE to use its spool.path\n');
          exitCode = 2;
          return;
        }
        const spoolPath = opts.spool !== undefined ? resolve(io.cwd, opts.spool) : loadConfigFile(opts.config!, io.env, io.cwd).spool.path;
        const to = resolve(io.cwd, opts.to);
        const r = await backupSpool(spoolPath, to);
        io.stdout(`${spoolPath} backed up to ${to}: ${r.messages} message${r.messages === 1 ? '' : 's'}, ${r.files} of them in ${to}.blobs` + (r.leftOut > 0 ? `; ${r.leftOut} removed from the spool during the backup left out` : '') + '\n');
      } catch (err) {
        if (err instanceof ConfigError) {
          io.stderr(`${err.message}\n`);
          exitCode = 2;
          return;
        }
        if (err instanceof MailhookError && err.userFault) {
          io.stderr(`mailhook backup: ${err.message}\n`);
          exitCode = 1;
          return;
        }
        throw err;
      }
    });

  registerAdminCommands(program, io, (code) => {
    exitCode = code;
  });

  try {
    await program.parseAsync(io.argv, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 64;
    throw err;
  }
  return exitCode;
}
