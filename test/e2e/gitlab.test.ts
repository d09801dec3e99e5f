// docs/gitlab.md followed as written: its mailhook config run by bin/mailhook, mail sent with swaks, a stand-in GitLab checking what arrives.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { tempDir } from '../helpers/app.js';
import { BIN, spawnMailhook, type RunningProcess } from '../helpers/process.js';
import { requireSwaks, SWAKS } from '../helpers/postfix.js';
import { GitlabStandin, type StandinRequest } from '../helpers/gitlab-standin.js';

const run = promisify(execFile);
const DOC = readFileSync(new URL('../../docs/gitlab.md', import.meta.url), 'utf8');
const D = 'incoming.gitlab.example.com';

/** Section 3's mailhook config, with GitLab's URL and secret files pointed at the stand-in's. */
function documentedConfig(gitlabPort: number, secretDir: string): string {
  const yaml = /## 3\. mailhook: one route per mailbox[\s\S]*?```yaml\n([\s\S]*?)```/.exec(DOC)?.[1];
  assert.ok(yaml, 'docs/gitlab.md section 3 has a yaml block');
  assert.match(yaml, /https:\/\/gitlab\.example\.com\/api\/v4\/internal\/mail_room\/incoming_email/);
  return yaml.replaceAll('https://gitlab.example.com/', `http://127.0.0.1:${gitlabPort}/`).replaceAll('/var/opt/gitlab/gitlab-rails/etc/', `${secretDir}/`);
}

/** The secret file as Omnibus writes it: SecureRandom.base64(32) through secret_token.erb. */
function writeOmnibusSecret(path: string): void {
  writeFileSync(path, `${randomBytes(32).toString('base64')}\n`);
}

async function swaks(port: number, args: string[]): Promise<void> {
  const { stdout } = await run(SWAKS, ['--server', `127.0.0.1:${port}`, '--from', 'alice@sender.example', ...args], { encoding: 'utf8' });
  assert.match(stdout, /<- {2}250 2\.0\.0 Ok: queued as/);
}

function owned(t: TestContext): { proc<P extends RunningProcess>(p: P): P } {
  const procs: RunningProcess[] = [];
  t.after(async () => {
    for (const p of procs) {
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
      await p.exit;
    }
  });
  return { proc: (p) => (procs.push(p), p) };
}

