// A typed adapter over smtp-server: greeting delay, enhanced codes on library replies, pipelining and slow-DATA
// enforcement, RFC 5321 dot-unstuffing, error limit, shutdown 421s and PROXY protocol v2 — everything that needs the
// library's internals.
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { isIP } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';
import { SMTPConnection, type SMTPConnectionOptions } from 'smtp-server/lib/smtp-connection.js';
import { SMTPStream } from 'smtp-server/lib/smtp-stream.js';
import { DEFAULT_ENHANCED, LIBRARY_REPLY_REWRITES, Reply, formatReply } from './replies.js';
import { parseXforward } from './xforward.js';

export interface ConnectionHooks {
  /** true once shutdown has begun: every further command gets 421 */
  isDraining(): boolean;
  /** error replies in one session before 421 and disconnect (Postfix smtpd_hard_error_limit); 0 turns it off */
  maxErrors: number;
  /** bytes per second a DATA phase must average, beyond a first socketTimeout (Postfix smtpd_min_data_rate); 0 turns it off */
  minDataRate: number;
  /** overall time a session may last before 421 4.4.2 (0: no limit); a command or DATA in progress finishes first */
  maxSessionMs: number;
  /** a session was ended by maxSessionMs */
  onSessionExpired?(remoteAddress: string, cid: string): void;
  /** a client sent message content before the 354 (logged by the service) */
  onPipeliningViolation?(remoteAddress: string, cid: string): void;
  /** a DATA phase was cut off for being too slow */
  onDataTimeout?(remoteAddress: string, cid: string): void;
  /** connections open on every listener (STARTTLS and implicit TLS): maxClients bounds them together */
  connectionCount?(): number;
  /**
   * a STARTTLS handshake that ended with no error to report: the client hung up or the idle timeout struck before it
   * finished (smtp-server reports neither; a handshake that fails with an error reaches the server's 'error' event)
   */
  onStartTlsUnfinished?(remoteAddress: string, cid: string, how: 'timeout' | 'closed'): void;
}

export interface AdapterOptions extends SMTPServerOptions {
  /** ms before the 220 banner; smtp-server hard-codes 100 */
  greetingDelayMs: number;
  hooks: ConnectionHooks;
}

const ENHANCED_RE = /^\d\.\d{1,3}\.\d{1,3} /;
const DOT = 0x2e;
const CR = 0x0d;
const LF = 0x0a;
/** a line that starts with a period */
const LF_DOT = Buffer.from('\n.');

/**
 * MAIL parameters of the extensions mailhook advertises: SIZE, 8BITMIME, SMTPUTF8. Not DSN (smtp-server hides it),
 * AUTH, or REQUIRETLS (RFC 8689): smtp-server hides it, and accepting it would promise TLS all the way to the
 * recipient, which a webhook on http:// does not keep; it is refused like any parameter not advertised.
 */
const MAIL_PARAMETERS: ReadonlySet<string> = new Set(['SIZE', 'BODY', 'SMTPUTF8']);
/** RCPT parameters: none without DSN (NOTIFY, ORCPT). */
const RCPT_PARAMETERS: ReadonlySet<string> = new Set();

/** Whether the last bytes of a DATA chunk hold a CR or an LF (they may be part of a line start or the terminator). */
function hasLineEnd(bytes: Buffer): boolean {
  for (const b of bytes) if (b === CR || b === LF) return true;
  return false;
}

function hasNonAscii(command: Buffer): boolean {
  for (const b of command) if (b >= 0x80) return true;
  return false;
}

/** The text of the 452 4.5.3 sent for recipients over smtp.max_recipients (server.ts), as send() sees it. */
const TOO_MANY_RECIPIENTS = formatReply(Reply.TooManyRecipients);
/** Recipients over the limit a session may send before each further one counts as an error (Postfix smtpd_recipient_overshoot_limit). */
export const RECIPIENT_OVERSHOOT_LIMIT = 1000;

