// format: raw — the message bytes exactly as received, the envelope in mailhook-* headers, signed per Standard Webhooks.
import { automaticOf } from '../../parse/automatic.js';
import { signedHeaders } from './json.js';
import type { PayloadFormat } from './types.js';

/**
 * An HTTP header value from mail data: printable ASCII stays, everything else (UTF-8 addresses under
 * SMTPUTF8, spaces or commas in quoted local parts) and "%" itself are percent-encoded as UTF-8, so
 * decodeURIComponent gives back the original.
 */
export function headerValue(value: string): string {
  // "," is encoded too: lists are joined with ", ".
  return value.replace(/[^\x21-\x24\x26-\x2b\x2d-\x7e]/gu, (c) => encodeURIComponent(c));
}

export const rawFormat: PayloadFormat = {
  name: 'raw',
  parses: () => undefined,
  async encode(ctx) {
    const m = ctx.message;
    const recipients = ctx.delivery.recipients;
    const keys = recipients.flatMap((r) => (r.key === null ? [] : [r.key]));
    const body = ctx.raw;
    const headers: Record<string, string> = {
      'content-type': 'message/rfc822',
      'mailhook-route': ctx.route.name,
      'mailhook-message-id': m.id,
      // "<>" is the null sender (bounces, auto-replies), as MTAs log it.
      'mailhook-mail-from': m.envelope.mailFrom === '' ? '<>' : headerValue(m.envelope.mailFrom),
      'mailhook-rcpt-to': recipients.map((r) => headerValue(r.address)).join(', '),
      'mailhook-automatic': String(automaticOf(m, ctx.raw).automatic),
      ...signedHeaders(ctx, body),
    };
    if (keys.length > 0) headers['mailhook-key'] = keys.map(headerValue).join(', ');
    return { headers, body };
  },
};
