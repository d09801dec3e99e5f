// format: json — the parsed message, envelope and raw bytes as JSON, signed per Standard Webhooks.
import { automaticOf } from '../../parse/automatic.js';
import { parseMessage, type PayloadMessage } from '../../parse/message.js';
import { standardWebhookHeaders } from '../sign.js';
import type { FormatContext, PayloadFormat } from './types.js';

export function buildJsonPayload(ctx: FormatContext, message: PayloadMessage) {
  const m = ctx.message;
  return {
    id: ctx.delivery.id,
    message_id: m.id,
    route: ctx.route.name,
    received_at: new Date(m.receivedAt).toISOString(),
    source: m.source,
    envelope: {
      mail_from: m.envelope.mailFrom,
      rcpt_to: m.envelope.rcptTo,
      remote_address: m.envelope.remoteAddress,
      helo: m.envelope.helo,
      tls: m.envelope.tls,
    },
    recipients: ctx.delivery.recipients,
    /** sent by a machine (auto-reply, bulk, bounce, report): never answer it (RFC 3834) */
    automatic: automaticOf(m, ctx.raw).automatic,
    /** SPF, DKIM, DMARC and ARC as checked at the SMTP edge (smtp.sender_auth); null when not checked */
    authentication: m.meta?.authentication ?? null,
    /** the same results as an Authentication-Results header value (RFC 8601) */
    authentication_results: typeof m.meta?.authentication_results === 'string' ? m.meta.authentication_results : null,
    message,
    raw_base64: ctx.raw.toString('base64'),
  };
}

export const jsonFormat: PayloadFormat = {
  name: 'json',
  async encode(ctx) {
    const message = ctx.parse ? await ctx.parse(ctx.raw) : (await parseMessage(ctx.raw)).message;
    const body = JSON.stringify(buildJsonPayload(ctx, message));
    return {
      headers: {
        'content-type': 'application/json',
        ...signedHeaders(ctx, body),
      },
      body,
    };
  },
};

export function signedHeaders(ctx: FormatContext, body: Buffer | string): Record<string, string> {
  if (!ctx.webhook.signingKeyBytes) return {};
  return standardWebhookHeaders(ctx.webhook.signingKeyBytes, ctx.delivery.id, ctx.nowSeconds, body);
}
