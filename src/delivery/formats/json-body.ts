// The json format's request body (its fields, the parsed message, the raw bytes in base64) and signature, made on a parse thread or here.
import { parseMessageJson, type PayloadMessageJson } from '../../parse/message.js';
import { webhookSignature } from '../sign.js';

export interface JsonBodyRequest {
  /** JSON text of the payload's other fields: an object, ending with its closing brace (json.ts jsonPayloadHead) */
  head: string;
  /** the webhook's key, and the id and timestamp the request is sent with; null when the webhook has no secret */
  signing: { key: Uint8Array; id: string; timestamp: number } | null;
}

export interface JsonBody {
  body: Buffer;
  /** the webhook-signature value (sign.ts webhookSignature) of body; null when unsigned */
  signature: string | null;
}

/**
 * Parses the message, lays out the body and signs it: all of the json format's work that grows with the message
 * (for 1 MB, ~25 ms of parsing and ~5 ms of base64, copying and HMAC). The parse pool runs it on a thread, so
 * none of it is done on the event loop that serves SMTP (parse/job.ts); `parse` is the test seam for the parse.
 */
export async function buildJsonBody(raw: Buffer, request: JsonBodyRequest, parse: (raw: Buffer) => Promise<PayloadMessageJson> = parseMessageJson): Promise<JsonBody> {
  const body = assembleJsonPayload(request.head, await parse(raw), raw);
  const s = request.signing;
  return { body, signature: s ? webhookSignature(s.key, s.id, s.timestamp, body) : null };
}

/**
 * The payload as the bytes sent, equal to JSON.stringify of the whole payload object encoded as UTF-8 (a test holds
 * it to that). The message comes as JSON text already (stringified on the parse thread) and raw_base64, a third
 * larger than the message and free of anything JSON escapes, is copied in rather than scanned by JSON.stringify;
 * the bytes are made once and serve both the signature and the socket (a string body would be encoded twice).
 */
export function assembleJsonPayload(head: string, messageJson: PayloadMessageJson, raw: Buffer): Buffer {
  // head ends with its closing brace (one byte): its bytes without it, then the message and the raw field, then
  // the brace. The parts are written where they go, never joined into one string first (a 1 MB text body).
  const headBytes = Buffer.byteLength(head) - 1;
  const messageBytes = Buffer.byteLength(messageJson);
  const b64Bytes = Math.ceil(raw.length / 3) * 4;
  const out = Buffer.allocUnsafe(headBytes + MESSAGE_FIELD.length + messageBytes + RAW_FIELD.length + b64Bytes + 2);
  let at = out.write(head, 0, headBytes, 'utf8');
  at += out.write(MESSAGE_FIELD, at, 'latin1');
  at += out.write(messageJson, at, messageBytes, 'utf8');
  at += out.write(RAW_FIELD, at, 'latin1');
  // Base64 in pieces of a multiple of 3 bytes, written where it goes: never the whole of it as one string (a third
  // larger than the message, on the V8 heap until a full collection).
  for (let i = 0; i < raw.length; i += BASE64_PIECE_BYTES) {
    at += out.write(raw.toString('base64', i, Math.min(i + BASE64_PIECE_BYTES, raw.length)), at, 'latin1');
  }
  out.write('"}', at, 'latin1');
  return out;
}

/** 48 KiB: a multiple of 3, so the pieces' base64 joins into the base64 of the whole. */
const BASE64_PIECE_BYTES = 3 * 16 * 1024;

const MESSAGE_FIELD = ',"message":';
const RAW_FIELD = ',"raw_base64":"';
