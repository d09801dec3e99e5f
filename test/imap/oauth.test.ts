// OAuth2 token providers against the local stand-in token endpoint: caching, refresh before expiry, single
// flight, refresh-token rotation, errors that name the problem but never the secret, and a bridge's stop() while
// its token request hangs.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { OAuthTokenProvider, refreshMargin, RENEW_RETRY_MS } from '../../src/imap/oauth.js';
import { startTestApp, tempDir, until } from '../helpers/app.js';
import { imapBlock, routesYaml } from './setup.js';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createLogger } from '../../src/core/logger.js';
import { MailboxError } from '../../src/imap/errors.js';
import { Secret } from '../../src/config/secret.js';
import { OAuthStandin } from '../helpers/oauth-standin.js';

let as: OAuthStandin;
before(async () => {
  as = await new OAuthStandin().start();
  as.clients.push({ clientId: 'app', clientSecret: 'app-secret', username: 'box' }, { clientId: 'gmail', clientSecret: 'gmail-secret', username: 'me' });
});
after(() => as.stop());

function clockAt(t: number) {
  const c = { t, now: () => c.t };
  return c;
}

test('refresh margin: a quarter of the lifetime, at most five minutes', () => {
  assert.equal(refreshMargin(3_600_000), 300_000);
  assert.equal(refreshMargin(600_000), 150_000);
  assert.equal(refreshMargin(4000), 1000);
});

test('client credentials: cached, then refreshed before it expires; concurrent callers share one request', async () => {
  as.expiresIn = 3600;
  const clock = clockAt(Date.now());
  const p = new OAuthTokenProvider({ grant: 'client_credentials', tokenUrl: as.tokenUrl('t-9'), clientId: 'app', clientSecret: new Secret('app-secret'), refreshToken: undefined, scope: 'https://outlook.office365.com/.default' }, { clock });
  const start = as.tokenRequests.length;
  const [a, b, c] = await Promise.all([p.token(), p.token(), p.token()]);
  assert.equal(as.tokenRequests.length, start + 1, 'one request for three concurrent callers');
  assert.ok(a === b && b === c && as.isValid(a));
  assert.deepEqual(as.tokenRequests.at(-1), { path: '/t-9/oauth2/v2.0/token', grant: 'client_credentials', clientId: 'app', scope: 'https://outlook.office365.com/.default', at: as.tokenRequests.at(-1)!.at });
  clock.t += 3_299_000; // 55 min: still well inside its life
  assert.equal(await p.token(), a);
  clock.t += 2000; // past expires - 5 min: renewed although not expired yet
  const renewed = await p.token();
  assert.notEqual(renewed, a);
  assert.equal(as.tokenRequests.length, start + 2);
  p.invalidate();
  assert.notEqual(await p.token(), renewed, 'an invalidated token is replaced');
});

test('a renewal that fails inside the margin: the cached token is used until it really expires', async () => {
  as.expiresIn = 3600;
  const clock = clockAt(Date.now());
  const settings = { grant: 'client_credentials' as const, tokenUrl: as.tokenUrl('t-9'), clientId: 'app', clientSecret: new Secret('app-secret'), refreshToken: undefined, scope: undefined };
  const p = new OAuthTokenProvider(settings, { clock });
  const first = await p.token();
  // The endpoint fails from now on (answers 503, counted).
  let asked = 0;
  const down = createServer((_req, res) => {
    asked++;
    res.writeHead(503).end();
  }).listen(0, '127.0.0.1');
  await once(down, 'listening');
  try {
    settings.tokenUrl = `http://127.0.0.1:${(down.address() as AddressInfo).port}/token`;
    clock.t += 3_400_000; // inside the renewal margin, 200 s before it expires
    assert.equal(await p.token(), first);
    await until(() => asked === 1, 5000, 'the renewal tried');
    // Not tried again at every call while it keeps failing (the Graph client asks before each request).
    for (let i = 0; i < 5; i++) assert.equal(await p.token(), first);
    assert.equal(asked, 1);
    clock.t += RENEW_RETRY_MS + 1;
    assert.equal(await p.token(), first);
    await until(() => asked === 2, 5000, 'tried again after RENEW_RETRY_MS');
    clock.t += 200_000; // expired
    await assert.rejects(p.token(), (err: unknown) => err instanceof MailboxError && err.code === 'OAUTH_TOKEN_FAILED');
  } finally {
    down.close();
  }
});

