// Operator queries on the spool: message listing (filters, keyset pagination), detail, route health, replay, delete.
import { closeSync, openSync, readSync } from 'node:fs';
import { isUtf8 } from 'node:buffer';
import { MailhookError } from '../core/errors.js';
import type Database from 'better-sqlite3';
import type { Db } from './db.js';
import type { BlobStore } from './blobs.js';
import type { DeliveryStatus, Recipient } from './types.js';
import type { DeliveryDbRow } from './jobs.js';

export const DELIVERY_STATUSES = ['pending', 'delivering', 'delivered', 'dead', 'dropped'] as const satisfies readonly DeliveryStatus[];

/** Every filter narrows; status, route, recipient and key must hold for one and the same delivery of the message. */
export interface MessageFilter {
  status?: DeliveryStatus;
  route?: string;
  /** an envelope recipient, compared case-insensitively */
  recipient?: string;
  /** the %{key} a route template extracted from the recipient */
  key?: string;
  /** the envelope sender (MAIL FROM), compared case-insensitively; '' for the null sender */
  sender?: string;
  /** received at or after (ms) */
  since?: number;
  /** received before (ms) */
  until?: number;
}

/** Position after the last row of a page: the keyset (received_at, id), newest first. */
export interface Cursor {
  receivedAt: number;
  id: string;
}

export function encodeCursor(c: Cursor): string {
  return Buffer.from(`${c.receivedAt}:${c.id}`, 'utf8').toString('base64url');
}

export function decodeCursor(text: string): Cursor {
  const m = /^(\d{1,16}):([a-z0-9]{1,64})$/.exec(Buffer.from(text, 'base64url').toString('utf8'));
  if (!m) throw new MailhookError('INVALID_INPUT', 'cursor is not one this server handed out; pass next_cursor from the previous page unchanged', { userFault: true });
  return { receivedAt: Number(m[1]), id: m[2] as string };
}

export interface ListQuery {
  sql: string;
  params: unknown[];
  /** the table whose index drives the scan, for tests and EXPLAIN */
  driver: 'messages' | 'deliveries' | 'delivery_recipients';
}

/**
 * Builds the page query: (received_at, message id) pairs, newest first, after the cursor. The most selective
 * filter chooses the driving index so the scan walks an index in order and stops at the limit (never OFFSET).
 */
export function buildListQuery(filter: MessageFilter, cursor: Cursor | undefined, limit: number): ListQuery {
  const params: unknown[] = [];
  const where: string[] = [];
  const joins: string[] = [];
  let from: string;
  let driver: ListQuery['driver'];
  let idCol: string;
  if (filter.recipient !== undefined || filter.key !== undefined) {
    driver = 'delivery_recipients';
    from = 'delivery_recipients x';
    idCol = 'x.message_id';
    if (filter.recipient !== undefined) {
      where.push('x.address = ?');
      params.push(filter.recipient.toLowerCase());
    }
    if (filter.key !== undefined) {
      where.push('x.key = ?');
      params.push(filter.key);
    }
    if (filter.status !== undefined || filter.route !== undefined) {
      joins.push('JOIN deliveries d ON d.id = x.delivery_id');
      if (filter.status !== undefined) {
        where.push('d.status = ?');
        params.push(filter.status);
      }
      if (filter.route !== undefined) {
        where.push('d.route = ?');
        params.push(filter.route);
      }
    }
  } else if (filter.status !== undefined || filter.route !== undefined) {
    driver = 'deliveries';
    from = 'deliveries x';
    idCol = 'x.message_id';
    if (filter.route !== undefined) {
      where.push('x.route = ?');
      params.push(filter.route);
    }
    if (filter.status !== undefined) {
      where.push('x.status = ?');
      params.push(filter.status);
    }
  } else {
    driver = 'messages';
    from = 'messages x';
    idCol = 'x.id';
  }
  if (filter.sender !== undefined) {
    if (driver === 'messages') {
      where.push('x.mail_from = ? COLLATE NOCASE');
    } else {
      joins.push('JOIN messages m ON m.id = x.message_id');
      where.push('m.mail_from = ? COLLATE NOCASE');
    }
    params.push(filter.sender);
  }
  if (filter.since !== undefined) {
    where.push('x.received_at >= ?');
    params.push(filter.since);
  }
  // The upper bound is the cursor or `until`, whichever is lower: '' sorts before every id, so (until, '') means "before until".
  let upper: Cursor | undefined = cursor;
  if (filter.until !== undefined && (!upper || filter.until <= upper.receivedAt)) upper = { receivedAt: filter.until, id: '' };
  if (upper) {
    where.push(`(x.received_at, ${idCol}) < (?, ?)`);
    params.push(upper.receivedAt, upper.id);
  }
  params.push(limit);
  const distinct = driver === 'messages' ? '' : 'DISTINCT ';
  const sql =
    `SELECT ${distinct}x.received_at AS received_at, ${idCol} AS id FROM ${from} ${joins.join(' ')}` +
    (where.length > 0 ? ` WHERE ${where.join(' AND ')}` : '') +
    ` ORDER BY x.received_at DESC, ${idCol} DESC LIMIT ?`;
  return { sql, params, driver };
}

