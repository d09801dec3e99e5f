// The one error model: a stable code, a cause, and whether the user (operator or client) is at fault.
export type ErrorCode =
  | 'CONFIG_INVALID'
  | 'CONFIG_UNREADABLE'
  | 'SPOOL_UNAVAILABLE'
  | 'SPOOL_CLOSED'
  | 'MESSAGE_TOO_LARGE'
  /** refused for what it is (a structure limit, DMARC): details[0] says why */
  | 'MESSAGE_REFUSED'
  | 'MESSAGE_NOT_FOUND'
  | 'ROUTE_NOT_FOUND'
  | 'WEBHOOK_BAD_SECRET'
  | 'SHUTTING_DOWN'
  | 'PARSE_TIMEOUT'
  | 'PARSE_CRASHED'
  | 'INVALID_INPUT';

export class MailhookError extends Error {
  readonly code: ErrorCode;
  /** true when the problem is the caller's input (logged at info/warn), false for our own faults */
  readonly userFault: boolean;
  readonly details: readonly string[];

  constructor(code: ErrorCode, message: string, opts: { cause?: unknown; userFault?: boolean; details?: readonly string[] } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'MailhookError';
    this.code = code;
    this.userFault = opts.userFault ?? false;
    this.details = opts.details ?? [];
  }
}

/** One problem in a configuration file, named by its key path. */
export interface ConfigProblem {
  path: string;
  message: string;
}

export class ConfigError extends MailhookError {
  readonly problems: readonly ConfigProblem[];
  constructor(source: string, problems: readonly ConfigProblem[]) {
    const lines = problems.map((p) => `  - ${p.path || '(top level)'}: ${p.message}`);
    super('CONFIG_INVALID', `invalid configuration in ${source}:\n${lines.join('\n')}`, {
      userFault: true,
      details: lines,
    });
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

export function isErrnoException(err: unknown): err is NodeJS.ErrnoException {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string';
}
