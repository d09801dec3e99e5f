// format: gitlab against a stand-in for GitLab's internal mail_room endpoint that checks the JWT as GitLab does.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeJwt, decodeProtectedHeader, jwtVerify, SignJWT } from 'jose';
import { startTestApp, tempDir, until, type TestApp } from '../helpers/app.js';
import { RawSmtp } from '../helpers/smtp-client.js';
import { parseHeaderFields, headerSection } from '../../src/parse/automatic.js';
import { classifyGitlabStatus, gitlabAddress, gitlabBody, IAT_BACKDATE_SECONDS, mailroomToken, newlineOf, rfc5322Date, traceFields } from '../../src/delivery/formats/gitlab.js';
import { loadConfigText } from '../../src/config/load.js';
import type { ConfigError } from '../../src/core/errors.js';

/**
 * GitLab's check (lib/gitlab/mail_room/authenticator.rb + lib/gitlab/jwt_authenticatable.rb): HS256 only,
 * iss "gitlab-mailroom", iat present, not in the future (ruby-jwt verify_iat) and not older than 5 minutes.
 */
async function verifyLikeGitlab(token: string | undefined, key: Uint8Array, now = new Date()): Promise<{ ok: true; nonce: unknown } | { ok: false; why: string }> {
  if (!token) return { ok: false, why: 'no token' };
  try {
    const { payload } = await jwtVerify(token, key, { issuer: 'gitlab-mailroom', algorithms: ['HS256'], requiredClaims: ['iat'], maxTokenAge: 300, currentDate: now });
    return { ok: true, nonce: payload.nonce };
  } catch (err) {
    return { ok: false, why: (err as Error).message };
  }
}

/** GitLab's key lookup (lib/gitlab/email/receiver.rb): To, then Delivered-To, Envelope-To, X-Envelope-To; the template's %{key} as (.+). */
function gitlabMailKey(raw: Buffer, template: string): string | null {
  const escaped = template.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace('%\\{key\\}', '(.+)');
  const re = new RegExp(escaped);
  const fields = parseHeaderFields(headerSection(raw));
  const addressesOf = (name: string) => fields.filter((f) => f.name === name).flatMap((f) => f.value.match(/[^\s<>,"]+@[^\s<>,"]+/g) ?? []);
  for (const name of ['to', 'delivered-to', 'envelope-to', 'x-envelope-to']) {
    for (const a of addressesOf(name)) {
      const m = re.exec(a);
      if (m) return m[1]!;
    }
  }
  return null;
}

interface GitlabRequest {
  mailboxType: string;
  contentType: string | undefined;
  token: string | undefined;
  body: Buffer;
  key: string | null;
}

class FakeGitlab {
  readonly requests: GitlabRequest[] = [];
  /** the answer to the n-th request (0-based); default 200 */
  script: Array<number> = [];
  private server: Server | undefined;
  port = 0;
  private waiters: Array<{ n: number; resolve: () => void }> = [];
  constructor(
    private readonly secret: Uint8Array,
    private readonly enabled = new Set(['incoming_email']),
  ) {}

  url(type = 'incoming_email'): string {
    return `http://127.0.0.1:${this.port}/api/v4/internal/mail_room/${type}`;
  }

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        void (async () => {
          const body = Buffer.concat(chunks);
          const m = /^\/api\/v4\/internal\/mail_room\/([a-z_]+)$/.exec(req.url ?? '');
          const token = req.headers['gitlab-mailroom-api-request'] as string | undefined;
          const record: GitlabRequest = { mailboxType: m?.[1] ?? '', contentType: req.headers['content-type'], token, body, key: gitlabMailKey(body, 'incoming+%{key}@gitlab.test') };
          const index = this.requests.length;
          this.requests.push(record);
          let status: number;
          let answer: unknown;
          if (req.method !== 'POST' || !m) {
            status = 404;
            answer = { message: '404 Not Found' };
          } else if (!this.enabled.has(m[1]!) || !(await verifyLikeGitlab(token, this.secret)).ok) {
            status = 401;
            answer = { message: '401 Unauthorized' };
          } else {
            status = this.script[index] ?? 200;
            answer = status === 200 ? { success: true } : status === 400 ? { success: false, message: 'email too large' } : { message: 'error' };
          }
          res.writeHead(status, { 'content-type': 'application/json' });
          res.end(JSON.stringify(answer));
          this.waiters = this.waiters.filter((w) => (this.requests.length >= w.n ? (w.resolve(), false) : true));
        })();
      });
    });
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    const a = this.server.address();
    if (a && typeof a === 'object') this.port = a.port;
  }

  waitFor(n: number, timeoutMs = 10_000): Promise<GitlabRequest[]> {
    if (this.requests.length >= n) return Promise.resolve(this.requests.slice());
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`stand-in got ${this.requests.length} of ${n} requests`)), timeoutMs);
      this.waiters.push({ n, resolve: () => (clearTimeout(t), setImmediate(() => resolve(this.requests.slice()))) });
    });
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}

