// A minimal SMTP (or LMTP) client for send-test: one message over plain SMTP to the running mailhook.
import { createConnection, type Socket } from 'node:net';
import { hostname } from 'node:os';

export interface SmtpReply {
  code: number;
  text: string;
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
 */
export async function smtpSend(opts: { host: string; port: number; from: string; to: string[]; data: string; timeoutMs: number; lmtp?: boolean }): Promise<SmtpReply> {
  const socket = await new Promise<Socket>((resolve, reject) => {
    const s = createConnection({ host: opts.host, port: opts.port }, () => resolve(s));
    s.once('error', (err) => reject(new SmtpSendError(`cannot connect to SMTP at ${opts.host}:${opts.port}: ${(err as NodeJS.ErrnoException).code ?? err.message}`)));
  });
  socket.setTimeout(opts.timeoutMs);
  const replies = replyReader(socket);
  const expect = async (what: string, ok: (code: number) => boolean): Promise<SmtpReply> => {
    const r = await replies.next();
    if (!ok(r.code)) throw new SmtpSendError(`${what} refused: ${r.code} ${r.text}`, r);
    return r;
  };
  try {
    await expect('the greeting', (c) => c === 220);
    const hello = opts.lmtp ? 'LHLO' : 'EHLO';
    socket.write(`${hello} ${hostname() || 'localhost'}\r\n`);
    await expect(hello, (c) => c === 250);
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
    return end;
  } finally {
    socket.destroy();
  }
}

function replyReader(socket: Socket): { next(): Promise<SmtpReply> } {
  let buffer = '';
  const ready: SmtpReply[] = [];
  const waiting: Array<{ resolve: (r: SmtpReply) => void; reject: (e: Error) => void }> = [];
  let failure: Error | undefined;
  const fail = (err: Error) => {
    failure = err;
    for (const w of waiting.splice(0)) w.reject(err);
  };
  socket.setEncoding('utf8');
  socket.on('data', (d: string) => {
    buffer += d;
    let m: RegExpExecArray | null;
    // A reply ends with "NNN text"; "NNN-text" lines continue it.
    while ((m = /^((?:\d{3}-[^\n]*\n)*)(\d{3})(?:[ ]([^\n]*))?\r?\n/.exec(buffer))) {
      buffer = buffer.slice(m[0].length);
      const reply = { code: Number(m[2]), text: (m[3] ?? '').replace(/\r$/, '') };
      const w = waiting.shift();
      if (w) w.resolve(reply);
      else ready.push(reply);
    }
  });
  socket.on('timeout', () => fail(new SmtpSendError('the SMTP server stopped answering (timeout)')));
  socket.on('error', (err) => fail(new SmtpSendError(`SMTP connection failed: ${err.message}`)));
  socket.on('close', () => fail(new SmtpSendError('the SMTP server closed the connection')));
  return {
    next() {
      const r = ready.shift();
      if (r) return Promise.resolve(r);
      if (failure) return Promise.reject(failure);
      return new Promise((resolve, reject) => waiting.push({ resolve, reject }));
    },
  };
}