/** The text of a library reply with the enhanced code its meaning calls for (RFC 2034 §4, RFC 3463). */
export function enhanceReply(code: number, data: string, context: string | false | undefined): string {
  // 3xx replies carry none (RFC 2034 §4); the greeting and the EHLO/HELO replies are sent with context false.
  if ((code >= 300 && code < 400) || ENHANCED_RE.test(data)) return data;
  if (context === false && code < 400) return data;
  for (const r of LIBRARY_REPLY_REWRITES) {
    if (r.code === code && r.match.test(data)) return `${r.enhanced} ${data}`;
  }
  const enhanced = (typeof context === 'string' ? DEFAULT_ENHANCED[context] : undefined) ?? DEFAULT_ENHANCED[String(code)] ?? DEFAULT_ENHANCED[String(code)[0] ?? ''];
  return enhanced ? `${enhanced} ${data}` : data;
}

/**
 * The command parser with two additions: it can tell whether message content had already arrived when DATA
 * was accepted (RFC 2920 §3.1: DATA ends a pipelined group, the content must wait for the 354), and it reports
 * the end of each DATA phase.
 */
/** The address of a MAIL or RCPT command as written, without its brackets and any source route; undefined if none. */
function writtenAddress(command: string): string | undefined {
  const path = command.slice(command.indexOf(':') + 1).trim().split(/\s+/)[0] ?? '';
  if (!/^<[^<>]*>$/.test(path)) return undefined;
  return path.slice(1, -1).replace(/^@[^\s,:@]+(?:,@[^\s,:@]+)*:/, '');
}

export class MailhookStream extends SMTPStream {
  /** length of the chunk smtp-server's Writable is processing (every nested _write is a tail of it) */
  private topLen = 0;
  private topPending = false;
  /** set by DATA: the next data-mode write is the hand-over of whatever followed the DATA line */
  handoff: ((early: boolean) => boolean) | null = null;
  /** where the search for "\n." starts in held bytes joined to the next chunk (see _feedDataStream) */
  private heldFrom = 1;
  onDataEnd: (() => void) | null = null;

  override _write(chunk: Buffer, encoding: BufferEncoding | 'buffer', next: (err?: Error | null) => void): void {
    if (!this.topPending) {
      this.topPending = true;
      this.topLen = chunk.length;
      const done = next;
      next = (err) => {
        this.topPending = false;
        done(err);
      };
    }
    if (this.handoff && this._dataMode) {
      const handoff = this.handoff;
      this.handoff = null;
      // Bytes after the DATA line in this chunk, or chunks queued behind it, were sent before the 354.
      const early = chunk.length > 0 || this.writableLength > this.topLen;
      if (!handoff(early)) {
        next();
        return;
      }
    }
    super._write(chunk, encoding, next);
  }

