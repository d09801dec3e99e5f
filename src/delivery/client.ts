// Sends one webhook request with undici through an injected dispatcher, bounded in time and in what it reads back.
import { request, type Dispatcher } from 'undici';
import type { EncodedRequest } from './formats/types.js';

export interface HttpResult {
  status: number;
  retryAfter: string | undefined;
  /** the first bytes of the response body, for the attempt log */
  bodySnippet: string;
}

const SNIPPET_BYTES = 512;

/** The request's deadline passed (the whole exchange, not only the wait for headers). */
export class WebhookTimeoutError extends Error {
  readonly code = 'TIMEOUT';
  constructor(timeoutMs: number) {
    super(`no complete response within ${timeoutMs} ms`);
    this.name = 'WebhookTimeoutError';
  }
}

export async function sendWebhook(dispatcher: Dispatcher, url: string, req: EncodedRequest, timeoutMs: number, signal?: AbortSignal): Promise<HttpResult> {
  // One controller and one plain timer per request: AbortSignal.timeout() and AbortSignal.any() cost several
  // times more per call (weakly held timers and signals), which showed in delivery profiles.
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(new WebhookTimeoutError(timeoutMs)), timeoutMs);
  const onAbort = (): void => ac.abort((signal as AbortSignal).reason);
  if (signal?.aborted) onAbort();
  else signal?.addEventListener('abort', onAbort, { once: true });
  try {
    return await exchange(dispatcher, url, req, timeoutMs, ac.signal);
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
  }
}

async function exchange(dispatcher: Dispatcher, url: string, req: EncodedRequest, timeoutMs: number, signal: AbortSignal): Promise<HttpResult> {
  const res = await request(req.url ?? url, {
    method: req.method ?? 'POST',
    headers: { 'user-agent': 'mailhook', ...req.headers },
    body: req.body,
    dispatcher,
    signal,
    // The timer in sendWebhook is the deadline; undici's own are only a backstop behind it.
    headersTimeout: timeoutMs * 2,
    bodyTimeout: timeoutMs * 2,
  });
  let snippet = '';
  let read = 0;
  for await (const chunk of res.body) {
    if (read < SNIPPET_BYTES) snippet += (chunk as Buffer).subarray(0, SNIPPET_BYTES - read).toString('utf8');
    read += (chunk as Buffer).length;
    if (read > 64 * 1024) {
      res.body.destroy(); // a consumer that streams back megabytes does not hold the delivery
      break;
    }
  }
  const ra = res.headers['retry-after'];
  return { status: res.statusCode, retryAfter: Array.isArray(ra) ? ra[0] : ra, bodySnippet: snippet };
}
