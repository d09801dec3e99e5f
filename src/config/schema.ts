// The configuration schema: every key's type, default and meaning in one place (validated once at start-up).
import { z } from 'zod';
import { parseAddressTemplate } from '../routing/template.js';

/** "host:port" or "[v6]:port"; port 0 picks a free port (tests). */
export const listenAddress = z.string().transform((value, ctx) => {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(value.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    ctx.addIssue({ code: 'custom', message: `"${value}" is not a listen address; write host:port, e.g. "127.0.0.1:2525" or "[::1]:2525"` });
    return z.NEVER;
  }
  return { host: (m[1] ?? m[2]) as string, port };
});
export type ListenAddress = z.output<typeof listenAddress>;

const positiveInt = z.number().int().positive();
const nonNegativeInt = z.number().int().nonnegative();

const smtpSchema = z.strictObject({
  listen: listenAddress.default({ host: '127.0.0.1', port: 2525 }).describe('SMTP listen address, host:port'),
  hostname: z.string().min(1).optional().describe('name used in the banner, EHLO reply and Received header; defaults to the machine hostname'),
  max_message_bytes: positiveInt.default(26_214_400).describe('advertised as SIZE; larger messages get 552 5.3.4'),
  max_recipients: positiveInt.default(100).describe('recipients per message; more get 452 4.5.3'),
  max_clients: positiveInt.default(1000).describe('concurrent SMTP connections; more get 421'),
  socket_timeout_ms: positiveInt.default(300_000).describe('idle time before a connection is closed (RFC 5321 §4.5.3.2.7: 5 minutes)'),
  greeting_delay_ms: nonNegativeInt.default(100).describe('wait before the 220 banner (early-talker check); 0 for a trusted relay in front'),
  lmtp: z.boolean().default(false).describe('speak LMTP (RFC 2033) instead of SMTP, for an MTA in front (Postfix lmtp: transport); one reply per recipient after DATA'),
});

const httpSchema = z.strictObject({
  listen: listenAddress.default({ host: '127.0.0.1', port: 8025 }).describe('HTTP listen address for health, metrics and the admin API'),
  admin_token: z.string().min(16, 'must be at least 16 characters').optional().describe('bearer token for the admin API (prefer admin_token_file or MAILHOOK_ADMIN_TOKEN)'),
  admin_token_file: z.string().min(1).optional().describe('file holding the admin API bearer token'),
});

/** A duration such as "30s", "15m", "36h", "7d" or "2w", as milliseconds. */
const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };
export const duration = z.string().transform((value, ctx) => {
  const m = /^(\d+)\s*(ms|s|m|h|d|w)$/.exec(value.trim());
  const ms = m ? Number(m[1]) * (DURATION_UNITS[m[2] as string] as number) : NaN;
  if (!m || !Number.isSafeInteger(ms) || ms <= 0) {
    ctx.addIssue({ code: 'custom', message: `"${value}" is not a duration; write a positive number and a unit (ms, s, m, h, d, w), e.g. "7d" or "36h"` });
    return z.NEVER;
  }
  return ms;
});

const retentionSchema = z.strictObject({
  delivered: duration.prefault('7d').describe('how long a message stays in the spool once all its deliveries succeeded'),
  dead: duration.prefault('30d').describe('how long a message with a dead-lettered delivery stays in the spool (counted from the dead-lettering)'),
  interval: duration.prefault('10m').describe('how often expired messages are removed and their space given back'),
});

const spoolSchema = z.strictObject({
  path: z.string().min(1).default('./data/spool.db').describe('SQLite database file; message files live beside it'),
  inline_max_bytes: nonNegativeInt.default(262_144).describe('messages up to this size are stored inside the database, larger ones as files'),
  retention: retentionSchema.prefault({}),
});

const retrySchema = z.strictObject({
  initial_delay_ms: positiveInt.default(5000).describe('delay before the first retry'),
  max_delay_ms: positiveInt.default(3_600_000).describe('upper bound of the exponential backoff'),
  max_attempts: positiveInt.default(20).describe('attempts before a delivery is dead-lettered'),
});

const deliverySchema = z.strictObject({
  concurrency: positiveInt.default(16).describe('webhook requests in flight at once, all routes together'),
  per_route_concurrency: positiveInt.default(4).describe('webhook requests in flight at once for one route'),
  timeout_ms: positiveInt.default(30_000).describe('time allowed for one webhook request'),
  retry: retrySchema.prefault({}),
});

export const WEBHOOK_FORMATS = ['json', 'action_mailbox', 'mailgun', 'postmark', 'sendgrid', 'raw', 'gitlab'] as const;
export type WebhookFormat = (typeof WEBHOOK_FORMATS)[number];

/**
 * What webhook.secret means for each format, so it is checked at start-up:
 * - whsec: a Standard Webhooks key ("whsec_" + base64, 24–64 bytes) used for webhook-signature
 * - gitlab_base64: GitLab's secret file, base64 of 32 bytes (the JWT HS256 key)
 * - text: an opaque string used as is (a password or an HMAC key)
 * - none: the format takes no secret
 */
