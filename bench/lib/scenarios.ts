// mailhook-only phases: end-to-end latency (final dot → webhook), memory (idle, streaming, long run), rejection flood.
import { join } from 'node:path';
import { BenchSmtp, taggedMessage } from './smtp-client.js';
import { PhaseMeter, rssKb, cpuMs } from './proc.js';
import { runSource } from './source.js';
import { FROM, RCPT, UNKNOWN_RCPT, UNKNOWN_DOMAIN_RCPT, startSetup, type RunningServer, type SetupContext, type SetupName } from './setups.js';
import { percentiles } from './stats.js';
import { warmUp } from './throughput.js';
import type { BenchConsumer } from './consumer.js';
import type { BenchOptions } from './options.js';

let seq = 0;

export interface LatencyRow {
  offeredPerSec: number | 'saturation';
  /** measured right after start (only the client's 200-message warm-up before it): a restart under load */
  cold?: boolean;
  sent: number;
  failed: number;
  achievedPerSec: number;
  /** final dot → webhook fully received at the consumer, ms */
  e2eMs: Record<string, number>;
  /** final dot → 250 reply, ms (what the sender waits for: the durable commit) */
  replyMs: Record<string, number>;
  lost: number;
  /** saturation only: smtp-source load alongside the tagged probe messages */
  ingestPerSec?: number;
  /** webhooks per second from the start of the load to the last webhook */
  deliveredPerSec?: number;
  /** webhooks per second while the load ran */
  deliveredDuringIngestPerSec?: number;
  backgroundMessages?: number;
}

export interface E2eResult {
  rows: LatencyRow[];
  connections: number;
}

async function openSessions(port: number, n: number): Promise<BenchSmtp[]> {
  const out: BenchSmtp[] = [];
  for (let i = 0; i < n; i++) {
    const c = await BenchSmtp.open(port);
    await c.hello();
    out.push(c);
  }
  return out;
}

/** Sends `total` tagged 1 KB messages at `rate` per second (open loop, spread over `conns`); returns dot times and reply times. */
async function offer(conns: BenchSmtp[], rate: number, total: number, stop: () => boolean = () => false): Promise<{ dots: Map<number, number>; replies: number[]; failed: number; wallMs: number }> {
  const dots = new Map<number, number>();
  const replies: number[] = [];
  let failed = 0;
  let next = 0;
  const t0 = performance.now();
  const worker = async (c: BenchSmtp) => {
    while (next < total && !stop()) {
      const i = next++;
      const due = t0 + (i * 1000) / rate;
      const wait = due - performance.now();
      if (wait > 1) await new Promise((r) => setTimeout(r, wait));
      const tag = ++seq;
      try {
        const { dotAt, reply } = await c.send(FROM, RCPT, taggedMessage(tag));
        if (reply.code === 250) {
          dots.set(tag, dotAt);
          replies.push(performance.now() - dotAt);
        } else failed++;
      } catch {
        failed++;
        if (c.closed) return;
      }
    }
  };
  await Promise.all(conns.map(worker));
  return { dots, replies, failed, wallMs: performance.now() - t0 };
}

function latencies(dots: Map<number, number>, consumer: BenchConsumer): { e2e: number[]; lost: number } {
  const e2e: number[] = [];
  let lost = 0;
  for (const [tag, at] of dots) {
    const got = consumer.receivedAt.get(tag);
    if (got === undefined) lost++;
    else e2e.push(got - at);
  }
  return { e2e, lost };
}

async function waitTags(consumer: BenchConsumer, dots: Map<number, number>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    let missing = 0;
    for (const tag of dots.keys()) if (!consumer.receivedAt.has(tag)) missing++;
    if (missing === 0) return;
    await new Promise((r) => setTimeout(r, 50));
  }
}

const round = (o: Record<string, number>) => Object.fromEntries(Object.entries(o).map(([k, v]) => [k, Math.round(v * 100) / 100]));

