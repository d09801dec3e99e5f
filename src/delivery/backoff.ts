// Retry schedule: exponential backoff with jitter, honouring Retry-After. Pure; time and randomness come in.
import type { Random } from '../core/clock.js';

export interface RetryPolicy {
  initial_delay_ms: number;
  max_delay_ms: number;
  max_attempts: number;
}

/** Longest Retry-After honoured; a consumer asking for more gets this (a day), so a typo cannot park mail for ever. */
export const MAX_RETRY_AFTER_MS = 24 * 3600 * 1000;

/**
 * Longest a route pauses for a consumer's Retry-After (the delivery that got it waits the whole Retry-After, up to
 * MAX_RETRY_AFTER_MS): one answer should not stop a route's new mail for long; after the pause one new attempt asks
 * again.
 */
export const ROUTE_PAUSE_MAX_MS = 5 * 60_000;

/**
 * Delay before attempt `attempt + 1`, after `attempt` attempts have failed (attempt >= 1).
 * The exponential step is initial · 2^(attempt-1), capped at max_delay_ms; "equal jitter" keeps
 * at least half of it so retries never bunch up at zero.
 */
export function backoffDelay(policy: RetryPolicy, attempt: number, random: Random): number {
  const exp = Math.min(policy.max_delay_ms, policy.initial_delay_ms * 2 ** Math.min(Math.max(attempt - 1, 0), 40));
  return Math.round(exp / 2 + random() * (exp / 2));
}

/** Parses a Retry-After header (RFC 9110 §10.2.3): delay-seconds or an HTTP-date. Returns ms or undefined. */
export function parseRetryAfter(value: string | undefined, now: number): number | undefined {
  if (!value) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Math.min(Number(trimmed) * 1000, MAX_RETRY_AFTER_MS);
  const at = Date.parse(trimmed);
  if (Number.isNaN(at)) return undefined;
  return Math.min(Math.max(at - now, 0), MAX_RETRY_AFTER_MS);
}

/** When the next attempt is due: the later of our backoff and the consumer's Retry-After. */
export function nextAttemptAt(policy: RetryPolicy, attempt: number, now: number, random: Random, retryAfterMs?: number): number {
  const delay = backoffDelay(policy, attempt, random);
  return now + Math.max(delay, retryAfterMs ?? 0);
}
