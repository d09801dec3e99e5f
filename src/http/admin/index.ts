// The admin API under /api: token auth, JSON-schema-validated routes over the spool's queries, JSON problems, OpenAPI.
import { readFileSync } from 'node:fs';
import type { FastifyInstance, FastifySchema } from 'fastify';
import type { Clock } from '../../core/clock.js';
import type { Logger } from '../../core/logger.js';
import { MailhookError } from '../../core/errors.js';
import type { Config } from '../../config/load.js';
import type { RouteState } from '../../delivery/worker.js';
import type { Spool } from '../../spool/spool.js';
import { decodeCursor, type MessageFilter, type DeliverySummary, type MessageSummary, type AttemptEntry } from '../../spool/queries.js';
import type { DeliveryStatus } from '../../spool/types.js';
import { parseMessage } from '../../parse/message.js';
import { htmlExcerpt } from '../../parse/excerpt.js';
import { authenticate, issueSession, readCookie, sessionCookie, viaHttps, SESSION_COOKIE, type LoggedOutSessions, type TokenGuesses } from './auth.js';
import { buildOpenApi, type RouteDoc } from './openapi.js';
import * as S from './schemas.js';
import { constantTimeEqual } from '../server.js';
import type { RouteMethods } from '../methods.js';
import { endpointOf } from '../../core/url.js';

/** One IMAP mailbox's state as the bridge reports it; any further fields are shown as they are. */
export interface MailboxState {
  name: string;
  state: string;
  /** being read (connected, idle or polling) */
  healthy: boolean;
  [field: string]: unknown;
}
export type MailboxProvider = () => MailboxState[] | Promise<MailboxState[]>;

export interface AdminDeps {
  config: Config;
  spool: Spool;
  log: Logger;
  clock: Clock;
  /**
   * wakes the delivery worker after a replay or retry, so those deliveries go out now; lifts the Retry-After pauses
   * of these routes (of every route when absent) and returns the routes whose pause it lifted
   */
  wakeDelivery: (routes?: string[]) => string[];
  /** routes whose consumer is failing or paused by a Retry-After, from the delivery loop */
  routeStates: () => Map<string, RouteState>;
  /** IMAP mailbox states, when an IMAP bridge runs */
  mailboxes?: MailboxProvider;
  /** dashboard sessions logged out, shared with the dashboard's pages */
  loggedOut: LoggedOutSessions;
  /** the methods each path answers (a wrong one is a 405) */
  methods: RouteMethods;
  /** wrong admin tokens by remote address, shared with the sink's token check */
  guesses: TokenGuesses;
}

function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return '0.0.0';
  }
}

/** Messages larger than this are not parsed for the detail view (the raw download still works). */
const SUMMARY_MAX_BYTES = 10 * 1024 * 1024;
const MAX_WINDOW_MS = 7 * 86_400_000;

export const ADMIN_DISABLED_MESSAGE = 'the admin API is off: set http.admin_token_file (or http.admin_token, or MAILHOOK_ADMIN_TOKEN) and restart';

type HttpProblem = Error & { statusCode: number; code?: string };
function problem(statusCode: number, message: string): HttpProblem {
  return Object.assign(new Error(message), { statusCode });
}

const ERROR_NAMES: Record<number, string> = { 400: 'bad_request', 401: 'unauthorized', 403: 'forbidden', 404: 'not_found', 405: 'method_not_allowed', 409: 'conflict', 413: 'too_large', 415: 'unsupported_media_type', 429: 'too_many_requests' };

/** Registers /api/*. Without an admin token every /api path answers 404 admin_api_disabled. */
export function registerAdmin(app: FastifyInstance, deps: AdminDeps): void {
  const secret = deps.config.http.adminToken;
  if (!secret) {
    app.register(
      async (api) => {
        api.all('/*', async (_req, reply) => reply.code(404).send({ error: 'admin_api_disabled', message: ADMIN_DISABLED_MESSAGE }));
      },
      { prefix: '/api' },
    );
    return;
  }
  app.register(async (api) => adminRoutes(api, deps, () => secret.reveal()), { prefix: '/api' });
}

