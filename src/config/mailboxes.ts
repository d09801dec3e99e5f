// Resolves the imap: list (IMAP and Microsoft Graph mailboxes) into typed settings with secrets read and cross-checked.
import type { ConfigProblem } from '../core/errors.js';
import type { MailboxConfig, RecipientHeader } from './schema.js';
import { Secret } from './secret.js';

export type AfterDelivery = { kind: 'delete' } | { kind: 'flag' } | { kind: 'move'; folder: string };
export type UnmatchedPolicy = { kind: 'leave' } | { kind: 'move'; folder: string } | { kind: 'route'; route: string };

interface MailboxCommon {
  name: string;
  user: string;
  /** IMAP folder, or Graph mail folder (well-known name or id) */
  mailbox: string;
  afterDelivery: AfterDelivery;
  recipientsFrom: RecipientHeader[];
  unmatched: UnmatchedPolicy;
  reconnect: { initialDelayMs: number; maxDelayMs: number };
  /** claim: move — where a claimed message waits until it is in the spool */
  claimFolder: string;
  claimTimeoutMs: number;
}

export type ImapAuth =
  | { kind: 'password'; password: Secret }
  | { kind: 'oauth2'; grant: 'client_credentials' | 'refresh_token'; tokenUrl: string; clientId: string; clientSecret: Secret | undefined; refreshToken: Secret | undefined; scope: string | undefined };

export interface ImapMailboxSettings extends MailboxCommon {
  method: 'imap';
  host: string;
  port: number;
  ssl: boolean;
  startTls: boolean;
  auth: ImapAuth;
  idleTimeoutMs: number;
  pollIntervalMs: number;
  batchSize: number;
  claim: 'auto' | 'keyword' | 'move' | 'none';
}

export interface GraphMailboxSettings extends MailboxCommon {
  method: 'microsoft_graph';
  tenantId: string;
  clientId: string;
  clientSecret: Secret;
  tokenUrl: string;
  graphEndpoint: string;
  pollIntervalMs: number;
  /** auto and move: move each message to claimFolder before taking it (several instances); none: one instance */
  claim: 'move' | 'none';
}

export type MailboxSettings = ImapMailboxSettings | GraphMailboxSettings;

const GOOGLE_TOKEN_URL = 'https://oauth2.googleapis.com/token';
const OFFICE365_IMAP_SCOPE = 'https://outlook.office365.com/.default';

/** Graph's well-known folder names (written in lower case in its documentation); anything else is a folder id. */
const GRAPH_WELL_KNOWN = new Set(['inbox', 'archive', 'deleteditems', 'junkemail', 'drafts', 'sentitems', 'outbox', 'clutter', 'conversationhistory', 'recoverableitemsdeletions']);
const graphFolder = (name: string) => (GRAPH_WELL_KNOWN.has(name.toLowerCase()) ? name.toLowerCase() : name);

function trimSlash(url: string): string {
  return url.replace(/\/+$/, '');
}

/**
 * Checks what one entry cannot see alone (unique names, routes named by unmatched: route:<name>) and reads
 * secret files. `readSecret` reads a file as the rest of the config does, reporting problems under `path`; the
 * Secret it gives reads its file again when asked (a password or token rotated while mailhook runs).
 */
