// How CLI subcommands reach a running mailhook: the admin API's URL and token (flags, environment or config file).
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { loadConfigFile, type Env } from '../config/load.js';
import { ConfigError, MailhookError } from '../core/errors.js';
import { hasCredentials } from '../core/url.js';

export interface ConnectionOptions {
  url?: string;
  tokenFile?: string;
  config?: string;
}

export interface Connection {
  /** base URL of the HTTP listener, no trailing slash */
  url: string;
  token: string | undefined;
  /** SMTP listen address from the config file, when one was given (lmtp: it speaks LMTP, smtp.lmtp) */
  smtp?: { host: string; port: number; lmtp: boolean };
}

/** Thrown for problems the operator fixes (wrong URL, token, flags): printed as one line, exit 1. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

/** What an HTTP header can carry as a bearer token: visible ASCII, one word. */
const TOKEN_RE = /^[\x21-\x7e]+$/;

/** A wildcard listen address is reached on loopback. */
export function connectHost(host: string): string {
  if (host === '0.0.0.0' || host === '') return '127.0.0.1';
  if (host === '::') return '::1';
  return host;
}

function hostForUrl(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

/** Flags first, then MAILHOOK_URL / MAILHOOK_ADMIN_TOKEN, then the config file, then the defaults. */
export function resolveConnection(opts: ConnectionOptions, env: Env, cwd: string): Connection {
  let fromConfig: Connection | undefined;
  if (opts.config) {
    try {
      // Only where to connect is read: route secrets may live in the service's environment, not in this shell's.
      const config = loadConfigFile(resolve(cwd, opts.config), env, cwd, { secretsOptional: true });
      fromConfig = {
        url: `http://${hostForUrl(connectHost(config.http.listen.host))}:${config.http.listen.port}`,
        token: config.http.adminToken?.reveal(),
        smtp: { host: connectHost(config.smtp.listen.host), port: config.smtp.listen.port, lmtp: config.smtp.lmtp },
      };
    } catch (err) {
      if (err instanceof ConfigError) throw new CliError(err.message, 2);
      throw err;
    }
  }
  let token: string | undefined;
  let tokenSource = '';
  if (opts.tokenFile) {
    try {
      token = readFileSync(resolve(cwd, opts.tokenFile), 'utf8').trim();
      tokenSource = `the token file ${opts.tokenFile}`;
    } catch (err) {
      throw new CliError(`cannot read the token file ${opts.tokenFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, 2);
    }
  }
  if (token === undefined && env.MAILHOOK_ADMIN_TOKEN?.trim()) {
    token = env.MAILHOOK_ADMIN_TOKEN.trim();
    tokenSource = 'MAILHOOK_ADMIN_TOKEN';
  }
  // Checked here, never printed: fetch refuses such a header value with an error that quotes it.
  if (token && !TOKEN_RE.test(token)) throw new CliError(`the admin token in ${tokenSource} must be one word of visible ASCII characters (no spaces, line breaks or control characters): it is sent as "Authorization: Bearer <token>"`, 2);
  token ??= fromConfig?.token;
  const url = (opts.url ?? env.MAILHOOK_URL ?? fromConfig?.url ?? 'http://127.0.0.1:8025').replace(/\/+$/, '');
  // Not repeated: the user and password in it are a secret, and fetch() refuses such a URL anyway.
  if (hasCredentials(url)) throw new CliError('--url (or MAILHOOK_URL) must not carry a user or password (http://user:pass@…): the admin API takes its token from --token-file, MAILHOOK_ADMIN_TOKEN or --config', 2);
  if (!/^https?:\/\/[^/]+$/.test(url) || !URL.canParse(url)) throw new CliError(`--url must be the listener's base URL, like http://127.0.0.1:8025 (got "${url.replace(/\/\/[^/]*@/, '//…@')}")`, 2);
  return { url, token, smtp: fromConfig?.smtp };
}

export class AdminClient {
  constructor(private readonly conn: Connection) {
    if (!conn.token) {
      throw new CliError('no admin token: pass --token-file FILE, set MAILHOOK_ADMIN_TOKEN, or --config FILE with http.admin_token_file', 2);
    }
  }

  get url(): string {
    return this.conn.url;
  }

  async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.request(method, path, body);
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      const message = `${method} ${path}: HTTP ${res.status}, not JSON: ${text.slice(0, 200)}`;
      // A proxy in front answers in HTML: its 401 is still a refused token (exit 77), not a general failure.
      if (!res.ok) throw problemError(res.status, { message });
      throw new CliError(message);
    }
    if (!res.ok) throw problemError(res.status, parsed);
    return parsed as T;
  }

  /** The response, for streaming bodies (raw messages). */
  async stream(path: string): Promise<Response> {
    const res = await this.request('GET', path);
    if (!res.ok) throw problemError(res.status, await res.json().catch(() => ({})));
    return res;
  }

  private async request(method: string, path: string, body?: unknown): Promise<Response> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.conn.token}`, accept: 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    try {
      return await fetch(`${this.conn.url}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (err) {
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      // A message can quote the request's headers, the token among them: never printed.
      const detail = (cause?.code ?? cause?.message ?? (err as Error).message).split(this.conn.token ?? '').join('<token>');
      throw new CliError(`cannot reach mailhook at ${this.conn.url}: ${detail}; is it running? (--url, MAILHOOK_URL or --config)`, 69);
    }
  }
}

function problemError(status: number, body: unknown): CliError {
  const b = body as { error?: string; message?: string };
  const message = b.message ?? `HTTP ${status}`;
  if (status === 401) return new CliError(`the admin API refused the token: ${message}`, 77);
  if (b.error === 'admin_api_disabled') return new CliError(message, 69);
  return new CliError(message, status === 404 ? 1 : 1);
}

export function isMailhookError(err: unknown): err is MailhookError {
  return err instanceof MailhookError;
}
