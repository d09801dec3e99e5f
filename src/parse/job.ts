// The kinds of parse the parse pool runs (json payload, inbound view), how each runs on this thread and crosses between threads.
import { forTransfer, fromTransfer, parseInboundMessage, type InboundMessage } from './inbound.js';
import { parseMessageJson, type PayloadMessageJson } from './message.js';

/** What a parse produces: the json format's message as JSON text, or the service formats' inbound message. */
export type ParseRequest = { kind: 'json' } | { kind: 'inbound'; plainText: boolean };

export interface ParseResults {
  json: PayloadMessageJson;
  inbound: InboundMessage;
}

export type ParseResult<R extends ParseRequest> = ParseResults[R['kind']];

/** Runs the parse here, on the calling thread (the thread entry, or the pool's fallbacks). */
export function parseHere<R extends ParseRequest>(raw: Buffer, request: R): Promise<ParseResult<R>> {
  const result = request.kind === 'json' ? parseMessageJson(raw) : parseInboundMessage(raw, { plainText: request.plainText });
  return result as Promise<ParseResult<R>>;
}

/** A result made ready to post to the other thread, with what to transfer rather than copy (attachment bytes). */
export function toPost(request: ParseRequest, result: ParseResults[keyof ParseResults]): { result: unknown; transfer: ArrayBuffer[] } {
  if (request.kind === 'inbound') {
    const { message, transfer } = forTransfer(result as InboundMessage);
    return { result: message, transfer };
  }
  return { result, transfer: [] };
}

/** A result as posted by the other thread, made what parseHere returns (the attachments' bytes Buffers again). */
export function fromPost<R extends ParseRequest>(request: R, result: unknown): ParseResult<R> {
  return (request.kind === 'inbound' ? fromTransfer(result as InboundMessage) : result) as ParseResult<R>;
}
