// The reconnect schedule (pure): capped exponential with equal jitter; Retry-After for Graph.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { reconnectDelay, retryAfterMs } from '../../src/imap/backoff.js';

const policy = { initialDelayMs: 1000, maxDelayMs: 60_000 };

test('doubles per consecutive failure, within [half, full] of the step', () => {
  assert.deepEqual([1, 2, 3, 4].map((f) => reconnectDelay(policy, f, () => 0)), [500, 1000, 2000, 4000]);
  assert.deepEqual([1, 2, 3, 4].map((f) => reconnectDelay(policy, f, () => 0.999999)), [1000, 2000, 4000, 8000]);
  assert.equal(reconnectDelay(policy, 3, () => 0.5), 3000);
});

test('capped at the maximum however many failures; never zero', () => {
  assert.equal(reconnectDelay(policy, 7, () => 0.999999), 60_000);
  assert.equal(reconnectDelay(policy, 10_000, () => 0.999999), 60_000);
  assert.equal(reconnectDelay(policy, 10_000, () => 0), 30_000);
  assert.equal(reconnectDelay(policy, 0, () => 0), 500, 'zero failures counts as one');
  assert.ok(reconnectDelay({ initialDelayMs: 1, maxDelayMs: 1 }, 1, () => 0) > 0);
});

test('jitter spreads instances that lost the same server', () => {
  const delays = new Set(Array.from({ length: 50 }, (_, i) => reconnectDelay(policy, 5, () => i / 50)));
  assert.ok(delays.size > 40);
  assert.ok([...delays].every((d) => d >= 8000 && d <= 16_000));
});

test('Retry-After: seconds or an HTTP date, capped; unreadable is undefined', () => {
  const now = Date.parse('2026-01-01T00:00:00Z');
  assert.equal(retryAfterMs('3', now, 120_000), 3000);
  assert.equal(retryAfterMs(' 0 ', now, 120_000), 0);
  assert.equal(retryAfterMs('Thu, 01 Jan 2026 00:00:10 GMT', now, 120_000), 10_000);
  assert.equal(retryAfterMs('Wed, 31 Dec 2025 00:00:10 GMT', now, 120_000), 0);
  assert.equal(retryAfterMs('86400', now, 120_000), 120_000);
  assert.equal(retryAfterMs('soon', now, 120_000), undefined);
  assert.equal(retryAfterMs(undefined, now, 120_000), undefined);
});
