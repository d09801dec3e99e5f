// The SMTP edge: thin smtp-server handlers that ask routing who a recipient is and hand DATA to the spool.
import { isIP } from 'node:net';
import { dirname } from 'node:path';
import type { SMTPServer, SMTPServerAddress, SMTPServerDataStream, SMTPServerOptions, SMTPServerSession } from 'smtp-server';
import type { DNSResolver } from 'mailauth';
import { Agent, type Dispatcher } from 'undici';
import { normalizeIPv6 } from 'smtp-server/lib/ipv6-normalize.js';
import { systemClock, type Clock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import type { Metrics } from '../core/metrics.js';
import { MailhookError } from '../core/errors.js';
import { listenError } from '../core/listen.js';
import { waitWithGrace } from '../core/lifecycle.js';
import type { Config, ResolvedRoute } from '../config/load.js';
import { PER_RECIPIENT_FORMATS } from '../config/schema.js';
import { isLocalPart, type Router, type RouteMatch } from '../routing/router.js';
import { lowerAscii } from '../routing/template.js';
import type { Spool } from '../spool/spool.js';
import { diskFree } from '../spool/disk.js';
import type { PlannedDelivery, Recipient, TlsInfo } from '../spool/types.js';
import { createSmtpServer } from './adapter.js';
import { SenderAuthenticator, type AuthenticationRun } from './auth-results.js';
import { createDataFilter } from './data-filter.js';
import { ClientLimits } from './limits.js';
import { MessageRefused, Reply, SmtpReplyError, formatReply } from './replies.js';
import { TLS_HANDSHAKE_RESULTS, isHandshakeFailure, tlsFailureKind } from './tls-failures.js';
import { TlsReloader, certificateFacts, certificateWarnings, loadTlsMaterial, type TlsMaterial } from './tls.js';
import { RecipientVerifier } from './verify.js';
import { transactionClient } from './xforward.js';

export interface SmtpDeps {
  config: Config;
  router: Router;
  spool: Spool;
  log: Logger;
  metrics: Metrics;
  clock?: Clock;
  /**
   * HTTP client for live recipient verification; by default its own agent, so a backlog of webhook deliveries to
   * the same application never holds up RCPT answers.
   */
  verifyDispatcher?: Dispatcher;
  /** DNS for SPF/DKIM/DMARC/ARC; dns.promises.resolve when absent (tests answer in-process) */
  dnsResolver?: DNSResolver;
  /** how often smtp.tls.watch looks at the TLS files through their links; TLS_POLL_MS when absent */
  tlsPollMs?: number;
}

export interface SmtpService {
  server: SMTPServer;
  /** the implicit-TLS listener (smtp.tls.implicit_listen), if configured */
  implicitServer: SMTPServer | undefined;
  /** where the implicit-TLS listener listens, once listen() resolved */
  implicitAddress: { host: string; port: number } | undefined;
  limits: ClientLimits;
  listen(): Promise<{ host: string; port: number }>;
  isListening(): boolean;
  /** False while the spool file system has less free space than smtp.limits.min_free_disk_bytes (every MAIL gets 452). */
  hasDiskSpace(): boolean;
  /** Reload the TLS key and certificate (SIGHUP); established sessions keep theirs. False when not reloaded. */
  reloadTls(reason: string): boolean;
  /** Stops watching the TLS files (shutdown does too): for a start that fails before SMTP is up. */
  stopTlsWatch(): void;
  /** Refuse new sessions and commands with 421, wait for DATA in flight, then close. */
  shutdown(graceMs: number): Promise<void>;
}

/** Socket errors a client causes by going away (smtp-server already drops these outside a transaction). */
const CLIENT_SOCKET_ERRORS = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ECONNABORTED', 'EHOSTUNREACH', 'ENETUNREACH']);

/** How long a free-disk reading is reused: MAIL commands must not each cost a statfs. */
const DISK_CHECK_MS = 1000;

export function createSmtpService(deps: SmtpDeps): SmtpService {
  const { config, router, spool, log, metrics } = deps;
  const clock = deps.clock ?? systemClock;
  const smtp = config.smtp;
  const routeNames = new Set(config.routes.map((r) => r.name));
  const routesByName = new Map<string, ResolvedRoute>(config.routes.map((r) => [r.name, r]));
  const sinkRoutes = new Set(config.routes.filter((r) => r.sink).map((r) => r.name));
  const perRecipientRoutes = new Set(config.routes.filter((r) => r.webhook && PER_RECIPIENT_FORMATS.has(r.webhook.format)).map((r) => r.name));
  const dmarcRejectRoutes = new Set(config.routes.filter((r) => r.dmarcReject).map((r) => r.name));
  const ipLiterals = new Map(Object.entries(smtp.ip_literals).map(([ip, domain]) => [normalizeIp(ip), domain.toLowerCase()]));
  let draining = false;
  let listening = false;
  const inFlight = new Set<Promise<unknown>>();
  /** sessions counted against their IP's connection limit, by session id */
  const counted = new Map<string, string>();

  const limits = new ClientLimits(
    {
      maxConnectionsPerIp: smtp.limits.max_connections_per_ip,
      maxMessagesPerIp: smtp.limits.max_messages_per_ip,
      maxRecipientsPerIp: smtp.limits.max_recipients_per_ip,
      windowMs: smtp.limits.rate_window_ms,
      exempt: smtp.limits.exempt,
      ipv6PrefixLength: smtp.limits.ipv6_prefix_length,
    },
    clock,
  );
  const verifyAgent = !deps.verifyDispatcher && config.routes.some((r) => r.verify) ? new Agent({ keepAliveTimeout: 10_000 }) : undefined;
  const verifyDispatcher = deps.verifyDispatcher ?? verifyAgent;
  const verifier = new RecipientVerifier({ clock, log, ...(verifyDispatcher ? { dispatcher: verifyDispatcher } : {}) });
  const authenticator = smtp.sender_auth.enabled
    ? new SenderAuthenticator({ mta: smtp.hostname, log, maxFromHeaderBytes: smtp.sender_auth.max_from_header_bytes, maxHeaderLines: smtp.sender_auth.max_header_lines, ...(deps.dnsResolver ? { resolver: deps.dnsResolver } : {}) })
    : undefined;

  const tls = smtp.tls ? { files: { keyFile: smtp.tls.key_file, certFile: smtp.tls.cert_file }, settings: smtp.tls } : undefined;
  const material = tls ? loadTlsMaterial(tls.files) : undefined;
  /** The certificate now served: its end as a metric, and what senders that check it would refuse, as warnings. */
  const noteCertificate = (m: TlsMaterial, certFile: string): void => {
    const facts = certificateFacts(m);
    if (facts) metrics.tlsCertificateExpiry.set({ file: certFile }, facts.notAfter.getTime() / 1000);
    for (const w of certificateWarnings(m, smtp.hostname, clock.now())) log.warn({ key: 'smtp.tls.cert_file', file: certFile }, `smtp.tls.cert_file: ${w}`);
  };
  if (tls && material) noteCertificate(material, tls.files.certFile);
  // Every result at zero from the start, so a rate over the first failure has a series to start from.
  if (tls) for (const result of TLS_HANDSHAKE_RESULTS) metrics.tlsHandshakes.inc({ result }, 0);

  let disk = { at: -Infinity, free: Infinity };
  function freeDisk(): number {
    const now = clock.now();
    if (now - disk.at < DISK_CHECK_MS) return disk.free;
    let free = Infinity;
    try {
      free = diskFree(dirname(config.spool.path));
    } catch (err) {
      log.warn({ err }, 'cannot read the free space of the spool file system');
    }
    disk = { at: now, free };
    return free;
  }

  /** Routing, with IP-literal domains mapped to their configured domain (anything else unknown: relay denied). */
  function match(address: string): RouteMatch {
    const at = address.lastIndexOf('@');
    const domain = at > 0 ? address.slice(at + 1) : '';
    if (domain.startsWith('[') && domain.endsWith(']')) {
      // The local part's syntax first, as for any domain (501 5.1.3 rather than 550 5.7.1 for an unmapped literal).
      if (!isLocalPart(address.slice(0, at))) return { ok: false, reason: 'bad_address' };
      const mapped = ipLiterals.get(normalizeIp(domain.slice(1, -1).replace(/^IPv6:/i, '')));
      if (!mapped) return { ok: false, reason: 'unknown_domain' };
      return router.match(`${address.slice(0, at)}@${mapped}`);
    }
    return router.match(address);
  }

  /**
   * The recipients of each transaction as mailhook counts them: `byId` by recipientIdentity in RCPT order (first
   * spelling kept), `replies` every RCPT answered 250, repeats included. Keyed by the envelope object, which
   * smtp-server replaces at MAIL, RSET and after DATA.
   */
  const acceptedRecipients = new WeakMap<object, { byId: Map<string, SMTPServerAddress>; replies: SMTPServerAddress[] }>();
  function acceptedOf(session: SMTPServerSession): { byId: Map<string, SMTPServerAddress>; replies: SMTPServerAddress[] } {
    let accepted = acceptedRecipients.get(session.envelope);
    if (!accepted) {
      accepted = { byId: new Map(), replies: [] };
      acceptedRecipients.set(session.envelope, accepted);
    }
    return accepted;
  }
  /** The transaction's distinct recipients, in RCPT order: what is stored and delivered. */
  const recipientsOf = (session: SMTPServerSession): string[] => [...acceptedOf(session).byId.values()].map((r) => r.address);

  /**
   * 250 for a recipient, and session.envelope.rcptTo made to list what smtp-server must answer after DATA for.
   * smtp-server files recipients by their lower-cased address and replaces an entry of the same one:
   * incoming+AbC@ and incoming+abc@ (keys are case-sensitive) would both get 250 and only the second be delivered;
   * and it keeps a repeat of the same recipient spelled another way (user@[192.0.2.1] for user@in.test) as a second
   * entry. SMTP: rcptTo lists the distinct recipients. LMTP: every RCPT answered 250, repeats included, since
   * smtp-server sends one reply after DATA per entry and RFC 2033 §4.2 wants one per successful RCPT (fewer left
   * the client waiting for the missing one); the message is stored once for each recipient all the same.
   */
  function accept(session: SMTPServerSession, address: SMTPServerAddress, id: string, callback: (err?: Error | null) => void): void {
    const accepted = acceptedOf(session);
    const isNew = !accepted.byId.has(id);
    if (isNew) accepted.byId.set(id, address);
    accepted.replies.push(address);
    const rcptTo = session.envelope.rcptTo;
    const before = rcptTo.length;
    callback(); // smtp-server adds the recipient (or replaces one) and answers 250 right away
    if (isNew && rcptTo.length === before + 1 && rcptTo[before] === address) return;
    rcptTo.splice(0, rcptTo.length, ...(smtp.lmtp ? accepted.replies : accepted.byId.values()));
  }

  /** errors already logged: smtp-server emits a failed STARTTLS handshake's error twice */
  const logged = new WeakSet<Error>();
  /**
   * A connection's error, as smtp-server reports it. What any client can cause (a TLS handshake it fails: an old
   * protocol, no shared cipher, plain text on the TLS port; a reset) is logged once at info, without a stack, so a
   * scanner cannot fill the log with warnings; anything else stays a warning.
   */
  function connectionError(err: Error & { cid?: string; code?: string; library?: string; reason?: string; remoteAddress?: string; report?: boolean; meta?: { stage?: string; remoteAddress?: string } }): void {
    if (logged.has(err)) return;
    logged.add(err);
    // report: false is smtp-server's mark for a socket closed during the TLS start (a port scan, a TCP health check).
    const byClient = err.library === 'SSL routines' || /^ERR_(SSL|TLS)_/.test(err.code ?? '') || CLIENT_SOCKET_ERRORS.has(err.code ?? '') || err.report === false;
    const tlsFailure = isHandshakeFailure(err) ? tlsFailureKind(err) : undefined;
    if (tlsFailure) metrics.tlsHandshakes.inc({ result: tlsFailure });
    if (!byClient) return log.warn({ cid: err.cid, err, tls_failure: tlsFailure }, 'smtp connection error');
    // The implicit-TLS listener's errors carry the address in meta only, and no cid (no session was made).
    const remote = err.remoteAddress ?? err.meta?.remoteAddress;
    log.info({ cid: err.cid, remote, code: err.code, reason: err.reason ?? err.message.trim(), stage: err.meta?.stage, tls_failure: tlsFailure }, 'smtp client connection failed');
  }

  /** The reply for a recipient routing refused, counted and logged. */
  function recipientRefused(session: SMTPServerSession, rcpt: string, reason: Extract<RouteMatch, { ok: false }>['reason']): SmtpReplyError {
    metrics.recipientsRejected.inc({ reason });
    log.info({ cid: session.id, rcpt, reason }, 'recipient refused');
    return new SmtpReplyError(reason === 'unknown_domain' ? Reply.RelayDenied : reason === 'bad_address' ? Reply.BadRecipientSyntax : Reply.RcptUnknown);
  }

  const options: SMTPServerOptions & { greetingDelayMs: number } = {
    name: smtp.hostname,
    banner: 'mailhook',
    size: smtp.max_message_bytes,
    maxClients: smtp.max_clients,
    socketTimeout: smtp.socket_timeout_ms,
    greetingDelayMs: smtp.greeting_delay_ms,
    // RFC 2033: LHLO instead of EHLO, and after DATA one reply per accepted recipient (smtp-server sends them).
    lmtp: smtp.lmtp,
    authOptional: true,
    // No AUTH (an MX takes mail for its own domains only), no XCLIENT, none of sendmail's jokes; XFORWARD only when
    // relays are listed (the adapter's handler_XFORWARD refuses any other peer with 550 5.7.0, and smtp-server
    // announces it in the EHLO reply to listed peers only).
    disabledCommands: ['AUTH', 'XCLIENT', ...(smtp.xforward_hosts.length ? [] : ['XFORWARD']), 'WIZ', 'SHELL', 'KILL', ...(tls ? [] : ['STARTTLS'])],
    useProxy: smtp.proxy_protocol,
    useXForward: smtp.xforward_hosts.length ? smtp.xforward_hosts : false,
    // No reverse DNS lookup of each client: mailhook uses the address, never the name (logs, Received fields and
    // SPF take the IP and HELO), and smtp-server holds the greeting until the lookup answers (up to 1.5 s).
    disableReverseLookup: true,
    logger: false,
    ...(material && tls ? { key: material.key, cert: material.cert, minVersion: tls.settings.min_version } : {}),
    onConnect(session, callback) {
      if (draining) return callback(new SmtpReplyError(Reply.ShuttingDown));
      const ip = session.remoteAddress;
      // Postfix smtpd_client_connection_count_limit: one client may not hold every slot.
      if (!limits.openConnection(ip)) {
        metrics.smtpRefused.inc({ reason: 'connections_per_ip' });
        log.info({ cid: session.id, remote: ip }, 'connection refused: too many connections from this address');
        return callback(new SmtpReplyError(Reply.TooManyConnectionsFrom(smtp.hostname, ip)));
      }
      counted.set(session.id, ip);
      metrics.smtpConnections.inc();
      log.debug({ cid: session.id, remote: ip }, 'smtp connect');
      callback();
    },
    // Called once a session's TLS handshake succeeded (after STARTTLS, or on the implicit-TLS listener once the
    // session was let in); failures reach connectionError.
    onSecure(_socket, _session, callback) {
      metrics.tlsHandshakes.inc({ result: 'ok' });
      callback();
    },
    onClose(session) {
      const ip = counted.get(session.id);
      if (ip !== undefined) {
        counted.delete(session.id);
        limits.closeConnection(ip);
      }
    },
    onMailFrom(address, session, callback) {
      if (draining) return callback(new SmtpReplyError(Reply.ShuttingDown));
      if (tls?.settings.required && !session.secure) return callback(new SmtpReplyError(Reply.TlsRequired));
      // Postfix queue_minfree: refuse before the client sends anything when the spool could not take it.
      const args = address.args as Record<string, unknown> | false | undefined;
      const size = (args && Number(args['SIZE'])) || 0;
      if (freeDisk() - size < smtp.limits.min_free_disk_bytes) {
        metrics.smtpRefused.inc({ reason: 'disk_full' });
        log.warn({ cid: session.id, free: disk.free, min: smtp.limits.min_free_disk_bytes }, 'MAIL refused: the spool file system is low on space');
        return callback(new SmtpReplyError(Reply.InsufficientStorage));
      }
      if (!limits.takeMessage(session.remoteAddress)) {
        metrics.smtpRefused.inc({ reason: 'message_rate' });
        return callback(new SmtpReplyError(Reply.TooMuchMailFrom(session.remoteAddress)));
      }
      callback();
    },
    onRcptTo(address: SMTPServerAddress, session: SMTPServerSession, callback) {
      if (draining) return callback(new SmtpReplyError(Reply.ShuttingDown));
      const m = match(address.address);
      // A recipient that is no mailbox (RFC 5321 §4.1.2) gets 501 5.1.3 like smtp-server's own syntax errors, before
      // the recipient limits: a 452 would have the client send it again.
      if (!m.ok && m.reason === 'bad_address') return callback(recipientRefused(session, address.address, m.reason));
      const accepted = acceptedOf(session).byId;
      // A recipient already in the envelope is not a new one: 250 again, even at the limit (a 452 would have the
      // client send it again in a second transaction, and the recipient get the message twice).
      if (m.ok && accepted.has(recipientIdentity(m))) return accept(session, address, recipientIdentity(m), callback);
      // RFC 5321 §4.5.3.1.10: 452 when the recipient limit is hit; the accepted ones are still delivered.
      if (accepted.size >= smtp.max_recipients) {
        metrics.recipientsRejected.inc({ reason: 'too_many' });
        return callback(new SmtpReplyError(Reply.TooManyRecipients));
      }
      if (!limits.takeRecipient(session.remoteAddress)) {
        metrics.recipientsRejected.inc({ reason: 'recipient_rate' });
        return callback(new SmtpReplyError(Reply.TooManyRecipientsFrom(session.remoteAddress)));
      }
      if (!m.ok) return callback(recipientRefused(session, address.address, m.reason));
      const id = recipientIdentity(m);
      const route = routesByName.get(m.route);
      if (!route?.verify) return accept(session, address, id, callback);
      // Live verification closes the last backscatter hole: a key that fits the template but names nothing.
      const target = { route: route.name, url: route.verify.url, timeoutMs: route.verify.timeoutMs, cacheTtlMs: route.verify.cacheTtlMs, signingKey: route.webhook?.signingKeyBytes };
      verifier.check(target, m.address, m.key).then((answer) => {
        if (answer === 'exists') return accept(session, address, id, callback);
        metrics.recipientsRejected.inc({ reason: answer === 'unknown' ? 'verify_unknown' : 'verify_unavailable' });
        log.info({ cid: session.id, rcpt: address.address, route: route.name, answer }, 'recipient refused by verification');
        callback(new SmtpReplyError(answer === 'unknown' ? Reply.RcptUnknown : Reply.VerifyUnavailable));
      }, callback);
    },
    onData(stream: SMTPServerDataStream, session: SMTPServerSession, callback) {
      const work = handleData(stream, session).then(
        (id) => callback(null, formatReply(Reply.Queued(id))),
        (err: unknown) => callback(toReplyError(err, session)),
      );
      inFlight.add(work);
      void work.finally(() => inFlight.delete(work));
    },
  };

  const hooks = {
    isDraining: () => draining,
    connectionCount: () => servers.reduce((n, s) => n + s.connections.size, 0),
    maxErrors: smtp.limits.max_errors,
    minDataRate: smtp.limits.min_data_rate,
    maxSessionMs: smtp.limits.max_session_ms,
    onSessionExpired(remote: string, cid: string) {
      log.info({ cid, remote }, 'session longer than smtp.limits.max_session_ms: 421 and disconnect');
    },
    onPipeliningViolation(remote: string, cid: string) {
      metrics.messagesRejected.inc({ reason: 'pipelining' });
      log.info({ cid, remote }, 'message content sent before the 354 reply: 554 and disconnect');
    },
    onStartTlsUnfinished(remote: string, cid: string, how: 'timeout' | 'closed') {
      metrics.tlsHandshakes.inc({ result: how });
      log.info({ cid, remote, reason: how === 'timeout' ? 'the STARTTLS handshake did not finish within smtp.socket_timeout_ms' : 'the client hung up during the STARTTLS handshake', tls_failure: how }, 'smtp client connection failed');
    },
    onDataTimeout(remote: string, cid: string) {
      metrics.messagesRejected.inc({ reason: 'data_timeout' });
      log.info({ cid, remote }, 'DATA slower than smtp.limits.min_data_rate: 421 and disconnect');
    },
  };
  const server = createSmtpServer({ ...options, hooks });
  const implicitServer = tls?.settings.implicit_listen ? createSmtpServer({ ...options, hooks, secure: true }) : undefined;
  const servers = implicitServer ? [server, implicitServer] : [server];
  // Before listen() resolves, an error is the listener's (reported by listen() itself, see listenOn).
  for (const s of servers) s.on('error', (err) => listening && connectionError(err));
  const reloader = tls
    ? new TlsReloader(
        tls.files,
        (m) => {
          servers.forEach((s) => s.updateSecureContext({ key: m.key, cert: m.cert }));
          noteCertificate(m, tls.files.certFile);
        },
        log,
        undefined,
        deps.tlsPollMs,
      )
    : undefined;
  if (reloader && tls?.settings.watch) reloader.watch();

  async function handleData(stream: SMTPServerDataStream, session: SMTPServerSession): Promise<string> {
    const recipients = recipientsOf(session);
    const deliveries = planDeliveries(recipients);
    const sender = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
    // The client a trusted relay forwarded with XFORWARD, else the peer: what SPF judges and the envelope records.
    const client = transactionClient(session);
    const meta: Record<string, unknown> = {};
    // The relay itself is kept with the message (the admin API shows meta), not in the webhook payload.
    if (client.relay) meta.relay = client.relay;
    let auth: AuthenticationRun | undefined;
    if (authenticator) auth = authenticator.start({ ip: client.address, helo: client.helo, sender });
    const run = auth;
    const filter = createDataFilter({
      bareLf: smtp.bare_lf,
      maxBytes: smtp.max_message_bytes,
      maxHeaderBytes: smtp.limits.max_header_bytes,
      maxReceived: smtp.limits.max_received_headers,
      maxMimeParts: smtp.limits.max_mime_parts,
      maxMimeDepth: smtp.limits.max_mime_depth,
      ...(run
        ? {
            tap: run,
            onHeaderEnd: (stats) => run.headerEnd(stats),
            // Authentication finishes before the last byte is handed over, so the results go into this
            // message's meta and a DMARC refusal happens before anything is committed.
            beforeEnd: async () => {
              const o = await run.outcome;
              meta.authentication = o.authentication;
              meta.authentication_results = o.authenticationResults;
              if (o.dmarcRejectDomain && deliveries.some((d) => dmarcRejectRoutes.has(d.route))) {
                throw new MessageRefused(Reply.DmarcReject(o.dmarcRejectDomain), 'DMARC policy reject');
              }
              if (o.unevaluated && deliveries.some((d) => dmarcRejectRoutes.has(d.route))) {
                throw new MessageRefused(Reply.DmarcUnevaluated, 'header too large for a DMARC check');
              }
            },
          }
        : {}),
    });
    stream.once('error', (err) => filter.destroy(err));
    stream.pipe(filter);
    try {
      const result = await spool.accept({
        source: 'smtp',
        envelope: {
          mailFrom: sender,
          rcptTo: recipients,
          remoteAddress: client.address,
          helo: client.helo,
          tls: tlsInfo(session),
        },
        deliveries,
        body: filter,
        // The filter enforces max_message_bytes on the bytes received; normalizing bare LFs may add up to as many again.
        maxBytes: smtp.max_message_bytes * 2,
        ...(run || client.relay ? { meta } : {}),
      });
      metrics.messagesAccepted.inc({ source: 'smtp' });
      log.info({ cid: session.id, msgId: result.id, size: result.size, rcpts: recipients.length, routes: deliveries.map((d) => d.route), normalized: filter.stats.normalized, ...(client.relay ? { remote: client.address, relay: client.relay.address } : {}) }, 'message accepted');
      return result.id;
    } catch (err) {
      // smtp-server answers once the client's final dot arrived: keep reading what is still coming.
      stream.unpipe(filter);
      if (!stream.readableEnded && !stream.destroyed) stream.resume();
      throw err;
    }
  }

  /** One delivery per route, each listing that route's recipients (routing already vetted every RCPT). */
  function planDeliveries(rcptTo: string[]): PlannedDelivery[] {
    const byRoute = new Map<string, Recipient[]>();
    for (const address of rcptTo) {
      const m = match(address);
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
    if (err instanceof MessageRefused) {
      metrics.messagesRejected.inc({ reason: err.reason });
      log.info({ cid: session.id, reason: err.reason }, 'message refused');
      return new SmtpReplyError(err.reply);
    }
    if (err instanceof MailhookError && err.code === 'MESSAGE_TOO_LARGE') {
      metrics.messagesRejected.inc({ reason: 'too_large' });
      log.info({ cid: session.id }, 'message refused: over the size limit');
      return new SmtpReplyError(Reply.MessageTooLarge);
    }
    if (err instanceof MailhookError && err.code === 'SPOOL_CLOSED') return new SmtpReplyError(Reply.ShuttingDown);
    const cause = err instanceof Error ? (err.cause as { code?: unknown } | undefined) : undefined;
    const code = typeof cause?.code === 'string' ? cause.code : '';
    if (code === 'EARLY_DATA' || code === 'DATA_TIMEOUT' || code === 'ECONNECTION') {
      // The session is gone already; nothing is stored and nobody reads a reply.
      log.info({ cid: session.id, reason: code }, 'message not stored: the session ended during DATA');
      return new SmtpReplyError(Reply.SpoolUnavailable);
    }
    if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'SQLITE_FULL') {
      metrics.messagesRejected.inc({ reason: 'disk_full' });
      log.error({ cid: session.id, err }, 'message not stored: no space left; answered 452');
      return new SmtpReplyError(Reply.InsufficientStorage);
    }
    metrics.messagesRejected.inc({ reason: 'spool_error' });
    log.error({ cid: session.id, err }, 'message not stored; answered 451');
    return new SmtpReplyError(Reply.SpoolUnavailable);
  }

  let implicitAddress: { host: string; port: number } | undefined;
  function listenOn(s: SMTPServer, at: { host: string; port: number }, key: string): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(listenError('SMTP', at, key, err, config.fromEnvironment?.[key]));
      s.server.once('error', onError);
      s.listen(at.port, at.host, () => {
        s.server.off('error', onError);
        const addr = s.server.address();
        resolve(typeof addr === 'object' && addr ? { host: addr.address, port: addr.port } : at);
      });
    });
  }

  return {
    server,
    implicitServer,
    get implicitAddress() {
      return implicitAddress;
    },
    limits,
    isListening: () => listening && !draining,
    hasDiskSpace: () => freeDisk() >= smtp.limits.min_free_disk_bytes,
    async listen() {
      const main = await listenOn(server, smtp.listen, 'smtp.listen');
      if (implicitServer && tls?.settings.implicit_listen) implicitAddress = await listenOn(implicitServer, tls.settings.implicit_listen, 'smtp.tls.implicit_listen');
      listening = true;
      return main;
    },
    reloadTls(reason: string) {
      return reloader ? reloader.reload(reason) : false;
    },
    stopTlsWatch() {
      reloader?.close();
    },
    async shutdown(graceMs: number) {
      draining = true;
      reloader?.close();
      await waitWithGrace(Promise.allSettled([...inFlight]), graceMs);
      // smtp-server answers 421 to every further command and closes idle sessions.
      await Promise.all(
        servers.map(
          (s) =>
            new Promise<void>((resolve) => {
              s.options.closeTimeout = Math.min(graceMs, 2000);
              s.close(() => resolve());
            }),
        ),
      );
      listening = false;
      await verifyAgent?.close();
    },
  };
}

/**
 * When two RCPTs name the same recipient: the same route and key (keys are case-sensitive) and the same address
 * ignoring ASCII case, after routing (domain as A-labels, an IP literal mapped, a needless quoting dropped).
 */
function recipientIdentity(m: Extract<RouteMatch, { ok: true }>): string {
  return `${m.route}\0${m.key ?? ''}\0${lowerAscii(m.address)}`;
}

function normalizeIp(ip: string): string {
  const v = ip.trim();
  return isIP(v) === 6 ? normalizeIPv6(v).toLowerCase() : v;
}

function tlsInfo(session: SMTPServerSession): TlsInfo | null {
  if (!session.secure || !session.tlsOptions) return null;
  return { protocol: session.tlsOptions.version ?? 'TLS', cipher: session.tlsOptions.name ?? '' };
}