const KEY = randomBytes(32);
let gitlab: FakeGitlab;
let app: TestApp;

function routesYaml(dir: string, secretBase64: string, url: string, extra = ''): string {
  const secretFile = join(dir, `gitlab_incoming_email_secret_${Math.random().toString(36).slice(2)}`);
  // GitLab writes the file without a newline; an operator's copy may have one. Both must work.
  writeFileSync(secretFile, `${secretBase64}\n`);
  return `
  - name: gitlab
    addresses: ["incoming+%{key}@gitlab.test"]
${extra}    webhook:
      url: ${url}
      format: gitlab
      secret_file: ${secretFile}
`;
}

async function send(port: number, rcpts: string[], message: string, from = 'alice@example.test'): Promise<void> {
  const { smtp } = await RawSmtp.open(port);
  await smtp.cmd('EHLO client.example.test');
  const r = await smtp.transaction(from, rcpts, message);
  assert.equal(r.end?.code, 250, JSON.stringify(r));
  await smtp.quit();
}

function deliveries(a: TestApp): Array<{ status: string; attempts: number; last_error: string | null; recipients: string }> {
  return a.spool.db.prepare(`SELECT status, attempts, last_error, recipients FROM deliveries ORDER BY created_at, id`).all() as never;
}

before(async () => {
  gitlab = new FakeGitlab(KEY);
  await gitlab.start();
  const dir = tempDir();
  app = await startTestApp({ dir, routes: routesYaml(dir, KEY.toString('base64'), gitlab.url()) });
});
after(async () => {
  await app.close();
  await gitlab.stop();
});

test('posts the raw message with a JWT GitLab accepts; the key is in To', async () => {
  const start = gitlab.requests.length;
  const message = 'From: Alice <alice@example.test>\r\nTo: incoming+group-proj-42-issue-@gitlab.test\r\nSubject: new issue\r\nMessage-ID: <m1@example.test>\r\n\r\nPlease fix.\r\n';
  await send(app.smtpPort, ['incoming+group-proj-42-issue-@gitlab.test'], message);
  const [req] = (await gitlab.waitFor(start + 1)).slice(start);
  assert.ok(req);
  assert.equal(req.mailboxType, 'incoming_email');
  assert.equal(req.contentType, 'text/plain');
  const verified = await verifyLikeGitlab(req.token, KEY);
  assert.equal(verified.ok, true, JSON.stringify(verified));
  assert.deepEqual(decodeProtectedHeader(req.token!), { alg: 'HS256', typ: 'JWT' });
  const claims = decodeJwt(req.token!);
  assert.equal(claims.iss, 'gitlab-mailroom');
  assert.match(String(claims.nonce), /^[0-9a-f]{24}$/);
  assert.ok(Math.abs(Number(claims.iat) - (Math.floor(Date.now() / 1000) - IAT_BACKDATE_SECONDS)) <= 2);
  // Trace fields first, then the bytes exactly as the spool holds them.
  const msgId = (app.spool.db.prepare(`SELECT id FROM messages ORDER BY received_at DESC, id DESC LIMIT 1`).get() as { id: string }).id;
  const stored = await app.spool.readRaw(msgId);
  assert.ok(stored.toString('latin1').startsWith(message));
  const body = req.body.toString('latin1');
  assert.ok(req.body.subarray(req.body.length - stored.length).equals(stored), 'the message follows the trace fields unchanged');
  const trace = body.slice(0, body.length - stored.length);
  assert.match(trace, /^Delivered-To: incoming\+group-proj-42-issue-@gitlab\.test\r\nReceived: from client\.example\.test \(\[127\.0\.0\.1\]\)\r\n\tby mx\.test \(mailhook\) with ESMTP id [a-z0-9]+\r\n\tfor <incoming\+group-proj-42-issue-@gitlab\.test>; \w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r\n$/);
  assert.equal(req.key, 'group-proj-42-issue-');
  await until(() => deliveries(app).at(-1)?.status === 'delivered', 5000, 'delivered');
});

