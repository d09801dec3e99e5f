import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { loadConfigFile, loadConfigText } from '../../src/config/load.js';
import { ConfigError } from '../../src/core/errors.js';
import { SECRET, tempDir } from '../helpers/app.js';

function problems(yaml: string, env: Record<string, string> = {}): string[] {
  try {
    loadConfigText(yaml, { source: 't.yaml', baseDir: tempDir(), env });
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.problems.map((p) => `${p.path}: ${p.message}`);
  }
  assert.fail('expected the configuration to be refused');
}

const route = (extra = '') => `
routes:
  - name: r1
    addresses: ["incoming+%{key}@x.test"]
    webhook: { url: "http://127.0.0.1:9/hook", secret: "${SECRET}" }
${extra}`;

test('defaults fill every section', () => {
  const c = loadConfigText(route(), { source: 't', baseDir: '/srv', env: {} });
  assert.deepEqual(c.smtp.listen, { host: '127.0.0.1', port: 2525 });
  assert.equal(c.smtp.max_message_bytes, 26_214_400);
  assert.equal(c.smtp.max_recipients, 100);
  assert.deepEqual(c.http.listen, { host: '127.0.0.1', port: 8025 });
  assert.equal(c.spool.path, '/srv/data/spool.db');
  assert.deepEqual(c.delivery.retry, { initial_delay_ms: 5000, max_delay_ms: 3_600_000, max_attempts: 20 });
  assert.equal(c.routes[0]?.webhook?.format, 'json');
});

test('unknown keys are named with their path', () => {
  const p = problems(`smtp:\n  lisen: "1.2.3.4:25"\n${route()}`);
  assert.equal(p.length, 1);
  assert.match(p[0]!, /^smtp: unknown key "lisen"/);
});

test('a missing secret names the key and the ways to set it', () => {
  const p = problems(`routes:\n  - name: gl\n    addresses: ["a@x.test"]\n    webhook: { url: "http://h/x" }\n`);
  assert.equal(p.length, 1);
  assert.match(p[0]!, /^routes\[0\]\.webhook\.secret: missing.*secret_file.*MAILHOOK_ROUTE_GL_SECRET/);
});

test('a secret that is not whsec_ base64 is refused with how to make one', () => {
  const p = problems(`routes:\n  - name: gl\n    addresses: ["a@x.test"]\n    webhook: { url: "http://h/x", secret: "hunter2" }\n`);
  assert.match(p[0]!, /routes\[0\]\.webhook\.secret: the secret is not a Standard Webhooks secret/);
  assert.ok(!p[0]!.includes('hunter2'), 'the secret itself never appears in the message');
});

test('two routes claiming the same address', () => {
  const p = problems(`${route()}
  - name: r2
    addresses: ["INCOMING+%{key}@X.test"]
    webhook: { url: "http://127.0.0.1:9/other", secret: "${SECRET}" }
`);
  assert.deepEqual(p, ['routes[1].addresses[0]: "INCOMING+%{key}@X.test" is already claimed by route "r1"; an address belongs to one route']);
});

test('bad listen address, bad URL, bad pattern and duplicate names are all reported at once', () => {
  const p = problems(`smtp:
  listen: "localhost"
http:
  listen: "127.0.0.1:99999"
routes:
  - name: a
    addresses: ["not-an-address"]
    webhook: { url: "ftp://x", secret: "${SECRET}" }
  - name: a
    addresses: ["b@x.test"]
    sink: true
`);
  const text = p.join('\n');
  assert.match(text, /smtp\.listen: "localhost" is not a listen address/);
  assert.match(text, /http\.listen: "127\.0\.0\.1:99999" is not a listen address/);
  assert.match(text, /routes\[0\]\.addresses\[0\]: "not-an-address" is not an address pattern/);
  assert.match(text, /routes\[0\]\.webhook\.url: must be an http/);
  assert.match(text, /routes\[1\]\.name: "a" is already the name of routes\[0\]/);
});

