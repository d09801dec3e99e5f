// TLS handshakes counted by result (mailhook_smtp_tls_handshakes_total) and failures named in the log, from real clients.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { once } from 'node:events';
import { createConnection } from 'node:net';
import { RawSmtp } from '../helpers/smtp-client.js';
import { tempDir, until, untilAsync, type TestApp } from '../helpers/app.js';
import { isHandshakeFailure, tlsFailureKind } from '../../src/smtp/tls-failures.js';
import { makeCert, opensslMissing, startSmtpApp, startTls } from './support.js';

const skip = opensslMissing();

describe('TLS handshake results', { skip }, () => {
  let app: TestApp;
  let implicitPort: number;

  before(async () => {
    const dir = tempDir();
    const cert = makeCert(join(dir, 'certs'), 'mx');
    app = await startSmtpApp({ dir, smtp: `  tls:\n    key_file: ${cert.key}\n    cert_file: ${cert.cert}\n    implicit_listen: "127.0.0.1:0"\n    watch: false` });
    implicitPort = app.smtp.implicitAddress!.port;
  });
  after(async () => {
    await app.close();
  });

  async function counts(): Promise<Record<string, number>> {
    const text = await (await fetch(`${app.httpUrl}/metrics`)).text();
    const out: Record<string, number> = {};
    for (const m of text.matchAll(/^mailhook_smtp_tls_handshakes_total\{result="([a-z_]+)"\} (\d+)$/gm)) out[m[1]!] = Number(m[2]);
    return out;
  }

  function failures(from: number) {
    return app.logs.slice(from).join('').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { msg: string; tls_failure?: string; code?: string })
      .filter((l) => l.msg === 'smtp client connection failed' || l.msg === 'smtp connection error');
  }

  /** Waits until `n` handshake failures were logged after `from`, and returns their kinds. */
  async function failedKinds(from: number, n: number): Promise<Array<string | undefined>> {
    await until(() => failures(from).length >= n, 5000, `${n} handshake failure(s) logged`);
    await new Promise((r) => setImmediate(r));
    return failures(from).map((l) => l.tls_failure);
  }

  async function starttls(options: Parameters<typeof startTls>[1]): Promise<void> {
    const { smtp } = await RawSmtp.open(app.smtpPort);
    await smtp.cmd('EHLO client.test');
    try {
      const s = await startTls(smtp, options);
      assert.equal((await s.cmd('EHLO client.test')).code, 250);
      s.socket.destroy();
    } finally {
      smtp.destroy();
    }
  }

  test('every result is exported at zero before the first handshake', async () => {
    assert.deepEqual(await counts(), { ok: 0, protocol_version: 0, no_shared_cipher: 0, certificate_rejected: 0, not_tls: 0, timeout: 0, closed: 0, other: 0 });
  });

  test('a client that refuses the certificate, one with an old protocol, one with no cipher in common, plain text and a hang-up: each counted and logged by kind; good handshakes counted ok', async () => {
    const from = app.logs.length;
    const before = await counts();
    // Good ones: STARTTLS and the implicit-TLS listener.
    await starttls({});
    const implicit = tlsConnect({ port: implicitPort, host: '127.0.0.1', rejectUnauthorized: false, servername: 'mx.test' });
    await once(implicit, 'secureConnect');
    await untilAsync(async () => (await counts()).ok === before.ok! + 2, 5000, 'two good handshakes counted');
    implicit.destroy();

    // OpenSSL's client checking the (self-signed) certificate against the system's CAs sends an alert and gives up.
    const sclient = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${app.smtpPort}`, '-starttls', 'smtp', '-servername', 'mx.test', '-verify_return_error'], { stdio: ['pipe', 'ignore', 'ignore'] });
    await once(sclient, 'exit');
    assert.deepEqual(await failedKinds(from, 1), ['certificate_rejected']);

    await assert.rejects(starttls({ minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' }));
    assert.deepEqual(await failedKinds(from, 2), ['certificate_rejected', 'protocol_version']);

    // The certificate has an EC key: a TLS 1.2 client offering only RSA-key ciphers shares none with it.
    await assert.rejects(starttls({ maxVersion: 'TLSv1.2', ciphers: 'AES128-SHA' }));
    assert.deepEqual(await failedKinds(from, 3), ['certificate_rejected', 'protocol_version', 'no_shared_cipher']);

    for (const text of ['EHLO plain.test\r\n', '']) {
      const socket = createConnection(implicitPort, '127.0.0.1');
      await once(socket, 'connect');
      socket.end(text);
      await once(socket, 'close');
    }
    assert.deepEqual(await failedKinds(from, 5), ['certificate_rejected', 'protocol_version', 'no_shared_cipher', 'not_tls', 'closed']);

    const after = await counts();
    const moved = Object.fromEntries(Object.entries(after).map(([k, v]) => [k, v - (before[k] ?? 0)]).filter(([, v]) => v !== 0));
    assert.deepEqual(moved, { ok: 2, certificate_rejected: 1, protocol_version: 1, no_shared_cipher: 1, not_tls: 1, closed: 1 });
  });
});

describe('STARTTLS handshakes that end without an error (smtp-server reports none)', { skip }, () => {
  test('a client that hangs up after the 220, and one that stalls until socket_timeout_ms, are counted closed and timeout, once each', async () => {
    const dir = tempDir();
    const cert = makeCert(join(dir, 'certs'), 'mx');
    const app = await startSmtpApp({ dir, smtp: `  socket_timeout_ms: 500\n  tls:\n    key_file: ${cert.key}\n    cert_file: ${cert.cert}\n    watch: false` });
    const count = async (result: string) => Number(new RegExp(`^mailhook_smtp_tls_handshakes_total\\{result="${result}"\\} (\\d+)$`, 'm').exec(await (await fetch(`${app.httpUrl}/metrics`)).text())?.[1]);
    const failed = () => app.logs.join('').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { msg: string; tls_failure?: string; cid?: string }).filter((l) => l.msg === 'smtp client connection failed');
    try {
      for (const how of ['closed', 'timeout'] as const) {
        const { smtp } = await RawSmtp.open(app.smtpPort);
        await smtp.cmd('EHLO client.test');
        assert.equal((await smtp.cmd('STARTTLS')).code, 220);
        if (how === 'closed') smtp.destroy();
        await untilAsync(async () => (await count(how)) === 1, 5000, `the ${how} handshake counted`);
        smtp.destroy();
      }
      await until(() => failed().length === 2, 5000, 'both logged');
      assert.deepEqual(failed().map((l) => l.tls_failure), ['closed', 'timeout']);
      assert.ok(failed().every((l) => l.cid), 'each names its session');
      // Once each, and nothing else counted for them.
      await new Promise((r) => setTimeout(r, 50));
      for (const [result, n] of [['closed', 1], ['timeout', 1], ['ok', 0], ['other', 0]] as const) assert.equal(await count(result), n, result);
    } finally {
      await app.close();
    }
  });

  test('a client that resets the connection (RST) after the 220 is counted closed and logged once', async () => {
    // smtp-server takes ECONNRESET outside a mail transaction as a quiet end: it reports no error for it.
    const dir = tempDir();
    const cert = makeCert(join(dir, 'certs'), 'mx');
    const app = await startSmtpApp({ dir, smtp: `  tls:\n    key_file: ${cert.key}\n    cert_file: ${cert.cert}\n    watch: false` });
    const count = async (result: string) => Number(new RegExp(`^mailhook_smtp_tls_handshakes_total\\{result="${result}"\\} (\\d+)$`, 'm').exec(await (await fetch(`${app.httpUrl}/metrics`)).text())?.[1]);
    const failed = () => app.logs.join('').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { msg: string; tls_failure?: string }).filter((l) => /^smtp (client )?connection (failed|error)$/.test(l.msg));
    try {
      const { smtp } = await RawSmtp.open(app.smtpPort);
      await smtp.cmd('EHLO client.test');
      assert.equal((await smtp.cmd('STARTTLS')).code, 220);
      smtp.socket.resetAndDestroy();
      // The session's end (smtp-server's onClose) comes after the connection's close.
      await until(() => app.smtp.limits.connectionsFrom('127.0.0.1') === 0, 5000, 'the session to end');
      await new Promise((r) => setImmediate(r));
      assert.deepEqual(failed().map((l) => l.tls_failure), ['closed']);
      for (const [result, n] of [['closed', 1], ['other', 0]] as const) assert.equal(await count(result), n, result);
    } finally {
      await app.close();
    }
  });

  test('a handshake mailhook itself ends by shutting down is no client failure', async () => {
    const dir = tempDir();
    const cert = makeCert(join(dir, 'certs'), 'mx');
    const app = await startSmtpApp({ dir, smtp: `  tls:\n    key_file: ${cert.key}\n    cert_file: ${cert.cert}\n    watch: false` });
    const count = async (result: string) => Number(new RegExp(`^mailhook_smtp_tls_handshakes_total\\{result="${result}"\\} (\\d+)$`, 'm').exec(await (await fetch(`${app.httpUrl}/metrics`)).text())?.[1]);
    const failed = () => app.logs.join('').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { msg: string }).filter((l) => /^smtp (client )?connection (failed|error)$/.test(l.msg));
    try {
      const { smtp } = await RawSmtp.open(app.smtpPort);
      await smtp.cmd('EHLO client.test');
      assert.equal((await smtp.cmd('STARTTLS')).code, 220);
      // The client is still to send its ClientHello when mailhook stops (the grace of 200 ms ends the session).
      await app.smtp.shutdown(200);
      await smtp.waitClosed();
      await until(() => app.smtp.limits.connectionsFrom('127.0.0.1') === 0, 5000, 'the session to end');
      await new Promise((r) => setImmediate(r));
      assert.deepEqual(failed(), [], 'nothing logged as the client\'s failure');
      for (const result of ['closed', 'timeout', 'other']) assert.equal(await count(result), 0, result);
    } finally {
      await app.close();
    }
  });
});

describe('tlsFailureKind', () => {
  test('a session error after the handshake (no stage) is not a handshake failure', () => {
    assert.equal(isHandshakeFailure({ code: 'ECONNRESET' }), false);
    assert.equal(isHandshakeFailure({ code: 'ERR_SSL_WRONG_VERSION_NUMBER', meta: { stage: 'connect' } }), true);
  });

  test('kinds from Node codes and from OpenSSL reasons alone', () => {
    const cases: Array<[Parameters<typeof tlsFailureKind>[0], string]> = [
      [{ code: 'ERR_TLS_HANDSHAKE_TIMEOUT' }, 'timeout'],
      [{ code: 'ERR_SSL_UNSUPPORTED_PROTOCOL' }, 'protocol_version'],
      [{ code: 'ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION' }, 'protocol_version'],
      [{ reason: 'unsupported protocol' }, 'protocol_version'],
      [{ code: 'ERR_SSL_NO_SHARED_CIPHER' }, 'no_shared_cipher'],
      [{ reason: 'no suitable signature algorithm' }, 'no_shared_cipher'],
      [{ code: 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA' }, 'certificate_rejected'],
      [{ code: 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED' }, 'certificate_rejected'],
      [{ reason: 'sslv3 alert bad certificate' }, 'certificate_rejected'],
      [{ code: 'ERR_SSL_HTTP_REQUEST' }, 'not_tls'],
      [{ reason: 'wrong version number' }, 'not_tls'],
      [{ code: 'SocketError', report: false }, 'closed'],
      [{ code: 'ECONNRESET' }, 'closed'],
      [{ code: 'ERR_SSL_DECRYPTION_FAILED_OR_BAD_RECORD_MAC' }, 'other'],
      [{}, 'other'],
    ];
    for (const [err, kind] of cases) assert.equal(tlsFailureKind(err), kind, JSON.stringify(err));
  });
});
