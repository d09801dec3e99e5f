// SIGTERM to a real `bin/mailhook serve` while a webhook request is in flight (README "Guarantees", Shutdown):
// requests get the grace period (10 s, not configurable: SHUTDOWN_GRACE_MS in src/app.ts) to finish; one still
// open then is aborted and counts as an attempt; a delivery whose request had not gone out is given back uncounted;
// the process exits 0 and, restarted on the same spool, delivers both with the same webhook-ids.
// Needs dist/ (npx tsc -p tsconfig.json).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { once } from 'node:events';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { sendMail } from '../helpers/smtp-client.js';
import { SECRET, configYaml, tempDir, until } from '../helpers/app.js';
import { spawnMailhook, type RunningProcess } from '../helpers/process.js';

/** A webhook consumer that can hold its reply and sees whether the client gave up on a request. */
class HoldingConsumer {
  readonly requests: Array<{ webhookId: string; subject: string; aborted: boolean; answered: boolean; answer: (status: number) => void }> = [];
  hold = true;
  private server: Server | undefined;
  port = 0;
  async start(): Promise<this> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const payload = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { message: { subject: string } };
        const rec = {
          webhookId: String(req.headers['webhook-id']),
          subject: payload.message.subject,
          aborted: false,
          answered: false,
          answer: (status: number) => {
            if (rec.aborted || rec.answered) return;
            rec.answered = true;
            res.writeHead(status).end('ok');
          },
        };
        res.on('close', () => {
          if (!rec.answered) rec.aborted = true;
        });
        this.requests.push(rec);
        if (!this.hold) rec.answer(200);
      });
    });
    this.server.keepAliveTimeout = 100;
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    this.port = (this.server.address() as { port: number }).port;
    return this;
  }
  get url(): string {
    return `http://127.0.0.1:${this.port}/hook`;
  }
  async stop(): Promise<void> {
    if (!this.server) return;
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server!.close(() => r()));
  }
}

/** The route's request timeout (60 s) is well past the shutdown grace (10 s), so only shutdown ends a held request. */
function writeConfig(dir: string, url: string, perRoute: number): string {
  const cfg = join(dir, 'mailhook.yaml');
  const text = configYaml({ dir, routes: `
  - name: app
    addresses: ["*@app.test"]
    webhook: { url: "${url}", secret: "${SECRET}" }
` }).replace('delivery:\n  timeout_ms: 5000\n', `delivery:\n  timeout_ms: 60000\n  per_route_concurrency: ${perRoute}\n`);
  assert.match(text, /timeout_ms: 60000\n  per_route_concurrency/);
  writeFileSync(cfg, text);
  return cfg;
}

async function metric(p: RunningProcess, re: RegExp): Promise<number | undefined> {
  const text = await (await fetch(`http://127.0.0.1:${p.httpPort}/metrics`)).text();
  const m = re.exec(text);
  return m ? Number(m[1]) : undefined;
}