test('duplicate route names', () => {
  const p = problems(`routes:
  - name: a
    addresses: ["a@x.test"]
    sink: true
  - name: a
    addresses: ["b@x.test"]
    sink: true
`);
  assert.deepEqual(p, ['routes[1].name: "a" is already the name of routes[0]; route names must be unique']);
});

test('a route needs a webhook or sink', () => {
  const p = problems(`routes:\n  - name: a\n    addresses: ["a@x.test"]\n`);
  assert.match(p[0]!, /routes\[0\]: a route needs a webhook \(or sink: true\)/);
});

test('secret_file is read; environment overrides secrets and listen addresses', () => {
  const dir = tempDir();
  writeFileSync(join(dir, 'secret'), `${SECRET}\n`);
  const yaml = `routes:\n  - name: my-route\n    addresses: ["a@x.test"]\n    webhook: { url: "http://h/x", secret_file: secret }\n`;
  const c = loadConfigText(yaml, { source: 't', baseDir: dir, env: { MAILHOOK_SMTP_LISTEN: '0.0.0.0:25' } });
  assert.equal(c.routes[0]?.webhook?.signingKey?.reveal(), SECRET);
  assert.deepEqual(c.smtp.listen, { host: '0.0.0.0', port: 25 });
  assert.equal(JSON.stringify(c).includes(SECRET), false, 'secrets are redacted when the config is serialised');
  const p = problems(`routes:\n  - name: r\n    addresses: ["a@x.test"]\n    webhook: { url: "http://h/x", secret_file: /nonexistent/secret }\n`);
  assert.match(p[0]!, /routes\[0\]\.webhook\.secret_file: cannot read \/nonexistent\/secret \(ENOENT\)/);
  const fromEnv = loadConfigText(`routes:\n  - name: my-route\n    addresses: ["a@x.test"]\n    webhook: { url: "http://h/x" }\n`, { source: 't', baseDir: dir, env: { MAILHOOK_ROUTE_MY_ROUTE_SECRET: SECRET } });
  assert.equal(fromEnv.routes[0]?.webhook?.signingKey?.reveal(), SECRET);
});

test('the admin token: trimmed (a secret file or variable often ends in a newline), one word, 16 characters at least', () => {
  const dir = tempDir();
  const token = 'k'.repeat(24);
  const c = loadConfigText(route(), { source: 't', baseDir: dir, env: { MAILHOOK_ADMIN_TOKEN: `${token}\n` } });
  assert.equal(c.http.adminToken?.reveal(), token);
  // Only whitespace is not set, as for a route's secret variable.
  assert.equal(loadConfigText(route(), { source: 't', baseDir: dir, env: { MAILHOOK_ADMIN_TOKEN: '   \n' } }).http.adminToken, undefined);
  assert.deepEqual(problems(`http:\n  admin_token: "correct horse battery staple"\n${route()}`), ['http.admin_token: must be one word, no spaces: it is sent as "Authorization: Bearer <token>"']);
  writeFileSync(join(dir, 'token'), 'two words here, sixteen plus\n');
  const f = problems(`http:\n  admin_token_file: ${join(dir, 'token')}\n${route()}`);
  assert.deepEqual(f, ['http.admin_token_file: the token in the file must be one word, no spaces: it is sent as "Authorization: Bearer <token>"']);
});

test('durations and timeouts longer than a Node.js timer can wait are refused, naming the key (they would fire after 1 ms)', () => {
  const tooLong = 'must be at most 2147483647 ms (about 24.8 days), the longest timer Node.js can set';
  assert.deepEqual(problems(`spool:\n  retention:\n    interval: 4w\n${route()}`), [`spool.retention.interval: ${tooLong}`]);
  assert.deepEqual(problems(`delivery:\n  timeout_ms: 3000000000\n${route()}`), [`delivery.timeout_ms: ${tooLong}`]);
  // A longer session limit would end every session before its banner.
  assert.deepEqual(problems(`smtp:\n  limits:\n    max_session_ms: 3000000000\n${route()}`), [`smtp.limits.max_session_ms: ${tooLong}`]);
  // The longest that works is accepted.
  assert.equal(loadConfigText(`spool:\n  retention:\n    interval: 3w\n${route()}`, { source: 't', baseDir: tempDir(), env: {} }).spool.retention.interval, 3 * 604_800_000);
});

