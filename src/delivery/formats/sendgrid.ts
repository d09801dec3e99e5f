// format: sendgrid — SendGrid Inbound Parse's multipart/form-data post, parsed fields or (send_raw) the whole message in `email`.
import type { ResolvedWebhook } from '../../config/load.js';
import type { FormatContext, PayloadFormat } from './types.js';
import { credentialsFromUrl, headerOnlyView, inboundParseOf, inboundView, type InboundView } from './inbound.js';
import { multipartForm, type FormField, type RandomBytes } from './multipart.js';

/**
 * SPF and DKIM as SendGrid reports them ("pass", "{@example.com : pass}"), from sender-authentication results the
 * spool kept with the message, when there are any; otherwise "none" and "{}": mailhook does not claim a check it did not make.
 */
export function authenticationFields(meta: Record<string, unknown> | null): { spf: string; dkim: string } {
  const auth = meta && typeof meta.authentication === 'object' && meta.authentication !== null ? (meta.authentication as Record<string, unknown>) : undefined;
  const resultOf = (v: unknown): string | undefined => {
    if (typeof v === 'string') return v;
    if (v && typeof v === 'object' && typeof (v as { result?: unknown }).result === 'string') return (v as { result: string }).result;
    return undefined;
  };
  const spf = resultOf(auth?.spf) ?? 'none';
  // mailhook's sender authentication records dkim as { result, signatures: [{ domain, result, … }] }.
  const dkimField = auth?.dkim as { signatures?: unknown } | unknown[] | undefined;
  const dkimList = Array.isArray(dkimField) ? dkimField : Array.isArray(dkimField?.signatures) ? (dkimField.signatures as unknown[]) : [];
  const dkim = dkimList
    .map((d) => {
      const o = (d ?? {}) as { domain?: unknown; signingDomain?: unknown };
      const domain = typeof o.domain === 'string' ? o.domain : typeof o.signingDomain === 'string' ? o.signingDomain : undefined;
      const result = resultOf(d);
      return domain && result ? `@${domain} : ${result}` : undefined;
    })
    .filter(Boolean);
  return { spf, dkim: `{${dkim.join(', ')}}` };
}

/** Every text field is sent as UTF-8 (character sets decoded), and `charsets` says so for each. */
function charsets(names: readonly string[]): string {
  return JSON.stringify(Object.fromEntries(names.map((n) => [n, 'UTF-8'])));
}

type HeaderView = Pick<InboundView, 'subject' | 'fromHeader' | 'toHeader' | 'ccHeader'>;

/** The fields both posts share: the decoded header values, the client, the envelope and the authentication results. */
function commonFields(ctx: Pick<FormatContext, 'message' | 'delivery'>, view: HeaderView): { common: FormField[]; decoded: string[] } {
  const { spf, dkim } = authenticationFields(ctx.message.meta);
  const envelope = JSON.stringify({ to: ctx.delivery.recipients.map((r) => r.address), from: ctx.message.envelope.mailFrom });
  const common: FormField[] = [
    { name: 'to', value: view.toHeader },
    { name: 'from', value: view.fromHeader },
    ...(view.ccHeader ? [{ name: 'cc', value: view.ccHeader }] : []),
    { name: 'subject', value: view.subject },
    { name: 'sender_ip', value: ctx.message.envelope.remoteAddress ?? '' },
    { name: 'envelope', value: envelope },
    { name: 'SPF', value: spf },
    { name: 'dkim', value: dkim },
  ];
  return { common, decoded: ['to', 'from', ...(view.ccHeader ? ['cc'] : []), 'subject'] };
}

/** send_raw: the message byte for byte in "email" (what Action Mailbox's SendGrid ingress reads). */
export function sendgridRawFields(ctx: Pick<FormatContext, 'message' | 'delivery' | 'raw'>, view: HeaderView): FormField[] {
  const { common, decoded } = commonFields(ctx, view);
  return [...common, { name: 'charsets', value: charsets(decoded) }, { name: 'email', value: ctx.raw }];
}

export function sendgridFields(ctx: Pick<FormatContext, 'message' | 'delivery'>, view: InboundView): FormField[] {
  const { common, decoded } = commonFields(ctx, view);
  const fields: FormField[] = [{ name: 'headers', value: view.headerBlock }, ...common];
  // "text: If not set, email did not have a text body" — likewise html.
  if (view.text !== null) fields.push({ name: 'text', value: view.text });
  if (view.html !== null) fields.push({ name: 'html', value: view.html });
  fields.push({ name: 'charsets', value: charsets([...decoded, ...(view.text !== null ? ['text'] : []), ...(view.html !== null ? ['html'] : [])]) });
  fields.push({ name: 'attachments', value: String(view.attachments.length) });
  if (view.attachments.length > 0) {
    const info: Record<string, Record<string, string>> = {};
    const contentIds: Record<string, string> = {};
    view.attachments.forEach((a, i) => {
      const key = `attachment${i + 1}`;
      info[key] = { filename: a.filename, name: a.filename, type: a.contentType, ...(a.contentId ? { 'content-id': a.contentId } : {}) };
      if (a.contentId) contentIds[a.contentId] = key;
    });
    fields.push({ name: 'attachment-info', value: JSON.stringify(info) });
    if (Object.keys(contentIds).length > 0) fields.push({ name: 'content-ids', value: JSON.stringify(contentIds) });
    view.attachments.forEach((a, i) => fields.push({ name: `attachment${i + 1}`, filename: a.filename, contentType: a.contentType, data: a.content }));
  }
  return fields;
}

export function createSendgridFormat(deps: { randomBytes: RandomBytes }): PayloadFormat {
  // send_raw: the message as it is in "email", and fields from its header section only.
  const parses = (options: ResolvedWebhook['options']) => (options.send_raw ? undefined : 'inbound');
  return {
    name: 'sendgrid',
    parses,
    async encode(ctx) {
      const form = multipartForm(parses(ctx.webhook.options) === undefined ? sendgridRawFields(ctx, headerOnlyView(ctx.raw)) : sendgridFields(ctx, await inboundView(ctx.raw, inboundParseOf(ctx))), deps.randomBytes);
      const { url, authorization } = credentialsFromUrl(ctx.webhook.url);
      return { url, headers: { 'content-type': form.contentType, ...(authorization ? { authorization } : {}) }, body: form.body };
    },
    // SendGrid retries 5xx and treats 2xx as done: the standard rule.
  };
}
