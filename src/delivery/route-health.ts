// Whether each route's consumer is answering, from the outcomes of its requests: when it starts failing, while it keeps failing, when it recovers. Pure.
import type { Outcome } from './classify.js';

/** Failed requests in a row after which a route's consumer counts as failing. */
export const FAILING_AFTER = 5;

/** While a route is failing, how often a summary line is due (at the next failure after this long). */
export const SUMMARY_EVERY_MS = 60_000;

/**
 * What a request's outcome says about the consumer: `fail` for a retry (network error, timeout, 408, 429, 5xx, and
 * the other 4xx that the mailgun and postmark formats retry) or a configuration problem that refuses every message
 * (401, 403, a redirect); `ok` once it took a message; `none` for a refusal of this one message (another 4xx: the
 * consumer answers) or when no request was made.
 */
export function verdictOf(outcome: Outcome, sent: boolean): 'ok' | 'fail' | 'none' {
  if (!sent) return 'none';
  if (outcome.kind === 'delivered') return 'ok';
  if (outcome.kind === 'retry' || (outcome.kind === 'dead' && outcome.loud)) return 'fail';
  return 'none';
}

export type HealthEvent =
  /** the route just counted FAILING_AFTER failed requests in a row */
  | { kind: 'failing'; route: string; failures: number; error: string }
  /** a summary while failing: failed requests since it started failing, and since the last line about it */
  | { kind: 'still-failing'; route: string; failures: number; sinceLastLine: number; failingForMs: number; error: string }
  /** a request was taken after the route was failing; failures: all of them since it started failing */
  | { kind: 'recovered'; route: string; failures: number; failingForMs: number };

interface State {
  /** failed requests in a row */
  inRow: number;
  /** when the route started failing (null while it is not), and that time on the wall clock (for the admin API) */
  since: number | null;
  sinceWall: number | null;
  /** failed requests since it started failing */
  total: number;
  /** failed requests since the last line about it, and when that line was */
  sinceSummary: number;
  summaryAt: number;
}

/** Per-route failure streaks; the worker logs the events and lowers its per-attempt failure lines to debug while a route is failing. */
export class RouteHealth {
  private readonly routes = new Map<string, State>();

  /** wallClock: milliseconds since the epoch, for failingSince (Date.now when absent) */
  constructor(private readonly opts: { failingAfter?: number; summaryEveryMs?: number; wallClock?: () => number } = {}) {}

  /** Whether the route is counted as failing now. */
  failing(route: string): boolean {
    return (this.routes.get(route)?.since ?? null) !== null;
  }

  /** When (wall clock, ms since the epoch) the route started failing, or null while it is not. */
  failingSince(route: string): number | null {
    return this.routes.get(route)?.sinceWall ?? null;
  }

  /** Forgets the route's streak (it has nothing left to deliver). */
  forget(route: string): void {
    this.routes.delete(route);
  }

  /** Routes counted as failing now. */
  failingRoutes(): string[] {
    return [...this.routes].filter(([, s]) => s.since !== null).map(([route]) => route);
  }

  /** Records one request's verdict at `now` (milliseconds of a clock that never steps); returns the event to log, if any. */
  record(route: string, verdict: 'ok' | 'fail' | 'none', now: number, error = ''): HealthEvent | undefined {
    if (verdict === 'none') return undefined;
    let s = this.routes.get(route);
    if (verdict === 'ok') {
      // The common case, a delivery to a healthy route, finds nothing here and leaves nothing.
      if (!s) return undefined;
      this.routes.delete(route);
      return s.since === null ? undefined : { kind: 'recovered', route, failures: s.total, failingForMs: Math.round(Math.max(0, now - s.since)) };
    }
    if (!s) this.routes.set(route, (s = { inRow: 0, since: null, sinceWall: null, total: 0, sinceSummary: 0, summaryAt: now }));
    s.inRow++;
    if (s.since === null) {
      if (s.inRow < (this.opts.failingAfter ?? FAILING_AFTER)) return undefined;
      s.since = now;
      s.sinceWall = (this.opts.wallClock ?? Date.now)();
      s.total = s.inRow;
      s.sinceSummary = 0;
      s.summaryAt = now;
      return { kind: 'failing', route, failures: s.inRow, error };
    }
    s.total++;
    s.sinceSummary++;
    if (now - s.summaryAt < (this.opts.summaryEveryMs ?? SUMMARY_EVERY_MS)) return undefined;
    const event: HealthEvent = { kind: 'still-failing', route, failures: s.total, sinceLastLine: s.sinceSummary, failingForMs: Math.round(Math.max(0, now - s.since)), error };
    s.sinceSummary = 0;
    s.summaryAt = now;
    return event;
  }
}
