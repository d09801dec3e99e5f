// The SMTP edge: thin smtp-server handlers that ask routing who a recipient is and hand DATA to the spool.
import type { SMTPServer, SMTPServerAddress, SMTPServerDataStream, SMTPServerSession } from 'smtp-server';
import type { TLSSocket } from 'node:tls';
import type { Logger } from '../core/logger.js';
import type { Metrics } from '../core/metrics.js';
import { MailhookError } from '../core/errors.js';
import type { Config } from '../config/load.js';
import { PER_RECIPIENT_FORMATS } from '../config/schema.js';
import type { Router } from '../routing/router.js';
import type { Spool } from '../spool/spool.js';
import type { PlannedDelivery, Recipient } from '../spool/types.js';
import { createSmtpServer } from './adapter.js';
import { Reply, SmtpReplyError, formatReply } from './replies.js';

export interface SmtpDeps {
  config: Config;
  router: Router;
  spool: Spool;
  log: Logger;
  metrics: Metrics;
}

export interface SmtpService {
  server: SMTPServer;
  listen(): Promise<{ host: string; port: number }>;
  isListening(): boolean;
  /** Refuse new sessions and commands with 421, wait for DATA in flight, then close. */
  shutdown(graceMs: number): Promise<void>;
}

export function createSmtpService(deps: SmtpDeps): SmtpService {
  const { config, router, spool, log, metrics } = deps;
  const routeNames = new Set(config.routes.map((r) => r.name));
  const sinkRoutes = new Set(config.routes.filter((r) => r.sink).map((r) => r.name));
  const perRecipientRoutes = new Set(config.routes.filter((r) => r.webhook && PER_RECIPIENT_FORMATS.has(r.webhook.format)).map((r) => r.name));
  let draining = false;
  let listening = false;
  const inFlight = new Set<Promise<unknown>>();

  const server = createSmtpServer({
    name: config.smtp.hostname,
    banner: 'mailhook',
    size: config.smtp.max_message_bytes,
    maxClients: config.smtp.max_clients,
    socketTimeout: config.smtp.socket_timeout_ms,
    greetingDelayMs: config.smtp.greeting_delay_ms,
    // RFC 2033: LHLO instead of EHLO, and after DATA one reply per accepted recipient (smtp-server sends them).
    lmtp: config.smtp.lmtp,
    authOptional: true,
    disabledCommands: ['AUTH', 'STARTTLS'],
    logger: false,
    onConnect(session, callback) {
      if (draining) return callback(new SmtpReplyError(Reply.ShuttingDown));
      metrics.smtpConnections.inc();
      log.debug({ cid: session.id, remote: session.remoteAddress }, 'smtp connect');
      callback();
    },
    onMailFrom(address, session, callback) {
      if (draining) return callback(new SmtpReplyError(Reply.ShuttingDown));
      callback();
    },
    onRcptTo(address: SMTPServerAddress, session: SMTPServerSession, callback) {
      if (draining) return callback(new SmtpReplyError(Reply.ShuttingDown));
      // RFC 5321 §4.5.3.1.10: 452 when the recipient limit is hit; the accepted ones are still delivered.
      if (session.envelope.rcptTo.length >= config.smtp.max_recipients) {
        metrics.recipientsRejected.inc({ reason: 'too_many' });
        return callback(new SmtpReplyError(Reply.TooManyRecipients));
      }
      const match = router.match(address.address);
      if (!match.ok) {
        metrics.recipientsRejected.inc({ reason: match.reason });
        log.info({ cid: session.id, rcpt: address.address, reason: match.reason }, 'recipient refused');
        const reply = match.reason === 'unknown_domain' ? Reply.RelayDenied : match.reason === 'bad_address' ? Reply.BadRecipientSyntax : Reply.RcptUnknown;
        return callback(new SmtpReplyError(reply));
      }
      callback();
    },
    onData(stream: SMTPServerDataStream, session: SMTPServerSession, callback) {
      const work = handleData(stream, session).then(
        (id) => callback(null, formatReply(Reply.Queued(id))),
        (err: unknown) => callback(toReplyError(err, session)),
      );
      inFlight.add(work);
      void work.finally(() => inFlight.delete(work));
    },
  });

  server.on('error', (err) => log.warn({ err }, 'smtp connection error'));

  async function handleData(stream: SMTPServerDataStream, session: SMTPServerSession): Promise<string> {
    const deliveries = planDeliveries(session.envelope.rcptTo.map((r) => r.address));
    const result = await spool.accept({
      source: 'smtp',
      envelope: {
        mailFrom: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
        rcptTo: session.envelope.rcptTo.map((r) => r.address),
        remoteAddress: session.remoteAddress,
        helo: session.hostNameAppearsAs ?? null,
        tls: tlsInfo(session),
      },
      deliveries,
      body: stream,
      maxBytes: config.smtp.max_message_bytes,
    });
    if (stream.sizeExceeded) throw new MailhookError('MESSAGE_TOO_LARGE', 'message exceeds the size limit', { userFault: true });
    metrics.messagesAccepted.inc({ source: 'smtp' });
    log.info({ cid: session.id, msgId: result.id, size: result.size, rcpts: session.envelope.rcptTo.length, routes: deliveries.map((d) => d.route) }, 'message accepted');
    return result.id;
  }

  /** One delivery per route, each listing that route's recipients (routing already vetted every RCPT). */
  function planDeliveries(rcptTo: string[]): PlannedDelivery[] {
    const byRoute = new Map<string, Recipient[]>();
    for (const address of rcptTo) {
      const m = router.match(address);
      if (!m.ok || !routeNames.has(m.route)) continue;
      const list = byRoute.get(m.route) ?? [];
      list.push({ address, key: m.key });
      byRoute.set(m.route, list);
    }
    return [...byRoute].flatMap(([route, recipients]) => {
      const status = sinkRoutes.has(route) ? ('delivered' as const) : ('pending' as const);
      // GitLab reads one key per message: each recipient of such a route gets its own delivery.
      if (perRecipientRoutes.has(route)) return recipients.map((r) => ({ route, recipients: [r], status }));
      return [{ route, recipients, status }];
    });
  }

  function toReplyError(err: unknown, session: SMTPServerSession): SmtpReplyError {
    if (err instanceof MailhookError && err.code === 'MESSAGE_TOO_LARGE') {
      metrics.messagesRejected.inc({ reason: 'too_large' });
      log.info({ cid: session.id }, 'message refused: over the size limit');
      return new SmtpReplyError(Reply.MessageTooLarge);
    }
    if (err instanceof MailhookError && err.code === 'SPOOL_CLOSED') return new SmtpReplyError(Reply.ShuttingDown);
    metrics.messagesRejected.inc({ reason: 'spool_error' });
    log.error({ cid: session.id, err }, 'message not stored; answered 451');
    return new SmtpReplyError(Reply.SpoolUnavailable);
  }

  return {
    server,
    isListening: () => listening && !draining,
    listen() {
      return new Promise((resolve, reject) => {
        const onError = (err: Error) => reject(new MailhookError('CONFIG_INVALID', `cannot listen for SMTP on ${config.smtp.listen.host}:${config.smtp.listen.port}: ${err.message}; check smtp.listen`, { cause: err, userFault: true }));
        server.server.once('error', onError);
        server.listen(config.smtp.listen.port, config.smtp.listen.host, () => {
          server.server.off('error', onError);
          listening = true;
          const addr = server.server.address();
          resolve(typeof addr === 'object' && addr ? { host: addr.address, port: addr.port } : { host: config.smtp.listen.host, port: config.smtp.listen.port });
        });
      });
    },
    async shutdown(graceMs: number) {
      draining = true;
      const deadline = new Promise((r) => setTimeout(r, graceMs).unref());
      await Promise.race([Promise.allSettled([...inFlight]), deadline]);
      // smtp-server answers 421 to every further command and closes idle sessions.
      const s = server as unknown as { options: { closeTimeout?: number } };
      s.options.closeTimeout = Math.min(graceMs, 2000);
      await new Promise<void>((resolve) => server.close(() => resolve()));
      listening = false;
    },
  };
}

function tlsInfo(session: SMTPServerSession): { protocol: string; cipher: string } | null {
  const s = session as SMTPServerSession & { secure?: boolean; tlsOptions?: { name?: string; version?: string } | false };
  if (!s.secure || !s.tlsOptions) return null;
  return { protocol: s.tlsOptions.version ?? 'TLS', cipher: s.tlsOptions.name ?? '' };
}
