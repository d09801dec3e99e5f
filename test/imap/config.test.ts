// The imap: list: GitLab's names and defaults, secrets from files, and start-up problems named by key path.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadConfigText } from '../../src/config/load.js';
import { ConfigError } from '../../src/core/errors.js';
import type { GraphMailboxSettings, ImapMailboxSettings } from '../../src/config/mailboxes.js';
import { SECRET, tempDir } from '../helpers/app.js';

const routes = `
routes:
  - name: tracker
    addresses: ["incoming+%{key}@x.test"]
    webhook: { url: "http://127.0.0.1:9/hook", secret: "${SECRET}" }
`;

function load(imap: string, dir = tempDir()) {
  return loadConfigText(`${routes}imap:\n${imap}`, { source: 't.yaml', baseDir: dir, env: {} });
}

function problems(imap: string, dir?: string): string[] {
  try {
    load(imap, dir);
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.problems.map((p) => `${p.path}: ${p.message}`);
  }
  assert.fail('expected the configuration to be refused');
}

test('GitLab names with their defaults; the secret comes from password_file', () => {
  const dir = tempDir();
  writeFileSync(join(dir, 'imap-pw'), 'hunter2\n');
  const c = load(`  - name: gitlab-inbox\n    host: imap.example.com\n    user: incoming@example.com\n    password_file: imap-pw\n`, dir);
  const m = c.imap[0] as ImapMailboxSettings;
  assert.equal(m.method, 'imap');
  assert.equal(m.port, 993);
  assert.equal(m.ssl, true);
  assert.equal(m.startTls, false);
  assert.equal(m.mailbox, 'INBOX');
  assert.equal(m.idleTimeoutMs, 60_000);
  assert.deepEqual(m.afterDelivery, { kind: 'flag' });
  assert.deepEqual(m.unmatched, { kind: 'leave' });
  assert.deepEqual(m.recipientsFrom, ['to', 'delivered-to', 'x-delivered-to', 'envelope-to', 'x-envelope-to', 'received', 'x-original-to', 'x-forwarded-to', 'cc']);
  assert.equal(m.claim, 'auto');
  assert.equal(m.auth.kind === 'password' && m.auth.password.reveal(), 'hunter2');
  assert.equal(JSON.stringify(m.auth), '{"kind":"password","password":"[redacted]"}');
  assert.deepEqual(c.imap.length, 1);
});

test('STARTTLS on 143, after_delivery move:<folder>, unmatched route:<name>', () => {
  const c = load(`  - name: a\n    host: h\n    ssl: false\n    start_tls: true\n    user: u\n    password: p\n    after_delivery: "move:Archive/mailhook"\n    unmatched: route:tracker\n    recipients_from: [delivered-to, to]\n`);
  const m = c.imap[0] as ImapMailboxSettings;
  assert.equal(m.port, 143);
  assert.equal(m.startTls, true);
  assert.deepEqual(m.afterDelivery, { kind: 'move', folder: 'Archive/mailhook' });
  assert.deepEqual(m.unmatched, { kind: 'route', route: 'tracker' });
  assert.deepEqual(m.recipientsFrom, ['delivered-to', 'to']);
});

test('OAuth2: Office 365 client credentials and Gmail refresh token get their endpoints and scope', () => {
  const dir = tempDir();
  writeFileSync(join(dir, 'rt'), 'refresh-token-value');
  const c = load(
    `  - name: o365\n    host: outlook.office365.com\n    user: in@corp.test\n    oauth2: { grant: client_credentials, tenant_id: t-1, client_id: app, client_secret: s }\n` +
      `  - name: gmail\n    host: imap.gmail.com\n    user: in@gmail.test\n    oauth2: { grant: refresh_token, client_id: g, client_secret: gs, refresh_token_file: rt }\n`,
    dir,
  );
  const [o, g] = c.imap as ImapMailboxSettings[];
  assert.ok(o!.auth.kind === 'oauth2' && g!.auth.kind === 'oauth2');
  assert.equal(o!.auth.tokenUrl, 'https://login.microsoftonline.com/t-1/oauth2/v2.0/token');
  assert.equal(o!.auth.scope, 'https://outlook.office365.com/.default');
  assert.equal(g!.auth.tokenUrl, 'https://oauth2.googleapis.com/token');
  assert.equal(g!.auth.refreshToken?.reveal(), 'refresh-token-value');
});

