// TLS (STARTTLS, minimum version, required TLS, implicit TLS, reload without dropping sessions) and the PROXY protocol.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { once } from 'node:events';
import { createConnection, createServer, type AddressInfo } from 'node:net';
import { freePort } from '../helpers/process.js';
import { RawSmtp } from '../helpers/smtp-client.js';
import { Consumer } from '../helpers/consumer.js';
import { SECRET, configYaml, startTestApp, tempDir, until, type TestApp } from '../helpers/app.js';
import { Lines, PROXY_V2_SIG, SINK_ROUTES, countMessages, fileFingerprint, makeCert, opensslMissing, proxyV2v4 as v2v4, queuedId, servedFingerprint, session, startData, startSmtpApp, startTls } from './support.js';

const skip = opensslMissing();


/** Replaces a file the way renewal tools do: write beside it, then rename over it. */
function replaceFile(from: string, to: string): void {
  copyFileSync(from, `${to}.tmp`);
  renameSync(`${to}.tmp`, to);
}

async function implicitSession(port: number, options: { maxVersion?: 'TLSv1.2' | 'TLSv1.3' } = {}): Promise<Lines> {
  const socket = tlsConnect({ port, host: '127.0.0.1', rejectUnauthorized: false, servername: 'mx.test', ...options });
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => resolve());
    socket.once('error', reject);
  });
  return new Lines(socket);
}

