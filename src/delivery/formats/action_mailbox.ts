// format: action_mailbox — the raw message POSTed to Rails Action Mailbox's relay ingress, as `bin/rails action_mailbox:ingress:*` does.
import type { Outcome } from '../classify.js';
import { credentialsFromUrl, basicAuthorization, requireSecret } from './inbound.js';
import type { FormatContext, PayloadFormat } from './types.js';

/** Action Mailbox's relay ingress always authenticates the user "actionmailbox" (ActionMailbox::BaseController). */
export const ACTION_MAILBOX_USER = 'actionmailbox';

/**
 * The body: the message as received, after one X-Original-To line per recipient of this delivery. An MTA relaying
 * to the ingress adds it (Postfix's pipe flag O), and Action Mailbox's routing reads it (Mail::Message#all_recipients
 * includes X-Original-To), so Bcc'd and aliased recipients still find their mailbox; Rails' own SendGrid and
 * Postmark ingresses prepend the same header from the envelope.
 */
export function actionMailboxBody(ctx: Pick<FormatContext, 'raw' | 'delivery'>): Buffer {
  // Control characters (a catch-all takes any local part; smtp-server only keeps out CR, LF and spaces) are dropped,
  // as in the gitlab format's trace fields: a header line holds none.
  const trace = ctx.delivery.recipients.map((r) => `X-Original-To: ${r.address.replace(/[\x00-\x1f\x7f]/g, '')}\r\n`).join('');
  return Buffer.concat([Buffer.from(trace, 'utf8'), ctx.raw]);
}

/**
 * The relay ingress's answers (Ingresses::Relay::InboundEmailsController): 204 recorded; 401 wrong password and
 * 404 ingress not enabled — both the operator's to fix, so dead-lettered loudly; 415 not message/rfc822 and 422 no
 * body — the message is refused; 5xx (including 500 for a missing ingress password on the Rails side) is retried.
 */
export function classifyActionMailbox(status: number): Outcome | undefined {
  if (status >= 200 && status < 300) return { kind: 'delivered' };
  if (status === 401) {
    return { kind: 'dead', loud: true, reason: 'HTTP 401: Action Mailbox refused the ingress password; set the route\'s secret to the app\'s action_mailbox.ingress_password (or RAILS_INBOUND_EMAIL_PASSWORD)' };
  }
  if (status === 404) {
    return { kind: 'dead', loud: true, reason: 'HTTP 404: the relay ingress is not enabled; set config.action_mailbox.ingress = :relay and point the URL at /rails/action_mailbox/relay/inbound_emails' };
  }
  if (status === 415) return { kind: 'dead', reason: 'HTTP 415: Action Mailbox refused the content type (expects message/rfc822); is a proxy rewriting the request?' };
  if (status === 422) return { kind: 'dead', reason: 'HTTP 422: Action Mailbox could not read the message' };
  if (status === 408 || status === 429 || status >= 500) return { kind: 'retry', reason: `HTTP ${status}` };
  return undefined;
}

export const actionMailboxFormat: PayloadFormat = {
  name: 'action_mailbox',
  parses: () => undefined,
  async encode(ctx) {
    const password = requireSecret(ctx.webhook.signingKeyBytes, 'action_mailbox', "the Action Mailbox ingress password").toString('utf8');
    // Credentials written into the URL are not used: the ingress password is the route's secret.
    const { url } = credentialsFromUrl(ctx.webhook.url);
    return {
      url,
      headers: {
        'content-type': 'message/rfc822',
        authorization: basicAuthorization(ACTION_MAILBOX_USER, password),
      },
      body: actionMailboxBody(ctx),
    };
  },
  classify: classifyActionMailbox,
};
