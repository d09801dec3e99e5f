// Renders bench results as Markdown: the throughput table, ratios against the targets, latency, memory, rejections; pure.
import type { BenchResults } from '../run.js';
import { SETUP_LABELS, type SetupName } from './setups.js';
import { ratio, type Spread } from './stats.js';
import { sizeLabel, type CellResult } from './throughput.js';

const f0 = (n: number) => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '–');
const f2 = (n: number) => (Number.isFinite(n) ? n.toFixed(2) : '–');
const f3 = (n: number) => (Number.isFinite(n) ? n.toFixed(3) : '–');
const sp = (s: Spread) => (s.n === 0 ? 'failed' : s.n === 1 ? f0(s.median) : `${f0(s.median)} (${f0(s.min)}–${f0(s.max)})`);

export function find(matrix: CellResult[], setup: SetupName, size: number, sessions: number, reuse: boolean): CellResult | undefined {
  return matrix.find((c) => c.setup === setup && c.size === size && c.sessions === sessions && c.reuse === reuse);
}

export interface TargetCheck {
  target: string;
  measured: string;
  met: boolean | undefined;
}

/** The issue's targets, checked against this run (undefined when the run did not measure it). */
export function checkTargets(r: BenchResults): TargetCheck[] {
  const m = r.matrix;
  const med = (s: SetupName, size: number, sessions: number, reuse: boolean) => find(m, s, size, sessions, reuse)?.msgsPerSec.median;
  const out: TargetCheck[] = [];
  const ratioTarget = (name: string, a: number | undefined, b: number | undefined, min: number) => {
    const x = ratio(a, b);
    out.push({ target: `${name} ≥ ${min}`, measured: Number.isFinite(x) ? `${f2(x)} (${f0(a ?? NaN)} / ${f0(b ?? NaN)} msg/s)` : 'not measured', met: Number.isFinite(x) ? x >= min : undefined });
  };
  const K = 1024;
  const M = 1 << 20;
  ratioTarget('1 KB ×20 reuse: mailhook / Haraka', med('mailhook', K, 20, true), med('haraka', K, 20, true), 1.5);
  ratioTarget('1 KB ×20 reuse: mailhook / smtp-sink', med('mailhook', K, 20, true), med('smtp-sink', K, 20, true), 0.3);
  ratioTarget('1 KB ×20 new connection: mailhook (greeting 0) / Haraka', med('mailhook', K, 20, false), med('haraka', K, 20, false), 2.0);
  ratioTarget('1 KB ×20 new connection: mailhook (greeting 100 ms) / Haraka', med('mailhook-g100', K, 20, false), med('haraka', K, 20, false), 2.0);
  ratioTarget('1 MB ×20 reuse: mailhook / Haraka', med('mailhook', M, 20, true), med('haraka', M, 20, true), 2.0);
  ratioTarget('1 MB ×20 new connection: mailhook / Haraka', med('mailhook', M, 20, false), med('haraka', M, 20, false), 2.0);
  // The same ratios for the accept path alone (sink route: durable accept, no webhook delivery competing for the CPU).
  ratioTarget('(accept only) 1 KB ×20 reuse: mailhook-accept / Haraka', med('mailhook-accept', K, 20, true), med('haraka', K, 20, true), 1.5);
  ratioTarget('(accept only) 1 KB ×20 reuse: mailhook-accept / smtp-sink', med('mailhook-accept', K, 20, true), med('smtp-sink', K, 20, true), 0.3);
  ratioTarget('(accept only) 1 KB ×20 new connection: mailhook-accept / Haraka', med('mailhook-accept', K, 20, false), med('haraka', K, 20, false), 2.0);
  ratioTarget('(accept only) 1 MB ×20 reuse: mailhook-accept / Haraka', med('mailhook-accept', M, 20, true), med('haraka', M, 20, true), 2.0);
  const e500 = r.e2e?.rows.find((x) => x.offeredPerSec === 500 && !x.cold);
  out.push({ target: 'end-to-end p99 < 50 ms at 500 msg/s', measured: e500 ? `${f2(e500.e2eMs.p99 ?? NaN)} ms` : 'not measured', met: e500 ? (e500.e2eMs.p99 ?? Infinity) < 50 && e500.lost === 0 : undefined });
  const sat = r.e2e?.rows.find((x) => x.offeredPerSec === 'saturation');
  out.push({ target: 'sustained end-to-end ≥ 2,000 msg/s (1 KB)', measured: sat?.deliveredPerSec !== undefined ? `${f0(sat.deliveredPerSec)} msg/s` : 'not measured', met: sat?.deliveredPerSec !== undefined ? sat.deliveredPerSec >= 2000 : undefined });
  const mem = r.memory;
  out.push({ target: `RSS < 200 MB with 1,000 idle connections`, measured: mem ? `${f0(mem.idle.rssMb)} MB (${mem.idle.opened} open)` : 'not measured', met: mem ? mem.idle.rssMb < 200 && mem.idle.opened === mem.idle.connections : undefined });
  out.push({ target: `RSS < 250 MB while 20 × 20 MB stream in`, measured: mem ? `${f0(mem.streaming.peakRssMbIngest)} MB (${mem.streaming.accepted} accepted)` : 'not measured', met: mem ? mem.streaming.peakRssMbIngest < 250 && mem.streaming.accepted === mem.streaming.sessions : undefined });
  out.push({
    target: `RSS flat after ${mem ? mem.flat.messages.toLocaleString('en-US') : '100,000'} messages delivered (growth < 10%)`,
    measured: mem && mem.flat.curve.length > 1 ? `${mem.flat.curve.map((p) => f0(p.rssMb)).join(' → ')} MB` : 'not measured',
    met: mem && mem.flat.curve.length > 1 ? mem.flat.growthMb < 0.1 * (mem.flat.curve[1]?.rssMb ?? Infinity) : undefined,
  });
  return out;
}

