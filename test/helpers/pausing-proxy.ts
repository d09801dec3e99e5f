// A loopback TCP proxy that holds a client's bytes from the first chunk matching a pattern until the test releases them (or cuts the connection): opens the window between two commands of a client.
import { createServer, connect, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';

export class PausingProxy {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  private release: () => void = () => undefined;
  private readonly released: Promise<void>;
  /** resolves when a chunk matching the pattern arrived (and is being held) */
  readonly caught: Promise<void>;
  private onCaught: () => void = () => undefined;
  port = 0;
  /** only the first matching chunk (of any connection) is held */
  private armed = true;

  constructor(private readonly targetPort: number, private readonly pattern: RegExp) {
    this.released = new Promise((resolve) => (this.release = resolve));
    this.caught = new Promise((resolve) => (this.onCaught = resolve));
  }

  async start(): Promise<this> {
    this.server = createServer((client) => {
      const upstream = connect(this.targetPort, '127.0.0.1');
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
      upstream.pipe(client);
      let holding = false;
      client.on('data', (chunk: Buffer) => {
        if (!holding && this.armed && this.pattern.test(chunk.toString('latin1'))) {
          holding = true;
          this.armed = false;
          client.pause();
          this.onCaught();
          void this.released.then(() => {
            upstream.write(chunk);
            client.pipe(upstream);
            client.resume();
          });
          return;
        }
        if (!holding) upstream.write(chunk);
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as AddressInfo).port;
    return this;
  }

  /** Lets the held bytes, and everything after them, through. */
  go(): void {
    this.release();
  }

  /** Drops every connection open now, the held bytes never sent (a network failure at that moment); later ones pass. */
  cut(): void {
    for (const s of this.sockets) s.destroy();
  }

  async stop(): Promise<void> {
    this.release();
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
