// Shared setup for the IMAP bridge tests: routes, the imap: config block for a Dovecot user, and test messages.
import type { Dovecot } from '../helpers/dovecot.js';
import { SECRET } from '../helpers/app.js';

/** tracker: incoming+%{key}@in.test to a webhook; desk: a sink; catchall: the unmatched route:<name> target. */
export function routesYaml(webhookUrl: string): string {
  return `
  - name: tracker
    addresses: ["incoming+%{key}@in.test"]
    webhook:
      url: ${webhookUrl}
      secret: ${SECRET}
  - name: desk
    addresses: ["desk@in.test"]
    sink: true
  - name: catchall
    addresses: ["catchall@in.test"]
    sink: true
`;
}

/** An imap: list entry for one Dovecot user; `more` adds or overrides keys (a nested block as YAML text). */
export function mailboxYaml(d: Dovecot, user: string, more: Record<string, string | number | boolean> = {}, name = user): string {
  const u = d.users.find((x) => x.user === user);
  if (!u) throw new Error(`no user ${user}`);
  const keys: Record<string, string | number | boolean> = {
    name,
    host: '127.0.0.1',
    port: d.port,
    ssl: false,
    user: u.user,
    password: u.password,
    idle_timeout: 30,
    reconnect_delay_ms: 100,
    reconnect_max_delay_ms: 1000,
    ...more,
  };
  const lines = Object.entries(keys).map(([k, v], i) => `${i === 0 ? '  - ' : '    '}${k}: ${typeof v === 'string' && /[:#]/.test(v) ? JSON.stringify(v) : v}`);
  return `\n${lines.join('\n')}\n`;
}

export function imapBlock(...entries: string[]): string {
  return `imap:${entries.join('')}\n`;
}

/** A small message to key `key` (To: incoming+<key>@in.test), CRLF line ends as IMAP wants. */
export function message(key: string, opts: { to?: string; headers?: string; body?: string; messageId?: string } = {}): string {
  const lines = [
    `From: Sender <sender@example.test>`,
    `To: ${opts.to ?? `incoming+${key}@in.test`}`,
    `Subject: test ${key}`,
    `Message-ID: <${opts.messageId ?? `${key}@example.test`}>`,
    `Date: Mon, 3 Mar 2025 10:00:00 +0000`,
    ...(opts.headers ? [opts.headers] : []),
    '',
    opts.body ?? `body of ${key}`,
    '',
  ];
  return lines.join('\r\n');
}

export function crlf(text: string | Buffer): string {
  return text.toString().replace(/\r?\n/g, '\r\n');
}

export const count = (db: { prepare(sql: string): { get(...a: unknown[]): unknown } }, where = '1=1', ...args: unknown[]): number =>
  (db.prepare(`SELECT COUNT(*) AS n FROM messages WHERE ${where}`).get(...args) as { n: number }).n;
