// A loopback TCP proxy in front of an IMAP server that follows every untagged FETCH response carrying a UID with
// a second, flags-only one for the same message ("* N FETCH (UID X FLAGS (...) MODSEQ (m))"), before the command's
// tagged completion: what a server that includes the UID in unsolicited FETCH responses (RFC 7162 with
// QRESYNC; some servers always) sends when another session changes the message's flags during the FETCH.
// Dovecot itself sends such updates without the UID. Client-to-server bytes pass unchanged.
import { createServer, connect, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';

export class EchoFetchProxy {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  port = 0;
  /** every FETCH response line the proxy followed with an extra one (its first line, literals cut), and that line */
  readonly echoed: Array<{ original: string; extra: string }> = [];
  /** the client's command lines, in order */
  readonly commands: string[] = [];
  /** the MODSEQ values the bumped updates claimed (see `bump`) */
  readonly bumped: bigint[] = [];

  /**
   * `bump`: the extra rows for the first `bump` FETCH responses carrying a MODSEQ carry MODSEQ + 1 instead of the same:
   * the message really changed while the FETCH ran (as another session's STORE would make it), not the same state again.
   * Settable: Infinity makes every message change at every look.
   */
  constructor(
    private readonly targetPort: number,
    public bump = 0,
  ) {}

  async start(): Promise<this> {
    this.server = createServer((client) => {
      const upstream = connect(this.targetPort, '127.0.0.1');
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
      client.pipe(upstream);
      client.on('data', (chunk: Buffer) => this.commands.push(...chunk.toString('latin1').split('\r\n').filter(Boolean)));
      const responses = new ResponseSplitter();
      upstream.on('data', (chunk: Buffer) => {
        for (const response of responses.push(chunk)) {
          client.write(response);
          const extra = this.extraFor(response);
          if (extra) client.write(extra);
        }
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as AddressInfo).port;
    return this;
  }

  /** The flags-only FETCH to send after this response, when it is an untagged FETCH naming a UID. */
  private extraFor(response: Buffer): Buffer | undefined {
    // The response's text outside its literals (a literal's bytes, a message's source, could contain anything).
    const text = outsideLiterals(response);
    const head = /^\* (\d+) FETCH \(/i.exec(text);
    if (!head) return undefined;
    const uid = /[( ]UID (\d+)/i.exec(text)?.[1];
    if (!uid) return undefined;
    const flags = /[( ]FLAGS (\([^)]*\))/i.exec(text)?.[1];
    let modseq = /[( ]MODSEQ (\(\d+\))/i.exec(text)?.[1];
    if (modseq && this.bump > 0) {
      this.bump--;
      const next = BigInt(modseq.slice(1, -1)) + 1n;
      this.bumped.push(next);
      modseq = `(${next})`;
    }
    const extra = `* ${head[1]} FETCH (UID ${uid} FLAGS ${flags ?? '()'}${modseq ? ` MODSEQ ${modseq}` : ''})\r\n`;
    this.echoed.push({ original: text.split('\r\n')[0]!, extra: extra.trimEnd() });
    return Buffer.from(extra, 'latin1');
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

/** Cuts a server's byte stream into whole responses: lines ending CRLF, with the {n} literals inside them. */
class ResponseSplitter {
  private buf: Buffer = Buffer.alloc(0);
  /** bytes of the current response already scanned (complete lines and literals) */
  private scanned = 0;

  push(chunk: Buffer): Buffer[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const out: Buffer[] = [];
    for (;;) {
      const eol = this.buf.indexOf('\r\n', this.scanned, 'latin1');
      if (eol < 0) return out;
      const line = this.buf.subarray(this.scanned, eol).toString('latin1');
      const literal = /~?\{(\d+)\+?\}$/.exec(line);
      if (literal) {
        const end = eol + 2 + Number(literal[1]);
        if (this.buf.length < end) return out; // the literal's bytes are still on their way
        this.scanned = end;
        continue;
      }
      out.push(this.buf.subarray(0, eol + 2));
      this.buf = this.buf.subarray(eol + 2);
      this.scanned = 0;
    }
  }
}

/** A response's text with each literal's bytes left out ("{n}" stays). */
function outsideLiterals(response: Buffer): string {
  let text = '';
  let at = 0;
  for (;;) {
    const eol = response.indexOf('\r\n', at, 'latin1');
    if (eol < 0) return text + response.subarray(at).toString('latin1');
    const line = response.subarray(at, eol).toString('latin1');
    text += `${line}\r\n`;
    const literal = /~?\{(\d+)\+?\}$/.exec(line);
    at = eol + 2 + (literal ? Number(literal[1]) : 0);
  }
}
