// SMTP clients for tests: a raw socket client that sees the exact wire replies, and nodemailer for real-client sends.
import { createConnection, type Socket } from 'node:net';
import nodemailer, { type SendMailOptions } from 'nodemailer';

export interface SmtpReply {
  code: number;
  lines: string[];
  /** the last line's text after the code, e.g. "5.1.1 Recipient address rejected: User unknown" */
  text: string;
  raw: string;
}

/** Talks SMTP over a raw socket: nothing tidies the input or the replies. */
export class RawSmtp {
  private buffer = '';
  private readonly replies: SmtpReply[] = [];
  private waiting: Array<(r: SmtpReply) => void> = [];
  private closedFlag = false;
  private closeWaiters: Array<() => void> = [];

  private constructor(readonly socket: Socket) {
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => this.onData(d));
    socket.on('close', () => {
      this.closedFlag = true;
      for (const w of this.closeWaiters) w();
    });
    socket.on('error', () => undefined);
  }

  static connect(port: number, host = '127.0.0.1'): Promise<RawSmtp> {
    return new Promise((resolve, reject) => {
      const s = createConnection({ port, host }, () => resolve(new RawSmtp(s)));
      s.once('error', reject);
    });
  }

  /** Connects and reads the banner. */
  static async open(port: number): Promise<{ smtp: RawSmtp; banner: SmtpReply }> {
    const smtp = await RawSmtp.connect(port);
    return { smtp, banner: await smtp.read() };
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  waitClosed(timeoutMs = 5000): Promise<void> {
    if (this.closedFlag) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('connection still open')), timeoutMs);
      this.closeWaiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  private onData(d: string): void {
    this.buffer += d;
    for (;;) {
      // A reply ends with a line "NNN text" (space after the code); continuation lines use "NNN-".
      const m = /^((?:\d{3}-[^\r\n]*\r?\n)*)(\d{3})(?: ([^\r\n]*))?\r?\n/.exec(this.buffer);
      if (!m) break;
      const raw = m[0];
      this.buffer = this.buffer.slice(raw.length);
      const lines = raw.split(/\r?\n/).filter(Boolean);
      const reply: SmtpReply = { code: Number(m[2]), lines, text: m[3] ?? '', raw };
      const w = this.waiting.shift();
      if (w) w(reply);
      else this.replies.push(reply);
    }
  }

  read(timeoutMs = 5000): Promise<SmtpReply> {
    const r = this.replies.shift();
    if (r) return Promise.resolve(r);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no SMTP reply within ${timeoutMs} ms (buffer: ${JSON.stringify(this.buffer.slice(0, 200))})`)), timeoutMs);
      this.waiting.push((reply) => {
        clearTimeout(t);
        resolve(reply);
      });
    });
  }

  write(data: string | Buffer): void {
    this.socket.write(data);
  }

  async cmd(line: string): Promise<SmtpReply> {
    this.write(`${line}\r\n`);
    return this.read();
  }

  /** EHLO, MAIL, RCPT…, DATA, body, dot: returns every reply in order. */
  async transaction(from: string, rcpts: string[], body: string): Promise<{ mail: SmtpReply; rcpts: SmtpReply[]; data?: SmtpReply; end?: SmtpReply }> {
    const mail = await this.cmd(`MAIL FROM:<${from}>`);
    const rr: SmtpReply[] = [];
    for (const r of rcpts) rr.push(await this.cmd(`RCPT TO:<${r}>`));
    if (!rr.some((r) => r.code === 250)) return { mail, rcpts: rr };
    const data = await this.cmd('DATA');
    if (data.code !== 354) return { mail, rcpts: rr, data };
    this.write(body.replace(/\r?\n/g, '\r\n').replace(/^\./gm, '..') + '\r\n.\r\n');
    return { mail, rcpts: rr, data, end: await this.read() };
  }

  async quit(): Promise<void> {
    if (this.closedFlag) return;
    try {
      this.write('QUIT\r\n');
      await this.waitClosed(2000);
    } catch {
      this.socket.destroy();
    }
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** A real SMTP client (nodemailer) sending one message; resolves with nodemailer's info. */
export async function sendMail(port: number, mail: SendMailOptions & { envelope?: { from: string; to: string[] } }) {
  const transport = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true, tls: { rejectUnauthorized: false } });
  try {
    return await transport.sendMail(mail);
  } finally {
    transport.close();
  }
}