export function resolveMailboxes(
  raw: readonly MailboxConfig[],
  routeNames: ReadonlySet<string>,
  readSecret: (file: string, path: string) => Secret | undefined,
  problems: ConfigProblem[],
): MailboxSettings[] {
  const names = new Map<string, number>();
  const out: MailboxSettings[] = [];
  raw.forEach((m, i) => {
    const at = `imap[${i}]`;
    const seen = names.get(m.name);
    if (seen !== undefined) problems.push({ path: `${at}.name`, message: `"${m.name}" is already the name of imap[${seen}]; mailbox names must be unique (they key deduplication)` });
    names.set(m.name, i);

    const afterDelivery: AfterDelivery = m.after_delivery.startsWith('move:') ? { kind: 'move', folder: m.after_delivery.slice(5).trim() } : { kind: m.after_delivery as 'delete' | 'flag' };
    let unmatched: UnmatchedPolicy = { kind: 'leave' };
    if (m.unmatched.startsWith('move:')) unmatched = { kind: 'move', folder: m.unmatched.slice(5).trim() };
    else if (m.unmatched.startsWith('route:')) {
      const route = m.unmatched.slice(6);
      if (!routeNames.has(route)) problems.push({ path: `${at}.unmatched`, message: `no route is named "${route}"; name one of: ${[...routeNames].join(', ')}` });
      unmatched = { kind: 'route', route };
    }
    const common: MailboxCommon = {
      name: m.name,
      user: m.user,
      mailbox: m.mailbox,
      afterDelivery,
      recipientsFrom: m.recipients_from,
      unmatched,
      reconnect: { initialDelayMs: m.reconnect_delay_ms, maxDelayMs: m.reconnect_max_delay_ms },
      claimFolder: m.claim_folder,
      claimTimeoutMs: m.claim_timeout * 1000,
    };
    const secret = (value: string | undefined, file: string | undefined, path: string): Secret | undefined => {
      if (value !== undefined) return new Secret(value);
      if (file !== undefined) return readSecret(file, path);
      return undefined;
    };

    if (m.inbox_method === 'microsoft_graph') {
      const g = m.inbox_options;
      if (!g) return; // reported by the schema
      const clientSecret = secret(g.client_secret, g.client_secret_file, `${at}.inbox_options.client_secret_file`);
      if (!clientSecret) return;
      out.push({
        ...common,
        mailbox: graphFolder(m.mailbox), // the default INBOX is Graph's "inbox"
        afterDelivery: afterDelivery.kind === 'move' ? { kind: 'move', folder: graphFolder(afterDelivery.folder) } : afterDelivery,
        unmatched: unmatched.kind === 'move' ? { kind: 'move', folder: graphFolder(unmatched.folder) } : unmatched,
        method: 'microsoft_graph',
        tenantId: g.tenant_id,
        clientId: g.client_id,
        clientSecret,
        tokenUrl: `${trimSlash(g.azure_ad_endpoint)}/${encodeURIComponent(g.tenant_id)}/oauth2/v2.0/token`,
        graphEndpoint: trimSlash(g.graph_endpoint),
        pollIntervalMs: g.poll_interval * 1000,
        claim: m.claim === 'none' ? 'none' : 'move',
      });
      return;
    }

    let auth: ImapAuth | undefined;
    if (m.oauth2) {
      const o = m.oauth2;
      const clientSecret = secret(o.client_secret, o.client_secret_file, `${at}.oauth2.client_secret_file`);
      const refreshToken = secret(o.refresh_token, o.refresh_token_file, `${at}.oauth2.refresh_token_file`);
      const tokenUrl = o.token_url ?? (o.grant === 'client_credentials' ? `${trimSlash(o.azure_ad_endpoint)}/${encodeURIComponent(o.tenant_id ?? '')}/oauth2/v2.0/token` : GOOGLE_TOKEN_URL);
      auth = { kind: 'oauth2', grant: o.grant, tokenUrl, clientId: o.client_id, clientSecret, refreshToken, scope: o.scope ?? (o.grant === 'client_credentials' ? OFFICE365_IMAP_SCOPE : undefined) };
    } else {
      const password = secret(m.password, m.password_file, `${at}.password_file`);
      if (password) auth = { kind: 'password', password };
    }
    if (!auth || !m.host) return;
    out.push({
      ...common,
      method: 'imap',
      host: m.host,
      port: m.port ?? (m.ssl ? 993 : 143),
      ssl: m.ssl,
      startTls: m.start_tls,
      auth,
      idleTimeoutMs: m.idle_timeout * 1000,
      pollIntervalMs: (m.poll_interval ?? 5) * 1000,
      batchSize: m.batch_size,
      claim: m.claim,
    });
  });
  return out;
}
