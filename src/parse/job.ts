// The kinds of work the parse pool runs (the json message or the json format's whole body, the inbound view), how each runs on this thread and crosses between threads.
import { buildJsonBody, type JsonBody, type JsonBodyRequest } from '../delivery/formats/json-body.js';
import { forTransfer, fromTransfer, ownBytes, parseInboundMessage, type InboundMessage } from './inbound.js';
import { parseMessageJson, type PayloadMessageJson } from './message.js';

/**
 * What a parse produces: the json format's message as JSON text, the json format's whole body signed (jsonBody:
 * the layout, base64 and HMAC, ~5 ms for 1 MB, done on the thread too), or the service formats' inbound message.
 */
export type ParseRequest = { kind: 'json' } | ({ kind: 'jsonBody' } & JsonBodyRequest) | { kind: 'inbound'; plainText: boolean };

export interface ParseResults {
  json: PayloadMessageJson;
  jsonBody: JsonBody;
  inbound: InboundMessage;
}

export type ParseResult<R extends ParseRequest> = ParseResults[R['kind']];

/** Runs the parse here, on the calling thread (the thread entry, or the pool's fallbacks). */
export function parseHere<R extends ParseRequest>(raw: Buffer, request: R): Promise<ParseResult<R>> {
  const result =
    request.kind === 'json' ? parseMessageJson(raw) : request.kind === 'jsonBody' ? buildJsonBody(raw, request) : parseInboundMessage(raw, { plainText: request.plainText });
  return result as Promise<ParseResult<R>>;
}

/** A result made ready to post to the other thread, with what to transfer rather than copy (a body, attachment bytes). */
export function toPost(request: ParseRequest, result: ParseResults[keyof ParseResults]): { result: unknown; transfer: ArrayBuffer[] } {
  if (request.kind === 'inbound') {
    const { message, transfer } = forTransfer(result as InboundMessage);
    return { result: message, transfer };
  }
  if (request.kind === 'jsonBody') {
    const { body, signature } = result as JsonBody;
    const own = ownBytes(body);
    return { result: { body: own, signature }, transfer: [own.buffer as ArrayBuffer] };
  }
  return { result, transfer: [] };
}

/** A result as posted by the other thread, made what parseHere returns (bytes as Buffers again, not copied). */
export function fromPost<R extends ParseRequest>(request: R, result: unknown): ParseResult<R> {
  if (request.kind === 'inbound') return fromTransfer(result as InboundMessage) as ParseResult<R>;
  if (request.kind === 'jsonBody') {
    const { body, signature } = result as { body: Uint8Array; signature: string | null };
    return { body: Buffer.from(body.buffer, body.byteOffset, body.byteLength), signature } as ParseResult<R>;
  }
  return result as ParseResult<R>;
}
