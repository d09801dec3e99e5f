// Header-section helpers for the inbound parse (service formats): split the header block from the raw bytes, unfold, decode RFC 2047 words. Pure.
import { bytesToText } from './text.js';

export { bytesToText };

export interface HeaderField {
  name: string;
  /** the value unfolded (RFC 5322 §2.2.3), as on the wire: encoded words left as they are */
  raw: string;
  /** the value with RFC 2047 encoded words decoded to Unicode */
  value: string;
}

export interface HeaderSection {
  /** the header block as text, without the blank line that ends it */
  block: string;
  fields: HeaderField[];
}

/** Where the header section ends: the index of the blank line's first byte, and where the body starts. */
export function headerEnd(raw: Buffer): { end: number; bodyStart: number } {
  // A message that starts with a blank line has no header section (mailparser reads it the same way).
  if (raw[0] === 0x0a) return { end: 0, bodyStart: 1 };
  if (raw[0] === 0x0d && raw[1] === 0x0a) return { end: 0, bodyStart: 2 };
  let i = raw.indexOf(0x0a);
  while (i !== -1) {
    const next = raw[i + 1];
    if (next === 0x0a) return { end: i + 1, bodyStart: i + 2 };
    if (next === 0x0d && raw[i + 2] === 0x0a) return { end: i + 1, bodyStart: i + 3 };
    i = raw.indexOf(0x0a, i + 1);
  }
  return { end: raw.length, bodyStart: raw.length };
}

/** Splits and unfolds the header section of a raw message; values are decoded for display in `value`. */
export function parseHeaderSection(raw: Buffer): HeaderSection {
  const { end } = headerEnd(raw);
  // Decoded line by line, so one header in a legacy 8-bit charset does not turn its UTF-8 neighbours into Latin-1.
  const lines: string[] = [];
  const head = raw.subarray(0, end);
  for (let start = 0; start < head.length; ) {
    const nl = head.indexOf(0x0a, start);
    const stop = nl === -1 ? head.length : nl;
    lines.push(bytesToText(head.subarray(start, stop)));
    start = stop + 1;
  }
  const block = lines.join('\n').replace(/\r$/, '');
  const fields: HeaderField[] = [];
  if (!block) return { block, fields };
  // RFC 5322 §2.2.3: unfolding removes the line break before white space, nothing else.
  const unfolded = block.split(/\r?\n(?![ \t])/);
  for (const line of unfolded) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue; // not a header field (a stray line); mailparser skips it too
    const name = line.slice(0, colon).trim();
    if (!/^[\x21-\x39\x3b-\x7e]+$/.test(name)) continue;
    const rawValue = line
      .slice(colon + 1)
      .replace(/\r?\n(?=[ \t])/g, '')
      .trim();
    const value = ADDRESS_HEADERS.has(name.toLowerCase()) ? decodeAddressHeader(rawValue) : decodeEncodedWords(rawValue);
    fields.push({ name, raw: rawValue, value });
  }
  return { block, fields };
}

/** The first field of that name (case-insensitive), or undefined. */
export function headerValue(fields: readonly HeaderField[], name: string): HeaderField | undefined {
  const lower = name.toLowerCase();
  return fields.find((f) => f.name.toLowerCase() === lower);
}

const CHARSET_ALIASES: Record<string, string> = {
  // Labels mail uses that the WHATWG Encoding Standard (TextDecoder) does not list.
  cp932: 'shift_jis',
  'x-sjis-cp932': 'shift_jis',
  'x-mac-japanese': 'shift_jis',
  cp936: 'gbk',
  'iso-2022-jp-2': 'iso-2022-jp',
  'iso-2022-jp-ms': 'iso-2022-jp',
  ansi_x3_4_1968: 'windows-1252',
  ascii: 'windows-1252',
};

/** A TextDecoder for a MIME charset label, or undefined when the label is unknown. */
export function decoderFor(charset: string): TextDecoder | undefined {
  const label = charset.trim().toLowerCase().replace(/\*.*$/, ''); // RFC 2231 §5: "charset*language"
  try {
    return new TextDecoder(CHARSET_ALIASES[label] ?? label);
  } catch {
    return undefined;
  }
}

const ENCODED_WORD = /=\?([^?\s]+)\?([BbQq])\?([^?\s]*)\?=/g;