  /**
   * smtp-server's data-mode reader with one change: RFC 5321 §4.5.2, "if the first character is a period and there
   * are other characters on the line, the first character is deleted" (".x" is "x", "..x" ".x", ". " " "), as
   * Postfix does; smtp-server deletes it only before a second period, so a client that did not dot-stuff had ".x"
   * stored. A period followed by CR or LF has no other characters on its line and is kept: only <CR><LF>.<CR><LF>
   * ends DATA (SMTP smuggling), and "\n.\r\n" is content, its lone LF left to smtp.bare_lf. Everything else is the
   * library's: the first line counts as following a CRLF (the DATA command's), the last 4 bytes wait for the next
   * chunk so a line start or the terminator split across chunks is seen, the bytes counted are the bytes emitted
   * (what is stored), and the stream's backpressure holds the socket. One chunk's pieces are written at once instead
   * of one setImmediate per removed period.
   */
  override _feedDataStream(chunk: Buffer, done: (err?: Error | null) => void): void {
    const dataStream = this._dataStream;
    if (!dataStream) return done();
    // Where the search for an LF before a period starts: as the library, never at the first byte of the data; at the
    // first byte of a chunk that follows one sent whole; where held bytes joined in front say (heldFrom).
    let from = this._atDataStart ? 1 : 0;
    if (this._lastBytes && this._lastBytes.length) {
      chunk = Buffer.concat([this._lastBytes, chunk]);
      this._lastBytes = false;
      from = this.heldFrom;
    }
    const chunkFrom = from;
    // Until a first byte is emitted or removed, a period opens the first line (see SMTPStream: a removed one
    // clears _atDataStart, so a "." left over from ".." is content, never the terminator).
    if (this._atDataStart && chunk.length >= 3 && chunk[0] === DOT && chunk[1] === CR && chunk[2] === LF) {
      this._endDataMode(false, chunk.subarray(3), done);
      return;
    }
    if (this._atDataStart && chunk.length >= 2 && chunk[0] === DOT && chunk[1] !== CR && chunk[1] !== LF) {
      chunk = chunk.subarray(1);
      this._atDataStart = false;
    }
    const pieces: Buffer[] = [];
    // A period that follows an LF, with two bytes after it, is looked at: found by the native indexOf of "\n." (a
    // byte-by-byte loop here cost ~3.5 ms of CPU per MB). Each removed period restarts the scan on what follows it,
    // as the library does (its next two bytes cannot start a line).
    for (;;) {
      const i = chunk.indexOf(LF_DOT, from) + 1;
      if (i === 0 || i >= chunk.length - 2) break;
      if (chunk[i - 2] === CR && chunk[i + 1] === CR && chunk[i + 2] === LF) {
        // Everything before the terminator is content, the CRLF ending the last line included.
        this.emitData(dataStream, pieces);
        const last = chunk.subarray(0, i);
        this._countDataBytes(last.length);
        this._endDataMode(last, chunk.subarray(i + 3), done);
        return;
      }
      if (chunk[i + 1] !== CR && chunk[i + 1] !== LF) {
        pieces.push(chunk.subarray(0, i));
        chunk = chunk.subarray(i + 1);
        from = 1;
      } else from = i + 1;
    }
    // The last 4 bytes wait for the next chunk when they may begin a line or the terminator: at the start of the
    // data, or when they hold a CR or an LF. Without either they take no part in what the next chunk holds (a period
    // among them is not at a line start: one right after an LF of the chunk before was decided there), so the chunk
    // goes whole and the next is not copied behind them (a copy of the whole message, 64 KiB at a time).
    const tail = chunk.length < 4 ? chunk : chunk.subarray(chunk.length - 4);
    this._lastBytes = this._atDataStart || hasLineEnd(tail) ? tail : false;
    // An LF 4 bytes from the end had its period decided here; one at the start of a shorter chunk did not.
    this.heldFrom = chunk.length < 4 ? chunkFrom : 1;
    const sent = this._lastBytes ? chunk.length - tail.length : chunk.length;
    if (sent > 0) pieces.push(sent < chunk.length ? chunk.subarray(0, sent) : chunk);
    if (!this.emitData(dataStream, pieces) || dataStream.destroyed) return done();
    // Wait for the stream to drain (a stream destroyed meanwhile never drains, it only closes).
    const onDrain = () => {
      dataStream.removeListener('drain', onDrain);
      dataStream.removeListener('close', onDrain);
      done();
    };
    dataStream.once('drain', onDrain);
    dataStream.once('close', onDrain);
  }

  /** Counts and writes the pieces; true when the data stream asks to wait for 'drain'. */
  private emitData(dataStream: NonNullable<SMTPStream['_dataStream']>, pieces: readonly Buffer[]): boolean {
    let full = false;
    for (const piece of pieces) {
      if (piece.length === 0) continue;
      this._countDataBytes(piece.length);
      if (dataStream.writable) full = !dataStream.write(piece);
    }
    return full;
  }

  override _endDataMode(chunk: Buffer | false, remainder: Buffer, callback: (err?: Error | null) => void): void {
    const cb = this.onDataEnd;
    this.onDataEnd = null;
    cb?.();
    super._endDataMode(chunk, remainder, callback);
  }
}

/** How often a session past smtp.limits.max_session_ms, but busy with a command or DATA, is looked at again. */
const EXPIRED_RECHECK_MS = 250;

