// A stand-in for GitLab's /api/v4/internal/mail_room/<mailbox type> endpoint: its JWT check, its answers, its mail-key lookup.
import { createHmac, timingSafeEqual } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';

/**
 * What GitLab reads from a mailbox's secret_file (JwtAuthenticatable.read_secret): Base64.strict_decode64 of the file
 * with one trailing line break chomped, which must be 32 bytes. Anything else is a configuration error on GitLab's side.
 */
export function readGitlabSecret(path: string): Buffer {
  const text = readFileSync(path, 'latin1').replace(/(\r\n|\n|\r)$/, '');
  // strict_decode64: the alphabet, padded to a multiple of 4, nothing else (no line breaks, no spaces).
  if (!/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(text)) throw new Error(`${path}: invalid base64`);
  const bytes = Buffer.from(text, 'base64');
  if (bytes.length !== 32) throw new Error(`${path} does not contain 32 bytes`);
  return bytes;
}

/**
 * Gitlab::MailRoom::Authenticator.verify_api_request as ruby-jwt runs it: HS256 only (the header's alg must be it),
 * the signature, iss "gitlab-mailroom", exp if present, iat numeric and not in the future (verify_iat, no leeway),
 * iat present and not older than 5 minutes (iat_after). Returns the reason it fails, or null.
 */
export function gitlabJwtProblem(token: string | undefined, key: Buffer, nowSeconds = Date.now() / 1000): string | null {
  if (!token) return 'no token';
  const parts = token.split('.');
  if (parts.length !== 3) return 'not a JWS';
  const [h, p, s] = parts as [string, string, string];
  let header: Record<string, unknown>;
  let payload: Record<string, unknown>;
  try {
    header = JSON.parse(Buffer.from(h, 'base64url').toString('utf8')) as Record<string, unknown>;
    payload = JSON.parse(Buffer.from(p, 'base64url').toString('utf8')) as Record<string, unknown>;
  } catch {
    return 'undecodable';
  }
  if (header.alg !== 'HS256') return `alg ${String(header.alg)}`;
  const want = createHmac('sha256', key).update(`${h}.${p}`).digest();
  const got = Buffer.from(s, 'base64url');
  if (got.length !== want.length || !timingSafeEqual(got, want)) return 'signature';
  if (typeof payload.exp === 'number' && payload.exp <= nowSeconds) return 'expired';
  if (payload.iss !== 'gitlab-mailroom') return `iss ${String(payload.iss)}`;
  if (payload.iat === undefined || payload.iat === null || payload.iat === '') return 'iat missing';
  if (typeof payload.iat !== 'number' || payload.iat > nowSeconds) return 'iat invalid or in the future';
  if (Math.trunc(payload.iat) < Math.trunc(nowSeconds - 300)) return 'older than 5 minutes';
  return null;
}

/** Unfolded header fields, names lower-cased, in order (what Mail::Message's header lookup sees, for these purposes). */
function fields(raw: Buffer): Array<{ name: string; value: string }> {
  const text = raw.toString('latin1');
  const end = text.search(/\r?\n\r?\n/);
  const section = end === -1 ? text : text.slice(0, end);
  const out: Array<{ name: string; value: string }> = [];
  for (const line of section.split(/\r?\n/)) {
    const last = out.at(-1);
    if (/^[ \t]/.test(line) && last) last.value += ' ' + line.trim();
    else {
      const i = line.indexOf(':');
      if (i > 0) out.push({ name: line.slice(0, i).trim().toLowerCase(), value: line.slice(i + 1).trim() });
    }
  }
  return out;
}

/** The bare addresses of an address-list header (mail.to, mail.cc): angle-bracketed ones, else the bare tokens. */
function addressList(value: string): string[] {
  const angled = [...value.matchAll(/<([^<>\s]+@[^<>\s]+)>/g)].map((m) => m[1]!);
  if (angled.length > 0) return angled;
  return value.split(',').map((a) => a.trim()).filter((a) => a.includes('@'));
}

/**
 * Gitlab::EmailHandler::MailKey.each_candidate / Gitlab::Email::Receiver#mail_key: To first, then References'
 * reply-KEY@<gitlab host>, then Delivered-To, X-Delivered-To, Envelope-To, X-Envelope-To, Received's "for <…>",
 * X-Original-To, X-Forwarded-To, Cc. An address yields a key only if it matches the wildcard address exactly
 * (/\A<?escaped template with (.+) for %{key}>?\z/: case-sensitive, whole value).
 */
