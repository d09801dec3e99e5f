// The delivery loop: lease due deliveries, call the route's webhook, record the outcome, schedule retries.
import { untilAborted, waitWithGrace } from '../core/lifecycle.js';
import type { Dispatcher } from 'undici';
import type { Clock, Random } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import type { Metrics } from '../core/metrics.js';
import type { Config, ResolvedRoute } from '../config/load.js';
import type { Spool } from '../spool/spool.js';
import type { Completion, Lease } from '../spool/jobs.js';
import { nextAttemptAt, parseRetryAfter, ROUTE_PAUSE_MAX_MS } from './backoff.js';
import { classifyError, classifyStatus, type Outcome } from './classify.js';
import { sendWebhook, WebhookTargets } from './client.js';
import { Slots } from './slots.js';
import { RouteHealth, verdictOf, type HealthEvent } from './route-health.js';
import { isErrnoException, MailhookError } from '../core/errors.js';
import type { EncodedRequest } from './formats/types.js';
import { createFormats, type Formats } from './formats/index.js';
import { automaticOf } from '../parse/automatic.js';
import { THREAD_MAX_BYTES } from '../parse/pool.js';
import type { PayloadMessageJson } from '../parse/message.js';
import type { ParseInbound } from '../parse/inbound.js';

export interface WorkerDeps {
  config: Config;
  spool: Spool;
  log: Logger;
  metrics: Metrics;
  clock: Clock;
  random: Random;
  dispatcher: Dispatcher;
  /** parses messages for the json format off the event loop (the parse pool); on this thread when absent */
  parse?: (raw: Buffer) => Promise<PayloadMessageJson>;
  /** parses messages for the mailgun, postmark and sendgrid formats off the event loop (the parse pool); on this thread when absent */
  parseInbound?: ParseInbound;
  /** the payload formats (createFormats), made here when absent */
  formats?: Formats;
  /** how long finished attempts may wait to be recorded together (settleDelayMs); SETTLE_COALESCE_MS when absent */
  settleCoalesceMs?: number;
  /** a prepared request that waited longer than this for its slot is encoded again; PREPARED_MAX_AGE_MS when absent */
  preparedMaxAgeMs?: number;
  /**
   * Milliseconds from a clock that never steps (performance.now when absent), for the loop's own intervals: the
   * wall clock (clock) can step back (NTP, VM resume), which held up "once a second" for the whole step.
   */
  monotonic?: () => number;
}

/**
 * A request prepared ahead carries the time it was signed (Standard Webhooks' webhook-timestamp, Mailgun's
 * timestamp, GitLab's iat), and consumers refuse an old one: Action Mailbox's Mailgun ingress after 2 minutes,
 * Standard Webhooks verifiers after 5 (a 401, dead-lettered as a wrong secret). A request that waited longer than
 * this for its route's slot (slow consumer, long timeout_ms, several prepared behind the slots) is encoded again
 * just before it is sent.
 */
export const PREPARED_MAX_AGE_MS = 30_000;

/**
 * The outcome of a payload that could not be built. A parse that ran out of time, or parse threads stopping under
 * it (shutdown), may be the machine, not the message: retried (dead after max_attempts). Anything else is the
 * message, PARSE_CRASHED too (it ended two parse threads): dead at once.
 */
function buildFailure(err: unknown, format: string): Outcome {
  if (err instanceof MailhookError && (err.code === 'PARSE_TIMEOUT' || err.code === 'SHUTTING_DOWN')) return { kind: 'retry', reason: err.message };
  return { kind: 'dead', reason: `cannot build the ${format} payload: ${(err as Error).message}` };
}

/** A payload built again just before sending (PREPARED_MAX_AGE_MS) failed: its outcome, as for the first build. */
class BuildFailed extends Error {
  constructor(readonly outcome: Outcome) {
    super(outcome.kind === 'delivered' ? 'built' : outcome.reason);
  }
}

/**
 * Messages up to this size are prepared (read, parsed, encoded, signed) while their route's request slots are
 * busy; larger ones only once a slot is free, so payloads waiting for a slot stay small in memory.
 */
export const PREPARE_AHEAD_MAX_BYTES = 1024 * 1024;

