// mailhook check-config (the built bin/mailhook): it refuses what serve would refuse at start-up, naming the key.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, statfsSync, writeFileSync } from 'node:fs';
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

test('check-config: a key of another type than the certificate\'s (RSA for ECDSA, as a renewal that changes key type leaves it) is refused, and so is a chain with the leaf not first', { skip: opensslMissing() }, async () => {
  const dir = tempDir();
  const ec = makeCert(join(dir, 'ec'), 'ec');
  const rsa = makeCert(join(dir, 'rsa'), 'rsa', 'mx.test', 'rsa');
  const cfg = (key: string, cert: string) => {
    const file = join(dir, `m-${Math.random().toString(36).slice(2)}.yaml`);
    writeFileSync(file, `smtp:\n  tls: { key_file: ${key}, cert_file: ${cert} }\nspool:\n  path: ${join(dir, 'spool.db')}\n${routes}`);
    return file;
  };
  assert.equal((await checkConfig(cfg(rsa.key, rsa.cert))).code, 0);
  const rsaForEc = await checkConfig(cfg(rsa.key, ec.cert));
  assert.equal(rsaForEc.code, 2, rsaForEc.out);
  assert.match(rsaForEc.err, /smtp\.tls\.key_file: does not belong to the certificate in smtp\.tls\.cert_file \(the key is RSA, the certificate's EC\); give the key the certificate was issued for/);
  const ecForRsa = await checkConfig(cfg(ec.key, rsa.cert));
  assert.equal(ecForRsa.code, 2, ecForRsa.out);
  assert.match(ecForRsa.err, /\(the key is EC, the certificate's RSA\)/);
  // An intermediate (here any other certificate) before the leaf.
  const chain = join(dir, 'wrong-order.pem');
  writeFileSync(chain, Buffer.concat([readFileSync(rsa.cert), readFileSync(ec.cert)]));
  const wrongOrder = await checkConfig(cfg(ec.key, chain));
  assert.equal(wrongOrder.code, 2, wrongOrder.out);
  assert.match(wrongOrder.err, /smtp\.tls\.cert_file: has the certificate of smtp\.tls\.key_file's key in place 2, not first: put the server's own certificate \(the leaf\) first/);
  writeFileSync(chain, Buffer.concat([readFileSync(ec.cert), readFileSync(rsa.cert)]));
  assert.equal((await checkConfig(cfg(ec.key, chain))).code, 0);
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

test('check-config warns of an unquoted secret followed by " #" (YAML cuts it there), naming the key and neither part', async () => {
  const dir = tempDir();
  const file = join(dir, 'mailhook.yaml');
  writeFileSync(
    file,
    `spool:\n  path: ${join(dir, 'spool.db')}\nhttp:\n  admin_token: t0k3n-0123456789abcdef #Xq9\n` +
      `routes:\n  - name: mg\n    addresses: ["a@x.test"]\n    webhook:\n      url: "http://127.0.0.1:9/hook"\n      format: mailgun\n      secret: key-s3cr3t #Zr7w\n` +
      `  - name: quoted\n    addresses: ["b@x.test"]\n    webhook:\n      url: "http://127.0.0.1:9/hook"\n      format: mailgun\n      secret: "key-s3cr3t #Zr7w" # a comment after a quoted value is fine\n` +
      `  - name: plain\n    addresses: ["c@x.test"]\n    webhook: { url: "http://127.0.0.1:9/hook", secret: "${SECRET}" } # nothing to warn of\n` +
      `imap:\n  - { name: box, host: 127.0.0.1, user: u, ssl: false, password: pw#not-a-comment }\n`,
  );
  const r = await checkConfig(file);
  assert.equal(r.code, 0, r.err);
  const warning = (key: string) => `${file}: warning: ${key}: a comment follows the value on its line, and YAML ends an unquoted value at " #": if the "#" and what follows are part of the secret, quote the value (or use the *_file key)\n`;
  assert.equal(r.err, warning('http.admin_token') + warning('routes[0].webhook.secret'));
  for (const part of ['Xq9', 'Zr7w', 't0k3n', 's3cr3t']) assert.ok(!r.err.includes(part), `${part} is not printed`);
  // A value an environment variable sets is not the file's: no warning for it.
  const env = await checkConfig(file, { MAILHOOK_ADMIN_TOKEN: 'from-the-environment-0123' });
  assert.equal(env.err, warning('routes[0].webhook.secret'));
});

test('check-config warns of a secret variable that names no route or mailbox (a typo: the secret is not used), never printing it', async () => {
  const dir = tempDir();
  const file = join(dir, 'mailhook.yaml');
  writeFileSync(file, `spool:\n  path: ${join(dir, 'spool.db')}\n${routes}imap:\n  - { name: box, host: 127.0.0.1, user: u, ssl: false, password: pw }\n`);
  const r = await checkConfig(file, {
    MAILHOOK_ROUTE_R_SECRET: SECRET, // route r's: used
    MAILHOOK_ROUTE_RR_SECRET: 'whsec_c3RyYXktc2VjcmV0LXZhbHVl',
    MAILHOOK_IMAP_BOX_PASSWORD: 'the-box-password', // mailbox box's: used
    MAILHOOK_IMAP_BX_REFRESH_TOKEN: 'stray-refresh-token',
  });
  assert.equal(r.code, 0, r.err);
  assert.equal(
    r.err,
    `${file}: warning: MAILHOOK_IMAP_BX_REFRESH_TOKEN: names no configured mailbox, so it is not used; a mailbox's variables are MAILHOOK_IMAP_<NAME>_PASSWORD, _CLIENT_SECRET and _REFRESH_TOKEN (the name upper-cased, other characters as "_"): MAILHOOK_IMAP_BOX_PASSWORD, MAILHOOK_IMAP_BOX_CLIENT_SECRET, MAILHOOK_IMAP_BOX_REFRESH_TOKEN\n` +
      `${file}: warning: MAILHOOK_ROUTE_RR_SECRET: names no configured route, so it is not used; a route's secret variable is MAILHOOK_ROUTE_<NAME>_SECRET (the name upper-cased, other characters as "_"): MAILHOOK_ROUTE_R_SECRET\n`,
  );
  for (const secret of ['c3RyYXkt', 'stray-refresh', 'the-box-password']) assert.ok(!r.err.includes(secret) && !r.out.includes(secret), secret);
});

test('check-config warns of a spool database or message folder other users can read (made before mailhook made them private)', async () => {
  const dir = tempDir();
  const file = join(dir, 'mailhook.yaml');
  const spool = join(dir, 'spool.db');
  writeFileSync(file, `spool:\n  path: ${spool}\n${routes}`);
  assert.equal((await checkConfig(file)).err, '', 'nothing to warn of before the spool exists');
  writeFileSync(spool, '');
  chmodSync(spool, 0o644);
  mkdirSync(`${spool}.blobs`, { mode: 0o755 });
  chmodSync(`${spool}.blobs`, 0o755);
  const r = await checkConfig(file);
  assert.equal(r.code, 0, r.err);
  assert.equal(
    r.err,
    `${file}: warning: spool.path: ${spool} is readable by other users (mode 0644) and holds message bodies; chmod 600 it and the database's -wal and -shm files\n` +
      `${file}: warning: spool.path: ${spool}.blobs is readable by other users (mode 0755) and holds message bodies; chmod 700 it\n`,
  );
  chmodSync(spool, 0o600);
  chmodSync(`${spool}.blobs`, 0o700);
  assert.equal((await checkConfig(file)).err, '');
});

test('check-config warns of a min_free_disk_bytes the spool\'s file system cannot have free, or does not have now (every MAIL would get 452)', async () => {
  const dir = tempDir();
  const file = join(dir, 'mailhook.yaml');
  // The spool's folder does not exist yet: the file system it will be made on is measured.
  const spool = join(dir, 'not', 'yet', 'spool.db');
  const s = statfsSync(dir);
  const usable = (Number(s.blocks) - Number(s.bfree) + Number(s.bavail)) * Number(s.bsize);
  const config = (min: number) => {
    writeFileSync(file, `smtp:\n  limits: { min_free_disk_bytes: ${min} }\nspool:\n  path: ${spool}\n${routes}`);
    return file;
  };
  const never = await checkConfig(config(usable));
  assert.equal(never.code, 0, never.err);
  assert.match(never.err, new RegExp(`^${file.replace(/[.]/g, '\\.')}: warning: smtp\\.limits\\.min_free_disk_bytes: ${usable} bytes \\([0-9.]+ MiB\\) is more than the spool's file system \\(${dir.replace(/[.]/g, '\\.')}\\) holds, ${usable} bytes .*every MAIL would get 452 4\\.3\\.1 for good; lower it`));
  // Used space is never 0 on a mounted file system: one byte less than it holds is more than it has free.
  const now = await checkConfig(config(usable - 1));
  assert.match(now.err, /warning: smtp\.limits\.min_free_disk_bytes: the spool's file system \(.*\) has \d+ bytes .*free, less than \d+ bytes .*: every MAIL gets 452 4\.3\.1 until room is made\n$/);
  assert.equal((await checkConfig(config(1024))).err, '');
  assert.equal((await checkConfig(config(0))).err, '');
});

test('check-config warns of sender_auth on a loopback-only listener (behind Postfix SPF would judge the relay), not on a public one, behind a PROXY balancer, or with the relay\'s XFORWARD trusted', async () => {
  const dir = tempDir();
  const file = join(dir, 'mailhook.yaml');
  const check = async (smtp: string) => {
    writeFileSync(file, `smtp:\n${smtp}  sender_auth: { enabled: true }\nspool:\n  path: ${join(dir, 'spool.db')}\n${routes}`);
    const r = await checkConfig(file);
    assert.equal(r.code, 0, r.err);
    return r.err;
  };
  const warning = `${file}: warning: smtp.sender_auth.enabled: SMTP listens on loopback only (127.0.0.1:2525), so its client is a relay on this machine (Postfix): SPF would be checked against the relay's address, not the sender's server. Have the relay pass the client with XFORWARD: list its address in smtp.xforward_hosts (e.g. ["127.0.0.1"]) and have Postfix send it to mailhook (smtp_send_xforward_command=yes on mailhook's transport, deploy/postfix/master.cf); a load balancer on this machine can pass the client's address with smtp.proxy_protocol\n`;
  assert.equal(await check('  listen: "127.0.0.1:2525"\n'), warning);
  // A relay listed by an address that cannot reach a loopback listener does not make up for it, nor one of the
  // other family (Postfix reaching 127.0.0.1 comes from 127.0.0.1, never ::1); the IPv4 one in IPv6 form does.
  assert.equal(await check('  listen: "127.0.0.1:2525"\n  xforward_hosts: ["10.0.0.5"]\n'), warning);
  assert.equal(await check('  listen: "127.0.0.1:2525"\n  xforward_hosts: ["::1"]\n'), warning);
  assert.equal(await check('  listen: "127.0.0.1:2525"\n  xforward_hosts: ["::ffff:127.0.0.1"]\n'), '');
  assert.equal(await check('  listen: "[::1]:2525"\n  xforward_hosts: ["::1"]\n'), '');
  assert.equal(await check('  listen: "0.0.0.0:2525"\n'), '');
  assert.equal(await check('  listen: "[::1]:2525"\n  proxy_protocol: true\n'), '');
  assert.equal(await check('  listen: "127.0.0.1:2525"\n  xforward_hosts: ["127.0.0.1"]\n'), '');
});

test('check-config warns of dmarc_reject behind a relay (a loopback-only listener): the relay would bounce what mailhook refuses; not on a public listener', async () => {
  const dir = tempDir();
  const file = join(dir, 'mailhook.yaml');
  const check = async (listen: string, extra = '  xforward_hosts: ["127.0.0.1"]\n') => {
    writeFileSync(file, `smtp:\n  listen: "${listen}"\n${extra}  sender_auth: { enabled: true }\nspool:\n  path: ${join(dir, 'spool.db')}\nroutes:\n  - name: app\n    addresses: ["a@in.test"]\n    sink: true\n  - name: strict\n    addresses: ["b@in.test"]\n    sink: true\n    dmarc_reject: true\n`);
    const r = await checkConfig(file);
    assert.equal(r.code, 0, r.err);
    return r.err;
  };
  assert.equal(
    await check('127.0.0.1:2525'),
    `${file}: warning: routes[1].dmarc_reject: smtp.xforward_hosts is set, so a relay (an MTA) forwards its clients' mail, which has accepted the message when mailhook refuses it: the relay bounces it to the sender, for a DMARC failure usually forged (backscatter). Behind a relay remove dmarc_reject (the payload's authentication still says dmarc=fail, for the application to decide) and refuse in the relay instead (OpenDMARC), while the client is still connected\n`,
  );
  const tail = ", which has accepted the message when mailhook refuses it: the relay bounces it to the sender, for a DMARC failure usually forged (backscatter). Behind a relay remove dmarc_reject (the payload's authentication still says dmarc=fail, for the application to decide) and refuse in the relay instead (OpenDMARC), while the client is still connected\n";
  // (with sender_auth's own warning there too)
  const dmarcLines = (out: string) => out.split('\n').filter((l) => l.includes('dmarc_reject')).map((l) => `${l}\n`);
  assert.deepEqual(dmarcLines(await check('127.0.0.1:2525', '')), [`${file}: warning: routes[1].dmarc_reject: SMTP listens on loopback only, so its client is a relay on this machine (Postfix)${tail}`]);
  assert.equal(await check('0.0.0.0:2424', '  lmtp: true\n'), `${file}: warning: routes[1].dmarc_reject: SMTP speaks LMTP, so its client is a relay (an MTA)${tail}`);
  assert.equal(await check('0.0.0.0:2525', '  xforward_hosts: ["10.0.0.5"]\n'), `${file}: warning: routes[1].dmarc_reject: smtp.xforward_hosts is set, so a relay (an MTA) forwards its clients' mail${tail}`);
  // An MX facing the internet itself: refusing at the end of DATA is no backscatter (the client is still there).
  assert.equal(await check('0.0.0.0:2525', ''), '');
});