test('microsoft_graph: inbox_options with national-cloud endpoints and a secret file', () => {
  const dir = tempDir();
  writeFileSync(join(dir, 'graph-secret'), 'graph-secret-value');
  const c = load(
    `  - name: graph\n    inbox_method: microsoft_graph\n    user: support@corp.test\n    mailbox: inbox\n    after_delivery: delete\n    inbox_options:\n      tenant_id: t-2\n      client_id: app-2\n      client_secret_file: graph-secret\n      poll_interval: 5\n      azure_ad_endpoint: https://login.microsoftonline.us/\n      graph_endpoint: https://graph.microsoft.us\n`,
    dir,
  );
  const g = c.imap[0] as GraphMailboxSettings;
  assert.equal(g.method, 'microsoft_graph');
  assert.equal(g.tokenUrl, 'https://login.microsoftonline.us/t-2/oauth2/v2.0/token');
  assert.equal(g.graphEndpoint, 'https://graph.microsoft.us');
  assert.equal(g.pollIntervalMs, 5000);
  assert.equal(g.clientSecret.reveal(), 'graph-secret-value');
  const d = load(`  - name: g\n    inbox_method: microsoft_graph\n    user: u@corp.test\n    after_delivery: move:Archive\n    inbox_options: { tenant_id: t, client_id: c, client_secret: s }\n`).imap[0] as GraphMailboxSettings;
  assert.equal(d.mailbox, 'inbox', 'the default INBOX is Graph\'s well-known "inbox"');
  assert.deepEqual(d.afterDelivery, { kind: 'move', folder: 'archive' });
  assert.equal(d.pollIntervalMs, 10_000);
  assert.equal(d.tokenUrl, 'https://login.microsoftonline.com/t/oauth2/v2.0/token');
  assert.equal(d.graphEndpoint, 'https://graph.microsoft.com');
});

test('every problem is reported at once, named by its key path, with the fix', () => {
  const p = problems(
    `  - name: a\n    user: u\n` + // no host, no credentials
      `  - name: a\n    host: h\n    user: u\n    password: p\n    oauth2: { grant: refresh_token, client_id: c }\n` + // duplicate name, two credentials, no refresh token
      `  - name: b\n    host: h\n    user: u\n    password: p\n    start_tls: true\n    idle_timeout: 3600\n    after_delivery: archive\n    recipients_from: [to, reply-to]\n` +
      `  - name: c\n    host: h\n    user: u\n    password_file: /nonexistent/pw\n    unmatched: route:nowhere\n` +
      `  - name: d\n    inbox_method: microsoft_graph\n    user: u\n    host: h\n`,
  );
  const has = (re: RegExp) => assert.ok(p.some((x) => re.test(x)), `${re} in:\n${p.join('\n')}`);
  has(/^imap\[0\]\.host: is required for inbox_method imap/);
  has(/^imap\[0\]\.password_file: set one of password, password_file or oauth2/);
  has(/^imap\[1\]\.oauth2: set only one of password, password_file or oauth2 \(password and oauth2 are set\)$/);
  has(/^imap\[1\]\.oauth2\.refresh_token_file: grant refresh_token needs refresh_token or refresh_token_file/);
  has(/^imap\[2\]\.start_tls: ssl: true is implicit TLS .* set ssl: false to use STARTTLS/);
  has(/^imap\[2\]\.idle_timeout: /);
  has(/^imap\[2\]\.after_delivery: write delete, flag or move:<folder>/);
  has(/^imap\[2\]\.recipients_from\[1\]: /);
  has(/^imap\[4\]\.inbox_options: is required for inbox_method: microsoft_graph/);
  has(/^imap\[4\]\.host: applies to inbox_method: imap only/);
});

