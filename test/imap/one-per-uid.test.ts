// onePerUid (pure): the rows of a UID FETCH, one per UID asked for, with unsolicited updates that name the UID merged in.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { onePerUid } from '../../src/imap/bridge.js';

type Row = { seq: number; uid?: number; flags?: Set<string>; modseq?: bigint; size?: number; internalDate?: Date; headers?: Buffer };

async function* rows(...list: Row[]): AsyncIterable<Row> {
  yield* list;
}

const date = new Date('2025-03-03T10:00:00Z');
const headers = Buffer.from('Message-ID: <a@x>\r\n\r\n');

test('a flags update naming the UID after the solicited row: one row, the solicited attributes kept, the newer flags and mod-sequence taken', async () => {
  const got = await onePerUid(
    rows(
      { seq: 1, uid: 7, flags: new Set(['\\Recent']), modseq: 5n, size: 210, internalDate: date, headers },
      { seq: 1, uid: 7, flags: new Set(['\\Recent', '\\Flagged']), modseq: 9n },
    ),
    new Set([7]),
  );
  assert.deepEqual(got, [{ seq: 1, uid: 7, flags: new Set(['\\Recent', '\\Flagged']), modseq: 9n, size: 210, internalDate: date, headers }]);
});

test('an update before the solicited row: the solicited row, later, gives the flags; attributes a row leaves undefined are not erased', async () => {
  const got = await onePerUid(
    rows(
      { seq: 2, uid: 8, flags: new Set(['\\Flagged']), modseq: 4n },
      { seq: 2, uid: 8, flags: new Set(), modseq: 6n, size: 99, internalDate: date, headers },
      { seq: 2, uid: 8, flags: new Set(['\\Answered']), modseq: 7n, size: undefined, headers: undefined },
    ),
    new Set([8]),
  );
  assert.deepEqual(got, [{ seq: 2, uid: 8, flags: new Set(['\\Answered']), modseq: 7n, size: 99, internalDate: date, headers }]);
});

test('rows without a UID (Dovecot\'s updates) and for UIDs not asked are dropped; each asked UID once, in the order first seen', async () => {
  const got = await onePerUid(
    rows(
      { seq: 3, uid: 12, size: 1 },
      { seq: 1, flags: new Set(['\\Seen']), modseq: 20n },
      { seq: 2, uid: 10, size: 2 },
      { seq: 4, uid: 99, flags: new Set(), modseq: 21n },
      { seq: 3, uid: 12, flags: new Set(['\\Seen']) },
    ),
    new Set([10, 12]),
  );
  assert.deepEqual(got, [
    { seq: 3, uid: 12, size: 1, flags: new Set(['\\Seen']) },
    { seq: 2, uid: 10, size: 2 },
  ]);
  assert.deepEqual(await onePerUid(rows(), new Set([1])), []);
});

test('FLAGS and MODSEQ stay one state: an older state arriving later, or a MODSEQ without FLAGS, does not replace them; a higher MODSEQ is reported as changed, the same one is not', async () => {
  const changed = new Set<number>();
  const got = await onePerUid(
    rows(
      { seq: 1, uid: 5, flags: new Set(['\\Flagged']), modseq: 9n, size: 10 },
      { seq: 1, uid: 5, flags: new Set(), modseq: 5n },
      { seq: 1, uid: 5, modseq: 12n },
      { seq: 2, uid: 6, flags: new Set(), modseq: 3n, size: 20 },
      { seq: 2, uid: 6, flags: new Set(), modseq: 3n },
      { seq: 3, uid: 7, flags: new Set(), modseq: 3n, size: 30 },
      { seq: 3, uid: 7, flags: new Set(['$MailhookClaimed']), modseq: 4n },
    ),
    new Set([5, 6, 7]),
    changed,
  );
  assert.deepEqual(got, [
    { seq: 1, uid: 5, flags: new Set(['\\Flagged']), modseq: 9n, size: 10 },
    { seq: 2, uid: 6, flags: new Set(), modseq: 3n, size: 20 },
    { seq: 3, uid: 7, flags: new Set(['$MailhookClaimed']), modseq: 4n, size: 30 },
  ]);
  assert.deepEqual([...changed], [7], 'only 7 moved on (5 got an older state and a bare MODSEQ, 6 the same state again)');
  // Without CONDSTORE: other flags are a change, the same flags are not.
  const plain = new Set<number>();
  await onePerUid(rows({ seq: 1, uid: 1, flags: new Set(['\\Seen']) }, { seq: 1, uid: 1, flags: new Set(['\\Seen']) }, { seq: 2, uid: 2, flags: new Set() }, { seq: 2, uid: 2, flags: new Set(['\\Seen']) }), new Set([1, 2]), plain);
  assert.deepEqual([...plain], [2]);
});