/** Tagged 1 KB messages at `rate` per second for `seconds` over `connections` sessions; latency percentiles. */
async function latencyRow(server: RunningServer, consumer: BenchConsumer, rate: number, seconds: number, connections: number, cold: boolean, log: (s: string) => void): Promise<LatencyRow> {
  const conns = await openSessions(server.port, connections);
  const r = await offer(conns, rate, Math.round(rate * seconds));
  await waitTags(consumer, r.dots, 120_000);
  for (const c of conns) c.quit();
  const row: LatencyRow = { offeredPerSec: rate, ...(cold ? { cold } : {}), ...measured(r, consumer) };
  log(`  e2e ${rate}/s${cold ? ' (cold start)' : ''}: sent ${row.sent} (${row.achievedPerSec.toFixed(0)}/s) e2e p50/p90/p99 ${row.e2eMs.p50}/${row.e2eMs.p90}/${row.e2eMs.p99} ms, 250 after ${row.replyMs.p50}/${row.replyMs.p99} ms, lost ${row.lost}`);
  return row;
}

/** What every latency row reports of an offer(): counts, rate, and the percentiles of its tagged messages. */
function measured(r: Awaited<ReturnType<typeof offer>>, consumer: BenchConsumer): Pick<LatencyRow, 'sent' | 'failed' | 'achievedPerSec' | 'e2eMs' | 'replyMs' | 'lost'> {
  const { e2e, lost } = latencies(r.dots, consumer);
  return {
    sent: r.dots.size,
    failed: r.failed,
    achievedPerSec: (r.dots.size * 1000) / r.wallMs,
    e2eMs: round(percentiles(e2e)),
    replyMs: round(percentiles(r.replies)),
    lost,
  };
}

export async function runE2e(server: RunningServer, consumer: BenchConsumer, opts: BenchOptions, log: (s: string) => void): Promise<E2eResult> {
  consumer.recordTags = true;
  const connections = 20;
  const rows: LatencyRow[] = [];
  try {
    // The client's own warm-up (its JIT), then one row at 500 msg/s on the server as started: what a restart
    // under load looks like (its JIT warms up under that load; reported, not judged). Then the matrix's untimed
    // warm-up, so the judged rows measure the steady state as the throughput cells do.
    {
      const conns = await openSessions(server.port, 4);
      const w = await offer(conns, 200, 200);
      await waitTags(consumer, w.dots, 30_000);
      for (const c of conns) c.quit();
    }
    rows.push(await latencyRow(server, consumer, 500, opts.e2eSeconds, connections, true, log));
    await warmUp(server, consumer, opts.quick ? 1000 : 3000);
    for (const rate of opts.e2eRates) rows.push(await latencyRow(server, consumer, rate, opts.e2eSeconds, connections, false, log));

    // Saturation: smtp-source pushes as fast as the server takes (20 sessions, reuse) while one session sends
    // tagged probes at 50/s; end-to-end throughput is webhooks received per second over the whole run.
    {
      const before = consumer.count;
      const probeRun = await runSource({ port: server.port, sessions: 20, messages: 1000, size: 1024, reuse: true, from: FROM, to: RCPT, timeoutMs: 60_000 });
      await consumer.waitForCount(before + 1000, 120_000);
      const probeRate = (1000 * 1000) / probeRun.wallMs;
      const bgMessages = Math.min(100_000, Math.max(2000, Math.round(probeRate * opts.e2eSeconds)));
      const countAt0 = consumer.count;
      const t0 = performance.now();
      const conns = await openSessions(server.port, 1);
      let bgDone = false;
      const tagged = offer(conns, 50, 1_000_000, () => bgDone);
      const bg = await runSource({ port: server.port, sessions: 20, messages: bgMessages, size: 1024, reuse: true, from: FROM, to: RCPT, timeoutMs: 600_000 });
      bgDone = true;
      const deliveredDuringIngest = consumer.count - countAt0;
      const r = await tagged;
      for (const c of conns) c.quit();
      const target = countAt0 + bgMessages + r.dots.size;
      const drained = await consumer.waitForCount(target, 600_000);
      const allMs = performance.now() - t0;
      await waitTags(consumer, r.dots, 10_000);
      const row: LatencyRow = {
        offeredPerSec: 'saturation',
        ...measured(r, consumer),
        ingestPerSec: (bgMessages * 1000) / bg.wallMs,
        deliveredPerSec: ((consumer.count - countAt0) * 1000) / allMs,
        deliveredDuringIngestPerSec: (deliveredDuringIngest * 1000) / bg.wallMs,
        backgroundMessages: bgMessages,
      };
      if (!drained) log(`  !! saturation: only ${consumer.count - countAt0} of ${target - countAt0} webhooks arrived`);
      rows.push(row);
      log(`  e2e saturation: ingest ${row.ingestPerSec?.toFixed(0)}/s, delivered end to end ${row.deliveredPerSec?.toFixed(0)}/s; probes e2e p50/p90/p99 ${row.e2eMs.p50}/${row.e2eMs.p90}/${row.e2eMs.p99} ms`);
    }
  } finally {
    consumer.recordTags = false;
    consumer.receivedAt.clear();
  }
  return { rows, connections };
}

