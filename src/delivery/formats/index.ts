// The registry of payload formats, by the name used in a route's webhook.format, built with their dependencies.
import { randomBytes as cryptoRandomBytes } from 'node:crypto';
import type { WebhookFormat } from '../../config/schema.js';
import type { ResolvedWebhook } from '../../config/load.js';
import { actionMailboxFormat } from './action_mailbox.js';
import { gitlabFormat } from './gitlab.js';
import { jsonFormat } from './json.js';
import { createMailgunFormat } from './mailgun.js';
import { InboundViews } from './inbound.js';
import { createPostmarkFormat } from './postmark.js';
import { rawFormat } from './raw.js';
import { createSendgridFormat } from './sendgrid.js';
import type { RandomBytes } from './multipart.js';
import type { ParseKind, PayloadFormat } from './types.js';

export type Formats = Record<WebhookFormat, PayloadFormat>;

/**
 * Every format, for one delivery worker. Mailgun and Postmark post once per recipient: their deliveries of one
 * message share its parse, kept in `views` (a cache of this set, made here when absent).
 */
export function createFormats(deps: { randomBytes?: RandomBytes; views?: InboundViews } = {}): Formats {
  const randomBytes = deps.randomBytes ?? cryptoRandomBytes;
  const views = deps.views ?? new InboundViews();
  return {
    json: jsonFormat,
    action_mailbox: actionMailboxFormat,
    mailgun: createMailgunFormat({ randomBytes, views }),
    postmark: createPostmarkFormat({ views }),
    sendgrid: createSendgridFormat({ randomBytes }),
    raw: rawFormat,
    gitlab: gitlabFormat,
  };
}

/** Which parse a webhook's payload needs, as its format says (PayloadFormat.parses). */
export function parseNeeded(webhook: Pick<ResolvedWebhook, 'format' | 'options'>, formats: Formats): ParseKind | undefined {
  return formats[webhook.format].parses(webhook.options);
}