/** Per-connection state kept outside the instance: SMTPConnection's constructor runs overridden methods before subclass fields exist. */
interface ConnState {
  errors: number;
  /** RCPTs refused for smtp.max_recipients since the last delivered message */
  overshoot: number;
  held354: { code: number; data: string | string[] | null | undefined; context: string | false | undefined } | null;
  dataTimer: NodeJS.Timeout | null;
  /** LMTP: replies still to come for the DATA in progress (one per recipient, RFC 2033 §4.2) */
  lmtpReplies: number;
  /** LMTP: one of this DATA's replies was an error */
  lmtpFailed: boolean;
  /** maxSessionMs: armed at connect, then again every EXPIRED_RECHECK_MS while the expired session is busy */
  sessionTimer: NodeJS.Timeout | null;
  /** a STARTTLS handshake's failure reached the server's error listener (counted there; see onStartTlsUnfinished) */
  tlsErrorReported?: boolean;
  /** the idle timeout struck during a STARTTLS handshake */
  tlsTimedOut?: boolean;
  /** the session is past maxSessionMs: its next command, or the moment it waits for one, ends it */
  expired: boolean;
}

export function createSmtpServer(options: AdapterOptions): SMTPServer {
  const { greetingDelayMs: delay, hooks, ...serverOptions } = options;
  const states = new WeakMap<SMTPConnection, ConnState>();
  const stateOf = (c: SMTPConnection): ConnState => {
    let s = states.get(c);
    if (!s) {
      s = { errors: 0, overshoot: 0, held354: null, dataTimer: null, lmtpReplies: 0, lmtpFailed: false, sessionTimer: null, expired: false };
      states.set(c, s);
    }
    return s;
  };

  class MailhookConnection extends SMTPConnection {
    override init(): void {
      if (hooks.maxSessionMs > 0) {
        const state = stateOf(this);
        state.sessionTimer = setTimeout(() => this.sessionExpired(), hooks.maxSessionMs);
        state.sessionTimer.unref();
      }
      this._setListeners(() => {
        const max = this._server.options.maxClients;
        if (max && (hooks.connectionCount?.() ?? this._server.connections.size) > max) {
          this.send(421, `${this.name} Too many connected clients, try again in a moment`, false);
          return;
        }
        // Early-talker check: anything the client sends before the banner gets 421 (smtp-server's own check).
        const timer = setTimeout(() => this.connectionReady(), delay);
        timer.unref();
      });
    }

    override _createParser(): SMTPStream {
      const parser = new MailhookStream({ maxCommandLength: this._server.options.maxCommandLength });
      parser.oncommand = (command: Buffer, callback?: () => void) => this._onCommand(command, callback);
      parser.on('error', (err: Error) => this.send(421, 'Error: ' + err.message));
      return parser;
    }

    override _onCommand(command: Buffer, callback?: () => void): void {
      // Once shutdown begins every new command is answered 421 (RFC 5321 §3.8); smtp-server only does so after close().
      if (!this._upgrading && this._ready && hooks.isDraining()) {
        this.send(421, formatReply(Reply.ShuttingDown));
        return;
      }
      if (!this._upgrading && stateOf(this).expired) {
        this.endExpiredSession();
        return;
      }
      super._onCommand(command, callback);
    }

    /**
     * maxSessionMs has passed. A session waiting for the client's next command ends now; one whose command or DATA
     * is in progress (a message being received, or waiting for its commit) gets its reply first: the next command
     * is answered 421, and a client that sends none is looked at again shortly (a slow DATA is bounded by minDataRate).
     */
    sessionExpired(): void {
      const state = stateOf(this);
      state.sessionTimer = null;
      if (this._closing || this._closed) return;
      state.expired = true;
      if (!this._upgrading && !this._handlerPending && !this._dataStream) {
        this.endExpiredSession();
        return;
      }
      state.sessionTimer = setTimeout(() => this.sessionExpired(), EXPIRED_RECHECK_MS);
      state.sessionTimer.unref();
    }

    endExpiredSession(): void {
      hooks.onSessionExpired?.(this.remoteAddress, this.id);
      this.send(421, formatReply(Reply.SessionTimeLimit(this.name)));
    }

    override send(code: number, data?: string | string[] | null, context?: string | false): void {
      const state = stateOf(this);
      if (code === 354 && this._parser instanceof MailhookStream && this._parser.handoff) {
        // Held until the parser has seen what followed the DATA line (see handler_DATA).
        state.held354 = { code, data, context };
        return;
      }
      let text: string | string[] | null | undefined = data;
      if (typeof data === 'string') {
        text = enhanceReply(code, data, context);
      } else if (Array.isArray(data) && code === 250 && !data.includes('ENHANCEDSTATUSCODES')) {
        // The EHLO reply: mailhook writes the codes itself, so it advertises them (RFC 2034).
        text = [...data.slice(0, 2), 'ENHANCEDSTATUSCODES', ...data.slice(2)];
      }
      if (state.lmtpReplies > 0 && code !== 354 && code !== 421) {
        // LMTP: the replies after DATA are one outcome, counted once after the last of them; a 421 among them would
        // leave the client reading it as a recipient's reply (RFC 2033 §4.2).
        super.send(code, text, context);
        if (code >= 400) state.lmtpFailed = true;
        if (--state.lmtpReplies > 0) return;
        const failed = state.lmtpFailed;
        state.lmtpFailed = false;
        this.countOutcome(failed ? code : 250, failed ? undefined : context, data);
        return;
      }
      super.send(code, text, context);
      this.countOutcome(code, context, data);
    }

    /** The error limit: an error reply counts, a delivered message clears the count. */
    countOutcome(code: number, context: string | false | undefined, data: string | string[] | null | undefined): void {
      const state = stateOf(this);
      // Recipients over smtp.max_recipients are not errors (the client sends the rest in another transaction, and
      // the accepted ones are delivered), until RECIPIENT_OVERSHOOT_LIMIT of them in one session (as Postfix).
      const overshoot = code === Reply.TooManyRecipients.code && data === TOO_MANY_RECIPIENTS && ++state.overshoot <= RECIPIENT_OVERSHOOT_LIMIT;
      if (code >= 400 && code !== 421 && !overshoot && hooks.maxErrors > 0 && !this._closing) {
        state.errors++;
        if (state.errors >= hooks.maxErrors) super.send(421, formatReply(Reply.TooManyErrors(this.name)));
      } else if (code === 250 && context === 'DATA_OK') {
        state.errors = 0; // a delivered message clears the slate, as Postfix does
        state.overshoot = 0;
      }
    }

    /**
     * The address as the client wrote it: smtp-server turns an A-label domain into Unicode
     * (sender@xn--bcher-kva.example → sender@bücher.example), which would put into the payload an address that
     * needs SMTPUTF8 and that the sender never used. Routing compares domains as A-labels either way.
     */
    override _parseAddressCommand(rawName: string, rawCommand: Buffer | string): ReturnType<SMTPConnection['_parseAddressCommand']> {
      // handler_MAIL and handler_RCPT below parse the command for their own checks, then smtp-server's handler
      // parses the same command again: that second parse is answered from the first (it converts the domain to
      // Unicode and back, some 10 µs per message).
      const early = this.parsedEarly;
      this.parsedEarly = undefined;
      if (early && early.command === rawCommand && early.name === rawName) return early.parsed;
      const parsed = super._parseAddressCommand(rawName, rawCommand);
      if (!parsed || !parsed.address) return parsed;
      const written = writtenAddress(rawCommand.toString());
      if (written !== undefined && written !== parsed.address && written.slice(0, written.lastIndexOf('@')) === parsed.address.slice(0, parsed.address.lastIndexOf('@'))) {
        parsed.address = written;
      }
      return parsed;
    }

    /** the parse handler_MAIL/handler_RCPT made of the command they hand to smtp-server's handler (see above) */
    private parsedEarly: { command: Buffer | string; name: string; parsed: ReturnType<SMTPConnection['_parseAddressCommand']> } | undefined;

    override handler_MAIL(command: Buffer, callback: () => void): void {
      const parsed = this._parseAddressCommand('mail from', command);
      this.parsedEarly = { command, name: 'mail from', parsed };
      if (parsed && this.refuseParameters(parsed.args, MAIL_PARAMETERS)) return callback();
      // RFC 6531 §3.4: a non-ASCII address needs the SMTPUTF8 parameter (smtp-server turns A-labels into Unicode, so
      // the command line is what tells).
      if (parsed && hasNonAscii(command) && !(parsed.args && parsed.args['SMTPUTF8'] === true)) {
        this.send(Reply.NonAsciiAddress.code, formatReply(Reply.NonAsciiAddress));
        return callback();
      }
      super.handler_MAIL(command, callback);
    }

    override handler_RCPT(command: Buffer, callback: () => void): void {
      const parsed = this._parseAddressCommand('rcpt to', command);
      this.parsedEarly = { command, name: 'rcpt to', parsed };
      if (parsed && this.refuseParameters(parsed.args, RCPT_PARAMETERS)) return callback();
      if (parsed && this.session.envelope.mailFrom && hasNonAscii(command) && !this.session.envelope.smtpUtf8) {
        this.send(Reply.NonAsciiAddress.code, formatReply(Reply.NonAsciiAddress));
        return callback();
      }
      super.handler_RCPT(command, callback);
    }

    /** RFC 5321 §4.1.1.11: 555 for a MAIL or RCPT parameter of an extension not advertised. True when refused. */
    refuseParameters(args: Record<string, string | boolean> | false | undefined, allowed: ReadonlySet<string>): boolean {
      if (!args) return false;
      const unknown = Object.keys(args).find((k) => !allowed.has(k));
      if (unknown === undefined) return false;
      const reply = Reply.UnsupportedParameter(unknown);
      this.send(reply.code, formatReply(reply));
      return true;
    }

    /**
     * XFORWARD from a peer in useXForward (smtp.xforward_hosts). smtp-server's own handler overwrites the connection's
     * address and HELO and keeps them for the rest of the connection; this one records the attributes for the next
     * transaction only, in session.xForward (transactionClient reads them), as Postfix's smtpd does: they are reset
     * at the end of each transaction (after DATA, RSET, EHLO/HELO, STARTTLS: every _resetSession below). So with
     * Postfix reusing a connection for several messages, a message it forwards with ADDR=[UNAVAILABLE] is never judged
     * by the previous message's client; HELO=[UNAVAILABLE] does not undo the relay's EHLO (smtp-server then answered
     * MAIL with 503 "send HELO/EHLO first"); and connection-level state (onConnect, the per-IP connection count,
     * the connect event) is never run again for a forwarded address.
     */
    override handler_XFORWARD(command: Buffer, callback: () => void): void {
      const answer = (reply: Reply) => {
        this.send(reply.code, formatReply(reply));
        callback();
      };
      // smtp-server's check: the peer the connection came from is listed (and XFORWARD is not disabled).
      if (!this._proxyCommandAllowed('XFORWARD', 'useXForward')) return answer(Reply.XforwardNotAuthorized);
      if (this.session.envelope.mailFrom) return answer(Reply.XforwardInTransaction);
      const parsed = parseXforward(command.toString().trim().split(/\s+/).slice(1));
      if ('error' in parsed) return answer(parsed.error === 'attribute' ? Reply.XforwardBadAttribute : parsed.error === 'address' ? Reply.XforwardBadAddress : Reply.XforwardSyntax);
      // Postfix splits the attributes over several XFORWARD commands when a line would be too long: they add up.
      for (const [name, value] of parsed.attributes) this._xForward.set(name, value);
      answer(Reply.XforwardOk);
    }

    override _resetSession(): void {
      // The constructor has not made the map yet when smtp-server's own set-up runs.
      this._xForward?.clear();
      super._resetSession();
    }

    override handler_DATA(command: Buffer, callback: () => void): void {
      const parser = this._parser;
      if (!(parser instanceof MailhookStream)) return super.handler_DATA(command, callback);
      const state = stateOf(this);
      parser.handoff = (early) => {
        const held = state.held354;
        state.held354 = null;
        if (early) {
          // Postfix smtpd_forbid_unauth_pipelining: answer 554 instead of 354 and hang up; nothing is stored.
          hooks.onPipeliningViolation?.(this.remoteAddress, this.id);
          this.send(Reply.PipeliningViolation.code, formatReply(Reply.PipeliningViolation));
          this.close();
          const stream = this._dataStream;
          if (stream) stream.destroy(Object.assign(new Error('message content sent before the 354 reply'), { code: 'EARLY_DATA' }));
          return false;
        }
        if (held) this.send(held.code, held.data, held.context);
        this.armDataDeadline(parser);
        return true;
      };
      super.handler_DATA(command, callback);
      if (!parser._dataMode) {
        // Refused (503): no data phase follows.
        parser.handoff = null;
        state.held354 = null;
      } else if (this._server.options.lmtp) {
        // smtp-server answers the DATA with one reply per recipient of the envelope.
        state.lmtpReplies = this.session.envelope.rcptTo.length;
        state.lmtpFailed = false;
      }
    }

    /** Postfix smtpd_min_data_rate: the deadline starts at socketTimeout and grows by 1 s per minDataRate bytes received. */
    armDataDeadline(parser: MailhookStream): void {
      if (hooks.minDataRate <= 0) return;
      const state = stateOf(this);
      const started = Date.now();
      const base = this._server.options.socketTimeout ?? 60_000;
      const deadline = () => started + base + (parser.dataBytes * 1000) / hooks.minDataRate;
      const check = () => {
        const left = deadline() - Date.now();
        if (left > 0) {
          state.dataTimer = setTimeout(check, left);
          state.dataTimer.unref();
          return;
        }
        state.dataTimer = null;
        hooks.onDataTimeout?.(this.remoteAddress, this.id);
        const stream = this._dataStream;
        this.send(421, formatReply(Reply.DataTimeout(this.name)));
        if (stream) stream.destroy(Object.assign(new Error('DATA slower than the minimum data rate'), { code: 'DATA_TIMEOUT' }));
      };
      parser.onDataEnd = () => {
        if (state.dataTimer) clearTimeout(state.dataTimer);
        state.dataTimer = null;
      };
      state.dataTimer = setTimeout(check, base);
      state.dataTimer.unref();
    }

    override _onTimeout(): void {
      // Not once the session is closing (mailhook's shutdown): the timeout then only ends a socket left half-open.
      if (this._upgrading && !this._closing) stateOf(this).tlsTimedOut = true;
      super._onTimeout();
    }

    override _onClose(): void {
      const state = states.get(this);
      if (state?.dataTimer) clearTimeout(state.dataTimer);
      if (state?.sessionTimer) clearTimeout(state.sessionTimer);
      // Neither a handshake error the server was told of (MailhookServer.connect), nor a session mailhook closed
      // itself when shutting down (not the client's doing); a reset (ECONNRESET, which smtp-server keeps quiet) is.
      const shutDown = this._closing && hooks.isDraining() && !state?.tlsTimedOut;
      if (!this._closed && this._upgrading && !state?.tlsErrorReported && !shutDown) hooks.onStartTlsUnfinished?.(this.remoteAddress, this.id, state?.tlsTimedOut ? 'timeout' : 'closed');
      super._onClose();
    }
  }

  class MailhookServer extends SMTPServer {
    override connect(socket: Socket | TLSSocket, socketOptions?: SMTPConnectionOptions | null): void {
      const connection = new MailhookConnection(this, socket, socketOptions);
      this.connections.add(connection);
      // The connection's id goes with its error (a failed STARTTLS handshake, a reset), so the log line that
      // reports it joins the session's other lines (cid).
      connection.on('error', (err: Error & { cid?: string; meta?: { stage?: string } }) => {
        err.cid ??= connection.id;
        // A failed STARTTLS handshake's error (stage "connect"), counted by the server: its close is not counted again.
        // Marked here, not in _onError: smtp-server emits no error for a reset outside a transaction.
        if (connection._upgrading && err.meta?.stage === 'connect') stateOf(connection).tlsErrorReported = true;
        this._onError(err);
      });
      connection.on('connect', (data: Parameters<SMTPServer['_onClientConnect']>[0]) => this._onClientConnect(data));
      connection.init();
    }

    /** PROXY protocol v2 (binary) here; v1 (text) is smtp-server's own. */
    override _handleProxy(socket: Socket, callback: (err: Error | null, socketOptions?: SMTPConnectionOptions & { id: string }) => void): void {
      if (!this._expectsProxyHeader(socket)) return super._handleProxy(socket, callback);
      readProxyV2(socket, (result) => {
        if (result === 'v1') {
          super._handleProxy(socket, callback);
          // The bytes read to tell v1 from v2 were put back; make sure smtp-server's reader sees them.
          if (socket.readableLength > 0) process.nextTick(() => socket.emit('readable'));
          return;
        }
        if (result instanceof Error) {
          socket.on('error', () => undefined);
          socket.destroy();
          return callback(result);
        }
        callback(null, { id: connectionId(), ...result });
      });
    }
  }

  return new MailhookServer({ ...serverOptions, hideENHANCEDSTATUSCODES: true });
}