test('numbers out of range and a missing URL are told in words, not as zod\'s defaults', () => {
  assert.deepEqual(problems(`smtp:\n  max_recipients: 0\n${route()}`), ['smtp.max_recipients: must be at least 1']);
  assert.deepEqual(problems(`delivery:\n  parse_threads: 17\n${route()}`), ['delivery.parse_threads: must be at most 16']);
  assert.deepEqual(problems(`delivery:\n  concurrency: -1\n${route()}`), ['delivery.concurrency: must be at least 1']);
  const missing = problems(`routes:\n  - name: r\n    addresses: ["a@x.test"]\n    webhook:\n      secret: "${'s'.repeat(32)}"\n`);
  assert.deepEqual(missing, ['routes[0].webhook.url: is required: an http:// or https:// URL']);
});

test('format gitlab with a URL that is not one: a problem naming the key, not a crash', () => {
  const p = problems(`routes:\n  - name: gl\n    addresses: ["incoming+%{key}@x.test"]\n    webhook: { url: "not a url", format: gitlab, secret: "${'s'.repeat(32)}" }\n`);
  assert.equal(p.length, 1, p.join('\n'));
  assert.match(p[0]!, /^routes\[0\]\.webhook\.url: /);
});

test('YAML syntax errors and a missing file are reported, not thrown raw', () => {
  assert.match(problems('routes: [\n')[0]!, /^: YAML syntax at line 2, column 1: Flow sequence .*end with a \]$/);
  // Messages that would quote the file (the value may be a secret) say what is wrong without it.
  for (const value of ['|S3cretPassw0rd', '!e!S3cretPassw0rd', '"ab\\qS3cretPassw0rd"', '@S3cretPassw0rd', '>S3cretPassw0rd']) {
    const [p, ...more] = problems(`http:\n  admin_token: ${value}\n`);
    assert.deepEqual(more, [], value);
    assert.match(p!, /^: YAML syntax at line 2, column \d+: .*quote the value|^: YAML syntax at line 2, column \d+: an invalid escape sequence/, value);
    assert.ok(!p!.includes('S3cret'), `${value}: ${p}`);
  }
  assert.throws(() => loadConfigFile('/nonexistent/mailhook.yaml', {}, '/'), (err: unknown) => err instanceof ConfigError && /no such file/.test(err.message));
});

test('the shipped default config is valid', () => {
  const c = loadConfigFile(new URL('../../config/mailhook.yaml', import.meta.url).pathname, {}, '/srv');
  assert.deepEqual(c.smtp.listen, { host: '127.0.0.1', port: 2525 });
  assert.deepEqual(c.http.listen, { host: '127.0.0.1', port: 8025 });
  assert.equal(c.routes[0]?.sink, true);
});

test('a secret or a PEM block written into a *_file key is not echoed in the problem', () => {
  const secret = 'whsec_MfKQ9r2yTqv0cY3nL8pW1sX4aZ7bE6dG5hJ0kM2nP4q=';
  const p = problems(`routes:\n  - name: r\n    addresses: ["a@x.test"]\n    webhook: { url: "http://h/x", secret_file: "${secret}" }\n`);
  assert.equal(p.length, 1, p.join('\n'));
  assert.match(p[0]!, /^routes\[0\]\.webhook\.secret_file: cannot read the file it names \(ENOENT\).*set routes\[0\]\.webhook\.secret or its environment variable/);
  assert.ok(!p[0]!.includes('MfKQ'), p[0]);
  const password = problems(`routes:\n  - name: r\n    addresses: ["a@x.test"]\n    webhook: { url: "http://h/x", format: action_mailbox, secret_file: "pw-123456" }\n`);
  assert.ok(!password.join('\n').includes('pw-123456'), password.join('\n'));
  const pem = '-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\n-----END PRIVATE KEY-----\\n';
  const t = problems(`smtp:\n  tls:\n    key_file: "${pem}"\n    cert_file: /nonexistent/cert.pem\n${route()}`);
  assert.equal(t.length, 2, t.join('\n'));
  assert.match(t[0]!, /^smtp\.tls\.key_file: cannot read the file it names \(ENOENT\).*if it is the PEM itself/);
  assert.ok(!t.join('\n').includes('MIIEvQ'), t[0]);
  assert.equal(t[1], "smtp.tls.cert_file: cannot read /nonexistent/cert.pem (ENOENT); check the path and that mailhook's user may read it");
});

