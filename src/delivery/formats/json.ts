// format: json — the parsed message, envelope and raw bytes as JSON, signed per Standard Webhooks.
import { automaticOf } from '../../parse/automatic.js';
import type { PayloadMessage, PayloadMessageJson } from '../../parse/message.js';
import { signatureHeaders, standardWebhookHeaders } from '../sign.js';
import { assembleJsonPayload, buildJsonBody, type JsonBodyRequest } from './json-body.js';
import type { FormatContext, PayloadFormat } from './types.js';

/** The payload as an object (what a consumer gets after JSON.parse). */
export function buildJsonPayload(ctx: FormatContext, message: PayloadMessage) {
  return { ...payloadFields(ctx), message, raw_base64: ctx.raw.toString('base64') };
}

/** The payload as the bytes sent, laid out on the calling thread: the UTF-8 of JSON.stringify(buildJsonPayload(…)) (a test holds it to that). */
export function encodeJsonPayload(ctx: FormatContext, messageJson: PayloadMessageJson): Buffer {
  return assembleJsonPayload(jsonPayloadHead(ctx), messageJson, ctx.raw);
}

/** JSON text of every field but message and raw_base64, which assembleJsonPayload appends in this order. */
export function jsonPayloadHead(ctx: FormatContext): string {
  return JSON.stringify(payloadFields(ctx));
}

/** Every field but message and raw_base64 (jsonPayloadHead). */
function payloadFields(ctx: FormatContext) {
  const m = ctx.message;
  return {
    id: ctx.delivery.id,
    message_id: m.id,
    route: ctx.route.name,
    received_at: new Date(m.receivedAt).toISOString(),
    source: m.source,
    envelope: {
      mail_from: m.envelope.mailFrom,
      // This delivery's recipients only: another route's (a Bcc, say) are not this consumer's to see, as an MTA
      // delivering to several mailboxes gives each only its own envelope recipient.
      rcpt_to: ctx.delivery.recipients.map((r) => r.address),
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
  };
}

export const jsonFormat: PayloadFormat = {
  name: 'json',
  parses: () => 'json',
  async encode(ctx) {
    const key = ctx.webhook.signingKeyBytes;
    // The key as bytes of their own: a Buffer may be a view of a pool shared with others, all of which would be
    // copied to the parse thread with it.
    const request: JsonBodyRequest = { head: jsonPayloadHead(ctx), signing: key ? { key: new Uint8Array(key), id: ctx.delivery.id, timestamp: ctx.nowSeconds } : null };
    const { body, signature } = ctx.buildJsonBody ? await ctx.buildJsonBody(ctx.raw, request) : await buildJsonBody(ctx.raw, request, ctx.parse);
    return {
      headers: {
        'content-type': 'application/json',
        ...(signature === null ? {} : signatureHeaders(ctx.delivery.id, ctx.nowSeconds, signature)),
      },
      body,
    };
  },
};

export function signedHeaders(ctx: FormatContext, body: Buffer | string): Record<string, string> {
  if (!ctx.webhook.signingKeyBytes) return {};
  return standardWebhookHeaders(ctx.webhook.signingKeyBytes, ctx.delivery.id, ctx.nowSeconds, body);
}
