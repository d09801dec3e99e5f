// MAILHOOK_* environment overrides: every secret and listen address can come from the environment, and each is documented.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ENV_OVERRIDES, loadConfigText, mailboxSecretEnvName, MAILBOX_SECRET_ENV, routeSecretEnvName } from '../../src/config/load.js';
import type { ImapMailboxSettings, GraphMailboxSettings } from '../../src/config/mailboxes.js';
import { tempDir } from '../helpers/app.js';

const ROOT = join(import.meta.dirname, '..', '..');
const ROUTE = 'routes:\n  - name: s\n    addresses: ["a@x.test"]\n    sink: true\n';

test('a secret from the environment wins over the *_file the configuration names', () => {
  const dir = tempDir();
  writeFileSync(join(dir, 'token'), 'from-the-file-0123456789');
  const c = loadConfigText(`http:\n  admin_token_file: ${join(dir, 'token')}\n${ROUTE}`, { source: 't', baseDir: dir, env: { MAILHOOK_ADMIN_TOKEN: 'from-the-environment-0123' } });
  assert.equal(c.http.adminToken?.reveal(), 'from-the-environment-0123');
  const fromFile = loadConfigText(`http:\n  admin_token_file: ${join(dir, 'token')}\n${ROUTE}`, { source: 't', baseDir: dir, env: {} });
  assert.equal(fromFile.http.adminToken?.reveal(), 'from-the-file-0123456789');
});

test('listen addresses, including the implicit-TLS listener nested under smtp.tls', () => {
  const dir = tempDir();
  const c = loadConfigText(ROUTE, { source: 't', baseDir: dir, env: { MAILHOOK_SMTP_LISTEN: '0.0.0.0:25', MAILHOOK_HTTP_LISTEN: '[::]:8025' } });
  assert.deepEqual(c.smtp.listen, { host: '0.0.0.0', port: 25 });
  assert.deepEqual(c.http.listen, { host: '::', port: 8025 });
  // Without the rest of smtp.tls the override is reported under its key, not ignored.
  assert.throws(
    () => loadConfigText(ROUTE, { source: 't', baseDir: dir, env: { MAILHOOK_SMTP_IMPLICIT_LISTEN: '0.0.0.0:465' } }),
    (err: { problems: Array<{ path: string }> }) => err.problems.some((p) => p.path.startsWith('smtp.tls')),
  );
});

test('mailbox secrets: password, OAuth client secret and refresh token, Graph client secret', () => {
  const dir = tempDir();
  writeFileSync(join(dir, 'pw'), 'file-password');
  const yaml = `${ROUTE}imap:
  - name: support-box
    host: imap.example.test
    user: support@example.test
    password_file: ${join(dir, 'pw')}
  - name: gmail
    host: imap.gmail.com
    user: me@gmail.example
    oauth2: { grant: refresh_token, client_id: cid, client_secret_file: ${join(dir, 'pw')}, refresh_token_file: ${join(dir, 'pw')} }
  - name: o365
    inbox_method: microsoft_graph
    user: box@example.test
    inbox_options: { tenant_id: t, client_id: c, client_secret_file: ${join(dir, 'pw')} }
`;
  const env = {
    [mailboxSecretEnvName('support-box', 'PASSWORD')]: 'env-password',
    [mailboxSecretEnvName('gmail', 'CLIENT_SECRET')]: 'env-client-secret',
    [mailboxSecretEnvName('gmail', 'REFRESH_TOKEN')]: 'env-refresh-token',
    [mailboxSecretEnvName('o365', 'CLIENT_SECRET')]: 'env-graph-secret',
  };
  assert.equal(mailboxSecretEnvName('support-box', 'PASSWORD'), 'MAILHOOK_IMAP_SUPPORT_BOX_PASSWORD');
  const c = loadConfigText(yaml, { source: 't', baseDir: dir, env });
  const [box, gmail, o365] = c.imap as [ImapMailboxSettings, ImapMailboxSettings, GraphMailboxSettings];
  assert.equal(box.auth.kind === 'password' && box.auth.password.reveal(), 'env-password');
  assert.ok(gmail.auth.kind === 'oauth2');
  assert.equal(gmail.auth.clientSecret?.reveal(), 'env-client-secret');
  assert.equal(gmail.auth.refreshToken?.reveal(), 'env-refresh-token');
  assert.equal(o365.clientSecret.reveal(), 'env-graph-secret');
  const noEnv = loadConfigText(yaml, { source: 't', baseDir: dir, env: {} });
  assert.equal((noEnv.imap[0] as ImapMailboxSettings).auth.kind === 'password' && ((noEnv.imap[0] as ImapMailboxSettings).auth as { password: { reveal(): string } }).password.reveal(), 'file-password');
});

test('README and the configuration reference document every variable', () => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const section = /^## Environment variables\n([\s\S]*?)(?=^## |(?![\s\S]))/m.exec(readme)?.[1];
  assert.ok(section, 'README.md has a section "## Environment variables"');
  const reference = readFileSync(join(ROOT, 'docs', 'configuration.md'), 'utf8');
  for (const doc of [section, reference]) {
    for (const o of ENV_OVERRIDES) assert.ok(doc.includes(o.env), `${o.env} is documented`);
    const placeholder = (name: string) => name.replace('NAME', '<NAME>');
    assert.ok(doc.includes(placeholder(routeSecretEnvName('NAME'))), 'MAILHOOK_ROUTE_<NAME>_SECRET is documented');
    for (const m of MAILBOX_SECRET_ENV) assert.ok(doc.includes(placeholder(mailboxSecretEnvName('NAME', m.what))), `${placeholder(mailboxSecretEnvName('NAME', m.what))} is documented`);
  }
});