test('YAML aliases and tags: an alias to no anchor, an alias bomb and an unknown tag are problems naming the key, never the value', () => {
  const hook = `{ url: "http://h/x", format: action_mailbox, secret: `;
  const unresolved = problems(`routes:\n  - name: r\n    addresses: ["a@x.test"]\n    webhook: ${hook}*Tr0ub4dor }\n`);
  assert.equal(unresolved.length, 1, unresolved.join('\n'));
  assert.match(unresolved[0]!, /^routes\[0\]\.webhook\.secret: YAML: an alias .*quote the value/);
  assert.ok(!unresolved[0]!.includes('Tr0ub4dor'));
  const tagged = problems(`routes:\n  - name: r\n    addresses: ["a@x.test"]\n    webhook: ${hook}!r4ils pa55word }\n`);
  assert.equal(tagged.length, 1, tagged.join('\n'));
  assert.match(tagged[0]!, /^routes\[0\]\.webhook\.secret: YAML: unknown tag/);
  assert.ok(!/r4ils|pa55word/.test(tagged[0]!), tagged[0]);
  let bomb = 'a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n';
  for (let i = 1; i < 10; i++) bomb += `a${i}: &a${i} [${Array(10).fill(`*a${i - 1}`).join(', ')}]\n`;
  assert.match(problems(bomb + route())[0]!, /^: YAML: too many aliases/);
});

test('YAML merge keys (<<: *anchor) share settings between routes', () => {
  const c = loadConfigText(`routes:
  - name: a
    addresses: ["a@x.test"]
    webhook: &hook { url: "http://h/x", secret: "${SECRET}", timeout_ms: 1234 }
  - name: b
    addresses: ["b@x.test"]
    webhook: { <<: *hook, url: "http://h/y" }
`, { source: 't', baseDir: tempDir(), env: {} });
  assert.equal(c.routes[1]?.webhook?.url, 'http://h/y');
  assert.equal(c.routes[1]?.webhook?.timeoutMs, 1234);
});

test('route or mailbox names that map to one secret variable are a problem naming both and the variable', () => {
  const hook = `webhook: { url: "http://h/x", secret: "${SECRET}" }`;
  const p = problems(`routes:
  - name: gitlab-desk
    addresses: ["a@x.test"]
    ${hook}
  - name: gitlab_desk
    addresses: ["b@x.test"]
    ${hook}
  - name: Gitlab.Desk
    addresses: ["c@x.test"]
    ${hook}
`);
  assert.deepEqual(p, [
    'routes[1].name: "gitlab_desk" and routes[0] "gitlab-desk" would both read their secrets from MAILHOOK_ROUTE_GITLAB_DESK_SECRET; rename one so the route names differ in more than case and punctuation (renamed_from: [<old name>] on the renamed route keeps the mail the spool holds for it)',
    'routes[2].name: "Gitlab.Desk" and routes[0] "gitlab-desk" would both read their secrets from MAILHOOK_ROUTE_GITLAB_DESK_SECRET; rename one so the route names differ in more than case and punctuation (renamed_from: [<old name>] on the renamed route keeps the mail the spool holds for it)',
  ]);
  const m = problems(`${route()}imap:
  - { name: support-in, host: imap.x.test, user: u, password: p1 }
  - { name: support_in, host: imap.x.test, user: u, password: p2 }
`);
  assert.equal(m.length, 1, m.join('\n'));
  assert.match(m[0]!, /^imap\[1\]\.name: "support_in" and imap\[0\] "support-in" would both read their secrets from MAILHOOK_IMAP_SUPPORT_IN_PASSWORD, MAILHOOK_IMAP_SUPPORT_IN_CLIENT_SECRET/);
});

