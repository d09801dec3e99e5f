// Every SMTP reply mailhook sends, with its enhanced status code (RFC 3463) as it appears on the wire.
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
  TooManyRecipients: reply(452, '4.5.3', 'Error: too many recipients'),
  MessageTooLarge: reply(552, '5.3.4', 'Error: message exceeds fixed maximum message size'),
  SpoolUnavailable: reply(451, '4.3.0', 'Error: queue file write error, try again later'),
  ShuttingDown: reply(421, '4.3.2', 'Service shutting down, closing transmission channel'),
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

/**
 * Replies smtp-server writes itself without an enhanced code, which mailhook rewrites so every
 * refusal carries the code its meaning calls for. Matched on code and text at the adapter only.
 */
export const LIBRARY_REPLY_REWRITES: ReadonlyArray<{ code: number; match: RegExp; enhanced: string }> = [
  // MAIL FROM SIZE=n over the limit (RFC 1870 §6.1, RFC 3463 §3.4: 5.3.4 message too big for system)
  { code: 552, match: /^Error: message exceeds fixed maximum message size/, enhanced: '5.3.4' },
  // RFC 5321 §4.3.2: bad sequence of commands
  { code: 503, match: /^Error:/, enhanced: '5.5.1' },
  { code: 501, match: /^Error: Bad message size syntax/, enhanced: '5.5.4' },
  { code: 501, match: /^Error:/, enhanced: '5.5.4' },
  { code: 500, match: /^Error:/, enhanced: '5.5.2' },
  { code: 421, match: /Server shutting down/, enhanced: '4.3.2' },
  { code: 421, match: /Too many connected clients/, enhanced: '4.7.0' },
  { code: 421, match: /Timeout/i, enhanced: '4.4.2' },
];