test('refresh token: the rotated refresh token is used next time', async () => {
  as.rotateRefreshTokens = true;
  as.refreshTokens.set('rt-1', { clientId: 'gmail', username: 'me' });
  const clock = clockAt(Date.now());
  const p = new OAuthTokenProvider({ grant: 'refresh_token', tokenUrl: `${as.url}/token`, clientId: 'gmail', clientSecret: new Secret('gmail-secret'), refreshToken: new Secret('rt-1'), scope: undefined }, { clock });
  const first = await p.token();
  assert.ok(!as.refreshTokens.has('rt-1'), 'the stand-in rotated it');
  p.invalidate();
  const second = await p.token(); // would fail with invalid_grant if rt-1 were sent again
  assert.ok(as.isValid(first) && as.isValid(second) && first !== second);
  as.rotateRefreshTokens = false;
});

test('secrets from files are read again at each token request: a fixed client secret or a new refresh token is used without a restart', async () => {
  const dir = tempDir();
  try {
    const secretFile = join(dir, 'client-secret');
    const tokenFile = join(dir, 'refresh-token');
    writeFileSync(secretFile, 'wrong-secret\n');
    writeFileSync(tokenFile, 'rt-file-1\n');
    as.rotateRefreshTokens = true;
    as.refreshTokens.set('rt-file-1', { clientId: 'gmail', username: 'me' });
    const clock = clockAt(Date.now());
    const lines: Array<{ level: number; msg: string }> = [];
    const log = createLogger({ level: 'info', destination: new Writable({ write: (c: Buffer, _e, cb) => (lines.push(JSON.parse(c.toString())), cb()) }) });
    const p = new OAuthTokenProvider({ grant: 'refresh_token', tokenUrl: `${as.url}/token`, clientId: 'gmail', clientSecret: new Secret('wrong-secret', secretFile), refreshToken: new Secret('rt-file-1', tokenFile), scope: undefined }, { clock, log });
    await assert.rejects(p.token(), (err: unknown) => err instanceof MailboxError && err.code === 'OAUTH_TOKEN_FAILED', 'the wrong client secret');
    writeFileSync(secretFile, 'gmail-secret\n');
    const first = await p.token();
    assert.ok(as.isValid(first), 'the fixed client secret, read again');
    assert.ok(!as.refreshTokens.has('rt-file-1'), 'the stand-in rotated the refresh token');
    p.invalidate();
    assert.ok(as.isValid(await p.token()), 'the rotated token is kept while the file is unchanged (rt-file-1 is spent)');
    // The operator consents again and writes a new refresh token: it replaces the rotated one.
    as.refreshTokens.set('rt-file-2', { clientId: 'gmail', username: 'me' });
    writeFileSync(tokenFile, 'rt-file-2\n');
    p.invalidate();
    assert.ok(as.isValid(await p.token()));
    assert.ok(!as.refreshTokens.has('rt-file-2'), 'rt-file-2 was sent (and rotated)');
    // A file that went missing keeps the value read before, and says so.
    assert.equal(lines.length, 0);
    rmSync(secretFile);
    p.invalidate();
    assert.ok(as.isValid(await p.token()));
    assert.deepEqual(lines.map((l) => [l.level, l.msg]), [[40, `client_secret_file: cannot read ${secretFile} (ENOENT); the value read before is used`]]);
  } finally {
    as.rotateRefreshTokens = false;
    rmSync(dir, { recursive: true, force: true });
  }
});