describe('TLS', { skip }, () => {
  let app: TestApp;
  let strict: TestApp;
  let consumer: Consumer;
  let dir: string;
  let a: { key: string; cert: string };
  let b: { key: string; cert: string };
  const live = () => ({ key: join(dir, 'live.key'), cert: join(dir, 'live.crt') });

  before(async () => {
    dir = tempDir();
    a = makeCert(join(dir, 'certs'), 'a');
    b = makeCert(join(dir, 'certs'), 'b');
    copyFileSync(a.key, live().key);
    copyFileSync(a.cert, live().cert);
    consumer = await new Consumer().start();
    app = await startSmtpApp({
      dir,
      smtp: `  tls:\n    key_file: live.key\n    cert_file: live.crt\n    implicit_listen: "127.0.0.1:0"\n    watch: false`,
      routes: `
  - name: hook
    addresses: ["user@in.test"]
    webhook:
      url: ${consumer.url}
      secret: ${SECRET}
`,
    });
    strict = await startSmtpApp({ smtp: `  tls:\n    key_file: ${a.key}\n    cert_file: ${a.cert}\n    required: true\n    min_version: TLSv1.3` });
  });
  after(async () => {
    await app.close();
    await strict.close();
    await consumer.stop();
  });

  test('STARTTLS: advertised, upgrades, and envelope.tls carries protocol and cipher into the payload', async () => {
    const { smtp } = await RawSmtp.open(app.smtpPort);
    const ehlo = await smtp.cmd('EHLO client.test');
    assert.ok(ehlo.lines.includes('250-STARTTLS'), ehlo.raw);
    const s = await startTls(smtp);
    const ehlo2 = await s.cmd('EHLO client.test');
    assert.ok(!ehlo2.lines.some((l) => l.includes('STARTTLS')), 'not offered twice');
    assert.equal((await s.cmd('MAIL FROM:<a@client.test>')).raw, '250 2.1.0 Accepted\r\n');
    assert.equal((await s.cmd('RCPT TO:<user@in.test>')).raw, '250 2.1.5 Accepted\r\n');
    assert.equal((await s.cmd('DATA')).code, 354);
    s.socket.write('Subject: over tls\r\n\r\nsecret\r\n.\r\n');
    const id = queuedId(await s.read());
    const cipher = (s.socket as TLSSocket).getCipher();
    const protocol = (s.socket as TLSSocket).getProtocol();
    assert.equal(protocol, 'TLSv1.3');
    assert.deepEqual(app.spool.getMessage(id)?.envelope.tls, { protocol: 'TLSv1.3', cipher: cipher.name });
    const [req] = await consumer.waitFor(1);
    const payload = JSON.parse(req!.body.toString('utf8')) as { envelope: { tls: unknown } };
    assert.deepEqual(payload.envelope.tls, { protocol: 'TLSv1.3', cipher: cipher.name });
    s.socket.destroy();
  });

  test('minimum TLS 1.2: a TLS 1.1 client cannot complete the handshake; TLS 1.2 can', async () => {
    const logsBefore = app.logs.length;
    const { smtp } = await RawSmtp.open(app.smtpPort);
    await smtp.cmd('EHLO client.test');
    // Refused for its version (a protocol_version alert), not for anything else about the handshake.
    await assert.rejects(startTls(smtp, { minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' }), (err: Error & { code?: string }) => /PROTOCOL_VERSION/.test(err.code ?? ''));
    smtp.destroy();
    // Any client can do that: one info line, no stack (smtp-server reports the error twice; it was two warnings).
    const lines = () => app.logs.slice(logsBefore).join('').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { level: number; msg: string; cid?: string; code?: string; reason?: string; err?: unknown });
    const failed = () => lines().filter((l) => /connection (error|failed)/.test(l.msg));
    await until(() => failed().length > 0, 5000, 'the handshake failure logged');
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(failed().map((l) => [l.level, l.msg, l.code, l.reason, l.err]), [[30, 'smtp client connection failed', 'ERR_SSL_UNSUPPORTED_PROTOCOL', 'unsupported protocol', undefined]]);
    // It names the session (cid) as the session's other lines do, here its connect line.
    const ehloCid = lines().find((l) => l.msg === 'smtp connect')?.cid;
    assert.ok(ehloCid, 'the session logged its connect');
    assert.equal(failed()[0]?.cid, ehloCid);
    const ok = await RawSmtp.open(app.smtpPort);
    await ok.smtp.cmd('EHLO client.test');
    const s = await startTls(ok.smtp, { maxVersion: 'TLSv1.2' });
    assert.equal((s.socket as TLSSocket).getProtocol(), 'TLSv1.2');
    assert.equal((await s.cmd('EHLO client.test')).code, 250);
    s.socket.destroy();
  });

  test('implicit TLS listener: TLS from the first byte, then plain SMTP', async () => {
    const port = app.smtp.implicitAddress?.port;
    assert.ok(port);
    const s = await implicitSession(port);
    assert.match((await s.read()).raw, /^220 mx\.test ESMTP mailhook\r\n$/);
    const ehlo = await s.cmd('EHLO client.test');
    assert.ok(!ehlo.lines.some((l) => l.includes('STARTTLS')));
    assert.equal((await s.cmd('STARTTLS')).raw, '503 5.5.1 Error: TLS already active\r\n');
    assert.equal((await s.cmd('MAIL FROM:<a@client.test>')).code, 250);
    assert.equal((await s.cmd('RCPT TO:<user@in.test>')).code, 250);
    assert.equal((await s.cmd('DATA')).code, 354);
    s.socket.write('Subject: implicit\r\n\r\nx\r\n.\r\n');
    const id = queuedId(await s.read());
    assert.equal(app.spool.getMessage(id)?.envelope.tls?.protocol, 'TLSv1.3');
    s.socket.destroy();
  });

  test('a port scan of the implicit-TLS listener (connect and close; plain text) is an info line each, with the address, no warning', async () => {
    const port = app.smtp.implicitAddress!.port;
    const logsBefore = app.logs.length;
    for (const text of ['', 'EHLO plain.test\r\n']) {
      const socket = createConnection(port, '127.0.0.1');
      await once(socket, 'connect');
      socket.end(text);
      await once(socket, 'close');
    }
    const lines = () => app.logs.slice(logsBefore).join('').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { level: number; msg: string; remote?: string; code?: string });
    await until(() => lines().filter((l) => l.msg === 'smtp client connection failed').length === 2, 5000, 'both logged');
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(lines().filter((l) => l.level >= 40), [], 'no warning');
    assert.deepEqual(lines().filter((l) => l.msg === 'smtp client connection failed').map((l) => [l.level, l.remote]), [[30, '127.0.0.1'], [30, '127.0.0.1']]);
  });

  test('smtp.max_clients bounds the STARTTLS and the implicit-TLS listener together', async () => {
    const capped = await startSmtpApp({ smtp: `  max_clients: 2\n  tls:\n    key_file: ${a.key}\n    cert_file: ${a.cert}\n    implicit_listen: "127.0.0.1:0"\n    watch: false` });
    const open: Array<{ socket: { destroy(): void } }> = [];
    try {
      const implicitPort = capped.smtp.implicitAddress!.port;
      const first = await implicitSession(implicitPort);
      open.push(first);
      assert.equal((await first.read()).code, 220);
      const second = await session(capped.smtpPort);
      open.push(second);
      const third = await RawSmtp.open(capped.smtpPort);
      open.push(third.smtp);
      assert.equal(third.banner.raw, '421 4.7.0 mx.test Too many connected clients, try again in a moment\r\n');
      const fourth = await implicitSession(implicitPort);
      open.push(fourth);
      assert.equal((await fourth.read()).raw, '421 4.7.0 mx.test Too many connected clients, try again in a moment\r\n');
    } finally {
      for (const s of open) s.socket.destroy();
      await capped.close();
    }
  });

  test('serve refuses a key that is not the certificate\'s, naming the key as check-config does, without key material', async () => {
    const other = makeCert(join(tempDir(), 'other'), 'other');
    const yaml = (d: string) =>
      configYaml({ dir: d, routes: SINK_ROUTES }).replace('smtp:\n  listen: "127.0.0.1:0"\n', `smtp:\n  listen: "127.0.0.1:0"\n  tls:\n    key_file: ${other.key}\n    cert_file: ${a.cert}\n    watch: false\n`);
    const keyBody = readFileSync(other.key, 'utf8').split('\n')[1]!;
    await assert.rejects(startTestApp({ routes: '', yaml }), (err: Error) => {
      assert.match(err.message, /^smtp\.tls\.key_file: does not belong to the certificate in smtp\.tls\.cert_file \(.+\); give the key the certificate was issued for$/);
      assert.ok(!err.message.includes(keyBody));
      return true;
    });
  });

  test('an implicit-TLS port that cannot be bound fails the start, and the SMTP port bound before it is closed again', async () => {
    const taken = createServer().listen(0, '127.0.0.1');
    await once(taken, 'listening');
    const port = await freePort();
    try {
      const takenPort = (taken.address() as AddressInfo).port;
      const yaml = (d: string) =>
        configYaml({ dir: d, routes: SINK_ROUTES }).replace(
          'smtp:\n  listen: "127.0.0.1:0"\n',
          `smtp:\n  listen: "127.0.0.1:${port}"\n  tls:\n    key_file: ${a.key}\n    cert_file: ${a.cert}\n    implicit_listen: "127.0.0.1:${takenPort}"\n    watch: false\n`,
        );
      await assert.rejects(startTestApp({ routes: '', yaml }), /EADDRINUSE|smtp\.tls\.implicit_listen/);
      // Nothing may be left taking mail that the (closed) spool cannot hold.
      const probe = createConnection(port, '127.0.0.1');
      const outcome = await new Promise<string>((resolve) => {
        probe.once('connect', () => resolve('connected'));
        probe.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
      });
      probe.destroy();
      assert.equal(outcome, 'ECONNREFUSED');
    } finally {
      taken.close();
    }
  });

  test('smtp.tls.min_version: TLSv1.3 refuses a TLS 1.2 client', async () => {
    const { smtp } = await RawSmtp.open(strict.smtpPort);
    await smtp.cmd('EHLO client.test');
    await assert.rejects(startTls(smtp, { maxVersion: 'TLSv1.2' }), (err: Error & { code?: string }) => /PROTOCOL_VERSION/.test(err.code ?? ''));
    smtp.destroy();
  });

  test('REQUIRETLS is not advertised and is refused after STARTTLS too (555 5.5.4): a webhook on http:// would not keep its promise', async () => {
    const smtp = await session(app.smtpPort);
    const s = await startTls(smtp);
    const ehlo = await s.cmd('EHLO client.test');
    assert.ok(!ehlo.raw.includes('REQUIRETLS'), ehlo.raw);
    assert.equal((await s.cmd('MAIL FROM:<a@client.test> REQUIRETLS')).raw, '555 5.5.4 Error: unsupported parameter REQUIRETLS\r\n');
    assert.equal((await s.cmd('MAIL FROM:<a@client.test>')).raw, '250 2.1.0 Accepted\r\n');
    s.socket.destroy();
  });

  test('smtp.tls.required: MAIL before STARTTLS gets 530 5.7.0; after STARTTLS it is accepted', async () => {
    const smtp = await session(strict.smtpPort);
    assert.equal((await smtp.cmd('MAIL FROM:<a@client.test>')).raw, '530 5.7.0 Must issue a STARTTLS command first\r\n');
    const s = await startTls(smtp);
    await s.cmd('EHLO client.test');
    assert.equal((await s.cmd('MAIL FROM:<a@client.test>')).raw, '250 2.1.0 Accepted\r\n');
    s.socket.destroy();
  });

  test('reload (SIGHUP path) swaps the certificate for new sessions without dropping the open one; a broken file keeps the old one', async () => {
    const { smtp } = await RawSmtp.open(app.smtpPort);
    await smtp.cmd('EHLO client.test');
    const open = await startTls(smtp);
    assert.equal((open.socket as TLSSocket).getPeerX509Certificate()?.fingerprint256, fileFingerprint(a.cert));

    replaceFile(b.key, live().key);
    replaceFile(b.cert, live().cert);
    app.reload();

    const fresh = await RawSmtp.open(app.smtpPort);
    await fresh.smtp.cmd('EHLO client.test');
    const s2 = await startTls(fresh.smtp);
    assert.equal((s2.socket as TLSSocket).getPeerX509Certificate()?.fingerprint256, fileFingerprint(b.cert));
    s2.socket.destroy();
    const implicit = await implicitSession(app.smtp.implicitAddress!.port);
    assert.equal((implicit.socket as TLSSocket).getPeerX509Certificate()?.fingerprint256, fileFingerprint(b.cert));
    implicit.socket.destroy();

    // The session opened before the reload still works.
    await open.cmd('EHLO client.test');
    assert.equal((await open.cmd('MAIL FROM:<a@client.test>')).code, 250);
    assert.equal((await open.cmd('RCPT TO:<user@in.test>')).code, 250);
    assert.equal((await open.cmd('DATA')).code, 354);
    open.socket.write('Subject: survived\r\n\r\nx\r\n.\r\n');
    queuedId(await open.read());
    open.socket.destroy();

    // A half-written renewal: the reload is refused and the identity in use stays.
    writeFileSync(live().key, 'not a key');
    assert.equal(app.smtp.reloadTls('test'), false);
    const refused = app.logs.map((l) => JSON.parse(l) as { level: number; msg: string; problem?: string; err?: unknown }).filter((l) => l.msg === 'TLS key or certificate not reloaded; the previous ones stay in use').at(-1);
    assert.equal(refused?.level, 50);
    assert.match(refused?.problem ?? '', /^smtp\.tls\.key_file: is not a usable PEM private key \(.+\); give the unencrypted private key file/);
    assert.equal(refused?.err, undefined, 'a file\'s problem is logged without a stack');
    const after = await RawSmtp.open(app.smtpPort);
    await after.smtp.cmd('EHLO client.test');
    const s3 = await startTls(after.smtp);
    assert.equal((s3.socket as TLSSocket).getPeerX509Certificate()?.fingerprint256, fileFingerprint(b.cert));
    s3.socket.destroy();
    // A renewal that changes key type, caught between its two files: an ECDSA certificate beside the old RSA key
    // loads in OpenSSL without complaint (each type has its own slot) and every handshake would fail. Refused too.
    const rsa = makeCert(join(dir, 'certs'), 'rsa', 'mx.test', 'rsa');
    copyFileSync(rsa.key, live().key);
    copyFileSync(rsa.cert, live().cert);
    assert.equal(app.smtp.reloadTls('test'), true);
    replaceFile(a.cert, live().cert);
    assert.equal(app.smtp.reloadTls('test'), false);
    const mixed = await RawSmtp.open(app.smtpPort);
    await mixed.smtp.cmd('EHLO client.test');
    const s4 = await startTls(mixed.smtp);
    assert.equal((s4.socket as TLSSocket).getPeerX509Certificate()?.fingerprint256, fileFingerprint(rsa.cert));
    s4.socket.destroy();
    copyFileSync(b.key, live().key);
    copyFileSync(b.cert, live().cert);
    assert.equal(app.smtp.reloadTls('test'), true);
  });

  test('reload on file change (smtp.tls.watch)', async () => {
    const wdir = tempDir();
    copyFileSync(a.key, join(wdir, 'w.key'));
    copyFileSync(a.cert, join(wdir, 'w.crt'));
    const watched = await startSmtpApp({ smtp: `  tls:\n    key_file: ${join(wdir, 'w.key')}\n    cert_file: ${join(wdir, 'w.crt')}` });
    try {
      replaceFile(b.key, join(wdir, 'w.key'));
      replaceFile(b.cert, join(wdir, 'w.crt'));
      await until(() => watched.logs.some((l) => l.includes('TLS key and certificate reloaded')), 5000, 'the reload after the file change');
      const { smtp } = await RawSmtp.open(watched.smtpPort);
      await smtp.cmd('EHLO client.test');
      const s = await startTls(smtp);
      assert.equal((s.socket as TLSSocket).getPeerX509Certificate()?.fingerprint256, fileFingerprint(b.cert));
      s.socket.destroy();
    } finally {
      await watched.close();
    }
  });

  test('reload on file change behind links: a Kubernetes Secret volume\'s ..data swap, then a swapped folder link', async () => {
    // As kubelet writes a Secret: files in a timestamped folder, ..data links to it, tls.key and tls.crt link
    // through ..data; an update writes a new folder, renames a new link over ..data and removes the old folder.
    // Nothing named tls.key or tls.crt changes in the mounted folder.
    const vol = tempDir();
    const version = (name: string, pair: { key: string; cert: string }) => {
      mkdirSync(join(vol, name));
      copyFileSync(pair.key, join(vol, name, 'tls.key'));
      copyFileSync(pair.cert, join(vol, name, 'tls.crt'));
    };
    version('..2026_11_27_1', a);
    symlinkSync('..2026_11_27_1', join(vol, '..data'));
    symlinkSync('..data/tls.key', join(vol, 'tls.key'));
    symlinkSync('..data/tls.crt', join(vol, 'tls.crt'));
    const watched = await startSmtpApp({ smtp: `  tls:\n    key_file: ${join(vol, 'tls.key')}\n    cert_file: ${join(vol, 'tls.crt')}`, deps: { tlsPollMs: 50 } });
    try {
      assert.equal(await servedFingerprint(watched.smtpPort), fileFingerprint(a.cert));
      version('..2026_11_27_2', b);
      symlinkSync('..2026_11_27_2', join(vol, '..data_tmp'));
      renameSync(join(vol, '..data_tmp'), join(vol, '..data'));
      rmSync(join(vol, '..2026_11_27_1'), { recursive: true });
      await until(() => watched.logs.some((l) => l.includes('TLS key and certificate reloaded')), 5000, 'the reload after the ..data swap');
      assert.equal(await servedFingerprint(watched.smtpPort), fileFingerprint(b.cert));
    } finally {
      await watched.close();
    }
    // A folder link swapped to a new folder (ln -s v2 current.tmp && mv -T current.tmp current).
    const root = tempDir();
    for (const [v, pair] of [['v1', a], ['v2', b]] as const) {
      mkdirSync(join(root, v));
      copyFileSync(pair.key, join(root, v, 'key.pem'));
      copyFileSync(pair.cert, join(root, v, 'fullchain.pem'));
    }
    symlinkSync('v1', join(root, 'current'));
    const linked = await startSmtpApp({ smtp: `  tls:\n    key_file: ${join(root, 'current', 'key.pem')}\n    cert_file: ${join(root, 'current', 'fullchain.pem')}`, deps: { tlsPollMs: 50 } });
    try {
      assert.equal(await servedFingerprint(linked.smtpPort), fileFingerprint(a.cert));
      symlinkSync('v2', join(root, 'current.tmp'));
      renameSync(join(root, 'current.tmp'), join(root, 'current'));
      await until(() => linked.logs.some((l) => l.includes('TLS key and certificate reloaded')), 5000, 'the reload after the folder link swap');
      assert.equal(await servedFingerprint(linked.smtpPort), fileFingerprint(b.cert));
    } finally {
      await linked.close();
    }
  });
});

describe('PROXY protocol', () => {
  let app: TestApp;
  before(async () => {
    app = await startSmtpApp({ smtp: '  proxy_protocol: true\n  limits:\n    max_connections_per_ip: 1\n    exempt: []' });
  });
  after(() => app.close());

  function v2v6(hex: string, port: number): Buffer {
    const body = Buffer.alloc(36);
    Buffer.from(hex, 'hex').copy(body, 0);
    body.writeUInt16BE(port, 32);
    body.writeUInt16BE(25, 34);
    // A TLV after the addresses (PP2_TYPE_NOOP) must be skipped.
    return Buffer.concat([PROXY_V2_SIG, Buffer.from([0x21, 0x21, 0x00, 36 + 3]), body, Buffer.from([0x04, 0x00, 0x00])]);
  }

  async function viaProxy(header: Buffer | string): Promise<{ smtp: RawSmtp; id: string }> {
    const smtp = await RawSmtp.connect(app.smtpPort);
    smtp.write(header);
    assert.equal((await smtp.read()).code, 220);
    await smtp.cmd('EHLO client.test');
    await startData(smtp);
    smtp.write('Subject: proxied\r\n\r\nx\r\n.\r\n');
    return { smtp, id: queuedId(await smtp.read()) };
  }

  test('v1: remote_address is the client the balancer saw', async () => {
    const { smtp, id } = await viaProxy('PROXY TCP4 203.0.113.7 192.0.2.1 56324 25\r\n');
    assert.equal(app.spool.getMessage(id)?.envelope.remoteAddress, '203.0.113.7');
    await smtp.quit();
  });

  test('v2 (binary), IPv4 and IPv6 with a TLV', async () => {
    const four = await viaProxy(v2v4([198, 51, 100, 9], 40000));
    assert.equal(app.spool.getMessage(four.id)?.envelope.remoteAddress, '198.51.100.9');
    await four.smtp.quit();
    const six = await viaProxy(v2v6('20010db8000000000000000000000042', 40001));
    assert.equal(app.spool.getMessage(six.id)?.envelope.remoteAddress, '2001:db8::42');
    await six.smtp.quit();
  });

  test('per-IP limits apply to the proxied address', async () => {
    const first = await RawSmtp.connect(app.smtpPort);
    first.write(v2v4([192, 0, 2, 55], 1000));
    assert.equal((await first.read()).code, 220);
    const second = await RawSmtp.connect(app.smtpPort);
    second.write('PROXY TCP4 192.0.2.55 192.0.2.1 1001 25\r\n');
    assert.equal((await second.read()).raw, '421 4.7.0 mx.test Error: too many connections from 192.0.2.55\r\n');
    const other = await RawSmtp.connect(app.smtpPort);
    other.write(v2v4([192, 0, 2, 56], 1002));
    assert.equal((await other.read()).code, 220);
    first.destroy();
    other.destroy();
  });

  test('a broken header closes the connection; nothing reaches SMTP', async () => {
    const before = countMessages(app);
    const bad = await RawSmtp.connect(app.smtpPort);
    bad.write(Buffer.concat([PROXY_V2_SIG.subarray(0, 6), Buffer.from('garbage\r\n')]));
    await bad.waitClosed();
    const bad2 = await RawSmtp.connect(app.smtpPort);
    bad2.write('EHLO client.test\r\n');
    await bad2.waitClosed();
    assert.equal(countMessages(app), before);
  });
});
