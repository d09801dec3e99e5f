// The configuration schema: every key's type, default and meaning in one place (validated once at start-up).
import { isIP } from 'node:net';
import { z } from 'zod';
import { parseAddressTemplate } from '../routing/template.js';
import { hasCredentials } from '../core/url.js';

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
/** The longest delay a Node.js timer takes; a longer one fires after 1 ms (and warns). */
/** A URL key's problem: missing, or not an http(s) URL. */
const URL_ERROR = (issue: { input?: unknown }): string => (issue.input === undefined ? 'is required: an http:// or https:// URL' : 'must be an http:// or https:// URL');

export const MAX_TIMER_MS = 2_147_483_647;
const TIMER_MESSAGE = `must be at most ${MAX_TIMER_MS} ms (about 24.8 days), the longest timer Node.js can set`;
/** Milliseconds that end up in a timer. */
const timerMs = positiveInt.max(MAX_TIMER_MS, TIMER_MESSAGE);

/** An IPv4 or IPv6 address, optionally with a /prefix (CIDR). */
const ipOrCidr = z.string().refine((v) => {
  const [ip = '', bits, extra] = v.trim().split('/');
  const family = isIP(ip);
  if (family === 0 || extra !== undefined) return false;
  return bits === undefined || (/^\d{1,3}$/.test(bits) && Number(bits) <= (family === 4 ? 32 : 128));
}, 'must be an IP address or CIDR range, e.g. "192.0.2.10" or "10.0.0.0/8"');
const ipAddress = z.string().refine((v) => isIP(v.trim()) !== 0, 'must be an IP address');

/**
 * smtp.xforward_hosts: the relays' addresses, one by one. Trusting every peer (true, "*", a range) is not offered:
 * on a listener the internet reaches, any client could then name any address as its own and pass SPF.
 */
const EVERY_PEER = 'trusting every peer is not offered: any client could then name any address as its own and pass SPF';
const xforwardHost = z.string().transform((value, ctx) => {
  const v = value.trim();
  if (isIP(v) !== 0) return v;
  const message =
    v === '*' ? `must be one relay's IP address, e.g. "127.0.0.1": ${EVERY_PEER}`
    : v.includes('/') ? `must be one relay's IP address, e.g. "127.0.0.1", not a range: list each relay (any host in a range could name any address as its own and pass SPF)`
    : `must be a relay's IP address, e.g. "127.0.0.1" (not a host name)`;
  ctx.addIssue({ code: 'custom', message });
  return z.NEVER;
});
const xforwardHosts = z.array(xforwardHost, { error: `must be a list of the relays' IP addresses, e.g. ["127.0.0.1"]; true is not accepted: ${EVERY_PEER}` });

const tlsSchema = z.strictObject({
  key_file: z.string().min(1).describe('PEM private key; reloaded on SIGHUP or when the file changes'),
  cert_file: z.string().min(1).describe('PEM certificate chain (leaf first); reloaded with the key'),
  min_version: z.enum(['TLSv1.2', 'TLSv1.3']).default('TLSv1.2').describe('oldest TLS version accepted'),
  required: z.boolean().default(false).describe('refuse MAIL before STARTTLS (530 5.7.0); an MX facing the internet should leave this off (RFC 3207 §4)'),
  implicit_listen: listenAddress.optional().describe('an extra listener speaking TLS from the first byte (port 465 style), host:port'),
  watch: z.boolean().default(true).describe('reload the key and certificate when their files change: their folder is watched, and the paths are looked at every 5 s through their links (a Kubernetes Secret volume, a swapped folder link); SIGHUP always reloads'),
});

