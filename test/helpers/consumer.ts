// A real HTTP webhook consumer on 127.0.0.1:0 that records every request and answers as the test scripts it.
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import { once } from 'node:events';

export interface ReceivedRequest {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
  at: number;
}

export type Responder = (req: ReceivedRequest, index: number) => { status: number; headers?: Record<string, string>; body?: string } | Promise<{ status: number; headers?: Record<string, string>; body?: string }>;

export class Consumer {
  readonly requests: ReceivedRequest[] = [];
  private waiters: Array<{ n: number; resolve: () => void }> = [];
  private receivedWaiters: Array<{ n: number; resolve: () => void }> = [];
  private server: Server | undefined;
  respond: Responder = () => ({ status: 200, body: 'ok' });
  port = 0;

  get url(): string {
    return `http://127.0.0.1:${this.port}/hook`;
  }

  async start(port = 0): Promise<this> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const rec: ReceivedRequest = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks), at: Date.now() };
        const index = this.requests.length;
        this.requests.push(rec);
        this.receivedWaiters = this.receivedWaiters.filter((w) => {
          if (this.requests.length >= w.n) {
            w.resolve();
            return false;
          }
          return true;
        });
        void Promise.resolve(this.respond(rec, index)).then((r) => {
          res.writeHead(r.status, r.headers ?? {});
          res.end(r.body ?? '');
          this.waiters = this.waiters.filter((w) => {
            if (this.requests.length >= w.n) {
              w.resolve();
              return false;
            }
            return true;
          });
        });
      });
    });
    this.server.keepAliveTimeout = 100;
    this.server.listen(port, '127.0.0.1');
    await once(this.server, 'listening');
    const addr = this.server.address();
    if (addr && typeof addr === 'object') this.port = addr.port;
    return this;
  }

  /** Resolves once `n` requests in total have been answered; fails after `timeoutMs`. */
  waitFor(n: number, timeoutMs = 10_000): Promise<ReceivedRequest[]> {
    if (this.requests.length >= n) return Promise.resolve(this.requests.slice());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`consumer got ${this.requests.length} of ${n} expected requests within ${timeoutMs} ms`)), timeoutMs);
      this.waiters.push({
        n,
        resolve: () => {
          clearTimeout(timer);
          // Let the worker record the outcome of the answered request.
          setImmediate(() => resolve(this.requests.slice()));
        },
      });
    });
  }

  /** Resolves once `n` requests have arrived, answered or not (for consumers that hold their reply). */
  received(n: number, timeoutMs = 10_000): Promise<ReceivedRequest[]> {
    if (this.requests.length >= n) return Promise.resolve(this.requests.slice());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`consumer received ${this.requests.length} of ${n} expected requests within ${timeoutMs} ms`)), timeoutMs);
      this.receivedWaiters.push({
        n,
        resolve: () => {
          clearTimeout(timer);
          resolve(this.requests.slice());
        },
      });
    });
  }

  json<T = Record<string, unknown>>(i: number): T {
    const r = this.requests[i];
    if (!r) throw new Error(`no request ${i}`);
    return JSON.parse(r.body.toString('utf8')) as T;
  }

  async stop(): Promise<void> {
    if (!this.server) return;
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server!.close(() => r()));
    this.server = undefined;
  }
}
