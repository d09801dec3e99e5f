// What a served certificate would make checking senders refuse (src/smtp/tls.ts certificateWarnings), check-config's
// warnings of it, and the certificate's end as a metric and in the reload's log line.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { TlsReloader, certificateWarnings } from '../../src/smtp/tls.js';
import { createLogger } from '../../src/core/logger.js';
import { configYaml, parseTestConfig, tempDir, until } from '../helpers/app.js';
import { createServer, type AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { startApp } from '../../src/app.js';
import { BIN } from '../helpers/process.js';
import { SINK_ROUTES, makeCert, opensslMissing, startSmtpApp } from './support.js';

const skip = opensslMissing();
const DAY = 86_400_000;

/** A CA and a leaf it signed for `cn` (with a subjectAltName), valid `days`. */
function caSigned(dir: string, cn: string, days = 90): { key: string; cert: string; ca: string } {
  const ca = makeCert(dir, 'ca', 'Test Issuing CA');
  const key = join(dir, 'leaf.key');
  const csr = join(dir, 'leaf.csr');
  const cert = join(dir, 'leaf.crt');
  execFileSync('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', csr, '-subj', `/CN=${cn}`], { stdio: 'ignore' });
  const ext = join(dir, 'leaf.ext');
  writeFileSync(ext, `subjectAltName=DNS:${cn}\n`);
  execFileSync('openssl', ['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial', '-out', cert, '-days', String(days), '-extfile', ext], { stdio: 'ignore' });
  return { key, cert, ca: ca.cert };
}

test('certificateWarnings: out of date, not yet valid, close to its end, another name, no intermediate; nothing for a good chain', { skip }, () => {
  const dir = tempDir();
  const self = makeCert(dir, 'self', 'mx.test'); // valid 2 days from now, self-signed (no chain to give)
  const material = { key: readFileSync(self.key), cert: readFileSync(self.cert) };
  const notAfter = new Date(new X509Certificate(material.cert).validTo).getTime();
  const now = Date.now();
  assert.deepEqual(certificateWarnings(material, 'mx.test', notAfter - 30 * DAY), ['the certificate is not valid before ' + new Date(new X509Certificate(material.cert).validFrom).toISOString() + ': senders that check certificates (MTA-STS, DANE) will not deliver until then; check the machine\'s clock or the certificate']);
  assert.deepEqual(certificateWarnings(material, 'mx.test', notAfter + 1000), [`the certificate expired on ${new Date(notAfter).toISOString()}: senders that check certificates (MTA-STS, DANE) will not deliver; renew it`]);
  assert.deepEqual(certificateWarnings(material, 'mx.test', now), [`the certificate expires on ${new Date(notAfter).toISOString()}, in 1 day; renew it`]);
  // The last day counts hours, the last hour says so.
  assert.deepEqual(certificateWarnings(material, 'mx.test', notAfter - 5.5 * 3_600_000), [`the certificate expires on ${new Date(notAfter).toISOString()}, in 5 hours; renew it`]);
  assert.deepEqual(certificateWarnings(material, 'mx.test', notAfter - 60_000), [`the certificate expires on ${new Date(notAfter).toISOString()}, in less than an hour; renew it`]);
  const wrongName = certificateWarnings(material, 'mx.example.com', now);
  assert.equal(wrongName.length, 2);
  assert.equal(wrongName[1], 'the certificate is for CN=mx.test, not for smtp.hostname mx.example.com: senders that check certificates (MTA-STS, DANE) will not deliver; use a certificate for mx.example.com or set smtp.hostname to the MX name it is for');

  const signed = caSigned(join(dir, 'chain'), 'mx.example.com');
  const leafOnly = { key: readFileSync(signed.key), cert: readFileSync(signed.cert) };
  // Certificates count from the second they were made: "now" for these is after that, not before.
  const later = Date.now() + 1000;
  assert.deepEqual(certificateWarnings(leafOnly, 'mx.example.com', later), ["the file holds the server's certificate only, without the intermediate that issued it (CN=Test Issuing CA): senders cannot build the chain; give the full chain, e.g. fullchain.pem"]);
  const full = { key: leafOnly.key, cert: Buffer.concat([leafOnly.cert, readFileSync(signed.ca)]) };
  assert.deepEqual(certificateWarnings(full, 'mx.example.com', later), []);
  assert.deepEqual(certificateWarnings(full, 'MX.Example.com', later), [], 'names compare without case');
  assert.equal(certificateWarnings(full, 'other.example.com', later).length, 1);
});