export type SecretKind = 'whsec' | 'gitlab_base64' | 'text' | 'none';
export const FORMAT_SECRETS: Record<WebhookFormat, { kind: SecretKind; required: boolean }> = {
  json: { kind: 'whsec', required: true },
  action_mailbox: { kind: 'text', required: true }, // the Rails ingress password (HTTP Basic, user "actionmailbox")
  mailgun: { kind: 'text', required: true }, // the Mailgun HTTP webhook signing key (HMAC-SHA256 of timestamp + token)
  postmark: { kind: 'none', required: false }, // Postmark signs nothing; Basic auth comes from the URL's userinfo
  sendgrid: { kind: 'none', required: false }, // SendGrid signs nothing; Basic auth comes from the URL's userinfo
  raw: { kind: 'whsec', required: true }, // signed like json (Standard Webhooks)
  gitlab: { kind: 'gitlab_base64', required: true }, // GitLab's gitlab_incoming_email_secret: the HS256 key of the mail_room JWT
};

/** Formats whose consumer handles one recipient per request (GitLab reads one key per message): one delivery per recipient. */
export const PER_RECIPIENT_FORMATS: ReadonlySet<WebhookFormat> = new Set<WebhookFormat>(['gitlab']);

const webhookSchema = z.strictObject({
  url: z.url({ protocol: /^https?$/, error: 'must be an http:// or https:// URL' }).describe('where deliveries are POSTed'),
  secret: z.string().min(1).optional().describe('signing secret (whsec_… for Standard Webhooks)'),
  secret_file: z.string().min(1).optional().describe('file holding the signing secret'),
  format: z.enum(WEBHOOK_FORMATS).default('json').describe('payload format'),
  timeout_ms: positiveInt.optional().describe('overrides delivery.timeout_ms for this route'),
  mime: z.boolean().optional().describe("format mailgun: post the raw message as body-mime (Mailgun's \"/mime\" URLs, what Action Mailbox's Mailgun ingress reads) instead of parsed fields"),
  raw_email: z.boolean().optional().describe("format postmark: include the raw message as RawEmail (Postmark's \"Include raw email content\"; Action Mailbox's Postmark ingress needs it)"),
  send_raw: z.boolean().optional().describe("format sendgrid: post the whole message in the email field (SendGrid's \"POST the raw, full MIME message\"; Action Mailbox's SendGrid ingress needs it)"),
});

/** Webhook options that belong to one format: the key and the format that reads it (checked at start-up). */
export const FORMAT_OPTIONS = { mime: 'mailgun', raw_email: 'postmark', send_raw: 'sendgrid' } as const satisfies Record<string, WebhookFormat>;
export type FormatOptionKey = keyof typeof FORMAT_OPTIONS;

const addressPattern = z.string().superRefine((value, ctx) => {
  const result = parseAddressTemplate(value);
  if (!result.ok) ctx.addIssue({ code: 'custom', message: result.error });
});

const routeSchema = z
  .strictObject({
    name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, 'use letters, digits, "-", "_" and "."'),
    addresses: z.array(addressPattern).min(1, 'a route needs at least one address'),
    webhook: webhookSchema.optional(),
    sink: z.boolean().optional().describe('keep messages in the spool and list them at /sink/messages instead of calling a webhook'),
    drop_automatic: z.boolean().default(false).describe('finish deliveries of automatic messages (auto-replies, bulk, bounces, reports) as dropped instead of calling the webhook'),
  })
  .superRefine((route, ctx) => {
    if (!route.webhook && !route.sink) ctx.addIssue({ code: 'custom', message: 'a route needs a webhook (or sink: true)' });
    if (route.webhook && route.sink) ctx.addIssue({ code: 'custom', message: 'a route has either a webhook or sink: true, not both' });
    // GitLab's endpoint is POST …/api/v4/internal/mail_room/<mailbox type>, the type being the gitlab.rb section.
    if (route.webhook?.format === 'gitlab' && !/\/api\/v4\/internal\/mail_room\/(incoming_email|service_desk_email)$/.test(new URL(route.webhook.url).pathname)) {
      ctx.addIssue({ code: 'custom', path: ['webhook', 'url'], message: 'format gitlab posts to GitLab\'s mail_room endpoint: https://<gitlab>/api/v4/internal/mail_room/incoming_email (or …/service_desk_email)' });
    }
  });

const logSchema = z.strictObject({
  level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
});

export const configSchema = z.strictObject({
  smtp: smtpSchema.prefault({}),
  http: httpSchema.prefault({}),
  spool: spoolSchema.prefault({}),
  delivery: deliverySchema.prefault({}),
  log: logSchema.prefault({}),
  routes: z.array(routeSchema).min(1, 'at least one route is needed, or mailhook refuses every recipient'),
});

/** The file as validated: secrets may still be file references. */
export type RawConfig = z.output<typeof configSchema>;
export type RouteConfig = RawConfig['routes'][number];
export type WebhookConfig = NonNullable<RouteConfig['webhook']>;
