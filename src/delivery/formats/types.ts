// The contract every webhook payload format implements: build one HTTP request, judge its response.
import type { ResolvedRoute, ResolvedWebhook } from '../../config/load.js';
import type { DeliveryRow, StoredMessage } from '../../spool/types.js';
import type { Outcome } from '../classify.js';
import type { PayloadMessageJson } from '../../parse/message.js';
import type { ParseInbound } from '../../parse/inbound.js';

/** The parse a payload is built from: the json message (FormatContext.parse) or the service formats' view (parseInbound). */
export type ParseKind = 'json' | 'inbound';

export interface FormatContext {
  message: StoredMessage;
  delivery: DeliveryRow;
  route: ResolvedRoute;
  webhook: ResolvedWebhook;
  /** the message bytes exactly as received */
  raw: Buffer;
  /** seconds since the epoch, for signatures and tokens */
  nowSeconds: number;
  /** the SMTP hostname, for trace headers */
  hostname: string;
  /** parses `raw` into the payload's message as JSON text (the parse pool); parseMessageJson here when absent */
  parse?: (raw: Buffer) => Promise<PayloadMessageJson>;
  /** parses `raw` for the mailgun, postmark and sendgrid formats (the parse pool); parseInboundMessage here when absent */
  parseInbound?: ParseInbound;
}

export interface EncodedRequest {
  method?: 'POST' | 'PUT';
  url?: string;
  headers: Record<string, string>;
  body: Buffer | string;
}

export interface PayloadFormat {
  readonly name: string;
  /**
   * Which parse encode() asks of the context for a webhook with these options (none: it reads only the bytes or their
   * header section). The parse pool starts threads only for a kind some route's format asks for, so encode must ask
   * for no other (a test holds every format to that).
   */
  parses(options: ResolvedWebhook['options']): ParseKind | undefined;
  encode(ctx: FormatContext): Promise<EncodedRequest>;
  /** how a status maps to an outcome when the format's consumer differs from the standard rule */
  classify?(status: number): Outcome | undefined;
}
