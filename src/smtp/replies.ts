// Every SMTP reply mailhook sends, with its enhanced status code (RFC 3463) as it appears on the wire.
import { MailhookError } from '../core/errors.js';

export interface Reply {
  code: number;
  enhanced: string;
  text: string;
}

function reply(code: number, enhanced: string, text: string): Reply {
  return { code, enhanced, text };
}

export const Reply = {
  // RFC 5321 §4.2.2 / RFC 3463: the enhanced code leads the text, as Postfix writes it.
  Queued: (id: string) => reply(250, '2.0.0', `Ok: queued as ${id}`),
  RcptUnknown: reply(550, '5.1.1', 'Recipient address rejected: User unknown'),
  RelayDenied: reply(550, '5.7.1', 'Relaying denied'),
  BadRecipientSyntax: reply(501, '5.1.3', 'Bad recipient address syntax'),
  // RFC 5321 §4.1.1.11: a MAIL or RCPT parameter of an extension the server did not advertise (DSN's NOTIFY, ...)
  UnsupportedParameter: (name: string) => reply(555, '5.5.4', `Error: unsupported parameter ${name}`),
  // RFC 6531 §3.4, RFC 6533 §5: a non-ASCII address in a transaction without the SMTPUTF8 parameter
  NonAsciiAddress: reply(553, '5.6.7', 'Error: non-ASCII address without SMTPUTF8'),
  TooManyRecipients: reply(452, '4.5.3', 'Error: too many recipients'),
  MessageTooLarge: reply(552, '5.3.4', 'Error: message exceeds fixed maximum message size'),
  SpoolUnavailable: reply(451, '4.3.0', 'Error: queue file write error, try again later'),
  ShuttingDown: reply(421, '4.3.2', 'Service shutting down, closing transmission channel'),
  // RFC 3463 §3.4: 4.3.1 mail system full (Postfix: queue_minfree, or the disk filled up mid-message)
  InsufficientStorage: reply(452, '4.3.1', 'Error: insufficient system storage'),
  // Postfix smtpd_forbid_bare_newline = reject: a lone CR or LF in DATA is how SMTP smuggling starts
  BareNewline: reply(550, '5.5.2', 'Error: bare <CR> or <LF> received'),
  HeaderTooLarge: reply(552, '5.3.4', 'Error: message header section exceeds size limit'),
  // RFC 5321 §6.3: too many Received headers means a mail loop
  TooManyHops: reply(554, '5.4.6', 'Error: too many hops (mail forwarding loop)'),
  TooManyMimeParts: reply(554, '5.6.0', 'Error: too many MIME parts'),
  MimeTooDeep: reply(554, '5.6.0', 'Error: MIME nesting too deep'),
  // A Content-Type mailhook cannot read as mailparser would (a boundary over 1,020 characters, an RFC 2231 boundary
  // in an encoding it does not decode, a MIME field over 8 KB): refused rather than stored and found unparseable later.
  MimeHeaderUnreadable: reply(554, '5.6.0', 'Error: MIME header not understood'),
  // Postfix smtpd_forbid_unauth_pipelining: content sent before the 354 (RFC 2920 §3.1: DATA ends a group)
  PipeliningViolation: reply(554, '5.5.0', 'Error: SMTP protocol synchronization'),
  TooManyConnectionsFrom: (hostname: string, ip: string) => reply(421, '4.7.0', `${hostname} Error: too many connections from ${ip}`),
  TooMuchMailFrom: (ip: string) => reply(450, '4.7.1', `Error: too much mail from ${ip}`),
  TooManyRecipientsFrom: (ip: string) => reply(450, '4.7.1', `Error: too many recipients from ${ip}`),
  TooManyErrors: (hostname: string) => reply(421, '4.7.0', `${hostname} Error: too many errors`),
  // Postfix smtpd_min_data_rate: a DATA phase that trickles in slower than the minimum rate
  DataTimeout: (hostname: string) => reply(421, '4.4.2', `${hostname} Error: timeout exceeded`),
  // smtp.limits.max_session_ms: a session held open past its time (a command every few minutes keeps a slot for ever)
  SessionTimeLimit: (hostname: string) => reply(421, '4.4.2', `${hostname} Error: session time limit exceeded`),
  // RFC 3207 §4: the server may require TLS before accepting mail
  TlsRequired: reply(530, '5.7.0', 'Must issue a STARTTLS command first'),
  DmarcReject: (domain: string) => reply(550, '5.7.1', `Error: message rejected per DMARC policy of ${domain}`),
  // A header too big to check (sender_auth size bounds) on a route that enforces DMARC: not let through unchecked.
  DmarcUnevaluated: reply(550, '5.7.1', 'Error: header section too large for a DMARC check'),
  // XFORWARD (Postfix XFORWARD_README), with Postfix smtpd's replies: the relay's client details for the next transaction
  XforwardOk: reply(250, '2.0.0', 'Ok'),
  XforwardNotAuthorized: reply(550, '5.7.0', 'Error: insufficient authorization'),
  XforwardInTransaction: reply(503, '5.5.1', 'Error: MAIL transaction in progress'),
  XforwardSyntax: reply(501, '5.5.4', 'Syntax: XFORWARD attribute=value...'),
  XforwardBadAttribute: reply(501, '5.5.4', 'Bad XFORWARD attribute name'),
  XforwardBadAddress: reply(501, '5.5.4', 'Bad XFORWARD ADDR: not an IP address'),
  // Live recipient verification: never 250 for a recipient that could not be checked
  VerifyUnavailable: reply(451, '4.3.0', 'Error: recipient verification unavailable, try again later'),
} as const;