/**
 * A route delivers one message over this size at a time (decided when leasing, so no lease waits for it). A
 * delivery holds several times its message in memory (the bytes, the parse, the body with base64): four 20 MB
 * messages of one route at once took RSS to ~700 MB. Same bound as the parse threads' (parse/pool.ts).
 */
export const LARGE_MESSAGE_BYTES = THREAD_MAX_BYTES;

/**
 * How long a lease holds before another turn of the loop may take the delivery again: longer than the slowest
 * attempt can run. An attempt parses (bounded by delivery.timeout_ms), may wait for one of its route's request
 * slots (each held by a request that ends within the route's timeout, and at most per_route_concurrency others
 * wait ahead of it, one per slot), then makes its request (the route's timeout): with the largest route timeout,
 * plus 10 s of slack for a busy event loop.
 */
export function leaseDurationMs(config: Config): number {
  const request = Math.max(config.delivery.timeout_ms, ...config.routes.map((r) => r.webhook?.timeoutMs ?? 0));
  return config.delivery.timeout_ms + 2 * request + 10_000;
}

/** How often the loop looks even when nothing woke it (expired leases, clock jumps). */
const IDLE_POLL_MS = 30_000;

/** How often the delivery loop looks again when due work waits on routes at their limit or no longer configured. */
const BLOCKED_POLL_MS = 1000;

/**
 * How long the delivery loop waits when due work could not be leased: it belongs to routes at their limit (a
 * finishing attempt wakes the loop), to routes removed from the configuration (looked for every BLOCKED_POLL_MS), or
 * to paused routes: then until the first pause ends (`pausesUntil`, monotonic ms; at least 1 ms), or until the next
 * delivery of a route still open falls due (`openNextDue`, wall ms, null for none), if sooner. An open route's
 * delivery that is due already is not waited for: that route is at its limit.
 */
export function blockedWaitMs(o: { now: number; mono: number; pausesUntil: number[]; openNextDue: Array<number | null> }): number {
  let wait = BLOCKED_POLL_MS;
  for (const until of o.pausesUntil) wait = Math.min(wait, Math.max(until - o.mono, 1));
  for (const at of o.openNextDue) if (at !== null && at > o.now) wait = Math.min(wait, at - o.now);
  return Math.ceil(wait);
}

/** How long a finished attempt may wait to be recorded together with others (see settleDelayMs). */
export const SETTLE_COALESCE_MS = 3;

/**
 * When the loop should record a finished attempt and lease into its place. At once, unless its route still has
 * attempts waiting for a request slot: then one of them already took the freed slot and nothing idles, so the
 * bookkeeping waits SETTLE_COALESCE_MS for more attempts to finish and records them in the same transaction (one
 * transaction for four deliveries costs 112-171 µs each against 243-280 µs for one alone, measured on the 2-core
 * VM), or until as many have finished as a route has slots.
 */
export function settleDelayMs(o: { waitingForSlot: number; finished: number; perRouteConcurrency: number; coalesceMs?: number }): number {
  return o.waitingForSlot > 0 && o.finished < o.perRouteConcurrency ? (o.coalesceMs ?? SETTLE_COALESCE_MS) : 0;
}

export class DeliveryWorker {
  private readonly routes: Map<string, ResolvedRoute>;
  /**
   * Attempts running, by lease token. Their leases are never reclaimed while they run, even past their expiry (a
   * clock step forward past the lease, see leaseDurationMs and JobQueue.reclaimExpired).
   */
  private readonly inFlight = new Map<string, { route: string; large: boolean; done: Promise<void>; abort: AbortController; sent: boolean }>();
  /** attempts that finished and wait for the next tick to record them (one transaction for all, plus leasing) */
  private finished: Finished[] = [];
  /** leases per route: up to twice per_route_concurrency, half of them prepared ahead while the others are sent */
  private readonly perRoute = new Map<string, number>();
  /** request slots per route: per_route_concurrency webhook requests at once */
  private readonly slots = new Map<string, Slots>();
  private timer: NodeJS.Timeout | undefined;
  private immediate: NodeJS.Immediate | undefined;
  private timerAt = Infinity;
  private running = false;
  private ticking = false;
  private tickAgain = false;
  /** monotonic times (see WorkerDeps.monotonic) */
  private lastReclaim = -Infinity;
  private lastWideLook = -Infinity;
  private readonly monotonic: () => number;

