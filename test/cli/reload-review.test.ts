// SIGHUP's second reading of the configuration file (src/cli/serve.ts reviewConfigFile): which sections changed,
// secrets included (they serialise as "[redacted]"), never their values; IMAP secret files are followed at run time.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { reviewConfigFile } from '../../src/cli/serve.js';
import { loadConfigFile } from '../../src/config/load.js';
import { createLogger } from '../../src/core/logger.js';
import { tempDir } from '../helpers/app.js';

const key = (n: number) => `whsec_${Buffer.alloc(32, n).toString('base64')}`;

test('a rotated webhook secret, secret file or admin token is a changed section; an IMAP password file is followed, not a change', () => {
  const dir = tempDir();
  const file = join(dir, 'mailhook.yaml');
  const routeSecret = join(dir, 'route.secret');
  const imapPassword = join(dir, 'imap.password');
  const yaml = (o: { inline: string; token: string }) =>
    `spool:\n  path: ${join(dir, 'spool.db')}\nhttp:\n  admin_token: "${o.token}"\nroutes:\n` +
    `  - name: a\n    addresses: ["a@x.test"]\n    webhook: { url: "http://127.0.0.1:9/a", secret: "${o.inline}" }\n` +
    `  - name: b\n    addresses: ["b@x.test"]\n    webhook: { url: "http://127.0.0.1:9/b", secret_file: ${routeSecret} }\n` +
    `imap:\n  - { name: box, host: 127.0.0.1, user: u, ssl: false, password_file: ${imapPassword} }\n`;
  writeFileSync(routeSecret, key(2));
  writeFileSync(imapPassword, 'pw-one');
  writeFileSync(file, yaml({ inline: key(1), token: 'token-0123456789abcdef-one' }));
  const running = loadConfigFile(file, {}, dir);
  const review = () => {
    const lines: Array<{ msg: string; changed?: string[] }> = [];
    const log = createLogger({ level: 'info', destination: new Writable({ write: (c: Buffer, _e, cb) => (lines.push(JSON.parse(c.toString()) as { msg: string }), cb()) }) });
    reviewConfigFile({ configFile: file, env: {}, cwd: dir } as Parameters<typeof reviewConfigFile>[0], running, log);
    return lines;
  };
  assert.deepEqual(review(), [], 'nothing changed');
  writeFileSync(imapPassword, 'pw-two');
  assert.deepEqual(review(), [], 'an IMAP password file is read again at each login: not a change that needs a restart');
  writeFileSync(file, yaml({ inline: key(3), token: 'token-0123456789abcdef-one' }));
  assert.deepEqual(review().map((l) => l.changed), [['routes']], 'an inline webhook secret');
  writeFileSync(file, yaml({ inline: key(1), token: 'token-0123456789abcdef-one' }));
  writeFileSync(routeSecret, key(4));
  assert.deepEqual(review().map((l) => l.changed), [['routes']], 'a webhook secret_file rewritten');
  writeFileSync(routeSecret, key(2));
  writeFileSync(file, yaml({ inline: key(1), token: 'token-0123456789abcdef-two' }));
  const lines = review();
  assert.deepEqual(lines.map((l) => l.changed), [['http']], 'the admin token');
  for (const secret of [key(1), key(2), key(3), key(4), 'token-0123456789abcdef', 'pw-']) assert.ok(!JSON.stringify(lines).includes(secret.slice(0, 20)));
});
