// Composition root: builds every part from the validated config and wires them in data-flow order.
import { Agent, type Dispatcher } from 'undici';
import type { FastifyInstance } from 'fastify';
import type { Clock, Random } from './core/clock.js';
import { Lifecycle } from './core/lifecycle.js';
import type { Logger } from './core/logger.js';
import { createMetrics, type Metrics } from './core/metrics.js';
import type { Config } from './config/load.js';
import { Router } from './routing/router.js';
import { Spool } from './spool/spool.js';
import { Retention } from './spool/retention.js';
import { createSmtpService, type SmtpService } from './smtp/server.js';
import type { DNSResolver } from 'mailauth';
import { DeliveryWorker } from './delivery/worker.js';
import { ParsePool, type ParsePoolOptions } from './parse/pool.js';
import type { PayloadMessageJson } from './parse/message.js';
import type { ParseInbound } from './parse/inbound.js';
import { createFormats, parseNeeded } from './delivery/formats/index.js';
import { buildHttpApp } from './http/server.js';
import { listenError } from './core/listen.js';
import { createMailboxes, type Mailboxes } from './imap/index.js';

export interface AppDeps {
  config: Config;
  log: Logger;
  clock: Clock;
  random: Random;
  dispatcher?: Dispatcher;
  /** DNS for sender authentication (SPF/DKIM/DMARC/ARC); the system resolver when absent */
  dnsResolver?: DNSResolver;
  /** parses messages for the json format; the parse pool (delivery.parse_threads) when absent */
  parse?: (raw: Buffer) => Promise<PayloadMessageJson>;
  /** parses messages for the mailgun, postmark and sendgrid formats; the parse pool when absent */
  parseInbound?: ParseInbound;
  /** starts one of the parse pool's threads (tests put in one of their own); the real one when absent */
  startParseThread?: ParsePoolOptions['startThread'];
  /** the delivery loop's settle window (DeliveryWorker); its default when absent */
  settleCoalesceMs?: number;
  /** see WorkerDeps.preparedMaxAgeMs */
  preparedMaxAgeMs?: number;
  /** see SmtpDeps.tlsPollMs */
  tlsPollMs?: number;
}

export interface App {
  config: Config;
  spool: Spool;
  smtp: SmtpService;
  http: FastifyInstance;
  worker: DeliveryWorker;
  /** IMAP and Microsoft Graph mailbox bridges (none when the imap: list is empty) */
  mailboxes: Mailboxes;
  metrics: Metrics;
  lifecycle: Lifecycle;
  addresses: { smtp: { host: string; port: number }; http: { host: string; port: number } };
  stop(): Promise<void>;
  /** SIGHUP: reload what can change without a restart (the TLS key and certificate) */
  reload(): void;
}

/** Grace for SMTP transactions and webhook requests in flight at shutdown. */
const SHUTDOWN_GRACE_MS = 10_000;