  private readonly leaseMs: number;
  /** the webhook URLs in use, parsed once each */
  private readonly targets = new WebhookTargets();
  /** the payload formats, with their cache of the message last parsed for the service formats (InboundViews) */
  private readonly formats: Formats;
  /** which routes' consumers are failing: their failed attempts are logged at debug, with a line when that starts, a summary each minute and a line when it ends */
  private readonly health: RouteHealth;
  /**
   * Routes whose consumer answered 429/503 (or another retry) with a Retry-After: until when (monotonic, so a
   * wall-clock step cannot stretch it) no attempt of theirs sends a request, so new mail does not get a first
   * attempt each while the consumer sheds load.
   */
  private readonly pausedUntil = new Map<string, number>();

  constructor(private readonly deps: WorkerDeps) {
    this.formats = deps.formats ?? createFormats();
    this.health = new RouteHealth({ wallClock: () => deps.clock.now() });
    this.routes = new Map(deps.config.routes.map((r) => [r.name, r]));
    this.leaseMs = leaseDurationMs(deps.config);
    this.monotonic = deps.monotonic ?? (() => performance.now());
  }

  start(): void {
    const { spool, clock, random, config, log, metrics } = this.deps;
    const now = clock.now();
    const retry = config.delivery.retry;
    const { resumed, dead } = spool.jobs.reclaimAbandoned(now, { maxAttempts: retry.max_attempts, retryAt: (attempts) => nextAttemptAt(retry, attempts, now, random) });
    if (resumed > 0) log.info({ deliveries: resumed }, 'resumed deliveries left in flight by the previous run, after their retry backoff');
    for (const d of dead) {
      metrics.deliveries.inc({ route: d.route, outcome: 'dead' });
      log.warn({ msgId: d.messageId, deliveryId: d.id, route: d.route, attempt: d.attempts, error: d.reason }, 'delivery dead-lettered');
    }
    // A route removed from the configuration: its deliveries waiting for a retry (up to a day, Retry-After) would
    // otherwise show as pending until they fall due. Dead letters now, to replay once a route serves them again.
    for (const [route, n] of spool.jobs.deadLetterUnrouted([...this.routes.keys()], now, (r) => `route "${r}" no longer exists in the configuration`)) {
      metrics.deliveries.inc({ route, outcome: 'dead' }, n);
      log.warn({ route, deliveries: n }, `route "${route}" is no longer in the configuration: its ${n} pending deliveries are dead-lettered (replay them once a route serves them again; a renamed route keeps them with renamed_from)`);
    }
    for (const r of config.routes) {
      if (!r.webhook) continue;
      metrics.routeFailing.set({ route: r.name }, 0);
      // Every outcome's series from the start: an alert on increase() misses the first dead letter of a series
      // that appears at 1.
      for (const outcome of ['delivered', 'retry', 'dead', 'dropped'] as const) metrics.deliveries.inc({ route: r.name, outcome }, 0);
    }
    this.running = true;
    this.wake();
  }

  /** Called when new deliveries are committed (a finished attempt schedules the loop itself, see settleDelayMs). */
  wake(): void {
    if (!this.running) return;
    this.schedule(0);
  }

  /**
   * An operator asked for deliveries now (replay, retry): these routes (every route when absent), if paused by a
   * Retry-After, go on at once; returns the routes whose pause this lifted.
   */
  resume(only?: string[]): string[] {
    const routes = [...this.pausedUntil.keys()].filter((route) => (only === undefined || only.includes(route)) && this.paused(route));
    if (routes.length > 0) this.deps.log.info({ routes }, 'route pauses lifted by an operator');
    for (const route of routes) this.pausedUntil.delete(route);
    this.wake();
    return routes;
  }

  /** Routes whose consumer is failing or that wait out a Retry-After now (milliseconds), for the admin API. */
  routeStates(): Map<string, RouteState> {
    const out = new Map<string, RouteState>();
    for (const route of new Set([...this.health.failingRoutes(), ...this.pausedUntil.keys()])) {
      const pausedUntil = this.paused(route) ? this.wallOf(this.pausedUntil.get(route)!) : null;
      const failingSince = this.health.failingSince(route);
      if (failingSince !== null || pausedUntil !== null) out.set(route, { failingSince, pausedUntil });
    }
    return out;
  }

