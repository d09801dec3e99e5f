// The bench's timed-run order: every setup runs in every position of a round over as many rounds as setups.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { roundOrder } from '../../bench/lib/throughput.js';

test('roundOrder rotates the setups by one each round, so each takes every position once', () => {
  const setups = ['mailhook', 'mailhook-accept', 'baseline', 'baseline-accept'];
  const rounds = [0, 1, 2, 3].map((r) => roundOrder(setups, r));
  assert.deepEqual(rounds[0], setups);
  assert.deepEqual(rounds[1], ['mailhook-accept', 'baseline', 'baseline-accept', 'mailhook']);
  for (const round of rounds) assert.deepEqual([...round].sort(), [...setups].sort(), 'each round runs every setup once');
  for (let pos = 0; pos < setups.length; pos++) {
    assert.deepEqual(new Set(rounds.map((r) => r[pos])).size, setups.length, `position ${pos} is taken by each setup once`);
  }
  assert.deepEqual(roundOrder(setups, 4), setups, 'the fifth round starts again');
  assert.deepEqual(roundOrder([], 2), []);
  assert.deepEqual(setups, ['mailhook', 'mailhook-accept', 'baseline', 'baseline-accept'], 'the list given is not changed');
});
