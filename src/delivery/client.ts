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

export async function sendWebhook(dispatcher: Dispatcher, url: string, req: EncodedRequest, timeoutMs: number, signal?: AbortSignal): Promise<HttpResult> {
  const timeout = AbortSignal.timeout(timeoutMs);
  const res = await request(req.url ?? url, {
    method: req.method ?? 'POST',
    headers: { 'user-agent': 'mailhook', ...req.headers },
    body: req.body,
    dispatcher,
    signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
    headersTimeout: timeoutMs,
    bodyTimeout: timeoutMs,
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