test('a Bcc recipient: GitLab finds the key only through the Delivered-To field mailhook adds', async () => {
  const start = gitlab.requests.length;
  const message = 'From: alice@example.test\r\nTo: team@example.test\r\nSubject: bcc\r\n\r\nhi\r\n';
  // Without the trace fields GitLab would find no key in these headers.
  assert.equal(gitlabMailKey(Buffer.from(message), 'incoming+%{key}@gitlab.test'), null);
  await send(app.smtpPort, ['incoming+bcc-key@gitlab.test'], message);
  const [req] = (await gitlab.waitFor(start + 1)).slice(start);
  assert.equal(req?.key, 'bcc-key');
});

test('two recipients of the route: one request each, each with its own key', async () => {
  const start = gitlab.requests.length;
  const message = 'From: alice@example.test\r\nTo: undisclosed-recipients:;\r\nSubject: two\r\n\r\nhi\r\n';
  await send(app.smtpPort, ['incoming+first@gitlab.test', 'incoming+second@gitlab.test'], message);
  const reqs = (await gitlab.waitFor(start + 2)).slice(start);
  assert.deepEqual(reqs.map((r) => r.key).sort(), ['first', 'second']);
  for (const r of reqs) assert.equal((r.body.toString('latin1').match(/^Delivered-To:/gm) ?? []).length, 1);
});

test('5xx is retried with a fresh token per attempt; 400 dead-letters without retry', async () => {
  let start = gitlab.requests.length;
  gitlab.script[start] = 502;
  await send(app.smtpPort, ['incoming+retry@gitlab.test'], 'From: a@example.test\r\nSubject: r\r\n\r\nx\r\n');
  const [first, second] = (await gitlab.waitFor(start + 2)).slice(start);
  assert.ok(first && second);
  assert.notEqual(first.token, second.token, 'a new JWT (new nonce) per attempt');
  assert.equal((await verifyLikeGitlab(second.token, KEY)).ok, true);
  await until(() => deliveries(app).at(-1)?.status === 'delivered', 5000, 'delivered after retry');
  assert.equal(deliveries(app).at(-1)?.attempts, 2);

  start = gitlab.requests.length;
  gitlab.script[start] = 400;
  await send(app.smtpPort, ['incoming+huge@gitlab.test'], 'From: a@example.test\r\nSubject: big\r\n\r\nx\r\n');
  await gitlab.waitFor(start + 1);
  const d = await until(() => deliveries(app).find((x) => x.recipients.includes('incoming+huge@') && x.status === 'dead'), 5000, 'dead');
  assert.equal(d.attempts, 1);
  assert.match(d.last_error ?? '', /^HTTP 400: GitLab refused the message as too large/);
  assert.equal(gitlab.requests.length, start + 1, 'no retry after 400');
});

test('a wrong secret: GitLab answers 401, mailhook dead-letters at once and logs an error', async () => {
  const dir = tempDir();
  const wrong = await startTestApp({ dir, routes: routesYaml(dir, randomBytes(32).toString('base64'), gitlab.url()) });
  try {
    const start = gitlab.requests.length;
    await send(wrong.smtpPort, ['incoming+k@gitlab.test'], 'From: a@example.test\r\nSubject: s\r\n\r\nx\r\n');
    await gitlab.waitFor(start + 1);
    const d = await until(() => deliveries(wrong).find((x) => x.status === 'dead'), 5000, 'dead');
    assert.equal(d.attempts, 1);
    assert.match(d.last_error ?? '', /^HTTP 401: GitLab refused the request: the route's secret is not the one in GitLab's secret file/);
    await until(() => wrong.logs.some((l) => /"level":50/.test(l) && /configuration problem/.test(l)), 5000, 'error log');
    assert.equal(gitlab.requests.length, start + 1);
  } finally {
    await wrong.close();
  }
});

test('a mailbox type GitLab has not enabled also answers 401 (service_desk_email here)', async () => {
  const dir = tempDir();
  const sd = await startTestApp({ dir, routes: routesYaml(dir, KEY.toString('base64'), gitlab.url('service_desk_email')) });
  try {
    const start = gitlab.requests.length;
    await send(sd.smtpPort, ['incoming+k@gitlab.test'], 'From: a@example.test\r\nSubject: s\r\n\r\nx\r\n');
    await gitlab.waitFor(start + 1);
    await until(() => deliveries(sd).find((x) => x.status === 'dead'), 5000, 'dead');
  } finally {
    await sd.close();
  }
});

