// MIME → what the hosted-service formats (Mailgun, Postmark, SendGrid) read: decoded fields, bodies, attachments as bytes. Plain data, so a parse thread can hand it back.
import { headerValue, parseHeaderSection, type HeaderField } from './headers.js';
import { flattenAddresses, parseMime, textOf } from './message.js';

export interface Address {
  address: string;
  name: string;
}

export interface InboundAttachment {
  filename: string;
  contentType: string;
  /** the decoded bytes, exactly as the sender attached them */
  content: Buffer;
  /** without angle brackets; null when the part has no Content-ID */
  contentId: string | null;
}

export interface InboundMessage {
  headers: HeaderField[];
  /** the raw header section as text (UTF-8 when valid, else Latin-1) */
  headerBlock: string;
  subject: string;
  from: Address | null;
  to: Address[];
  cc: Address[];
  bcc: Address[];
  replyTo: Address[];
  /** decoded header values as written, "" when absent: what the services call "as taken from the message headers" */
  fromHeader: string;
  toHeader: string;
  ccHeader: string;
  date: string;
  /** the text/plain body, decoded to Unicode; null when the message has none */
  text: string | null;
  html: string | null;
  /**
   * The text body, or when there is none a text rendering of the HTML (what Mailgun's body-plain promises); null
   * when the parse was not asked for it (`plainText: false`): the rendering (html-to-text) is most of the time a
   * large HTML body takes, and only Mailgun's parsed post needs it.
   */
  plainText: string | null;
  attachments: InboundAttachment[];
}

export interface InboundParseOptions {
  /** also render InboundMessage.plainText (HTML-only mail: html-to-text) */
  plainText: boolean;
}

/** The parse itself: a thread of the parse pool, or the calling thread (see ParsePool.parseInbound). */
export type ParseInbound = (raw: Buffer, options: InboundParseOptions) => Promise<InboundMessage>;

/** Parses a stored message for the service formats: charsets decoded to Unicode in every field, attachments as bytes. */
export async function parseInboundMessage(raw: Buffer, options: InboundParseOptions): Promise<InboundMessage> {
  const p = await parseMime(raw);
  const section = parseHeaderSection(raw);
  const h = (name: string) => headerValue(section.fields, name)?.value ?? '';
  return {
    headers: section.fields,
    headerBlock: section.block,
    subject: p.subject ?? '',
    from: flattenAddresses(p.from)[0] ?? null,
    to: flattenAddresses(p.to),
    cc: flattenAddresses(p.cc),
    bcc: flattenAddresses(p.bcc),
    replyTo: flattenAddresses(p.replyTo),
    fromHeader: h('from'),
    toHeader: h('to'),
    ccHeader: h('cc'),
    date: h('date'),
    text: textOf(p, false),
    html: typeof p.html === 'string' ? p.html : null,
    plainText: options.plainText ? (textOf(p, true) ?? '') : null,
    attachments: p.attachments.map((a, i) => ({
      filename: a.filename ?? defaultFilename(i, a.contentType),
      contentType: a.contentType || 'application/octet-stream',
      content: a.content,
      contentId: a.contentId ? a.contentId.replace(/^<|>$/g, '') : null,
    })),
  };
}

function defaultFilename(i: number, contentType: string): string {
  const ext = /^message\/rfc822$/i.test(contentType) ? '.eml' : '';
  return `attachment-${i + 1}${ext}`;
}

/**
 * The message made ready to post to another thread: every attachment's bytes in an ArrayBuffer of their own, listed
 * for transfer (moved, not copied). Bytes that share their ArrayBuffer (Node's pool for small Buffers, a slice of
 * a larger chunk) are copied into one of their own first: transferring a shared one would take it from the others.
 */
export function forTransfer(message: InboundMessage): { message: InboundMessage; transfer: ArrayBuffer[] } {
  const transfer = new Set<ArrayBuffer>();
  const attachments = message.attachments.map((a) => {
    const c = a.content;
    const owned = c.buffer instanceof ArrayBuffer && c.byteOffset === 0 && c.byteLength === c.buffer.byteLength;
    const own = owned ? c : Buffer.from(new Uint8Array(c).buffer); // new Uint8Array(c): one copy, in a buffer of its own
    transfer.add(own.buffer as ArrayBuffer);
    return { ...a, content: own };
  });
  return { message: { ...message, attachments }, transfer: [...transfer] };
}

/** The message as it arrives from another thread: the attachments' bytes come as Uint8Array, made Buffers again (no copy). */
export function fromTransfer(message: InboundMessage): InboundMessage {
  const attachments = message.attachments.map((a) => {
    const c = a.content as Uint8Array;
    return { ...a, content: Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength) };
  });
  return { ...message, attachments };
}