export async function startApp(deps: AppDeps): Promise<App> {
  const { config, log, clock, random } = deps;
  const lifecycle = new Lifecycle(log);
  const metrics = createMetrics();
  try {
    const spool = new Spool({ path: config.spool.path, inlineMaxBytes: config.spool.inline_max_bytes, clock, log: log.child({ part: 'spool' }) });
    lifecycle.onStop('spool', () => spool.close());

    // Renamed routes first: the delivery loop dead-letters deliveries of routes it does not know.
    for (const route of config.routes) {
      for (const old of route.renamedFrom ?? []) {
        const moved = spool.jobs.renameRoute(old, route.name);
        if (moved > 0) log.info({ from: old, route: route.name, deliveries: moved }, `route renamed: the spool's deliveries under "${old}" are now "${route.name}"'s`);
      }
    }

    // Registered after the spool, so it stops (finishing its batch) before the spool closes.
    const retention = new Retention(
      { db: spool.db, blobs: spool.blobs, clock, log: log.child({ part: 'retention' }), onRemoved: (n) => metrics.spoolRemoved.inc(n) },
      config.spool.retention,
    );
    retention.start();
    lifecycle.onStop('retention', () => retention.stop());

    const dispatcher = deps.dispatcher ?? new Agent({ connections: config.delivery.concurrency, keepAliveTimeout: 10_000 });
    if (!deps.dispatcher) lifecycle.onStop('http client', () => dispatcher.close());

    // Registered before delivery, so it stops after it. Threads only when a route's format parses messages and
    // no parser of that kind was passed in.
    const formats = createFormats();
    const parsing = config.routes.some((r) => {
      const needed = r.webhook && parseNeeded(r.webhook, formats);
      return (needed === 'json' && !deps.parse) || (needed === 'inbound' && !deps.parseInbound);
    });
    const parsePool = new ParsePool({
      threads: parsing ? config.delivery.parse_threads : 0,
      timeoutMs: config.delivery.timeout_ms,
      log: log.child({ part: 'parse' }),
      ...(deps.startParseThread ? { startThread: deps.startParseThread } : {}),
    });
    lifecycle.onStop('parse threads', () => parsePool.stop());

    const worker = new DeliveryWorker({
      config,
      spool,
      log,
      metrics,
      clock,
      random,
      dispatcher,
      parse: deps.parse ?? ((raw) => parsePool.parse(raw)),
      parseInbound: deps.parseInbound ?? ((raw, options) => parsePool.parseInbound(raw, options)),
      formats,
      settleCoalesceMs: deps.settleCoalesceMs,
      preparedMaxAgeMs: deps.preparedMaxAgeMs,
    });
    spool.acceptor.onCommitted = () => worker.wake();
    worker.start();
    lifecycle.onStop('delivery', () => worker.stop(SHUTDOWN_GRACE_MS));

    const router = new Router(config.routes, { postmasterRoute: config.smtp.postmaster_route });
    const smtp = createSmtpService({ config, router, spool, log: log.child({ part: 'smtp' }), metrics, clock, ...(deps.dnsResolver ? { dnsResolver: deps.dnsResolver } : {}), tlsPollMs: deps.tlsPollMs });
    // Its TLS files are watched from here: a start that fails later must not leave the watch behind.
    lifecycle.onStop('tls watch', () => smtp.stopTlsWatch());

    // Mailbox bridges feed spool.accept as SMTP does; registered after delivery, so they stop before it and the spool.
    const mailboxes = createMailboxes({ config, spool, router, log, metrics, clock, random, dispatcher });
    mailboxes.start();
    lifecycle.onStop('mailboxes', () => mailboxes.stop(SHUTDOWN_GRACE_MS));

    const http = buildHttpApp({ config, spool, log, metrics, clock, wakeDelivery: (routes) => worker.resume(routes), routeStates: () => worker.routeStates(), readiness: () => ({ smtp_listening: smtp.isListening(), spool_disk_space: smtp.hasDiskSpace() }), mailboxes: config.imap.length > 0 ? () => mailboxes.statuses() : undefined });
    let httpAddress: { host: string; port: number };
    try {
      await http.listen({ host: config.http.listen.host, port: config.http.listen.port });
      const a = http.server.address();
      httpAddress = typeof a === 'object' && a ? { host: a.address, port: a.port } : { host: config.http.listen.host, port: config.http.listen.port };
    } catch (err) {
      throw listenError('HTTP', config.http.listen, 'http.listen', err, config.fromEnvironment?.['http.listen']);
    }
    lifecycle.onStop('http', () => http.close());

    // SMTP starts last and stops first: nothing is accepted that the rest cannot take. Registered before it
    // listens: when the implicit-TLS listener cannot bind, the main one (already bound) must close too.
    lifecycle.onStop('smtp', () => smtp.shutdown(SHUTDOWN_GRACE_MS));
    const smtpAddress = await smtp.listen();

    log.info({ smtp: smtpAddress, http: httpAddress, routes: config.routes.map((r) => r.name), spool: config.spool.path }, 'mailhook started');
    return {
      config,
      spool,
      smtp,
      http,
      worker,
      mailboxes,
      metrics,
      lifecycle,
      addresses: { smtp: smtpAddress, http: httpAddress },
      stop: () => lifecycle.stop(),
      reload: () => {
        smtp.reloadTls('SIGHUP');
      },
    };
  } catch (err) {
    await lifecycle.stop();
    throw err;
  }
}
