import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backoffDelay, nextAttemptAt, parseRetryAfter, MAX_RETRY_AFTER_MS, type RetryPolicy } from '../../src/delivery/backoff.js';
import { parseTestConfig, tempDir } from '../helpers/app.js';
import { classifyStatus } from '../../src/delivery/classify.js';

const policy = { initial_delay_ms: 1000, max_delay_ms: 60_000, max_attempts: 10 };

test('backoff doubles per attempt within [half, full] of the step', () => {
  assert.equal(backoffDelay(policy, 1, () => 0), 500);
  assert.equal(backoffDelay(policy, 1, () => 0.999999), 1000);
  assert.equal(backoffDelay(policy, 3, () => 0), 2000);
  assert.equal(backoffDelay(policy, 3, () => 0.5), 3000);
});

test('backoff is capped at max_delay_ms, even for huge attempt numbers', () => {
  assert.equal(backoffDelay(policy, 50, () => 0.999999), 60_000);
  assert.equal(backoffDelay(policy, 1000, () => 0), 30_000);
});

test('Retry-After in seconds or as an HTTP date; the later of it and the backoff wins', () => {
  const now = Date.parse('2026-01-01T00:00:00Z');
  assert.equal(parseRetryAfter('120', now), 120_000);
  assert.equal(parseRetryAfter('Thu, 01 Jan 2026 00:00:30 GMT', now), 30_000);
  assert.equal(parseRetryAfter('garbage', now), undefined);
  assert.equal(parseRetryAfter('99999999', now), MAX_RETRY_AFTER_MS);
  assert.equal(nextAttemptAt(policy, 1, now, () => 0, 120_000), now + 120_000);
  assert.equal(nextAttemptAt(policy, 1, now, () => 0, 10), now + 500);
});

test('status classification', () => {
  assert.equal(classifyStatus(200).kind, 'delivered');
  assert.equal(classifyStatus(204).kind, 'delivered');
  for (const s of [500, 502, 503, 408, 429]) assert.equal(classifyStatus(s).kind, 'retry', String(s));
  for (const s of [400, 404, 410, 413, 422]) assert.equal(classifyStatus(s).kind, 'dead', String(s));
  assert.equal(classifyStatus(401).kind, 'dead');
  for (const s of [301, 302, 303, 307, 308]) assert.deepEqual(classifyStatus(s, 'https://new.example/hook'), { kind: 'dead', loud: true, reason: `HTTP ${s}: the consumer redirects to https://new.example/hook; redirects are not followed: set the route's webhook.url to the new address` });
  assert.match((classifyStatus(302) as { reason: string }).reason, /redirects \(no Location header\)/);
});

/** From the first attempt to the last of a delivery failing every one (no Retry-After): the backoffs' sum, least and most. */
function retryWindowMs(policy: RetryPolicy): { min: number; max: number } {
  let min = 0;
  let max = 0;
  for (let attempt = 1; attempt < policy.max_attempts; attempt++) {
    min += backoffDelay(policy, attempt, () => 0);
    max += backoffDelay(policy, attempt, () => 1);
  }
  return { min, max };
}

test('the default retry window (README, docs/configuration.md): a delivery failing every attempt is dead-lettered 5.2 to 10.4 hours after its first', () => {
  const { retry } = parseTestConfig('routes:\n  - { name: r, addresses: ["a@x.test"], sink: true }\n', tempDir()).delivery;
  assert.deepEqual(retry, { initial_delay_ms: 5000, max_delay_ms: 3_600_000, max_attempts: 20 });
  // 5 s, 10 s, … 2,560 s, then 9 × 3,600 s (each between half and all of it): 37,515 s at most.
  assert.deepEqual(retryWindowMs(retry), { min: 18_757_500, max: 37_515_000 });
  assert.deepEqual(retryWindowMs({ initial_delay_ms: 1000, max_delay_ms: 60_000, max_attempts: 1 }), { min: 0, max: 0 });
});
