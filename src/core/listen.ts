// A listener that cannot bind, as the configuration problem it is: the key, the variable that set it, the usual fix.
import { MailhookError } from './errors.js';

/**
 * `what` could not listen on `at` (from the key `key`, set by the environment variable `envName` when given): a
 * CONFIG_INVALID user fault, so `serve` exits 2 with this one line. EACCES on a port below 1024 says what grants it.
 */
export function listenError(what: string, at: { host: string; port: number }, key: string, err: unknown, envName?: string): MailhookError {
  const code = (err as { code?: unknown } | null)?.code;
  const reason = err instanceof Error ? err.message : String(err);
  const hint =
    code === 'EACCES' && at.port < 1024
      ? `; a port below 1024 needs root or the CAP_NET_BIND_SERVICE capability (deploy/systemd/mailhook.service grants it), or listen on a higher port`
      : code === 'EADDRINUSE'
        ? '; another program (or another mailhook) listens there'
        : '';
  const source = envName ? `check ${key}, set by the environment variable ${envName}` : `check ${key}`;
  return new MailhookError('CONFIG_INVALID', `cannot listen for ${what} on ${at.host}:${at.port}: ${reason}${hint}; ${source}`, { cause: err, userFault: true });
}