test('docs/gitlab.md as written: GitLab accepts every post and finds the key GitLab users expect; a rotated secret is 401, then restart and replay', async (t) => {
  if (!requireSwaks(t)) return;
  const own = owned(t);
  const dir = tempDir();
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const incomingSecret = join(dir, 'gitlab_incoming_email_secret');
  writeOmnibusSecret(incomingSecret);
  writeOmnibusSecret(join(dir, 'gitlab_service_desk_email_secret'));
  const gitlab = await new GitlabStandin(
    {
      incoming_email: { address: `incoming+%{key}@${D}`, secretFile: incomingSecret },
      service_desk_email: { address: `contact+%{key}@${D}`, secretFile: join(dir, 'gitlab_service_desk_email_secret') },
    },
    'gitlab.example.com',
  ).start();
  t.after(() => gitlab.stop());
  const cfg = join(dir, 'mailhook.yaml');
  writeFileSync(cfg, documentedConfig(gitlab.port, dir));
  const adminToken = randomBytes(24).toString('hex');
  // systemd's way of setting the listeners (docs section 1); the admin token for the replay at the end.
  const env = { MAILHOOK_SMTP_LISTEN: '127.0.0.1:0', MAILHOOK_HTTP_LISTEN: '127.0.0.1:0', MAILHOOK_ADMIN_TOKEN: adminToken };

  const check = await run(process.execPath, [BIN, 'check-config', '--config', cfg], { cwd: dir, encoding: 'utf8' });
  assert.match(check.stdout, /ok \(2 routes: gitlab, gitlab-service-desk\)/);
  let mh = own.proc(spawnMailhook(['serve', '--config', cfg], env, dir));
  await mh.started;

  const next = async (send: () => Promise<void>, n = 1): Promise<StandinRequest[]> => {
    const start = gitlab.requests.length;
    await send();
    return (await gitlab.waitFor(start + n)).slice(start);
  };
  const accepted = (r: StandinRequest | undefined, type = 'incoming_email') => {
    assert.ok(r);
    assert.equal(r.mailboxType, type);
    assert.equal(r.contentType, 'text/plain');
    assert.equal(r.tokenProblem, null);
    assert.equal(r.status, 200);
  };

  // Reply by email to a notification: the reply key is in To.
  const replyKey = randomBytes(16).toString('hex');
  let [r] = await next(() => swaks(mh.smtpPort, ['--to', `incoming+${replyKey}@${D}`, '--header', 'Subject: Re: [group/project] Bug (#1)']));
  accepted(r);
  assert.deepEqual(r!.key, { key: replyKey, source: 'to' });

  // New issue by email, the address in Bcc: only the Delivered-To mailhook adds names it.
  [r] = await next(() => swaks(mh.smtpPort, ['--to', `incoming+group-project-12-0a1b2c3d-issue@${D}`, '--header', 'To: team@sender.example', '--header', 'Subject: new issue']));
  accepted(r);
  assert.deepEqual(r!.key, { key: 'group-project-12-0a1b2c3d-issue', source: 'delivered-to' });

  // The address as a person typed it, capitals and all: GitLab's match is case-sensitive, so the Delivered-To must be
  // written as GitLab writes its address (as mailhook's route has it).
  [r] = await next(() => swaks(mh.smtpPort, ['--to', `Incoming+group-project-12-0a1b2c3d-issue@Incoming.GitLab.Example.com`, '--header', 'Subject: typed']));
  accepted(r);
  assert.deepEqual(r!.key, { key: 'group-project-12-0a1b2c3d-issue', source: 'delivered-to' });
  assert.match(r!.body.toString('latin1'), new RegExp(`^Delivered-To: incoming\\+group-project-12-0a1b2c3d-issue@${D.replaceAll('.', '\\.')}\\r\\n`));

  // Service Desk: a customer writes to the project's address; it goes to the service_desk_email endpoint with its secret.
  [r] = await next(() => swaks(mh.smtpPort, ['--to', `contact+group-project-12-issue-@${D}`, '--header', 'Subject: I need help']));
  accepted(r, 'service_desk_email');
  assert.deepEqual(r!.key, { key: 'group-project-12-issue-', source: 'to' });

  // Two projects' addresses both in To: one post each, but GitLab reads To first, so both resolve to the first key
  // (as two IMAP deliveries would under mail_room). Only addresses outside To (Bcc, Cc) are found by their own key.
  const two = await next(() => swaks(mh.smtpPort, ['--to', `incoming+a-1-t-issue@${D},incoming+b-2-t-issue@${D}`, '--header', `To: incoming+a-1-t-issue@${D}, incoming+b-2-t-issue@${D}`]), 2);
  for (const x of two) accepted(x);
  assert.deepEqual(two.map((x) => x.key?.key), ['a-1-t-issue', 'a-1-t-issue']);
  const bccTwo = await next(() => swaks(mh.smtpPort, ['--to', `incoming+a-1-t-issue@${D},incoming+b-2-t-issue@${D}`, '--header', 'To: team@sender.example']), 2);
  assert.deepEqual(bccTwo.map((x) => x.key?.key).sort(), ['a-1-t-issue', 'b-2-t-issue']);

  // An out-of-office reply to a notification: without drop_automatic it is posted, and GitLab ignores it.
  [r] = await next(() => swaks(mh.smtpPort, ['--to', `incoming+${replyKey}@${D}`, '--header', 'Auto-Submitted: auto-replied', '--header', 'Subject: Out of office']));
  accepted(r);
  assert.equal(r!.autoReply, true);

  // GitLab's secret changes (a new incoming_email_auth_token, reconfigure restarts GitLab): mailhook still signs with
  // the one it read at start-up, GitLab answers 401, the delivery is dead-lettered and the error says what to do.
  writeOmnibusSecret(incomingSecret);
  gitlab.restart();
  [r] = await next(() => swaks(mh.smtpPort, ['--to', `incoming+${replyKey}@${D}`, '--header', 'Subject: after rotation']));
  assert.equal(r!.status, 401);
  const dead = await mh.waitForLog((l) => l.msg === 'delivery dead-lettered: configuration problem');
  assert.match(String(dead.error), /restart mailhook/);
  mh.child.kill('SIGTERM');
  assert.equal((await mh.exit).code, 0);
  mh = own.proc(spawnMailhook(['serve', '--config', cfg], env, dir));
  await mh.started;
  [r] = await next(() => run(process.execPath, [BIN, 'replay', '--config', cfg, '--url', `http://127.0.0.1:${mh.httpPort}`, '--dead', '--route', 'gitlab'], { cwd: dir, env: { ...process.env, ...env } }).then(() => undefined));
  accepted(r);
  mh.child.kill('SIGTERM');
  assert.equal((await mh.exit).code, 0);
});