const limitsSchema = z.strictObject({
  max_header_bytes: positiveInt.max(1_048_576, 'at most 1048576: mailparser refuses a larger header section, so the message could never be parsed').default(1_048_576).describe('bytes of a header section (the message\'s or a MIME part\'s), each line counted as at least 64 bytes (as mailparser counts them); more gets 552 5.3.4. At most 1 MiB, what the parser takes'),
  max_received_headers: positiveInt.default(100).describe('Received headers before a message is a loop: 554 5.4.6'),
  max_mime_parts: positiveInt.max(1000, 'at most 1000: mailparser refuses a message of more MIME parts, so it could never be parsed').default(1000).describe('MIME parts in one message, the message itself and each attached message counted (as mailparser counts them); more gets 554 5.6.0. At most 1,000, what the parser takes (a message with more could be stored but never parsed for the json and service formats)'),
  max_mime_depth: positiveInt.default(100).describe('nesting of multiparts and attached messages; deeper gets 554 5.6.0'),
  max_connections_per_ip: nonNegativeInt.default(50).describe('concurrent connections from one client IP, 0 for no limit; more get 421 4.7.0 (Postfix smtpd_client_connection_count_limit)'),
  max_messages_per_ip: nonNegativeInt.default(0).describe('MAIL commands per rate_window_ms from one client IP, 0 for no limit; more get 450 4.7.1'),
  max_recipients_per_ip: nonNegativeInt.default(0).describe('RCPT commands per rate_window_ms from one client IP, 0 for no limit; more get 450 4.7.1'),
  rate_window_ms: positiveInt.default(60_000).describe('time unit of the per-IP rates (Postfix anvil_rate_time_unit)'),
  ipv6_prefix_length: z.number().int().min(0).max(128).default(84).describe('IPv6 clients are counted per prefix of this length for the per-IP limits, not per address (one host often holds a /64); 128 counts each address (Postfix smtpd_client_ipv6_prefix_length)'),
  exempt: z.array(ipOrCidr).default(['127.0.0.0/8', '::1']).describe('client addresses the per-IP limits do not apply to (Postfix smtpd_client_event_limit_exceptions)'),
  max_errors: nonNegativeInt.default(20).describe('error replies in one session before 421 4.7.0 and disconnect, 0 for no limit (Postfix smtpd_hard_error_limit)'),
  min_data_rate: nonNegativeInt.default(500).describe('bytes/s a DATA phase must average after its first socket_timeout_ms, 0 for no minimum; slower gets 421 4.4.2 (Postfix smtpd_min_data_rate)'),
  max_session_ms: nonNegativeInt.max(MAX_TIMER_MS, TIMER_MESSAGE).default(3_600_000).describe('how long one SMTP session may last, 0 for no limit; then 421 4.4.2, after the reply to a command or message in progress (a client sending a command every few minutes holds a connection slot otherwise)'),
  min_free_disk_bytes: nonNegativeInt.default(104_857_600).describe('free space the spool file system must keep; below it MAIL gets 452 4.3.1 (Postfix queue_minfree); start-up and check-config warn when the file system is smaller than this or has less free'),
});

const senderAuthSchema = z.strictObject({
  enabled: z.boolean().default(false).describe('verify SPF, DKIM, DMARC and ARC at the end of DATA (DNS lookups per message) and add the results to the payload'),
  max_from_header_bytes: positiveInt.default(16_384).describe('a From header larger than this is not parsed for DKIM/DMARC (permerror; refused with 550 5.7.1 on a dmarc_reject route)'),
  max_header_lines: positiveInt.default(2000).describe('a header section of more lines than this is not parsed for DKIM/DMARC (permerror; refused with 550 5.7.1 on a dmarc_reject route)'),
});

