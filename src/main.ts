// Process entry: the only module that touches `process` (argv, env, signals, exit code).
import { runCli } from './cli/index.js';

const code = await runCli({
  argv: process.argv.slice(2),
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
