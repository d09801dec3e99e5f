// format: gitlab — what GitLab's internal mail_room API expects from mail_room's postback delivery: the raw message and a JWT.
import { randomBytes } from 'node:crypto';
import { SignJWT } from 'jose';
import type { Envelope, Recipient } from '../../spool/types.js';
import { asciiDomain, matchLocalPart, parseAddressTemplate } from '../../routing/template.js';
import type { Outcome } from '../classify.js';
import type { FormatContext, PayloadFormat } from './types.js';

/** GitLab's Gitlab::MailRoom::INTERNAL_API_REQUEST_HEADER and INTERNAL_API_REQUEST_JWT_ISSUER. */
export const GITLAB_JWT_HEADER = 'Gitlab-Mailroom-Api-Request';
export const GITLAB_JWT_ISSUER = 'gitlab-mailroom';

/**
 * GitLab refuses a token whose iat is in the future (ruby-jwt verify_iat, no leeway) or older than
 * 5 minutes (Gitlab::MailRoom::Authenticator::EXPIRATION). Dating the token this many seconds back
 * lets mailhook's clock run up to that much ahead of GitLab's and still leaves 4.5 minutes the other way.
 */
export const IAT_BACKDATE_SECONDS = 30;

/** The JWT mail_room sends: HS256 over {iss, iat, nonce} with the 32-byte key from GitLab's secret file. */
export async function mailroomToken(key: Uint8Array, nowSeconds: number, nonce: string): Promise<string> {
  return new SignJWT({ nonce })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setIssuer(GITLAB_JWT_ISSUER)
    .setIssuedAt(nowSeconds - IAT_BACKDATE_SECONDS)
    .sign(key);
}

/** RFC 5322 §3.3 date-time in UTC, e.g. "Tue, 25 Nov 2025 13:50:00 +0000". */
export function rfc5322Date(ms: number): string {
  const d = new Date(ms);
  const day = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'][d.getUTCDay()];
  const month = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'][d.getUTCMonth()];
  const p = (n: number) => String(n).padStart(2, '0');
  return `${day}, ${d.getUTCDate()} ${month} ${d.getUTCFullYear()} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} +0000`;
}

/** Keeps a value from the SMTP session on one header line: no control characters, no angle brackets. */
function clean(value: string): string {
  return value.replace(/[\x00-\x1f\x7f<>]/g, '');
}

function addressLiteral(ip: string): string {
  const v4 = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip)?.[1];
  if (v4) return `[${v4}]`;
  return ip.includes(':') ? `[IPv6:${ip}]` : `[${ip}]`;
}

/**
 * The trace fields an MTA writes when it delivers a message (RFC 5321 §4.4): Delivered-To with each
 * envelope recipient, then Received naming this host. mailhook stores the bytes exactly as received
 * and adds these only on the way out, where GitLab needs them: it finds the key in To, then in
 * Delivered-To/Envelope-To, so a Bcc'd recipient is found only through them.
 */
export function traceFields(input: {
  envelope: Envelope;
  recipients: readonly Recipient[];
  messageId: string;
  receivedAt: number;
  source: string;
  hostname: string;
  newline: string;
  /** the relay the message came through with XFORWARD (meta.relay): the client of this hop, which "from" names */
  relay?: { address: string; helo: string | null } | null;
}): string {
  const { envelope, recipients, newline: nl } = input;
  const lines: string[] = [];
  for (const r of recipients) lines.push(`Delivered-To: ${clean(r.address)}`);
  // RFC 5321 §4.4: "from" is the client that sent mailhook the message. Behind a relay that forwarded its own
  // client (XFORWARD), that is the relay, whose own Received field names the client before it.
  const client = input.relay ?? { address: envelope.remoteAddress, helo: envelope.helo };
  const from = client.address
    ? `from ${client.helo ? clean(client.helo).replace(/[\s();]/g, '') || 'unknown' : 'unknown'} (${addressLiteral(client.address)})${nl}\t`
    : '';
  const protocol = input.source === 'smtp' ? ` with ${envelope.tls ? 'ESMTPS' : 'ESMTP'}` : '';
  // RFC 5321 §4.4: "for" names one recipient; with several it would disclose the others.
  const forClause = recipients.length === 1 ? `${nl}\tfor <${clean(recipients[0]!.address)}>` : '';
  lines.push(`Received: ${from}by ${clean(input.hostname)} (mailhook)${protocol} id ${input.messageId}${forClause}; ${rfc5322Date(input.receivedAt)}`);
  return lines.map((l) => l + nl).join('');
}

