// MIME → the "message" part of the JSON payload: decoded headers, addresses, bodies and attachments.
import { simpleParser, type AddressObject, type EmailAddress, type ParsedMail } from 'mailparser';
import { renderHtmlAsText } from './html-text.js';
import { bytesToText } from './text.js';

export interface PayloadAddress {
  address: string;
  name: string;
}

export interface PayloadAttachment {
  filename: string | null;
  content_type: string;
  size: number;
  content_id: string | null;
  disposition: string | null;
  content_base64: string;
}

export interface PayloadMessage {
  message_id: string | null;
  subject: string | null;
  from: PayloadAddress | null;
  to: PayloadAddress[];
  cc: PayloadAddress[];
  reply_to: PayloadAddress[];
  date: string | null;
  in_reply_to: string | null;
  references: string[];
  headers: Array<{ name: string; value: string }>;
  text: string | null;
  html: string | null;
  attachments: PayloadAttachment[];
}

/**
 * JSON.stringify of a PayloadMessage: what a parse thread hands back and the json format splices into its payload
 * as it is. One string crosses between threads faster than the object graph (headers, addresses), and the
 * stringifying (a few ms for a 1 MB text body) happens on the parse thread instead of the event loop.
 */
export type PayloadMessageJson = string;

/** Parses a stored message into the payload's message as JSON text (see PayloadMessageJson). */
export async function parseMessageJson(raw: Buffer): Promise<PayloadMessageJson> {
  return payloadMessageJson((await parseMessage(raw)).message);
}

/**
 * JSON.stringify(message), with each attachment's base64 put in as it is: nothing in base64 needs escaping, and
 * JSON.stringify walks it a character at a time (~3 ms per MB, a sixth of a 1 MB attachment's parse). The keys
 * come in the same order (attachments last, content_base64 last in each): the same text, which a test holds it to.
 */
export function payloadMessageJson(message: PayloadMessage): PayloadMessageJson {
  if (message.attachments.length === 0) return JSON.stringify(message);
  const { attachments, ...rest } = message;
  const parts = attachments.map(({ content_base64, ...a }) => `${JSON.stringify(a).slice(0, -1)},"content_base64":"${content_base64}"}`);
  return `${JSON.stringify(rest).slice(0, -1)},"attachments":[${parts.join(',')}]}`;
}

/**
 * mailparser as every payload parses with it: no HTML rendering of its own (it covers only HTML at the root of the
 * tree, not Gmail's multipart/related; renderHtmlAsText does that where needed), no text-to-HTML, cid: links kept.
 */
export function parseMime(raw: Buffer): Promise<ParsedMail> {
  return simpleParser(raw, { skipImageLinks: true, skipTextToHtml: true, skipHtmlToText: true, keepCidLinks: true });
}

/**
 * Parses a stored message; character sets are decoded to UTF-8, the raw bytes are left to the caller. An HTML-only
 * message's text is a rendering of its HTML (renderHtmlAsText), wherever the HTML sits in the MIME tree; with
 * `htmlToText: false` it gets none (text null): that rendering is most of the time a large HTML body takes (seconds
 * for 10 MB), and a summary does not need it.
 */
export async function parseMessage(raw: Buffer, options: { htmlToText?: boolean } = {}): Promise<{ parsed: ParsedMail; message: PayloadMessage }> {
  const parsed = await parseMime(raw);
  return { parsed, message: toPayloadMessage(parsed, options.htmlToText !== false) };
}

/** The text part, or for an HTML-only message (when `renderHtml`) a rendering of its HTML; null when neither. */
export function textOf(p: Pick<ParsedMail, 'text' | 'html'>, renderHtml: boolean): string | null {
  if (typeof p.text === 'string' && p.text !== '') return p.text;
  if (renderHtml && typeof p.html === 'string') return renderHtmlAsText(p.html) || null;
  return null;
}

export function toPayloadMessage(p: ParsedMail, renderHtml = true): PayloadMessage {
  return {
    message_id: p.messageId ?? null,
    subject: p.subject ?? null,
    from: flattenAddresses(p.from)[0] ?? null,
    to: flattenAddresses(p.to),
    cc: flattenAddresses(p.cc),
    reply_to: flattenAddresses(p.replyTo),
    date: p.date && !Number.isNaN(p.date.getTime()) ? p.date.toISOString() : null,
    in_reply_to: p.inReplyTo ?? null,
    references: typeof p.references === 'string' ? [p.references] : (p.references ?? []),
    headers: p.headerLines.map((h) => ({ name: headerName(h.line, h.key), value: headerValue(h.line) })),
    text: textOf(p, renderHtml),
    html: typeof p.html === 'string' ? p.html : null,
    attachments: p.attachments.map((a) => ({
      filename: a.filename ?? null,
      content_type: a.contentType,
      size: a.size,
      content_id: a.contentId ? a.contentId.replace(/^<|>$/g, '') : null,
      disposition: a.contentDisposition ?? null,
      content_base64: a.content.toString('base64'),
    })),
  };
}

/** Every mailbox of an address header, groups flattened, in order. */
export function flattenAddresses(field: AddressObject | AddressObject[] | undefined): PayloadAddress[] {
  if (!field) return [];
  const out: PayloadAddress[] = [];
  const visit = (list: EmailAddress[]) => {
    for (const a of list) {
      if (a.group) visit(a.group);
      else if (a.address) out.push({ address: a.address, name: a.name ?? '' });
    }
  };
  for (const obj of Array.isArray(field) ? field : [field]) visit(obj.value);
  return out;
}

function headerName(line: string, key: string): string {
  const i = line.indexOf(':');
  return i > 0 ? line.slice(0, i).trim() : key;
}

/**
 * The header's value unfolded (RFC 5322 §2.2.3: only the line breaks go), encoded words as on the wire. mailparser
 * keeps header lines as Latin-1 text of the bytes; 8-bit values are read as UTF-8 when they are (RFC 6532).
 */
function headerValue(line: string): string {
  const i = line.indexOf(':');
  const value = (i >= 0 ? line.slice(i + 1) : line).replace(/\r?\n(?=[ \t])/g, '').trim();
  return /[\x80-\xff]/.test(value) && !/[^\x00-\xff]/.test(value) ? bytesToText(Buffer.from(value, 'latin1')) : value;
}
