// OAuth2 access tokens for XOAUTH2 (IMAP) and Graph: client credentials (Office 365, Graph) or a refresh token
// (Gmail), cached and refreshed before they expire; one request in flight at a time.
import { request, type Dispatcher } from 'undici';
import type { Clock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import type { Secret } from '../config/secret.js';
import { MailboxError } from './errors.js';
import { endpointOf } from '../core/url.js';

export interface TokenProvider {
  /** A token valid for a while yet (fetched or refreshed as needed). */
  token(): Promise<string>;
  /** Forget the cached token (the server refused it); the next token() fetches a new one. */
  invalidate(): void;
}

export interface OAuthSettings {
  grant: 'client_credentials' | 'refresh_token';
  tokenUrl: string;
  clientId: string;
  clientSecret: Secret | undefined;
  refreshToken: Secret | undefined;
  scope: string | undefined;
}

/** Tokens are renewed this long before they expire: a quarter of their life, at most 5 minutes. */
export function refreshMargin(lifetimeMs: number): number {
  return Math.min(5 * 60_000, Math.floor(lifetimeMs / 4));
}

const REQUEST_TIMEOUT_MS = 30_000;

/** After a failed renewal while the cached token is still valid, the next renewal is tried this much later. */
export const RENEW_RETRY_MS = 30_000;

export class OAuthTokenProvider implements TokenProvider {
  private cached: { token: string; refreshAt: number; expiresAt: number } | undefined;
  private inFlight: Promise<string> | undefined;
  private refreshToken: string | undefined;
  /** aborted by close(): a request in flight would otherwise run to its timeout and hold a stopping process */
  private readonly closed = new AbortController();

  constructor(
    private readonly settings: OAuthSettings,
    private readonly deps: { clock: Clock; dispatcher?: Dispatcher; log?: Logger },
  ) {
    this.refreshToken = settings.refreshToken?.reveal();
  }

  async token(): Promise<string> {
    const now = this.deps.clock.now();
    const cached = this.cached;
    if (cached && now < cached.refreshAt) return cached.token;
    this.inFlight ??= this.fetchToken()
      .catch((err: unknown) => {
        // A renewal inside the margin that fails (endpoint down, refused) leaves the cached token in use until it
        // really expires, and is tried again RENEW_RETRY_MS later, not at every call (every Graph request).
        const c = this.cached;
        const at = this.deps.clock.now();
        if (c && at < c.expiresAt) {
          c.refreshAt = Math.min(at + RENEW_RETRY_MS, c.expiresAt);
          return c.token;
        }
        throw err;
      })
      .finally(() => {
        this.inFlight = undefined;
      });
    return this.inFlight;
  }

  invalidate(): void {
    this.cached = undefined;
  }

  /** Gives up a token request in flight, and any later one (the mailboxes stopped). */
  close(): void {
    this.closed.abort();
  }

  private async fetchToken(): Promise<string> {
    const s = this.settings;
    // Secrets from files are read again at each token request: a client secret or refresh token replaced while
    // mailhook runs is used. A refresh token the endpoint rotated stays in use unless the file changed since it
    // was last read (an operator's new token wins). A file that cannot be read keeps the value read before.
    const secret = s.clientSecret?.reread();
    if (secret?.error) this.deps.log?.warn(`client_secret_file: ${secret.error}`);
    const refresh = s.refreshToken?.reread();
    if (refresh?.error) this.deps.log?.warn(`refresh_token_file: ${refresh.error}`);
    if (refresh?.changed) this.refreshToken = s.refreshToken!.reveal();
    const form = new URLSearchParams({ grant_type: s.grant, client_id: s.clientId });
    if (s.clientSecret) form.set('client_secret', s.clientSecret.reveal());
    if (s.grant === 'refresh_token') form.set('refresh_token', this.refreshToken ?? '');
    if (s.scope) form.set('scope', s.scope);
    const started = this.deps.clock.now();
    let status: number;
    let text: string;
    let contentType = '';
    try {
      const res = await request(s.tokenUrl, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
        body: form.toString(),
        dispatcher: this.deps.dispatcher,
        signal: this.closed.signal,
        headersTimeout: REQUEST_TIMEOUT_MS,
        bodyTimeout: REQUEST_TIMEOUT_MS,
      });
      status = res.statusCode;
      contentType = String(res.headers['content-type'] ?? '').split(';')[0]!.trim();
      text = await res.body.text();
    } catch (err) {
      throw new MailboxError('OAUTH_TOKEN_FAILED', `cannot reach the token endpoint ${endpointOf(s.tokenUrl)}: ${(err as Error).message}`, { cause: err, userFault: false });
    }
    let body: Record<string, unknown> = {};
    try {
      body = JSON.parse(text) as Record<string, unknown>;
    } catch {
      /* not JSON: reported below */
    }
    if (status !== 200 || typeof body.access_token !== 'string') {
      if (typeof body.error !== 'string') {
        // Not an RFC 6749 answer at all (an HTML error page, a proxy's login page): no refusal of the credentials,
        // so not "check the secret" — the endpoint failed, or something else answered in its place.
        const what = `HTTP ${status}${contentType ? `, ${contentType}` : ''}`;
        throw new MailboxError('OAUTH_TOKEN_FAILED', status >= 500 ? `the token endpoint ${endpointOf(s.tokenUrl)} failed (${what}); tried again after a pause` : `the token endpoint ${endpointOf(s.tokenUrl)} answered without a token or an OAuth error (${what}); check that it is the token endpoint (azure_ad_endpoint, token_url) and that no proxy answers in its place`, { userFault: status >= 400 && status < 500 });
      }
      // RFC 6749 §5.2 error response: error and error_description name the problem (never a secret). Microsoft's
      // descriptions go on over CRLF lines (Trace ID, Correlation ID, Timestamp): the first line, without its CR.
      const why = `${body.error}${typeof body.error_description === 'string' ? `: ${body.error_description.split(/\r?\n/)[0]!.trim()}` : ''}`;
      throw new MailboxError('OAUTH_TOKEN_FAILED', `the token endpoint ${endpointOf(s.tokenUrl)} refused the ${s.grant} grant (${why}); check client_id, the secret${s.grant === 'refresh_token' ? ', the refresh token' : ''} and the scope`, {
        userFault: status >= 400 && status < 500,
      });
    }
    if (typeof body.refresh_token === 'string' && body.refresh_token) this.refreshToken = body.refresh_token; // rotated (RFC 6749 §6)
    const lifetimeMs = (typeof body.expires_in === 'number' ? body.expires_in : Number(body.expires_in ?? 3600) || 3600) * 1000;
    const expiresAt = started + lifetimeMs;
    this.cached = { token: body.access_token, expiresAt, refreshAt: expiresAt - refreshMargin(lifetimeMs) };
    return body.access_token;
  }
}