/** Header fields whose value is an address list (RFC 5322 §3.6.2-3, §3.6.6, and the common list extensions). */
const ADDRESS_HEADERS = new Set([
  'from', 'sender', 'reply-to', 'to', 'cc', 'bcc', 'resent-from', 'resent-sender', 'resent-to', 'resent-cc', 'resent-bcc',
  'mail-followup-to', 'mail-reply-to', 'disposition-notification-to',
]);

/**
 * Decodes RFC 2047 encoded words. White space between two adjacent encoded words is dropped (§6.2), and adjacent
 * words in the same charset are decoded together, so a multi-byte character split across two words (common with
 * Shift_JIS and ISO-2022-JP subjects) comes out whole. A word in an unknown charset is left as written.
 */
export function decodeEncodedWords(value: string): string {
  return decodeWords(value, undefined);
}

/**
 * Decodes the encoded words of an address list so that it still parses as one: a display name that decodes to
 * text with specials ("Müller, Hans" written as =?…?Q?M=FCller=2C_Hans?=, as Outlook writes "Last, First") is
 * quoted, inside a quoted string or a comment only escaped. Decoded as plain text, the comma would split the
 * address in two for every consumer that parses the field (Python's getaddresses, the mail gem).
 */
export function decodeAddressHeader(value: string): string {
  const syntax = { quoted: false, comment: 0, escaped: false };
  return decodeWords(value, {
    scan(text) {
      for (const c of text) {
        if (syntax.escaped) syntax.escaped = false;
        else if (c === '\\') syntax.escaped = syntax.quoted || syntax.comment > 0;
        else if (syntax.quoted) syntax.quoted = c !== '"';
        else if (c === '(') syntax.comment++;
        else if (c === ')' && syntax.comment > 0) syntax.comment--;
        else if (c === '"' && syntax.comment === 0) syntax.quoted = true;
      }
    },
    wrap(decoded) {
      if (syntax.quoted) return decoded.replace(/(["\\])/g, '\\$1');
      if (syntax.comment > 0) return decoded.replace(/([()\\])/g, '\\$1');
      return /[()<>[\]:;@\\,."]/.test(decoded) ? `"${decoded.replace(/(["\\])/g, '\\$1')}"` : decoded;
    },
  });
}

/** How decodeWords keeps a structured field's syntax: `scan` sees the text outside encoded words, `wrap` each decoded run. */
interface WordSyntax {
  scan(text: string): void;
  wrap(decoded: string): string;
}

function decodeWords(value: string, syntax: WordSyntax | undefined): string {
  if (!value.includes('=?')) return value;
  let out = '';
  let pending: { charset: string; bytes: Buffer[]; source: string } | undefined;
  let last = 0;
  const flush = () => {
    if (!pending) return;
    const decoder = decoderFor(pending.charset);
    if (!decoder) out += pending.source;
    else {
      const decoded = decoder.decode(Buffer.concat(pending.bytes));
      out += syntax ? syntax.wrap(decoded) : decoded;
    }
    pending = undefined;
  };
  const plain = (text: string) => {
    syntax?.scan(text);
    out += text;
  };
  for (const m of value.matchAll(ENCODED_WORD)) {
    const between = value.slice(last, m.index);
    const [word, charset, encoding, text] = m as unknown as [string, string, string, string];
    const bytes = encoding.toUpperCase() === 'B' ? decodeB(text) : decodeQ(text);
    const adjacent = pending !== undefined && /^[ \t\r\n]*$/.test(between);
    if (adjacent && pending && pending.charset.toLowerCase() === charset.toLowerCase()) {
      pending.bytes.push(bytes);
      pending.source += between + word;
    } else {
      flush();
      if (!adjacent) plain(between);
      pending = { charset, bytes: [bytes], source: word };
    }
    last = m.index + word.length;
  }
  flush();
  plain(value.slice(last));
  return out;
}

function decodeB(text: string): Buffer {
  return Buffer.from(text, 'base64');
}

/** RFC 2047 §4.2: "_" is a space, =XX a byte, anything else the ASCII byte itself. */
function decodeQ(text: string): Buffer {
  const bytes: number[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text[i] as string;
    if (c === '_') bytes.push(0x20);
    else if (c === '=' && /^[0-9A-Fa-f]{2}$/.test(text.slice(i + 1, i + 3))) {
      bytes.push(parseInt(text.slice(i + 1, i + 3), 16));
      i += 2;
    } else bytes.push(c.charCodeAt(0) & 0xff);
  }
  return Buffer.from(bytes);
}
