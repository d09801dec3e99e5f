// What the hosted-service formats (Mailgun, Postmark, SendGrid) share: one parsed view of the message, recipients' keys, URL credentials.
import { simpleParser } from 'mailparser';
import { MailhookError } from '../../core/errors.js';
import { flattenAddresses, textOf } from '../../parse/message.js';
import type { Recipient } from '../../spool/types.js';
import { headerValue, parseHeaderSection, type HeaderField } from './headers.js';

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

export interface InboundView {
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
  /** the text body, or when there is none a text rendering of the HTML (what Mailgun's body-plain promises) */
  plainText(): Promise<string>;
  attachments: InboundAttachment[];
}

const PARSE_OPTIONS = { skipHtmlToText: true, skipTextToHtml: true, skipImageLinks: true, keepCidLinks: true } as const;

/**
 * The header fields alone, for the modes that forward the message byte for byte (Mailgun mime, SendGrid send_raw):
 * no body, no attachments, and no full parse, which refuses what mailparser refuses (more than 1,000 MIME parts, the
 * message itself counted; a header over 1 MB) although these modes never read the body.
 */
export function headerOnlyView(raw: Buffer): Pick<InboundView, 'subject' | 'fromHeader' | 'toHeader' | 'ccHeader'> {
  const section = parseHeaderSection(raw);
  const h = (name: string) => headerValue(section.fields, name)?.value ?? '';
  return { subject: h('subject'), fromHeader: h('from'), toHeader: h('to'), ccHeader: h('cc') };
}

/** Parses a stored message for the service formats: charsets decoded to Unicode in every field, attachments as bytes. */
export async function inboundView(raw: Buffer): Promise<InboundView> {
  const p = await simpleParser(raw, PARSE_OPTIONS);
  const section = parseHeaderSection(raw);
  const h = (name: string) => headerValue(section.fields, name)?.value ?? '';
  const text = textOf(p, false);
  let plain: string | undefined;
  const html = typeof p.html === 'string' ? p.html : null;
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
    text,
    html,
    async plainText() {
      // Only the formats that promise text for HTML-only mail (Mailgun's body-plain) pay for the rendering, once per
      // view (the view is shared by a message's deliveries, see InboundViews).
      return (plain ??= textOf(p, true) ?? '');
    },
    attachments: p.attachments.map((a, i) => ({
      filename: a.filename ?? defaultFilename(i, a.contentType),
      contentType: a.contentType || 'application/octet-stream',
      content: a.content,
      contentId: a.contentId ? a.contentId.replace(/^<|>$/g, '') : null,
    })),
  };
}

/** How long a message's parsed view is kept for its other deliveries after the last one asked for it. */
export const VIEW_KEEP_MS = 10_000;

/**
 * The parsed view of the message most recently encoded, for the other deliveries of the same message: mailgun and
 * postmark post once per recipient, so a message to 100 recipients of such a route would otherwise be parsed 100
 * times on the event loop (a 25 MB message: ~250 ms each). One message is kept, for VIEW_KEEP_MS after its last
 * use; the view is only read by the formats.
 */
export class InboundViews {
  private last: { id: string; view: Promise<InboundView>; timer: NodeJS.Timeout } | undefined;

  constructor(private readonly keepMs = VIEW_KEEP_MS) {}

  of(messageId: string, raw: Buffer): Promise<InboundView> {
    const last = this.last;
    if (last?.id === messageId) {
      last.timer.refresh();
      return last.view;
    }
    if (last) clearTimeout(last.timer);
    const view = inboundView(raw);
    const forget = () => {
      if (this.last?.view !== view) return;
      clearTimeout(this.last.timer);
      this.last = undefined;
    };
    this.last = { id: messageId, view, timer: setTimeout(forget, this.keepMs).unref() };
    view.catch(forget); // a parse that failed is not kept (the next delivery tries again)
    return view;
  }
}

function defaultFilename(i: number, contentType: string): string {
  const ext = /^message\/rfc822$/i.test(contentType) ? '.eml' : '';
  return `attachment-${i + 1}${ext}`;
}

/**
 * The Authentication-Results mailhook recorded when it verified the sender (smtp.sender_auth), as the header a
 * receiving MTA puts on top of the message (RFC 8601 §2.1): the services show their own checks among the headers.
 */
export function recordedAuthHeaders(meta: Record<string, unknown> | null): HeaderField[] {
  const value = meta?.authentication_results;
  return typeof value === 'string' && value ? [{ name: 'Authentication-Results', raw: value, value }] : [];
}

/** `"Name" <address>` or the bare address, as Postmark and the Rails mail gem write an address list. */
export function formatAddress(a: Address): string {
  return a.name ? `"${a.name.replace(/(["\\])/g, '\\$1')}" <${a.address}>` : a.address;
}

/**
 * The sub-address key of an address: the route template's key for this delivery's recipients (routing already
 * captured it), otherwise, also for a recipient of a route without a %{key} template (an exact address, a
 * catch-all), what Postmark calls the MailboxHash, the part after the first "+" of the local part.
 */
export function mailboxHash(address: string, recipients: readonly Recipient[]): string {
  const lower = address.toLowerCase();
  const key = recipients.find((r) => r.address.toLowerCase() === lower)?.key;
  if (key != null) return key;
  const local = address.slice(0, address.lastIndexOf('@'));
  const plus = local.indexOf('+');
  return plus === -1 ? '' : local.slice(plus + 1);
}

/** Percent-decoding that keeps a malformed sequence ("p%ss") as written instead of throwing. */
function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/**
 * Hosted services take HTTP Basic credentials from the webhook URL's userinfo (https://user:pass@host/…) and send
 * them as an Authorization header; the request itself goes to the URL without them.
 */
export function credentialsFromUrl(url: string): { url: string; authorization: string | undefined } {
  const u = new URL(url);
  if (!u.username && !u.password) return { url, authorization: undefined };
  const user = safeDecode(u.username);
  const password = safeDecode(u.password);
  u.username = '';
  u.password = '';
  return { url: u.toString(), authorization: basicAuthorization(user, password) };
}

/** RFC 7617: "Basic " + base64(user ":" password), UTF-8. */
export function basicAuthorization(user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`, 'utf8').toString('base64')}`;
}

export function requireSecret(key: Buffer | undefined, format: string, what: string): Buffer {
  if (!key || key.length === 0) throw new MailhookError('WEBHOOK_BAD_SECRET', `format ${format} needs ${what}; set the route's webhook.secret or secret_file`, { userFault: true });
  return key;
}
