// Process entry: the only module that touches `process` (argv, env, signals, exit code).
import { runCli } from './cli/index.js';

const argv = process.argv.slice(2);
// The reader of a subcommand's output went away (`messages raw ID | head -c 10`, `messages list --json | head -1`):
// it had what it wanted, so stop quietly with exit 0 rather than 141 (128 + SIGPIPE), which would fail such a
// pipeline under `set -o pipefail` although nothing went wrong. Without this handler the EPIPE was an unhandled
// 'error' event (a stack trace, exit 1), and stdoutBytes waited for a 'drain' that never comes. serve keeps the
// default: its standard output is its log.
if (argv[0] !== 'serve') {
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    process.stderr.write(`mailhook: cannot write to standard output: ${err.code ?? err.message}\n`);
    process.exit(74); // EX_IOERR
  });
}

const code = await runCli({
  argv,
  env: process.env,
  cwd: process.cwd(),
  stdout: (s) => process.stdout.write(s),
  stderr: (s) => process.stderr.write(s),
  stdoutBytes: (chunk) => new Promise<void>((resolve) => (process.stdout.write(chunk) ? resolve() : process.stdout.once('drain', resolve))),
  onReload: (handler) => {
    process.on('SIGHUP', () => handler());
  },
  onSignal: (handler) => {
    let seen = false;
    for (const sig of ['SIGTERM', 'SIGINT'] as const) {
      process.on(sig, () => {
        if (seen) process.exit(1); // a second signal: stop waiting
        seen = true;
        handler(sig);
      });
    }
  },
});
process.exitCode = code;
