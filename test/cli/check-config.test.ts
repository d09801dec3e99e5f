// mailhook check-config (the built bin/mailhook): it refuses what serve would refuse at start-up, naming the key.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SECRET, tempDir } from '../helpers/app.js';
import { makeCert, opensslMissing } from '../smtp/support.js';

const BIN = fileURLToPath(new URL('../../bin/mailhook', import.meta.url));

function checkConfig(file: string, env: Record<string, string> = {}): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, 'check-config', '--config', file], { env: { PATH: process.env.PATH ?? '', ...env }, timeout: 30_000 }, (err, out, errText) => {
      resolve({ code: err ? Number((err as { code?: unknown }).code ?? -1) : 0, out, err: errText });
    });
  });
}

const routes = `routes:\n  - name: r\n    addresses: ["a@x.test"]\n    webhook: { url: "http://127.0.0.1:9/hook", secret: "${SECRET}" }\n`;

test('check-config: a TLS key that is not the certificate\'s, or junk PEM, is refused naming the key, without key material', { skip: opensslMissing() }, async () => {
  const dir = tempDir();
  const a = makeCert(join(dir, 'a'), 'a');
  const b = makeCert(join(dir, 'b'), 'b');
  const cfg = (key: string, cert: string) => {
    const file = join(dir, `m-${Math.random().toString(36).slice(2)}.yaml`);
    writeFileSync(file, `smtp:\n  tls: { key_file: ${key}, cert_file: ${cert} }\nspool:\n  path: ${join(dir, 'spool.db')}\n${routes}`);
    return file;
  };
  const good = await checkConfig(cfg(a.key, a.cert));
  assert.equal(good.code, 0, good.err);
  const mismatch = await checkConfig(cfg(b.key, a.cert));
  assert.equal(mismatch.code, 2, mismatch.out);
  assert.match(mismatch.err, /smtp\.tls\.key_file: does not belong to the certificate in smtp\.tls\.cert_file/);
  const keyBody = readFileSync(b.key, 'utf8').split('\n')[1]!;
  assert.ok(!mismatch.err.includes(keyBody), 'no key material in the message');
  writeFileSync(join(dir, 'junk.pem'), '-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n');
  const junkKey = await checkConfig(cfg(join(dir, 'junk.pem'), a.cert));
  assert.equal(junkKey.code, 2);
  assert.match(junkKey.err, /smtp\.tls\.key_file: is not a usable PEM private key/);
  assert.ok(!junkKey.err.includes('bm90IGEga2V5'));
  const junkCert = await checkConfig(cfg(a.key, join(dir, 'junk.pem')));
  assert.equal(junkCert.code, 2);
  assert.match(junkCert.err, /smtp\.tls\.cert_file: is not a usable PEM certificate chain/);
});

test('check-config: a spool path whose folder cannot be made is refused naming spool.path', async () => {
  const dir = tempDir();
  writeFileSync(join(dir, 'afile'), 'x');
  mkdirSync(join(dir, 'spooldir'));
  const cases: Array<[string, RegExp]> = [
    [join(dir, 'afile', 'spool.db'), /spool\.path: cannot create the folder .*afile: .*afile is a file, not a folder/],
    [join(dir, 'afile', 'sub', 'spool.db'), /spool\.path: cannot create the folder .*afile\/sub: .*afile is a file, not a folder/],
    [join(dir, 'spooldir'), /spool\.path: .*spooldir is a folder; give the database file inside it/],
  ];
  for (const [path, expected] of cases) {
    const file = join(dir, 'mailhook.yaml');
    writeFileSync(file, `spool:\n  path: ${path}\n${routes}`);
    const r = await checkConfig(file);
    assert.equal(r.code, 2, `${path}: ${r.out}`);
    assert.match(r.err, expected);
  }
  const file = join(dir, 'ok.yaml');
  writeFileSync(file, `spool:\n  path: ${join(dir, 'new', 'deeper', 'spool.db')}\n${routes}`);
  const ok = await checkConfig(file);
  assert.equal(ok.code, 0, ok.err);
});

test('check-config warns of an IMAP mailbox that would send its password in clear', async () => {
  const dir = tempDir();
  const file = join(dir, 'mailhook.yaml');
  writeFileSync(file, `spool:\n  path: ${join(dir, 'spool.db')}\n${routes}imap:\n  - { name: plain, host: imap.x.test, user: u, password: pw, ssl: false, start_tls: false }\n  - { name: local, host: 127.0.0.1, user: u, password: pw, ssl: false }\n  - { name: starttls, host: imap.x.test, user: u, password: pw, ssl: false, start_tls: true }\n`);
  const r = await checkConfig(file);
  assert.equal(r.code, 0, r.err);
  assert.equal(r.err, `${file}: warning: imap[0]: ssl: false and start_tls: false: mailbox "plain" sends its password to imap.x.test:143 unencrypted; set start_tls: true (port 143) or ssl: true (port 993)\n`);
  assert.ok(!r.err.includes('pw'));
});
