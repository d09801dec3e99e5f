import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Router } from '../../src/routing/router.js';
import { parseAddressTemplate } from '../../src/routing/template.js';

const router = new Router([
  { name: 'gitlab', addresses: ['incoming+%{key}@gitlab.example.com', 'incoming@gitlab.example.com'] },
  { name: 'desk', addresses: ['incoming-%{key}@Desk.Example.com', 'support@desk.example.com'] },
  { name: 'catch', addresses: ['*@catchall.example.com'] },
]);

test('sub-address template captures the key and keeps its case', () => {
  assert.deepEqual(router.match('incoming+AbC123@gitlab.example.com'), { ok: true, route: 'gitlab', key: 'AbC123', address: 'incoming+AbC123@gitlab.example.com' });
});

test('dedicated address matches without a key', () => {
  assert.deepEqual(router.match('incoming@gitlab.example.com'), { ok: true, route: 'gitlab', key: null, address: 'incoming@gitlab.example.com' });
});

test('catch-all form incoming-%{key} with a mixed-case configured domain', () => {
  const m = router.match('incoming-group-project-42-issue-@DESK.example.COM');
  assert.deepEqual(m, { ok: true, route: 'desk', key: 'group-project-42-issue-', address: 'incoming-group-project-42-issue-@desk.example.com' });
});

test('GitLab keys with slashes and plus signs are captured whole', () => {
  const m = router.match('incoming+gitlabhq/gitlabhq+merge-request+auth_token@gitlab.example.com');
  assert.equal(m.ok && m.key, 'gitlabhq/gitlabhq+merge-request+auth_token');
});

test('the literal part matches case-insensitively', () => {
  const m = router.match('Incoming+k@gitlab.example.com');
  assert.equal(m.ok && m.key, 'k');
});

test('an empty key does not match a %{key} template', () => {
  assert.deepEqual(router.match('incoming+@gitlab.example.com'), { ok: false, reason: 'unknown_recipient' });
});

test('wildcard takes any local part of its domain', () => {
  assert.deepEqual(router.match('whatever.else@catchall.example.com'), { ok: true, route: 'catch', key: null, address: 'whatever.else@catchall.example.com' });
});

test('served domain with no matching address is unknown_recipient; other domains are unknown_domain', () => {
  assert.deepEqual(router.match('nobody@gitlab.example.com'), { ok: false, reason: 'unknown_recipient' });
  assert.deepEqual(router.match('incoming+abc@elsewhere.example'), { ok: false, reason: 'unknown_domain' });
  assert.deepEqual(router.match('no-at-sign'), { ok: false, reason: 'bad_address' });
});

test('a dedicated address beats a catch-all of the same domain', () => {
  const r = new Router([
    { name: 'all', addresses: ['*@x.test'] },
    { name: 'one', addresses: ['boss@x.test'] },
  ]);
  assert.equal(r.match('boss@x.test').ok && (r.match('boss@x.test') as { route: string }).route, 'one');
  assert.equal((r.match('other@x.test') as { route: string }).route, 'all');
});

test('between templates the one with more literal characters wins, in any file order; equal ones go by file order', () => {
  const routeOf = (r: Router, address: string) => (r.match(address) as { route: string; key: string | null });
  for (const order of [0, 1]) {
    const routes = [
      { name: 'plain', addresses: ['incoming+%{key}@x.test'] },
      { name: 'issue', addresses: ['incoming+%{key}-issue@x.test'] },
    ];
    const r = new Router(order ? routes.reverse() : routes);
    assert.deepEqual(routeOf(r, 'incoming+abc-issue@x.test'), { ok: true, route: 'issue', key: 'abc', address: 'incoming+abc-issue@x.test' });
    assert.deepEqual(routeOf(r, 'incoming+abc@x.test'), { ok: true, route: 'plain', key: 'abc', address: 'incoming+abc@x.test' });
  }
  const tie = [
    { name: 'reply', addresses: ['reply+%{key}@x.test'] },
    { name: 'issue', addresses: ['%{key}+issue@x.test'] },
  ];
  assert.equal(routeOf(new Router(tie), 'reply+issue@x.test').route, 'reply');
  assert.equal(routeOf(new Router(tie.reverse()), 'reply+issue@x.test').route, 'issue');
});

