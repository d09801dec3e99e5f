// Errors of the mailbox bridges, in the shape of the one error model (stable code, cause, user fault) plus
// the kind that metrics count; classify() maps imapflow, TLS, socket and HTTP failures onto it.

export type MailboxErrorCode =
  | 'MAILBOX_AUTH_FAILED' // the server refused the credentials or the token
  | 'MAILBOX_NETWORK' // DNS, refused, reset, timed out, closed
  | 'MAILBOX_TLS' // handshake or certificate failure
  | 'MAILBOX_SERVER' // the server answered NO/BAD, or Graph answered an error status
  | 'MAILBOX_NOT_FOUND' // the configured folder does not exist
  | 'OAUTH_TOKEN_FAILED' // the token endpoint refused or failed
  | 'MAILBOX_SPOOL' // the spool could not take the message
  | 'MAILBOX_PROTOCOL'; // anything else the server or the client library did

export type ErrorKind = 'auth' | 'network' | 'tls' | 'server' | 'not_found' | 'token' | 'spool' | 'protocol';

const KIND: Record<MailboxErrorCode, ErrorKind> = {
  MAILBOX_AUTH_FAILED: 'auth',
  MAILBOX_NETWORK: 'network',
  MAILBOX_TLS: 'tls',
  MAILBOX_SERVER: 'server',
  MAILBOX_NOT_FOUND: 'not_found',
  OAUTH_TOKEN_FAILED: 'token',
  MAILBOX_SPOOL: 'spool',
  MAILBOX_PROTOCOL: 'protocol',
};

export class MailboxError extends Error {
  readonly code: MailboxErrorCode;
  readonly userFault: boolean;
  /** for throttling answers: how long the server asked us to wait */
  readonly retryAfterMs: number | undefined;
  constructor(code: MailboxErrorCode, message: string, opts: { cause?: unknown; userFault?: boolean; retryAfterMs?: number } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'MailboxError';
    this.code = code;
    this.userFault = opts.userFault ?? (code === 'MAILBOX_AUTH_FAILED' || code === 'MAILBOX_NOT_FOUND' || code === 'OAUTH_TOKEN_FAILED');
    this.retryAfterMs = opts.retryAfterMs;
  }
  get kind(): ErrorKind {
    return KIND[this.code];
  }
}

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'ECONNABORTED', 'NoConnection', 'EConnectionClosed', 'CONNECT_TIMEOUT', 'GREETING_TIMEOUT', 'ETIMEOUT', 'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CLOSED', 'ClosedAfterConnectText', 'ClosedAfterConnectTLS', 'UPGRADE_TIMEOUT', 'StateLogout']);

/** Maps any failure of a mailbox session onto a MailboxError (kept as is when it already is one). */
export function classify(err: unknown): MailboxError {
  if (err instanceof MailboxError) return err;
  const e = (err ?? {}) as { code?: unknown; message?: unknown; authenticationFailed?: unknown; responseStatus?: unknown; responseText?: unknown; serverResponseCode?: unknown };
  const code = typeof e.code === 'string' ? e.code : '';
  const text = typeof e.responseText === 'string' && e.responseText ? e.responseText : typeof e.message === 'string' ? e.message : String(err);
  if (e.authenticationFailed === true || code === 'AUTHENTICATIONFAILED' || e.serverResponseCode === 'AUTHENTICATIONFAILED') {
    return new MailboxError('MAILBOX_AUTH_FAILED', `authentication failed: ${text}`, { cause: err });
  }
  if (/^(ERR_TLS|ERR_SSL|CERT_|DEPTH_ZERO|SELF_SIGNED|UNABLE_TO_|HOSTNAME_MISMATCH|ERR_OSSL)/.test(code) || /certificate|TLS|SSL/i.test(code)) {
    return new MailboxError('MAILBOX_TLS', `TLS failed: ${text} (${code})`, { cause: err });
  }
  if (NETWORK_CODES.has(code) || /^E[A-Z]+$/.test(code)) {
    return new MailboxError('MAILBOX_NETWORK', `${text}${code && !text.includes(code) ? ` (${code})` : ''}`, { cause: err });
  }
  if (e.serverResponseCode === 'NONEXISTENT' || /NONEXISTENT|Mailbox doesn't exist/i.test(text)) {
    return new MailboxError('MAILBOX_NOT_FOUND', text, { cause: err });
  }
  if (e.responseStatus === 'NO' || e.responseStatus === 'BAD') {
    return new MailboxError('MAILBOX_SERVER', `the server answered ${String(e.responseStatus)}: ${text}`, { cause: err });
  }
  return new MailboxError('MAILBOX_PROTOCOL', text, { cause: err });
}