export interface DeliverySummary {
  id: string;
  route: string;
  recipients: Recipient[];
  status: DeliveryStatus;
  attempts: number;
  replays: number;
  next_attempt_at: number;
  last_status_code: number | null;
  last_error: string | null;
  finished_at: number | null;
}

export interface MessageSummary {
  id: string;
  received_at: number;
  source: string;
  mail_from: string;
  rcpt_to: string[];
  size: number;
  subject: string | null;
  /** the message's overall state: pending/delivering while any delivery is unfinished, else dead if any is dead, else delivered (or dropped when all were) */
  status: DeliveryStatus | 'none';
  deliveries: DeliverySummary[];
}

export interface AttemptEntry {
  attempt: number;
  started_at: number;
  duration_ms: number;
  status_code: number | null;
  outcome: string;
  error: string | null;
}

export interface MessageDetail extends Omit<MessageSummary, 'deliveries'> {
  remote_address: string | null;
  helo: string | null;
  tls: { protocol: string; cipher: string } | null;
  dedupe_key: string | null;
  meta: Record<string, unknown> | null;
  deliveries: Array<DeliverySummary & { created_at: number; updated_at: number; attempt_log: AttemptEntry[] }>;
}

export interface RouteHealth {
  route: string;
  queue: Record<DeliveryStatus, number>;
  window: { attempts: number; delivered: number; retried: number; dead: number; dropped: number; success_rate: number | null; latency_ms: { avg: number | null; p50: number | null; p95: number | null; max: number | null } };
  last_delivered_at: number | null;
  last_failure: { at: number; status_code: number | null; error: string | null } | null;
}

export interface ReplaySelection {
  /** delivery ids; when given, the filter is not used */
  ids?: string[];
  filter?: Omit<MessageFilter, 'status'>;
  /** which finished deliveries are replayed: dead-lettered ones by default */
  statuses: Array<'dead' | 'delivered'>;
  /** only deliveries that finished at or before this time: a replay that dies again is not picked up twice */
  asOf: number;
  /** routes that deliver nothing (sinks) or are no longer configured: never replayed */
  excludeRoutes: string[];
  limit: number;
}

const HEAD_BYTES = 8192;

interface MessageRowLite {
  id: string;
  received_at: number;
  source: string;
  mail_from: string;
  rcpt_to: string;
  size: number;
  head: Buffer | null;
  raw_file: string | null;
}

interface DeliveryDb extends Omit<DeliveryDbRow, 'lease_token'> {
  replays: number;
}

export class SpoolQueries {
  private readonly pageCache = new Map<string, Database.Statement<unknown[]>>();

  constructor(
    private readonly db: Db,
    private readonly blobs: BlobStore,
    /** told when a delete took a delivery in flight away from the delivery loop (JobQueue.revokeLeases) */
    private readonly onLeasesRevoked: () => void = () => undefined,
  ) {}

