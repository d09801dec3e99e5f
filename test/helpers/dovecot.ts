// A throwaway Dovecot (Debian dovecot-imapd) for IMAP bridge tests: its own config, passwd-file users, a free
// loopback port, optional XOAUTH2 via an introspection URL; stopped with doveadm. See /work/shared/test-servers.md.
import { spawn } from 'node:child_process';
import { chownSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ImapFlow } from 'imapflow';

const NOBODY = 65534;

function findProgram(name: string): string | undefined {
  for (const dir of [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/usr/local/sbin', '/sbin']) {
    if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  return undefined;
}

const DOVECOT = findProgram('dovecot');
const DOVEADM = findProgram('doveadm');

/**
 * false when Dovecot is installed; otherwise the reason to skip. Under CI=true a missing Dovecot is an error:
 * the test file fails instead of skipping (CI installs dovecot-imapd in .ci/run).
 */
export function dovecotSkip(): string | false {
  if (DOVECOT && DOVEADM) return false;
  const why = 'dovecot is not installed (apt-get install dovecot-imapd)';
  if (process.env.CI === 'true') throw new Error(`${why}; CI must run the IMAP tests against a real Dovecot`);
  return `${why}; IMAP integration tests skipped`;
}

export interface DovecotUser {
  user: string;
  password: string;
}

export interface DovecotOptions {
  users?: string[];
  /** enables XOAUTH2 (the mechanism Office 365 offers; imapflow would prefer OAUTHBEARER), validating tokens by POSTing them to this RFC 7662 introspection URL */
  introspectionUrl?: string;
  /** the capability list advertised after login (e.g. without IDLE, to exercise polling) */
  capability?: string;
  /** mail storage format (default maildir; deliverToMaildir needs maildir) */
  mailFormat?: 'maildir' | 'sdbox' | 'mdbox';
}

export interface Dovecot {
  host: string;
  port: number;
  dir: string;
  users: DovecotUser[];
  /** an imapflow client logged in as the user, for setting up and inspecting the mailbox */
  client(user?: string): Promise<ImapFlow>;
  /** appends raw messages over one connection (LITERAL+ keeps it one round trip each); internalDate: their INTERNALDATE */
  append(messages: Array<string | Buffer>, opts?: { user?: string; folder?: string; flags?: string[]; internalDate?: Date }): Promise<void>;
  /** writes messages straight into the Maildir new/ folder: fastest for large backlogs */
  deliverToMaildir(messages: Array<string | Buffer>, user?: string): void;
  /** UIDs and flags of every message in a folder, once each (flag updates the server sends meanwhile are merged) */
  list(folder?: string, user?: string): Promise<Array<{ uid: number; flags: string[] }>>;
  log(): string;
  start(): Promise<void>;
  stop(): Promise<void>;
  /** stop, and remove the directory */
  close(): Promise<void>;
}

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** Polls the port: a daemon announces nothing else we could wait on. */
async function waitPort(port: number, open: boolean, timeoutMs: number, what: () => string): Promise<void> {
  const start = Date.now();
  while ((await canConnect(port)) !== open) {
    if (Date.now() - start > timeoutMs) throw new Error(`dovecot did not ${open ? 'start' : 'stop'} within ${timeoutMs} ms; log:\n${what()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export async function startDovecot(opts: DovecotOptions = {}): Promise<Dovecot> {
  if (!DOVECOT || !DOVEADM) throw new Error('dovecot is not installed');
  const dir = mkdtempSync(join(tmpdir(), 'mh-dovecot-'));
  chmodSync(dir, 0o755); // the mail user (nobody) must reach its home below
  const port = await freePort();
  const users: DovecotUser[] = (opts.users ?? ['bridge']).map((user) => ({ user, password: `pw-${user}` }));
  for (const d of ['run', 'state', 'home']) mkdirSync(join(dir, d));
  const lines: string[] = [];
  for (const u of users) {
    const home = join(dir, 'home', u.user);
    mkdirSync(home);
    chownSync(home, NOBODY, NOBODY);
    lines.push(`${u.user}:{PLAIN}${u.password}:${NOBODY}:${NOBODY}::${home}::`);
  }
  writeFileSync(join(dir, 'passwd'), lines.join('\n') + '\n');
  const oauth = opts.introspectionUrl
    ? `passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = ${join(dir, 'oauth2.conf.ext')}
}
`
    : '';
  if (opts.introspectionUrl) {
    writeFileSync(join(dir, 'oauth2.conf.ext'), `introspection_mode = post\nintrospection_url = ${opts.introspectionUrl}\nusername_attribute = username\nactive_attribute = active\nactive_value = true\n`);
  }
  const conf = join(dir, 'dovecot.conf');
  writeFileSync(
    conf,
    `base_dir = ${join(dir, 'run')}
state_dir = ${join(dir, 'state')}
log_path = ${join(dir, 'dovecot.log')}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login${opts.introspectionUrl ? ' xoauth2' : ''}
auth_failure_delay = 0
mail_location = ${opts.mailFormat && opts.mailFormat !== 'maildir' ? `${opts.mailFormat}:~/${opts.mailFormat}` : 'maildir:~/Maildir'}
# Throwaway data: no fsync (APPEND and flag changes are ~10x faster on this disk).
mail_fsync = never
first_valid_uid = 1
first_valid_gid = 1
# Notice new mail within a second even where inotify is unavailable (IDLE latency).
mailbox_idle_check_interval = 1 secs
${opts.capability ? `imap_capability = ${opts.capability}\n` : ''}service imap-login {
  chroot =
  inet_listener imap {
    port = ${port}
  }
  inet_listener imaps {
    port = 0
  }
}
service imap {
  chroot =
}
${oauth}passdb {
  driver = passwd-file
  args = ${join(dir, 'passwd')}
}
userdb {
  driver = passwd-file
  args = ${join(dir, 'passwd')}
}
`,
  );
  const logFile = join(dir, 'dovecot.log');
  const readLog = () => {
    try {
      return readFileSync(logFile, 'utf8');
    } catch {
      return '(no log)';
    }
  };
  let running = false;
  // Run asynchronously: the mailhook under test shares this process's event loop.
  const run = async (program: string, args: string[]): Promise<number | null> => {
    // The daemon keeps its stdio open: send it to a file, never to a pipe we would wait on.
    const out = openSync(join(dir, 'stdout.txt'), 'a');
    try {
      const child = spawn(program, args, { stdio: ['ignore', out, out] });
      return await new Promise((resolve) => child.on('exit', (code) => resolve(code)));
    } finally {
      closeSync(out);
    }
  };
  const start = async () => {
    const code = await run(DOVECOT, ['-c', conf]);
    if (code !== 0) throw new Error(`dovecot exited ${code}: ${readFileSync(join(dir, 'stdout.txt'), 'utf8')}\n${readLog()}`);
    running = true;
    await waitPort(port, true, 10_000, readLog);
  };
  const stop = async () => {
    if (!running) return;
    // Kick sessions first: a stopped master leaves IDLE processes behind for ~10 s until they notice.
    await run(DOVEADM, ['-c', conf, 'kick', '*']);
    await run(DOVEADM, ['-c', conf, 'stop']);
    running = false;
    await waitPort(port, false, 10_000, readLog);
    // The master is gone once its pid file is removed; a new master on the same base_dir needs that.
    const pidFile = join(dir, 'run', 'master.pid');
    const t0 = Date.now();
    while (existsSync(pidFile) && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 20));
  };
  await start();

  const userOf = (user?: string) => {
    const u = user ? users.find((x) => x.user === user) : users[0];
    if (!u) throw new Error(`no dovecot user ${user}`);
    return u;
  };
  const client = async (user?: string) => {
    const u = userOf(user);
    const c = new ImapFlow({ host: '127.0.0.1', port, secure: false, doSTARTTLS: false, auth: { user: u.user, pass: u.password }, logger: false, disableAutoIdle: true });
    c.on('error', () => {});
    await c.connect();
    return c;
  };
  let seq = 0;
  return {
    host: '127.0.0.1',
    port,
    dir,
    users,
    client,
    async append(messages, o = {}) {
      const c = await client(o.user);
      try {
        for (const m of messages) await c.append(o.folder ?? 'INBOX', m, o.flags ?? [], o.internalDate);
      } finally {
        await c.logout().catch(() => c.close());
      }
    },
    deliverToMaildir(messages, user) {
      const home = join(dir, 'home', userOf(user).user, 'Maildir');
      for (const sub of ['', 'cur', 'new', 'tmp']) {
        const p = join(home, sub);
        if (!existsSync(p)) {
          mkdirSync(p);
          chownSync(p, NOBODY, NOBODY);
        }
      }
      const stamp = Math.floor(Date.now() / 1000);
      messages.forEach((m) => {
        // Maildir file names sort in delivery order, so UIDs follow the order given.
        const name = join(home, 'new', `${stamp}.M${String(++seq).padStart(8, '0')}P${process.pid}.mailhook-test`);
        writeFileSync(name, m);
        chownSync(name, NOBODY, NOBODY);
      });
    },
    async list(folder = 'INBOX', user) {
      const c = await client(user);
      try {
        const box = await c.mailboxOpen(folder, { readOnly: true });
        if (box.exists === 0) return [];
        // One entry per message, by sequence number. When another session changes a message's flags while this FETCH
        // runs, Dovecot ends the command with an unsolicited "* n FETCH (MODSEQ (m) FLAGS (...))" for it (no UID, even
        // in a UID FETCH), and imapflow's fetch() yields that row as well: listed as is, one message looked like two
        // (a bridge touching its claim did that). A second message has a sequence number of its own and stays listed.
        const bySeq = new Map<number, { uid: number | undefined; flags: string[] }>();
        for await (const m of c.fetch('1:*', { uid: true, flags: true })) {
          const prev = bySeq.get(m.seq);
          if (prev?.uid !== undefined && m.uid !== undefined && prev.uid !== m.uid) throw new Error(`list ${folder}: message ${m.seq} has UIDs ${prev.uid} and ${m.uid}`);
          // The later row is the newer state of its flags.
          bySeq.set(m.seq, { uid: m.uid ?? prev?.uid, flags: m.flags ? [...m.flags].filter((f) => f !== '\\Recent').sort() : (prev?.flags ?? []) });
        }
        const out = [...bySeq].map(([seq, m]) => {
          if (m.uid === undefined) throw new Error(`list ${folder}: message ${seq} was listed without its UID`);
          return { uid: m.uid, flags: m.flags };
        });
        return out.sort((a, b) => a.uid - b.uid);
      } finally {
        await c.logout().catch(() => c.close());
      }
    },
    log: readLog,
    start,
    stop,
    async close() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
