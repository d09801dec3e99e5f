// format: mailgun — what a Mailgun route's forward() action POSTs: parsed fields (or body-mime), signed with timestamp, token and signature.
import { createHmac } from 'node:crypto';
import { stripQuotedHtml, stripReply } from '../../parse/strip.js';
import type { Outcome } from '../classify.js';
import { credentialsFromUrl, headerOnlyView, inboundParseOf, InboundViews, recordedAuthHeaders, requireSecret, type InboundView } from './inbound.js';
import { encodeUrlForm, multipartForm, type FormField, type RandomBytes } from './multipart.js';
import type { ResolvedWebhook } from '../../config/load.js';
import type { FormatContext, PayloadFormat } from './types.js';

/** Mailgun's token: "a randomly generated string with length of 50". */
export const MAILGUN_TOKEN_LENGTH = 50;

/** Mailgun's documented signature: hex HMAC-SHA256 of timestamp + token (no separator), keyed by the signing key. */
export function mailgunSignature(key: Buffer, timestamp: string, token: string): string {
  return createHmac('sha256', key).update(`${timestamp}${token}`).digest('hex');
}

export function mailgunToken(randomBytes: RandomBytes): string {
  return randomBytes(MAILGUN_TOKEN_LENGTH / 2).toString('hex');
}

/** The fields of the envelope and signature, common to the parsed and the MIME posts. */
function baseFields(ctx: FormatContext, view: Pick<InboundView, 'fromHeader' | 'subject'>, signature: { timestamp: string; token: string; signature: string }) {
  return [
    { name: 'recipient', value: ctx.delivery.recipients.map((r) => r.address).join(', ') },
    { name: 'sender', value: ctx.message.envelope.mailFrom },
    { name: 'from', value: view.fromHeader },
    { name: 'subject', value: view.subject },
    { name: 'timestamp', value: signature.timestamp },
    { name: 'token', value: signature.token },
    { name: 'signature', value: signature.signature },
  ];
}

/** Field names Mailgun itself uses: a message header of the same name is not repeated as a field. */
const RESERVED = new Set([
  'recipient', 'sender', 'from', 'subject', 'timestamp', 'token', 'signature', 'body-plain', 'stripped-text', 'stripped-signature',
  'body-html', 'stripped-html', 'message-headers', 'attachment-count', 'content-id-map', 'body-mime',
]);

/** Mailgun's attachment file fields, attachment-1…N. */
const ATTACHMENT_FIELD = /^attachment-\d+$/;

/**
 * A bracket in a field name is structure to the usual form parsers (qs behind Express's urlencoded, multer's
 * append-field, Rack, PHP): a header `recipient[]` or `timestamp[]` would be merged into Mailgun's own field of that
 * name, handing the application a sender-chosen recipient or breaking its signature check.
 */
const STRUCTURED_NAME = /[[\]]/;

/**
 * The parsed post: Mailgun's documented fields, then every message header as a field of its own name (first
 * occurrence, decoded), as Mailgun sends them; attachments as attachment-1…N files.
 */
export async function mailgunParsedFields(ctx: FormatContext, view: InboundView, signature: { timestamp: string; token: string; signature: string }): Promise<FormField[]> {
  const plain = await view.plainText();
  const stripped = stripReply(plain);
  const fields: FormField[] = [
    ...baseFields(ctx, view, signature),
    { name: 'body-plain', value: plain },
    { name: 'stripped-text', value: stripped.text },
    { name: 'stripped-signature', value: stripped.signature },
  ];
  if (view.html !== null) {
    fields.push({ name: 'body-html', value: view.html }, { name: 'stripped-html', value: stripQuotedHtml(view.html) });
  }
  const headers = [...recordedAuthHeaders(ctx.message.meta), ...view.headers];
  fields.push({ name: 'message-headers', value: JSON.stringify(headers.map((h) => [h.name, h.value])) });
  const cidMap: Record<string, string> = {};
  view.attachments.forEach((a, i) => {
    if (a.contentId) cidMap[`<${a.contentId}>`] = `attachment-${i + 1}`;
  });
  fields.push({ name: 'attachment-count', value: String(view.attachments.length) }, { name: 'content-id-map', value: JSON.stringify(cidMap) });
  const seen = new Set<string>();
  for (const h of headers) {
    // attachment-N are Mailgun's file fields: a header of that name (anyone can write one) would sit beside the file.
    if (RESERVED.has(h.name) || ATTACHMENT_FIELD.test(h.name) || STRUCTURED_NAME.test(h.name) || seen.has(h.name)) continue;
    seen.add(h.name);
    fields.push({ name: h.name, value: h.value });
  }
  view.attachments.forEach((a, i) => fields.push({ name: `attachment-${i + 1}`, filename: a.filename, contentType: a.contentType, data: a.content }));
  return fields;
}

/**
 * Mailgun's route semantics: 406 means "rejected, do not retry" (dead, but the consumer's decision, not a
 * misconfiguration); any other 4xx is retried, as Mailgun retries it (an application written for Mailgun may answer
 * 400 or 404 for "not now"); 401/403 mean the signature was refused (a wrong signing key: loud, by the standard rule).
 */
export function classifyMailgun(status: number): Outcome | undefined {
  if (status === 406) return { kind: 'dead', reason: 'HTTP 406: the consumer rejected the message (Mailgun: not applicable, no retry)' };
  if (status >= 400 && status < 500 && status !== 401 && status !== 403) return { kind: 'retry', reason: `HTTP ${status} (retried, as Mailgun does for every status but 406)` };
  return undefined;
}

export function createMailgunFormat(deps: { randomBytes: RandomBytes; views?: InboundViews }): PayloadFormat {
  const views = deps.views ?? new InboundViews();
  // mime: Mailgun's "/mime" post, the message as it is and fields from its header section only.
  const parses = (options: ResolvedWebhook['options']) => (options.mime ? undefined : 'inbound');
  return {
    name: 'mailgun',
    parses,
    async encode(ctx) {
      const key = requireSecret(ctx.webhook.signingKeyBytes, 'mailgun', 'the Mailgun webhook signing key');
      const timestamp = String(ctx.nowSeconds);
      const token = mailgunToken(deps.randomBytes);
      const signature = { timestamp, token, signature: mailgunSignature(key, timestamp, token) };
      let form;
      if (parses(ctx.webhook.options) === undefined) {
        // Mailgun's "/mime" post (what Action Mailbox's Mailgun ingress reads): the message byte for byte in body-mime.
        form = multipartForm([...baseFields(ctx, headerOnlyView(ctx.raw), signature), { name: 'body-mime', value: ctx.raw }], deps.randomBytes);
      } else {
        // body-plain needs the text rendering of HTML-only mail: asked of the parse, so it runs where the parse does.
        const view = await views.of(ctx.message.id, ctx.raw, inboundParseOf(ctx), { plainText: true });
        const fields = await mailgunParsedFields(ctx, view, signature);
        // Mailgun posts multipart/form-data when there are attachments, urlencoded otherwise.
        const hasFiles = fields.some((f) => 'filename' in f);
        form = hasFiles ? multipartForm(fields, deps.randomBytes) : encodeUrlForm(fields as Array<{ name: string; value: string }>);
      }
      const { url, authorization } = credentialsFromUrl(ctx.webhook.url);
      return {
        url,
        headers: { 'content-type': form.contentType, ...(authorization ? { authorization } : {}) },
        body: form.body,
      };
    },
    classify: classifyMailgun,
  };
}