  /** The wall-clock time (ms since the epoch, for the API and logs) of a monotonic time. */
  private wallOf(mono: number): number {
    return Math.round(this.deps.clock.now() + (mono - this.monotonic()));
  }

  /** Whether the route waits out a consumer's Retry-After now; forgets pauses that ended. */
  private paused(route: string): boolean {
    const until = this.pausedUntil.get(route);
    if (until === undefined) return false;
    if (until > this.monotonic()) return true;
    this.pausedUntil.delete(route);
    return false;
  }

  /** The consumer asked the route to wait retryAfterMs (at most ROUTE_PAUSE_MAX_MS) from now. */
  private pause(route: string, retryAfterMs: number, statusCode: number | null): void {
    const until = this.monotonic() + Math.min(retryAfterMs, ROUTE_PAUSE_MAX_MS);
    const was = this.paused(route);
    if (until <= (this.pausedUntil.get(route) ?? 0)) return;
    this.pausedUntil.set(route, until);
    if (!was) this.deps.log.info({ route, status: statusCode, until: new Date(this.wallOf(until)).toISOString() }, 'route paused: its consumer asked to wait (Retry-After); no request of the route starts before then');
  }

  /** How long to wait when due work could not be leased (see blockedWaitMs). */
  private blockedWait(now: number): number {
    if (this.pausedUntil.size === 0) return BLOCKED_POLL_MS;
    const mono = this.monotonic();
    // The pauses as they stand, an ended one included (its route is open again: look at once), then the open routes.
    const pausesUntil = [...this.pausedUntil.values()];
    const openNextDue = [...this.routes.keys()].filter((route) => !this.paused(route)).map((route) => this.deps.spool.jobs.nextDueOf(route));
    return blockedWaitMs({ now, mono, pausesUntil, openNextDue });
  }

  get activeCount(): number {
    return this.inFlight.size;
  }

  /** Stop leasing; let requests in flight finish within graceMs, then abort them (they are retried on restart). */
  async stop(graceMs: number): Promise<void> {
    this.running = false;
    // Attempts whose request has not gone out stop now (given back uncounted), rather than take a request slot
    // freed during the grace period; requests in flight get the grace period.
    for (const f of this.inFlight.values()) if (!f.sent) f.abort.abort(new MailhookError('SHUTTING_DOWN', 'mailhook is shutting down'));
    if (this.timer) clearTimeout(this.timer);
    if (this.immediate) clearImmediate(this.immediate);
    const all = () => Promise.allSettled([...this.inFlight.values()].map((f) => f.done));
    if ((await waitWithGrace(all(), graceMs)) === 'timeout') {
      for (const f of this.inFlight.values()) f.abort.abort(new Error('mailhook is shutting down'));
      await all();
    }
    try {
      this.settle(null);
    } catch {
      /* logged by settle(); the leases expire and those deliveries run again after a restart */
    }
  }