function connectionId(): string {
  // The same shape smtp-server gives its connection ids.
  return BigInt('0x' + randomBytes(10).toString('hex'))
    .toString(32)
    .padStart(16, '0');
}

/** The 12-byte signature that opens a PROXY protocol v2 header. */
const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
/** Address block plus TLVs; real load balancers send a few hundred bytes at most. */
const V2_MAX_LENGTH = 4096;

export type ProxyAddress = { remoteAddress?: string; remotePort?: number };
export type ProxyV2Parse = 'more' | 'v1' | Error | (ProxyAddress & { length: number });

/**
 * Parses a PROXY v2 header from the start of `buf` (haproxy proxy-protocol.txt §2.2). Returns 'more' until the
 * header is complete, 'v1' when the bytes are not v2 (smtp-server reads the text form), and the source address
 * plus the header length when done. LOCAL commands (health checks) keep the connection's own address.
 */
export function parseProxyV2(buf: Buffer): ProxyV2Parse {
  const n = Math.min(buf.length, V2_SIGNATURE.length);
  if (n === 0) return 'more';
  if (buf[0] !== 0x0d) return 'v1';
  if (!buf.subarray(0, n).equals(V2_SIGNATURE.subarray(0, n))) return new Error('Invalid PROXY header');
  if (buf.length < 16) return 'more';
  const verCmd = buf[12] as number;
  const fam = buf[13] as number;
  const len = buf.readUInt16BE(14);
  if (verCmd >> 4 !== 2 || (verCmd & 0x0f) > 1) return new Error('Invalid PROXY v2 version or command');
  if (len > V2_MAX_LENGTH) return new Error('PROXY v2 header too long');
  if (buf.length < 16 + len) return 'more';
  const length = 16 + len;
  if ((verCmd & 0x0f) === 0) return { length }; // LOCAL
  const body = buf.subarray(16, length);
  if (fam >> 4 === 1 && body.length >= 12) {
    return { remoteAddress: `${body[0]}.${body[1]}.${body[2]}.${body[3]}`, remotePort: body.readUInt16BE(8), length };
  }
  if (fam >> 4 === 2 && body.length >= 36) {
    const groups: string[] = [];
    for (let i = 0; i < 16; i += 2) groups.push(body.readUInt16BE(i).toString(16));
    const remoteAddress = groups.join(':');
    if (isIP(remoteAddress) !== 6) return new Error('Invalid PROXY v2 source address');
    return { remoteAddress, remotePort: body.readUInt16BE(32), length };
  }
  if (fam >> 4 === 0 || fam >> 4 === 3) return { length }; // UNSPEC or UNIX: no IP to take
  return new Error('Invalid PROXY v2 address block');
}

