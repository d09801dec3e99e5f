// A minimal SMTP (or LMTP) client for send-test: one message to the running mailhook, over STARTTLS when offered.
import { createConnection, isIP, type Socket } from 'node:net';
import { hostname } from 'node:os';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { bytesToText } from '../parse/text.js';

export interface SmtpReply {
  code: number;
  /** the text of the reply's last line */
  text: string;
  /** the text of every line, for a multi-line reply (EHLO's keywords) */
  lines: string[];
}

export interface SmtpSendResult extends SmtpReply {
  /** the TLS version when the message went over STARTTLS, else null */
  tls: string | null;
}

export class SmtpSendError extends Error {
  constructor(
    message: string,
    readonly reply?: SmtpReply,
  ) {
    super(message);
  }
}

/**
 * Sends `data` (CRLF lines, no final dot) from `from` to `to`; resolves with the reply to the end of DATA (with
 * `lmtp`, RFC 2033: LHLO, and one reply per recipient after the data, the first returned once all are 250).
 *
 * With `starttls: 'auto'` (the default) the session is upgraded when the server offers STARTTLS, as an MTA at
 * Postfix's `may` level does: encrypted, the certificate not verified (send-test checks the path a message takes
 * through mailhook, not who holds the certificate; no credentials are sent). `'never'` stays in plain text.
 */
export async function smtpSend(opts: { host: string; port: number; from: string; to: string[]; data: string; timeoutMs: number; lmtp?: boolean; starttls?: 'auto' | 'never' }): Promise<SmtpSendResult> {
  let socket: Socket | TLSSocket = await new Promise<Socket>((resolve, reject) => {
    const s = createConnection({ host: opts.host, port: opts.port }, () => resolve(s));
    s.once('error', (err) => reject(new SmtpSendError(`cannot connect to SMTP at ${opts.host}:${opts.port}: ${(err as NodeJS.ErrnoException).code ?? err.message}`)));
  });
  socket.setTimeout(opts.timeoutMs);
  let replies = replyReader(socket);
  let tls: string | null = null;
  const expect = async (what: string, ok: (code: number) => boolean): Promise<SmtpReply> => {
    const r = await replies.next();
    if (!ok(r.code)) throw new SmtpSendError(`${what} refused: ${r.code} ${r.text}`, r);
    return r;
  };
  try {
    await expect('the greeting', (c) => c === 220);
    const hello = opts.lmtp ? 'LHLO' : 'EHLO';
    socket.write(`${hello} ${hostname() || 'localhost'}\r\n`);
    const ehlo = await expect(hello, (c) => c === 250);
    if (opts.starttls !== 'never' && ehlo.lines.slice(1).some((l) => /^STARTTLS\b/i.test(l))) {
      socket.write('STARTTLS\r\n');
      await expect('STARTTLS', (c) => c === 220);
      replies.detach();
      const secure = await upgrade(socket as Socket, opts.host, opts.timeoutMs);
      socket = secure;
      tls = secure.getProtocol();
      replies = replyReader(socket);
      // RFC 3207 §4.2: the client forgets what it knew and says hello again.
      socket.write(`${hello} ${hostname() || 'localhost'}\r\n`);
      await expect(`${hello} after STARTTLS`, (c) => c === 250);
    }
    socket.write(`MAIL FROM:<${opts.from}>\r\n`);
    await expect('MAIL FROM', (c) => c === 250);
    for (const rcpt of opts.to) {
      socket.write(`RCPT TO:<${rcpt}>\r\n`);
      await expect(`RCPT TO:<${rcpt}>`, (c) => c === 250 || c === 251);
    }
    socket.write('DATA\r\n');
    await expect('DATA', (c) => c === 354);
    // RFC 5321 §4.5.2: a line starting with "." gets another one.
    socket.write(`${opts.data.replace(/^\./gm, '..')}\r\n.\r\n`);
    const end = await expect('the message', (c) => c === 250);
    if (opts.lmtp) for (const rcpt of opts.to.slice(1)) await expect(`the message for ${rcpt}`, (c) => c === 250);
    socket.write('QUIT\r\n');
    await replies.next().catch(() => undefined);
    return { ...end, tls };
  } finally {
    socket.destroy();
  }
}

/** A reply line read as latin1 (one char per byte), as text: UTF-8 when valid, else the bytes as they came. */
const utf8 = (latin1: string): string => bytesToText(Buffer.from(latin1, 'latin1'));

function upgrade(socket: Socket, host: string, timeoutMs: number): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    // SNI takes a name, never an address (RFC 6066 §3).
    const secure = tlsConnect({ socket, servername: isIP(host) ? undefined : host, rejectUnauthorized: false });
    secure.setTimeout(timeoutMs);
    secure.once('secureConnect', () => resolve(secure));
    secure.once('error', (err) => reject(new SmtpSendError(`the TLS handshake after STARTTLS failed: ${err.message}`)));
    secure.once('timeout', () => reject(new SmtpSendError('the TLS handshake after STARTTLS timed out')));
  });
}

function replyReader(socket: Socket | TLSSocket): { next(): Promise<SmtpReply>; detach(): void } {
  let buffer = '';
  const ready: SmtpReply[] = [];
  const waiting: Array<{ resolve: (r: SmtpReply) => void; reject: (e: Error) => void }> = [];
  let failure: Error | undefined;
  const fail = (err: Error) => {
    failure = err;
    for (const w of waiting.splice(0)) w.reject(err);
  };
  // Bytes, not a string encoding: the raw socket is handed to TLS after STARTTLS and must not decode its stream.
  const onData = (d: Buffer) => {
    buffer += d.toString('latin1');
    let m: RegExpExecArray | null;
    // A reply ends with "NNN text"; "NNN-text" lines continue it.
    while ((m = /^((?:\d{3}-[^\n]*\n)*)(\d{3})(?:[ ]([^\n]*))?\r?\n/.exec(buffer))) {
      buffer = buffer.slice(m[0].length);
      const lines = m[0].split('\n').slice(0, -1).map((l) => utf8(l.replace(/\r$/, '').slice(4)));
      const reply = { code: Number(m[2]), text: utf8((m[3] ?? '').replace(/\r$/, '')), lines };
      const w = waiting.shift();
      if (w) w.resolve(reply);
      else ready.push(reply);
    }
  };
  const onTimeout = () => fail(new SmtpSendError('the SMTP server stopped answering (timeout)'));
  const onError = (err: Error) => fail(new SmtpSendError(`SMTP connection failed: ${err.message}`));
  const onClose = () => fail(new SmtpSendError('the SMTP server closed the connection'));
  socket.on('data', onData);
  socket.on('timeout', onTimeout);
  socket.on('error', onError);
  socket.on('close', onClose);
  return {
    next() {
      const r = ready.shift();
      if (r) return Promise.resolve(r);
      if (failure) return Promise.reject(failure);
      return new Promise((resolve, reject) => waiting.push({ resolve, reject }));
    },
    /** stops reading: the socket is about to be handed to TLS */
    detach() {
      socket.off('data', onData);
      socket.off('timeout', onTimeout);
      socket.off('error', onError);
      socket.off('close', onClose);
    },
  };
}
