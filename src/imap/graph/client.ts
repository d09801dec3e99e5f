// Microsoft Graph over HTTP (undici): bearer tokens from the client-credentials provider, 429/503/504 retried
// after Retry-After (capped), one retry with a fresh token on 401, and errors mapped onto MailboxError.
import { request, type Dispatcher } from 'undici';
import type { Clock } from '../../core/clock.js';
import { untilAborted } from '../../core/lifecycle.js';
import { retryAfterMs } from '../backoff.js';
import { MailboxError } from '../errors.js';
import type { TokenProvider } from '../oauth.js';

export interface GraphClientDeps {
  tokens: TokenProvider;
  clock: Clock;
  dispatcher?: Dispatcher;
  /** aborts waits and requests when the bridge stops */
  signal: AbortSignal;
  /** how often one request is retried after throttling (429) or unavailability (503, 504) */
  maxThrottleRetries?: number;
  /** the longest Retry-After honoured inside one request; longer asks end the pass and the bridge backs off */
  maxRetryAfterMs?: number;
  /** delay when a throttling answer carries no Retry-After */
  defaultRetryMs?: number;
}

export interface GraphResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Dispatcher.ResponseData['body'];
}

const REQUEST_TIMEOUT_MS = 60_000;
/**
 * The longest Retry-After believed: Graph asks for seconds to minutes; a longer ask (a proxy's, a misread date)
 * would leave the mailbox unread for as long, so it is taken as an hour (the mailbox shows backoff and when next).
 */
export const MAX_RETRY_AFTER_MS = 3_600_000;
const THROTTLED = new Set([429, 503, 504]);

export class GraphClient {
  /** how many throttling answers were waited out (for tests and logs) */
  throttled = 0;

  constructor(private readonly deps: GraphClientDeps) {}

  /** A request whose answer is JSON (or empty); throws MailboxError for error statuses other than those in `allow`. */
  async json<T = Record<string, unknown>>(method: string, url: string, opts: { body?: unknown; headers?: Record<string, string>; allow?: number[] } = {}): Promise<{ status: number; body: T | undefined }> {
    const res = await this.send(method, url, {
      headers: { accept: 'application/json', ...(opts.body !== undefined ? { 'content-type': 'application/json' } : {}), ...opts.headers },
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    });
    const text = await res.body.text();
    if (res.status >= 400 && !(opts.allow ?? []).includes(res.status)) throw graphError(method, url, res.status, text);
    try {
      return { status: res.status, body: text ? (JSON.parse(text) as T) : undefined };
    } catch {
      // A proxy's or captive portal's page in Graph's place: say which request and what came back (it was "Unexpected
      // token '<'", kind protocol, naming nothing).
      const type = String(res.headers['content-type'] ?? 'no content type').split(';')[0]!.trim();
      throw new MailboxError('MAILBOX_SERVER', `Graph ${method} ${pathOf(url)} answered ${res.status} with ${type}, not JSON; check graph_endpoint and that no proxy answers in Graph's place`);
    }
  }

  /** A request whose answer is streamed (raw MIME from /$value); the caller consumes or drains the body. */
  async stream(url: string, opts: { allow?: number[] } = {}): Promise<GraphResponse> {
    const res = await this.send('GET', url, { headers: { accept: '*/*' } });
    if (res.status >= 400 && !(opts.allow ?? []).includes(res.status)) throw graphError('GET', url, res.status, await res.body.text());
    return res;
  }

  private async send(method: string, url: string, opts: { headers: Record<string, string>; body?: string }): Promise<GraphResponse> {
    const maxRetries = this.deps.maxThrottleRetries ?? 5;
    let refreshed = false;
    for (let attempt = 0; ; attempt++) {
      // The token request has its own timeouts (30 s), and is aborted only when the mailboxes stop: a token endpoint
      // that hangs held stop() for them.
      const token = await untilAborted(this.deps.tokens.token(), this.deps.signal);
      let res: Dispatcher.ResponseData;
      try {
        res = await request(url, {
          method: method as Dispatcher.HttpMethod,
          headers: { ...opts.headers, authorization: `Bearer ${token}` },
          body: opts.body,
          dispatcher: this.deps.dispatcher,
          signal: this.deps.signal,
          headersTimeout: REQUEST_TIMEOUT_MS,
          bodyTimeout: REQUEST_TIMEOUT_MS,
        });
      } catch (err) {
        const e = err as { code?: string; message?: string };
        throw new MailboxError('MAILBOX_NETWORK', `Graph ${method} ${pathOf(url)}: ${e.message ?? String(err)}`, { cause: err });
      }
      if (res.statusCode === 401 && !refreshed) {
        // The token expired early or was revoked: one retry with a new one.
        await res.body.dump();
        this.deps.tokens.invalidate();
        refreshed = true;
        continue;
      }
      if (THROTTLED.has(res.statusCode)) {
        const header = res.headers['retry-after'];
        const asked = retryAfterMs(Array.isArray(header) ? header[0] : header, this.deps.clock.now(), MAX_RETRY_AFTER_MS);
        const wait = asked ?? (this.deps.defaultRetryMs ?? 5000) * 2 ** Math.min(attempt, 5);
        await res.body.dump();
        const cap = this.deps.maxRetryAfterMs ?? 120_000;
        if (attempt >= maxRetries || wait > cap) {
          throw new MailboxError('MAILBOX_SERVER', `Graph ${method} ${pathOf(url)} answered ${res.statusCode}${asked !== undefined ? ` with Retry-After ${Math.ceil(asked / 1000)} s` : ''}`, { retryAfterMs: wait });
        }
        this.throttled++;
        await sleep(wait, this.deps.signal);
        continue;
      }
      return { status: res.statusCode, headers: res.headers, body: res.body };
    }
  }
}

/** The path of a Graph URL without its query (delta and skip tokens stay out of logs). */
function pathOf(url: string): string {
  try {
    return new URL(url).pathname;
  } catch {
    return '(bad url)';
  }
}

function graphError(method: string, url: string, status: number, text: string): MailboxError {
  let detail = '';
  try {
    const body = JSON.parse(text) as { error?: { code?: string; message?: string } };
    if (body.error) detail = `: ${body.error.code ?? ''}${body.error.message ? ` ${body.error.message.split(/\r?\n/)[0]!.trim()}` : ''}`;
  } catch {
    /* not JSON */
  }
  // Graph's 403 says "Access is denied. Check credentials and try again.": say which permission. Reads refused: no
  // Mail.ReadWrite (or Mail.Read) granted, or an application access policy leaves this mailbox out; only changes
  // refused: Mail.Read granted where Mail.ReadWrite is needed. (Each failed pass fetches a new token, which carries
  // permissions granted meanwhile.)
  if (status === 403) {
    detail +=
      method === 'GET'
        ? '; the application needs the Mail.ReadWrite application permission (admin consent granted), and an application access policy, if the tenant has one, must include this mailbox'
        : '; reading is allowed but changing is not: the application needs Mail.ReadWrite, not only Mail.Read (application permission, admin consent granted)';
  }
  const code = status === 401 || status === 403 ? 'MAILBOX_AUTH_FAILED' : status === 404 ? 'MAILBOX_NOT_FOUND' : 'MAILBOX_SERVER';
  return new MailboxError(code, `Graph ${method} ${pathOf(url)} answered ${status}${detail}`, { userFault: status === 401 || status === 403 || status === 404 });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}
