// The registry of payload formats, by the name used in a route's webhook.format.
import { randomBytes } from 'node:crypto';
import type { WebhookFormat } from '../../config/schema.js';
import { actionMailboxFormat } from './action_mailbox.js';
import { gitlabFormat } from './gitlab.js';
import { jsonFormat } from './json.js';
import { createMailgunFormat } from './mailgun.js';
import { InboundViews } from './inbound.js';
import { createPostmarkFormat } from './postmark.js';
import { rawFormat } from './raw.js';
import { createSendgridFormat } from './sendgrid.js';
import type { PayloadFormat } from './types.js';

/** Mailgun and Postmark post once per recipient: their deliveries of one message share its parse. */
const views = new InboundViews();

export const FORMATS: Record<WebhookFormat, PayloadFormat> = {
  json: jsonFormat,
  action_mailbox: actionMailboxFormat,
  mailgun: createMailgunFormat({ randomBytes, views }),
  postmark: createPostmarkFormat({ views }),
  sendgrid: createSendgridFormat({ randomBytes }),
  raw: rawFormat,
  gitlab: gitlabFormat,
};
