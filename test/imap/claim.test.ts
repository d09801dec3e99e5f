// Claim helpers (pure): UID sets both ways and the stale-claim timer.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ClaimTracker, parseSequenceSet, toSequenceSet } from '../../src/imap/claim.js';

test('UID sets: compressed ascending, expanded back', () => {
  assert.equal(toSequenceSet([5, 1, 2, 3, 9, 10, 3]), '1:3,5,9:10');
  assert.equal(toSequenceSet([7]), '7');
  assert.equal(toSequenceSet([]), '');
  assert.deepEqual(parseSequenceSet('1:3,5,10:9'), [1, 2, 3, 5, 9, 10]);
  assert.deepEqual(parseSequenceSet(''), []);
  const uids = [4, 8, 15, 16, 23, 42, 43, 44];
  assert.deepEqual(parseSequenceSet(toSequenceSet(uids)), uids);
});

test('a claim is stale only after it stayed unchanged for the timeout', () => {
  const t = new ClaimTracker(1000);
  assert.equal(t.isStale(7, 10n, 0), false, 'first sighting starts the timer');
  assert.equal(t.nextExpiry(), 1000);
  assert.equal(t.isStale(7, 10n, 999), false);
  assert.equal(t.isStale(7, 10n, 1000), true);
  assert.equal(t.modseqOf(7), 10n);
  // The holder touched it (mod-sequence moved): alive, the timer restarts.
  assert.equal(t.isStale(7, 11n, 1500), false);
  assert.equal(t.isStale(7, 11n, 2400), false);
  assert.equal(t.isStale(7, 11n, 2500), true);
});

test('forgotten and retained entries; no expiry without watched claims', () => {
  const t = new ClaimTracker(1000);
  t.isStale(1, 1n, 0);
  t.isStale(2, 1n, 500);
  t.retain(new Set([2]));
  assert.equal(t.modseqOf(1), undefined);
  assert.equal(t.nextExpiry(), 1500);
  t.forget(2);
  assert.equal(t.nextExpiry(), undefined);
});