const smtpSchema = z.strictObject({
  listen: listenAddress.default({ host: '127.0.0.1', port: 2525 }).describe('SMTP listen address, host:port'),
  hostname: z.string().min(1).optional().describe('name used in the SMTP banner and EHLO reply, as the authserv-id of Authentication-Results (smtp.sender_auth), and in the Received: line the gitlab format adds to the message it posts (mailhook adds none to the stored message or to other formats); defaults to the machine hostname'),
  max_message_bytes: positiveInt.default(26_214_400).describe('advertised as SIZE; larger messages get 552 5.3.4'),
  max_recipients: positiveInt.default(100).describe('recipients per message; more get 452 4.5.3'),
  max_clients: positiveInt.default(1000).describe('concurrent SMTP connections; more get 421'),
  socket_timeout_ms: timerMs.default(300_000).describe('idle time before a connection is closed (RFC 5321 §4.5.3.2.7: 5 minutes)'),
  greeting_delay_ms: nonNegativeInt.max(MAX_TIMER_MS, TIMER_MESSAGE).default(100).describe('wait before the 220 banner (early-talker check); 0 for a trusted relay in front'),
  lmtp: z.boolean().default(false).describe('speak LMTP (RFC 2033) instead of SMTP, for an MTA in front (Postfix lmtp: transport); one reply per recipient after DATA'),
  tls: tlsSchema.optional().describe('STARTTLS (and optionally implicit TLS) with this key and certificate'),
  proxy_protocol: z.union([z.boolean(), z.array(ipAddress)], { error: 'write true (from every peer), false, or a list of the balancers\' IP addresses' }).default(false).describe('expect a PROXY protocol v1/v2 header (TCP load balancer in front): true from every peer, or a list of the balancers\' addresses'),
  xforward_hosts: xforwardHosts
    .default([])
    .describe(
      "IP addresses of relays whose XFORWARD is trusted (Postfix in front with smtp_send_xforward_command=yes on mailhook's transport, deploy/postfix/master.cf); empty: XFORWARD is not offered. For a message a listed relay forwards, sender_auth judges SPF for the client and HELO it names, and the payload's envelope.remote_address and helo are that client's (null when the relay does not know them: [UNAVAILABLE], or mail submitted on the relay's machine; SPF is then none, DKIM and DMARC still run); the relay's own address and HELO are kept in the message's meta.relay (admin API). The per-IP limits keep counting the relay. Any other peer's XFORWARD gets 550 5.7.0, and only listed peers see it in the EHLO reply",
    ),
  bare_lf: z.enum(['normalize', 'reject']).default('normalize').describe('a lone CR or LF in DATA: normalize it to CRLF, or reject the message (550 5.5.2)'),
  postmaster_route: z
    .string()
    .min(1)
    .optional()
    .describe('route that takes mail to postmaster@ every domain the routes serve and to the bare <postmaster> (RFC 5321 §4.5.1 requires both), unless a route lists postmaster@ a domain itself; unset: postmaster is refused like any unknown recipient'),
  ip_literals: z
    .record(z.string(), z.string().min(1))
    .superRefine((rec, ctx) => {
      for (const ip of Object.keys(rec)) if (isIP(ip.trim()) === 0) ctx.addIssue({ code: 'custom', path: [ip], message: 'the key must be an IP address, e.g. "192.0.2.10"' });
    })
    .default({}).describe('IP-literal recipient domains accepted, each treated as the domain given (e.g. "192.0.2.10": example.com); others are refused'),
  limits: limitsSchema.prefault({}),
  sender_auth: senderAuthSchema.prefault({}),
});

/** An example's stand-in left in place (REPLACE_WITH_A_LONG_RANDOM_TOKEN, CHANGE_ME): long enough, but public. */
export function isPlaceholderToken(token: string): boolean {
  return /replace|change_?me/i.test(token);
}
export const PLACEHOLDER_TOKEN_MESSAGE = 'is a placeholder from an example (it contains REPLACE or CHANGE_ME), not a token; generate one, e.g. openssl rand -hex 24';

const httpSchema = z.strictObject({
  listen: listenAddress.default({ host: '127.0.0.1', port: 8025 }).describe('HTTP listen address for health, metrics and the admin API'),
  admin_token: z
    .string()
    .trim()
    .min(16, 'must be at least 16 characters')
    .regex(/^\S+$/, 'must be one word, no spaces: it is sent as "Authorization: Bearer <token>"')
    .refine((t) => !isPlaceholderToken(t), PLACEHOLDER_TOKEN_MESSAGE)
    .optional().describe('bearer token for the admin API (prefer admin_token_file or MAILHOOK_ADMIN_TOKEN)'),
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
  interval: duration.refine((ms) => ms <= MAX_TIMER_MS, TIMER_MESSAGE).prefault('10m').describe('how often expired messages are removed and their space given back'),
});

const spoolSchema = z.strictObject({
  path: z.string().min(1).default('./data/spool.db').describe('SQLite database file (created readable by its owner only, 0600, its folders 0700: it holds message bodies; an older spool readable by others is warned of); message files live beside it, and <path>.lock, which the running mailhook holds locked: a second process on the same spool is refused'),
  inline_max_bytes: nonNegativeInt.default(262_144).describe('messages up to this size are stored inside the database, larger ones as files'),
  retention: retentionSchema.prefault({}),
});

