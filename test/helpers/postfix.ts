// A throwaway real Postfix for tests: its own config and queue in a temp dir, loopback ports, configured from deploy/postfix/.
import { execFile } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { RawSmtp, type SmtpReply } from './smtp-client.js';
import { configYaml, startTestApp, tempDir, type TestApp } from './app.js';
import { Consumer } from './consumer.js';
import type { AppDeps } from '../../src/app.js';

const run = promisify(execFile);
const SNIPPETS = join(import.meta.dirname, '..', '..', 'deploy', 'postfix');
export const POSTFIX = '/usr/sbin/postfix';
export const SWAKS = '/usr/bin/swaks';

/**
 * Whether the test can run: Postfix installed and we are root (Postfix's master runs as root here).
 * Under CI=true a missing Postfix fails the test; elsewhere it is skipped with a message.
 */
export function requirePostfix(t: TestContext): boolean {
  const missing = !existsSync(POSTFIX) ? 'postfix is not installed (Debian package "postfix")' : process.getuid?.() !== 0 ? 'postfix needs root to start here' : null;
  if (!missing) return true;
  if (process.env.CI === 'true') throw new Error(`${missing}; .ci/run installs it`);
  t.skip(`${missing}; skipped (CI=true makes this a failure)`);
  return false;
}

/** Whether swaks is installed (Debian package "swaks"); as requirePostfix, a failure under CI=true, else a skip. */
export function requireSwaks(t: TestContext): boolean {
  if (existsSync(SWAKS)) return true;
  const missing = 'swaks is not installed (Debian package "swaks")';
  if (process.env.CI === 'true') throw new Error(`${missing}; .ci/run installs it`);
  t.skip(`${missing}; skipped (CI=true makes this a failure)`);
  return false;
}

/**
 * RCPT through Postfix. Under reject_unverified_recipient the first answer for a new address may be
 * "450 4.1.1 … Address verification in progress"; a sending MTA retries, and so does this, on a new session.
 */
export async function rcptUntilDecided(port: number, rcpt: string, timeoutMs = 20_000): Promise<SmtpReply> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { smtp, banner } = await RawSmtp.open(port);
    assert.equal(banner.code, 220, banner.raw);
    await smtp.cmd('EHLO sender.example.net');
    await smtp.cmd('MAIL FROM:<someone@example.net>');
    const r = await smtp.cmd(`RCPT TO:<${rcpt}>`);
    await smtp.quit();
    if (!(r.code === 450 && /verification in progress/i.test(r.text)) || Date.now() > deadline) return r;
  }
}

/** A free loopback port: Postfix needs a number in master.cf, so one is picked by binding port 0. */
export async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const a = s.address();
  await new Promise<void>((r) => s.close(() => r()));
  if (!a || typeof a !== 'object') throw new Error('no port');
  return a.port;
}

/** Replaces every occurrence of `from`, failing if there is none: a snippet that drifts breaks the test, not silently passes it. */
function substitute(text: string, from: string, to: string, what: string): string {
  if (!text.includes(from)) throw new Error(`deploy/postfix/${what} no longer contains "${from}"; update the test`);
  return text.split(from).join(to);
}

export interface PostfixOptions {
  /** mailhook's SMTP (or LMTP) port */
  mailhookPort: number;
  /** deliver over LMTP (the commented line in deploy/postfix/transport) instead of SMTP */
  lmtp?: boolean;
  /** also enable option 2 of deploy/postfix/main.cf: relay_recipient_maps with deploy/postfix/mailhook_recipients */
  relayRecipientMaps?: boolean;
  /** let the test client on 127.0.0.1 pose as another client with XCLIENT (smtpd_authorized_xclient_hosts; tests only) */
  xclient?: boolean;
}

export interface PostfixInstance {
  port: number;
  /** the instance's directory (config, queue, log); removed by stop() */
  dir: string;
  etc: string;
  /** Postfix's log (maillog_file), for failure messages */
  log(): string;
  stop(): Promise<void>;
}

