// The real process: SIGHUP reloads the TLS certificate, SIGTERM mid-session answers 421 to new commands and 250 to the DATA in flight.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { configYaml, tempDir } from '../helpers/app.js';
import { spawnMailhook } from '../helpers/process.js';
import { fileFingerprint, makeCert, opensslMissing, queuedId, servedFingerprint, session, startData, writeFlushed } from './support.js';

const skip = opensslMissing();

test('SIGHUP reloads the key and certificate; SIGTERM: 421 for new commands, 250 for the DATA in flight, exit 0', { skip }, async () => {
  const dir = tempDir();
  const a = makeCert(join(dir, 'certs'), 'a');
  const b = makeCert(join(dir, 'certs'), 'b');
  copyFileSync(a.key, join(dir, 'live.key'));
  copyFileSync(a.cert, join(dir, 'live.crt'));
  const cfg = join(dir, 'mailhook.yaml');
  const yaml = configYaml({ dir, routes: '\n  - name: sink\n    addresses: ["user@in.test"]\n    sink: true\n' }).replace(
    '  greeting_delay_ms: 0\n',
    `  greeting_delay_ms: 0\n  tls:\n    key_file: ${join(dir, 'live.key')}\n    cert_file: ${join(dir, 'live.crt')}\n    watch: false\n`,
  );
  writeFileSync(cfg, yaml);
  const proc = spawnMailhook(['serve', '--config', cfg]);
  try {
    await proc.started;
    assert.equal(await servedFingerprint(proc.smtpPort), fileFingerprint(a.cert));

    for (const [from, to] of [
      [b.key, 'live.key'],
      [b.cert, 'live.crt'],
    ] as const) {
      copyFileSync(from, join(dir, `${to}.tmp`));
      renameSync(join(dir, `${to}.tmp`), join(dir, to));
    }
    proc.child.kill('SIGHUP');
    await proc.waitForLog((l) => l.msg === 'TLS key and certificate reloaded');
    assert.equal(await servedFingerprint(proc.smtpPort), fileFingerprint(b.cert));

    const busy = await session(proc.smtpPort);
    await startData(busy);
    await writeFlushed(busy, 'Subject: in flight at SIGTERM\r\n\r\nfirst half\r\n');
    const idle = await session(proc.smtpPort);
    proc.child.kill('SIGTERM');
    await proc.waitForLog((l) => l.msg === 'stopping');
    assert.equal((await idle.cmd('NOOP')).raw, '421 4.3.2 Service shutting down, closing transmission channel\r\n');
    busy.write('second half\r\n.\r\n');
    queuedId(await busy.read());
    assert.equal((await busy.cmd('QUIT')).raw, '421 4.3.2 Service shutting down, closing transmission channel\r\n');
    const { code } = await proc.exit;
    assert.equal(code, 0);
  } finally {
    if (proc.child.exitCode === null) proc.child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a SIGHUP or SIGTERM during start-up does not end the process where it is: the reload or stop follows the start', async () => {
  const dir = tempDir();
  const cfg = join(dir, 'mailhook.yaml');
  writeFileSync(cfg, configYaml({ dir, routes: '\n  - name: sink\n    addresses: ["user@in.test"]\n    sink: true\n' }));
  // A secret variable naming no route is warned of before the start begins: the signal is sent on seeing that line.
  const env = { MAILHOOK_ROUTE_NONE_SECRET: 'whsec_x' };
  const early = (l: Record<string, unknown>) => l.key === 'MAILHOOK_ROUTE_NONE_SECRET';
  const hup = spawnMailhook(['serve', '--config', cfg], env);
  try {
    await hup.waitForLog(early);
    hup.child.kill('SIGHUP');
    await hup.started;
    await hup.waitForLog((l) => l.msg === 'reloading');
    // The handler runs when the start's synchronous work lets it: noted during the start, or right after it.
    const seen = hup.lines.map((l) => l.msg).filter((m) => typeof m === 'string' && /SIGHUP during|mailhook started|^reloading/.test(m));
    assert.deepEqual(seen.filter((m) => !/SIGHUP during/.test(m as string)), ['mailhook started', 'reloading']);
    assert.equal(hup.child.exitCode, null, 'still running');
    hup.child.kill('SIGTERM');
    assert.equal((await hup.exit).code, 0);
  } finally {
    if (hup.child.exitCode === null) hup.child.kill('SIGKILL');
  }
  const term = spawnMailhook(['serve', '--config', cfg], env);
  try {
    await term.waitForLog(early);
    term.child.kill('SIGTERM');
    assert.deepEqual(await term.exit, { code: 0, signal: null });
    assert.deepEqual(term.lines.filter((l) => l.part === undefined && typeof l.msg === 'string' && /^(mailhook started|stopping|stopped)$/.test(l.msg)).map((l) => l.msg), ['mailhook started', 'stopping', 'stopped']);
  } finally {
    if (term.child.exitCode === null) term.child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});

test('SIGHUP reads the configuration file again only to say what changed (a restart applies it) or that it has problems now (the running one stays)', async () => {
  const dir = tempDir();
  const cfg = join(dir, 'mailhook.yaml');
  const yaml = configYaml({ dir, routes: '\n  - name: sink\n    addresses: ["user@in.test"]\n    sink: true\n' });
  writeFileSync(cfg, yaml);
  const proc = spawnMailhook(['serve', '--config', cfg]);
  try {
    await proc.started;
    proc.child.kill('SIGHUP');
    await proc.waitForLog((l) => l.msg === 'reloading');
    writeFileSync(cfg, yaml.replace('user@in.test', 'other@in.test'));
    proc.child.kill('SIGHUP');
    const changed = await proc.waitForLog((l) => typeof l.msg === 'string' && l.msg.includes('has changed'));
    assert.deepEqual(changed.changed, ['routes']);
    assert.equal(changed.msg, `${cfg} has changed (routes): SIGHUP reloads only the TLS key and certificate; restart mailhook to apply the rest`);
    assert.equal(proc.lines.filter((l) => typeof l.msg === 'string' && l.msg.includes('has changed')).length, 1, 'the first SIGHUP, file unchanged, said nothing');
    writeFileSync(cfg, `${yaml}\nsmtp: [unclosed\n`);
    proc.child.kill('SIGHUP');
    const broken = await proc.waitForLog((l) => typeof l.msg === 'string' && l.msg.includes('has problems now'));
    assert.equal(broken.level, 50);
    assert.ok(Array.isArray(broken.problems) && (broken.problems as string[]).length > 0, JSON.stringify(broken));
    // Still serving with the configuration it started with.
    const s = await session(proc.smtpPort);
    assert.equal((await s.cmd('MAIL FROM:<a@client.test>')).code, 250);
    assert.equal((await s.cmd('RCPT TO:<user@in.test>')).code, 250);
    assert.equal(proc.child.exitCode, null);
    proc.child.kill('SIGTERM');
    assert.equal((await proc.exit).code, 0);
  } finally {
    if (proc.child.exitCode === null) proc.child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});
