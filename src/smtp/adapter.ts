// A typed adapter over smtp-server: configurable greeting delay and enhanced codes on library replies.
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import type { Socket } from 'node:net';
import { LIBRARY_REPLY_REWRITES } from './replies.js';

export interface AdapterOptions extends SMTPServerOptions {
  /** ms before the 220 banner; smtp-server hard-codes 100 */
  greetingDelayMs: number;
}

/** The parts of SMTPConnection's internals this adapter relies on (checked against smtp-server 3.21). */
interface ConnectionInternals {
  _server: { options: { maxClients?: number }; connections: Set<unknown> };
  _setListeners(cb: () => void): void;
  connectionReady(): void;
  send(code: number, data?: string | string[], context?: unknown): void;
  name: string;
}

function rewrite(code: number, data: string | string[] | undefined): string | string[] | undefined {
  if (typeof data !== 'string' || /^\d\.\d{1,3}\.\d{1,3} /.test(data)) return data;
  for (const r of LIBRARY_REPLY_REWRITES) {
    if (r.code === code && r.match.test(data)) return `${r.enhanced} ${data}`;
  }
  return data;
}

export function createSmtpServer(options: AdapterOptions): SMTPServer {
  const delay = options.greetingDelayMs;

  class MailhookConnection extends SMTPConnection {
    override init(): void {
      const self = this as unknown as ConnectionInternals;
      self._setListeners(() => {
        const max = self._server.options.maxClients;
        if (max && self._server.connections.size > max) {
          self.send(421, `${self.name} Too many connected clients, try again in a moment`, false);
          return;
        }
        // Early-talker check: anything the client sends before the banner gets 421 (smtp-server's own check).
        const timer = setTimeout(() => self.connectionReady(), delay);
        timer.unref();
      });
    }

    override send(code: number, data?: string | string[], context?: unknown): void {
      // hideENHANCEDSTATUSCODES stays on so our own replies carry exactly the code we wrote.
      (SMTPConnection.prototype.send as ConnectionInternals['send']).call(this, code, rewrite(code, data), context);
    }
  }

  class MailhookServer extends SMTPServer {
    override connect(socket: Socket, socketOptions: ConstructorParameters<typeof SMTPConnection>[2]): void {
      const self = this as unknown as SMTPServer & { _onError(e: Error): void; _onClientConnect(d: unknown): void };
      const connection = new MailhookConnection(this, socket, socketOptions);
      this.connections.add(connection);
      connection.on('error', (err: Error) => self._onError(err));
      connection.on('connect', (data: unknown) => self._onClientConnect(data));
      connection.init();
    }
  }

  return new MailhookServer({ ...options, hideENHANCEDSTATUSCODES: true });
}