  /** One page of messages, newest first; next_cursor is null on the last page. */
  listMessages(filter: MessageFilter, opts: { cursor?: Cursor; limit: number }): { messages: MessageSummary[]; next_cursor: string | null } {
    const q = buildListQuery(filter, opts.cursor, opts.limit + 1);
    const keys = this.prepared(q.sql).all(...q.params) as Array<{ received_at: number; id: string }>;
    const more = keys.length > opts.limit;
    const page = more ? keys.slice(0, opts.limit) : keys;
    const messages = this.summaries(page.map((k) => k.id));
    const last = page[page.length - 1];
    return { messages, next_cursor: more && last ? encodeCursor({ receivedAt: last.received_at, id: last.id }) : null };
  }

  getMessageDetail(id: string): MessageDetail | undefined {
    const r = this.db
      .prepare(
        `SELECT id, received_at, source, mail_from, rcpt_to, remote_address, helo, tls, size, substr(raw, 1, ${HEAD_BYTES}) AS head, raw_file, dedupe_key, meta FROM messages WHERE id = ?`,
      )
      .get(id) as (MessageRowLite & { remote_address: string | null; helo: string | null; tls: string | null; dedupe_key: string | null; meta: string | null }) | undefined;
    if (!r) return undefined;
    const deliveries = this.db.prepare(`SELECT * FROM deliveries WHERE message_id = ? ORDER BY route, id`).all(id) as DeliveryDb[];
    const attempts = this.db
      .prepare(`SELECT a.delivery_id, a.attempt, a.started_at, a.duration_ms, a.status_code, a.outcome, a.error FROM attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE d.message_id = ? ORDER BY a.id`)
      .all(id) as Array<AttemptEntry & { delivery_id: string }>;
    const byDelivery = new Map<string, AttemptEntry[]>();
    for (const a of attempts) {
      const { delivery_id, ...entry } = a;
      const list = byDelivery.get(delivery_id) ?? [];
      list.push(entry);
      byDelivery.set(delivery_id, list);
    }
    const ds = deliveries.map((d) => ({ ...toSummary(d), created_at: d.created_at, updated_at: d.updated_at, attempt_log: byDelivery.get(d.id) ?? [] }));
    return {
      ...this.summaryOf(r, ds),
      remote_address: r.remote_address,
      helo: r.helo,
      tls: r.tls ? (JSON.parse(r.tls) as { protocol: string; cipher: string }) : null,
      dedupe_key: r.dedupe_key,
      meta: r.meta ? (JSON.parse(r.meta) as Record<string, unknown>) : null,
    };
  }

  /** Per-route queue depth (now) and attempt outcomes and latency over [since, now]. */
  /** Whether any delivery to `route` is in the spool (one search of deliveries_route_status_received). */
  routeExists(route: string): boolean {
    return this.db.prepare(`SELECT 1 FROM deliveries WHERE route = ? LIMIT 1`).pluck().get(route) !== undefined;
  }

  /** Every route that has a delivery in the spool, configured or not (see ROUTES_IN_SPOOL_SQL). */
  routesInSpool(): string[] {
    this.routesInSpoolStmt ??= this.db.prepare(ROUTES_IN_SPOOL_SQL).pluck();
    return this.routesInSpoolStmt.all() as string[];
  }
  private routesInSpoolStmt: Database.Statement | undefined;

