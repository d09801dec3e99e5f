// The list of Graph messages passed over: each one's own backoff, its new id after a claim given back, the bound,
// and its saved form (a restart keeps it; another endpoint, user or folder does not use it).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FailingMessages, type FailingMessagesOptions } from '../../src/imap/graph/failing.js';

function list(o: Partial<FailingMessagesOptions> & { store?: { value?: string } } = {}): FailingMessages {
  const store = o.store ?? {};
  return new FailingMessages({
    policy: { initialDelayMs: 1000, maxDelayMs: 8000 },
    random: () => 1, // the longest delay of each step: exact figures
    max: 3,
    scope: 'https://graph.example u@x inbox',
    load: () => store.value,
    save: (v) => (store.value = v),
    ...o,
  });
}

test('each failure doubles that message’s own delay up to the maximum; due() gives the ones whose time came, earliest first', () => {
  const f = list();
  assert.equal(f.failed('a', 'a', 'mid:a:1', 0)!.nextAt, 1000);
  assert.equal(f.failed('a', 'a', undefined, 1000)!.nextAt, 3000);
  assert.equal(f.failed('a', 'a', undefined, 3000)!.nextAt, 7000);
  assert.equal(f.failed('a', 'a', undefined, 7000)!.nextAt, 15_000);
  const a = f.failed('a', 'a', undefined, 15_000)!;
  assert.deepEqual(a, { id: 'a', ident: 'mid:a:1', tries: 5, nextAt: 23_000, since: 0 }, 'capped at 8 s; identity and first failure kept');
  f.failed('b', 'b', undefined, 20_000); // due at 21,000
  assert.deepEqual(f.due(22_000).map((m) => m.id), ['b']);
  assert.deepEqual(f.due(30_000).map((m) => m.id), ['b', 'a']);
  assert.equal(f.isWaiting('a', 22_999), true);
  assert.equal(f.isWaiting('a', 23_000), false);
  assert.equal(f.isWaiting('c', 0), false);
});

test('a claim given back gives the message a new id: it is tried under that id, its count carried over', () => {
  const f = list();
  f.failed('old', 'old', undefined, 0);
  const m = f.failed('old', 'new', undefined, 1000)!;
  assert.equal(m.id, 'new');
  assert.equal(m.tries, 2);
  assert.equal(f.get('old'), undefined);
  assert.equal(f.size, 1);
});

test('past max a new failure is not recorded (the caller keeps its delta link); one already listed still is', () => {
  const f = list();
  for (const id of ['a', 'b', 'c']) assert.ok(f.failed(id, id, undefined, 0));
  assert.equal(f.failed('d', 'd', undefined, 0), undefined);
  assert.equal(f.size, 3);
  assert.equal(f.failed('a', 'a', undefined, 0)!.tries, 2);
  assert.equal(f.forget('b'), true);
  assert.ok(f.failed('d', 'd', undefined, 0));
  assert.equal(f.forget('zz'), false);
});

test('saved at each change and read back by a new list of the same scope; emptied when none is left; another scope starts empty', () => {
  const store: { value?: string } = {};
  const f = list({ store });
  f.failed('a', 'a', 'mid:a:1', 0);
  f.failed('b', 'b', undefined, 0);
  const g = list({ store });
  assert.equal(g.size, 2);
  assert.deepEqual(g.get('a'), f.get('a'));
  assert.equal(list({ store, scope: 'https://graph.example u@x archive' }).size, 0);
  g.forget('a');
  g.forget('b');
  assert.equal(store.value, undefined, 'nothing left: the saved value is deleted');
  assert.equal(list({ store: { value: '{not json' } }).size, 0);
  assert.equal(list({ store: { value: JSON.stringify({ scope: 'https://graph.example u@x inbox', items: [{ id: 'x' }, { id: 'y', tries: 1, nextAt: 5, since: 1 }] }) } }).size, 1, 'an unreadable entry is dropped');
});