/** Services Postfix needs for a relay; chroot off (no copies of /etc in the queue directory). */
function masterCf(port: number): string {
  const services = [
    `127.0.0.1:${port} inet n - n - - smtpd`,
    'pickup    unix  n - n 60 1 pickup',
    'cleanup   unix  n - n - 0 cleanup',
    'qmgr      unix  n - n 300 1 qmgr',
    'rewrite   unix  - - n - - trivial-rewrite',
    'bounce    unix  - - n - 0 bounce',
    'defer     unix  - - n - 0 bounce',
    'trace     unix  - - n - 0 bounce',
    'verify    unix  - - n - 1 verify',
    'flush     unix  n - n 1000? 0 flush',
    'proxymap  unix  - - n - - proxymap',
    'proxywrite unix - - n - 1 proxymap',
    'smtp      unix  - - n - - smtp',
    'relay     unix  - - n - - smtp',
    'showq     unix  n - n - - showq',
    'error     unix  - - n - - error',
    'retry     unix  - - n - - error',
    'discard   unix  - - n - - discard',
    'lmtp      unix  - - n - - lmtp',
    'anvil     unix  - - n - 1 anvil',
    'scache    unix  - - n - 1 scache',
    'postlog   unix-dgram n - n - 1 postlogd',
  ];
  return services.join('\n') + '\n';
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export async function startPostfix(opts: PostfixOptions): Promise<PostfixInstance> {
  // Postfix's daemons run as the postfix user: they must be able to reach the directory.
  const dir = mkdtempSync(join(tmpdir(), 'mailhook-postfix-'));
  chmodSync(dir, 0o755);
  const etc = join(dir, 'etc');
  const queue = join(dir, 'queue');
  const data = join(dir, 'data');
  for (const d of [etc, queue, data]) mkdirSync(d, { recursive: true });
  const postfixUid = Number((await run('id', ['-u', 'postfix'])).stdout.trim());
  const postfixGid = Number((await run('id', ['-g', 'postfix'])).stdout.trim());
  chownSync(data, postfixUid, postfixGid);
  const port = await freePort();

  // The snippets, as an operator would install them, with only the paths and the port changed.
  const toHere = (text: string, file: string) => substitute(text, '/etc/postfix/', `${etc}/`, file);
  let mainSnippet = toHere(readFileSync(join(SNIPPETS, 'main.cf'), 'utf8'), 'main.cf');
  if (opts.relayRecipientMaps) mainSnippet = substitute(mainSnippet, '#relay_recipient_maps = ', 'relay_recipient_maps = ', 'main.cf');
  let transport = readFileSync(join(SNIPPETS, 'transport'), 'utf8');
  if (opts.lmtp) {
    transport = substitute(transport, 'incoming.example.com    mailhook:[127.0.0.1]:2525', '#(smtp line off for the LMTP test)', 'transport');
    transport = substitute(transport, '#incoming.example.com    mailhook-lmtp:inet:[127.0.0.1]:2424', `incoming.example.com    mailhook-lmtp:inet:[127.0.0.1]:${opts.mailhookPort}`, 'transport');
  } else {
    transport = substitute(transport, 'mailhook:[127.0.0.1]:2525', `mailhook:[127.0.0.1]:${opts.mailhookPort}`, 'transport');
  }
  writeFileSync(join(etc, 'transport'), transport);
  writeFileSync(join(etc, 'mailhook_recipient_access'), readFileSync(join(SNIPPETS, 'mailhook_recipient_access')));
  writeFileSync(join(etc, 'mailhook_recipients'), readFileSync(join(SNIPPETS, 'mailhook_recipients')));

  // What a test instance needs besides the snippets: its own directories and log, loopback only, fast verification polls.
  const base = `
compatibility_level = 3.6
queue_directory = ${queue}
data_directory = ${data}
maillog_file = ${join(dir, 'maillog')}
maillog_file_prefixes = ${dir}
myhostname = postfix.test
mydomain = test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
# The test client on 127.0.0.1 is an outside sender, as on a real MX: it may not relay.
mynetworks = 192.0.2.0/24
alias_maps =
alias_database =
biff = no
smtpd_tls_security_level = none
smtp_tls_security_level = none
lmtp_tls_security_level = none
address_verify_poll_delay = 1s
${opts.xclient ? 'smtpd_authorized_xclient_hosts = 127.0.0.1\n' : ''}`;
  writeFileSync(join(etc, 'main.cf'), base + '\n' + mainSnippet);
  // Postfix's own services, then the snippet's (mailhook's transports) as it is.
  writeFileSync(join(etc, 'master.cf'), masterCf(port) + readFileSync(join(SNIPPETS, 'master.cf'), 'utf8'));
  await run('/usr/sbin/postmap', ['-c', etc, join(etc, 'transport')]);
  await run('/usr/sbin/postmap', ['-c', etc, join(etc, 'mailhook_recipient_access')]);

  const instance: PostfixInstance = {
    port,
    dir,
    etc,
    log: () => {
      try {
        return readFileSync(join(dir, 'maillog'), 'utf8');
      } catch {
        return '(no maillog)';
      }
    },
    async stop() {
      let pid = NaN;
      try {
        pid = Number(readFileSync(join(queue, 'pid', 'master.pid'), 'utf8').trim());
      } catch {
        /* never started */
      }
      await run(POSTFIX, ['-c', etc, 'stop']).catch(() => undefined);
      // "postfix stop" signals the master and returns; wait until it is gone before the directory goes.
      for (let i = 0; i < 200 && Number.isInteger(pid) && alive(pid); i++) await new Promise((r) => setTimeout(r, 25));
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await run(POSTFIX, ['-c', etc, 'set-permissions']);
    await run(POSTFIX, ['-c', etc, 'start']);
  } catch (err) {
    const log = instance.log();
    await instance.stop();
    throw new Error(`postfix did not start: ${(err as Error).message}\n${log}`);
  }
  return instance;
}

/**
 * mailhook behind a real Postfix: a consumer, mailhook with the test config plus `smtp` lines under smtp: and the
 * routes `routes` makes for the consumer's URL, and Postfix from deploy/postfix/ delivering to it. `body` runs with the
 * three; a failure carries Postfix's log; everything is stopped and removed after.
 */
export async function withMailhookBehindPostfix(
  opts: { routes: (consumerUrl: string) => string; smtp: string; deps?: Partial<AppDeps>; postfix: Omit<PostfixOptions, 'mailhookPort'> },
  body: (ctx: { app: TestApp; postfix: PostfixInstance; consumer: Consumer }) => Promise<void>,
): Promise<void> {
  const dir = tempDir('mailhook-postfix-');
  const consumer = await new Consumer().start();
  let app: TestApp | undefined;
  let postfix: PostfixInstance | undefined;
  try {
    const routes = opts.routes(consumer.url);
    const yaml = configYaml({ routes, dir }).replace('  greeting_delay_ms: 0\n', `  greeting_delay_ms: 0\n${opts.smtp}`);
    assert.ok(yaml.includes(`  greeting_delay_ms: 0\n${opts.smtp}`), 'the smtp lines are in the config');
    app = await startTestApp({ dir, routes, yaml, ...(opts.deps ? { deps: opts.deps } : {}) });
    postfix = await startPostfix({ ...opts.postfix, mailhookPort: app.smtpPort });
    await body({ app, postfix, consumer });
  } catch (err) {
    if (postfix) (err as Error).message += `\n--- postfix maillog ---\n${postfix.log()}`;
    throw err;
  } finally {
    await postfix?.stop();
    await app?.close();
    await consumer.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