test('template parsing rejects what it cannot mean', () => {
  for (const bad of ['nodomain', '@x.test', 'a@', 'a*b@x.test', '%{key}%{key}@x.test', 'a%{user}@x.test', 'a b@x.test', 'a@bad_domain']) {
    assert.equal(parseAddressTemplate(bad).ok, false, bad);
  }
});

test('postmaster (RFC 5321 §4.5.1): with postmasterRoute, postmaster@ every served domain and the bare <postmaster> go to it', () => {
  const r = new Router(
    [
      { name: 'app', addresses: ['incoming+%{key}@a.test'] },
      { name: 'all', addresses: ['*@b.test'] },
      { name: 'own', addresses: ['postmaster@c.test', 'x@c.test'] },
      { name: 'ops', addresses: ['ops@ops.test'] },
    ],
    { postmasterRoute: 'ops' },
  );
  assert.deepEqual(r.match('postmaster@a.test'), { ok: true, route: 'ops', key: null, address: 'postmaster@a.test' });
  assert.deepEqual(r.match('PostMaster@A.Test'), { ok: true, route: 'ops', key: null, address: 'PostMaster@a.test' }, 'case-insensitive');
  assert.deepEqual(r.match('postmaster@a.test.'), { ok: false, reason: 'bad_address' }, 'a trailing dot is refused, as on the wire');
  assert.equal((r.match('postmaster@b.test') as { route: string }).route, 'ops', 'over a catch-all of the domain');
  assert.equal((r.match('other@b.test') as { route: string }).route, 'all');
  assert.equal((r.match('postmaster@c.test') as { route: string }).route, 'own', 'a route listing postmaster@ its domain keeps it');
  assert.deepEqual(r.match('Postmaster'), { ok: true, route: 'ops', key: null, address: 'Postmaster' });
  assert.deepEqual(r.match('postmaster@elsewhere.test'), { ok: false, reason: 'unknown_domain' }, 'never a relay');
  assert.deepEqual(r.match('postmaster2@a.test'), { ok: false, reason: 'unknown_recipient' });
});

test('postmaster without postmasterRoute: a local part like any other; the bare <postmaster> is an unknown recipient', () => {
  assert.deepEqual(router.match('postmaster@gitlab.example.com'), { ok: false, reason: 'unknown_recipient' });
  assert.equal((router.match('postmaster@catchall.example.com') as { route: string }).route, 'catch');
  assert.deepEqual(router.match('postmaster'), { ok: false, reason: 'unknown_recipient' });
});

test('internationalized domains: an A-label or U-label in the config matches either form of the recipient domain', () => {
  const r = new Router([
    { name: 'a', addresses: ['info@xn--bcher-kva.example'] },
    { name: 'u', addresses: ['post@München.test'] },
  ]);
  // smtp-server hands over the A-label of RCPT TO as Unicode; a client with SMTPUTF8 may send the U-label itself.
  for (const address of ['info@bücher.example', 'info@xn--bcher-kva.example', 'Info@XN--BCHER-KVA.example']) {
    assert.equal(r.match(address).ok && (r.match(address) as { route: string }).route, 'a', address);
  }
  for (const address of ['post@münchen.test', 'post@xn--mnchen-3ya.test']) {
    assert.equal(r.match(address).ok && (r.match(address) as { route: string }).route, 'u', address);
  }
  assert.deepEqual(r.domains.sort(), ['xn--bcher-kva.example', 'xn--mnchen-3ya.test']);
  assert.ok(r.servesDomain('bücher.example') && r.servesDomain('XN--BCHER-KVA.example'));
  // Not a U-label as written (NFD, an upper-case non-ASCII letter): no domain served here.
  assert.deepEqual(r.match('info@bu\u0308cher.example'), { ok: false, reason: 'unknown_domain' });
  assert.deepEqual(r.match('info@bÜcher.example'), { ok: false, reason: 'unknown_domain' });
});