export function renderReport(r: BenchResults): string {
  const L: string[] = [];
  const mach = r.machine as { cpus?: number; cpuModel?: string; node?: string; postfix?: string; haraka?: string; commit?: string; dirty?: boolean; loadavg?: number[]; loadavgAtEnd?: number[] };
  L.push(`# mailhook bench ${r.startedAt}`, '');
  L.push(`${mach.cpus} CPUs (${mach.cpuModel}), Node ${mach.node}, Postfix ${mach.postfix}, Haraka ${mach.haraka}, mailhook ${mach.commit}${mach.dirty ? ' (uncommitted changes)' : ''}; load average at start ${mach.loadavg?.map((x) => x.toFixed(2)).join(' ')}, at end ${mach.loadavgAtEnd?.map((x) => x.toFixed(2)).join(' ') ?? '–'}`);
  L.push(`runs per cell: ${r.options.plan.runs} (median, min–max), ~${r.options.plan.targetSeconds} s each after a probe run`);
  if (r.phaseLoad && Object.keys(r.phaseLoad).length > 0) L.push(`load average (1 min) at start → end of each phase: ${Object.entries(r.phaseLoad).map(([k, v]) => `${k} ${v.start.toFixed(1)} → ${v.end?.toFixed(1) ?? '?'}`).join(', ')}`);
  L.push('');

  if (r.matrix.length > 0) {
    for (const reuse of [false, true]) {
      const cells = r.matrix.filter((c) => c.reuse === reuse);
      if (cells.length === 0) continue;
      L.push(`## Throughput, ${reuse ? 'connection reuse (smtp-source -d)' : 'a new connection per message'}`, '');
      L.push('| size | sessions | setup | msg/s | server CPU ms/msg | peak RSS MB |', '|---|---:|---|---:|---:|---:|');
      const keys = [...new Set(cells.map((c) => `${c.size}/${c.sessions}`))];
      for (const k of keys) {
        for (const c of cells.filter((x) => `${x.size}/${x.sessions}` === k)) {
          const fail = c.failures > 0 ? ` (${c.failures} failed)` : '';
          L.push(`| ${sizeLabel(c.size)} | ${c.sessions} | ${c.setup} | ${sp(c.msgsPerSec)}${fail} | ${f3(c.cpuMsPerMsg.median)} | ${f0(c.peakRssMb)} |`);
        }
      }
      L.push('');
      const mh = cells.filter((c) => c.setup.startsWith('mailhook') || c.setup.startsWith('baseline'));
      if (mh.length > 0) {
        L.push(`### Ratios (${reuse ? 'reuse' : 'new connection'}): mailhook ÷ other setup, medians of this run`, '');
        L.push('| size | sessions | setup | msg/s | ÷ smtp-sink | ÷ Haraka | ÷ bare smtp-server |', '|---|---:|---|---:|---:|---:|---:|');
        for (const c of mh) {
          const o = (s: SetupName) => f2(ratio(c.msgsPerSec.median, find(r.matrix, s, c.size, c.sessions, reuse)?.msgsPerSec.median));
          L.push(`| ${sizeLabel(c.size)} | ${c.sessions} | ${c.setup} | ${f0(c.msgsPerSec.median)} | ${o('smtp-sink')} | ${o('haraka')} | ${o('bare')} |`);
        }
        L.push('');
      }
      const drains = cells.filter((c) => c.runs.some((x) => x.drainMs !== undefined));
      if (drains.length > 0) {
        L.push(`### mailhook's webhook backlog after each run (${reuse ? 'reuse' : 'new connection'})`, '');
        // The cell's msg/s times intake while the same process delivers, so a build that delivers sooner takes less
        // in that window; messages over (run + drain) is the rate from the first byte to the last webhook.
        L.push('| size | sessions | setup | drain s (median) | delivery CPU ms/msg | first byte → last webhook msg/s (median, min–max) | all drained |', '|---|---:|---|---:|---:|---:|---|');
        const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
        for (const c of drains) {
          const ok = c.runs.filter((x) => x.drainMs !== undefined);
          const dm = median(ok.map((x) => x.drainMs as number));
          const cpu = median(ok.map((x) => (x.drainCpuMs as number) / x.messages));
          const through = ok.map((x) => x.messages / ((x.wallMs + (x.drainMs as number)) / 1000));
          const range = through.length > 0 ? ` (${f0(Math.min(...through))}–${f0(Math.max(...through))})` : '';
          L.push(`| ${sizeLabel(c.size)} | ${c.sessions} | ${c.setup} | ${f2(dm / 1000)} | ${f3(cpu)} | ${f0(median(through))}${range} | ${ok.every((x) => x.drained) ? 'yes' : 'NO'} |`);
        }
        L.push('');
      }
    }
  }

  if (r.e2e) {
    L.push('## End to end: final dot → webhook received (1 KB, 20 sessions with reuse)', '');
    L.push('| offered msg/s | achieved msg/s | e2e p50 / p90 / p99 ms | 250 reply p50 / p99 ms | lost | notes |', '|---|---:|---:|---:|---:|---|');
    for (const x of r.e2e.rows) {
      const notes = x.cold ? 'mailhook as started, after 200 messages: a restart under load (its JIT warms up meanwhile); not judged' : x.offeredPerSec === 'saturation' ? `smtp-source ${f0(x.backgroundMessages ?? NaN)} msgs at ${f0(x.ingestPerSec ?? NaN)}/s; webhooks ${f0(x.deliveredDuringIngestPerSec ?? NaN)}/s during the load, ${f0(x.deliveredPerSec ?? NaN)}/s load start → last webhook; latency from 50/s tagged probes` : x.failed > 0 ? `${x.failed} failed` : '';
      L.push(`| ${x.offeredPerSec}${x.cold ? ' (cold start)' : ''} | ${f0(x.achievedPerSec)} | ${f2(x.e2eMs.p50 ?? NaN)} / ${f2(x.e2eMs.p90 ?? NaN)} / ${f2(x.e2eMs.p99 ?? NaN)} | ${f2(x.replyMs.p50 ?? NaN)} / ${f2(x.replyMs.p99 ?? NaN)} | ${x.lost} | ${notes} |`);
    }
    L.push('');
  }

  if (r.memory) {
    const m = r.memory;
    L.push('## Memory (mailhook RSS)', '');
    L.push('| case | RSS MB |', '|---|---:|');
    L.push(`| started, idle | ${f0(m.baselineRssMb)} |`);
    L.push(`| ${m.idle.opened} of ${m.idle.connections} idle connections open (after EHLO) | ${f0(m.idle.rssMb)} (peak ${f0(m.idle.peakRssMb)}) |`);
    L.push(`| ${m.streaming.accepted} of ${m.streaming.sessions} × ${m.streaming.mb} MB streamed at once (peak while streaming, ${m.streaming.ingestSeconds} s) | ${f0(m.streaming.peakRssMbIngest)} |`);
    L.push(`| … then delivering those as webhooks (peak) | ${f0(m.streaming.peakRssMbDelivery)}${m.streaming.delivered ? '' : ' (not all delivered)'} |`);
    L.push(`| long run (1 KB, 20 sessions), after each ${m.flat.chunk.toLocaleString('en-US')} delivered | ${m.flat.curve.map((p) => f0(p.rssMb)).join(' → ')} (growth after warm-up ${f2(m.flat.growthMb)} MB) |`);
    L.push('');
  }

  if (r.reject) {
    L.push('## Rejection flood (new connection per attempt, 20 sessions, every recipient refused at RCPT)', '');
    L.push('| setup | recipient | connections/s | server CPU ms/connection | peak RSS MB |', '|---|---|---:|---:|---:|');
    for (const x of r.reject.rows) L.push(`| ${x.setup} | ${x.rcpt} | ${f0(x.connectionsPerSec)}${x.ok ? '' : ' (errors)'} | ${f3(x.cpuMsPerConnection)} | ${f0(x.peakRssMb)} |`);
    L.push('');
  }

  const targets = checkTargets(r);
  if (targets.some((t) => t.met !== undefined)) {
    L.push('## Targets (issue 7)', '');
    L.push('| target | this run | met |', '|---|---|---|');
    for (const t of targets) L.push(`| ${t.target} | ${t.measured} | ${t.met === undefined ? '–' : t.met ? 'yes' : '**no**'} |`);
    L.push('');
  }
  if (r.errors.length > 0) L.push('## Errors', '', ...r.errors.map((e) => `- ${e}`), '');
  L.push(`Setups: ${Object.entries(SETUP_LABELS).map(([k, v]) => `${k} = ${v}`).join('; ')}.`, '');
  return L.join('\n');
}