export function gitlabMailKey(raw: Buffer, template: string, gitlabHost: string): { key: string; source: string } | null {
  const escaped = template.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&').replace('%\\{key\\}', '(.+)');
  const re = new RegExp(`^<?${escaped}>?$`);
  const all = fields(raw);
  const values = (name: string) => all.filter((f) => f.name === name).map((f) => f.value);
  const tryAddress = (a: string) => re.exec(a)?.[1];
  for (const a of values('to').flatMap(addressList)) {
    const k = tryAddress(a);
    if (k) return { key: k, source: 'to' };
  }
  const hostRe = new RegExp(`^reply-(.+)@${gitlabHost.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`);
  for (const id of values('references').flatMap((v) => [...v.matchAll(/<([^<>]+)>/g)].map((m) => m[1]!))) {
    const k = hostRe.exec(id)?.[1];
    if (k) return { key: k, source: 'references' };
  }
  const order: Array<[string, (v: string) => string[]]> = [
    ['delivered-to', (v) => [v]],
    ['x-delivered-to', (v) => [v]],
    ['envelope-to', (v) => [v]],
    ['x-envelope-to', (v) => [v]],
    ['received', (v) => [/for\s+<([^<]+)>/.exec(v)?.[1]].filter((x): x is string => !!x)],
    ['x-original-to', (v) => [v]],
    ['x-forwarded-to', (v) => [v]],
    ['cc', addressList],
  ];
  for (const [name, extract] of order) {
    for (const a of values(name).flatMap(extract)) {
      const k = tryAddress(a);
      if (k) return { key: k, source: name };
    }
  }
  return null;
}

/** Gitlab::Email::Receiver#ignore_auto_reply!: Auto-Submitted other than "no", or X-Autoreply: yes. */
export function gitlabIgnoresAsAutoReply(raw: Buffer): boolean {
  const all = fields(raw);
  const auto = all.find((f) => f.name === 'auto-submitted')?.value;
  const x = all.find((f) => f.name === 'x-autoreply')?.value;
  return (auto !== undefined && auto !== 'no') || x === 'yes';
}

export interface MailboxConfig {
  /** incoming_email.address / service_desk_email.address, e.g. "incoming+%{key}@gitlab.test" */
  address: string;
  /** secret_file; read at the first request of the mailbox and kept (strong_memoize), as a running GitLab does */
  secretFile: string;
}

export interface StandinRequest {
  mailboxType: string;
  contentType: string | undefined;
  tokenProblem: string | null;
  body: Buffer;
  status: number;
  /** the key GitLab's worker would find with this mailbox's address (null: "no key": the sender gets a rejection) */
  key: { key: string; source: string } | null;
  autoReply: boolean;
}

/**
 * The endpoint (lib/api/internal/mail_room.rb): POST only; 401 when the mailbox type is not enabled (address set)
 * or the JWT fails; 200 {success: true} once queued. `script` answers instead of 200 for the n-th request (a 400 as
 * the job size limiter's, a 5xx as a restart's); the secret is read once per mailbox until `restart()`.
 */
export class GitlabStandin {
  readonly requests: StandinRequest[] = [];
  script: Record<number, number> = {};
  port = 0;
  private server: Server | undefined;
  private secrets = new Map<string, Buffer>();
  private waiters: Array<{ n: number; resolve: () => void }> = [];
  constructor(
    private readonly mailboxes: Record<string, MailboxConfig>,
    readonly host = 'gitlab.test',
  ) {}

  url(type: string): string {
    return `http://127.0.0.1:${this.port}/api/v4/internal/mail_room/${type}`;
  }

  /** GitLab restarted (gitlab-ctl reconfigure after a secret change): secrets are read again. */
  restart(): void {
    this.secrets.clear();
  }

  async start(): Promise<this> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const body = Buffer.concat(chunks);
        const type = /^\/api\/v4\/internal\/mail_room\/(.+)$/.exec(req.url ?? '')?.[1] ?? '';
        const mailbox = this.mailboxes[type];
        let tokenProblem: string | null = 'not checked';
        let status: number;
        if (req.method !== 'POST' || !type) status = 404;
        else if (!mailbox) status = 401;
        else {
          let key = this.secrets.get(type);
          if (!key) {
            key = readGitlabSecret(mailbox.secretFile);
            this.secrets.set(type, key);
          }
          tokenProblem = gitlabJwtProblem(req.headers['gitlab-mailroom-api-request'] as string | undefined, key);
          status = tokenProblem ? 401 : (this.script[this.requests.length] ?? 200);
        }
        this.requests.push({
          mailboxType: type,
          contentType: req.headers['content-type'],
          tokenProblem,
          body,
          status,
          key: mailbox ? gitlabMailKey(body, mailbox.address, this.host) : null,
          autoReply: gitlabIgnoresAsAutoReply(body),
        });
        const answer = status === 200 ? { success: true } : status === 400 ? { success: false, message: 'too large' } : { message: `${status}` };
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(answer));
        this.waiters = this.waiters.filter((w) => (this.requests.length >= w.n ? (w.resolve(), false) : true));
      });
    });
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    this.port = (this.server.address() as { port: number }).port;
    return this;
  }

  waitFor(n: number, timeoutMs = 15_000): Promise<StandinRequest[]> {
    if (this.requests.length >= n) return Promise.resolve(this.requests.slice());
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`GitLab stand-in got ${this.requests.length} of ${n} requests`)), timeoutMs);
      this.waiters.push({ n, resolve: () => (clearTimeout(t), resolve(this.requests.slice())) });
    });
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}
