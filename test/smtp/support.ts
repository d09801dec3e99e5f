// Shared pieces of the SMTP edge tests: apps with extra smtp settings, spool row counts, raw and TLS sessions.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { join } from 'node:path';
import { createConnection, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket, type ConnectionOptions } from 'node:tls';
import { RawSmtp, type SmtpReply } from '../helpers/smtp-client.js';
import { configYaml, startTestApp, type TestApp } from '../helpers/app.js';
import type { DNSResolver } from 'mailauth';
import type { AppDeps } from '../../src/app.js';

export const SINK_ROUTES = `
  - name: sink
    addresses: ["user@in.test", "incoming+%{key}@in.test", "*@catch.test"]
    sink: true
`;

/** An app whose smtp: section gets `smtpExtra` (YAML lines indented by two spaces) after the test defaults. */
export async function startSmtpApp(opts: { smtp?: string; routes?: string; extra?: string; dir?: string; dnsResolver?: DNSResolver; deps?: Partial<AppDeps> } = {}): Promise<TestApp> {
  const yaml = (dir: string): string => {
    const text = configYaml({ dir, routes: opts.routes ?? SINK_ROUTES, ...(opts.extra ? { extra: opts.extra } : {}) });
    if (!opts.smtp) return text;
    const keep = /^\s*greeting_delay_ms:/m.test(opts.smtp) ? '' : '  greeting_delay_ms: 0\n';
    return text.replace('  greeting_delay_ms: 0\n', `${keep}${opts.smtp.replace(/^\n+/, '').replace(/\s+$/, '')}\n`);
  };
  return startTestApp({ routes: '', yaml, ...(opts.dir ? { dir: opts.dir } : {}), deps: { ...opts.deps, ...(opts.dnsResolver ? { dnsResolver: opts.dnsResolver } : {}) } });
}

export function countMessages(app: TestApp): number {
  return (app.spool.db.prepare('SELECT COUNT(*) AS n FROM messages').get() as { n: number }).n;
}

export function countDeliveries(app: TestApp): number {
  return (app.spool.db.prepare('SELECT COUNT(*) AS n FROM deliveries').get() as { n: number }).n;
}

export function queuedId(r: SmtpReply | undefined): string {
  assert.ok(r, 'no reply');
  const m = /^250 2\.0\.0 Ok: queued as ([a-z0-9]+)\r\n$/.exec(r.raw);
  assert.ok(m, `not a queued reply: ${JSON.stringify(r.raw)}`);
  return m[1] as string;
}

/** A session after the banner and EHLO. */
export async function session(port: number): Promise<RawSmtp> {
  const { smtp, banner } = await RawSmtp.open(port);
  assert.equal(banner.code, 220, banner.raw);
  const ehlo = await smtp.cmd('EHLO client.test');
  assert.equal(ehlo.code, 250, ehlo.raw);
  return smtp;
}

/** MAIL, RCPT, DATA on an open session; returns the 354 reply. */
export async function startData(smtp: RawSmtp, from = 'sender@client.test', to = ['user@in.test']): Promise<void> {
  assert.equal((await smtp.cmd(`MAIL FROM:<${from}>`)).raw, '250 2.1.0 Accepted\r\n');
  for (const r of to) assert.equal((await smtp.cmd(`RCPT TO:<${r}>`)).raw, '250 2.1.5 Accepted\r\n');
  assert.equal((await smtp.cmd('DATA')).raw, '354 End data with <CR><LF>.<CR><LF>\r\n');
}

/** Sends one plain message and returns the stored id (proves the server still serves). */
export async function sendOne(port: number, body = 'Subject: ok\r\n\r\nstill serving\r\n'): Promise<string> {
  const smtp = await session(port);
  await startData(smtp);
  smtp.write(`${body}.\r\n`);
  const id = queuedId(await smtp.read());
  await smtp.quit();
  return id;
}

/** Writes bytes and waits until the socket has handed them to the kernel. */
export function writeFlushed(smtp: RawSmtp, data: string | Buffer): Promise<void> {
  return new Promise((resolve, reject) => smtp.socket.write(data, (err) => (err ? reject(err) : resolve())));
}