/**
 * A recipient as GitLab writes its address: the route's pattern as configured (GitLab's incoming_email or
 * service_desk_email address, pasted as is) with the captured key in place of %{key}. GitLab finds the key with a
 * case-sensitive match of the whole value against that address (Gitlab::IncomingEmail.key_from_address), so
 * "Incoming+key@Gitlab.Example.com" as a sender typed it would name no key; the literal parts' case is taken from
 * the pattern, the key's is kept. A recipient no pattern of the route matches stays as received.
 */
export function gitlabAddress(recipient: Recipient, patterns: readonly string[]): string {
  const at = recipient.address.lastIndexOf('@');
  if (at <= 0) return recipient.address;
  const local = recipient.address.slice(0, at);
  const domain = asciiDomain(recipient.address.slice(at + 1));
  for (const source of patterns) {
    const parsed = parseAddressTemplate(source);
    if (!parsed.ok || parsed.template.domain !== domain) continue;
    const t = parsed.template;
    if (t.kind === 'key' && recipient.key !== null && matchLocalPart(t, local) === recipient.key) return source.replace('%{key}', () => recipient.key!);
    if (t.kind === 'exact' && matchLocalPart(t, local) === '') return source;
  }
  return recipient.address;
}

/** meta.relay as the SMTP service records it (smtp/xforward.ts TransactionClient.relay); null when absent or not that shape. */
function relayOf(meta: Record<string, unknown> | null | undefined): { address: string; helo: string | null } | null {
  const r = meta?.relay as { address?: unknown; helo?: unknown } | undefined;
  if (!r || typeof r.address !== 'string') return null;
  return { address: r.address, helo: typeof r.helo === 'string' ? r.helo : null };
}

/** The line ending the message itself uses, so added fields match it (CRLF unless the first line ends in a bare LF). */
export function newlineOf(raw: Buffer): string {
  const i = raw.indexOf(0x0a);
  return i > 0 && raw[i - 1] !== 0x0d ? '\n' : '\r\n';
}

/** The message as GitLab receives it from mail_room: trace fields, then the bytes as received. */
export function gitlabBody(ctx: Pick<FormatContext, 'message' | 'delivery' | 'raw' | 'hostname'> & { route?: Pick<FormatContext['route'], 'addresses'> }): Buffer {
  const m = ctx.message;
  const patterns = ctx.route?.addresses ?? [];
  const trace = traceFields({
    envelope: m.envelope,
    recipients: ctx.delivery.recipients.map((r) => ({ ...r, address: gitlabAddress(r, patterns) })),
    messageId: m.id,
    receivedAt: m.receivedAt,
    source: m.source,
    hostname: ctx.hostname,
    newline: newlineOf(ctx.raw),
    relay: relayOf(m.meta),
  });
  return Buffer.concat([Buffer.from(trace, 'utf8'), ctx.raw]);
}

/**
 * What GitLab's answers mean (lib/api/internal/mail_room.rb): 200 queued; 401 the JWT was refused or the
 * mailbox type is not enabled — a configuration problem; 400 the message is too large for GitLab's job queue.
 */
export function classifyGitlabStatus(status: number): Outcome | undefined {
  if (status === 401) {
    return {
      kind: 'dead',
      loud: true,
      reason:
        "HTTP 401: GitLab refused the request: the route's secret is not the one in GitLab's secret file for this mailbox (mailhook reads it at start-up: after GitLab's secret changed, restart mailhook, then replay the dead-lettered deliveries), the mailbox type at the end of the URL is not enabled in gitlab.rb, or the clocks differ by more than 5 minutes",
    };
  }
  if (status === 400) return { kind: 'dead', reason: 'HTTP 400: GitLab refused the message as too large for its job queue' };
  if (status === 404) return { kind: 'dead', loud: true, reason: "HTTP 404: the URL is not GitLab's mail_room endpoint (https://<gitlab>/api/v4/internal/mail_room/incoming_email)" };
  return undefined;
}

export const gitlabFormat: PayloadFormat = {
  name: 'gitlab',
  parses: () => undefined,
  async encode(ctx) {
    const key = ctx.webhook.signingKeyBytes;
    if (!key) throw new Error("format gitlab needs GitLab's secret (webhook.secret_file pointing at gitlab_incoming_email_secret)");
    // A fresh token per attempt: GitLab accepts one only within 5 minutes of its iat.
    const token = await mailroomToken(key, ctx.nowSeconds, randomBytes(12).toString('hex'));
    return {
      headers: { 'content-type': 'text/plain', [GITLAB_JWT_HEADER]: token },
      body: gitlabBody(ctx),
    };
  },
  classify: classifyGitlabStatus,
};