test('the token: GitLab refuses it after 5 minutes, and one minted by a clock up to 30 s ahead still passes', async () => {
  const now = Math.floor(Date.now() / 1000);
  const token = await mailroomToken(KEY, now, 'n');
  assert.equal((await verifyLikeGitlab(token, KEY)).ok, true);
  assert.equal((await verifyLikeGitlab(token, KEY, new Date((now + 300 - IAT_BACKDATE_SECONDS + 5) * 1000))).ok, false, 'older than 5 minutes');
  const ahead = await mailroomToken(KEY, now + IAT_BACKDATE_SECONDS - 1, 'n');
  assert.equal((await verifyLikeGitlab(ahead, KEY)).ok, true, 'a sender clock slightly ahead');
  const tooFarAhead = await mailroomToken(KEY, now + IAT_BACKDATE_SECONDS + 60, 'n');
  assert.equal((await verifyLikeGitlab(tooFarAhead, KEY)).ok, false, 'iat in the future is refused, as ruby-jwt does');
  // The stand-in is strict about the algorithm and the issuer, as GitLab is.
  const hs512 = await new SignJWT({ nonce: 'n' }).setProtectedHeader({ alg: 'HS512' }).setIssuer('gitlab-mailroom').setIssuedAt(now).sign(randomBytes(64));
  assert.equal((await verifyLikeGitlab(hs512, KEY)).ok, false);
  const otherIssuer = await new SignJWT({ nonce: 'n' }).setProtectedHeader({ alg: 'HS256' }).setIssuer('mailroom').setIssuedAt(now).sign(KEY);
  assert.equal((await verifyLikeGitlab(otherIssuer, KEY)).ok, false);
  const noIat = await new SignJWT({ nonce: 'n' }).setProtectedHeader({ alg: 'HS256' }).setIssuer('gitlab-mailroom').sign(KEY);
  assert.equal((await verifyLikeGitlab(noIat, KEY)).ok, false);
});

test('status classification: 401 loud, 400 and 404 dead, others left to the standard rule', () => {
  assert.deepEqual({ ...classifyGitlabStatus(401), reason: undefined }, { kind: 'dead', loud: true, reason: undefined });
  assert.equal(classifyGitlabStatus(400)?.kind, 'dead');
  assert.equal(classifyGitlabStatus(404)?.kind, 'dead');
  assert.equal(classifyGitlabStatus(500), undefined);
  assert.equal(classifyGitlabStatus(200), undefined);
});

test('trace fields: bare-LF messages get bare LF, IPv6 and mapped IPv4 literals, no "for" with several recipients, no control characters', () => {
  assert.equal(newlineOf(Buffer.from('A: b\nC: d\n\nx')), '\n');
  assert.equal(newlineOf(Buffer.from('A: b\r\n\r\nx')), '\r\n');
  const base = { messageId: 'm1', receivedAt: Date.UTC(2025, 10, 25, 13, 5, 9), source: 'smtp', hostname: 'mx.test', newline: '\n' };
  const env = { mailFrom: 'a@b', rcptTo: [], remoteAddress: '2001:db8::1', helo: 'evil\r\nX-Injected: 1', tls: { protocol: 'TLSv1.3', cipher: 'x' } };
  const t = traceFields({ ...base, envelope: env, recipients: [{ address: 'x@y', key: null }, { address: 'z@y', key: null }] });
  assert.equal(t, 'Delivered-To: x@y\nDelivered-To: z@y\nReceived: from evilX-Injected:1 ([IPv6:2001:db8::1])\n\tby mx.test (mailhook) with ESMTPS id m1; Tue, 25 Nov 2025 13:05:09 +0000\n');
  const mapped = traceFields({ ...base, source: 'imap', envelope: { ...env, remoteAddress: '::ffff:10.0.0.1', helo: null }, recipients: [{ address: 'x@y', key: 'k' }] });
  assert.equal(mapped, 'Delivered-To: x@y\nReceived: from unknown ([10.0.0.1])\n\tby mx.test (mailhook) id m1\n\tfor <x@y>; Tue, 25 Nov 2025 13:05:09 +0000\n');
  assert.equal(rfc5322Date(Date.UTC(2024, 0, 1, 0, 0, 0)), 'Mon, 1 Jan 2024 00:00:00 +0000');
  const body = gitlabBody({
    message: { id: 'm2', receivedAt: 0, source: 'imap', envelope: { ...env, remoteAddress: null }, size: 0, dedupeKey: null, meta: null },
    delivery: { recipients: [{ address: 'a@b', key: null }] } as never,
    raw: Buffer.from('S: x\r\n\r\nb'),
    hostname: 'h',
  });
  assert.equal(body.toString(), 'Delivered-To: a@b\r\nReceived: by h (mailhook) id m2\r\n\tfor <a@b>; Thu, 1 Jan 1970 00:00:00 +0000\r\nS: x\r\n\r\nb');
  // Forwarded by a relay (XFORWARD, meta.relay): "from" names the relay, the hop's client, not the client it forwarded.
  const relayed = gitlabBody({
    message: { id: 'm3', receivedAt: 0, source: 'smtp', envelope: { ...env, remoteAddress: '203.0.113.10', helo: 'mail.sender.test', tls: null }, size: 0, dedupeKey: null, meta: { relay: { address: '127.0.0.1', helo: 'postfix.test' } } },
    delivery: { recipients: [{ address: 'a@b', key: null }] } as never,
    raw: Buffer.from('S: x\r\n\r\nb'),
    hostname: 'h',
  });
  assert.equal(relayed.toString(), 'Delivered-To: a@b\r\nReceived: from postfix.test ([127.0.0.1])\r\n\tby h (mailhook) with ESMTP id m3\r\n\tfor <a@b>; Thu, 1 Jan 1970 00:00:00 +0000\r\nS: x\r\n\r\nb');
});

