// Live recipient verification: ask the route's application at RCPT whether a key exists, signed, with a cache.
import { randomBytes } from 'node:crypto';
import { request, type Dispatcher } from 'undici';
import type { Clock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import { standardWebhookHeaders } from '../delivery/sign.js';

export interface VerifyTarget {
  route: string;
  url: string;
  timeoutMs: number;
  cacheTtlMs: number;
  /** the route's webhook key: the request is signed like a webhook (Standard Webhooks headers) */
  signingKey: Buffer | undefined;
}

/** exists: 250; unknown: 550 5.1.1; unavailable (down, slow, any other answer): 451 4.3.0, never 250. */
export type VerifyAnswer = 'exists' | 'unknown' | 'unavailable';

export interface VerifierDeps {
  clock: Clock;
  log: Logger;
  dispatcher?: Dispatcher;
  /** cached answers kept at most; the oldest go first */
  maxEntries?: number;
}

/**
 * The contract with the application: POST {route, address, key} as JSON; 200 or 204 means the recipient
 * exists, 404 or 410 that it does not. Positive and negative answers are cached for cache_ttl_s; failures
 * are not, so the next RCPT asks again.
 */
export class RecipientVerifier {
  private readonly cache = new Map<string, { answer: 'exists' | 'unknown'; expires: number }>();
  private readonly inFlight = new Map<string, Promise<VerifyAnswer>>();
  private readonly maxEntries: number;

  constructor(private readonly deps: VerifierDeps) {
    this.maxEntries = deps.maxEntries ?? 10_000;
  }

  async check(target: VerifyTarget, address: string, key: string | null): Promise<VerifyAnswer> {
    const cacheKey = `${target.route}\u0000${address}`;
    const now = this.deps.clock.now();
    const hit = this.cache.get(cacheKey);
    if (hit && hit.expires > now) return hit.answer;
    if (hit) this.cache.delete(cacheKey);
    const pending = this.inFlight.get(cacheKey);
    if (pending) return pending;
    const p = this.ask(target, address, key).then((answer) => {
      if (answer !== 'unavailable' && target.cacheTtlMs > 0) {
        if (this.cache.size >= this.maxEntries) {
          const oldest = this.cache.keys().next();
          if (!oldest.done) this.cache.delete(oldest.value);
        }
        this.cache.set(cacheKey, { answer, expires: this.deps.clock.now() + target.cacheTtlMs });
      }
      return answer;
    });
    this.inFlight.set(cacheKey, p);
    try {
      return await p;
    } finally {
      this.inFlight.delete(cacheKey);
    }
  }

  get cacheSize(): number {
    return this.cache.size;
  }

  private async ask(target: VerifyTarget, address: string, key: string | null): Promise<VerifyAnswer> {
    const body = JSON.stringify({ type: 'recipient.verify', route: target.route, address, key });
    const id = `verify_${randomBytes(12).toString('hex')}`;
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (target.signingKey) Object.assign(headers, standardWebhookHeaders(target.signingKey, id, Math.floor(this.deps.clock.now() / 1000), body));
    const started = this.deps.clock.now();
    try {
      const res = await request(target.url, {
        method: 'POST',
        headers,
        body,
        signal: AbortSignal.timeout(target.timeoutMs),
        ...(this.deps.dispatcher ? { dispatcher: this.deps.dispatcher } : {}),
      });
      await res.body.dump();
      if (res.statusCode === 200 || res.statusCode === 204) return 'exists';
      if (res.statusCode === 404 || res.statusCode === 410) return 'unknown';
      this.deps.log.warn({ route: target.route, status: res.statusCode }, 'recipient verification answered neither yes nor no; RCPT deferred');
      return 'unavailable';
    } catch (err) {
      this.deps.log.warn({ route: target.route, err: (err as Error).message, ms: this.deps.clock.now() - started }, 'recipient verification failed; RCPT deferred');
      return 'unavailable';
    }
  }
}
