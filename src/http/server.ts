// The HTTP listener (fastify): liveness, readiness, Prometheus metrics and the sink route's message list.
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { timingSafeEqual, createHash } from 'node:crypto';
import type { Logger } from '../core/logger.js';
import type { Metrics } from '../core/metrics.js';
import type { Config } from '../config/load.js';
import type { Spool } from '../spool/spool.js';
import { MailhookError } from '../core/errors.js';
import { systemClock, type Clock } from '../core/clock.js';
import { registerAdmin, type MailboxProvider } from './admin/index.js';
import { registerDashboard } from './dashboard/index.js';
import { GUESS_LIMIT, LoggedOutSessions, TokenGuesses } from './admin/auth.js';
import type { RouteState } from '../delivery/worker.js';
import { DELIVERY_STATUSES } from '../spool/queries.js';
import { RouteMethods } from './methods.js';

/** the longest path parameter (fastify's default): a longer one is refused before routing (414) */
const MAX_PARAM_LENGTH = 100;

export interface HttpDeps {
  config: Config;
  spool: Spool;
  log: Logger;
  metrics: Metrics;
  /** readiness checks beyond the spool, e.g. "SMTP is listening": what taking mail over SMTP needs */
  readiness: () => Record<string, boolean>;
  clock?: Clock;
  /** wakes the delivery worker after an operator replays or retries deliveries, lifting routes' Retry-After pauses */
  wakeDelivery?: (routes?: string[]) => string[];
  /** routes whose consumer is failing or paused by a Retry-After (the delivery loop's view), for the admin API */
  routeStates?: () => Map<string, RouteState>;
  /** IMAP mailbox states for the admin API and dashboard, when an IMAP bridge runs */
  mailboxes?: MailboxProvider;
}

