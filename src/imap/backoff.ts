// Reconnect schedule for mailbox bridges and Retry-After parsing for Graph (pure; randomness comes in).
import type { Random } from '../core/clock.js';

export interface ReconnectPolicy {
  initialDelayMs: number;
  maxDelayMs: number;
}

/**
 * Delay before reconnect attempt `failures + 1`, after `failures` consecutive failures (>= 1).
 * Capped exponential (initial · 2^(failures-1), at most maxDelayMs) with "equal jitter": a uniform
 * value in [step/2, step], so instances that lost the same server do not come back in lockstep and
 * a delay never collapses to zero.
 */
export function reconnectDelay(policy: ReconnectPolicy, failures: number, random: Random): number {
  const n = Math.min(Math.max(failures, 1) - 1, 40);
  const step = Math.min(policy.maxDelayMs, policy.initialDelayMs * 2 ** n);
  return Math.round(step / 2 + random() * (step / 2));
}

/**
 * A Retry-After header (RFC 9110 §10.2.3: delay-seconds or an HTTP-date) as milliseconds from `now`,
 * capped at `maxMs`; undefined when absent or unreadable.
 */
export function retryAfterMs(value: string | null | undefined, now: number, maxMs: number): number | undefined {
  if (value === null || value === undefined) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Math.min(Number(trimmed) * 1000, maxMs);
  const at = Date.parse(trimmed);
  if (Number.isNaN(at)) return undefined;
  return Math.min(Math.max(at - now, 0), maxMs);
}
