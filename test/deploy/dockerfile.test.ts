// Lints the Dockerfile without a Docker engine: what it copies exists and is in the build context, what it runs exists, its HEALTHCHECK works.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, posix } from 'node:path';
import { promisify } from 'node:util';
import { ENV_OVERRIDES } from '../../src/config/load.js';
import { listenAddress } from '../../src/config/schema.js';
import { startTestApp } from '../helpers/app.js';

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, '..', '..');

interface Instruction {
  op: string;
  args: string;
  stage: string;
  line: number;
}

/** Dockerfile → instructions (continuations joined, comments dropped), each tagged with its stage name. */
function parseDockerfile(text: string): { instructions: Instruction[]; args: Map<string, string> } {
  const out: Instruction[] = [];
  const args = new Map<string, string>();
  let stage = '';
  let buf = '';
  let startLine = 0;
  const lines = text.split('\n');
  lines.forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (!buf && /^\s*(#|$)/.test(line)) return;
    if (buf && /^\s*#/.test(line)) return; // comment inside a continuation
    if (!buf) startLine = i + 1;
    if (line.endsWith('\\')) {
      buf += line.slice(0, -1) + ' ';
      return;
    }
    buf += line;
    const m = /^\s*([A-Za-z]+)\s+([\s\S]*)$/.exec(buf);
    buf = '';
    if (!m) return;
    const op = m[1]!.toUpperCase();
    const rest = m[2]!.trim();
    if (op === 'ARG' && !stage) {
      const [k, v] = rest.split('=');
      if (k && v !== undefined) args.set(k, v);
    }
    if (op === 'FROM') stage = /\bAS\s+(\S+)/i.exec(rest)?.[1] ?? `stage${out.filter((x) => x.op === 'FROM').length}`;
    out.push({ op, args: rest, stage, line: startLine });
  });
  return { instructions: out, args };
}

/** Words of a shell-form argument list, or the strings of an exec-form JSON array. */
function words(args: string): string[] {
  if (args.startsWith('[')) return JSON.parse(args) as string[];
  return args.split(/\s+/).filter(Boolean);
}

/** .dockerignore patterns (simple form: names, paths, "*" globs) → does a context path match one? */
function ignoredBy(patterns: string[], path: string): string | undefined {
  const p = posix.normalize(path).replace(/^\.\/|\/$/g, '');
  for (const pat of patterns) {
    const re = new RegExp('^' + pat.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*') + '(/.*)?$');
    if (re.test(p)) return pat;
  }
  return undefined;
}

const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
const { instructions, args } = parseDockerfile(dockerfile);
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string>; dependencies: Record<string, string> };
const ignore = readFileSync(join(ROOT, '.dockerignore'), 'utf8')
  .split('\n')
  .map((l) => l.trim())
  .filter((l) => l && !l.startsWith('#'));
const stages = instructions.filter((i) => i.op === 'FROM').map((i) => i.stage);
const finalStage = stages.at(-1)!;
const final = instructions.filter((i) => i.stage === finalStage);
const env = new Map<string, string>();
for (const i of final.filter((x) => x.op === 'ENV')) for (const m of i.args.matchAll(/(\w+)=(\S+)/g)) env.set(m[1]!, m[2]!);

test('multi-stage, on a current Node LTS image', () => {
  assert.ok(stages.length >= 2, 'at least a build stage and a runtime stage');
  for (const from of instructions.filter((i) => i.op === 'FROM')) {
    const image = words(from.args)[0]!.replace(/\$\{(\w+)\}/g, (_, k: string) => args.get(k) ?? '');
    const major = Number(/^node:(\d+)/.exec(image)?.[1]);
    assert.ok(major >= 22 && major % 2 === 0, `line ${from.line}: ${image} is not a current Node LTS (22, 24, …)`);
  }
});

test('every COPY source exists and is not excluded by .dockerignore; every --from names an earlier stage', () => {
  for (const c of instructions.filter((i) => i.op === 'COPY' || i.op === 'ADD')) {
    const w = words(c.args);
    const from = w.find((x) => x.startsWith('--from='))?.slice('--from='.length);
    const paths = w.filter((x) => !x.startsWith('--'));
    const sources = paths.slice(0, -1);
    assert.ok(sources.length > 0, `line ${c.line}: ${c.op} needs a source and a destination`);
    if (from) {
      const idx = stages.indexOf(from);
      assert.ok(idx >= 0 && idx < stages.indexOf(c.stage), `line ${c.line}: --from=${from} is not an earlier stage`);
      continue;
    }
    for (const s of sources) {
      assert.ok(existsSync(join(ROOT, s)), `line ${c.line}: ${s} does not exist in the repository`);
      assert.equal(ignoredBy(ignore, s), undefined, `line ${c.line}: ${s} is excluded by .dockerignore (${ignoredBy(ignore, s)})`);
    }
  }
});

test('.dockerignore keeps local state and dependencies out of the context', () => {
  for (const p of ['node_modules', '.git', 'data', 'data/spool.db', 'dist', '.env']) assert.ok(ignoredBy(ignore, p), `${p} should be excluded`);
});

test('every npm script the build runs exists in package.json; npm ci has the lockfile; rebuilt packages are dependencies', () => {
  const runs = instructions.filter((i) => i.op === 'RUN');
  assert.ok(runs.some((r) => /\bnpm run build\b/.test(r.args)), 'the image is built with npm run build');
  for (const r of runs) {
    for (const m of r.args.matchAll(/\bnpm (?:run|run-script) ([\w:-]+)/g)) assert.ok(pkg.scripts[m[1]!], `line ${r.line}: npm script "${m[1]}" is not in package.json`);
    for (const m of r.args.matchAll(/\bnpm rebuild ([\w@/.-]+)/g)) assert.ok(pkg.dependencies[m[1]!], `line ${r.line}: ${m[1]} is not a dependency`);
    for (const m of r.args.matchAll(/\bcd node_modules\/([\w@/.-]+)/g)) assert.ok(pkg.dependencies[m[1]!], `line ${r.line}: ${m[1]} is not a dependency`);
    if (/\bnpm ci\b/.test(r.args)) {
      const copied = instructions.filter((i) => i.stage === r.stage && i.op === 'COPY' && i.line < r.line).flatMap((i) => words(i.args));
      assert.ok(copied.includes('package-lock.json'), `line ${r.line}: npm ci needs package-lock.json copied first`);
      // The package's "prepare" script builds from sources that are not in the image yet.
      if (pkg.scripts.prepare) assert.match(r.args, /--ignore-scripts/, `line ${r.line}: npm ci would run "prepare" before the sources are copied`);
    }
  }
  // The runtime copies the build's output directory, which is where tsconfig and bin/mailhook expect it.
  const tsconfig = JSON.parse(readFileSync(join(ROOT, 'tsconfig.json'), 'utf8')) as { compilerOptions: { outDir: string } };
  assert.ok(final.some((i) => i.op === 'COPY' && i.args.includes(`/app/${tsconfig.compilerOptions.outDir}`)), 'the runtime copies the compiled output');
  assert.match(readFileSync(join(ROOT, 'bin', 'mailhook'), 'utf8'), new RegExp(`\\.\\./${tsconfig.compilerOptions.outDir}/main\\.js`));
});

test('runtime: not root, the spool on a volume, the listen ports exposed, only known MAILHOOK_ variables', () => {
  const user = final.filter((i) => i.op === 'USER').at(-1)?.args;
  assert.ok(user && !/^(root|0)(:|$)/.test(user), `the runtime user is ${user ?? 'root (no USER)'}`);
  const spool = env.get('MAILHOOK_SPOOL_PATH');
  assert.ok(spool, 'MAILHOOK_SPOOL_PATH is set');
  const volumes = final.filter((i) => i.op === 'VOLUME').flatMap((i) => words(i.args));
  assert.ok(volumes.includes(dirname(spool)), `the spool directory ${dirname(spool)} is a VOLUME (${volumes.join(', ')})`);
  const exposed = final.filter((i) => i.op === 'EXPOSE').flatMap((i) => words(i.args)).map((p) => Number(p.split('/')[0]));
  for (const name of ['MAILHOOK_SMTP_LISTEN', 'MAILHOOK_HTTP_LISTEN']) {
    const addr = listenAddress.parse(env.get(name));
    assert.equal(addr.host, '0.0.0.0', `${name} listens on every interface of the container`);
    assert.ok(exposed.includes(addr.port), `${name} port ${addr.port} is exposed`);
  }
  const known = new Set(ENV_OVERRIDES.map((o) => o.env));
  for (const k of env.keys()) if (k.startsWith('MAILHOOK_')) assert.ok(known.has(k), `${k} is not a variable mailhook reads`);
  // Entry point and default config: the files exist where ENTRYPOINT and CMD name them.
  const entry = words(final.find((i) => i.op === 'ENTRYPOINT')!.args);
  assert.deepEqual(entry.slice(0, 1), ['node']);
  assert.ok(final.some((i) => i.op === 'COPY' && /^bin\s+\.\/bin$/.test(i.args)) && entry[1] === '/app/bin/mailhook');
  const cmd = words(final.find((i) => i.op === 'CMD')!.args);
  assert.equal(cmd[0], 'serve');
  const configPath = cmd[cmd.indexOf('--config') + 1];
  assert.ok(final.some((i) => i.op === 'COPY' && words(i.args).at(-1) === configPath), `${configPath} is put in the image`);
});

test('HEALTHCHECK runs GET /healthz on the port MAILHOOK_HTTP_LISTEN names: 0 while mailhook runs, 1 once it stopped', async () => {
  const hc = final.find((i) => i.op === 'HEALTHCHECK');
  assert.ok(hc, 'the image has a HEALTHCHECK');
  const json = /CMD\s+(\[.*\])\s*$/.exec(hc.args)?.[1];
  assert.ok(json, 'exec form, so no shell is needed');
  const argv = JSON.parse(json) as string[];
  assert.equal(argv[0], 'node');
  assert.match(argv.join(' '), /\/healthz/);
  const app = await startTestApp({ routes: '  - name: s\n    addresses: ["a@x.test"]\n    sink: true\n' });
  const env = { ...process.env, MAILHOOK_HTTP_LISTEN: `0.0.0.0:${app.addresses.http.port}` };
  try {
    await run(process.execPath, argv.slice(1), { env });
  } finally {
    await app.close();
  }
  await assert.rejects(run(process.execPath, argv.slice(1), { env }), (err: { code?: number }) => err.code === 1);
});
