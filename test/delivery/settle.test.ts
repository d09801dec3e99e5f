// When the delivery loop records finished attempts: at once when a slot would idle, together when nothing waits on it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SETTLE_COALESCE_MS, settleDelayMs } from '../../src/delivery/worker.js';

test('a finished attempt whose slot nobody waits for is recorded (and its place leased) at once', () => {
  assert.equal(settleDelayMs({ waitingForSlot: 0, finished: 1, perRouteConcurrency: 4 }), 0);
});

test('while prepared attempts wait for the freed slot, recording waits briefly to share one transaction', () => {
  assert.ok(SETTLE_COALESCE_MS > 0 && SETTLE_COALESCE_MS <= 5, 'short against a webhook round trip');
  assert.equal(settleDelayMs({ waitingForSlot: 3, finished: 1, perRouteConcurrency: 4 }), SETTLE_COALESCE_MS);
  assert.equal(settleDelayMs({ waitingForSlot: 1, finished: 3, perRouteConcurrency: 4 }), SETTLE_COALESCE_MS);
  assert.equal(settleDelayMs({ waitingForSlot: 1, finished: 3, perRouteConcurrency: 4, coalesceMs: 300 }), 300, 'the window passed in');
});

test('once as many attempts finished as a route has slots, they are recorded at once', () => {
  assert.equal(settleDelayMs({ waitingForSlot: 3, finished: 4, perRouteConcurrency: 4 }), 0);
  assert.equal(settleDelayMs({ waitingForSlot: 5, finished: 1, perRouteConcurrency: 1 }), 0);
});
