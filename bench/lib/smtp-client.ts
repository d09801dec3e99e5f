// A minimal SMTP client for the phases smtp-source cannot do: timestamped final dots, idle sessions, streamed huge DATA.
import { connect, type Socket } from 'node:net';

export interface Reply {
  code: number;
  text: string;
}

/** One SMTP session over a raw socket; commands are sent one at a time (no pipelining). */
export class BenchSmtp {
  private buf = '';
  private waiting: Array<(r: Reply) => void> = [];
  private replies: Reply[] = [];
  private lines: string[] = [];
  closed = false;
  private constructor(readonly socket: Socket) {
    socket.setNoDelay(true);
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => this.onData(d));
    socket.on('close', () => {
      this.closed = true;
      for (const w of this.waiting.splice(0)) w({ code: 0, text: 'connection closed' });
    });
    socket.on('error', () => undefined);
  }

  static open(port: number, timeoutMs = 30_000): Promise<BenchSmtp> {
    return new Promise((resolve, reject) => {
      const s = connect(port, '127.0.0.1');
      const t = setTimeout(() => {
        s.destroy();
        reject(new Error('connect timed out'));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(t);
        resolve(new BenchSmtp(s));
      });
      s.once('error', (e) => {
        clearTimeout(t);
        reject(e);
      });
    });
  }

  private onData(d: string): void {
    this.buf += d;
    let i;
    while ((i = this.buf.indexOf('\r\n')) >= 0) {
      const line = this.buf.slice(0, i);
      this.buf = this.buf.slice(i + 2);
      this.lines.push(line);
      // RFC 5321 §4.2.1: "250-" continues a multi-line reply, "250 " ends it.
      if (line.length < 4 || line[3] !== '-') {
        const reply = { code: Number(line.slice(0, 3)), text: this.lines.join('\n') };
        this.lines = [];
        const w = this.waiting.shift();
        if (w) w(reply);
        else this.replies.push(reply);
      }
    }
  }

  read(): Promise<Reply> {
    const r = this.replies.shift();
    if (r) return Promise.resolve(r);
    if (this.closed) return Promise.resolve({ code: 0, text: 'connection closed' });
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  async command(line: string): Promise<Reply> {
    this.socket.write(`${line}\r\n`);
    return this.read();
  }

  async expect(line: string | null, code: number): Promise<Reply> {
    const r = line === null ? await this.read() : await this.command(line);
    if (r.code !== code) throw new Error(`${line ?? 'greeting'}: expected ${code}, got ${r.text}`);
    return r;
  }

  /** Greeting and EHLO. */
  async hello(name = 'client.bench.test'): Promise<void> {
    await this.expect(null, 220);
    await this.expect(`EHLO ${name}`, 250);
  }

  /**
   * One transaction with an in-memory message; returns performance.now() at the moment the final dot was written
   * and the reply. The message must already be dot-stuffed and end with CRLF.
   */
  async send(from: string, to: string, message: Buffer): Promise<{ dotAt: number; reply: Reply }> {
    await this.expect(`MAIL FROM:<${from}>`, 250);
    await this.expect(`RCPT TO:<${to}>`, 250);
    await this.expect('DATA', 354);
    this.socket.write(message);
    this.socket.write('.\r\n');
    const dotAt = performance.now();
    const reply = await this.read();
    return { dotAt, reply };
  }

  /** Streams `totalBytes` of generated body lines with backpressure (the client never holds the message). */
  async sendStreamed(from: string, to: string, headers: string, totalBytes: number): Promise<Reply> {
    await this.expect(`MAIL FROM:<${from}>`, 250);
    await this.expect(`RCPT TO:<${to}>`, 250);
    await this.expect('DATA', 354);
    const line = Buffer.from('x'.repeat(998) + '\r\n', 'latin1');
    const block = Buffer.concat(Array.from({ length: 64 }, () => line)); // 64 KB
    let sent = 0;
    if (!this.socket.write(headers)) await waitDrain(this.socket);
    while (sent < totalBytes) {
      sent += block.length;
      if (!this.socket.write(block)) await waitDrain(this.socket);
      if (this.closed) throw new Error('connection closed while streaming');
    }
    this.socket.write('.\r\n');
    return this.read();
  }

  quit(): void {
    if (this.closed) return;
    this.socket.end('QUIT\r\n');
  }

  destroy(): void {
    this.socket.destroy();
  }
}

function waitDrain(s: Socket): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      s.off('drain', done);
      s.off('close', done);
      resolve();
    };
    s.once('drain', done);
    s.once('close', done);
  });
}

/** A ~1 KB message whose Subject carries a sequence tag the consumer finds in the webhook. */
export function taggedMessage(seq: number, size = 1024, to = 'hook@bench.test'): Buffer {
  const head = `From: load@source.bench.test\r\nTo: ${to}\r\nSubject: bench-seq-${seq}\r\nMessage-ID: <bench-${seq}@source.bench.test>\r\n\r\n`;
  const bodyLines: string[] = [];
  let n = 0;
  while (n < size) {
    const l = 'y'.repeat(Math.min(76, size - n));
    bodyLines.push(l);
    n += l.length + 2;
  }
  return Buffer.from(head + bodyLines.join('\r\n') + '\r\n', 'latin1');
}