  routeHealth(routes: string[], since: number): RouteHealth[] {
    const out = new Map<string, RouteHealth>();
    const get = (route: string): RouteHealth => {
      const found = out.get(route);
      if (found) return found;
      {
        const h: RouteHealth = {
          route,
          queue: { pending: 0, delivering: 0, delivered: 0, dead: 0, dropped: 0 },
          window: { attempts: 0, delivered: 0, retried: 0, dead: 0, dropped: 0, success_rate: null, latency_ms: { avg: null, p50: null, p95: null, max: null } },
          last_delivered_at: null,
          last_failure: null,
        };
        out.set(route, h);
        return h;
      }
    };
    for (const r of routes) get(r);
    for (const row of this.db.prepare(`SELECT route, status, COUNT(*) AS n FROM deliveries GROUP BY route, status`).all() as Array<{ route: string; status: DeliveryStatus; n: number }>) {
      get(row.route).queue[row.status] = row.n;
    }
    // Counted inside SQLite from the attempts_window index, one row per route, outcome and distinct duration (a few
    // thousand at most: durations are whole milliseconds under the route's timeout): a week of attempts can be
    // hundreds of thousands of rows, too many to load into objects on the event loop every few seconds (the
    // dashboard's route page refreshes itself). Percentiles are exact, taken from those counts.
    const groups = this.prepared(ROUTE_HEALTH_SQL).all(since) as Array<{ route: string; outcome: string; ms: number; n: number; last: number }>;
    const histograms = new Map<string, Map<number, number>>();
    const lastFailureAt = new Map<string, number>();
    for (const g of groups) {
      const h = get(g.route);
      // A drop (drop_automatic) sent no request: it says nothing of the consumer's health, so it is no attempt here.
      if (g.outcome === 'dropped') {
        h.window.dropped += g.n;
        continue;
      }
      h.window.attempts += g.n;
      if (g.outcome === 'delivered') {
        h.window.delivered += g.n;
        h.last_delivered_at = Math.max(h.last_delivered_at ?? 0, g.last);
      } else {
        if (g.outcome === 'dead') h.window.dead += g.n;
        else h.window.retried += g.n;
        lastFailureAt.set(g.route, Math.max(lastFailureAt.get(g.route) ?? 0, g.last));
      }
      const hist = histograms.get(g.route) ?? new Map<number, number>();
      hist.set(g.ms, (hist.get(g.ms) ?? 0) + g.n);
      histograms.set(g.route, hist);
    }
    const lastFailure = this.prepared(`SELECT status_code AS code, error FROM attempts WHERE started_at = ? AND route = ? AND outcome NOT IN ('delivered', 'dropped') ORDER BY id DESC LIMIT 1`);
    for (const [route, at] of lastFailureAt) {
      const f = lastFailure.get(at, route) as { code: number | null; error: string | null };
      get(route).last_failure = { at, status_code: f.code, error: f.error };
    }
    for (const [route, hist] of histograms) {
      const h = get(route);
      h.window.latency_ms = latencyOf(hist, h.window.attempts);
      h.window.success_rate = h.window.delivered / h.window.attempts;
    }
    return [...out.values()];
  }

  /**
   * Replays finished deliveries: status pending, due now, attempt counter reset to 0 (a fresh budget of
   * delivery.retry.max_attempts), replays + 1. The attempt history stays. Returns the ids replayed and how
   * many more match the selection.
   */
  replay(sel: ReplaySelection, now: number): { replayed: string[]; remaining: number } {
    const replayed: string[] = [];
    let remaining = 0;
    this.db.transaction(() => {
      const ids = sel.ids ?? this.selectReplayable(sel, sel.limit);
      const update = this.prepared(
        `UPDATE deliveries SET status = 'pending', attempts = 0, replays = replays + 1, next_attempt_at = ?, lease_token = NULL, lease_expires_at = NULL,
           finished_at = NULL, updated_at = ?
         WHERE id = ? AND status IN (${sel.statuses.map((s) => `'${s}'`).join(',')})` + (sel.excludeRoutes.length > 0 ? ` AND route NOT IN (${sel.excludeRoutes.map(() => '?').join(',')})` : ''),
      );
      for (const id of ids.slice(0, sel.limit)) {
        if (update.run(now, now, id, ...sel.excludeRoutes).changes === 1) replayed.push(id);
      }
      remaining = sel.ids ? 0 : this.countReplayable(sel);
    })();
    return { replayed, remaining };
  }

  /**
   * Makes pending deliveries that wait for their next attempt due now (after a consumer outage, instead of waiting
   * out the backoff); the attempt counters stay, so max_attempts still bounds them. Named by ids or selected by a
   * filter; sink routes excluded. Returns how many (with dryRun: how many would be) made due.
   */
  retryNow(sel: { ids?: string[]; filter?: Omit<MessageFilter, 'status'>; excludeRoutes: string[] }, now: number, dryRun: boolean): number {
    const conditions = ["d.status = 'pending'", 'd.next_attempt_at > ?'];
    const params: unknown[] = [now];
    if (sel.ids) {
      conditions.push(`d.id IN (${sel.ids.map(() => '?').join(',')})`);
      params.push(...sel.ids);
    }
    const q = deliveryFilter(sel.ids ? {} : (sel.filter ?? {}), sel.excludeRoutes, conditions, params);
    if (dryRun) return (this.db.prepare(`SELECT COUNT(*) AS n FROM deliveries d ${q.joins} WHERE ${q.where}`).get(...q.params) as { n: number }).n;
    return this.db
      .prepare(`UPDATE deliveries SET next_attempt_at = ?, updated_at = ? WHERE id IN (SELECT d.id FROM deliveries d ${q.joins} WHERE ${q.where})`)
      .run(now, now, ...q.params).changes;
  }