/** `until` for an async condition: polls the process's own gauge, where no event is exposed (bounded). */
async function untilAsync(fn: () => Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const start = Date.now();
  while (!(await fn())) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

type DeliveryRow = { id: string; message_id: string; status: string; attempts: number };
type AttemptRow = { attempt: number; outcome: string; status_code: number | null; error: string | null };

function readSpool(dir: string): { deliveries: DeliveryRow[]; attempts: (id: string) => AttemptRow[]; close: () => void } {
  const db = new Database(join(dir, 'spool.db'));
  return {
    deliveries: db.prepare('SELECT id, message_id, status, attempts FROM deliveries').all() as DeliveryRow[],
    attempts: (id) => db.prepare('SELECT attempt, outcome, status_code, error FROM attempts WHERE delivery_id = ? ORDER BY id').all(id) as AttemptRow[],
    close: () => db.close(),
  };
}

test('SIGTERM with a request held open: aborted after the grace period and counted, a waiting one given back uncounted, both delivered after restart', async () => {
  const dir = tempDir();
  const consumer = await new HoldingConsumer().start();
  const procs: RunningProcess[] = [];
  try {
    // One request at a time for the route: the second message waits for the slot the held request occupies.
    const cfg = writeConfig(dir, consumer.url, 1);
    const first = spawnMailhook(['serve', '--config', cfg]);
    procs.push(first);
    await first.started;
    const id1 = /queued as (\S+)/.exec((await sendMail(first.smtpPort, { from: 'a@s.test', to: 'x@app.test', subject: 'held', text: 'one' })).response)![1]!;
    await until(() => consumer.requests.length === 1, 10_000, 'the first webhook request');
    const id2 = /queued as (\S+)/.exec((await sendMail(first.smtpPort, { from: 'a@s.test', to: 'y@app.test', subject: 'waiting', text: 'two' })).response)![1]!;
    // The second delivery is leased and waits for the route's only request slot.
    await untilAsync(async () => (await metric(first, /^mailhook_deliveries_waiting\{route="app",prepared="true"\} (\d+)$/m)) === 1, 'the second delivery to wait for a slot');

    first.child.kill('SIGTERM');
    // The delivery step of the shutdown starts once the mailbox step (the one before it) has stopped.
    await first.waitForLog((l) => l.msg === 'stopped' && l.part === 'mailboxes');
    assert.equal(consumer.requests[0]!.aborted, false, 'the request is not cut off when shutdown starts: it gets the grace period');
    assert.equal(first.child.exitCode, null, 'still running during the grace period');

    const aborted = await first.waitForLog((l) => l.msg === 'delivery failed; will retry', 20_000);
    assert.equal(aborted.msgId, id1);
    assert.equal(aborted.attempt, 1);
    assert.match(String(aborted.error), /shutting down/);
    const given = await first.waitForLog((l) => l.msg === 'delivery not attempted before shutdown; given back uncounted');
    assert.equal(given.msgId, id2);
    assert.deepEqual(await first.exit, { code: 0, signal: null });
    await until(() => consumer.requests[0]!.aborted, 5000, 'the consumer to see the request closed');
    assert.equal(consumer.requests.length, 1, 'the waiting delivery never made a request');

    // Before the restart: the spool holds both messages, the held one with its aborted attempt counted.
    let spool = readSpool(dir);
    try {
      const d1 = spool.deliveries.find((d) => d.message_id === id1)!;
      const d2 = spool.deliveries.find((d) => d.message_id === id2)!;
      assert.equal(d1.id, consumer.requests[0]!.webhookId);
      assert.deepEqual({ status: d1.status, attempts: d1.attempts }, { status: 'pending', attempts: 1 });
      assert.deepEqual(spool.attempts(d1.id).map((a) => ({ outcome: a.outcome, status_code: a.status_code })), [{ outcome: 'retry', status_code: null }]);
      assert.match(spool.attempts(d1.id)[0]!.error ?? '', /shutting down/);
      assert.deepEqual({ status: d2.status, attempts: d2.attempts }, { status: 'pending', attempts: 0 });
      assert.deepEqual(spool.attempts(d2.id), []);
    } finally {
      spool.close();
    }

    // Restart on the same spool with the consumer answering.
    consumer.hold = false;
    const second = spawnMailhook(['serve', '--config', cfg]);
    procs.push(second);
    await second.started;
    await until(() => consumer.requests.length === 3, 15_000, 'both deliveries after the restart');
    await second.waitForLog((l) => l.msg === 'delivered' && l.msgId === id1);
    await second.waitForLog((l) => l.msg === 'delivered' && l.msgId === id2);
    second.child.kill('SIGTERM');
    assert.deepEqual(await second.exit, { code: 0, signal: null });

    spool = readSpool(dir);
    try {
      const d1 = spool.deliveries.find((d) => d.message_id === id1)!;
      const d2 = spool.deliveries.find((d) => d.message_id === id2)!;
      const again = consumer.requests.slice(1);
      assert.deepEqual(again.map((r) => r.webhookId).sort(), [d1.id, d2.id].sort(), 'same webhook-ids after the restart');
      assert.deepEqual(again.map((r) => r.subject).sort(), ['held', 'waiting']);
      assert.deepEqual({ status: d1.status, attempts: d1.attempts }, { status: 'delivered', attempts: 2 });
      assert.deepEqual({ status: d2.status, attempts: d2.attempts }, { status: 'delivered', attempts: 1 });
    } finally {
      spool.close();
    }
  } finally {
    for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    await Promise.all(procs.map((p) => p.exit));
    await consumer.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('SIGTERM: a delivery waiting for a request slot is given back at once, not sent when the slot frees during the grace period', async () => {
  const dir = tempDir();
  const consumer = await new HoldingConsumer().start();
  const procs: RunningProcess[] = [];
  try {
    const cfg = writeConfig(dir, consumer.url, 1);
    const p = spawnMailhook(['serve', '--config', cfg]);
    procs.push(p);
    await p.started;
    const id1 = /queued as (\S+)/.exec((await sendMail(p.smtpPort, { from: 'a@s.test', to: 'x@app.test', subject: 'held', text: 'one' })).response)![1]!;
    await until(() => consumer.requests.length === 1, 10_000, 'the first webhook request');
    const id2 = /queued as (\S+)/.exec((await sendMail(p.smtpPort, { from: 'a@s.test', to: 'y@app.test', subject: 'waiting', text: 'two' })).response)![1]!;
    await untilAsync(async () => (await metric(p, /^mailhook_deliveries_waiting\{route="app",prepared="true"\} (\d+)$/m)) === 1, 'the second delivery to wait for a slot');

    p.child.kill('SIGTERM');
    // The delivery step of the shutdown starts right after this line is written (HTTP is closed by then): the waiting
    // attempt stops waiting at once; its outcome is recorded with the others once the request in flight ends.
    await p.waitForLog((l) => l.msg === 'stopped' && l.part === 'mailboxes');
    assert.equal(consumer.requests[0]!.answered, false);
    // The first request is answered within the grace period, freeing the slot: nothing takes it.
    consumer.requests[0]!.answer(200);
    assert.equal((await p.waitForLog((l) => l.msg === 'delivered')).msgId, id1);
    const given = await p.waitForLog((l) => l.msg === 'delivery not attempted before shutdown; given back uncounted');
    assert.equal(given.msgId, id2);
    assert.deepEqual(await p.exit, { code: 0, signal: null });
    assert.equal(consumer.requests.length, 1, 'the waiting delivery made no request during the shutdown');
    const spool = readSpool(dir);
    try {
      const d2 = spool.deliveries.find((d) => d.message_id === id2)!;
      assert.deepEqual({ status: d2.status, attempts: d2.attempts }, { status: 'pending', attempts: 0 });
    } finally {
      spool.close();
    }
  } finally {
    for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    await Promise.all(procs.map((p) => p.exit));
    await consumer.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('SIGTERM with a request held open that the consumer answers within the grace period: delivered, not aborted', async () => {
  const dir = tempDir();
  const consumer = await new HoldingConsumer().start();
  const procs: RunningProcess[] = [];
  try {
    const cfg = writeConfig(dir, consumer.url, 4);
    const p = spawnMailhook(['serve', '--config', cfg]);
    procs.push(p);
    await p.started;
    const id = /queued as (\S+)/.exec((await sendMail(p.smtpPort, { from: 'a@s.test', to: 'x@app.test', subject: 'finish', text: 'one' })).response)![1]!;
    await until(() => consumer.requests.length === 1, 10_000, 'the webhook request');
    p.child.kill('SIGTERM');
    await p.waitForLog((l) => l.msg === 'stopped' && l.part === 'mailboxes');
    consumer.requests[0]!.answer(200);
    const delivered = await p.waitForLog((l) => l.msg === 'delivered');
    assert.equal(delivered.msgId, id);
    assert.deepEqual(await p.exit, { code: 0, signal: null });
    assert.equal(consumer.requests[0]!.aborted, false);
    assert.equal(p.lines.some((l) => l.msg === 'delivery failed; will retry'), false);
    const spool = readSpool(dir);
    try {
      assert.deepEqual(spool.deliveries.map((d) => ({ status: d.status, attempts: d.attempts })), [{ status: 'delivered', attempts: 1 }]);
    } finally {
      spool.close();
    }
  } finally {
    for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    await Promise.all(procs.map((p) => p.exit));
    await consumer.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