test('Secret.reread: a value from a file is read again, trimmed; an inline value or an unreadable or empty file keeps it', () => {
  const dir = tempDir();
  try {
    const file = join(dir, 'pw');
    writeFileSync(file, 'one\n');
    const s = new Secret('one', file);
    assert.deepEqual(s.reread(), { changed: false });
    writeFileSync(file, '  two \n');
    assert.deepEqual(s.reread(), { changed: true });
    assert.equal(s.reveal(), 'two');
    writeFileSync(file, '\n');
    assert.deepEqual(s.reread(), { changed: false, error: `${file} is empty; the value read before is used` });
    rmSync(file);
    assert.deepEqual(s.reread(), { changed: false, error: `cannot read ${file} (ENOENT); the value read before is used` });
    assert.equal(s.reveal(), 'two');
    assert.deepEqual(new Secret('inline').reread(), { changed: false });
    assert.equal(String(s), '[redacted]');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('refusals and unreachable endpoints become OAUTH_TOKEN_FAILED without the secret', async () => {
  const clock = clockAt(Date.now());
  const bad = new OAuthTokenProvider({ grant: 'client_credentials', tokenUrl: as.tokenUrl(), clientId: 'app', clientSecret: new Secret('not-the-secret'), refreshToken: undefined, scope: undefined }, { clock });
  await assert.rejects(bad.token(), (err: unknown) => {
    assert.ok(err instanceof MailboxError);
    assert.equal(err.code, 'OAUTH_TOKEN_FAILED');
    assert.equal(err.userFault, true);
    assert.match(err.message, /refused the client_credentials grant \(invalid_client: AADSTS7000215/);
    assert.ok(!err.message.includes('not-the-secret'));
    return true;
  });
  const revoked = new OAuthTokenProvider({ grant: 'refresh_token', tokenUrl: `${as.url}/token`, clientId: 'gmail', clientSecret: new Secret('gmail-secret'), refreshToken: new Secret('rt-unknown'), scope: undefined }, { clock });
  await assert.rejects(revoked.token(), /invalid_grant: Token has been expired or revoked/);
  const down = new OAuthTokenProvider({ grant: 'client_credentials', tokenUrl: 'http://127.0.0.1:9/token?client_secret=InTheQuery', clientId: 'app', clientSecret: new Secret('x'), refreshToken: undefined, scope: undefined }, { clock });
  await assert.rejects(down.token(), (err: unknown) => err instanceof MailboxError && err.code === 'OAUTH_TOKEN_FAILED' && !err.userFault && /cannot reach the token endpoint http:\/\/127\.0\.0\.1:9\/token: /.test(err.message) && !err.message.includes('InTheQuery'));
  // The endpoint is named by origin and path: a query string (which can hold a secret) is not repeated.
  const queried = new OAuthTokenProvider({ grant: 'client_credentials', tokenUrl: `${as.tokenUrl()}?tenant_key=InTheQuery`, clientId: 'app', clientSecret: new Secret('not-the-secret'), refreshToken: undefined, scope: undefined }, { clock });
  await assert.rejects(queried.token(), (err: unknown) => err instanceof MailboxError && /refused the client_credentials grant/.test(err.message) && !err.message.includes('InTheQuery'));
});

test('an answer that is no OAuth answer (an HTML error or proxy page) is not called a refusal; a Microsoft description is cut at its first line, CR included', async () => {
  const clock = clockAt(Date.now());
  const provider = () => new OAuthTokenProvider({ grant: 'client_credentials', tokenUrl: as.tokenUrl(), clientId: 'app', clientSecret: new Secret('app-secret'), refreshToken: undefined, scope: undefined }, { clock });
  const html = (status: number) => ({ status, contentType: 'text/html; charset=utf-8', body: '<html><body>Bad Gateway</body></html>' });
  as.overrides.push(html(502), html(200), html(404), {
    status: 401,
    contentType: 'application/json',
    body: JSON.stringify({ error: 'invalid_client', error_description: "AADSTS7000222: The provided client secret keys for app 'a1' are expired.\r\nTrace ID: 1\r\nCorrelation ID: 2\r\nTimestamp: 2025-01-01 00:00:00Z" }),
  });
  try {
    const failure = async () => {
      try {
        await provider().token();
      } catch (err) {
        assert.ok(err instanceof MailboxError && err.code === 'OAUTH_TOKEN_FAILED');
        return err;
      }
      throw new Error('a token was issued');
    };
    const down = await failure();
    assert.match(down.message, /token endpoint \S+ failed \(HTTP 502, text\/html\); tried again after a pause$/);
    assert.equal(down.userFault, false);
    const proxy = await failure();
    assert.match(proxy.message, /answered without a token or an OAuth error \(HTTP 200, text\/html\); check that it is the token endpoint/);
    assert.doesNotMatch(proxy.message, /refused|the secret/);
    const wrongUrl = await failure();
    assert.match(wrongUrl.message, /\(HTTP 404, text\/html\)/);
    assert.equal(wrongUrl.userFault, true);
    const expired = await failure();
    assert.match(expired.message, /refused the client_credentials grant \(invalid_client: AADSTS7000222: The provided client secret keys for app 'a1' are expired\.\); check client_id/);
    assert.ok(!/[\r\n]/.test(expired.message), 'no CR or LF in the message (a CR sends a terminal back to the line start)');
  } finally {
    as.overrides.length = 0;
  }
});

test('IMAP with XOAUTH2: stop() is not held by a token endpoint that hangs', async () => {
  as.clients.push({ clientId: 'hang-app', clientSecret: 'hang-secret', username: 'box' });
  as.overrides.push('hang');
  // The token is asked for before connecting: the server (port 9, nothing there) is never reached.
  const yaml = imapBlock(`
  - name: hangs
    host: 127.0.0.1
    port: 9
    ssl: false
    user: box
    oauth2:
      grant: client_credentials
      token_url: ${as.url}/token
      client_id: hang-app
      client_secret: hang-secret
`);
  const app = await startTestApp({ routes: routesYaml('http://127.0.0.1:9/unused'), extra: yaml });
  try {
    await until(() => as.tokenRequests.some((r) => r.clientId === 'hang-app'), 5000, 'the token request');
    const t0 = Date.now();
    await app.mailboxes.bridges[0]!.stop(200);
    const took = Date.now() - t0;
    assert.ok(took < 3000, `stop took ${took} ms with a grace of 200 ms`);
    assert.equal(app.mailboxes.bridges[0]!.status.state, 'stopped');
  } finally {
    as.overrides.length = 0;
    await app.close();
  }
});