export function formatReply(r: Reply): string {
  return `${r.enhanced} ${r.text}`;
}

/** An Error that smtp-server turns into the given reply (responseCode plus message). */
export class SmtpReplyError extends Error {
  readonly responseCode: number;
  constructor(readonly reply: Reply) {
    super(formatReply(reply));
    this.responseCode = reply.code;
  }
}

/** A message refused at the end of DATA for what it contains; carries the reply to send. */
export class MessageRefused extends MailhookError {
  constructor(
    readonly reply: Reply,
    readonly reason: string,
  ) {
    super('MESSAGE_REFUSED', `message refused: ${reason}`, { userFault: true, details: [reason] });
  }
}

/**
 * Replies smtp-server writes itself without an enhanced code, which mailhook rewrites so every
 * reply carries the code its meaning calls for (RFC 2034: once ENHANCEDSTATUSCODES is advertised,
 * every reply but the greeting and the EHLO/HELO reply has one). Matched on code and text at the adapter only.
 */
export const LIBRARY_REPLY_REWRITES: ReadonlyArray<{ code: number; match: RegExp; enhanced: string }> = [
  // MAIL FROM SIZE=n over the limit (RFC 1870 §6.1, RFC 3463 §3.4: 5.3.4 message too big for system)
  { code: 552, match: /^Error: message exceeds fixed maximum message size/, enhanced: '5.3.4' },
  // RFC 3463 §3.2: 5.1.7 bad sender mailbox syntax, 5.1.3 bad destination mailbox syntax
  { code: 501, match: /^Error: Bad sender address syntax/, enhanced: '5.1.7' },
  { code: 501, match: /^Error: Bad recipient address syntax/, enhanced: '5.1.3' },
  // RFC 5321 §4.3.2: bad sequence of commands
  { code: 503, match: /^Error:/, enhanced: '5.5.1' },
  { code: 501, match: /^Error: Bad message size syntax/, enhanced: '5.5.4' },
  { code: 501, match: /^(?:Error:|Invalid )/, enhanced: '5.5.4' },
  { code: 500, match: /^Error:/, enhanced: '5.5.2' },
  { code: 421, match: /Server shutting down/, enhanced: '4.3.2' },
  { code: 421, match: /Too many connected clients/, enhanced: '4.7.0' },
  { code: 421, match: /You talk too soon$/, enhanced: '4.7.0' },
  { code: 421, match: /^Error: too many unrecognized commands/, enhanced: '4.7.0' },
  { code: 421, match: /^HTTP requests not allowed/, enhanced: '4.7.0' },
  { code: 421, match: /^Error: Command line too long/, enhanced: '4.5.0' },
  { code: 421, match: /Timeout/i, enhanced: '4.4.2' },
];

/** The enhanced code for a library reply no rewrite names: by the command it answers, else by the reply code. */
export const DEFAULT_ENHANCED: Readonly<Record<string, string>> = {
  MAIL_FROM_OK: '2.1.0',
  RCPT_TO_OK: '2.1.5',
  '2': '2.0.0',
  '4': '4.0.0',
  '5': '5.0.0',
  '451': '4.3.0',
  '530': '5.7.0',
  '550': '5.7.1',
  '554': '5.5.0',
};