  /** How many deliveries a replay selection matches (a dry run). */
  countReplayable(sel: Omit<ReplaySelection, 'limit'>): number {
    if (sel.ids) {
      // The same rows replay() would change: named, in one of the statuses, not on an excluded (sink) route.
      const ph = sel.ids.map(() => '?').join(',');
      const excluded = sel.excludeRoutes.length > 0 ? ` AND route NOT IN (${sel.excludeRoutes.map(() => '?').join(',')})` : '';
      return (this.db.prepare(`SELECT COUNT(*) AS n FROM deliveries WHERE id IN (${ph}) AND status IN (${sel.statuses.map((s) => `'${s}'`).join(',')})${excluded}`).get(...sel.ids, ...sel.excludeRoutes) as { n: number }).n;
    }
    const q = replayQuery(sel, 'COUNT(*) AS n', undefined);
    return (this.prepared(q.sql).get(...q.params) as { n: number }).n;
  }

  private selectReplayable(sel: ReplaySelection, limit: number): string[] {
    const q = replayQuery(sel, 'd.id AS id', limit);
    return (this.prepared(q.sql).all(...q.params) as Array<{ id: string }>).map((r) => r.id);
  }

  /**
   * Deletes a message, its deliveries and attempts, then its file. A delivery in flight makes it refuse unless
   * forced (the worker then finds its lease gone and records nothing).
   */
  deleteMessage(id: string, force: boolean): { deleted: boolean; inFlight: number } {
    let rawFile: string | null = null;
    let deleted = false;
    let inFlight = 0;
    this.db.transaction(() => {
      const row = this.db.prepare(`SELECT raw_file FROM messages WHERE id = ?`).get(id) as { raw_file: string | null } | undefined;
      if (!row) return;
      inFlight = (this.db.prepare(`SELECT COUNT(*) AS n FROM deliveries WHERE message_id = ? AND status = 'delivering'`).get(id) as { n: number }).n;
      if (inFlight > 0 && !force) return;
      rawFile = row.raw_file;
      deleted = this.db.prepare(`DELETE FROM messages WHERE id = ?`).run(id).changes === 1;
    })();
    if (deleted && inFlight > 0) this.onLeasesRevoked();
    if (deleted && rawFile) this.blobs.removeSync(rawFile);
    return { deleted, inFlight };
  }

  private summaries(ids: string[]): MessageSummary[] {
    if (ids.length === 0) return [];
    const ph = ids.map(() => '?').join(',');
    const rows = this.db
      .prepare(`SELECT id, received_at, source, mail_from, rcpt_to, size, substr(raw, 1, ${HEAD_BYTES}) AS head, raw_file FROM messages WHERE id IN (${ph})`)
      .all(...ids) as MessageRowLite[];
    const deliveries = this.db.prepare(`SELECT * FROM deliveries WHERE message_id IN (${ph}) ORDER BY route, id`).all(...ids) as DeliveryDb[];
    const byMessage = new Map<string, DeliverySummary[]>();
    for (const d of deliveries) {
      const list = byMessage.get(d.message_id) ?? [];
      list.push(toSummary(d));
      byMessage.set(d.message_id, list);
    }
    const byId = new Map(rows.map((r) => [r.id, r]));
    const out: MessageSummary[] = [];
    for (const id of ids) {
      const r = byId.get(id);
      if (!r) continue; // removed between the two reads
      out.push(this.summaryOf(r, byMessage.get(id) ?? []));
    }
    return out;
  }