async function adminRoutes(api: FastifyInstance, deps: AdminDeps, token: () => string): Promise<void> {
  const { spool, config, clock, log } = deps;
  const routes: RouteDoc[] = [];
  api.addHook('onRoute', (r) => {
    routes.push({ method: r.method, url: r.url ?? r.path, schema: r.schema as RouteDoc['schema'], openapi: (r.config as { openapi?: RouteDoc['openapi'] } | undefined)?.openapi });
  });

  api.addHook('onRequest', async (req, reply) => {
    reply.header('cache-control', 'no-store');
    if ((req.routeOptions.config as { openapi?: RouteDoc['openapi'] } | undefined)?.openapi?.public) return;
    refuseGuesser(req, reply);
    const result = authenticate(req, token(), clock.now(), deps.loggedOut);
    if (!result.ok) {
      if (result.guess) wrongToken(req);
      reply.header('www-authenticate', 'Bearer realm="mailhook"');
      throw problem(401, result.reason);
    }
  });

  /**
   * A route filter names a configured route or one still in the spool: a typo must not answer "0 deliveries" during
   * an incident as if nothing were waiting.
   */
  function knownRoute(route: string | undefined): void {
    if (route === undefined || config.routes.some((r) => r.name === route) || spool.queries.routeExists(route)) return;
    throw problem(404, `no route "${route}"; configured routes: ${config.routes.map((r) => r.name).join(', ')}`);
  }

  /**
   * Routes whose deliveries a replay must leave alone: sinks deliver nothing, and a route gone from the configuration
   * would dead-letter a replayed delivery again at once (an error line and an attempt each, while the operator was
   * told it was replayed). Naming such a route is a 409 that says how to bring it back.
   */
  function unreplayableRoutes(route: string | undefined): string[] {
    const configured = new Set(config.routes.map((r) => r.name));
    if (route !== undefined && !configured.has(route)) throw problem(409, goneRoute(route));
    return [...config.routes.filter((r) => r.sink).map((r) => r.name), ...spool.queries.routesInSpool().filter((r) => !configured.has(r))];
  }

  /** Why a route no longer configured is not replayed, and how to bring it back. */
  function goneRoute(route: string): string {
    return `route "${route}" is no longer in the configuration: a replayed delivery would be dead-lettered again at once; add the route back (or a route with renamed_from: [${route}]), restart mailhook, then replay`;
  }

  /**
   * The named ids a replay leaves out, each with why (its route, or its status against the one asked for): answered
   * with a bare "replayed 0", an operator replaying a delivery of a removed route, or one still pending, would not
   * learn what to do. `replayed`: the ids the replay took (absent for a dry run, which takes none).
   */
  function skippedIds(ids: string[] | undefined, excludeRoutes: string[], asked: 'dead' | 'delivered', replayed?: string[]): Array<{ id: string; route: string; status: string; reason: string }> {
    const sinks = new Set(config.routes.filter((r) => r.sink).map((r) => r.name));
    const taken = new Set(replayed);
    return (ids ?? []).flatMap((id) => {
      const d = taken.has(id) ? undefined : spool.getDelivery(id);
      if (!d) return [];
      let reason: string;
      if (sinks.has(d.route)) reason = 'sink route: nothing to deliver';
      else if (excludeRoutes.includes(d.route)) reason = goneRoute(d.route);
      else if (d.status !== asked) reason = notReplayable(d.status);
      else if (replayed) reason = 'its state changed meanwhile';
      else return []; // a dry run: it would be replayed
      return [{ id, route: d.route, status: d.status, reason }];
    });
  }

  /** Why a delivery whose status is not the one a replay asked for is left alone, and what takes it instead. */
  function notReplayable(status: string): string {
    switch (status) {
      case 'pending':
        return 'pending: it goes out when due (mailhook retry --delivery ID sends it now)';
      case 'delivering':
        return 'in flight: its attempt is under way';
      case 'dropped':
        return 'dropped by its route (drop_automatic): it would be dropped again';
      case 'delivered':
        return 'delivered: send it again with status delivered (mailhook replay --delivered)';
      default:
        return 'dead-lettered: replay it with status dead (without --delivered)';
    }
  }

  /**
   * Ids a bulk request names must all be deliveries in the spool: a typo or a message id would otherwise answer 0
   * and look like "nothing to do". 404 naming them, nothing changed; a message id gets its redeliver route.
   */
  function knownDeliveries(ids: string[] | undefined): void {
    const unknown = (ids ?? []).filter((id) => spool.getDelivery(id) === undefined);
    if (unknown.length === 0) return;
    const messages = unknown.filter((id) => spool.getMessage(id) !== undefined);
    const listed = unknown.slice(0, 10).join(', ') + (unknown.length > 10 ? ` and ${unknown.length - 10} more` : '');
    const hint = messages.length > 0
      ? `; ${messages.slice(0, 3).join(', ')} ${messages.length === 1 ? 'is a message id' : 'are message ids'}: GET /api/messages/{id} (mailhook messages show) lists its delivery ids, POST /api/messages/{id}/redeliver sends it again`
      : '; GET /api/messages/{id} (mailhook messages show) lists a message\'s delivery ids';
    throw problem(404, `no delivery ${listed} in the spool${hint}; nothing was done`);
  }

  /** The routes of these deliveries (whose Retry-After pauses an operator's replay or retry lifts). */
  function routesOf(ids: string[]): string[] {
    return [...new Set(ids.flatMap((id) => spool.getDelivery(id)?.route ?? []))];
  }

  /** 429 for an address that gave GUESS_LIMIT wrong tokens within the window (see TokenGuesses). */
  function refuseGuesser(req: { socket: { remoteAddress?: string } }, reply: { header: (k: string, v: string) => unknown }): void {
    const refused = deps.guesses.refusal(req.socket.remoteAddress ?? '', clock.now());
    if (!refused) return;
    reply.header('retry-after', refused.retryAfter);
    throw problem(429, refused.message);
  }

  function wrongToken(req: { socket: { remoteAddress?: string } }): void {
    deps.guesses.fail(req.socket.remoteAddress ?? '', clock.now());
  }

  // fastify's validator silently drops properties a schema does not list; an operator's typo must be an error instead.
  api.addHook('preValidation', async (req) => {
    const schema = req.routeOptions.schema as { querystring?: { properties?: object }; body?: { properties?: object } } | undefined;
    // A POST without a body (curl -X POST …) takes the defaults, as an empty JSON object would.
    if (schema?.body && req.body === undefined) req.body = {};
    rejectUnknown('query parameter', req.query, schema?.querystring?.properties);
    rejectUnknown('body field', req.body, schema?.body?.properties);
    rejectWrongTypes(req.body, schema?.body?.properties);
  });

  api.setErrorHandler((err: Error & { statusCode?: number; validation?: unknown; code?: string }, req, reply) => {
    if (err instanceof MailhookError) {
      const status = err.code === 'MESSAGE_NOT_FOUND' ? 404 : err.userFault ? 400 : 500;
      if (status === 500) log.error({ err, url: req.url }, 'admin API error');
      return reply.code(status).send({ error: ERROR_NAMES[status] ?? 'internal_error', message: status === 500 ? 'internal error; see the mailhook log' : err.message });
    }
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    if (status === 500) {
      log.error({ err, url: req.url }, 'admin API error');
      return reply.code(500).send({ error: 'internal_error', message: 'internal error; see the mailhook log' });
    }
    if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
      const type = String(req.headers['content-type'] ?? '').slice(0, 100);
      return reply.code(415).send({ error: 'unsupported_media_type', message: `the request needs a JSON object body (Content-Type: application/json), not ${type}` });
    }
    return reply.code(status).send({ error: ERROR_NAMES[status] ?? 'bad_request', message: validationMessage(err) ?? err.message });
  });
  api.setNotFoundHandler((req, reply) => deps.methods.reply(req, reply, (path) => `no admin API route ${req.method} ${path}; see /api/openapi.json`));

  const problems = { 400: S.problem, 401: S.problem, 404: S.problem } as const;

  api.get('/messages', {
    schema: { summary: 'List messages, newest first', description: 'Keyset pagination: pass next_cursor as cursor for the next page. Filters combine (AND).', tags: ['messages'], querystring: S.listQuery, response: { 200: S.listResponse, ...problems } },
  }, async (req) => {
    const q = req.query as { status?: DeliveryStatus; route?: string; recipient?: string; key?: string; sender?: string; since?: string; until?: string; cursor?: string; limit: number };
    const filter: MessageFilter = {
      status: q.status,
      route: q.route,
      recipient: q.recipient,
      key: q.key,
      sender: q.sender,
      ...timeRange(q.since, q.until),
    };
    const cursor = q.cursor !== undefined ? decodeCursor(q.cursor) : undefined;
    const page = spool.queries.listMessages(stripUndefined(filter), { cursor, limit: q.limit });
    return { messages: page.messages.map(messageOut), next_cursor: page.next_cursor };
  });

  api.get('/messages/:id', {
    schema: { summary: "A message: envelope, parsed summary, every delivery and its attempts", tags: ['messages'], params: S.idParams, response: { 200: S.detailResponse, ...problems } },
  }, async (req) => {
    const { id } = req.params as { id: string };
    const m = spool.queries.getMessageDetail(id);
    if (!m) throw new MailhookError('MESSAGE_NOT_FOUND', `no message ${id} in the spool (removed by retention or never received)`, { userFault: true });
    let summary: Record<string, unknown> | null = null;
    let parseError: string | null = null;
    if (m.size > SUMMARY_MAX_BYTES) {
      parseError = `the message is ${m.size} bytes; not parsed here, download it from raw_url`;
    } else {
      try {
        const { message } = await parseMessage(await spool.readRaw(id), { htmlToText: false });
        summary = {
          message_id: message.message_id,
          subject: message.subject,
          from: message.from ? formatAddress(message.from) : null,
          to: message.to.map(formatAddress),
          cc: message.cc.map(formatAddress),
          date: message.date,
          text_excerpt: message.text ? message.text.slice(0, 2000) : message.html ? htmlExcerpt(message.html, 2000) : null,
          attachments: message.attachments.map((a) => ({ filename: a.filename, content_type: a.content_type, size: a.size })),
        };
      } catch (err) {
        parseError = `cannot parse the message: ${(err as Error).message}`;
      }
    }
    return {
      ...messageOut({ ...m, deliveries: [] }),
      envelope: { mail_from: m.mail_from, rcpt_to: m.rcpt_to, remote_address: m.remote_address, helo: m.helo, tls: m.tls },
      dedupe_key: m.dedupe_key,
      meta: m.meta,
      summary,
      parse_error: parseError,
      raw_url: `/api/messages/${m.id}/raw`,
      deliveries: m.deliveries.map((d) => ({ ...deliveryOut(d), created_at: iso(d.created_at), updated_at: iso(d.updated_at), attempt_log: d.attempt_log.map(attemptOut) })),
    };
  });

  api.get('/messages/:id/raw', {
    schema: { summary: 'The message exactly as received (message/rfc822)', tags: ['messages'], params: S.idParams },
    config: { openapi: { responses: { '200': { description: 'the message bytes', content: { 'message/rfc822': { schema: { type: 'string', format: 'binary' } } } } } } },
  }, async (req, reply) => {
    const { id } = req.params as { id: string };
    const stream = spool.openRaw(id); // throws MESSAGE_NOT_FOUND
    return reply.type('message/rfc822').header('content-disposition', `attachment; filename="${id}.eml"`).send(stream);
  });

  api.post('/messages/:id/redeliver', {
    schema: {
      summary: 'Deliver a message again',
      description: 'Every finished (delivered or dead) delivery of the message, or the one to `route`, goes back to pending, due now, with a fresh attempt budget.',
      tags: ['messages'],
      params: S.idParams,
      body: S.redeliverBody,
      response: { 200: S.redeliverResponse, 409: S.problem, ...problems },
    },
  }, async (req) => {
    const { id } = req.params as { id: string };
    const body = (req.body ?? {}) as { route?: string };
    const m = spool.queries.getMessageDetail(id);
    if (!m) throw new MailhookError('MESSAGE_NOT_FOUND', `no message ${id} in the spool`, { userFault: true });
    const sinks = new Set(config.routes.filter((r) => r.sink).map((r) => r.name));
    const chosen = m.deliveries.filter((d) => body.route === undefined || d.route === body.route);
    if (chosen.length === 0) throw problem(404, `message ${id} has no delivery to route "${body.route}"; its routes: ${m.deliveries.map((d) => d.route).join(', ')}`);
    const skipped: Array<{ id: string; route: string; status: string; reason: string }> = [];
    const ids: string[] = [];
    for (const d of chosen) {
      if (sinks.has(d.route)) skipped.push({ id: d.id, route: d.route, status: d.status, reason: 'sink route: nothing to deliver' });
      else if (!config.routes.some((r) => r.name === d.route)) skipped.push({ id: d.id, route: d.route, status: d.status, reason: 'route no longer in the configuration: add it back and restart first' });
      else if (d.status === 'pending' || d.status === 'delivering' || d.status === 'dropped') skipped.push({ id: d.id, route: d.route, status: d.status, reason: notReplayable(d.status) });
      else ids.push(d.id);
    }
    if (ids.length === 0) throw problem(409, `nothing to redeliver: ${skipped.map((s) => `${s.route}: ${s.reason}`).join('; ')}`);
    const result = spool.queries.replay({ ids, statuses: ['dead', 'delivered'], asOf: clock.now(), excludeRoutes: [...sinks], limit: ids.length }, clock.now());
    if (result.replayed.length > 0) deps.wakeDelivery(routesOf(result.replayed));
    for (const lost of ids.filter((x) => !result.replayed.includes(x))) {
      const d = chosen.find((c) => c.id === lost)!;
      skipped.push({ id: d.id, route: d.route, status: d.status, reason: 'its state changed meanwhile' });
    }
    return { message_id: id, requeued: result.replayed, skipped };
  });

  api.post('/deliveries/replay', {
    schema: {
      summary: 'Replay deliveries in bulk',
      description:
        'Replays dead-lettered (or, with status=delivered, delivered) deliveries named by ids or matching a filter. A replayed delivery is pending, due now, ' +
        'with its attempt counter reset (a fresh budget of delivery.retry.max_attempts); its attempt history stays. At most `limit` per call, oldest first: ' +
        'call again with the returned as_of while remaining > 0.',
      tags: ['deliveries'],
      body: S.replayBody,
      response: { 200: S.replayResponse, 409: S.problem, ...problems },
    },
  }, async (req) => {
    const b = req.body as BulkBody & { status: 'dead' | 'delivered'; as_of?: string; limit: number; dry_run: boolean };
    if (b.ids && b.ids.length > b.limit) throw problem(400, `ids: ${b.ids.length} ids but limit is ${b.limit}; raise limit or send fewer ids`);
    const filter = bulkFilter(b, `replay every ${b.status === 'dead' ? 'dead-lettered' : 'delivered'} delivery`);
    knownRoute(filter.route);
    knownDeliveries(b.ids);
    const now = clock.now();
    const asOf = parseTime('as_of', b.as_of) ?? now;
    const excludeRoutes = unreplayableRoutes(filter.route);
    const sel = { ids: b.ids, filter, statuses: [b.status], asOf, excludeRoutes, limit: b.limit };
    if (b.dry_run) return { replayed: 0, ids: [], remaining: spool.queries.countReplayable(sel), as_of: iso(asOf), dry_run: true, skipped: skippedIds(b.ids, excludeRoutes, b.status) };
    const result = spool.queries.replay(sel, now);
    if (result.replayed.length > 0) deps.wakeDelivery(routesOf(result.replayed));
    log.info({ replayed: result.replayed.length, remaining: result.remaining, filter, status: b.status }, 'deliveries replayed by an operator');
    const skipped = skippedIds(b.ids, excludeRoutes, b.status, result.replayed);
    return { replayed: result.replayed.length, ids: result.replayed, remaining: result.remaining, as_of: iso(asOf), dry_run: false, skipped };
  });

  api.post('/deliveries/retry', {
    schema: {
      summary: 'Retry pending deliveries now',
      description:
        'Makes pending deliveries that wait for their next attempt (backoff, or a Retry-After) due now, named by ids or matching a filter: ' +
        'after a consumer outage the backlog goes out at once instead of within delivery.retry.max_delay_ms. Their attempt counters stay ' +
        '(max_attempts still applies); sink routes are skipped.',
      tags: ['deliveries'],
      body: S.retryBody,
      response: { 200: S.retryResponse, ...problems },
    },
  }, async (req) => {
    const b = req.body as BulkBody & { dry_run: boolean };
    const filter = bulkFilter(b, 'retry every pending delivery now');
    knownRoute(filter.route);
    knownDeliveries(b.ids);
    const excludeRoutes = config.routes.filter((r) => r.sink).map((r) => r.name);
    const now = clock.now();
    // Deliveries already due and held only by their route's Retry-After pause, counted before the retry makes
    // others due: lifting the pause sends them too, which `retried` does not count.
    const paused = [...deps.routeStates()].filter(([, s]) => s.pausedUntil !== null).map(([route]) => route);
    const held = new Map(paused.map((route) => [route, spool.jobs.dueCountOf(route, now)]));
    const retried = spool.queries.retryNow({ ids: b.ids, filter, excludeRoutes }, now, b.dry_run);
    let resumed: string[] = [];
    if (!b.dry_run) {
      // Always: deliveries already due may wait on a route's Retry-After pause, which this lifts for the routes
      // asked for (by name, or those of the deliveries named), or for all when the selection spans routes.
      const routes = b.ids ? routesOf(b.ids) : filter.route !== undefined ? [filter.route] : undefined;
      resumed = deps.wakeDelivery(routes);
      log.info({ retried, filter, resumed }, 'pending deliveries made due now by an operator');
    }
    const released = resumed.reduce((n, route) => n + (held.get(route) ?? 0), 0);
    return { retried, dry_run: b.dry_run, resumed, released };
  });

  api.delete('/messages/:id', {
    schema: { summary: 'Remove a message, its deliveries, attempts and file', tags: ['messages'], params: S.idParams, querystring: S.deleteQuery, response: { 200: S.deleteResponse, 409: S.problem, ...problems } },
  }, async (req) => {
    const { id } = req.params as { id: string };
    const { force } = req.query as { force: boolean };
    const r = spool.queries.deleteMessage(id, force);
    if (!r.deleted && r.inFlight > 0) throw problem(409, `a delivery of message ${id} is in flight; try again in a moment, or pass force=true`);
    if (!r.deleted) throw new MailhookError('MESSAGE_NOT_FOUND', `no message ${id} in the spool`, { userFault: true });
    log.info({ msgId: id }, 'message deleted by an operator');
    return { id, deleted: true };
  });

  api.get('/routes', {
    schema: { summary: 'Per-route health: queue depth, success rate and latency over a window', tags: ['routes'], querystring: S.routesQuery, response: { 200: S.routesResponse, ...problems } },
  }, async (req) => {
    const { window } = req.query as { window: string };
    const ms = windowMs(window);
    const since = clock.now() - ms;
    const configured = new Map(config.routes.map((r) => [r.name, r]));
    const health = spool.queries.routeHealth([...configured.keys()], since);
    const totals = spool.jobs.counts() as Record<string, number>;
    const states = deps.routeStates();
    return {
      window,
      since: iso(since),
      totals,
      routes: health.map((h) => {
        const r = configured.get(h.route);
        return {
          ...h,
          configured: r !== undefined,
          kind: r ? (r.sink ? 'sink' : 'webhook') : 'unknown',
          format: r?.webhook?.format ?? null,
          endpoint: r?.webhook ? endpointOf(r.webhook.url) : null,
          last_delivered_at: h.last_delivered_at === null ? null : iso(h.last_delivered_at),
          last_failure: h.last_failure ? { ...h.last_failure, at: iso(h.last_failure.at) } : null,
          consumer: consumerState(states.get(h.route)),
        };
      }),
    };
  });

  api.get('/mailboxes', {
    schema: { summary: 'IMAP mailbox states (empty when no IMAP bridge runs)', tags: ['imap'], response: { 200: S.mailboxesResponse, 401: S.problem } },
  }, async () => {
    if (!deps.mailboxes) return { enabled: false, mailboxes: [] };
    return { enabled: true, mailboxes: await deps.mailboxes() };
  });

  api.get('/session', {
    schema: { summary: 'Who is asking: checks the token or the dashboard session', tags: ['session'], response: { 200: S.sessionResponse, 401: S.problem } },
  }, async (req) => {
    const r = authenticate(req, token(), clock.now(), deps.loggedOut);
    return { authenticated: true, via: r.ok ? r.via : undefined };
  });

  api.post('/session', {
    schema: { summary: 'Dashboard login: trade the admin token for a session cookie (HttpOnly, SameSite=Strict, 12 h)', tags: ['session'], body: S.sessionBody, response: { 200: S.sessionResponse, 400: S.problem, 401: S.problem, 429: S.problem } },
    config: { openapi: { public: true } },
  }, async (req, reply) => {
    const { token: given } = req.body as { token: string };
    refuseGuesser(req, reply);
    if (!constantTimeEqual(given.trim(), token())) {
      wrongToken(req);
      log.warn({ remote: req.socket.remoteAddress }, 'dashboard login with a wrong token');
      throw problem(401, 'the admin token is wrong');
    }
    const s = issueSession(token(), clock.now());
    reply.header('set-cookie', sessionCookie(s.value, s.maxAgeSeconds, viaHttps(req)));
    return { authenticated: true, via: 'session' };
  });

  api.delete('/session', {
    schema: { summary: 'Dashboard logout: ends the session (refused from now on, until a restart) and clears its cookie', tags: ['session'], response: { 200: S.sessionResponse } },
    config: { openapi: { public: true } },
  }, async (req, reply) => {
    const session = readCookie(req.headers.cookie, SESSION_COOKIE);
    if (session !== undefined) deps.loggedOut.add(session, token(), clock.now());
    reply.header('set-cookie', sessionCookie('', 0, viaHttps(req)));
    return { authenticated: false };
  });

  let doc: Record<string, unknown> | undefined;
  api.get('/openapi.json', { schema: { summary: 'This document', tags: ['meta'] } as FastifySchema }, async () => {
    doc ??= buildOpenApi(routes, { title: 'mailhook admin API', version: packageVersion() }, { Problem: S.problem });
    return doc;
  });
}

