// The deployment files agree with mailhook: systemd unit, compose file and its consumer, Kubernetes manifests, documented variables.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { parseAllDocuments, parse as parseYaml } from 'yaml';
import { Webhook } from 'standardwebhooks';
import { ENV_OVERRIDES, loadConfigText, routeSecretEnvName } from '../../src/config/load.js';
import { listenAddress } from '../../src/config/schema.js';
import { ConfigError } from '../../src/core/errors.js';
import { startTestApp, until } from '../helpers/app.js';
import { RawSmtp } from '../helpers/smtp-client.js';

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, '..', '..');
const DEPLOY = join(ROOT, 'deploy');
const KNOWN_ENV = new Set(ENV_OVERRIDES.map((o) => o.env));
const newSecret = () => `whsec_${randomBytes(32).toString('base64')}`;

/** Variables a configuration may use: the fixed overrides and one secret per route. */
function isKnownVariable(name: string, routes: string[]): boolean {
  return KNOWN_ENV.has(name) || routes.some((r) => routeSecretEnvName(r) === name);
}

/** The Dockerfile's runtime defaults for MAILHOOK_* variables and where it puts the config file. */
function imageDefaults(): { env: Record<string, string>; configPath: string } {
  const text = readFileSync(join(ROOT, 'Dockerfile'), 'utf8').replace(/\\\n/g, ' ');
  const env: Record<string, string> = {};
  for (const m of text.matchAll(/\b(MAILHOOK_\w+)=(\S+)/g)) env[m[1]!] = m[2]!;
  const configPath = /CMD \[.*"--config", "([^"]+)"\]/.exec(text)![1]!;
  return { env, configPath };
}

// ---- systemd ----------------------------------------------------------------------------------------------------

function unitDirectives(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
    if (m) out.set(m[1]!, [...(out.get(m[1]!) ?? []), m[2]!]);
  }
  return out;
}

const RUNTIME_ENV = new Set(['MALLOC_MMAP_THRESHOLD_']);

test('systemd unit: sandboxed, binds port 25 without root, writes only the spool', () => {
  const unit = readFileSync(join(DEPLOY, 'systemd', 'mailhook.service'), 'utf8');
  const d = unitDirectives(unit);
  const one = (k: string) => d.get(k)?.at(-1);
  assert.equal(one('ProtectSystem'), 'strict');
  assert.equal(one('NoNewPrivileges'), 'yes');
  assert.equal(one('AmbientCapabilities'), 'CAP_NET_BIND_SERVICE');
  assert.equal(one('CapabilityBoundingSet'), 'CAP_NET_BIND_SERVICE');
  assert.ok(one('User') && one('User') !== 'root');
  const env = Object.fromEntries((d.get('Environment') ?? []).map((e) => e.split('=', 2) as [string, string]));
  // Besides mailhook's own, only the runtime settings named here (glibc's malloc tuning, see the unit's comment).
  for (const k of Object.keys(env)) assert.ok(KNOWN_ENV.has(k) || RUNTIME_ENV.has(k), `${k} is not a variable mailhook reads`);
  assert.equal(env.MALLOC_MMAP_THRESHOLD_, '131072');
  const spoolDir = dirname(env.MAILHOOK_SPOOL_PATH!);
  assert.ok((d.get('ReadWritePaths') ?? []).includes(spoolDir), `ReadWritePaths covers ${spoolDir}`);
  assert.equal(`/var/lib/${one('StateDirectory')}`, spoolDir);
  assert.equal(listenAddress.parse(env.MAILHOOK_SMTP_LISTEN).port, 25);
  assert.match(one('ExecStart') ?? '', /\/bin\/mailhook serve --config \S+$/);
  assert.equal(d.get('MemoryDenyWriteExecute'), undefined, 'V8 needs writable executable memory');
});

