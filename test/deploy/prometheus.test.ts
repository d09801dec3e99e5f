// deploy/prometheus/alerts.yaml: promtool accepts it and its cases pass, and every series it names is one mailhook exports.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parse as parseYaml } from 'yaml';
import { createMetrics } from '../../src/core/metrics.js';

const run = promisify(execFile);
const DIR = join(import.meta.dirname, '..', '..', 'deploy', 'prometheus');
const PROMTOOL = ['/usr/bin/promtool', '/usr/local/bin/promtool'].find((p) => existsSync(p));

async function promtool(t: { skip: (m: string) => void }, args: string[]): Promise<string | undefined> {
  if (!PROMTOOL) {
    if (process.env.CI === 'true') assert.fail('promtool is required under CI (Debian package prometheus, installed by .ci/run)');
    t.skip('promtool is not installed (apt-get install prometheus); the series check below still runs');
    return undefined;
  }
  const { stdout, stderr } = await run(PROMTOOL, args, { cwd: DIR });
  return stdout + stderr;
}

test('promtool check rules accepts the alerts', async (t) => {
  const out = await promtool(t, ['check', 'rules', 'alerts.yaml']);
  if (out !== undefined) assert.match(out, /SUCCESS: \d+ rules found/);
});

test('the alerts fire (and stay quiet) as their cases say: promtool test rules', async (t) => {
  const out = await promtool(t, ['test', 'rules', 'alerts.test.yaml']);
  if (out !== undefined) assert.match(out, /SUCCESS/);
});

/** Metric name → its label names, from the registry mailhook builds (histograms' _count/_sum/_bucket included). */
function exported(): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  for (const m of Object.values(createMetrics())) {
    if (!('labelNames' in (m as object))) continue;
    const { name, labelNames } = m as unknown as { name: string; labelNames: string[] };
    const labels = new Set([...labelNames, 'job', 'instance']);
    out.set(name, labels);
    for (const suffix of ['_count', '_sum']) out.set(name + suffix, labels);
    out.set(`${name}_bucket`, new Set([...labels, 'le']));
  }
  return out;
}

test('every mailhook_* series in the alerts and their cases exists, with labels it has and values it takes', () => {
  const metrics = exported();
  const known = { outcome: ['delivered', 'retry', 'dead', 'dropped', 'duplicate', 'accepted', 'unmatched', 'too_large'], state: ['connecting', 'connected', 'idle', 'polling', 'backoff', 'stopped'] };
  const rules = parseYaml(readFileSync(join(DIR, 'alerts.yaml'), 'utf8')) as { groups: Array<{ rules: Array<{ alert: string; expr: string }> }> };
  const cases = parseYaml(readFileSync(join(DIR, 'alerts.test.yaml'), 'utf8')) as { tests: Array<{ input_series: Array<{ series: string }> }> };
  const texts = [...rules.groups.flatMap((g) => g.rules.map((r) => r.expr)), ...cases.tests.flatMap((c) => c.input_series.map((s) => s.series))];
  let seen = 0;
  for (const text of texts) {
    for (const m of text.matchAll(/\b(mailhook_\w+)(?:\{([^}]*)\})?/g)) {
      seen++;
      const labels = metrics.get(m[1]!);
      assert.ok(labels, `${m[1]} (in "${text}") is not a metric mailhook exports`);
      for (const matcher of (m[2] ?? '').split(',').filter(Boolean)) {
        const [, label, , value] = /^\s*(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"\s*$/.exec(matcher) ?? [];
        assert.ok(label && labels.has(label), `${m[1]} has no label "${matcher.trim()}" (in "${text}")`);
        const values = known[label as keyof typeof known];
        if (values) for (const v of value!.split('|')) assert.ok(values.includes(v), `${label}="${v}" is not a value mailhook sets (in "${text}")`);
      }
    }
  }
  assert.ok(seen >= 10, `the alerts name mailhook series (${seen} found)`);
});