interface AjvIssue {
  instancePath?: string;
  keyword?: string;
  params?: { allowedValues?: unknown[] };
  message?: string;
}

/**
 * A schema validation failure in the words of the other refusals: the values an enum allows, a missing body
 * named as such (fastify's defaults: "querystring/status must be equal to one of the allowed values", "body must
 * be object"). Undefined for any other error, which keeps its own message. Pure.
 */
export function validationMessage(err: { validation?: unknown; validationContext?: unknown }): string | undefined {
  if (!Array.isArray(err.validation) || err.validation.length === 0) return undefined;
  const issue = err.validation[0] as AjvIssue;
  const context = typeof err.validationContext === 'string' ? err.validationContext : 'request';
  const field = (issue.instancePath ?? '').replace(/^\//, '').replace(/\//g, '.');
  const where = context === 'querystring' ? `query parameter ${field}` : context === 'body' ? (field ? `body field ${field}` : 'the body') : `${context} ${field}`.trim();
  if (issue.keyword === 'enum' && Array.isArray(issue.params?.allowedValues)) return `${where} must be one of ${issue.params.allowedValues.map((v) => JSON.stringify(v)).join(', ')}`;
  if (issue.keyword === 'type' && context === 'body' && !field) return 'the request needs a JSON object body (Content-Type: application/json), {} for the defaults';
  return undefined;
}

function rejectUnknown(what: string, value: unknown, properties: object | undefined): void {
  if (!properties || typeof value !== 'object' || value === null || Array.isArray(value)) return;
  const known = Object.keys(properties);
  const unknown = Object.keys(value).filter((k) => !known.includes(k));
  if (unknown.length > 0) {
    throw problem(400, `unknown ${what}${unknown.length > 1 ? 's' : ''} ${unknown.map((k) => `"${k}"`).join(', ')}; known: ${known.join(', ')}`);
  }
}

/**
 * A JSON body's values must have the types their schema names. fastify's validator converts them instead (its
 * coerceTypes, needed for query strings): "dry_run": null became false and ran a real replay, "ids": "abc" became
 * ["abc"], "route": 5 became "5". Checked before it runs; it validates the rest (lengths, enums, patterns). Pure.
 */
export function rejectWrongTypes(value: unknown, properties: object | undefined): void {
  if (!properties || typeof value !== 'object' || value === null || Array.isArray(value)) return;
  const schemas = properties as Record<string, { type?: string | string[]; items?: { type?: string } }>;
  for (const [name, v] of Object.entries(value)) {
    const declared = schemas[name]?.type;
    if (declared === undefined) continue;
    const wants = [declared].flat();
    if (!wants.some((t) => hasJsonType(v, t))) throw problem(400, `body field ${name} must be ${wants.map(articled).join(' or ')}, not ${jsonTypeOf(v)}`);
    const itemType = schemas[name]?.items?.type;
    if (Array.isArray(v) && itemType !== undefined) {
      const i = (v as unknown[]).findIndex((item) => !hasJsonType(item, itemType));
      if (i !== -1) throw problem(400, `body field ${name}[${i}] must be ${articled(itemType)}, not ${jsonTypeOf((v as unknown[])[i])}`);
    }
  }
}

function jsonTypeOf(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'an integer' : 'a number';
  return typeof v === 'object' ? 'an object' : `a ${typeof v}`;
}

function hasJsonType(v: unknown, type: string): boolean {
  if (type === 'integer') return typeof v === 'number' && Number.isInteger(v);
  if (type === 'array') return Array.isArray(v);
  if (type === 'object') return typeof v === 'object' && v !== null && !Array.isArray(v);
  if (type === 'null') return v === null;
  return typeof v === type; // string, number, boolean
}

function articled(type: string): string {
  return /^[aeiou]/.test(type) ? `an ${type}` : `a ${type}`;
}

/** ISO 8601 or milliseconds since the epoch. */
export function parseTime(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const t = /^\d{1,16}$/.test(value) ? Number(value) : /^\d{4}-\d{2}-\d{2}/.test(value) ? Date.parse(value) : NaN;
  if (Number.isNaN(t)) throw problem(400, `${name}: "${value}" is not a time; write ISO 8601 (2024-05-01T12:00:00Z) or milliseconds since the epoch`);
  // Checked before anything is done with it: a replay committed and then failed to print such an as_of.
  if (t > MAX_TIME_MS) throw problem(400, `${name}: "${value}" is past the latest time there is (${MAX_TIME_MS} ms, year 275760)`);
  return t;
}

/** since and until as times; a range that holds nothing (since at or after until, often the two swapped) is refused. */
function timeRange(sinceText: string | undefined, untilText: string | undefined): { since: number | undefined; until: number | undefined } {
  const since = parseTime('since', sinceText);
  const until = parseTime('until', untilText);
  if (since !== undefined && until !== undefined && since >= until) throw problem(400, `since (${sinceText}) must be before until (${untilText}): nothing is received in that range; are they swapped?`);
  return { since, until };
}

/** The largest time a JavaScript Date holds (ECMA-262 §21.4.1.1). */
const MAX_TIME_MS = 8.64e15;

function windowMs(window: string): number {
  const m = /^(\d+)(m|h|d)$/.exec(window)!;
  const ms = Number(m[1]) * { m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 'm' | 'h' | 'd'];
  if (ms <= 0 || ms > MAX_WINDOW_MS) throw problem(400, `window: "${window}" must be between 1m and 7d`);
  return ms;
}

function formatAddress(a: { address: string; name: string }): string {
  return a.name ? `${a.name} <${a.address}>` : a.address;
}

const iso = (ms: number) => new Date(ms).toISOString();

/** A route's consumer state in the API's terms (both null when the delivery loop knows nothing against it). */
function consumerState(s: RouteState | undefined): { failing_since: string | null; paused_until: string | null } {
  return { failing_since: s?.failingSince == null ? null : iso(s.failingSince), paused_until: s?.pausedUntil == null ? null : iso(s.pausedUntil) };
}

function deliveryOut(d: DeliverySummary) {
  return { ...d, next_attempt_at: iso(d.next_attempt_at), finished_at: d.finished_at === null ? null : iso(d.finished_at) };
}

function messageOut(m: MessageSummary) {
  return { ...m, received_at: iso(m.received_at), deliveries: m.deliveries.map(deliveryOut) };
}

function attemptOut(a: AttemptEntry) {
  return { attempt: a.attempt, started_at: iso(a.started_at), latency_ms: a.duration_ms, status_code: a.status_code, outcome: a.outcome, error: a.error };
}

/** The body of a bulk request (replay, retry): delivery ids, or filter fields, or "all". */
interface BulkBody {
  ids?: string[];
  route?: string;
  recipient?: string;
  key?: string;
  sender?: string;
  since?: string;
  until?: string;
  all?: boolean;
}

/**
 * The filter a bulk request selects by; ids and filter fields together are refused, and so is neither without
 * "all": true, a guard against an empty body acting on every delivery (`everyone` says what "all" would do).
 */
function bulkFilter(b: BulkBody, everyone: string): Omit<MessageFilter, 'status'> {
  const filter = stripUndefined({ route: b.route, recipient: b.recipient, key: b.key, sender: b.sender, ...timeRange(b.since, b.until) });
  const hasFilter = Object.keys(filter).length > 0;
  if (b.ids && hasFilter) throw problem(400, 'give either ids or filter fields (route, recipient, key, sender, since, until), not both');
  if (!b.ids && !hasFilter && b.all !== true) throw problem(400, `name deliveries with ids, narrow with route/recipient/key/sender/since/until, or pass "all": true to ${everyone}`);
  return filter;
}

function stripUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}