const retrySchema = z.strictObject({
  initial_delay_ms: positiveInt.default(5000).describe('step before the first retry; each retry waits between half and all of its step (jitter), which doubles per attempt'),
  max_delay_ms: positiveInt.default(3_600_000).describe('upper bound of the step'),
  max_attempts: positiveInt.default(20).describe('attempts before a delivery is dead-lettered (with the defaults: 5.2 to 10.4 hours after the first)'),
}).superRefine((r, ctx) => {
  if (r.max_delay_ms < r.initial_delay_ms) ctx.addIssue({ code: 'custom', path: ['max_delay_ms'], message: `must be at least initial_delay_ms (${r.initial_delay_ms}); raise it or lower initial_delay_ms` });
});

const deliverySchema = z.strictObject({
  concurrency: positiveInt.default(16).describe('webhook requests in flight at once, all routes together'),
  per_route_concurrency: positiveInt.default(4).describe('webhook requests in flight at once for one route; as many more of its deliveries (up to 1 MiB each) are read, parsed and signed meanwhile; a message over 4 MiB is delivered one at a time per route (memory)'),
  timeout_ms: timerMs.default(30_000).describe('time allowed for one webhook request'),
  parse_threads: nonNegativeInt.max(16).default(1).describe('worker threads that parse messages of up to 4 MiB for the json, mailgun, postmark and sendgrid formats, off the main thread that serves SMTP sessions; a parse there that runs past delivery.timeout_ms (counted from when its thread starts it) is abandoned and retried, and a message that ends two threads (each has a 512 MB heap) is dead-lettered. 0 parses on the main thread. Larger messages are parsed on the main thread, with no parse timeout (Mailgun mime and SendGrid send_raw read only the header section)'),
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

/**
 * Formats whose consumer handles one recipient per request: one delivery per recipient. GitLab reads one key per
 * message; Mailgun's `recipient` and Postmark's `OriginalRecipient` name one address, and Action Mailbox's ingresses
 * for them route by that one field (a list joined with ", " matched no route).
 */
export const PER_RECIPIENT_FORMATS: ReadonlySet<WebhookFormat> = new Set<WebhookFormat>(['gitlab', 'mailgun', 'postmark']);

const webhookSchema = z.strictObject({
  url: z.url({ protocol: /^https?$/, error: URL_ERROR }).describe('where deliveries are POSTed'),
  secret: z.string().min(1).optional().describe('signing secret (whsec_… for Standard Webhooks)'),
  secret_file: z.string().min(1).optional().describe('file holding the signing secret'),
  format: z.enum(WEBHOOK_FORMATS).default('json').describe('payload format'),
  timeout_ms: timerMs.optional().describe('overrides delivery.timeout_ms for this route'),
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

const verifySchema = z.strictObject({
  url: z.url({ protocol: /^https?$/, error: URL_ERROR }).describe('POSTed {type, route, address, key} at RCPT; 200/204 = exists, 404/410 = unknown, anything else 451 4.3.0. Signed with Standard Webhooks headers only when the route\'s webhook has a secret, keyed as its format reads it (json, raw: the whsec_ key; gitlab: GitLab\'s 32 bytes; action_mailbox, mailgun: the secret\'s UTF-8 bytes); unsigned for sink, postmark and sendgrid routes'),
  timeout_ms: timerMs.default(2000).describe('time allowed for an answer; slower gets 451 4.3.0'),
  cache_ttl_s: nonNegativeInt.default(300).describe('seconds a yes or no is remembered; 0 asks every time'),
});

export const routeSchema = z
  .strictObject({
    name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, 'use letters, digits, "-", "_" and "."'),
    renamed_from: z
      .array(z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, 'use letters, digits, "-", "_" and "." (an earlier name of this route)'))
      .min(1)
      .optional()
      .describe('earlier names of this route: at start-up the spool\'s deliveries under them become this route\'s (pending ones go to this webhook, dead ones can be replayed to it), where a removed route\'s would be dead-lettered'),
    addresses: z.array(addressPattern).min(1, 'a route needs at least one address'),
    webhook: webhookSchema.optional(),
    sink: z.boolean().optional().describe('keep messages in the spool and list them at /sink/messages instead of calling a webhook'),
    drop_automatic: z.boolean().default(false).describe('finish deliveries of automatic messages (auto-replies, bulk, bounces, reports) as dropped instead of calling the webhook'),
    verify: verifySchema.optional().describe('ask the application at RCPT whether the recipient exists (live recipient verification)'),
    dmarc_reject: z.boolean().default(false).describe('refuse a message (550 5.7.1) whose DMARC check fails with p=reject; needs smtp.sender_auth.enabled'),
  })
  .superRefine((route, ctx) => {
    if (!route.webhook && !route.sink) ctx.addIssue({ code: 'custom', message: 'a route needs a webhook (or sink: true)' });
    if (route.webhook && route.sink) ctx.addIssue({ code: 'custom', message: 'a route has either a webhook or sink: true, not both' });
    // GitLab's endpoint is POST …/api/v4/internal/mail_room/<mailbox type>, the type being the gitlab.rb section.
    if (route.webhook?.format === 'gitlab' && URL.canParse(route.webhook.url) && !/\/api\/v4\/internal\/mail_room\/(incoming_email|service_desk_email)$/.test(new URL(route.webhook.url).pathname)) {
      ctx.addIssue({ code: 'custom', path: ['webhook', 'url'], message: 'format gitlab posts to GitLab\'s mail_room endpoint: https://<gitlab>/api/v4/internal/mail_room/incoming_email (or …/service_desk_email)' });
    }
  });

/** Header names an IMAP or Graph mailbox may read the recipient from (GitLab's incoming_email order). */
export const RECIPIENT_HEADERS = ['to', 'delivered-to', 'x-delivered-to', 'envelope-to', 'x-envelope-to', 'received', 'x-original-to', 'x-forwarded-to', 'cc'] as const;
export type RecipientHeader = (typeof RECIPIENT_HEADERS)[number];

/**
 * An OAuth or Graph endpoint: http(s), without a user or password (undici sends none of them, and messages about the
 * endpoint would show them; the client secret has keys of its own).
 */
const httpUrl = z.url({ protocol: /^https?$/, error: URL_ERROR }).refine((url) => !hasCredentials(url), 'must not carry a user or password (https://user:pass@…): they would not be sent; give the client secret as client_secret or client_secret_file');

const oauth2Schema = z.strictObject({
  grant: z.enum(['client_credentials', 'refresh_token']).describe('client_credentials (Office 365: an app registration with IMAP.AccessAsApp) or refresh_token (Gmail: a stored refresh token)'),
  token_url: httpUrl.optional().describe('token endpoint; defaults to Microsoft\'s for tenant_id (client_credentials) or Google\'s (refresh_token)'),
  tenant_id: z.string().min(1).optional().describe('Microsoft Entra tenant, for the default client_credentials token_url'),
  azure_ad_endpoint: httpUrl.default('https://login.microsoftonline.com').describe('Microsoft authority for national clouds (e.g. https://login.microsoftonline.us)'),
  client_id: z.string().min(1).describe('OAuth client (application) id'),
  client_secret: z.string().min(1).optional().describe('OAuth client secret (prefer client_secret_file)'),
  client_secret_file: z.string().min(1).optional().describe('file holding the OAuth client secret; read again at each token request'),
  refresh_token: z.string().min(1).optional().describe('refresh_token grant: the refresh token (prefer refresh_token_file)'),
  refresh_token_file: z.string().min(1).optional().describe('file holding the refresh token; read again at each token request'),
  scope: z.string().min(1).optional().describe('scope to ask for; client_credentials defaults to https://outlook.office365.com/.default'),
});

const graphOptionsSchema = z.strictObject({
  tenant_id: z.string().min(1).describe('Microsoft Entra tenant id'),
  client_id: z.string().min(1).describe('application (client) id with Mail.ReadWrite application permission'),
  client_secret: z.string().min(1).optional().describe('client secret (prefer client_secret_file)'),
  client_secret_file: z.string().min(1).optional().describe('file holding the client secret; read again at each token request'),
  poll_interval: z.number().int().min(1).max(3600).default(10).describe('seconds between delta queries'),
  azure_ad_endpoint: httpUrl.default('https://login.microsoftonline.com').describe('token authority (national clouds: https://login.microsoftonline.us, …)'),
  graph_endpoint: httpUrl.default('https://graph.microsoft.com').describe('Graph API root (national clouds: https://graph.microsoft.us, …)'),
});

const afterDeliverySchema = z.string().regex(/^(?:delete|flag|move:\S.*)$/, 'write delete, flag or move:<folder>');
const unmatchedSchema = z.string().regex(/^(?:leave|move:\S.*|route:[A-Za-z0-9][A-Za-z0-9_.-]*)$/, 'write leave, move:<folder> or route:<route name>');

const mailboxSchema = z
  .strictObject({
    name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, 'use letters, digits, "-", "_" and "."').describe('names the mailbox in logs, metrics, readiness and dedupe keys; keep it stable'),
    inbox_method: z.enum(['imap', 'microsoft_graph']).default('imap').describe('imap, or microsoft_graph (Graph API with inbox_options)'),
    host: z.string().min(1).optional().describe('IMAP server host name'),
    port: z.number().int().min(1).max(65535).optional().describe('IMAP port; 993 with ssl, else 143'),
    ssl: z.boolean().default(true).describe('implicit TLS (port 993)'),
    start_tls: z.boolean().default(false).describe('upgrade a plain connection with STARTTLS (required, never skipped)'),
    user: z.string().min(1).describe('IMAP login, or for microsoft_graph the mailbox (user principal name)'),
    password: z.string().min(1).optional().describe('IMAP password (prefer password_file)'),
    password_file: z.string().min(1).optional().describe('file holding the IMAP password; read again at each login'),
    oauth2: oauth2Schema.optional().describe('XOAUTH2 instead of a password'),
    mailbox: z.string().min(1).default('INBOX').describe('folder to read (Graph: a well-known name such as inbox, or a folder id)'),
    idle_timeout: z.number().int().min(1).max(1740).default(60).describe('seconds between IDLE restarts (RFC 2177: under 29 minutes)'),
    poll_interval: z.number().int().min(1).max(3600).optional().describe('IMAP: seconds between polls when the server has no IDLE (default 5)'),
    after_delivery: afterDeliverySchema.default('flag').describe('once the spool holds the message: delete (and expunge it), flag (mark it \\Seen) or move:<folder>'),
    recipients_from: z.array(z.enum(RECIPIENT_HEADERS)).min(1).default([...RECIPIENT_HEADERS]).describe('headers to read the recipient from, in order; the first address a route accepts wins'),
    unmatched: unmatchedSchema.default('leave').describe('a message no route accepts: leave it (marked $MailhookSkipped), move:<folder>, or route:<name>'),
    batch_size: z.number().int().min(1).max(1000).default(100).describe('messages fetched per FETCH when working through a backlog (oldest first)'),
    claim: z.enum(['auto', 'keyword', 'move', 'none']).default('auto').describe('how instances sharing the mailbox take a message: keyword (CONDSTORE UNCHANGEDSINCE), move (to claim_folder; IMAP MOVE+UIDPLUS, or Graph), none (one instance), auto (IMAP: keyword, else move, else none; Graph: move)'),
    claim_folder: z.string().min(1).default('mailhook-processing').describe('claim: move — folder a claimed message is moved to until it is in the spool (created when missing)'),
    claim_timeout: z.number().int().min(1).max(86_400).default(300).describe('seconds after which a claim left by a dead instance is taken over'),
    reconnect_delay_ms: timerMs.default(1000).describe('first reconnect delay; doubles per failure, with jitter'),
    reconnect_max_delay_ms: timerMs.default(60_000).describe('upper bound of the reconnect delay'),
    inbox_options: graphOptionsSchema.optional().describe('microsoft_graph settings (GitLab\'s names)'),
  })
  .superRefine(
    (m, ctx) => {
      // Runs even when a field failed (so every problem is reported at once): values may have the wrong type.
      const issue = (path: string, message: string) => ctx.addIssue({ code: 'custom', path: path.split('.'), message });
      if (m.inbox_method !== 'microsoft_graph') {
        if (!m.host) issue('host', 'is required for inbox_method imap (the IMAP server, e.g. imap.example.com)');
        if (m.inbox_options) issue('inbox_options', 'applies to inbox_method: microsoft_graph only');
        const ways = [m.password !== undefined, m.password_file !== undefined, m.oauth2 !== undefined].filter(Boolean).length;
        if (ways === 0) issue('password_file', 'set one of password, password_file or oauth2 to log in');
        if (ways > 1) {
          // Named by a key that is in the file: the last of them there (password_file is named only when set).
          const set = (['password', 'password_file', 'oauth2'] as const).filter((k) => m[k] !== undefined);
          issue(set[set.length - 1]!, `set only one of password, password_file or oauth2 (${set.slice(0, -1).join(', ')} and ${set[set.length - 1]} are set)`);
        }
        if (m.ssl === true && m.start_tls === true) issue('start_tls', 'ssl: true is implicit TLS (port 993) and start_tls: true upgrades a plain connection (port 143); set ssl: false to use STARTTLS');
        const o = typeof m.oauth2 === 'object' && m.oauth2 !== null ? m.oauth2 : undefined;
        if (o) {
          if (o.client_secret && o.client_secret_file) issue('oauth2.client_secret_file', 'set either client_secret or client_secret_file, not both');
          if (o.refresh_token && o.refresh_token_file) issue('oauth2.refresh_token_file', 'set either refresh_token or refresh_token_file, not both');
          if (o.grant === 'client_credentials') {
            if (!o.token_url && !o.tenant_id) issue('oauth2.tenant_id', 'client_credentials needs tenant_id (Microsoft) or token_url');
            if (!o.client_secret && !o.client_secret_file) issue('oauth2.client_secret_file', 'client_credentials needs client_secret or client_secret_file');
            if (o.refresh_token || o.refresh_token_file) issue('oauth2.refresh_token', 'applies to grant: refresh_token only');
          } else if (!o.refresh_token && !o.refresh_token_file) {
            issue('oauth2.refresh_token_file', 'grant refresh_token needs refresh_token or refresh_token_file');
          }
        }
      } else {
        if (!m.inbox_options) issue('inbox_options', 'is required for inbox_method: microsoft_graph (tenant_id, client_id, client_secret_file)');
        for (const key of ['host', 'port', 'password', 'password_file', 'oauth2', 'poll_interval'] as const) {
          if (m[key] !== undefined) issue(key, key === 'poll_interval' ? 'for microsoft_graph, set inbox_options.poll_interval' : 'applies to inbox_method: imap only; microsoft_graph uses inbox_options');
        }
        const g = typeof m.inbox_options === 'object' && m.inbox_options !== null ? m.inbox_options : undefined;
        if (g && !g.client_secret && !g.client_secret_file) issue('inbox_options.client_secret_file', 'set client_secret or client_secret_file');
        if (g && g.client_secret && g.client_secret_file) issue('inbox_options.client_secret_file', 'set either client_secret or client_secret_file, not both');
        if (m.claim === 'keyword') issue('claim', 'microsoft_graph has no keywords to claim with; use auto or move (move to claim_folder) or none (one instance)');
      }
      if (m.reconnect_max_delay_ms < m.reconnect_delay_ms) issue('reconnect_max_delay_ms', 'must be at least reconnect_delay_ms');
    },
    { when: (payload) => typeof payload.value === 'object' && payload.value !== null },
  );
export type MailboxConfig = z.output<typeof mailboxSchema>;

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
  imap: z.array(mailboxSchema).default([]).describe('mailboxes read over IMAP or Microsoft Graph and fed to the same routes (docs/imap.md)'),
});

/** The file as validated: secrets may still be file references. */
export type RawConfig = z.output<typeof configSchema>;
export type RouteConfig = RawConfig['routes'][number];
export type WebhookConfig = NonNullable<RouteConfig['webhook']>;