export function buildHttpApp(deps: HttpDeps): FastifyInstance {
  const { config, spool, metrics } = deps;
  const clock = deps.clock ?? systemClock;
  const app = Fastify({
    loggerInstance: deps.log.child({ part: 'http' }) as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 1024 * 1024,
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    frameworkErrors: (err, req, reply) => void (reply as FastifyReply).code(err.statusCode ?? 400).send(frameworkError(err, req.url)),
  });
  // Every route as registered (the admin API's and dashboard's too): a wrong method is a 405 naming the right ones.
  const methods = new RouteMethods();
  app.addHook('onRoute', (r) => methods.add(r.url ?? r.path, r.method));
  app.setNotFoundHandler((req, reply) => methods.reply(req, reply, (path) => `no route ${req.method} ${path}`));

  app.get('/healthz', async () => ({ status: 'ok' }));

  // Ready means able to take mail: a load balancer or Kubernetes Service that stops sending SMTP to an instance
  // whose IMAP mailbox cannot be read would stop all mail for a problem of one mailbox's. The mailboxes' states are
  // in the body; ?mailboxes=required counts them too (for a monitor, or an instance that reads mailboxes only).
  app.get('/readyz', async (req, reply) => {
    // Other parameters are left alone (a monitor's cache-buster must not read as "down"); a wrong value is not.
    const mode = (req.query as Record<string, unknown>).mailboxes;
    if (mode !== undefined && mode !== 'required') {
      return reply.code(400).send({ error: 'bad_request', message: `mailboxes=${JSON.stringify(mode)}: /readyz takes mailboxes=required (count IMAP/Graph mailboxes not being read as not ready) or nothing` });
    }
    const states = deps.mailboxes ? await deps.mailboxes() : undefined;
    const mailboxChecks = mode === 'required' && states ? Object.fromEntries(states.map((m) => [`mailbox:${m.name}`, m.healthy])) : {};
    const checks = { spool_writable: spool.isWritable(), ...deps.readiness(), ...mailboxChecks };
    const ready = Object.values(checks).every(Boolean);
    // Mailbox states (connected, idle, backoff, last error) say whether each is read, and why not.
    const mailboxes = states ? { mailboxes: states } : {};
    return reply.code(ready ? 200 : 503).send({ status: ready ? 'ready' : 'not ready', checks, ...mailboxes });
  });

  app.get('/metrics', async (_req, reply) => {
    setQueueMetrics(metrics, spool, config.routes.map((r) => r.name), clock.now());
    metrics.spoolBytes.set(spool.diskUsage());
    return reply.type(metrics.registry.contentType).send(await metrics.registry.metrics());
  });

  /** wrong admin tokens by address: the admin API, the dashboard login and the sink's token check count together */
  const guesses = new TokenGuesses((remote) => deps.log.warn({ part: 'admin', remote }, `${GUESS_LIMIT} wrong admin tokens within a minute from one address; it is refused until they age out`));
  const sinkRoutes = config.routes.filter((r) => r.sink).map((r) => r.name);
  if (sinkRoutes.length > 0) {
    const guard = async (req: FastifyRequest, reply: FastifyReply) => {
      const address = req.socket.remoteAddress ?? '';
      const refused = guesses.refusal(address, clock.now());
      if (refused) {
        reply.header('retry-after', refused.retryAfter);
        throw Object.assign(new Error(refused.message), { statusCode: 429 });
      }
      const may = mayReadSink(req, config);
      if (may === 'wrong-token') guesses.fail(address, clock.now());
      if (may !== true) {
        throw Object.assign(new Error('the sink is readable from loopback (asked for as localhost, 127.0.0.1 or [::1], not through a proxy), or with the admin token'), { statusCode: 403 });
      }
    };
    app.get('/sink/messages', { preHandler: guard, schema: { querystring: { type: 'object', properties: { limit: { type: 'integer', minimum: 1, maximum: 500, default: 50 } }, additionalProperties: false } } }, async (req) => {
      const { limit } = req.query as { limit: number };
      const placeholders = sinkRoutes.map(() => '?').join(',');
      const rows = spool.db
        .prepare(
          `SELECT m.id, m.received_at, m.mail_from, d.route, d.recipients, m.size FROM deliveries d JOIN messages m ON m.id = d.message_id
           WHERE d.route IN (${placeholders}) ORDER BY m.received_at DESC, m.id DESC LIMIT ?`,
        )
        .all(...sinkRoutes, limit) as Array<{ id: string; received_at: number; mail_from: string; route: string; recipients: string; size: number }>;
      return {
        messages: rows.map((r) => ({
          id: r.id,
          received_at: new Date(r.received_at).toISOString(),
          mail_from: r.mail_from,
          route: r.route,
          recipients: JSON.parse(r.recipients) as unknown,
          size: r.size,
          raw_url: `/sink/messages/${r.id}/raw`,
        })),
      };
    });
    // Only messages of sink routes: a webhook route's messages are not the sink's to show (their ids reach
    // consumers, logs and senders, and loopback needs no token).
    const isSinkMessage = spool.db.prepare(`SELECT 1 FROM deliveries WHERE message_id = ? AND route IN (${sinkRoutes.map(() => '?').join(',')}) LIMIT 1`).pluck();
    app.get('/sink/messages/:id/raw', { preHandler: guard, schema: { params: { type: 'object', properties: { id: { type: 'string', pattern: '^[a-z0-9]{1,64}$' } }, required: ['id'] } } }, async (req, reply) => {
      const { id } = req.params as { id: string };
      if (isSinkMessage.get(id, ...sinkRoutes) === undefined) return reply.code(404).send({ error: 'not_found', message: `no message ${id} in the sink` });
      try {
        return reply.type('message/rfc822').send(spool.openRaw(id));
      } catch (err) {
        if (err instanceof MailhookError && err.code === 'MESSAGE_NOT_FOUND') return reply.code(404).send({ error: 'not_found', message: err.message });
        throw err;
      }
    });
  }

  // Admin API (/api) and dashboard (/): off, with a message saying how to turn them on, when no admin token is set.
  const loggedOut = new LoggedOutSessions();
  registerAdmin(app, { config, spool, log: deps.log.child({ part: 'admin' }), clock, wakeDelivery: deps.wakeDelivery ?? (() => []), routeStates: deps.routeStates ?? (() => new Map()), mailboxes: deps.mailboxes, loggedOut, guesses, methods });
  registerDashboard(app, { config, clock, loggedOut });

  app.setErrorHandler((err: { statusCode?: number; message: string; validation?: unknown }, _req, reply) => {
    const status = err.statusCode && err.statusCode >= 400 ? err.statusCode : 500;
    if (status >= 500) deps.log.error({ err }, 'http handler error');
    return reply.code(status).send({ error: status >= 500 ? 'internal_error' : err.validation ? 'bad_request' : 'refused', message: err.message });
  });

  return app;
}