  private schedule(delayMs: number): void {
    if (delayMs <= 0) {
      // Next turn of the event loop, after the I/O callbacks already due: a timer would wait at least 1 ms.
      this.immediate ??= setImmediate(() => {
        this.immediate = undefined;
        this.tick();
      });
      return;
    }
    if (this.immediate) return; // a turn sooner than that is already due
    const at = this.monotonic() + delayMs;
    if (this.timer && at >= this.timerAt) return;
    if (this.timer) clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.timerAt = Infinity;
      this.tick();
    }, Math.max(0, delayMs));
  }

  private tick(): void {
    if (!this.running) return;
    if (this.ticking) {
      this.tickAgain = true;
      return;
    }
    this.ticking = true;
    try {
      const { config, spool, clock } = this.deps;
      const now = clock.now();
      // Expired leases are rare (a request stuck past twice its timeout): look once a second, not on every tick.
      // Never those of attempts still running here (a clock step forward past the lease): see reclaimExpired.
      const mono = this.monotonic();
      if (mono - this.lastReclaim >= 1000) {
        this.lastReclaim = mono;
        spool.jobs.reclaimExpired(now, this.inFlight.keys());
      }
      const leases = this.settle({ now, leaseMs: this.leaseMs });
      for (const lease of leases) this.begin(lease);
      const next = spool.jobs.nextDueAt();
      let wait = next === null ? IDLE_POLL_MS : Math.min(Math.max(next - clock.now(), 0), IDLE_POLL_MS);
      // Due work that could not be leased: do not spin (see blockedWaitMs).
      if (wait === 0 && leases.length === 0) wait = this.blockedWait(clock.now());
      this.schedule(wait);
    } catch (err) {
      this.deps.log.error({ err }, 'delivery loop error; retrying in 1 s');
      this.schedule(1000);
    } finally {
      this.ticking = false;
      if (this.tickAgain) {
        this.tickAgain = false;
        this.schedule(0);
      }
    }
  }

  /**
   * Records every finished attempt and, unless `lease` is null (shutdown), leases into the slots they and any
   * others left free, in one transaction. The slots of finished attempts are free only once this succeeded.
   */
  private settle(lease: { now: number; leaseMs: number } | null): Lease[] {
    const { config, spool } = this.deps;
    // A route may hold twice its request slots in leases: while per_route_concurrency requests run, as many more
    // deliveries are read, parsed and signed, so a slot that frees up starts its next request at once.
    const cap = config.delivery.per_route_concurrency * 2;
    const finished = this.finished;
    const busy = new Map(this.perRoute);
    for (const f of finished) busy.set(f.route, (busy.get(f.route) ?? 1) - 1);
    const large = new Set([...this.inFlight.values()].filter((f) => f.large).map((f) => f.route));
    for (const f of finished) if (this.inFlight.get(f.token)?.large) large.delete(f.route);
    const openRoutes = [...this.routes.keys()].filter((route) => (busy.get(route) ?? 0) < cap && !this.paused(route));
    const openSlots = openRoutes.reduce((n, route) => n + cap - (busy.get(route) ?? 0), 0);
    let limit = lease ? config.delivery.concurrency - (this.inFlight.size - finished.length) : 0;
    // Deliveries of a route removed from the configuration take no slot of a configured route: look for them once
    // a second; otherwise lease only what the open routes can take.
    const mono = this.monotonic();
    if (lease && mono - this.lastWideLook >= 1000) this.lastWideLook = mono;
    else limit = Math.min(limit, openSlots);
    if (finished.length === 0 && limit <= 0) return [];
    let result;
    try {
      result = spool.jobs.settleAndLease(
        finished.map((f) => f.completion),
        lease && {
          now: lease.now,
          limit,
          leaseMs: lease.leaseMs,
          openRoutes,
          canTake: (route, sizeOf) => {
            const n = busy.get(route) ?? 0;
            if (n >= cap || this.paused(route)) return false;
            if (sizeOf() > LARGE_MESSAGE_BYTES) {
              if (large.has(route)) return false;
              large.add(route);
            }
            busy.set(route, n + 1);
            return true;
          },
        },
      );
    } catch (err) {
      if (!lease) this.deps.log.error({ err, deliveries: finished.length }, 'cannot record delivery outcomes at shutdown; they will be attempted again');
      throw err;
    }
    this.finished = [];
    finished.forEach((f, i) => {
      this.inFlight.delete(f.token);
      this.perRoute.set(f.route, (this.perRoute.get(f.route) ?? 1) - 1);
      f.report(result.kept[i] === true);
    });
    return result.leases;
  }

  private begin(lease: Lease): void {
    const route = lease.delivery.route;
    this.perRoute.set(route, (this.perRoute.get(route) ?? 0) + 1);
    const abort = new AbortController();
    const entry = { route, large: (lease.messageSize ?? 0) > LARGE_MESSAGE_BYTES, done: Promise.resolve(), abort, sent: false };
    entry.done = this.attempt(lease, abort.signal, () => (entry.sent = true))
      .then((f) => {
        this.finished.push(f);
      })
      .catch((err: unknown) => {
        // Not recorded: the lease stays until it expires, then the delivery runs again.
        this.deps.log.error({ err, deliveryId: lease.delivery.id }, 'delivery attempt failed unexpectedly');
        this.inFlight.delete(lease.token);
        this.perRoute.set(route, (this.perRoute.get(route) ?? 1) - 1);
      })
      .finally(() => {
        if (!this.running) return;
        const waitingForSlot = this.slots.get(route)?.waiting ?? 0;
        const { config, settleCoalesceMs } = this.deps;
        this.schedule(settleDelayMs({ waitingForSlot, finished: this.finished.length, perRouteConcurrency: config.delivery.per_route_concurrency, coalesceMs: settleCoalesceMs }));
      });
    this.inFlight.set(lease.token, entry);
  }

  /** Logs a change in a route's consumer health and sets its gauge. */
  private reportHealth(e: HealthEvent): void {
    const { log, metrics } = this.deps;
    if (e.kind === 'failing') {
      metrics.routeFailing.set({ route: e.route }, 1);
      log.warn({ route: e.route, failedAttempts: e.failures, error: e.error }, 'route consumer failing; its failed attempts are now logged at debug level, with a summary each minute, until one is delivered');
    } else if (e.kind === 'still-failing') {
      log.warn({ route: e.route, failedAttempts: e.failures, sinceLastLine: e.sinceLastLine, failingForMs: e.failingForMs, error: e.error }, 'route consumer still failing');
    } else {
      metrics.routeFailing.set({ route: e.route }, 0);
      log.info({ route: e.route, failedAttempts: e.failures, failingForMs: e.failingForMs }, 'route consumer recovered');
    }
  }

  private slotsOf(route: string): Slots {
    let slots = this.slots.get(route);
    if (!slots) this.slots.set(route, (slots = new Slots(this.deps.config.delivery.per_route_concurrency)));
    return slots;
  }

  /** Takes one of the route's request slots, counted in the waiting gauge while it waits; true once held. */
  private async waitForSlot(slots: Slots, route: string, prepared: 'true' | 'false', signal: AbortSignal): Promise<true> {
    if (slots.tryAcquire()) return true;
    const gauge = this.deps.metrics.deliveriesWaiting;
    gauge.inc({ route, prepared });
    try {
      await slots.acquire(signal);
    } finally {
      gauge.dec({ route, prepared });
    }
    return true;
  }

  /** `signal` aborts the attempt (at the start of shutdown while its request has not gone out: `onSent` says when it does). */
  private async attempt(lease: Lease, signal: AbortSignal, onSent: () => void): Promise<Finished> {
    const { config, spool, log, metrics, clock, random, dispatcher } = this.deps;
    const d = lease.delivery;
    let startedAt = clock.now();
    /** the same moment on the monotonic clock: the attempt's duration must not take a step of the wall clock */
    let startedMono = this.monotonic();
    let outcome: Outcome;
    let statusCode: number | null = null;
    let retryAfterMs: number | undefined;
    /** whether the request went out (from then on the attempt counts, whatever happens) */
    let sent = false;
    /** its route was paused (Retry-After) when its slot came: given back uncounted, sent after the pause */
    let heldBack = false;
    /** the delivery was removed while it was prepared (its message deleted with force): never sent */
    let removed = false;

    const route = this.routes.get(d.route);
    if (!route) {
      outcome = { kind: 'dead', reason: `route "${d.route}" no longer exists in the configuration`, loud: true };
    } else if (!route.webhook) {
      outcome = { kind: 'delivered' }; // the route is now a sink: the message stays in the spool
    } else {
      const webhook = route.webhook;
      const format = this.formats[webhook.format];
      const slots = this.slotsOf(d.route);
      let held = false;
      let req: EncodedRequest | undefined;
      let encode: (() => Promise<EncodedRequest>) | undefined;
      let encodedAt = 0;
      outcome = { kind: 'retry', reason: 'not attempted' }; // replaced below: dropped, failed to build, or the request's result
      /** whether the message's bytes were read: an I/O error before that is the machine's, not the message's */
      let read = false;
      try {
        const message = spool.getMessage(d.messageId);
        if (!message) throw new Error(`message ${d.messageId} is missing from the spool`);
        // A large message is read and encoded only once its request can start (see PREPARE_AHEAD_MAX_BYTES).
        if (message.size > PREPARE_AHEAD_MAX_BYTES) held = await this.waitForSlot(slots, d.route, 'false', signal);
        const raw = await spool.readRaw(d.messageId);
        read = true;
        const automatic = route.dropAutomatic ? automaticOf(message, raw) : undefined;
        if (automatic?.automatic) {
          outcome = { kind: 'dropped', reason: `dropped: automatic message (${automatic.reasons.join(', ')}); route has drop_automatic` };
        } else {
          // The age counts from when the timestamp is taken, before the parse (which may wait for a parse thread).
          encode = () => {
            encodedAt = clock.now();
            return format.encode({ message, delivery: d, route, webhook, raw, nowSeconds: Math.floor(encodedAt / 1000), hostname: config.smtp.hostname, parse: this.deps.parse, parseInbound: this.deps.parseInbound });
          };
          req = await untilAborted(encode(), signal);
        }
      } catch (err) {
        if (held) slots.release();
        held = false;
        req = undefined;
        // Reading the spool failed (EMFILE, EIO, a file briefly out of reach): that may be the machine, not the
        // message, so it is retried (dead after max_attempts).
        outcome = signal.aborted
          ? classifyError(signal.reason)
          : !read && !(err instanceof MailhookError) && isErrnoException(err)
            ? { kind: 'retry', reason: `cannot read the message from the spool: ${err.message}` }
            : buildFailure(err, webhook.format);
      }
      if (req) {
        try {
          if (!held) held = await this.waitForSlot(slots, d.route, 'true', signal);
          // A slot free at once does not look at the signal: shutdown may have come while this attempt was parsing.
          signal.throwIfAborted();
          if (encode && clock.now() - encodedAt > (this.deps.preparedMaxAgeMs ?? PREPARED_MAX_AGE_MS)) {
            try {
              req = await untilAborted(encode(), signal);
            } catch (err) {
              throw new BuildFailed(signal.aborted ? classifyError(signal.reason) : buildFailure(err, webhook.format));
            }
          }
          signal.throwIfAborted(); // shutdown may have come while it was built again
          // Leased and prepared before its route's consumer asked to wait: it does not go out during the pause.
          if (this.paused(d.route)) {
            heldBack = true;
            throw new Error('route paused');
          }
          // An operator may have deleted the message (force) while this waited for its slot: the delete promised
          // that nothing more is sent.
          if (!spool.jobs.holds(lease)) {
            removed = true;
            throw new Error('delivery removed');
          }
          startedAt = clock.now();
          startedMono = this.monotonic();
          sent = true;
          onSent();
          const res = await sendWebhook(dispatcher, this.targets.of(req.url ?? webhook.url), req, webhook.timeoutMs, signal);
          statusCode = res.status;
          outcome = format.classify?.(res.status) ?? classifyStatus(res.status, res.location);
          if (outcome.kind !== 'delivered' && res.bodySnippet) outcome = { ...outcome, reason: `${outcome.reason}: ${oneLine(res.bodySnippet)}` };
          retryAfterMs = parseRetryAfter(res.retryAfter, clock.now());
          if (outcome.kind === 'retry' && retryAfterMs !== undefined && retryAfterMs > 0) this.pause(d.route, retryAfterMs, res.status);
        } catch (err) {
          outcome = err instanceof BuildFailed ? err.outcome : classifyError(err);
        } finally {
          if (held) slots.release();
        }
      } else if (held) slots.release();
    }

    const finishedAt = clock.now();
    const durationMs = Math.round(this.monotonic() - startedMono);
    // Shutdown stopped the attempt before its request went out (it was being prepared or waited for a request
    // slot), or its route was paused meanwhile: the lease is given back uncounted, so restarts and pauses do not use
    // up max_attempts of deliveries never tried.
    if ((signal.aborted || heldBack || removed) && !sent && route?.webhook) {
      const completion: Completion = { lease, attempt: { attempt: d.attempts, startedAt, durationMs, statusCode: null, outcome: 'retry', error: null }, next: { status: 'given-back' }, now: finishedAt };
      const report = (kept: boolean): void => {
        if (removed) log.info({ msgId: d.messageId, deliveryId: d.id, route: d.route }, 'delivery removed while it was prepared (its message was deleted); not sent');
        if (!kept) return;
        if (signal.aborted) log.info({ msgId: d.messageId, deliveryId: d.id, route: d.route }, 'delivery not attempted before shutdown; given back uncounted');
        else log.debug({ msgId: d.messageId, deliveryId: d.id, route: d.route }, 'delivery held back: its route is paused (Retry-After); given back uncounted');
      };
      return { token: lease.token, route: d.route, completion, report };
    }
    // What the consumer's answer says about it, before a last retry becomes a dead letter (still a failed request).
    const verdict = verdictOf(outcome, sent);
    if (outcome.kind === 'retry' && d.attempts >= config.delivery.retry.max_attempts) {
      outcome = { kind: 'dead', reason: `gave up after ${d.attempts} attempts; last error: ${outcome.reason}` };
    }
    const error = outcome.kind === 'delivered' ? null : outcome.reason.slice(0, 2000);
    const next =
      outcome.kind === 'delivered'
        ? ({ status: 'delivered' } as const)
        : outcome.kind === 'dead'
          ? ({ status: 'dead' } as const)
          : outcome.kind === 'dropped'
            ? ({ status: 'dropped' } as const)
            : ({ status: 'pending', at: nextAttemptAt(config.delivery.retry, d.attempts, finishedAt, random, retryAfterMs) } as const);
    const completion: Completion = { lease, attempt: { attempt: d.attempts, startedAt, durationMs, statusCode, outcome: outcome.kind, error }, next, now: finishedAt };
    const report = (kept: boolean): void => {
      if (!kept) {
        if (spool.getDelivery(d.id) === undefined) {
          // Deleted through the admin API (force) while its request ran: nothing is left to record or to retry.
          if (sent) metrics.deliveries.inc({ route: d.route, outcome: outcome.kind });
          log.info({ msgId: d.messageId, deliveryId: d.id, route: d.route, attempt: d.attempts, status: statusCode, outcome: outcome.kind }, 'delivery ended: its message was deleted meanwhile');
          return;
        }
        log.warn({ msgId: d.messageId, deliveryId: d.id, route: d.route, attempt: d.attempts }, 'lease lost before the outcome was recorded; the delivery will be attempted again');
        return;
      }
      metrics.deliveries.inc({ route: d.route, outcome: outcome.kind });
      if (statusCode !== null) metrics.deliveryLatency.observe({ route: d.route }, durationMs / 1000);
      // While the route's consumer is failing, its failed attempts go to debug (a backlog retried against a consumer
      // that is down wrote a warn line per attempt: ~26,000 in 3.5 minutes for 3,000 messages); dead letters stay.
      // Only failures that are the consumer's: a spool read error or a parse timeout stays at warn.
      const quiet = verdict === 'fail' && this.health.failing(d.route);
      const event = this.health.record(d.route, verdict, this.monotonic(), error ?? '');
      // One object per line rather than a child logger per attempt (a child serialises its bindings when made).
      const fields = { msgId: d.messageId, deliveryId: d.id, route: d.route, attempt: d.attempts, status: statusCode, durationMs, ...(next.status === 'pending' ? { retryAt: new Date(next.at).toISOString() } : {}) };
      if (outcome.kind === 'delivered') log.info(fields, 'delivered');
      else if (outcome.kind === 'dropped') log.info({ ...fields, reason: error }, 'delivery dropped: automatic message');
      else if (outcome.kind === 'retry' && quiet) log.debug({ ...fields, error }, 'delivery failed; will retry');
      else if (outcome.kind === 'retry') log.warn({ ...fields, error }, 'delivery failed; will retry');
      else if (outcome.loud) log.error({ ...fields, error }, 'delivery dead-lettered: configuration problem');
      else log.warn({ ...fields, error }, 'delivery dead-lettered');
      if (event) this.reportHealth(event);
      // A failing route whose last undelivered delivery just ended (dead, dropped) has nothing to learn its
      // consumer's state from until new mail comes: it is no longer counted as failing (and its alert clears).
      else if (outcome.kind !== 'retry' && this.health.failing(d.route) && !spool.jobs.hasUndelivered(d.route)) {
        this.health.forget(d.route);
        metrics.routeFailing.set({ route: d.route }, 0);
        log.info({ route: d.route }, 'route has nothing left to deliver; no longer counted as failing until new mail finds its consumer failing again');
      }
    };
    return { token: lease.token, route: d.route, completion, report };
  }
}

/** What the delivery loop knows of a route's consumer beyond the spool: failing since, paused until (ms), or null. */
export interface RouteState {
  failingSince: number | null;
  pausedUntil: number | null;
}

/** A finished attempt waiting to be recorded; `report` logs and counts it once recorded. */
interface Finished {
  /** the lease's token (the key in inFlight) */
  token: string;
  route: string;
  completion: Completion;
  report: (kept: boolean) => void;
}

function oneLine(s: string): string {
  return s.replace(/\s+/g, ' ').trim().slice(0, 300);
}