test('only ASCII letters fold case: U+212A KELVIN SIGN is not "k" in a domain or a local part', () => {
  const r = new Router([{ name: 'kilo', addresses: ['k@kilo.test', 'pre+%{key}@kilo.test'] }]);
  assert.equal(r.match('K@KILO.test').ok, true);
  assert.deepEqual(r.match('k@\u212Ailo.test'), { ok: false, reason: 'unknown_domain' });
  assert.deepEqual(r.match('\u212A@kilo.test'), { ok: false, reason: 'unknown_recipient' });
  // toLowerCase() turns U+0130 into two characters: the key was cut one character short.
  assert.deepEqual(r.match('pre+\u0130x@kilo.test'), { ok: true, route: 'kilo', key: '\u0130x', address: 'pre+\u0130x@kilo.test' });
});

test('a quoted local part that needs no quoting routes as the bare one; one that needs its quotes does not', () => {
  const r = new Router([{ name: 'x', addresses: ['user@x.test', 'incoming+%{key}@x.test'] }]);
  assert.deepEqual(r.match('"user"@x.test'), { ok: true, route: 'x', key: null, address: 'user@x.test' });
  assert.deepEqual(r.match('"incoming+A\\bC"@x.test'), { ok: true, route: 'x', key: 'AbC', address: 'incoming+AbC@x.test' });
  assert.deepEqual(r.match('"us er"@x.test'), { ok: false, reason: 'unknown_recipient' });
  assert.deepEqual(r.match('"user"x@x.test'), { ok: false, reason: 'bad_address' }, 'neither a Quoted-string nor a Dot-string');
});

test('RFC 5321 §4.1.2: a local part that is neither a Dot-string nor a Quoted-string is bad_address before any route', () => {
  const r = new Router([{ name: 'x', addresses: ['user@x.test', 'incoming+%{key}@x.test', '*@all.test'] }]);
  for (const bad of ['x"y', 'x(y', 'x)y', 'x\\y', 'x[y', 'x]y', 'x;y', 'x,y', 'x:y', 'x<y', 'x y', 'x.', 'x..y', '"x"y', 'x"y"', '"a"b"', '"x\\"', 'a."b"', '"x\ty"', '"\\ü"']) {
    assert.deepEqual(r.match(`incoming+${bad}@x.test`), { ok: false, reason: 'bad_address' }, `incoming+${bad}`);
    assert.deepEqual(r.match(`${bad}@all.test`), { ok: false, reason: 'bad_address' }, `${bad}@all.test`);
    assert.deepEqual(r.match(`${bad}@elsewhere.test`), { ok: false, reason: 'bad_address' }, `${bad}@elsewhere.test`);
  }
  // Dot-strings with every atext character, non-ASCII (RFC 6531), and Quoted-strings with specials, pairs and spaces.
  const atext = "a.b-c_d/e=f+g{h}~i#j$k%l&m'n*o?p^q`r|s!t";
  assert.deepEqual(r.match(`incoming+${atext}@x.test`), { ok: true, route: 'x', key: atext, address: `incoming+${atext}@x.test` });
  assert.deepEqual(r.match('incoming+ünï.ç@x.test'), { ok: true, route: 'x', key: 'ünï.ç', address: 'incoming+ünï.ç@x.test' });
  for (const good of ['"x(y"', '"x y"', '"x\\"y"', '"x\\\\y"', '"ü;x"', '""', '"x@y"']) {
    assert.deepEqual(r.match(`${good}@all.test`), { ok: true, route: 'x', key: null, address: `${good}@all.test` }, good);
  }
});