export interface MemoryResult {
  baselineRssMb: number;
  idle: { connections: number; opened: number; rssMb: number; peakRssMb: number };
  streaming: { sessions: number; mb: number; accepted: number; peakRssMbIngest: number; peakRssMbDelivery: number; delivered: boolean; ingestSeconds: number };
  flat: { messages: number; chunk: number; curve: Array<{ delivered: number; rssMb: number }>; growthMb: number };
}

const mb = (kb: number) => Math.round((kb / 1024) * 10) / 10;

export async function runMemory(server: RunningServer, consumer: BenchConsumer, opts: BenchOptions, log: (s: string) => void): Promise<MemoryResult> {
  const baselineRssMb = mb(rssKb(server.pid));

  // 1. Idle connections: each gets the banner and an EHLO answer, then sits.
  const idleMeter = new PhaseMeter(server.pid);
  const conns: BenchSmtp[] = [];
  let opened = 0;
  for (let i = 0; i < opts.idleConnections; i += 50) {
    const batch = await Promise.allSettled(
      Array.from({ length: Math.min(50, opts.idleConnections - i) }, async () => {
        const c = await BenchSmtp.open(server.port);
        conns.push(c);
        await c.hello();
        return c;
      }),
    );
    opened += batch.filter((b) => b.status === 'fulfilled').length;
  }
  await new Promise((r) => setTimeout(r, 1000));
  const idleRss = mb(rssKb(server.pid));
  const idlePeak = mb(idleMeter.stop().peakRssKb);
  for (const c of conns) c.destroy();
  log(`  idle: ${opened}/${opts.idleConnections} sessions open, RSS ${idleRss} MB (baseline ${baselineRssMb} MB)`);
  await new Promise((r) => setTimeout(r, 500));

  // 2. Streaming: N sessions each stream one large message at once; the client never holds a message.
  const before = consumer.count;
  const streamMeter = new PhaseMeter(server.pid);
  const t0 = performance.now();
  const results = await Promise.allSettled(
    Array.from({ length: opts.streams }, async (_, i) => {
      const c = await BenchSmtp.open(server.port);
      await c.hello();
      const headers = `From: ${FROM}\r\nTo: ${RCPT}\r\nSubject: stream ${i}\r\n\r\n`;
      const reply = await c.sendStreamed(FROM, RCPT, headers, opts.streamMb * 1024 * 1024);
      c.quit();
      return reply.code;
    }),
  );
  const ingestSeconds = (performance.now() - t0) / 1000;
  const ingest = streamMeter.stop();
  const accepted = results.filter((r) => r.status === 'fulfilled' && r.value === 250).length;
  const deliveryMeter = new PhaseMeter(server.pid);
  const delivered = await consumer.waitForCount(before + accepted, 300_000);
  const delivery = deliveryMeter.stop();
  log(`  streaming: ${accepted}/${opts.streams} × ${opts.streamMb} MB accepted in ${ingestSeconds.toFixed(1)} s, peak RSS ${mb(ingest.peakRssKb)} MB while streaming, ${mb(delivery.peakRssKb)} MB while delivering`);

  // 3. A long run: chunks of 1 KB messages, RSS after each chunk is fully delivered.
  const chunk = Math.min(10_000, opts.flatMessages);
  const curve: Array<{ delivered: number; rssMb: number }> = [];
  let sent = 0;
  while (sent < opts.flatMessages) {
    const n = Math.min(chunk, opts.flatMessages - sent);
    const start = consumer.count;
    const r = await runSource({ port: server.port, sessions: 20, messages: n, size: 1024, reuse: true, from: FROM, to: RCPT, timeoutMs: 600_000 });
    if (!r.ok) throw new Error(`long run: smtp-source failed: ${r.stderr}`);
    if (!(await consumer.waitForCount(start + n, 600_000))) throw new Error(`long run: ${consumer.count - start} of ${n} webhooks arrived`);
    sent += n;
    curve.push({ delivered: sent, rssMb: mb(rssKb(server.pid)) });
    log(`  long run: ${sent} delivered, RSS ${curve[curve.length - 1]!.rssMb} MB`);
  }
  // Growth: last point against the first point after warm-up (the second chunk, or the first if there is one).
  const ref = curve[Math.min(1, curve.length - 1)]!;
  const growthMb = Math.round((curve[curve.length - 1]!.rssMb - ref.rssMb) * 10) / 10;
  return {
    baselineRssMb,
    idle: { connections: opts.idleConnections, opened, rssMb: idleRss, peakRssMb: idlePeak },
    streaming: { sessions: opts.streams, mb: opts.streamMb, accepted, peakRssMbIngest: mb(ingest.peakRssKb), peakRssMbDelivery: mb(delivery.peakRssKb), delivered, ingestSeconds: Math.round(ingestSeconds * 10) / 10 },
    flat: { messages: sent, chunk, curve, growthMb },
  };
}