test('renamed_from names earlier names no route has now, each for one route', () => {
  const hook = `webhook: { url: "http://h/x", secret: "${SECRET}" }`;
  const c = loadConfigText(`routes:\n  - name: desk\n    renamed_from: [app-desk, old.desk]\n    addresses: ["a@x.test"]\n    ${hook}\n`, { source: 't', baseDir: tempDir(), env: {} });
  assert.deepEqual(c.routes[0]?.renamedFrom, ['app-desk', 'old.desk']);
  const p = problems(`routes:
  - name: desk
    renamed_from: [desk, tracker, old]
    addresses: ["a@x.test"]
    ${hook}
  - name: tracker
    renamed_from: [old, "bad name"]
    addresses: ["b@x.test"]
    ${hook}
`);
  assert.deepEqual(p, [
    'routes[1].renamed_from[1]: use letters, digits, "-", "_" and "." (an earlier name of this route)',
  ]);
  const q = problems(`routes:
  - name: desk
    renamed_from: [desk, tracker, old]
    addresses: ["a@x.test"]
    ${hook}
  - name: tracker
    renamed_from: [old]
    addresses: ["b@x.test"]
    ${hook}
`);
  assert.deepEqual(q, [
    'routes[0].renamed_from[0]: "desk" is the name of routes[0] itself; renamed_from lists earlier names that no route has now',
    'routes[0].renamed_from[1]: "tracker" is the name of routes[1]; renamed_from lists earlier names that no route has now',
    'routes[1].renamed_from[0]: "old" is in routes[0].renamed_from already; the deliveries under an earlier name go to one route',
  ]);
});

test('secret key bytes do not show when the config is serialised or inspected (action_mailbox password)', () => {
  const password = 'pw-123456';
  const c = loadConfigText(`routes:\n  - name: rails\n    addresses: ["a@x.test"]\n    webhook: { url: "http://h/x", format: action_mailbox, secret: "${password}" }\n`, { source: 't', baseDir: tempDir(), env: {} });
  assert.deepEqual(c.routes[0]?.webhook?.signingKeyBytes, Buffer.from(password), 'the formats still read the bytes');
  const bytes = Buffer.from(password);
  const forms = [password, bytes.toString('hex'), bytes.toString('base64'), [...bytes].join(','), [...bytes].map((b) => b.toString(16).padStart(2, '0')).join(' ')];
  for (const text of [JSON.stringify(c), JSON.stringify(c.routes), inspect(c, { depth: Infinity }), inspect(c.routes[0]?.webhook, { depth: Infinity })]) {
    for (const form of forms) assert.ok(!text.includes(form), `${form} appears in ${text.slice(0, 400)}`);
  }
});

test('problems in values from the environment name the variable, not the file', () => {
  assert.deepEqual(problems(route(), { MAILHOOK_ADMIN_TOKEN: 'short' }), [
    'http.admin_token: must be at least 16 characters (the value comes from the environment variable MAILHOOK_ADMIN_TOKEN, not the file: fix or unset MAILHOOK_ADMIN_TOKEN)',
  ]);
  const tls = problems(route(), { MAILHOOK_SMTP_IMPLICIT_LISTEN: '127.0.0.1:465' });
  assert.ok(tls.length > 0 && tls.every((p) => /^smtp\.tls\.(key|cert)_file: .*smtp\.tls is only there because the environment variable MAILHOOK_SMTP_IMPLICIT_LISTEN is set/.test(p)), tls.join('\n'));
  const postmark = problems(`routes:\n  - name: pm\n    addresses: ["a@x.test"]\n    webhook: { url: "http://h/x", format: postmark }\n`, { MAILHOOK_ROUTE_PM_SECRET: 'abc' });
  assert.deepEqual(postmark, ['routes[0].webhook.secret: format postmark takes no secret; remove it (the value comes from the environment variable MAILHOOK_ROUTE_PM_SECRET, not the file: fix or unset MAILHOOK_ROUTE_PM_SECRET)']);
});

