// Message header parsing for mailbox bridges (pure): the header section, unfolded fields, addresses, Received "for".

/** One header field: the name lower-cased, the value unfolded (RFC 5322 §2.2.3) and trimmed. */
export interface HeaderField {
  name: string;
  value: string;
}

/** Header sections larger than this are cut (a message is refused by size elsewhere; routing needs the top). */
export const MAX_HEADER_BYTES = 256 * 1024;

/**
 * The header section of a raw message: from its first line up to the blank line that ends it.
 * Leading blank lines are skipped (some stored messages begin with one). Returns the bytes found
 * within `limit`, so a message without a body, or a truncated one, still yields its headers.
 */
export function headerSection(raw: Buffer, limit = MAX_HEADER_BYTES): Buffer {
  let start = 0;
  while (start < raw.length && (raw[start] === 0x0d || raw[start] === 0x0a)) start++;
  const end = Math.min(raw.length, start + limit);
  for (let i = start; i < end; i++) {
    if (raw[i] !== 0x0a) continue;
    // LF LF, or LF CR LF: the line after this LF is empty.
    if (raw[i + 1] === 0x0a) return raw.subarray(start, i + 1);
    if (raw[i + 1] === 0x0d && raw[i + 2] === 0x0a) return raw.subarray(start, i + 1);
  }
  return raw.subarray(start, end);
}

/** Where the header section (plus its blank line) ends, or -1 when the bytes seen so far do not hold it all. */
export function headerEnd(raw: Buffer): number {
  let start = 0;
  while (start < raw.length && (raw[start] === 0x0d || raw[start] === 0x0a)) start++;
  for (let i = start; i < raw.length; i++) {
    if (raw[i] !== 0x0a) continue;
    if (raw[i + 1] === 0x0a) return i + 2;
    if (raw[i + 1] === 0x0d && raw[i + 2] === 0x0a) return i + 3;
  }
  return -1;
}

/** Splits a header section into fields in message order; continuation lines are joined to their field. */
export function parseHeaderFields(section: Buffer | string): HeaderField[] {
  const text = typeof section === 'string' ? section : section.toString('utf8');
  const fields: HeaderField[] = [];
  let current: { name: string; value: string } | undefined;
  for (const line of text.split(/\r?\n/)) {
    if (line === '') continue;
    if ((line[0] === ' ' || line[0] === '\t') && current) {
      current.value += ' ' + line.trim();
      continue;
    }
    const colon = line.indexOf(':');
    // A line that is neither a field nor a continuation (an mbox "From " line, junk) is skipped.
    if (colon <= 0 || /\s/.test(line.slice(0, colon))) {
      current = undefined;
      continue;
    }
    current = { name: line.slice(0, colon).toLowerCase(), value: line.slice(colon + 1).trim() };
    fields.push(current);
  }
  return fields.map((f) => ({ name: f.name, value: f.value.replace(/\s+/g, ' ').trim() }));
}

/** All values of one field, in message order. */
export function fieldValues(fields: readonly HeaderField[], name: string): string[] {
  const lower = name.toLowerCase();
  return fields.filter((f) => f.name === lower).map((f) => f.value);
}

// addr-spec as it appears in practice: no spaces, brackets, quotes or list separators.
const ADDR_SPEC = /[^\s<>(),;:"[\]\\]+@[^\s<>(),;:"[\]\\]+/g;

/**
 * The addresses in an address-list field (To, Cc, Delivered-To, Envelope-To, …), in order.
 * Handles display names (quoted or not, even when they look like addresses), angle addresses with an
 * obsolete source route, comments, groups, values glued to the next header by a missing line break, and
 * quoted local parts ("john doe"@example.com; "a+b"@example.com is written a+b@example.com, RFC 5321 §4.1.2).
 */
export function addressesIn(value: string): string[] {
  const out: string[] = [];
  const quoted: string[] = [];
  for (const piece of splitTopLevel(value, quoted)) {
    const angle = /<([^<>]*)>/.exec(piece.text);
    if (angle && piece.angles > 0) {
      // RFC 5322 §4.4 obs-route: "<@relay1,@relay2:user@host>" — the address follows the last colon.
      const inner = (angle[1] ?? '').split(':').pop()!.trim();
      const m = inner.match(ADDR_SPEC);
      if (m && m[0] === inner) out.push(cleanAddress(inner, quoted));
      continue;
    }
    for (const m of piece.text.match(ADDR_SPEC) ?? []) out.push(cleanAddress(m, quoted));
  }
  return out.filter((a) => a.length > 0);
}

/** Stands for the n-th quoted local part while the value is split (no header text contains U+0001). */
const QUOTED_MARK = '\u0001';
const QUOTED_TOKEN = /\u0001(\d+)\u0001/g;
// RFC 5322 §3.2.3 dot-atom: a quoted local part made only of these needs no quotes.
const DOT_ATOM = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$/;

/**
 * The local part as RFC 5321 §4.1.2 writes it: without quotes when the content is a dot-atom
 * ("a+b" → a+b), else quoted with only '"' and '\' escaped ("first last" stays "first last").
 */
export function canonicalQuotedLocal(content: string): string {
  if (DOT_ATOM.test(content)) return content;
  return `"${content.replace(/(["\\])/g, '\\$1')}"`;
}

