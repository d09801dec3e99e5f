// format: postmark — Postmark's inbound webhook JSON (the postmark package's InboundWebhook), Basic auth from the URL's userinfo.
import { stripReply } from '../../parse/strip.js';
import type { Outcome } from '../classify.js';
import type { Address } from '../../parse/inbound.js';
import { credentialsFromUrl, formatAddress, inboundParseOf, InboundViews, mailboxHash, recordedAuthHeaders, type InboundView } from './inbound.js';
import type { FormatContext, PayloadFormat } from './types.js';

export interface PostmarkRecipient {
  Email: string;
  Name: string;
  MailboxHash: string;
}

/** Field for field the shape of Postmark's inbound webhook (postmark's Models.InboundWebhook). */
export interface PostmarkInbound {
  FromName: string;
  MessageStream: string;
  From: string;
  FromFull: PostmarkRecipient;
  To: string;
  ToFull: PostmarkRecipient[];
  Cc: string;
  CcFull: PostmarkRecipient[];
  Bcc: string;
  BccFull: PostmarkRecipient[];
  OriginalRecipient: string;
  Subject: string;
  MessageID: string;
  ReplyTo: string;
  MailboxHash: string;
  Date: string;
  TextBody: string;
  HtmlBody: string;
  StrippedTextReply: string;
  Tag: string;
  Headers: Array<{ Name: string; Value: string }>;
  Attachments: Array<{ Name: string; Content: string; ContentType: string; ContentLength: number; ContentID: string }>;
  RawEmail?: string;
}

const lenientUtf8 = new TextDecoder('utf-8');

/** The payload, a pure function of the parsed view and the delivery (no clock, no randomness). */
export function buildPostmarkPayload(ctx: Pick<FormatContext, 'message' | 'delivery' | 'webhook' | 'raw'>, view: InboundView): PostmarkInbound {
  const recipients = ctx.delivery.recipients;
  const full = (a: Address): PostmarkRecipient => ({ Email: a.address, Name: a.name, MailboxHash: mailboxHash(a.address, recipients) });
  const listed = new Set([...view.to, ...view.cc, ...view.bcc].map((a) => a.address.toLowerCase()));
  // Recipients of this delivery that no header names were Bcc'd (or reached through an alias): list them as Bcc,
  // so an application that looks for its address in ToFull/CcFull/BccFull still finds it.
  const bcc = [...view.bcc, ...recipients.filter((r) => !listed.has(r.address.toLowerCase())).map((r) => ({ address: r.address, name: '' }))];
  const original = recipients[0]?.address ?? '';
  const text = view.text ?? '';
  const payload: PostmarkInbound = {
    FromName: view.from?.name ?? '',
    MessageStream: 'inbound',
    From: view.from?.address ?? '',
    FromFull: view.from ? full(view.from) : { Email: '', Name: '', MailboxHash: '' },
    To: view.to.map(formatAddress).join(', '),
    ToFull: view.to.map(full),
    Cc: view.cc.map(formatAddress).join(', '),
    CcFull: view.cc.map(full),
    Bcc: bcc.map(formatAddress).join(', '),
    BccFull: bcc.map(full),
    OriginalRecipient: original,
    Subject: view.subject,
    // Postmark's MessageID is its own id of the inbound post, stable across retries (apps keep it to drop a repeated
    // post); the Message-ID header is in Headers. Each recipient gets a post of its own here, so the id is the
    // delivery's: the message's would make an app that drops repeats drop every recipient's post after the first.
    MessageID: ctx.delivery.id,
    ReplyTo: view.replyTo.map((a) => a.address).join(', '),
    MailboxHash: recipients[0] ? mailboxHash(recipients[0].address, recipients) : '',
    Date: view.date,
    TextBody: text,
    HtmlBody: view.html ?? '',
    StrippedTextReply: text ? stripReply(text).text : '',
    Tag: '',
    Headers: [...recordedAuthHeaders(ctx.message.meta), ...view.headers].map((h) => ({ Name: h.name, Value: h.value })),
    Attachments: view.attachments.map((a) => ({
      Name: a.filename,
      Content: a.content.toString('base64'),
      ContentType: a.contentType,
      ContentLength: a.content.length,
      ContentID: a.contentId ?? '',
    })),
  };
  // JSON holds text: a message that is not valid UTF-8 (8-bit legacy charsets) gets U+FFFD for the bad bytes here;
  // the formats that post bytes (action_mailbox, mailgun mime, sendgrid send_raw) keep them exact.
  if (ctx.webhook.options.raw_email) payload.RawEmail = lenientUtf8.decode(ctx.raw);
  return payload;
}

/**
 * Postmark's rule: 403 stops retries (the consumer's refusal, not a misconfiguration); every other 4xx is retried, as
 * Postmark retries every answer but 403; 401 is a credentials problem (loud, by the standard rule).
 */
export function classifyPostmark(status: number): Outcome | undefined {
  if (status === 403) return { kind: 'dead', reason: 'HTTP 403: the consumer refused the message (Postmark: stop retrying)' };
  if (status >= 400 && status < 500 && status !== 401) return { kind: 'retry', reason: `HTTP ${status} (retried, as Postmark does for every status but 403)` };
  return undefined;
}

export function createPostmarkFormat(deps: { views?: InboundViews } = {}): PayloadFormat {
  const views = deps.views ?? new InboundViews();
  return {
    name: 'postmark',
    parses: () => 'inbound',
    async encode(ctx) {
      const view = await views.of(ctx.message.id, ctx.raw, inboundParseOf(ctx), { plainText: false });
      const { url, authorization } = credentialsFromUrl(ctx.webhook.url);
      return {
        url,
        headers: { 'content-type': 'application/json', ...(authorization ? { authorization } : {}) },
        body: JSON.stringify(buildPostmarkPayload(ctx, view)),
      };
    },
    classify: classifyPostmark,
  };
}