  /** A message row and its deliveries as the API lists them. */
  private summaryOf<D extends DeliverySummary>(r: MessageRowLite, ds: D[]): MessageSummary & { deliveries: D[] } {
    return {
      id: r.id,
      received_at: r.received_at,
      source: r.source,
      mail_from: r.mail_from,
      rcpt_to: JSON.parse(r.rcpt_to) as string[],
      size: r.size,
      subject: headerSubject(this.head(r)),
      status: overallStatus(ds),
      deliveries: ds,
    };
  }

  /** The first bytes of the message (headers), from the row or the start of its file. */
  private head(r: { head: Buffer | null; raw_file: string | null }): Buffer {
    if (r.head) return r.head;
    if (!r.raw_file) return Buffer.alloc(0);
    let fd: number | undefined;
    try {
      fd = openSync(this.blobs.pathOf(r.raw_file), 'r');
      const buf = Buffer.alloc(HEAD_BYTES);
      const n = readSync(fd, buf, 0, HEAD_BYTES, 0);
      return buf.subarray(0, n);
    } catch {
      return Buffer.alloc(0);
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  }

  private prepared(sql: string): Database.Statement<unknown[]> {
    let stmt = this.pageCache.get(sql);
    if (!stmt) {
      stmt = this.db.prepare<unknown[]>(sql);
      if (this.pageCache.size > 200) this.pageCache.clear();
      this.pageCache.set(sql, stmt);
    }
    return stmt;
  }
}

/** The delivery rows a bulk replay picks: oldest first, so a batch limit works through the backlog in order. */
export function replayQuery(sel: Omit<ReplaySelection, 'limit' | 'ids'>, select: string, limit: number | undefined): { sql: string; params: unknown[] } {
  const q = deliveryFilter(sel.filter ?? {}, sel.excludeRoutes, [`d.status IN (${sel.statuses.map((s) => `'${s}'`).join(',')})`, 'd.finished_at <= ?'], [sel.asOf]);
  let sql = `SELECT ${select} FROM deliveries d ${q.joins} WHERE ${q.where}`;
  const params = q.params;
  if (limit !== undefined) {
    sql += ' ORDER BY d.received_at, d.id LIMIT ?';
    params.push(limit);
  }
  return { sql, params };
}

/** The deliveries (as d) a filter selects, not on an excluded route, besides the conditions given (with their params). */
function deliveryFilter(f: Omit<MessageFilter, 'status'>, excludeRoutes: string[], conditions: string[], conditionParams: unknown[]): { joins: string; where: string; params: unknown[] } {
  const where = [...conditions];
  const params = [...conditionParams];
  const joins: string[] = [];
  if (f.route !== undefined) {
    where.push('d.route = ?');
    params.push(f.route);
  }
  if (excludeRoutes.length > 0) {
    where.push(`d.route NOT IN (${excludeRoutes.map(() => '?').join(',')})`);
    params.push(...excludeRoutes);
  }
  if (f.since !== undefined) {
    where.push('d.received_at >= ?');
    params.push(f.since);
  }
  if (f.until !== undefined) {
    where.push('d.received_at < ?');
    params.push(f.until);
  }
  if (f.sender !== undefined) {
    joins.push('JOIN messages m ON m.id = d.message_id');
    where.push('m.mail_from = ? COLLATE NOCASE');
    params.push(f.sender);
  }
  if (f.recipient !== undefined || f.key !== undefined) {
    const cond: string[] = ['r.delivery_id = d.id'];
    if (f.recipient !== undefined) {
      cond.push('r.address = ?');
      params.push(f.recipient.toLowerCase());
    }
    if (f.key !== undefined) {
      cond.push('r.key = ?');
      params.push(f.key);
    }
    where.push(`EXISTS (SELECT 1 FROM delivery_recipients r WHERE ${cond.join(' AND ')})`);
  }
  return { joins: joins.join(' '), where: where.join(' AND '), params };
}

function toSummary(d: DeliveryDb): DeliverySummary {
  return {
    id: d.id,
    route: d.route,
    recipients: JSON.parse(d.recipients) as Recipient[],
    status: d.status,
    attempts: d.attempts,
    replays: d.replays,
    next_attempt_at: d.next_attempt_at,
    last_status_code: d.last_status_code,
    last_error: d.last_error,
    finished_at: d.finished_at,
  };
}

export function overallStatus(ds: ReadonlyArray<{ status: DeliveryStatus }>): DeliveryStatus | 'none' {
  if (ds.length === 0) return 'none';
  if (ds.some((d) => d.status === 'delivering')) return 'delivering';
  if (ds.some((d) => d.status === 'pending')) return 'pending';
  if (ds.some((d) => d.status === 'dead')) return 'dead';
  if (ds.some((d) => d.status === 'delivered')) return 'delivered';
  return 'dropped';
}

/** The Subject header from the start of a message, unfolded and with RFC 2047 encoded words decoded. */
export function headerSubject(head: Buffer): string | null {
  const end = head.indexOf('\n\n') >= 0 || head.indexOf('\r\n\r\n') >= 0 ? Math.min(...[head.indexOf('\r\n\r\n'), head.indexOf('\n\n')].filter((i) => i >= 0)) : head.length;
  const bytes = head.subarray(0, end);
  // Raw 8-bit header bytes: UTF-8 when they are valid UTF-8 (RFC 6532), else Latin-1.
  const text = isUtf8(bytes) ? bytes.toString('utf8') : bytes.toString('latin1');
  const headers = text.replace(/\r?\n[ \t]+/g, ' ');
  const m = /^subject:[ \t]*(.*)$/im.exec(headers);
  if (!m) return null;
  return decodeWords(m[1] as string).trim();
}

/** RFC 2047 §6: decode encoded words; whitespace between adjacent encoded words is dropped. */
function decodeWords(value: string): string {
  const decoded = value.replace(/(=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=)\s+(?==\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=)/g, '$1');
  return decoded.replace(/=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=/g, (whole, charset: string, enc: string, data: string) => {
    let bytes: Buffer;
    if (enc.toUpperCase() === 'B') bytes = Buffer.from(data, 'base64');
    else bytes = Buffer.from(data.replace(/_/g, ' ').replace(/=([0-9A-Fa-f]{2})/g, (_s, h: string) => String.fromCharCode(parseInt(h, 16))), 'latin1');
    try {
      return new TextDecoder(charset.split('*')[0]).decode(bytes);
    } catch {
      return whole;
    }
  });
}

/**
 * The routes of the spool's deliveries, in order: from each route to the next by one seek of an index on route. A
 * SELECT DISTINCT walks the whole index, every delivery (some 60 ms per million, on the event loop, at each replay).
 */
export const ROUTES_IN_SPOOL_SQL = `WITH RECURSIVE r(route) AS (
  SELECT (SELECT MIN(route) FROM deliveries)
  UNION ALL SELECT (SELECT MIN(route) FROM deliveries WHERE route > r.route) FROM r WHERE r.route IS NOT NULL
) SELECT route FROM r WHERE route IS NOT NULL`;

/** Attempts since ? counted by route, outcome and duration (see routeHealth). */
export const ROUTE_HEALTH_SQL = `SELECT route, outcome, duration_ms AS ms, COUNT(*) AS n, MAX(started_at) AS last FROM attempts WHERE started_at >= ? GROUP BY route, outcome, duration_ms`;

/** avg, p50, p95 and max of `n` durations given as counts per duration (the p-th is the value at index floor(p * n)). */
export function latencyOf(hist: Map<number, number>, n: number): RouteHealth['window']['latency_ms'] {
  const sorted = [...hist.entries()].sort((a, b) => a[0] - b[0]);
  let total = 0;
  for (const [ms, c] of sorted) total += ms * c;
  const pick = (q: number): number | null => {
    const index = Math.min(n - 1, Math.floor(q * n));
    let seen = 0;
    for (const [ms, c] of sorted) {
      seen += c;
      if (seen > index) return ms;
    }
    return null;
  };
  return { avg: n > 0 ? Math.round(total / n) : null, p50: pick(0.5), p95: pick(0.95), max: sorted.length > 0 ? (sorted[sorted.length - 1] as [number, number])[0] : null };
}
