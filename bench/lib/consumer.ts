// The local webhook consumer mailhook delivers to during the bench: answers 200, counts, and timestamps tagged messages.
import { createServer, type Server } from 'node:http';
import { once } from 'node:events';

const TAG = /bench-seq-(\d+)/;

export class BenchConsumer {
  count = 0;
  bytes = 0;
  /** performance.now() at which each tagged message's webhook was fully received, by tag */
  readonly receivedAt = new Map<number, number>();
  /** record tags only when a latency phase asks for it (keeps the throughput phases cheap) */
  recordTags = false;
  private server: Server | undefined;
  private waiters: Array<{ n: number; resolve: () => void }> = [];
  port = 0;

  get url(): string {
    return `http://127.0.0.1:${this.port}/hook`;
  }

  async start(): Promise<this> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      req.on('data', (c: Buffer) => {
        size += c.length;
        if (this.recordTags && size < 65536) chunks.push(c);
      });
      req.on('end', () => {
        const at = performance.now();
        this.count++;
        this.bytes += size;
        if (this.recordTags) {
          const m = TAG.exec(Buffer.concat(chunks).toString('latin1'));
          if (m) this.receivedAt.set(Number(m[1]), at);
        }
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end('ok');
        if (this.waiters.length > 0) {
          this.waiters = this.waiters.filter((w) => {
            if (this.count < w.n) return true;
            w.resolve();
            return false;
          });
        }
      });
    });
    this.server.keepAliveTimeout = 30_000;
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    const a = this.server.address();
    this.port = typeof a === 'object' && a ? a.port : 0;
    return this;
  }

  /** Resolves true once `n` webhooks in total arrived, false after timeoutMs. */
  waitForCount(n: number, timeoutMs: number): Promise<boolean> {
    if (this.count >= n) return Promise.resolve(true);
    return new Promise((resolve) => {
      const w = { n, resolve: () => (clearTimeout(t), resolve(true)) };
      const t = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        resolve(false);
      }, timeoutMs);
      this.waiters.push(w);
    });
  }

  async stop(): Promise<void> {
    if (!this.server) return;
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server!.close(() => r()));
  }
}
