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
import type { PayloadFormat } from './types.js';

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

/**
 * Which parse a webhook's payload needs: the json message (FormatContext.parse), the service formats' inbound view
 * (FormatContext.parseInbound), or none (raw, gitlab, action_mailbox, and Mailgun mime / SendGrid send_raw, which
 * read only the header section). The parse pool starts threads only when some route needs one it does not get
 * from elsewhere.
 */
export function parseNeeded(webhook: Pick<ResolvedWebhook, 'format' | 'options'>): 'json' | 'inbound' | undefined {
  switch (webhook.format) {
    case 'json':
      return 'json';
    case 'postmark':
      return 'inbound';
    case 'mailgun':
      return webhook.options.mime ? undefined : 'inbound';
    case 'sendgrid':
      return webhook.options.send_raw ? undefined : 'inbound';
    default:
      return undefined;
  }
}