function cleanAddress(addr: string, quoted: readonly string[] = []): string {
  // A trailing dot closes a sentence, never an address ("… for user@example.com.").
  return addr.replace(/\.+$/, '').replace(QUOTED_TOKEN, (_, n: string) => quoted[Number(n)] ?? '');
}

/**
 * Reads the quoted string that opens at value[start] ('"'); returns its unescaped content and the index of
 * the closing quote (value.length when it is never closed).
 */
function readQuoted(value: string, start: number): { content: string; end: number } {
  let content = '';
  let i = start + 1;
  for (; i < value.length; i++) {
    const c = value[i] as string;
    if (c === '\\' && i + 1 < value.length) content += value[++i];
    else if (c === '"') break;
    else content += c;
  }
  return { content, end: i };
}

/** A quoted string directly followed by "@" is a local part (RFC 5322 §3.4.1), not a display name. */
function quotedLocalAt(value: string, start: number, quoted: string[]): { token: string; end: number } | undefined {
  const q = readQuoted(value, start);
  if (q.end >= value.length || value[q.end + 1] !== '@' || q.content === '') return undefined;
  quoted.push(canonicalQuotedLocal(q.content));
  return { token: `${QUOTED_MARK}${quoted.length - 1}${QUOTED_MARK}`, end: q.end };
}

/**
 * Splits at commas and semicolons outside quotes, comments and angle brackets; drops quoted text and comments.
 * A quoted local part is kept as a token (its canonical form pushed to `quoted`) so it parses as an address.
 */
function splitTopLevel(value: string, quoted: string[]): Array<{ text: string; angles: number }> {
  const pieces: Array<{ text: string; angles: number }> = [];
  let text = '';
  let angles = 0;
  let inQuote = false;
  let inAngle = false;
  let comment = 0;
  for (let i = 0; i < value.length; i++) {
    const c = value[i] as string;
    if (inQuote) {
      if (c === '\\') i++;
      else if (c === '"') inQuote = false;
      continue;
    }
    if (comment > 0) {
      if (c === '\\') i++;
      else if (c === '(') comment++;
      else if (c === ')') comment--;
      continue;
    }
    if (inAngle) {
      if (c === '"') {
        const local = quotedLocalAt(value, i, quoted);
        if (local) {
          text += local.token;
          i = local.end;
          continue;
        }
      }
      text += c;
      if (c === '>') inAngle = false;
      continue;
    }
    if (c === '"') {
      const local = quotedLocalAt(value, i, quoted);
      if (local) {
        text += local.token;
        i = local.end;
        continue;
      }
      inQuote = true;
      text += ' ';
    } else if (c === '(') {
      comment = 1;
      text += ' ';
    } else if (c === '<') {
      inAngle = true;
      angles++;
      text += c;
    } else if (c === ',' || c === ';') {
      pieces.push({ text, angles });
      text = '';
      angles = 0;
    } else {
      text += c;
    }
  }
  pieces.push({ text, angles });
  return pieces.filter((p) => p.text.trim() !== '');
}

/**
 * The address of a Received field's "for" clause (RFC 5321 §4.4), with or without angle brackets,
 * or undefined. Comments are dropped first so "(… for x …)" in a comment does not count.
 */
export function receivedFor(value: string): string | undefined {
  const noComments = stripComments(value);
  const q = /(?:^|\s)for\s+<?\s*"((?:[^"\\]|\\.)+)"@([^\s<>;()"]+?)\s*>?(?=[\s;]|$)/i.exec(noComments);
  if (q) return cleanAddress(`${canonicalQuotedLocal((q[1] as string).replace(/\\(.)/g, '$1'))}@${q[2]}`);
  const m = /(?:^|\s)for\s+<?\s*([^\s<>;()"]+@[^\s<>;()"]+?)\s*>?(?=[\s;]|$)/i.exec(noComments);
  return m ? cleanAddress(m[1] as string) : undefined;
}

function stripComments(value: string): string {
  let out = '';
  let depth = 0;
  let inQuote = false;
  for (let i = 0; i < value.length; i++) {
    const c = value[i] as string;
    if (depth === 0 && c === '"') inQuote = !inQuote;
    if (!inQuote && c === '(') {
      depth++;
      out += ' ';
      continue;
    }
    if (!inQuote && c === ')' && depth > 0) {
      depth--;
      continue;
    }
    if (depth === 0) out += c;
  }
  return out;
}

/**
 * The Message-ID without angle brackets, or undefined when there is none that names one message: "<>", "< >",
 * "(none)" and the like are not ids (several messages would share one dedupe key, and all but the first be lost).
 */
export function messageIdOf(fields: readonly HeaderField[]): string | undefined {
  const v = fieldValues(fields, 'message-id')[0]?.trim();
  if (!v) return undefined;
  const m = /<([^<>\s]+)>/.exec(v);
  if (m) return m[1];
  return /^[^<>\s()]+@[^<>\s()]+$/.test(v) ? v : undefined;
}

/**
 * The sender to record as the envelope's MAIL FROM, which IMAP does not carry: the Return-Path the
 * final MTA wrote ("" for the null sender <>), else the first From address, else "".
 */
export function envelopeSenderOf(fields: readonly HeaderField[]): string {
  const rp = fieldValues(fields, 'return-path')[0];
  if (rp !== undefined) {
    if (/<\s*>/.test(rp)) return '';
    const a = addressesIn(rp)[0];
    if (a) return a;
  }
  return addressesIn(fieldValues(fields, 'from')[0] ?? '')[0] ?? '';
}