export interface RejectRow {
  setup: SetupName;
  rcpt: string;
  attempts: number;
  connectionsPerSec: number;
  cpuMsPerConnection: number;
  peakRssMb: number;
  ok: boolean;
  error?: string;
}
export interface RejectResult {
  rows: RejectRow[];
}

/**
 * Spam flood: a new connection per attempt, 20 sessions, every recipient refused at RCPT (mailhook: unknown local
 * part at a served domain, 550 5.1.1; Haraka: a domain it does not serve). smtp-source -A carries on after refusals.
 */
export async function runReject(ctx: SetupContext, opts: BenchOptions, log: (s: string) => void): Promise<RejectResult> {
  const rows: RejectRow[] = [];
  const setups: SetupName[] = (['mailhook', 'mailhook-g100', 'haraka'] as const).filter((s) => opts.setups.includes(s));
  for (const setup of setups) {
    const server = await startSetup(setup, { ...ctx, runDir: join(ctx.runDir, 'reject') });
    try {
      const rcpt = setup === 'haraka' ? UNKNOWN_DOMAIN_RCPT : UNKNOWN_RCPT;
      // g100 caps each session at ~10 connections/s; size its run to take about as long as the others.
      const attempts = setup === 'mailhook-g100' ? Math.min(opts.rejectAttempts, 20 * 10 * 5) : opts.rejectAttempts;
      await runSource({ port: server.port, sessions: 20, messages: 200, size: 1024, reuse: false, from: FROM, to: rcpt, timeoutMs: 60_000, ignoreRefusals: true });
      const meter = new PhaseMeter(server.pid);
      const r = await runSource({ port: server.port, sessions: 20, messages: attempts, size: 1024, reuse: false, from: FROM, to: rcpt, timeoutMs: 600_000, ignoreRefusals: true });
      const m = meter.stop();
      const row: RejectRow = {
        setup,
        rcpt,
        attempts,
        connectionsPerSec: (attempts * 1000) / r.wallMs,
        cpuMsPerConnection: m.cpuMs / attempts,
        peakRssMb: mb(m.peakRssKb),
        ok: r.ok,
        ...(r.ok ? {} : { error: r.stderr.slice(0, 300) }),
      };
      rows.push(row);
      log(`  reject ${setup}: ${row.connectionsPerSec.toFixed(0)} connections/s, ${row.cpuMsPerConnection.toFixed(3)} ms CPU each${r.ok ? '' : ` (${row.error})`}`);
    } finally {
      await server.stop();
    }
  }
  void cpuMs;
  return { rows };
}