test('systemd unit: systemd-analyze verify finds nothing to complain about', async (t) => {
  const analyze = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find((p) => existsSync(p));
  if (!analyze) {
    if (process.env.CI === 'true') assert.fail('systemd-analyze is required under CI (Debian package systemd, installed by .ci/run)');
    return t.skip('systemd-analyze is not installed; the static checks above still ran');
  }
  const dir = mkdtempSync(join(tmpdir(), 'mailhook-unit-'));
  try {
    // Verify checks that ExecStart's program exists: point it at this node.
    const unit = readFileSync(join(DEPLOY, 'systemd', 'mailhook.service'), 'utf8').replace(/^ExecStart=\S+/m, `ExecStart=${process.execPath}`);
    writeFileSync(join(dir, 'mailhook.service'), unit);
    const { stderr } = await run(analyze, ['verify', join(dir, 'mailhook.service')]);
    // Unknown or misspelled keys are only warnings (exit 0): fail on any output.
    assert.equal(stderr.trim(), '');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// ---- compose ----------------------------------------------------------------------------------------------------

interface ComposeService {
  build?: { context: string; dockerfile: string };
  image?: string;
  ports?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  command?: string[];
}

test('compose: builds the repository Dockerfile, mounts a valid config where the image reads it, keeps the spool on a volume', () => {
  const compose = parseYaml(readFileSync(join(DEPLOY, 'compose.yaml'), 'utf8')) as { services: Record<string, ComposeService>; volumes: Record<string, unknown> };
  const mh = compose.services.mailhook!;
  assert.ok(compose.services.consumer, 'an example consumer');
  assert.ok(existsSync(join(DEPLOY, mh.build!.context, mh.build!.dockerfile)));
  const image = imageDefaults();
  const mounts = (mh.volumes ?? []).map((v) => v.split(':'));
  const config = mounts.find((m) => m[1] === image.configPath);
  assert.ok(config, `a file is mounted at ${image.configPath}`);
  const spool = mounts.find((m) => m[1] === dirname(image.env.MAILHOOK_SPOOL_PATH!));
  assert.ok(spool && compose.volumes[spool[0]!] !== undefined, 'the spool directory is a named volume');
  // The mounted configuration is valid with the image's variables and the compose environment (secret generated here).
  const env: Record<string, string> = { ...image.env };
  for (const [k, v] of Object.entries(mh.environment ?? {})) env[k] = /^\$\{/.test(v) ? newSecret() : v;
  const cfg = loadConfigText(readFileSync(join(DEPLOY, config[0]!), 'utf8'), { source: 'compose', baseDir: DEPLOY, env });
  for (const k of Object.keys(mh.environment ?? {})) assert.ok(isKnownVariable(k, cfg.routes.map((r) => r.name)), `${k} is not a variable mailhook reads`);
  assert.ok(cfg.routes.every((r) => r.webhook?.signingKeyBytes), 'every route has its secret from the environment');
  // The route points at the consumer service, on the port it listens on.
  const url = new URL(cfg.routes[0]!.webhook!.url);
  assert.equal(url.hostname, 'consumer');
  assert.equal(url.port, compose.services.consumer!.environment!.PORT);
  assert.ok((mh.ports ?? []).some((p) => p.endsWith(`:${listenAddress.parse(env.MAILHOOK_SMTP_LISTEN).port}`)), 'SMTP is published');
  assert.ok((mh.ports ?? []).some((p) => p.startsWith('127.0.0.1:')), 'the HTTP port is published on loopback only');
  const consumerMount = compose.services.consumer!.volumes![0]!.split(':');
  assert.ok(existsSync(join(DEPLOY, consumerMount[0]!, 'consumer.mjs')));
});

test('the example consumer accepts what mailhook signs and refuses a forged request', async () => {
  const secret = newSecret();
  const child = spawn(process.execPath, [join(DEPLOY, 'consumer', 'consumer.mjs')], { env: { ...process.env, PORT: '0', HOST: '127.0.0.1', MAILHOOK_WEBHOOK_SECRET: secret }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  const exited = new Promise((r) => child.once('exit', r));
  try {
    const port = Number((await until(() => /listening on (\d+)/.exec(out) ?? undefined, 10_000, 'consumer start'))[1]);
    const app = await startTestApp({ routes: `  - name: app\n    addresses: ["*@mail.example.test"]\n    webhook: { url: "http://127.0.0.1:${port}/hook", secret: "${secret}" }\n` });
    try {
      const { smtp } = await RawSmtp.open(app.smtpPort);
      await smtp.cmd('EHLO c.test');
      const r = await smtp.transaction('a@example.test', ['x@mail.example.test'], 'Subject: to the consumer\r\n\r\nhi\r\n');
      await smtp.quit();
      assert.equal(r.end?.code, 250);
      await until(() => /"subject":"to the consumer"/.test(out), 10_000, 'the consumer logs the message');
      const delivered = await until(() => (app.spool.db.prepare(`SELECT status, last_status_code AS code FROM deliveries`).get() as { status: string; code: number } | undefined)?.status === 'delivered', 10_000, 'delivered');
      assert.ok(delivered);
    } finally {
      await app.close();
    }
    const body = JSON.stringify({ route: 'app' });
    const headers = { 'webhook-id': 'msg_1', 'webhook-timestamp': String(Math.floor(Date.now() / 1000)) };
    const signature = new Webhook(secret).sign(headers['webhook-id'], new Date(), body);
    const ok = await fetch(`http://127.0.0.1:${port}/hook`, { method: 'POST', headers: { ...headers, 'webhook-signature': signature, 'content-type': 'application/json' }, body });
    assert.equal(ok.status, 204);
    const forged = await fetch(`http://127.0.0.1:${port}/hook`, { method: 'POST', headers: { ...headers, 'webhook-signature': signature, 'content-type': 'application/json' }, body: body + ' ' });
    assert.equal(forged.status, 401);
  } finally {
    child.kill('SIGTERM');
    await exited;
  }
});

// ---- Kubernetes -------------------------------------------------------------------------------------------------

interface K8sDoc {
  kind: string;
  metadata: { name: string };
  [k: string]: unknown;
}

function k8sDocs(): K8sDoc[] {
  const dir = join(DEPLOY, 'kubernetes');
  return readdirSync(dir)
    .filter((f) => f.endsWith('.yaml'))
    .flatMap((f) => parseAllDocuments(readFileSync(join(dir, f), 'utf8')).map((d) => d.toJS() as K8sDoc))
    .filter((d) => d && d.kind !== 'Kustomization');
}

test('Kubernetes: one replica recreated, probes on /readyz and /healthz, the spool on a claim, port 25 served, a valid config', async () => {
  const docs = k8sDocs();
  const find = (kind: string, name?: string) => docs.find((d) => d.kind === kind && (name === undefined || d.metadata.name === name));
  const kustomization = parseYaml(readFileSync(join(DEPLOY, 'kubernetes', 'kustomization.yaml'), 'utf8')) as { resources: string[] };
  for (const r of kustomization.resources) assert.ok(existsSync(join(DEPLOY, 'kubernetes', r)), `${r} exists`);

  const dep = find('Deployment') as unknown as {
    spec: {
      replicas: number;
      strategy: { type: string };
      template: {
        spec: {
          securityContext: { runAsNonRoot: boolean };
          containers: Array<{
            args: string[];
            env: Array<{ name: string; value: string }>;
            envFrom: Array<{ secretRef: { name: string } }>;
            ports: Array<{ name: string; containerPort: number }>;
            readinessProbe: { httpGet: { path: string; port: string } };
            livenessProbe: { httpGet: { path: string; port: string } };
            startupProbe?: { httpGet: { path: string; port: string }; periodSeconds: number; failureThreshold: number };
            volumeMounts: Array<{ name: string; mountPath: string }>;
          }>;
          volumes: Array<{ name: string; persistentVolumeClaim?: { claimName: string }; configMap?: { name: string } }>;
        };
      };
    };
  };
  assert.equal(dep.spec.replicas, 1, 'the SQLite spool has one writer');
  assert.equal(dep.spec.strategy.type, 'Recreate');
  const pod = dep.spec.template.spec;
  assert.equal(pod.securityContext.runAsNonRoot, true);
  const c = pod.containers[0]!;
  const env = Object.fromEntries(c.env.map((e) => [e.name, e.value]));
  const port = (name: string) => c.ports.find((p) => p.name === name)?.containerPort;
  assert.equal(port('smtp'), listenAddress.parse(env.MAILHOOK_SMTP_LISTEN).port);
  assert.equal(port('http'), listenAddress.parse(env.MAILHOOK_HTTP_LISTEN).port);
  assert.deepEqual(c.readinessProbe.httpGet, { path: '/readyz', port: 'http' });
  assert.deepEqual(c.livenessProbe.httpGet, { path: '/healthz', port: 'http' });
  // A spool upgrade or rebuild runs before anything listens: liveness must not kill that start.
  assert.deepEqual(c.startupProbe?.httpGet, { path: '/healthz', port: 'http' });
  assert.ok(c.startupProbe.periodSeconds * c.startupProbe.failureThreshold >= 300, 'the start gets at least 5 minutes');

  const volumeOf = (mountPath: string) => pod.volumes.find((v) => v.name === c.volumeMounts.find((m) => m.mountPath === mountPath)?.name);
  const spoolVolume = volumeOf(dirname(env.MAILHOOK_SPOOL_PATH!));
  assert.ok(spoolVolume?.persistentVolumeClaim, 'the spool directory is a PersistentVolumeClaim');
  assert.ok(find('PersistentVolumeClaim', spoolVolume.persistentVolumeClaim.claimName), 'the claim is defined');

  const configPath = c.args[c.args.indexOf('--config') + 1]!;
  const configVolume = volumeOf(dirname(configPath));
  const cm = find('ConfigMap', configVolume?.configMap?.name) as unknown as { data: Record<string, string> } | undefined;
  const configText = cm?.data[configPath.slice(dirname(configPath).length + 1)];
  assert.ok(configText, `the ConfigMap holds ${configPath}`);

  const secret = find('Secret', c.envFrom[0]!.secretRef.name) as unknown as { stringData: Record<string, string> } | undefined;
  assert.ok(secret, 'the example Secret has the name the Deployment loads');
  const allEnv: Record<string, string> = { ...env };
  for (const k of Object.keys(secret.stringData)) allEnv[k] = k === 'MAILHOOK_ADMIN_TOKEN' ? randomBytes(24).toString('hex') : newSecret();
  const cfg = loadConfigText(configText, { source: 'configmap', baseDir: ROOT, env: allEnv });
  for (const k of Object.keys(allEnv)) assert.ok(isKnownVariable(k, cfg.routes.map((r) => r.name)), `${k} is not a variable mailhook reads`);
  // Applied unchanged, the example's placeholders are refused, each problem naming its variable.
  assert.throws(
    () => loadConfigText(configText, { source: 'configmap', baseDir: ROOT, env: { ...env, ...secret.stringData } }),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError, String(err));
      for (const k of Object.keys(secret.stringData)) assert.ok(err.problems.some((p) => p.message.includes(k)), `the placeholder ${k} is refused: ${err.message}`);
      return true;
    },
  );

  const services = docs.filter((d) => d.kind === 'Service') as unknown as Array<{ spec: { ports: Array<{ port: number; targetPort: string }> } }>;
  const smtp = services.flatMap((s) => s.spec.ports).find((p) => p.port === 25);
  assert.ok(smtp && c.ports.some((p) => p.name === smtp.targetPort), 'port 25 reaches the smtp container port');

  // The probe paths answer on a running mailhook.
  const app = await startTestApp({ routes: '  - name: s\n    addresses: ["a@x.test"]\n    sink: true\n' });
  try {
    for (const path of [c.readinessProbe.httpGet.path, c.livenessProbe.httpGet.path]) assert.equal((await fetch(app.httpUrl + path)).status, 200, path);
  } finally {
    await app.close();
  }
});
