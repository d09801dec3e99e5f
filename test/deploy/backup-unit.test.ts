// deploy/systemd/mailhook-backup.{service,timer}: the same spool and environment as the service, and its command, run here, makes a backup and prunes old ones.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import { Consumer } from '../helpers/consumer.js';
import { sendMail } from '../helpers/smtp-client.js';
import { SECRET, startTestApp, until } from '../helpers/app.js';

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, '..', '..');
const UNITS = join(ROOT, 'deploy', 'systemd');

function directives(file: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const line of readFileSync(join(UNITS, file), 'utf8').split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
    if (m) out.set(m[1]!, [...(out.get(m[1]!) ?? []), m[2]!]);
  }
  return out;
}

test('backup unit: the service\'s user, environment and configuration; the timer runs it nightly, catching up after downtime', () => {
  const service = directives('mailhook.service');
  const backup = directives('mailhook-backup.service');
  for (const key of ['User', 'Group', 'EnvironmentFile']) assert.deepEqual(backup.get(key), service.get(key), key);
  const spoolPath = (d: Map<string, string[]>) => (d.get('Environment') ?? []).find((e) => e.startsWith('MAILHOOK_SPOOL_PATH='));
  assert.equal(spoolPath(backup), spoolPath(service));
  // The spool the service uses, from the same variables, and no configuration file (its secrets may be unreadable).
  assert.match(backup.get('ExecStart')![0]!, /\/bin\/mailhook backup --spool "\$MAILHOOK_SPOOL_PATH" --to /);
  assert.ok(backup.get('StateDirectory')![0]!.split(' ').includes(service.get('StateDirectory')![0]!), 'the spool folder is writable (its -shm)');
  const timer = directives('mailhook-backup.timer');
  assert.ok(timer.get('OnCalendar'));
  assert.equal(timer.get('Persistent')?.[0], 'yes');
  assert.equal(timer.get('WantedBy')?.[0], 'timers.target');
});

test('backup unit: systemd-analyze verify finds nothing to complain about', async (t) => {
  const analyze = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find((p) => existsSync(p));
  if (!analyze) {
    if (process.env.CI === 'true') assert.fail('systemd-analyze is required under CI (Debian package systemd, installed by .ci/run)');
    return t.skip('systemd-analyze is not installed');
  }
  const dir = mkdtempSync(join(tmpdir(), 'mailhook-unit-'));
  try {
    for (const f of ['mailhook-backup.service', 'mailhook-backup.timer']) writeFileSync(join(dir, f), readFileSync(join(UNITS, f), 'utf8'));
    const { stderr } = await run(analyze, ['verify', join(dir, 'mailhook-backup.service'), join(dir, 'mailhook-backup.timer')]);
    assert.equal(stderr.trim(), '');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** A unit's command line as /bin/sh would get it from systemd: "%%" is a "%", and paths moved to this machine's. */
function commandOf(value: string, paths: Record<string, string>): string {
  let cmd = value.replace(/%%/g, '%');
  for (const [from, to] of Object.entries(paths)) cmd = cmd.split(from).join(to);
  return cmd;
}

test('backup unit: its commands, run here against a running mailhook, write a dated copy and remove copies older than 7 days', async () => {
  const consumer = new Consumer();
  await consumer.start();
  const routes = `
  - name: app
    addresses: ["in@u.test"]
    webhook: { url: "${consumer.url}", secret: "${SECRET}" }
`;
  const app = await startTestApp({ routes });
  const backups = mkdtempSync(join(tmpdir(), 'mailhook-backups-'));
  try {
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'in@u.test', subject: 'keep me', text: 'x' });
    await consumer.waitFor(1);
    await until(() => app.spool.jobs.counts().delivered === 1, 10_000, 'delivered');
    const unit = directives('mailhook-backup.service');
    const paths = { '/usr/bin/node': process.execPath, '/opt/mailhook': ROOT, '/var/lib/mailhook-backups': backups, '/usr/bin/find': 'find' };
    const env = { PATH: process.env.PATH ?? '', MAILHOOK_SPOOL_PATH: join(app.dir, 'spool.db') };
    // Seven days of nightly copies stay: one 6.5 days old stays, one 7.5 days old goes.
    for (const [name, days] of [['2020-01-01T031500Z', 7.5], ['2020-01-02T031500Z', 6.5]] as const) {
      mkdirSync(join(backups, name));
      const at = new Date(Date.now() - days * 86_400_000);
      utimesSync(join(backups, name), at, at);
    }
    // ExecStart=/bin/sh -c '…': the quoted part is the script.
    const script = /^\/bin\/sh -c '(.*)'$/.exec(unit.get('ExecStart')![0]!)![1]!;
    const made = await run('/bin/sh', ['-c', commandOf(script, paths)], { env });
    assert.match(made.stdout, /backed up to .*: 1 message, 0 of them in /);
    const post = commandOf(unit.get('ExecStartPost')![0]!, paths).split(' ');
    await run(post[0]!, post.slice(1), { env });
    const left = readdirSync(backups).sort();
    assert.equal(left.length, 2, `the new copy and the one within a week are left: ${left.join(', ')}`);
    assert.equal(left[0], '2020-01-02T031500Z');
    assert.match(left[1]!, /^\d{4}-\d\d-\d\dT\d{6}Z$/);
    const copy = new Database(join(backups, left[1]!, 'spool.db'), { readonly: true });
    try {
      assert.equal(copy.prepare(`SELECT COUNT(*) FROM messages`).pluck().get(), 1);
    } finally {
      copy.close();
    }
  } finally {
    await app.close();
    await consumer.stop();
    rmSync(backups, { recursive: true, force: true });
  }
});