/** fastify's own refusals before routing (a path that is no valid URL, a path segment over maxParamLength), as `{error, message}`. */
function frameworkError(err: { code?: string; statusCode?: number }, url: string): { error: string; message: string } {
  const whole = url.split('?')[0] ?? url;
  const path = whole.length > 200 ? `${whole.slice(0, 200)}…` : whole;
  if (err.code === 'FST_ERR_MAX_PARAM_LENGTH') return { error: 'uri_too_long', message: `a segment of the path ${path} is over ${MAX_PARAM_LENGTH} characters; ids are at most 64` };
  if (err.code === 'FST_ERR_BAD_URL') return { error: 'bad_request', message: `the path ${path} is no valid URL (check its percent-encoding)` };
  return { error: 'internal_error', message: 'internal error; see the mailhook log' };
}

/**
 * The queue gauges from the spool, at each scrape: every configured route has its series (zeros included) and
 * routes still in the spool but no longer configured keep theirs until their deliveries are gone.
 */
function setQueueMetrics(metrics: Metrics, spool: Spool, configured: string[], now: number): void {
  const { counts, oldestUndelivered } = spool.jobs.routeCounts();
  metrics.queueDepth.reset();
  metrics.oldestUndelivered.reset();
  const routes = new Set([...configured, ...oldestUndelivered.keys()]);
  for (const route of routes) {
    for (const status of DELIVERY_STATUSES) metrics.queueDepth.set({ route, status }, 0);
    const at = oldestUndelivered.get(route) ?? null;
    metrics.oldestUndelivered.set({ route }, at === null ? 0 : Math.max(0, (now - at) / 1000));
  }
  for (const { route, status, n } of counts) metrics.queueDepth.set({ route, status }, n);
}

/** true, false, or 'wrong-token' for a bearer token that is not the admin token (counted by TokenGuesses). */
function mayReadSink(req: FastifyRequest, config: Config): boolean | 'wrong-token' {
  const token = config.http.adminToken;
  const auth = req.headers.authorization;
  if (token && auth?.startsWith('Bearer ')) return constantTimeEqual(auth.slice(7), token.reveal()) || 'wrong-token';
  const ip = req.socket.remoteAddress ?? '';
  return (ip === '127.0.0.1' || ip === '::1' || ip === '::ffff:127.0.0.1') && isLoopbackName(req.headers.host) && !PROXY_HEADERS.some((h) => h in req.headers);
}

/** Headers a reverse proxy adds: a request that passed one came from wherever the proxy's clients are, not loopback. */
const PROXY_HEADERS = ['forwarded', 'x-forwarded-for', 'x-forwarded-host', 'x-real-ip', 'via'];

/**
 * A request from loopback must also have asked for a loopback name: a web page whose own host name an attacker
 * has re-pointed at 127.0.0.1 (DNS rebinding) reaches the listener from the browser on this machine, but its
 * Host header still names the attacker's host. *.localhost never leaves the machine (RFC 6761). A client that
 * sends no Host (HTTP/1.0) is no browser.
 */
function isLoopbackName(host: string | undefined): boolean {
  if (host === undefined) return true;
  const h = host.toLowerCase();
  const name = h.startsWith('[') ? h.slice(0, h.indexOf(']') + 1) : h.replace(/:\d*$/, '');
  return name === 'localhost' || name.endsWith('.localhost') || name === '127.0.0.1' || name === '[::1]';
}

export function constantTimeEqual(a: string, b: string): boolean {
  // Hash first so the comparison takes the same time whatever the lengths.
  const ha = createHash('sha256').update(a).digest();
  const hb = createHash('sha256').update(b).digest();
  return timingSafeEqual(ha, hb);
}
