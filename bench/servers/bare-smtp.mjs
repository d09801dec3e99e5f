// The framework ceiling: a bare smtp-server (the library mailhook is built on) that reads DATA and discards it.
// Plain JS so it runs without a TypeScript loader. Same library settings as mailhook (no reverse lookup since
// the fifth session), AUTH/STARTTLS off, and the 100 ms early-talker wait replaced by a configurable one
// (argv[3], default 0).
import { SMTPServer } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';

const port = Number(process.argv[2]);
const greetingDelayMs = Number(process.argv[3] ?? 0);
// argv[4] "reverse-lookup": a diagnostic, to see what smtp-server's reverse DNS lookup per connection costs.
const disableReverseLookup = process.argv[4] !== 'reverse-lookup';

class Connection extends SMTPConnection {
  init() {
    this._setListeners(() => {
      if (this._server.options.maxClients && this._server.connections.size > this._server.options.maxClients) {
        return this.send(421, this.name + ' Too many connected clients, try again in a moment', false);
      }
      setTimeout(() => this.connectionReady(), greetingDelayMs).unref();
    });
  }
}

class Server extends SMTPServer {
  connect(socket, socketOptions) {
    const connection = new Connection(this, socket, socketOptions);
    this.connections.add(connection);
    connection.on('error', (err) => this._onError(err));
    connection.on('connect', (data) => this._onClientConnect(data));
    connection.init();
  }
}

const server = new Server({
  name: 'bare.bench.test',
  size: 26214400,
  maxClients: 1000,
  authOptional: true,
  disabledCommands: ['AUTH', 'STARTTLS'],
  logger: false,
  disableReverseLookup,
  onData(stream, _session, callback) {
    stream.on('data', () => {});
    stream.on('end', () => callback(null, 'discarded'));
  },
});
server.on('error', () => {});
server.listen(port, '127.0.0.1');
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));
