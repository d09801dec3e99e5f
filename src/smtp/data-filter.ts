// The DATA stream transform: bare CR/LF policy, header-section, hop-count and MIME structure limits, in one streaming pass.
import { Transform, type TransformCallback } from 'node:stream';
import { MailhookError } from '../core/errors.js';
import { MessageRefused, Reply } from './replies.js';

export type BareLfPolicy = 'normalize' | 'reject';

export interface DataFilterOptions {
  /** normalize: a lone CR or LF becomes CRLF; reject: the message is refused with 550 5.5.2 */
  bareLf: BareLfPolicy;
  /** message bytes as received (after dot-unstuffing); more is refused as too large */
  maxBytes: number;
  /** bytes of one header section (the message's, or a MIME part's) */
  maxHeaderBytes: number;
  /** Received headers in the message header; more is a loop */
  maxReceived: number;
  maxMimeParts: number;
  maxMimeDepth: number;
  /**
   * Sees the bytes as stored (sender authentication reads the message alongside the spool). end() gets the
   * stats and whether the message broke a limit (it is refused: nothing needs its bytes any more).
   */
  tap?: { write(chunk: Buffer): void; end(stats: DataFilterStats, refused: boolean): void };
  /** called once the message's own header section is complete, before its last bytes reach the tap */
  onHeaderEnd?: (stats: DataFilterStats) => void;
  /** runs after the last byte and before the stream ends; may throw (e.g. a MessageRefused for DMARC) */
  beforeEnd?: () => Promise<void>;
}

export interface DataFilterStats {
  bytesIn: number;
  bytesOut: number;
  /** lone CRs and LFs turned into CRLF */
  normalized: number;
  received: number;
  /** MIME parts so far, the message itself counted (as mailparser counts them) */
  mimeParts: number;
  maxDepth: number;
  /** size of the message's From header(s): sender authentication refuses to parse huge ones */
  fromHeaderBytes: number;
  /** lines of the message's own header section, folded continuations included (the same, for line counts) */
  headerLines: number;
}

const CR = 0x0d;
const LF = 0x0a;
const CR_BUF = Buffer.from([CR]);
const LF_BUF = Buffer.from([LF]);
/** bytes of a line kept for inspection: header names, boundaries (RFC 2046 allows 70 characters) */
const HEAD_CAP = 1024;
/** characters of a Content-Type / Content-Transfer-Encoding value kept to find the boundary */
const VALUE_CAP = 8192;

type Frame = { kind: 'multipart'; delimiter: string } | { kind: 'message' };
type HeaderKind = 'content-type' | 'cte' | 'from' | 'other';

export class DataFilter extends Transform {
  // The message itself is the first MIME part: mailparser counts it too, so what passes here can be parsed.
  readonly stats: DataFilterStats = { bytesIn: 0, bytesOut: 0, normalized: 0, received: 0, mimeParts: 1, maxDepth: 0, fromHeaderBytes: 0, headerLines: 0 };
  /** the first limit the message broke; once set nothing more is passed on */
  violation: MailhookError | undefined;

  private pendingCR = false;
  // line state
  private lineLen = 0;
  private readonly head = Buffer.allocUnsafe(HEAD_CAP);
  private headLen = 0;
  private collecting = true;
  // MIME state
  private inHeader = true;
  private topLevel = true;
  private headerBytes = 0;
  private headerKind: HeaderKind = 'other';
  private contentType = '';
  private cte = '';
  private readonly stack: Frame[] = [];
  private multipartDepth = 0;