/** Reads replies off any socket: TLS (after STARTTLS or on the implicit-TLS port) or one bound to a chosen local address. */
export class Lines {
  private buffer = '';
  private readonly queue: SmtpReply[] = [];
  private waiters: Array<(r: SmtpReply) => void> = [];
  private closedFlag = false;
  private readonly closeWaiters: Array<() => void> = [];
  constructor(readonly socket: TLSSocket | Socket) {
    socket.on('close', () => {
      this.closedFlag = true;
      for (const w of this.closeWaiters) w();
    });
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => {
      this.buffer += d;
      for (;;) {
        const m = /^((?:\d{3}-[^\r\n]*\r\n)*)(\d{3})(?: ([^\r\n]*))?\r\n/.exec(this.buffer);
        if (!m) break;
        this.buffer = this.buffer.slice(m[0].length);
        const reply: SmtpReply = { code: Number(m[2]), lines: m[0].split('\r\n').filter(Boolean), text: m[3] ?? '', raw: m[0] };
        const w = this.waiters.shift();
        if (w) w(reply);
        else this.queue.push(reply);
      }
    });
    socket.on('error', () => undefined);
  }
  read(timeoutMs = 5000): Promise<SmtpReply> {
    const r = this.queue.shift();
    if (r) return Promise.resolve(r);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no TLS reply')), timeoutMs);
      this.waiters.push((x) => {
        clearTimeout(t);
        resolve(x);
      });
    });
  }
  async cmd(line: string): Promise<SmtpReply> {
    this.socket.write(`${line}\r\n`);
    return this.read();
  }
  get closed(): boolean {
    return this.closedFlag;
  }
  waitClosed(timeoutMs = 5000): Promise<void> {
    if (this.closedFlag) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('connection still open')), timeoutMs);
      this.closeWaiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }
}

/** A plain connection from a chosen loopback address (127.0.0.2, …), to act as another client IP. */
export function connectFrom(port: number, localAddress: string): Promise<Lines> {
  return new Promise((resolve, reject) => {
    const s = createConnection({ port, host: '127.0.0.1', localAddress }, () => resolve(new Lines(s)));
    s.once('error', reject);
  });
}

/** STARTTLS on a raw session (EHLO done); resolves once the handshake completed. */
export async function startTls(smtp: RawSmtp, options: ConnectionOptions = {}): Promise<Lines> {
  const r = await smtp.cmd('STARTTLS');
  assert.equal(r.raw, '220 2.0.0 Ready to start TLS\r\n');
  smtp.socket.removeAllListeners('data');
  const socket = tlsConnect({ socket: smtp.socket, rejectUnauthorized: false, servername: 'mx.test', ...options });
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => resolve());
    socket.once('error', reject);
  });
  return new Lines(socket);
}

/** A self-signed certificate for CN (an EC key: quick to make), written to dir/<name>.key and .crt. */
export function makeCert(dir: string, name: string, cn = 'mx.test', type: 'ec' | 'rsa' = 'ec'): { key: string; cert: string } {
  mkdirSync(dir, { recursive: true });
  const key = join(dir, `${name}.key`);
  const cert = join(dir, `${name}.crt`);
  const keyOptions = type === 'ec' ? ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1'] : ['-newkey', 'rsa:2048'];
  execFileSync('openssl', ['req', '-x509', ...keyOptions, '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', `/CN=${cn}`], { stdio: 'ignore' });
  return { key, cert };
}

/** openssl is needed to make certificates: in CI its absence is a failure, elsewhere the test is skipped. */
export function opensslMissing(): string | false {
  for (const p of (process.env.PATH ?? '').split(':')) if (p && existsSync(join(p, 'openssl'))) return false;
  if (process.env.CI === 'true') throw new Error('openssl is required for the TLS tests and is not installed');
  return 'openssl is not installed; TLS tests skipped';
}

/** The PROXY protocol v2 signature (12 bytes). */
export const PROXY_V2_SIG = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

/** A PROXY v2 header (PROXY command, TCP over IPv4) naming `ip`:`port` as the client. */
export function proxyV2v4(ip: number[], port: number): Buffer {
  const body = Buffer.alloc(12);
  Buffer.from(ip).copy(body, 0);
  Buffer.from([127, 0, 0, 1]).copy(body, 4);
  body.writeUInt16BE(port, 8);
  body.writeUInt16BE(25, 10);
  return Buffer.concat([PROXY_V2_SIG, Buffer.from([0x21, 0x11, 0x00, 12]), body]);
}

/** The fingerprint of the certificate a new STARTTLS session on `port` is served. */
export async function servedFingerprint(port: number): Promise<string | undefined> {
  const { smtp } = await RawSmtp.open(port);
  await smtp.cmd('EHLO client.test');
  const s = await startTls(smtp);
  const fp = (s.socket as TLSSocket).getPeerX509Certificate()?.fingerprint256;
  s.socket.destroy();
  return fp;
}

/** The fingerprint of a certificate file (PEM), to compare with servedFingerprint. */
export function fileFingerprint(pemFile: string): string {
  return new X509Certificate(readFileSync(pemFile)).fingerprint256;
}