/** Reads just enough of the socket to tell v1 from v2 and, for v2, the whole header; the rest is put back. */
function readProxyV2(socket: Socket, done: (r: 'v1' | Error | ProxyAddress) => void): void {
  let buf: Buffer = Buffer.alloc(0);
  let finished = false;
  const finish = (r: 'v1' | Error | ProxyAddress, rest?: Buffer) => {
    if (finished) return;
    finished = true;
    socket.removeListener('readable', onReadable);
    socket.removeListener('error', onError);
    socket.removeListener('close', onClose);
    socket.removeListener('end', onClose);
    if (rest && rest.length) socket.unshift(rest);
    done(r);
  };
  const onError = (err: Error) => finish(err);
  const onClose = () => finish(new Error('Socket closed before PROXY header was received'));
  const onReadable = () => {
    let chunk: Buffer | null;
    while (!finished && (chunk = socket.read() as Buffer | null) !== null) {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      const r = parseProxyV2(buf);
      if (r === 'more') continue;
      if (r === 'v1') return finish('v1', buf);
      if (r instanceof Error) return finish(r);
      const { length, ...addr } = r;
      return finish(addr, buf.subarray(length));
    }
  };
  socket.on('readable', onReadable);
  socket.on('error', onError);
  socket.on('close', onClose);
  socket.on('end', onClose);
}