  constructor(private readonly opts: DataFilterOptions) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.stats.bytesIn += chunk.length;
    if (this.violation) return cb();
    if (this.stats.bytesIn > this.opts.maxBytes) {
      this.fail(new MailhookError('MESSAGE_TOO_LARGE', `message exceeds ${this.opts.maxBytes} bytes`, { userFault: true }));
      return cb();
    }
    const out = this.scan(chunk);
    if (this.violation || out.length === 0) return cb();
    this.stats.bytesOut += out.length;
    this.opts.tap?.write(out);
    cb(null, out);
  }

  override _flush(cb: TransformCallback): void {
    if (!this.violation && this.pendingCR) {
      // The message ended on a lone CR.
      this.pendingCR = false;
      if (this.bare()) {
        this.lineEnd();
        this.stats.bytesOut += 1;
        this.opts.tap?.write(LF_BUF);
        this.push(LF_BUF);
      }
    }
    this.opts.tap?.end(this.stats, this.violation !== undefined);
    if (this.violation) return cb(this.violation);
    if (!this.opts.beforeEnd) return cb();
    this.opts.beforeEnd().then(
      () => cb(),
      (err: unknown) => cb(err as Error),
    );
  }

  private fail(err: MailhookError): void {
    this.violation ??= err;
  }

  /** A lone CR or LF: true when normalized, false when the message is refused. */
  private bare(): boolean {
    if (this.opts.bareLf === 'reject') {
      this.fail(new MessageRefused(Reply.BareNewline, 'bare CR or LF'));
      return false;
    }
    this.stats.normalized++;
    return true;
  }

  /** Finds the line ends of one chunk (native indexOf, no per-byte JS loop) and returns the bytes to store. */
  private scan(chunk: Buffer): Buffer {
    const len = chunk.length;
    let pieces: Buffer[] | undefined;
    let segStart = 0;
    let i = 0;
    if (this.pendingCR) {
      this.pendingCR = false;
      if (chunk[0] === LF) {
        this.lineEnd();
        i = 1;
      } else {
        if (!this.bare()) return chunk;
        pieces = [LF_BUF];
        this.lineEnd();
      }
    }
    let nextCR = chunk.indexOf(CR, i);
    let nextLF = chunk.indexOf(LF, i);
    for (;;) {
      if (this.violation) return chunk;
      if (nextCR === -1 && nextLF === -1) {
        this.lineData(chunk, i, len);
        break;
      }
      if (nextCR !== -1 && (nextLF === -1 || nextCR < nextLF)) {
        const t = nextCR;
        this.lineData(chunk, i, t);
        if (t + 1 === len) {
          // Decided by the next chunk's first byte.
          this.pendingCR = true;
          break;
        }
        if (chunk[t + 1] === LF) {
          this.lineEnd();
          i = t + 2;
          nextLF = chunk.indexOf(LF, i);
        } else {
          // A lone CR: keep it and add the LF.
          if (!this.bare()) return chunk;
          (pieces ??= []).push(chunk.subarray(segStart, t + 1), LF_BUF);
          segStart = t + 1;
          this.lineEnd();
          i = t + 1;
        }
        nextCR = chunk.indexOf(CR, i);
      } else {
        // A lone LF (a CR right before it was consumed with it): put a CR in front.
        const t = nextLF;
        this.lineData(chunk, i, t);
        if (!this.bare()) return chunk;
        (pieces ??= []).push(chunk.subarray(segStart, t), CR_BUF);
        segStart = t;
        this.lineEnd();
        i = t + 1;
        nextLF = chunk.indexOf(LF, i);
      }
    }
    if (!pieces) return chunk;
    pieces.push(chunk.subarray(segStart));
    return Buffer.concat(pieces);
  }

  /** Bytes [from, to) of the current line. */
  private lineData(chunk: Buffer, from: number, to: number): void {
    const n = to - from;
    if (n <= 0) return;
    if (this.lineLen === 0 && !this.inHeader) {
      // In a body only a line starting with "-" can be a boundary; everything else is skipped unread.
      this.collecting = this.multipartDepth > 0 && chunk[from] === 0x2d;
    }
    if (this.collecting && this.headLen < HEAD_CAP) {
      const take = Math.min(n, HEAD_CAP - this.headLen);
      chunk.copy(this.head, this.headLen, from, from + take);
      this.headLen += take;
    }
    this.lineLen += n;
    // A header line that does not end yet counts already: a line without a line break cannot outgrow the limit.
    if (this.inHeader && this.headerBytes + this.lineLen > this.opts.maxHeaderBytes) {
      this.fail(new MessageRefused(Reply.HeaderTooLarge, `header section over ${this.opts.maxHeaderBytes} bytes`));
    }
  }

  private lineEnd(): void {
    const lineLen = this.lineLen;
    this.lineLen = 0;
    const headLen = this.headLen;
    this.headLen = 0;
    if (this.inHeader) {
      this.collecting = true;
      this.headerLine(lineLen, headLen);
    } else if (this.collecting) {
      this.bodyLine(lineLen, headLen);
    }
  }

  private headerLine(lineLen: number, headLen: number): void {
    this.headerBytes += lineLen + 2;
    if (this.headerBytes > this.opts.maxHeaderBytes) {
      this.fail(new MessageRefused(Reply.HeaderTooLarge, `header section over ${this.opts.maxHeaderBytes} bytes`));
      return;
    }
    if (lineLen === 0) {
      this.endOfHeader();
      return;
    }
    if (this.topLevel) this.stats.headerLines++;
    const first = this.head[0];
    if (first === 0x20 || first === 0x09) {
      // RFC 5322 §2.2.3: a folded continuation of the previous field.
      if (this.headerKind === 'from') this.stats.fromHeaderBytes += lineLen + 2;
      else if (this.headerKind !== 'other') this.appendValue(0, headLen);
      return;
    }
    const colon = this.head.subarray(0, headLen).indexOf(0x3a);
    const name = colon > 0 ? this.head.toString('latin1', 0, colon).trimEnd().toLowerCase() : '';
    this.headerKind = 'other';
    if (name === 'content-type') {
      this.headerKind = 'content-type';
      this.contentType = '';
      this.appendValue(colon + 1, headLen);
    } else if (name === 'content-transfer-encoding') {
      this.headerKind = 'cte';
      this.cte = '';
      this.appendValue(colon + 1, headLen);
    } else if (this.topLevel) {
      if (name === 'received') {
        this.stats.received++;
        if (this.stats.received > this.opts.maxReceived) this.fail(new MessageRefused(Reply.TooManyHops, `more than ${this.opts.maxReceived} Received headers`));
      } else if (name === 'from') {
        this.headerKind = 'from';
        this.stats.fromHeaderBytes += lineLen + 2;
      }
    }
  }

  private appendValue(from: number, to: number): void {
    if (to <= from) return;
    const add = this.head.toString('latin1', from, to);
    if (this.headerKind === 'content-type') {
      if (this.contentType.length < VALUE_CAP) this.contentType += add;
    } else if (this.headerKind === 'cte') {
      if (this.cte.length < VALUE_CAP) this.cte += add;
    }
  }

  /** The blank line after a header section: what follows depends on the section's Content-Type (RFC 2045/2046). */
  private endOfHeader(): void {
    if (this.topLevel) this.opts.onHeaderEnd?.(this.stats);
    this.topLevel = false;
    this.headerBytes = 0;
    this.headerKind = 'other';
    const ct = parseContentType(this.contentType);
    const cte = this.cte.trim().toLowerCase();
    this.contentType = '';
    this.cte = '';
    this.inHeader = false;
    if (ct.type === 'multipart' && ct.boundary) {
      this.enter({ kind: 'multipart', delimiter: `--${ct.boundary}` });
    } else if (ct.type === 'message' && (ct.subtype === 'rfc822' || ct.subtype === 'global') && (cte === '' || cte === '7bit' || cte === '8bit' || cte === 'binary')) {
      // An attached message: its own header section starts right away. mailparser counts it as one more part (an
      // inline one at least), so it is counted here too.
      this.enter({ kind: 'message' });
      this.inHeader = true;
      this.countPart();
    }
  }

  /** One more MIME part; false (and the message refused) once past smtp.limits.max_mime_parts. */
  private countPart(): boolean {
    this.stats.mimeParts++;
    if (this.stats.mimeParts <= this.opts.maxMimeParts) return true;
    this.fail(new MessageRefused(Reply.TooManyMimeParts, `more than ${this.opts.maxMimeParts} MIME parts`));
    return false;
  }

  private enter(frame: Frame): void {
    this.stack.push(frame);
    if (frame.kind === 'multipart') this.multipartDepth++;
    if (this.stack.length > this.stats.maxDepth) this.stats.maxDepth = this.stack.length;
    if (this.stack.length > this.opts.maxMimeDepth) this.fail(new MessageRefused(Reply.MimeTooDeep, `MIME nesting over ${this.opts.maxMimeDepth}`));
  }

  private popTo(depth: number): void {
    while (this.stack.length > depth) {
      const f = this.stack.pop();
      if (f?.kind === 'multipart') this.multipartDepth--;
    }
  }

  /** A body line starting with "-": a delimiter of an enclosing multipart ends every part inside it (RFC 2046 §5.1.1). */
  private bodyLine(lineLen: number, headLen: number): void {
    if (lineLen > headLen || headLen < 3 || this.head[1] !== 0x2d) return;
    let end = headLen;
    while (end > 2 && (this.head[end - 1] === 0x20 || this.head[end - 1] === 0x09)) end--; // transport padding
    const line = this.head.toString('latin1', 0, end);
    for (let k = this.stack.length - 1; k >= 0; k--) {
      const f = this.stack[k];
      if (f?.kind !== 'multipart') continue;
      if (line === f.delimiter) {
        this.popTo(k + 1);
        if (!this.countPart()) return;
        this.inHeader = true;
        this.collecting = true;
        return;
      }
      if (line.length === f.delimiter.length + 2 && line.startsWith(f.delimiter) && line.endsWith('--')) {
        this.popTo(k);
        return;
      }
    }
  }
}

/** type/subtype and the boundary parameter of a Content-Type value (RFC 2045 §5.1); enough to follow the structure. */
export function parseContentType(value: string): { type: string; subtype: string; boundary: string | undefined } {
  const v = value.trim();
  const semi = v.indexOf(';');
  const mime = (semi === -1 ? v : v.slice(0, semi)).trim().toLowerCase();
  const slash = mime.indexOf('/');
  const type = slash === -1 ? mime : mime.slice(0, slash).trim();
  const subtype = slash === -1 ? '' : mime.slice(slash + 1).trim();
  let boundary: string | undefined;
  if (semi !== -1 && type === 'multipart') {
    const m = /(?:^|;)\s*boundary\s*=\s*(?:"((?:[^"\\]|\\.){1,200})"|([^\s;"]{1,200}))/i.exec(v.slice(semi));
    if (m) boundary = m[1] !== undefined ? m[1].replace(/\\(.)/g, '$1') : m[2];
  }
  return { type, subtype, boundary };
}

export function createDataFilter(opts: DataFilterOptions): DataFilter {
  return new DataFilter(opts);
}
