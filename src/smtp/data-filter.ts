// The DATA stream transform: bare CR/LF policy, header-section, hop-count and MIME structure limits, in one streaming pass (mailbox messages pass it too).
import { createRequire } from 'node:module';
import { posix } from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { MailhookError } from '../core/errors.js';
import { MessageRefused, Reply } from './replies.js';

export type BareLfPolicy = 'normalize' | 'reject' | 'keep';

export interface DataFilterOptions {
  /**
   * normalize: a lone CR or LF becomes CRLF; reject: the message is refused with 550 5.5.2; keep: the bytes pass as
   * they are (a message read from a mailbox is stored as the server holds it), read as mailparser's splitter reads
   * them: a lone LF ends a line, a lone CR is part of its line
   */
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
/** characters of a header field kept to read Content-Type, Content-Transfer-Encoding and Content-Disposition */
const VALUE_CAP = 8192;
// mailparser's splitter (@zone-eu/mailsplit) decides what mailparser can parse; the filter follows its reading of
// the structure, so that nothing it accepts with 250 is later found unparseable.
/** the least a header line counts for against the header limit (mailsplit: a parsed line has a fixed overhead) */
const HEADER_LINE_MIN_COST = 64;
/** bytes a delimiter line may carry beyond its boundary: "--", a closing "--" and up to 998 SP/HTAB (mailsplit) */
const DELIMITER_SLACK = 1002;
/** the longest boundary followed: its delimiter lines must fit in HEAD_CAP (RFC 2046 allows 70 characters) */
const MAX_BOUNDARY = HEAD_CAP - 4;
/** what mailsplit types a part without Content-Type by its Content-Disposition filename (libmime's table) */
const MESSAGE_EXTENSIONS = new Set(['eml', 'mht', 'mhtml', 'nws']);

type Frame = { kind: 'multipart'; delimiter: string; started: boolean } | { kind: 'message' };
const KEPT_FIELDS: ReadonlySet<string> = new Set(['content-type', 'content-transfer-encoding', 'content-disposition']);

/** One header field being read: its name once known, and its unfolded text while it may matter. */
interface Field {
  /** lower-cased, trimmed name; undefined while the field has no colon yet (it may come on a continuation line) */
  name: string | undefined;
  /** the field unfolded as mailsplit unfolds it (each line break and the folding whitespace after it: one space) */
  text: string;
  /** text was cut at VALUE_CAP */
  truncated: boolean;
  /** a From field of the message header (its size is measured for sender authentication) */
  from: boolean;
}

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
  /** the bytes of the current line past HEAD_CAP are all SP or HTAB (it may still be a padded delimiter line) */
  private tailWsp = true;
  /** a header line's bytes past HEAD_CAP, up to VALUE_CAP characters */
  private overflow = '';
  // MIME state
  private inHeader = true;
  private topLevel = true;
  /** the header section so far as mailsplit counts it (HEADER_LINE_MIN_COST) */
  private headerBytes = 0;
  /** lines of the current header section, folded continuations included */
  private sectionLines = 0;
  private field: Field | undefined;
  /** the first Content-Type, Content-Transfer-Encoding and Content-Disposition fields of the section (mailsplit reads the first) */
  private kept = new Map<string, Field>();
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
      if (this.opts.bareLf === 'keep') this.lineData(CR_BUF, 0, 1);
      else if (this.bare()) {
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

  /** A lone CR or LF that ends a line (a lone LF when kept): true when normalized or kept, false when refused. */
  private bare(): boolean {
    if (this.opts.bareLf === 'reject') {
      this.fail(new MessageRefused(Reply.BareNewline, 'bare CR or LF'));
      return false;
    }
    if (this.inserting) this.stats.normalized++;
    return true;
  }

  /**
   * In a body outside any multipart, for good: no header section or delimiter can follow, so lines matter only for
   * their line ends (a message/rfc822 part's header section was entered at its parent's blank line already).
   */
  private get plainBody(): boolean {
    return !this.inHeader && this.multipartDepth === 0;
  }

  /** Whether a lone CR or LF gets the byte that makes it CRLF. */
  private get inserting(): boolean {
    return this.opts.bareLf === 'normalize';
  }

  /** Finds the line ends of one chunk (native indexOf, no per-byte JS loop) and returns the bytes to store. */
  private scan(chunk: Buffer): Buffer {
    // A plain body with its line ends kept as they are: nothing left to look at (a lone CR pending at the last
    // chunk's end would only be part of its line).
    if (this.opts.bareLf === 'keep' && this.plainBody) {
      this.pendingCR = false;
      return chunk;
    }
    const len = chunk.length;
    let pieces: Buffer[] | undefined;
    let segStart = 0;
    let i = 0;
    if (this.pendingCR) {
      this.pendingCR = false;
      if (chunk[0] === LF) {
        this.lineEnd();
        i = 1;
      } else if (this.opts.bareLf === 'keep') {
        this.lineData(CR_BUF, 0, 1); // the CR of the last chunk was part of its line
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
          if (this.plainBody) {
            // Lines ending in CRLF, in a body where lines mean nothing more, go by with only the two searches (no
            // per-line state: the line length, the head copy and the delimiter check serve headers and multiparts).
            this.collecting = false;
            let cr = chunk.indexOf(CR, i);
            while (cr !== -1 && cr + 1 === nextLF) {
              i = nextLF + 1;
              cr = chunk.indexOf(CR, i);
              nextLF = chunk.indexOf(LF, i);
            }
            nextCR = cr;
            continue;
          }
        } else if (this.opts.bareLf === 'keep') {
          // A lone CR is no line end to mailparser's splitter (it splits at LF): part of the line.
          this.lineData(chunk, t, t + 1);
          i = t + 1;
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
        if (this.inserting) {
          (pieces ??= []).push(chunk.subarray(segStart, t), CR_BUF);
          segStart = t;
        }
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
    if (this.collecting) {
      let at = from;
      if (this.headLen < HEAD_CAP) {
        const take = Math.min(n, HEAD_CAP - this.headLen);
        chunk.copy(this.head, this.headLen, from, from + take);
        this.headLen += take;
        at += take;
      }
      if (at < to) this.lineTail(chunk, at, to);
    }
    this.lineLen += n;
    // A header line that does not end yet counts already: a line without a line break cannot outgrow the limit.
    if (this.inHeader && this.headerBytes + Math.max(this.lineLen, HEADER_LINE_MIN_COST) > this.opts.maxHeaderBytes) {
      this.fail(new MessageRefused(Reply.HeaderTooLarge, `header section over ${this.opts.maxHeaderBytes} bytes`));
    }
  }

  /** Bytes of a collected line past HEAD_CAP: kept for a header field, checked for delimiter padding. */
  private lineTail(chunk: Buffer, from: number, to: number): void {
    if (this.inHeader && this.overflow.length < VALUE_CAP) {
      this.overflow += chunk.toString('latin1', from, Math.min(to, from + VALUE_CAP - this.overflow.length));
    }
    if (!this.tailWsp) return;
    // Past the longest delimiter line no padding matters; up to it, a line of SP/HTAB after "--boundary" delimits.
    if (this.lineLen + (to - from) > HEAD_CAP + DELIMITER_SLACK) {
      this.tailWsp = false;
      return;
    }
    for (let i = from; i < to; i++) {
      const c = chunk[i];
      if (c !== 0x20 && c !== 0x09) {
        this.tailWsp = false;
        return;
      }
    }
  }

  private lineEnd(): void {
    const lineLen = this.lineLen;
    this.lineLen = 0;
    const headLen = this.headLen;
    this.headLen = 0;
    const tailWsp = this.tailWsp;
    this.tailWsp = true;
    const overflow = this.overflow;
    this.overflow = '';
    if (!this.collecting) return;
    // mailsplit looks for delimiters on every line, header lines included: a part may end before its blank line.
    if (this.multipartDepth > 0 && headLen >= 3 && this.head[0] === 0x2d && this.head[1] === 0x2d && this.delimiter(lineLen, headLen, tailWsp)) {
      this.collecting = true;
      return;
    }
    if (this.inHeader) {
      this.collecting = true;
      this.headerLine(lineLen, headLen, overflow);
    }
  }

  private headerLine(lineLen: number, headLen: number, overflow: string): void {
    this.headerBytes += lineLen === 0 ? 2 : Math.max(lineLen + 2, HEADER_LINE_MIN_COST);
    if (this.headerBytes > this.opts.maxHeaderBytes) {
      this.fail(new MessageRefused(Reply.HeaderTooLarge, `header section over ${this.opts.maxHeaderBytes} bytes`));
      return;
    }
    if (lineLen === 0) {
      this.endOfHeader();
      return;
    }
    if (this.topLevel) this.stats.headerLines++;
    const firstLine = this.sectionLines++ === 0;
    const first = this.head[0];
    // RFC 5322 §2.2.3: a folded continuation of the previous field (mailsplit: the section's first line never is).
    if (!firstLine && (first === 0x20 || first === 0x09)) {
      const field = this.field;
      if (!field) return;
      if (field.from) this.stats.fromHeaderBytes += lineLen + 2;
      if (field.name !== undefined && !KEPT_FIELDS.has(field.name)) return;
      const text = this.head.toString('latin1', 0, headLen) + overflow;
      this.append(field, ' ' + text.replace(/^[ \t]+/, ''), lineLen > text.length);
      if (field.name === undefined) {
        // mailsplit takes the name of a field that had no colon from the first continuation line holding one.
        const colon = field.text.indexOf(':');
        if (colon >= 0) field.name = field.text.slice(0, colon).trim().toLowerCase();
        else if (field.truncated) field.name = nameBeyondCap(field.text);
      }
      return;
    }
    this.endField();
    // mailsplit reads a first line "From ..." (mbox) or "POST ..." (HTTP) as no field at all; a field's name is what
    // comes before its first colon, trimmed, and a line without one may get its name from a continuation.
    const colonInHead = this.head.subarray(0, headLen).indexOf(0x3a);
    let name: string | undefined;
    let text: string | undefined;
    if (firstLine && /^(?:From|POST) /i.test(this.head.toString('latin1', 0, Math.min(headLen, 5)))) {
      name = '';
    } else if (colonInHead >= 0) {
      name = this.head.toString('latin1', 0, colonInHead).trim().toLowerCase();
    } else {
      text = this.head.toString('latin1', 0, headLen) + overflow;
      const colon = text.indexOf(':');
      if (colon >= 0) name = text.slice(0, colon).trim().toLowerCase();
      else if (firstLine) name = '';
      else if (lineLen > text.length) name = nameBeyondCap(text);
    }
    const field: Field = { name, text: '', truncated: false, from: false };
    this.field = field;
    if (name === undefined || KEPT_FIELDS.has(name)) {
      text ??= this.head.toString('latin1', 0, headLen) + overflow;
      this.append(field, text, lineLen > text.length);
    }
    if (this.topLevel && name !== undefined) {
      if (name === 'received') {
        this.stats.received++;
        if (this.stats.received > this.opts.maxReceived) this.fail(new MessageRefused(Reply.TooManyHops, `more than ${this.opts.maxReceived} Received headers`));
      } else if (name === 'from') {
        field.from = true;
        this.stats.fromHeaderBytes += lineLen + 2;
      }
    }
  }

  private append(field: Field, text: string, cut: boolean): void {
    const room = VALUE_CAP - field.text.length;
    if (text.length > room || cut) field.truncated = true;
    if (room > 0) field.text += text.length > room ? text.slice(0, room) : text;
  }

  /** The field read so far is complete: the first of each kept name is kept. */
  private endField(): void {
    const field = this.field;
    this.field = undefined;
    if (field?.name !== undefined && KEPT_FIELDS.has(field.name) && !this.kept.has(field.name)) this.kept.set(field.name, field);
  }

  private resetSection(): void {
    this.headerBytes = 0;
    this.sectionLines = 0;
    this.field = undefined;
    this.kept = new Map();
  }

  /** The blank line after a header section: what follows depends on the section's Content-Type (RFC 2045/2046). */
  private endOfHeader(): void {
    this.endField();
    if (this.topLevel) this.opts.onHeaderEnd?.(this.stats);
    this.topLevel = false;
    const kept = this.kept;
    this.resetSection();
    this.inHeader = false;
    const ct = sectionContentType(kept);
    if (ct === undefined) {
      this.fail(new MessageRefused(Reply.MimeHeaderUnreadable, 'a MIME header mailparser would read differently'));
      return;
    }
    const cte = kept.get('content-transfer-encoding');
    if (cte?.truncated) {
      this.fail(new MessageRefused(Reply.MimeHeaderUnreadable, 'a MIME header mailparser would read differently'));
      return;
    }
    const encoding = cte ? stripComments(fieldValue(cte)).toLowerCase().trim() : '';
    if (ct.boundary !== undefined) {
      this.enter({ kind: 'multipart', delimiter: `--${ct.boundary}`, started: false });
    } else if ((ct.mime === 'message/rfc822' || ct.mime === 'message/global') && (encoding === '' || encoding === '7bit' || encoding === '8bit' || encoding === 'binary')) {
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

  /**
   * A line starting with "--": a delimiter of an enclosing multipart ends every part inside it (RFC 2046 §5.1.1),
   * whether in a body or in a header section. True when it was one.
   */
  private delimiter(lineLen: number, headLen: number, tailWsp: boolean): boolean {
    const line = this.head.toString('latin1', 0, headLen);
    for (let k = this.stack.length - 1; k >= 0; k--) {
      const f = this.stack[k];
      if (f?.kind !== 'multipart') continue;
      const kind = matchDelimiter(line, lineLen, tailWsp, f.delimiter);
      if (kind === 0) continue;
      if (kind === 1) {
        this.popTo(k + 1);
        f.started = true;
        this.resetSection();
        this.inHeader = true;
        this.countPart();
        return true;
      }
      // A closing delimiter in the preamble, before the first part, closes nothing (mailsplit reads on).
      if (k === this.stack.length - 1 && !f.started && !this.inHeader) return false;
      this.popTo(k);
      this.resetSection();
      this.inHeader = false;
      return true;
    }
    return false;
  }
}

/**
 * The name of a field whose colon lies past VALUE_CAP: one of the kept names if that is all the text seen so far
 * (padded with whitespace), so that the section is refused as unreadable rather than read without it.
 */
function nameBeyondCap(text: string): string {
  const t = text.trim().toLowerCase();
  return KEPT_FIELDS.has(t) ? t : '';
}

/**
 * 1 for "--boundary", 2 for "--boundary--", each followed by SP/HTAB only, as mailsplit reads delimiter lines (at
 * most DELIMITER_SLACK bytes beyond the boundary); else 0. `line` is the first bytes of the line, `tailWsp` tells
 * whether the rest is SP/HTAB.
 */
function matchDelimiter(line: string, lineLen: number, tailWsp: boolean, delimiter: string): 0 | 1 | 2 {
  if (lineLen > delimiter.length - 2 + DELIMITER_SLACK || !line.startsWith(delimiter)) return 0;
  let i = delimiter.length;
  let kind: 1 | 2 = 1;
  if (line.charCodeAt(i) === 0x2d) {
    if (line.charCodeAt(i + 1) !== 0x2d) return 0;
    kind = 2;
    i += 2;
  }
  for (; i < line.length; i++) {
    const c = line.charCodeAt(i);
    if (c !== 0x20 && c !== 0x09) return 0;
  }
  return lineLen > line.length && !tailWsp ? 0 : kind;
}

/**
 * The field's value as mailsplit's Headers.getFirst gives it: the bytes as UTF-8 when they are valid UTF-8, else
 * as latin1; what follows the first colon, trimmed.
 */
function fieldValue(field: Field): string {
  const utf8 = Buffer.from(field.text, 'latin1').toString('utf8');
  const text = (utf8.includes('\uFFFD') ? field.text : utf8).trim();
  const m = /^\s*([^:]+):(.*)$/.exec(text);
  return m ? (m[2] as string).trim() : '';
}

/** Content-Transfer-Encoding comments as mailsplit drops them: from the first "(" to the last ")". */
function stripComments(value: string): string {
  const start = value.indexOf('(');
  if (start < 0) return value;
  const end = value.lastIndexOf(')');
  return end > start ? value.slice(0, start) + value.slice(end + 1) : value;
}

/**
 * The media type and boundary mailsplit finds for a header section, from its first Content-Type (or, without one,
 * the Content-Disposition filename's extension). Undefined when mailhook cannot be sure to read it the same way: a
 * kept field cut at VALUE_CAP, a boundary in an encoding it does not decode, or one longer than MAX_BOUNDARY.
 */
function sectionContentType(kept: Map<string, Field>): { mime: string; boundary: string | undefined } | undefined {
  const field = kept.get('content-type');
  let mime: string;
  let boundary: string | undefined;
  if (field) {
    if (field.truncated) return undefined;
    const parsed = parseHeaderValue(fieldValue(field));
    mime = parsed.value.toLowerCase().trim();
    if (mime.slice(0, Math.max(mime.indexOf('/'), 0)) === 'multipart' && mime.slice(mime.indexOf('/') + 1)) {
      if (parsed.unreadable.has('boundary')) return undefined;
      const b = (parsed.params.get('boundary') ?? '').trimEnd();
      // A boundary with a non-ASCII character is none for mailsplit, as an empty one.
      if (b !== '' && !/[^\x00-\x7f]/.test(b)) {
        if (b.length > MAX_BOUNDARY) return undefined;
        boundary = b;
      }
    }
  } else {
    const disposition = kept.get('content-disposition');
    if (disposition?.truncated) return undefined;
    const parsed = disposition ? parseHeaderValue(fieldValue(disposition)) : undefined;
    // A filename in a character set not decoded here (koi8-r, iso-2022-jp…) is read by mailsplit's own libmime: rare
    // (a part without Content-Type), and refusing it refused legitimate mail.
    const filename = parsed?.unreadable.has('filename') ? mailsplitFilename(fieldValue(disposition as Field)) : parsed?.params.get('filename');
    const ext = filename ? posix.parse(filename).ext.replace(/^\./, '').replace(/\s/g, '').toLowerCase() : '';
    mime = MESSAGE_EXTENSIONS.has(ext) ? 'message/rfc822' : 'text/plain';
  }
  return { mime, boundary };
}

let mailsplitLibmime: { parseHeaderValue(value: string, opts: { stripComments: boolean }): { params: Record<string, string | undefined> } } | undefined;

/**
 * The filename parameter of a Content-Disposition value exactly as mailsplit reads it, through the libmime it
 * requires itself (resolved from mailparser, as mailparser loads it), with every character set it decodes.
 */
function mailsplitFilename(value: string): string | undefined {
  if (!mailsplitLibmime) {
    const fromMailparser = createRequire(createRequire(import.meta.url).resolve('mailparser'));
    const { Libmime } = createRequire(fromMailparser.resolve('@zone-eu/mailsplit'))('libmime') as { Libmime: new () => NonNullable<typeof mailsplitLibmime> };
    mailsplitLibmime = new Libmime();
  }
  return mailsplitLibmime.parseHeaderValue(value, { stripComments: true }).params.filename;
}

/** type/subtype and the boundary parameter of a Content-Type value (RFC 2045 §5.1) as mailsplit reads them. */
export function parseContentType(value: string): { type: string; subtype: string; boundary: string | undefined; unreadable?: true } {
  const parsed = parseHeaderValue(value);
  const mime = parsed.value.toLowerCase().trim();
  const slash = mime.indexOf('/');
  const type = slash === -1 ? mime : mime.slice(0, slash);
  const subtype = slash === -1 ? '' : mime.slice(slash + 1);
  if (type !== 'multipart' || !subtype) return { type, subtype, boundary: undefined };
  if (parsed.unreadable.has('boundary')) return { type, subtype, boundary: undefined, unreadable: true };
  const b = (parsed.params.get('boundary') ?? '').trimEnd();
  if (b.length > MAX_BOUNDARY) return { type, subtype, boundary: undefined, unreadable: true };
  return { type, subtype, boundary: b !== '' && !/[^\x00-\x7f]/.test(b) ? b : undefined };
}

const isWsp = (c: string): boolean => c === ' ' || c === '\t' || c === '\r' || c === '\n' || c === '\f' || c === '\v';

/** Where the comment opening at `start` closes (nested, with quoted pairs), or -1. */
function commentEnd(str: string, start: number): number {
  let depth = 0;
  for (let i = start; i < str.length; i++) {
    const c = str[i];
    if (c === '\\') i++;
    else if (c === '(') depth++;
    else if (c === ')' && --depth === 0) return i;
  }
  return -1;
}

/** Characters that may follow "%" in an RFC 2231 value mailhook decodes exactly as libmime does. */
const PERCENT_RE = /%(?![0-9a-f]{2})/i;
/** Character sets whose percent-decoded bytes mean the same ASCII characters (any other byte: not ASCII). */
const ASCII_CHARSETS = new Set(['utf-8', 'utf8', 'us-ascii', 'ascii', 'iso-8859-1', 'latin1', 'windows-1252']);

/**
 * A structured header value (RFC 2045 §5.1) read the way libmime's parseHeaderValue reads it for mailsplit (with
 * comments stripped): the first of a repeated parameter wins; a "(" opens a comment except inside a token or a
 * quoted string; what follows a closing quote up to the ";" is dropped; RFC 2231 continuations (name*, name*0,
 * name*0*) are joined in order and override the plain parameter. `unreadable` names the parameters whose value
 * libmime would decode in a way not reproduced here (an encoded word, a character set other than ASCII-compatible ones).
 */
export function parseHeaderValue(str: string): { value: string; params: Map<string, string>; unreadable: Set<string> } {
  const params = new Map<string, string>();
  const unreadable = new Set<string>();
  let value = '';
  let stripping = true;
  let inKey = false;
  let key: string | undefined;
  let buf = '';
  let end = 0;
  let quote = false;
  let quoteClosed = false;
  let escaped = false;
  let tokenOpen = false;
  const commit = (): void => {
    const collected = buf.slice(0, end);
    buf = '';
    end = 0;
    if (inKey) {
      const name = collected.toLowerCase();
      if (name && !params.has(name)) params.set(name, '');
    } else if (key === undefined) {
      value = collected;
    } else if (!params.has(key)) {
      params.set(key, collected);
    }
  };
  for (let i = 0; i < str.length; i++) {
    const c = str[i] as string;
    if (stripping && c === '(' && !quote && !escaped && !tokenOpen) {
      let close = commentEnd(str, i);
      // An unclosed comment runs to the end, unless a parameter follows: then it is content, and so is the rest.
      if (close < 0 && str.indexOf(';', i) < 0) close = str.length - 1;
      if (close >= 0) {
        i = close;
        continue;
      }
      stripping = false;
    }
    if (inKey) {
      if (c === '=') {
        key = buf.slice(0, end).toLowerCase();
        buf = '';
        end = 0;
        inKey = false;
        tokenOpen = true;
      } else if (c === ';') {
        commit();
      } else if (isWsp(c)) {
        if (buf.length) buf += c;
      } else {
        buf += c;
        end = buf.length;
      }
      continue;
    }
    if (quoteClosed && c !== ';') {
      escaped = false;
      continue;
    }
    if (escaped) {
      buf += c;
      end = buf.length;
      tokenOpen = key !== undefined && !quote;
    } else if (c === '\\') {
      escaped = true;
      continue;
    } else if (c === '"') {
      quoteClosed = quote;
      quote = !quote;
      tokenOpen = false;
    } else if (!quote && c === ';') {
      commit();
      inKey = true;
      tokenOpen = false;
      quoteClosed = false;
    } else if (!quote && isWsp(c)) {
      if (buf.length) buf += c;
      tokenOpen = false;
    } else {
      buf += c;
      end = buf.length;
      tokenOpen = key !== undefined && !quote;
    }
    escaped = false;
  }
  commit();

  // RFC 2231 §3-4: continuations and character sets.
  const continued = new Map<string, { charset: string | undefined; parts: Array<{ nr: number; value: string }> }>();
  for (const [name, v] of [...params]) {
    const m = /\*((\d+)\*?)?$/.exec(name);
    if (!m) continue;
    params.delete(name);
    const base = name.slice(0, m.index);
    const nr = Number(m[2]) || 0;
    let part = v;
    let entry = continued.get(base);
    if (!entry) {
      entry = { charset: undefined, parts: [] };
      continued.set(base, entry);
    }
    const cs = nr === 0 && m[0].endsWith('*') ? /^([^']*)'[^']*'(.*)$/.exec(v) : null;
    if (cs) {
      entry.charset = cs[1] || 'utf-8';
      part = cs[2] as string;
    }
    entry.parts.push({ nr, value: part });
  }
  for (const [name, entry] of continued) {
    const joined = entry.parts
      .sort((a, b) => a.nr - b.nr)
      .map((p) => p.value)
      .join('');
    if (entry.charset === undefined) {
      // libmime decodes encoded words in such a value.
      if (joined.includes('=?')) unreadable.add(name);
      params.set(name, joined);
      continue;
    }
    if (!ASCII_CHARSETS.has(entry.charset.toLowerCase()) || PERCENT_RE.test(joined)) {
      unreadable.add(name);
      params.set(name, joined);
      continue;
    }
    // Percent-decoded; a byte beyond ASCII stays beyond ASCII (a boundary with one is none).
    params.set(name, joined.replace(/%([0-9a-f]{2})/gi, (_, h: string) => String.fromCharCode(parseInt(h, 16))));
  }
  return { value, params, unreadable };
}

export function createDataFilter(opts: DataFilterOptions): DataFilter {
  return new DataFilter(opts);
}
