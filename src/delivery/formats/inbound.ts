// What the hosted-service formats (Mailgun, Postmark, SendGrid) share: one parsed view of the message, recipients' keys, URL credentials.
import { MailhookError } from '../../core/errors.js';
import { headerValue, parseHeaderSection, type HeaderField } from '../../parse/headers.js';
import { parseInboundMessage, type Address, type InboundMessage, type InboundParseOptions, type ParseInbound } from '../../parse/inbound.js';
import type { Recipient } from '../../spool/types.js';
import type { FormatContext } from './types.js';

/** The parsed message as the formats read it (see InboundMessage). */
export interface InboundView extends Omit<InboundMessage, 'plainText'> {
  /** the text body, or when there is none a text rendering of the HTML (what Mailgun's body-plain promises) */
  plainText(): Promise<string>;
}

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

/** The context's inbound parse (the parse pool, see FormatContext.parseInbound), or one on this thread when it has none. */
export function inboundParseOf(ctx: Pick<FormatContext, 'parseInbound'>): ParseInbound {
  return ctx.parseInbound ?? parseInboundMessage;
}

/**
 * Parses a stored message for the service formats with `parse` (the parse pool in delivery; this thread when
 * absent). plainText() is the parse's own when `options.plainText` asked for it (Mailgun), or the text part;
 * otherwise (HTML-only mail) its first call runs one more parse, with `parse` too, that renders it: the rendering
 * never runs on the caller's thread.
 */
export async function inboundView(raw: Buffer, parse: ParseInbound = parseInboundMessage, options: InboundParseOptions = { plainText: false }): Promise<InboundView> {
  const { plainText, ...fields } = await parse(raw, options);
  // Only HTML-only mail needs the rendering; otherwise plainText is the text part, or "" when there is neither.
  const known = plainText ?? fields.text ?? (fields.html === null ? '' : null);
  let plain: Promise<string> | undefined = known === null ? undefined : Promise.resolve(known);
  return {
    ...fields,
    plainText() {
      if (plain) return plain;
      const rendered = parse(raw, { plainText: true }).then((m) => m.plainText ?? '');
      plain = rendered;
      // Kept once rendered (the view is shared by a message's deliveries, see InboundViews); a failure is not.
      rendered.catch(() => {
        if (plain === rendered) plain = undefined;
      });
      return rendered;
    },
  };
}

/** How long a message's parsed view is kept for its other deliveries after the last one asked for it. */
export const VIEW_KEEP_MS = 10_000;

/**
 * The parsed view of the message most recently encoded, for the other deliveries of the same message: mailgun and
 * postmark post once per recipient, so a message to 100 recipients of such a route would otherwise be parsed 100
 * times (a 25 MB message: ~250 ms each, on the event loop above the parse pool's THREAD_MAX_BYTES). One message is
 * kept, for VIEW_KEEP_MS after its last use; the view is only read by the formats. One cache per set of formats
 * (createFormats), never a module's.
 */
export class InboundViews {
  private last: { id: string; view: Promise<InboundView>; timer: NodeJS.Timeout } | undefined;

  constructor(private readonly keepMs = VIEW_KEEP_MS) {}

  /**
   * The message's view, parsed with `parse` (the delivery's, FormatContext.parseInbound) unless kept; `options`
   * apply to that parse (a kept view without plainText renders it when asked, see inboundView).
   */
  of(messageId: string, raw: Buffer, parse: ParseInbound, options: InboundParseOptions): Promise<InboundView> {
    const last = this.last;
    if (last?.id === messageId) {
      last.timer.refresh();
      return last.view;
    }
    if (last) clearTimeout(last.timer);
    const view = inboundView(raw, parse, options);
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