test('GitLab\'s incoming_email keys copied into a mailbox are refused with what mailhook calls them', () => {
  const p = problems(`  - { name: a, host: h, user: u, password: p, delete_after_delivery: true, expunge_deleted: true }\n  - { name: b, host: h, user: u, password: p, mailbox_typo: x }\n`);
  assert.deepEqual(p, [
    'imap[0]: unknown keys "delete_after_delivery", "expunge_deleted"; check the spelling against the config reference (docs/configuration.md); ' +
      "from GitLab's incoming_email: delete_after_delivery: write after_delivery: delete (GitLab deletes by default; mailhook's default is after_delivery: flag); expunge_deleted: after_delivery: delete expunges the messages it deletes",
    'imap[1]: unknown key "mailbox_typo"; check the spelling against the config reference (docs/configuration.md)',
  ]);
});

test('an OAuth or Graph endpoint with a user or password in it is refused, without repeating them', () => {
  const p = problems(
    `  - name: a\n    host: h\n    user: u\n    oauth2: { grant: client_credentials, client_id: c, client_secret: s, token_url: "https://app:TopSecret1@idp.test/token" }\n` +
      `  - name: g\n    inbox_method: microsoft_graph\n    user: u\n    inbox_options: { tenant_id: t, client_id: c, client_secret: s, graph_endpoint: "https://x:TopSecret2@graph.test", azure_ad_endpoint: "https://y:TopSecret3@login.test" }\n`,
  );
  const fix = 'must not carry a user or password (https://user:pass@…): they would not be sent; give the client secret as client_secret or client_secret_file';
  assert.deepEqual(p.sort(), [`imap[0].oauth2.token_url: ${fix}`, `imap[1].inbox_options.azure_ad_endpoint: ${fix}`, `imap[1].inbox_options.graph_endpoint: ${fix}`]);
});

test('cross-checks after the schema: unique names, known routes, readable secret files', () => {
  const p = problems(`  - name: a\n    host: h\n    user: u\n    password: p\n  - name: a\n    host: h\n    user: u\n    password_file: /nonexistent/pw\n    unmatched: route:nowhere\n`);
  assert.deepEqual(p.sort(), [
    'imap[1].name: "a" is already the name of imap[0]; mailbox names must be unique (they key deduplication)',
    'imap[1].password_file: cannot read /nonexistent/pw (ENOENT); check the path and that mailhook\'s user may read it',
    'imap[1].unmatched: no route is named "nowhere"; name one of: tracker',
  ]);
});

test('no imap: list means no mailboxes', () => {
  const c = loadConfigText(routes, { source: 't', baseDir: tempDir(), env: {} });
  assert.deepEqual(c.imap, []);
});

test('claims: claim_folder and claim_timeout for both methods; Graph claims by move (auto), keyword is refused there', () => {
  const c = load(`  - name: a\n    host: h\n    user: u\n    password: p\n    claim: move\n    claim_folder: Work/claimed\n    claim_timeout: 60\n  - name: g\n    inbox_method: microsoft_graph\n    user: u@corp.test\n    inbox_options: { tenant_id: t, client_id: c, client_secret: s }\n  - name: g1\n    inbox_method: microsoft_graph\n    user: u@corp.test\n    claim: none\n    inbox_options: { tenant_id: t, client_id: c, client_secret: s }\n`);
  const [a, g, g1] = c.imap as [ImapMailboxSettings, GraphMailboxSettings, GraphMailboxSettings];
  assert.equal(a.claim, 'move');
  assert.equal(a.claimFolder, 'Work/claimed');
  assert.equal(a.claimTimeoutMs, 60_000);
  assert.equal(g.claim, 'move');
  assert.equal(g.claimFolder, 'mailhook-processing');
  assert.equal(g.claimTimeoutMs, 300_000);
  assert.equal(g1.claim, 'none');
  assert.deepEqual(problems(`  - name: g\n    inbox_method: microsoft_graph\n    user: u\n    claim: keyword\n    inbox_options: { tenant_id: t, client_id: c, client_secret: s }\n`), [
    'imap[0].claim: microsoft_graph has no keywords to claim with; use auto or move (move to claim_folder) or none (one instance)',
  ]);
});
