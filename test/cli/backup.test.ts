// mailhook backup (the built bin/mailhook): a copy of the spool taken while the server runs starts as a spool of its own, every message byte for byte.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Consumer } from '../helpers/consumer.js';
import { sendMail } from '../helpers/smtp-client.js';
import { configYaml, SECRET, startTestApp, tempDir, until } from '../helpers/app.js';

const BIN = fileURLToPath(new URL('../../bin/mailhook', import.meta.url));

/** The built CLI; `umask` runs it under that umask (through /bin/sh). */
function mailhook(args: string[], opts: { umask?: number } = {}): Promise<{ code: number; out: string; err: string }> {
  const [cmd, argv] = opts.umask === undefined ? [process.execPath, [BIN, ...args]] : ['/bin/sh', ['-c', `umask ${opts.umask.toString(8).padStart(3, '0')} && exec "$0" "$@"`, process.execPath, BIN, ...args]];
  return new Promise((resolve) => {
    execFile(cmd, argv, { env: { PATH: process.env.PATH ?? '' }, timeout: 30_000 }, (err, out, errText) => {
      resolve({ code: err ? Number((err as { code?: unknown }).code ?? -1) : 0, out, err: errText });
    });
  });
}

test('backup while mailhook runs, then start from the copy: the same messages, bytes and delivery states', async () => {
  const ok = new Consumer();
  const gone = new Consumer();
  await ok.start();
  await gone.start();
  gone.respond = () => ({ status: 410, body: 'gone' });
  const routes = `
  - name: app
    addresses: ["in@b.test"]
    webhook: { url: "${ok.url}", secret: "${SECRET}" }
  - name: old
    addresses: ["old@b.test"]
    webhook: { url: "${gone.url}", secret: "${SECRET}" }
`;
  const dir = tempDir();
  const copyDir = tempDir();
  const file = join(dir, 'mailhook.yaml');
  writeFileSync(file, configYaml({ routes, dir }));
  const app = await startTestApp({ routes, dir, yaml: configYaml({ routes, dir }) });
  let restored: Awaited<ReturnType<typeof startTestApp>> | undefined;
  let appOpen = true;
  try {
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'in@b.test', subject: 'small', text: 'hello' });
    // Over spool.inline_max_bytes (256 KiB): kept as a message file.
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'in@b.test', subject: 'large', text: 'x'.repeat(400_000) });
    await sendMail(app.smtpPort, { from: 'a@s.test', to: 'old@b.test', subject: 'refused', text: 'bye' });
    await ok.waitFor(2);
    await until(() => app.spool.jobs.counts().delivered === 2 && app.spool.jobs.counts().dead === 1, 10_000, 'the outcomes');
    const rows = () => app.spool.db.prepare(`SELECT m.id, m.raw_file IS NOT NULL AS in_file, d.route, d.status FROM messages m JOIN deliveries d ON d.message_id = m.id ORDER BY m.id`).all();
    const before = rows() as Array<{ id: string; in_file: number; route: string; status: string }>;
    assert.equal(before.filter((r) => r.in_file).length, 1, 'the large message is in a file');
    const raws = new Map(await Promise.all(before.map(async (r) => [r.id, await app.spool.readRaw(r.id)] as const)));

    const to = join(copyDir, 'spool.db');
    const r = await mailhook(['backup', '--config', file, '--to', to]);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, `${join(dir, 'spool.db')} backed up to ${to}: 3 messages, 1 of them in ${to}.blobs\n`);
    const again = await mailhook(['backup', '--config', file, '--to', to]);
    assert.equal(again.code, 1);
    assert.match(again.err, /^mailhook backup: .*spool\.db already exists; a backup never overwrites: give a new --to path\n$/);
    assert.equal(existsSync(`${to}-wal`), false, 'the copy is one file (and its message folder)');
    await app.close();
    appOpen = false;

    // With mailhook stopped too (no WAL beside the spool), by --spool: no configuration, so none of its secrets,
    // needed. The copy holds the mail: only its owner may read it, whatever the umask.
    const second = join(copyDir, 'second', 'deeper', 'spool.db');
    const stopped = await mailhook(['backup', '--spool', join(dir, 'spool.db'), '--to', second], { umask: 0o022 });
    assert.equal(stopped.code, 0, stopped.err);
    assert.equal(statSync(second).mode & 0o777, 0o600);
    assert.equal(statSync(dirname(second)).mode & 0o777, 0o700);
    assert.equal(statSync(`${second}.blobs`).mode & 0o777, 0o700);

    restored = await startTestApp({ routes, dir: copyDir, yaml: configYaml({ routes, dir: copyDir }) });
    const after = restored.spool.db.prepare(`SELECT m.id, m.raw_file IS NOT NULL AS in_file, d.route, d.status FROM messages m JOIN deliveries d ON d.message_id = m.id ORDER BY m.id`).all();
    assert.deepEqual(after, before);
    for (const [id, raw] of raws) assert.ok((await restored.spool.readRaw(id)).equals(raw), `message ${id} byte for byte`);
  } finally {
    if (appOpen) await app.close();
    await restored?.close();
    await ok.stop();
    await gone.stop();
    for (const d of [dir, copyDir]) rmSync(d, { recursive: true, force: true });
  }
});

test('backup: a config without a spool yet, or a destination that exists, is refused clearly', async () => {
  const dir = tempDir();
  const file = join(dir, 'mailhook.yaml');
  writeFileSync(file, configYaml({ routes: `  - name: r\n    addresses: ["a@x.test"]\n    webhook: { url: "http://127.0.0.1:9/hook", secret: "${SECRET}" }\n`, dir }));
  const none = await mailhook(['backup', '--config', file, '--to', join(dir, 'copy.db')]);
  assert.equal(none.code, 1);
  assert.equal(none.err, `mailhook backup: no spool at ${join(dir, 'spool.db')}: check spool.path in the configuration\n`);
  const neither = await mailhook(['backup', '--to', join(dir, 'copy.db')]);
  assert.equal(neither.code, 2);
  assert.equal(neither.err, 'mailhook backup: give the spool as --spool FILE, or --config FILE to use its spool.path\n');
  const both = await mailhook(['backup', '--config', file, '--spool', join(dir, 'spool.db'), '--to', join(dir, 'copy.db')]);
  assert.equal(both.code, 2);
  const missingTo = await mailhook(['backup', '--config', file]);
  assert.equal(missingTo.code, 64);
  assert.match(missingTo.err, /required option '--to <file>' not specified/);
  rmSync(dir, { recursive: true, force: true });
});