test('serve warns of the certificate, exports its end, and names the certificate a reload put in use; check-config warns as serve does', { skip }, async () => {
  const dir = tempDir();
  const signed = caSigned(join(dir, 'chain'), 'mx.test', 10);
  const fullchain = join(dir, 'fullchain.pem');
  writeFileSync(fullchain, Buffer.concat([readFileSync(signed.cert), readFileSync(signed.ca)]));
  const live = join(dir, 'live.crt');
  copyFileSync(signed.cert, live); // the leaf alone, 10 days left
  const app = await startSmtpApp({ smtp: `  tls:\n    key_file: ${signed.key}\n    cert_file: ${live}\n    watch: false` });
  try {
    const warnings = app.logs.map((l) => JSON.parse(l) as { level: number; msg: string; key?: string }).filter((l) => l.key === 'smtp.tls.cert_file');
    assert.deepEqual(
      warnings.map((w) => [w.level, w.msg.replace(/expires on \S+, in \d+ days?/, 'expires on T, in N days')]),
      [
        [40, 'smtp.tls.cert_file: the certificate expires on T, in N days; renew it'],
        [40, "smtp.tls.cert_file: the file holds the server's certificate only, without the intermediate that issued it (CN=Test Issuing CA): senders cannot build the chain; give the full chain, e.g. fullchain.pem"],
      ],
    );
    const notAfter = new Date(new X509Certificate(readFileSync(signed.cert)).validTo).getTime() / 1000;
    const metrics = await (await fetch(`${app.httpUrl}/metrics`)).text();
    assert.ok(metrics.includes(`mailhook_tls_certificate_expiry_timestamp_seconds{file="${live}"} ${notAfter}`), metrics.split('\n').filter((l) => l.includes('tls_certificate')).join('\n'));
    copyFileSync(fullchain, live);
    assert.equal(app.smtp.reloadTls('test'), true);
    const reloaded = app.logs.map((l) => JSON.parse(l) as { msg: string; certificate?: Record<string, string> }).find((l) => l.msg === 'TLS key and certificate reloaded');
    assert.deepEqual(reloaded?.certificate, { subject: 'CN=mx.test', not_after: new Date(notAfter * 1000).toISOString(), fingerprint256: new X509Certificate(readFileSync(signed.cert)).fingerprint256 });
    // The full chain gets only the warning of its end.
    await until(() => app.logs.filter((l) => l.includes('smtp.tls.cert_file: the certificate expires on')).length === 2, 2000, 'the reload\'s warning');
    assert.equal(app.logs.filter((l) => l.includes('without the intermediate')).length, 1);
  } finally {
    await app.close();
  }
  copyFileSync(signed.cert, live);
  const file = join(dir, 'check.yaml');
  writeFileSync(file, configYaml({ dir, routes: SINK_ROUTES }).replace('  greeting_delay_ms: 0\n', `  greeting_delay_ms: 0\n  tls:\n    key_file: ${signed.key}\n    cert_file: ${live}\n`));
  const r = spawnSync(process.execPath, [BIN, 'check-config', '--config', file], { encoding: 'utf8', env: { PATH: process.env.PATH ?? '' } });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(
    r.stderr.replace(/expires on \S+, in \d+ days?/, 'expires on T, in N days').trimEnd().split('\n'),
    [
      `${file}: warning: smtp.tls.cert_file: the certificate expires on T, in N days; renew it`,
      `${file}: warning: smtp.tls.cert_file: the file holds the server's certificate only, without the intermediate that issued it (CN=Test Issuing CA): senders cannot build the chain; give the full chain, e.g. fullchain.pem`,
    ],
  );
});

test('TlsReloader: one renewal (files renamed into place) is one reload; the polling compares with the files as last loaded', { skip }, async () => {
  const dir = tempDir();
  const a = makeCert(join(dir, 'a'), 'a');
  const b = makeCert(join(dir, 'b'), 'b');
  const files = { keyFile: join(dir, 'live.key'), certFile: join(dir, 'live.crt') };
  copyFileSync(a.key, files.keyFile);
  copyFileSync(a.cert, files.certFile);
  // Settling of 1 ms and a poll every 100 ms: the folder watch's reload comes first, the polls see the new files after it.
  const reloader = new TlsReloader(files, () => {}, createLogger({ level: 'silent' }), 1, 100);
  reloader.watch();
  try {
    for (const [from, to] of [[b.key, files.keyFile], [b.cert, files.certFile]] as const) {
      copyFileSync(from, `${to}.tmp`);
      renameSync(`${to}.tmp`, to);
    }
    await until(() => reloader.generation >= 1, 5000, 'the reload');
    // Absence takes a wait: five polls.
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(reloader.generation, 1);
  } finally {
    reloader.close();
  }
});

test('a start that fails after SMTP was set up (HTTP port taken) leaves no TLS file watch behind', { skip }, async () => {
  const dir = tempDir();
  const a = makeCert(join(dir, 'a'), 'a');
  const b = makeCert(join(dir, 'b'), 'b');
  copyFileSync(a.key, join(dir, 'live.key'));
  copyFileSync(a.cert, join(dir, 'live.crt'));
  const taken = createServer();
  await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
  const port = (taken.address() as AddressInfo).port;
  const yaml = configYaml({ dir, routes: SINK_ROUTES })
    .replace('http:\n  listen: "127.0.0.1:0"', `http:\n  listen: "127.0.0.1:${port}"`)
    .replace('  greeting_delay_ms: 0\n', `  greeting_delay_ms: 0\n  tls:\n    key_file: ${join(dir, 'live.key')}\n    cert_file: ${join(dir, 'live.crt')}\n`);
  const logs: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      logs.push(chunk.toString('utf8'));
      cb();
    },
  });
  try {
    await assert.rejects(startApp({ config: parseTestConfig(yaml, dir), log: createLogger({ level: 'debug', destination }), clock: { now: () => Date.now() }, random: Math.random, tlsPollMs: 20 }), /http\.listen/);
    logs.length = 0;
    copyFileSync(b.key, join(dir, 'live.key'));
    copyFileSync(b.cert, join(dir, 'live.crt'));
    // Absence takes a wait: the folder watch's settling (200 ms) and many polls.
    await new Promise((r) => setTimeout(r, 600));
    assert.deepEqual(logs.filter((l) => l.includes('TLS key')), []);
  } finally {
    taken.close();
  }
});