test('trace fields name each recipient as GitLab writes its address: the route pattern\'s case, the key as captured', () => {
  const patterns = ['incoming+%{key}@Incoming.GitLab.example.com', 'support@gitlab.test', '*@catchall.test'];
  // GitLab's key_from_address is a case-sensitive whole-value match against the configured address.
  assert.equal(gitlabAddress({ address: 'INCOMING+Abc-1-issue@incoming.gitlab.EXAMPLE.com', key: 'Abc-1-issue' }, patterns), 'incoming+Abc-1-issue@Incoming.GitLab.example.com');
  assert.equal(gitlabAddress({ address: 'incoming+a$&b@incoming.gitlab.example.com', key: 'a$&b' }, patterns), 'incoming+a$&b@Incoming.GitLab.example.com');
  assert.equal(gitlabAddress({ address: 'Support@GitLab.test', key: null }, patterns), 'support@gitlab.test');
  assert.equal(gitlabAddress({ address: 'Anyone@CatchAll.test', key: null }, patterns), 'Anyone@CatchAll.test');
  assert.equal(gitlabAddress({ address: 'other+k@elsewhere.test', key: 'k' }, patterns), 'other+k@elsewhere.test');
  const body = gitlabBody({
    message: { id: 'm4', receivedAt: 0, source: 'smtp', envelope: { mailFrom: 'a@b', rcptTo: [], remoteAddress: null, helo: null, tls: null }, size: 0, dedupeKey: null, meta: null },
    delivery: { recipients: [{ address: 'Incoming+k1@INCOMING.gitlab.example.com', key: 'k1' }] } as never,
    route: { addresses: patterns },
    raw: Buffer.from('S: x\r\n\r\nb'),
    hostname: 'h',
  }).toString();
  assert.match(body, /^Delivered-To: incoming\+k1@Incoming\.GitLab\.example\.com\r\n/);
  assert.match(body, /\tfor <incoming\+k1@Incoming\.GitLab\.example\.com>;/);
  assert.equal(gitlabMailKey(Buffer.from(body), 'incoming+%{key}@Incoming.GitLab.example.com'), 'k1');
});

test('config: GitLab\'s address template as is, its secret file, and the endpoint URL checked', () => {
  const dir = tempDir();
  const good = loadConfigText(`routes:\n${routesYaml(dir, KEY.toString('base64'), 'https://gitlab.example.com/api/v4/internal/mail_room/service_desk_email')}`, { source: 't.yaml', baseDir: dir });
  assert.deepEqual(good.routes[0]?.webhook?.signingKeyBytes, KEY);
  assert.deepEqual(good.routes[0]?.addresses, ['incoming+%{key}@gitlab.test']);
  assert.throws(
    () => loadConfigText(`routes:\n${routesYaml(dir, KEY.toString('base64'), 'https://gitlab.example.com/api/v4/projects')}`, { source: 't.yaml', baseDir: dir }),
    (err: ConfigError) => err.problems.some((p) => p.path === 'routes[0].webhook.url' && /mail_room\/incoming_email/.test(p.message)),
  );
  assert.throws(
    () => loadConfigText(`routes:\n${routesYaml(dir, randomBytes(16).toString('base64'), 'https://gitlab.example.com/api/v4/internal/mail_room/incoming_email')}`, { source: 't.yaml', baseDir: dir }),
    (err: ConfigError) => err.problems.some((p) => /secret_file/.test(p.path) && /base64 of 32 bytes/.test(p.message)),
  );
});