test('secrets from the environment are trimmed like secret files (a Kubernetes Secret made --from-file keeps the newline)', () => {
  const c = loadConfigText(`routes:\n  - name: rails\n    addresses: ["a@x.test"]\n    webhook: { url: "http://h/x", format: action_mailbox }\nimap:\n  - { name: box, host: imap.x.test, user: u }\n`, {
    source: 't',
    baseDir: tempDir(),
    env: { MAILHOOK_ROUTE_RAILS_SECRET: 'ingress-pw\r\n', MAILHOOK_IMAP_BOX_PASSWORD: 'imap-pw\n' },
  });
  assert.equal(c.routes[0]?.webhook?.signingKey?.reveal(), 'ingress-pw');
  assert.deepEqual(c.routes[0]?.webhook?.signingKeyBytes, Buffer.from('ingress-pw'));
  const box = c.imap[0];
  assert.ok(box?.method === 'imap' && box.auth.kind === 'password');
  assert.equal(box.auth.password.reveal(), 'imap-pw');
});

test('credentials in a webhook or verify URL are a problem for the formats that would not send them', () => {
  const hook = (format: string, secret: string) => `routes:\n  - name: r\n    addresses: ["a@x.test"]\n    webhook: { url: "https://user:pa55@app.x.test/api/v4/internal/mail_room/incoming_email", format: ${format}${secret ? `, secret: "${secret}"` : ''} }\n`;
  for (const [format, secret] of [['json', SECRET], ['raw', SECRET], ['gitlab', Buffer.alloc(32, 1).toString('base64')], ['action_mailbox', 'pw-123456']] as const) {
    const p = problems(hook(format, secret));
    assert.equal(p.length, 1, p.join('\n'));
    assert.match(p[0]!, new RegExp(`^routes\\[0\\]\\.webhook\\.url: credentials in the URL \\(user:password@\\) are not sent by format ${format}, only by mailgun, postmark, sendgrid`));
    assert.ok(!p[0]!.includes('pa55'));
  }
  for (const format of ['mailgun', 'postmark', 'sendgrid']) {
    loadConfigText(hook(format, format === 'mailgun' ? 'key-1' : ''), { source: 't', baseDir: tempDir(), env: {} });
  }
  const v = problems(`routes:\n  - name: r\n    addresses: ["a@x.test"]\n    sink: true\n    verify: { url: "https://u:p@app.x.test/exists" }\n`);
  assert.deepEqual(v, ["routes[0].verify.url: credentials in the URL (user:password@) are not sent with verify requests; remove them (the requests are signed with the route's webhook secret, when it has one)"]);
});

test('delivery.retry.max_delay_ms below initial_delay_ms is refused', () => {
  assert.deepEqual(problems(`delivery:\n  retry:\n    initial_delay_ms: 60000\n    max_delay_ms: 1000\n${route()}`), ['delivery.retry.max_delay_ms: must be at least initial_delay_ms (60000); raise it or lower initial_delay_ms']);
  assert.deepEqual(problems(`delivery:\n  retry:\n    initial_delay_ms: 7200000\n${route()}`), ['delivery.retry.max_delay_ms: must be at least initial_delay_ms (7200000); raise it or lower initial_delay_ms']);
});

