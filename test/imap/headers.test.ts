// Recipient extraction from headers (pure): address lists, Received "for", header order, and the fixtures' shapes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { addressesIn, envelopeSenderOf, headerEnd, headerSection, messageIdOf, parseHeaderFields, receivedFor } from '../../src/imap/headers.js';
import { candidateRecipients, chooseRecipient, DEFAULT_RECIPIENTS_FROM } from '../../src/imap/recipients.js';
import { Router } from '../../src/routing/router.js';

const fixture = (name: string) => readFileSync(fileURLToPath(new URL(`../fixtures/imap/${name}`, import.meta.url)));
const router = new Router([
  { name: 'tracker', addresses: ['incoming+%{key}@in.test'] },
  { name: 'desk', addresses: ['desk@in.test'] },
]);
const fieldsOf = (raw: Buffer | string) => parseHeaderFields(headerSection(Buffer.isBuffer(raw) ? raw : Buffer.from(raw)));
const pick = (raw: Buffer | string, order = DEFAULT_RECIPIENTS_FROM) => chooseRecipient(fieldsOf(raw), order, (a) => router.match(a));

test('address lists: display names, quoted commas, comments, groups, obsolete routes', () => {
  assert.deepEqual(addressesIn('Ana <ana@a.test>, "Doe, Jo" <jo@b.test>'), ['ana@a.test', 'jo@b.test']);
  assert.deepEqual(addressesIn('"x@decoy.test" <real@a.test>'), ['real@a.test']);
  assert.deepEqual(addressesIn('bare@a.test (Bare, Person)'), ['bare@a.test']);
  assert.deepEqual(addressesIn('Team: one@a.test, two@a.test;, three@a.test'), ['one@a.test', 'two@a.test', 'three@a.test']);
  assert.deepEqual(addressesIn('undisclosed-recipients:;'), []);
  assert.deepEqual(addressesIn('<@relay.test,@other.test:user@a.test>'), ['user@a.test']);
  assert.deepEqual(addressesIn('=?utf-8?Q?J=C3=B6rg?= <joerg@a.test>'), ['joerg@a.test']);
  assert.deepEqual(addressesIn('support@a.test Accept-Language: de-DE, en-US'), ['support@a.test']);
  assert.deepEqual(addressesIn('<incoming+k@in.test>'), ['incoming+k@in.test']);
  assert.deepEqual(addressesIn('no address here'), []);
});

test('Received "for": angle brackets or bare, folded, never from a comment', () => {
  assert.equal(receivedFor('from a by b with ESMTP id 1 for <x+1@in.test>; Mon, 3 Mar 2025'), 'x+1@in.test');
  assert.equal(receivedFor('from a by b id 2 for x+2@in.test; Mon, 3 Mar 2025'), 'x+2@in.test');
  assert.equal(receivedFor('from a by b (comment for <decoy@in.test>) id 3; Mon'), undefined);
  assert.equal(receivedFor('from a by b with LMTPA; Mon, 3 Mar 2025'), undefined);
  assert.equal(receivedFor('by b with SMTP id f4 for <x+4@in.test> (Google Transport Security); Mon'), 'x+4@in.test');
});

test('header section: CRLF or LF, leading blank lines skipped, no body', () => {
  assert.equal(headerSection(Buffer.from('A: 1\r\nB: 2\r\n\r\nbody')).toString(), 'A: 1\r\nB: 2\r\n');
  assert.equal(headerSection(Buffer.from('\n\nA: 1\n\nbody')).toString(), 'A: 1\n');
  assert.equal(headerSection(Buffer.from('A: 1\r\nB: 2')).toString(), 'A: 1\r\nB: 2');
  assert.equal(headerEnd(Buffer.from('A: 1\r\n\r\nbody')), 8);
  assert.equal(headerEnd(Buffer.from('A: 1\r\nB')), -1);
  const fields = parseHeaderFields('Subject: one\r\n two\r\nX-Y:z\r\nnot a header\r\n');
  assert.deepEqual(fields, [
    { name: 'subject', value: 'one two' },
    { name: 'x-y', value: 'z' },
  ]);
});

test('Message-ID and the envelope sender (Return-Path, else From; <> is the null sender)', () => {
  assert.equal(messageIdOf(fieldsOf('Message-ID: <a@b>\r\n\r\n')), 'a@b');
  assert.equal(messageIdOf(fieldsOf('Subject: x\r\n\r\n')), undefined);
  // Not ids: several messages would share one dedupe key (move claims key by Message-ID) and all but one be lost.
  for (const bad of ['<>', '< >', '<a b@x>', '(none)', 'two words@x', '']) assert.equal(messageIdOf(fieldsOf(`Message-ID: ${bad}\r\n\r\n`)), undefined, JSON.stringify(bad));
  assert.equal(messageIdOf(fieldsOf('Message-ID: bare@x.test\r\n\r\n')), 'bare@x.test', 'a bare id without brackets');
  assert.equal(messageIdOf(fieldsOf('Message-ID: (comment) <c@x.test>\r\n\r\n')), 'c@x.test');
  assert.equal(envelopeSenderOf(fieldsOf('Return-Path: <bounce@a.test>\r\nFrom: x@b.test\r\n\r\n')), 'bounce@a.test');
  assert.equal(envelopeSenderOf(fieldsOf('Return-Path: <>\r\nFrom: x@b.test\r\n\r\n')), '');
  assert.equal(envelopeSenderOf(fieldsOf('From: "X" <x@b.test>\r\n\r\n')), 'x@b.test');
});

