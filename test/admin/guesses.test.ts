// Wrong admin tokens from one address: past the limit it is refused (429) without its token being looked at, until they age out.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GUESS_LIMIT, GUESS_WINDOW_MS, guessKey, TokenGuesses } from '../../src/http/admin/auth.js';
import { SECRET, startTestApp } from '../helpers/app.js';
import { ADMIN_TOKEN, adminYaml, call } from './helpers.js';
import { Consumer } from '../helpers/consumer.js';

test('the admin API, the dashboard login and the sink refuse an address after GUESS_LIMIT wrong tokens, until a window has passed', async () => {
  const consumer = new Consumer();
  await consumer.start();
  let offsetMs = 0;
  const routes = `
  - name: app
    addresses: ["in@g.test"]
    webhook: { url: "${consumer.url}", secret: "${SECRET}" }
  - name: archive
    addresses: ["*@archive.test"]
    sink: true
`;
  const app = await startTestApp({ routes, yaml: (dir) => adminYaml({ routes, dir }), deps: { clock: { now: () => Date.now() + offsetMs } } });
  try {
    assert.equal((await call(app, 'GET', '/api/routes')).status, 200);
    for (let i = 0; i < GUESS_LIMIT; i++) {
      // Every way of giving a token counts: the API's bearer, the dashboard login, the sink's bearer.
      const r = i % 3 === 0 ? await call(app, 'GET', '/api/routes', { token: `wrong-token-${i}-xxxxxxxx` })
        : i % 3 === 1 ? await call(app, 'POST', '/api/session', { token: null, body: { token: `wrong-token-${i}-xxxxxxxx` } })
          : await fetch(`${app.httpUrl}/sink/messages`, { headers: { authorization: `Bearer wrong-token-${i}-xxxxxxxx`, host: 'mailhook.example' } }).then((x) => ({ status: x.status }));
      assert.equal(r.status, i % 3 === 2 ? 403 : 401, `guess ${i + 1}`);
    }
    // Now even the right token is not looked at.
    const refused = await call(app, 'GET', '/api/routes');
    assert.equal(refused.status, 429);
    assert.match(refused.body.message, /^too many wrong admin tokens from this address; try again in \d+ s$/);
    const after = Number(refused.headers.get('retry-after'));
    assert.ok(after > 0 && after <= GUESS_WINDOW_MS / 1000, `Retry-After ${after}`);
    assert.equal((await call(app, 'POST', '/api/session', { token: null, body: { token: ADMIN_TOKEN } })).status, 429);
    assert.equal((await fetch(`${app.httpUrl}/sink/messages`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}`, host: 'mailhook.example' } })).status, 429);
    const warned = app.logs.join('').split('\n').filter((l) => l.includes('wrong admin tokens within a minute'));
    assert.equal(warned.length, 1);
    assert.equal(app.logs.join('').includes('wrong-token-'), false, 'the guesses are not logged');
    // Once the window has passed, the right token works again.
    offsetMs = GUESS_WINDOW_MS + 1000;
    assert.equal((await call(app, 'GET', '/api/routes')).status, 200);
    assert.equal((await call(app, 'POST', '/api/session', { token: null, body: { token: ADMIN_TOKEN } })).status, 200);
  } finally {
    await app.close();
    await consumer.stop();
  }
});

test('guesses spread over many addresses are remembered in bounded memory, oldest forgotten first', () => {
  const g = new TokenGuesses();
  const t = 1_000_000;
  for (let i = 0; i < GUESS_LIMIT; i++) assert.equal(g.fail('192.0.2.1', t + i), i === GUESS_LIMIT - 1);
  assert.equal(g.retryAfterMs('192.0.2.1', t + GUESS_LIMIT), GUESS_WINDOW_MS - GUESS_LIMIT);
  assert.equal(g.retryAfterMs('192.0.2.2', t + GUESS_LIMIT), 0);
  // A failure after the limit keeps it refused; the oldest failures age out one by one.
  g.fail('192.0.2.1', t + 30_000);
  assert.equal(g.retryAfterMs('192.0.2.1', t + GUESS_WINDOW_MS), 1);
  assert.equal(g.retryAfterMs('192.0.2.1', t + GUESS_WINDOW_MS + 1), 0);
  for (let i = 0; i < 10_000; i++) g.fail(`10.0.${i >> 8}.${i & 255}`, t + 40_000);
  assert.equal(g.retryAfterMs('192.0.2.1', t + 40_000), 0, 'forgotten once 10,000 other addresses came after it');
});

test('IPv6 guesses count against the /64; IPv4, also written IPv4-mapped, against the address', () => {
  assert.equal(guessKey('192.0.2.7'), '192.0.2.7');
  assert.equal(guessKey('::ffff:192.0.2.7'), '192.0.2.7');
  assert.equal(guessKey('2001:db8:1:2:aaaa::1'), '2001:db8:1:2::/64');
  assert.equal(guessKey('2001:DB8:1:2:bbbb:cccc:dddd:eeee'), '2001:db8:1:2::/64');
  assert.equal(guessKey('2001:0db8:0001:0002::'), '2001:db8:1:2::/64');
  assert.equal(guessKey('2001:db8::5'), '2001:db8:0:0::/64');
  assert.equal(guessKey('fe80::1%eth0'), 'fe80:0:0:0::/64');
  assert.equal(guessKey('::1'), '0:0:0:0::/64');
  // A host taking a new address of its /64 for each guess is refused all the same.
  const g = new TokenGuesses();
  for (let i = 0; i < GUESS_LIMIT; i++) g.fail(`2001:db8:1:2::${(i + 1).toString(16)}`, 1000 + i);
  assert.ok(g.retryAfterMs('2001:db8:1:2:ffff::9', 1000 + GUESS_LIMIT) > 0);
  assert.equal(g.retryAfterMs('2001:db8:1:3::1', 1000 + GUESS_LIMIT), 0, 'the next /64 is someone else');
});