test('an admin token that is an example\'s placeholder is refused, from the file, a token file or the environment', () => {
  const message = 'is a placeholder from an example (it contains REPLACE or CHANGE_ME), not a token; generate one, e.g. openssl rand -hex 24';
  assert.deepEqual(problems(`http:\n  admin_token: "change_me_change_me_change_me"\n${route()}`), [`http.admin_token: ${message}`]);
  assert.deepEqual(problems(route(), { MAILHOOK_ADMIN_TOKEN: 'REPLACE_WITH_A_LONG_RANDOM_TOKEN' }), [`http.admin_token: ${message} (the value comes from the environment variable MAILHOOK_ADMIN_TOKEN, not the file: fix or unset MAILHOOK_ADMIN_TOKEN)`]);
  const dir = tempDir();
  writeFileSync(join(dir, 'token'), 'ChangeMe-0123456789abcdef\n');
  assert.deepEqual(problems(`http:\n  admin_token_file: ${join(dir, 'token')}\n${route()}`), [`http.admin_token_file: the token in the file ${message}`]);
});

test('a section whose keys are all commented out (null) takes its defaults', () => {
  const c = loadConfigText(`smtp:\n  # listen: "0.0.0.0:25"\n  limits:\nhttp:\nspool:\n  retention:\ndelivery:\n  retry:\nlog:\nimap:\n${route()}`, { source: 't', baseDir: '/srv', env: {} });
  assert.deepEqual(c.smtp.listen, { host: '127.0.0.1', port: 2525 });
  assert.equal(c.smtp.limits.max_errors, 20);
  assert.deepEqual(c.http.listen, { host: '127.0.0.1', port: 8025 });
  assert.equal(c.spool.path, '/srv/data/spool.db');
  assert.equal(c.delivery.retry.max_attempts, 20);
  assert.equal(c.log.level, 'info');
  assert.deepEqual(c.imap, []);
});

test('a value of the wrong type gets what to write instead, not only zod\'s "Invalid input"', () => {
  assert.deepEqual(problems(`smtp:\n  proxy_protocol: "on"\n  lmtp: yes\n  max_clients: "10"\nhttp: []\n${route()}`), [
    'smtp.max_clients: must be a number (unquoted, digits only, e.g. 100)',
    'smtp.lmtp: must be true or false (unquoted; YAML 1.2 reads yes, no, on and off as text)',
    "smtp.proxy_protocol: write true (from every peer), false, or a list of the balancers' IP addresses",
    'http: must be a mapping of keys (key: value lines, indented under it)',
  ]);
});

test('two listeners on one port are a problem naming both keys (start-up said "another program listens there")', () => {
  assert.deepEqual(problems(`smtp:\n  listen: "127.0.0.1:2600"\nhttp:\n  listen: "127.0.0.1:2600"\n${route()}`), [
    "http.listen: port 2600 is also smtp.listen's (127.0.0.1:2600); each listener needs a port of its own: give http.listen another port",
  ]);
  // A wildcard host shares its port with every address.
  assert.deepEqual(problems(`smtp:\n  listen: "0.0.0.0:2600"\nhttp:\n  listen: "127.0.0.1:2600"\n${route()}`), [
    "http.listen: port 2600 is also smtp.listen's (0.0.0.0:2600); each listener needs a port of its own: give http.listen another port",
  ]);
  // Different addresses, or port 0 (any free port), do not clash.
  assert.deepEqual(problems(`smtp:\n  listen: "[::]:2600"\nhttp:\n  listen: "127.0.0.1:2600"\n${route()}`), [
    "http.listen: port 2600 is also smtp.listen's ([::]:2600); each listener needs a port of its own: give http.listen another port",
  ]);
  // 0.0.0.0 is IPv4's wildcard: an IPv6 address binds the same port beside it.
  for (const [smtp, http] of [['127.0.0.1:2600', '127.0.0.2:2600'], ['127.0.0.1:0', '127.0.0.1:0'], ['0.0.0.0:2600', '[::1]:2600']] as const) {
    const config = loadConfigText(`smtp:\n  listen: "${smtp}"\nhttp:\n  listen: "${http}"\n${route()}`, { source: 't.yaml', baseDir: tempDir(), env: {} });
    assert.equal(config.http.listen.port, Number(http.split(':').at(-1)));
  }
});