test('header order cases from the fixtures (GitLab order: To, Delivered-To, …, Received, …, Cc)', () => {
  const cases: Array<[string, string, string, string]> = [
    // file, header, address, key
    ['delivered-to-first-of-two.eml', 'delivered-to', 'incoming+alpha-42@in.test', 'alpha-42'],
    ['envelope-to-with-display-address.eml', 'envelope-to', 'incoming+beta-7@in.test', 'beta-7'],
    ['x-envelope-to-angle.eml', 'x-envelope-to', 'incoming+gamma-9@in.test', 'gamma-9'],
    ['received-for-folded.eml', 'received', 'incoming+delta-1@in.test', 'delta-1'],
    ['received-for-bare.eml', 'received', 'incoming+epsilon-5@in.test', 'epsilon-5'],
    ['cc-only.eml', 'cc', 'incoming+zeta-3@in.test', 'zeta-3'],
    ['to-beats-delivered-to.eml', 'to', 'incoming+from-to@in.test', 'from-to'],
    ['forwarded-x-forwarded-to.eml', 'x-forwarded-to', 'incoming+eta-8@in.test', 'eta-8'],
    ['leading-blank-line.eml', 'delivered-to', 'incoming+theta-2@in.test', 'theta-2'],
    ['glued-header.eml', 'to', 'incoming+iota-4@in.test', 'iota-4'],
  ];
  for (const [file, header, address, key] of cases) {
    const got = pick(fixture(file));
    assert.deepEqual(got, { header, address, route: 'tracker', key }, file);
  }
  assert.equal(pick(fixture('unmatched.eml')), undefined);
});

test('the configured order decides; a header left out of recipients_from is never read', () => {
  const raw = fixture('to-beats-delivered-to.eml');
  assert.equal(pick(raw, ['delivered-to', 'to'])?.key, 'from-delivered-to');
  assert.equal(pick(fixture('cc-only.eml'), ['to', 'delivered-to', 'received']), undefined);
  // Every candidate, in order, for logs of unmatched messages.
  assert.deepEqual(
    candidateRecipients(fieldsOf(fixture('delivered-to-first-of-two.eml')), DEFAULT_RECIPIENTS_FROM).map((c) => `${c.header}:${c.address}`),
    ['to:help@corp.test', 'delivered-to:incoming+alpha-42@in.test', 'delivered-to:help@corp.test', 'received:incoming+alpha-42@in.test'],
  );
});

test('an exact route beats nothing; the first routed candidate wins even when a later one is more specific', () => {
  const raw = 'To: desk@in.test\r\nCc: incoming+k@in.test\r\n\r\n';
  assert.deepEqual(pick(raw), { header: 'to', address: 'desk@in.test', route: 'desk', key: null });
});

test('quoted local parts: kept quoted when they need it, unquoted when they are a dot-atom (RFC 5321 §4.1.2)', () => {
  assert.deepEqual(addressesIn('"first last"@example.com'), ['"first last"@example.com']);
  assert.deepEqual(addressesIn('"a+b"@example.com'), ['a+b@example.com']);
  assert.deepEqual(addressesIn('First Last <"first last"@example.com>, other@example.com'), ['"first last"@example.com', 'other@example.com']);
  assert.deepEqual(addressesIn('"Doe, Jo" <"a+b"@example.com>'), ['a+b@example.com']);
  assert.deepEqual(addressesIn('"x, y"@example.com, z@example.com'), ['"x, y"@example.com', 'z@example.com'], 'a comma inside the quotes does not split');
  assert.deepEqual(addressesIn('"say \\"hi\\""@example.com'), ['"say \\"hi\\""@example.com'], 'escapes kept for quote and backslash');
  assert.deepEqual(addressesIn('"a>b"@example.com'), ['"a>b"@example.com']);
  assert.deepEqual(addressesIn('"help@corp.test" <real@a.test>'), ['real@a.test'], 'a quoted display name is still not an address');
  assert.equal(receivedFor('from a by b id 5 for <"first last"@in.test>; Mon, 3 Mar 2025'), '"first last"@in.test');
  assert.equal(receivedFor('from a by b id 6 for "incoming+q-1"@in.test; Mon, 3 Mar 2025'), 'incoming+q-1@in.test');
  // Routing sees the canonical form: a quoted key address routes like the unquoted one.
  assert.deepEqual(pick('To: "incoming+q-2"@in.test\r\n\r\n'), { header: 'to', address: 'incoming+q-2@in.test', route: 'tracker', key: 'q-2' });
  assert.deepEqual(pick('To: Desk <"desk"@in.test>\r\n\r\n'), { header: 'to', address: 'desk@in.test', route: 'desk', key: null });
  const spaced = new Router([{ name: 'all', addresses: ['*@in.test'] }]);
  assert.deepEqual(chooseRecipient(fieldsOf('To: "first last"@in.test\r\n\r\n'), DEFAULT_RECIPIENTS_FROM, (a) => spaced.match(a)), { header: 'to', address: '"first last"@in.test', route: 'all', key: null });
});
