// Sends one webhook request with undici through an injected dispatcher, bounded in time and in what it reads back.
import type { Dispatcher } from 'undici';
import type { EncodedRequest } from './formats/types.js';

export interface HttpResult {
  status: number;
  retryAfter: string | undefined;
  /** the Location header of a 3xx answer, resolved against the request's URL (redirects are not followed) */
  location?: string | undefined;
  /** the first bytes of the response body, for the attempt log */
  bodySnippet: string;
}

/** Where a request goes, parsed once per URL (see WebhookTargets), as undici's dispatch takes it. */
export interface WebhookTarget {
  origin: string;
  path: string;
}

const SNIPPET_BYTES = 512;
/** A response body past this is not read further (the connection is dropped): it does not hold the delivery. */
const MAX_READ_BYTES = 64 * 1024;

/** The request's deadline passed (the whole exchange, not only the wait for headers). */
export class WebhookTimeoutError extends Error {
  readonly code = 'TIMEOUT';
  constructor(timeoutMs: number) {
    super(`no complete response within ${timeoutMs} ms`);
    this.name = 'WebhookTimeoutError';
  }
}

/** The parsed form of each webhook URL the worker sends to; the URLs come from the configuration, so few. */
export class WebhookTargets {
  private readonly byUrl = new Map<string, WebhookTarget>();

  of(url: string): WebhookTarget {
    let t = this.byUrl.get(url);
    if (!t) {
      const u = new URL(url);
      this.byUrl.set(url, (t = { origin: u.origin, path: `${u.pathname}${u.search}` }));
    }
    return t;
  }
}

/**
 * Sends the request and reads at most the start of the answer. undici's dispatch with a handler of its own, not
 * request(): request() adds a response stream, an abort signal and listeners per call, which together cost more
 * than the exchange itself on loopback (a micro-benchmark: 133-164 against 79-94 µs per request, client and
 * server together). One plain timer is the deadline; `signal` (shutdown) aborts as well.
 */
export function sendWebhook(dispatcher: Dispatcher, target: WebhookTarget, req: EncodedRequest, timeoutMs: number, signal?: AbortSignal): Promise<HttpResult> {
  if (signal?.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<HttpResult>((resolve, reject) => {
    let controller: Dispatcher.DispatchController | undefined;
    let abortWith: Error | undefined;
    let settled = false;
    let status = 0;
    let retryAfter: string | undefined;
    let location: string | undefined;
    let snippet = '';
    let read = 0;
    // Before undici starts the request (it may wait for a connection), the deadline still ends the attempt at
    // once; the request is aborted when it starts.
    const abort = (err: Error): void => {
      if (controller) return controller.abort(err);
      abortWith ??= err;
      finish(err);
    };
    const timer = setTimeout(() => abort(new WebhookTimeoutError(timeoutMs)), timeoutMs);
    const onAbort = (): void => abort((signal as AbortSignal).reason as Error);
    signal?.addEventListener('abort', onAbort, { once: true });
    const finish = (err: Error | null): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve({ status, retryAfter, location, bodySnippet: snippet });
    };
    const handler: Dispatcher.DispatchHandler = {
      onRequestStart(c) {
        controller = c;
        if (abortWith) c.abort(abortWith);
      },
      onResponseStart(_c, statusCode, headers) {
        if (statusCode < 200) return; // informational; the answer follows
        status = statusCode;
        const ra = headers['retry-after'];
        retryAfter = Array.isArray(ra) ? ra[0] : ra;
        if (statusCode < 400) {
          const loc = headers.location;
          const raw = Array.isArray(loc) ? loc[0] : loc;
          // A relative Location ("/hooks/v2") is resolved against the request's URL, so it can go in webhook.url.
          const base = `${target.origin}${target.path}`;
          location = raw !== undefined && URL.canParse(raw, base) ? new URL(raw, base).href : raw;
        }
      },
      onResponseData(c, chunk) {
        if (read < SNIPPET_BYTES) snippet += chunk.subarray(0, SNIPPET_BYTES - read).toString('utf8');
        read += chunk.length;
        if (read > MAX_READ_BYTES && !settled) {
          finish(null); // the status and the snippet are what counts; the rest is not read
          c.abort(new Error('response body not read past 64 KiB'));
        }
      },
      onResponseEnd() {
        finish(null);
      },
      onResponseError(_c, err) {
        finish(err);
      },
    };
    try {
      dispatcher.dispatch(
        {
          origin: target.origin,
          path: target.path,
          method: req.method ?? 'POST',
          headers: { 'user-agent': 'mailhook', ...req.headers },
          body: req.body,
          // The timer above is the deadline; undici's own are only a backstop behind it.
          headersTimeout: timeoutMs * 2,
          bodyTimeout: timeoutMs * 2,
        },
        handler,
      );
    } catch (err) {
      finish(err as Error);
    }
  });
}
