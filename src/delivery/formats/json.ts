// format: json — the parsed message, envelope and raw bytes as JSON, signed per Standard Webhooks.
import { automaticOf } from '../../parse/automatic.js';
import { parseMessageJson, type PayloadMessage, type PayloadMessageJson } from '../../parse/message.js';
import { standardWebhookHeaders } from '../sign.js';
import type { FormatContext, PayloadFormat } from './types.js';

/** The payload as an object (what a consumer gets after JSON.parse). */
export function buildJsonPayload(ctx: FormatContext, message: PayloadMessage) {
  return { ...payloadFields(ctx), message, raw_base64: ctx.raw.toString('base64') };
}

/**
 * The payload as the bytes sent, equal to JSON.stringify(buildJsonPayload(…)) encoded as UTF-8 (a test holds it
 * to that). The message comes as JSON text already (stringified on the parse thread) and raw_base64, a third
 * larger than the message and free of anything JSON escapes, is copied in rather than scanned by JSON.stringify;
 * the bytes are made once and serve both the signature and the socket (a string body would be encoded twice).
 */
export function encodeJsonPayload(ctx: FormatContext, messageJson: PayloadMessageJson): Buffer {
  // head ends with its closing brace (one byte): its bytes without it, then the message and the raw field, then
  // the brace. The parts are written where they go, never joined into one string first (a 1 MB text body).
  const head = JSON.stringify(payloadFields(ctx));
  const headBytes = Buffer.byteLength(head) - 1;
  const messageBytes = Buffer.byteLength(messageJson);
  const b64Bytes = Math.ceil(ctx.raw.length / 3) * 4;
  const out = Buffer.allocUnsafe(headBytes + MESSAGE_FIELD.length + messageBytes + RAW_FIELD.length + b64Bytes + 2);
  let at = out.write(head, 0, headBytes, 'utf8');
  at += out.write(MESSAGE_FIELD, at, 'latin1');
  at += out.write(messageJson, at, messageBytes, 'utf8');
  at += out.write(RAW_FIELD, at, 'latin1');
  // Base64 in pieces of a multiple of 3 bytes, written where it goes: never the whole of it as one string (a third
  // larger than the message, on the V8 heap until a full collection).
  for (let i = 0; i < ctx.raw.length; i += BASE64_PIECE_BYTES) {
    at += out.write(ctx.raw.toString('base64', i, Math.min(i + BASE64_PIECE_BYTES, ctx.raw.length)), at, 'latin1');
  }
  out.write('"}', at, 'latin1');
  return out;
}

/** 48 KiB: a multiple of 3, so the pieces' base64 joins into the base64 of the whole. */
const BASE64_PIECE_BYTES = 3 * 16 * 1024;

const MESSAGE_FIELD = ',"message":';
const RAW_FIELD = ',"raw_base64":"';

/** Every field but message and raw_base64, which encodeJsonPayload appends in this order. */
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
    const messageJson = ctx.parse ? await ctx.parse(ctx.raw) : await parseMessageJson(ctx.raw);
    const body = encodeJsonPayload(ctx, messageJson);
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
