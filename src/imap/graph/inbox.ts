// The Microsoft Graph inbox for one mailbox: delta query over a mail folder (@odata.nextLink pages, then a
// delta token saved in the spool) every poll_interval; each new message claimed by moving it to the processing
// folder (only one instance's move succeeds), raw MIME from /$value into the spool, and only after the commit:
// mark read, delete or move. Failures end the pass and it is retried after a jittered backoff or Retry-After; a
// message Graph alone refuses is passed over and tried again by itself (failing.ts) while the delta link moves on.
import { waitWithGrace } from '../../core/lifecycle.js';
import type { Dispatcher } from 'undici';
import type { Clock, Random } from '../../core/clock.js';
import type { Logger } from '../../core/logger.js';
import type { Metrics } from '../../core/metrics.js';
import { MailhookError } from '../../core/errors.js';
import type { GraphMailboxSettings } from '../../config/mailboxes.js';
import { reconnectDelay } from '../backoff.js';
import { MailboxError, classify } from '../errors.js';
import { MAX_HEADER_BYTES } from '../headers.js';
import { peekHeaders, type MailboxIngest } from '../ingest.js';
import type { TokenProvider } from '../oauth.js';
import { MailboxStatus } from '../status.js';
import type { MailboxState } from '../state.js';
import { GraphClient } from './client.js';
import { FailingMessages } from './failing.js';

export interface GraphInboxDeps {
  settings: GraphMailboxSettings;
  ingest: MailboxIngest;
  tokens: TokenProvider;
  log: Logger;
  metrics: Metrics;
  clock: Clock;
  random: Random;
  dispatcher?: Dispatcher;
  /** where the delta link is kept across restarts (the spool's mailbox_state); without it, memory only */
  state?: MailboxState;
  /** throttling limits inside one request (tests shorten them) */
  throttle?: { maxRetries?: number; maxRetryAfterMs?: number; defaultRetryMs?: number };
}

interface DeltaItem {
  id?: string;
  isRead?: boolean;
  internetMessageId?: string;
  receivedDateTime?: string;
  '@removed'?: unknown;
}
interface ListPage {
  value?: DeltaItem[];
  '@odata.nextLink'?: string;
}
interface DeltaPage {
  value?: DeltaItem[];
  '@odata.nextLink'?: string;
  '@odata.deltaLink'?: string;
}

/** "mid:<Message-ID>:<received, epoch seconds>", what a message is known by across moves; undefined without both. */
function identity(item: DeltaItem): string | undefined {
  const mid = item.internetMessageId?.replace(/^<|>$/g, '');
  const at = item.receivedDateTime ? Math.floor(Date.parse(item.receivedDateTime) / 1000) : NaN;
  return mid && Number.isFinite(at) ? `mid:${mid}:${at}` : undefined;
}

/** Messages per delta page (Prefer: odata.maxpagesize; Graph's own default is 10). */
const PAGE_SIZE = 50;
/** mailbox_state key of the saved delta link */
const DELTA_KEY = 'graph_delta_link';
/** mailbox_state key of the messages passed over, tried again by themselves */
const FAILING_KEY = 'graph_failing';
/** At most this many passed-over messages are tried by themselves; past it a pass keeps its delta link (as before). */
const MAX_FAILING = 1000;

export class GraphInbox {
  readonly status: MailboxStatus;
  readonly graph: GraphClient;
  private readonly s: GraphMailboxSettings;
  private readonly abort = new AbortController();
  private stopping = false;
  private loop: Promise<void> | undefined;
  private waiter: (() => void) | undefined;
  /** the delta link of the last complete pass, saved in the spool so a restart continues from it */
  private deltaLink: string | undefined;
  /** messages left alone (unmatched with "leave", too large), not looked at again in this process (by id and Message-ID) */
  private readonly skipped = new Set<string>();
  /** claim: move — the processing folder's id, once found or created */
  private claimFolderId: string | undefined;
  /** claim: move — messages seen unread in the processing folder (id → first seen), for the stale-claim takeover */
  private readonly claimSeen = new Map<string, number>();
  private nextClaimScanAt = 0;
  /** messages passed over, each tried again by itself on its own backoff (see pass) */
  private readonly failing: FailingMessages;
  /** a failure this pass could not record (the list full): the pass keeps its delta link so the message is listed again */
  private unrecorded = false;

  constructor(private readonly deps: GraphInboxDeps) {
    this.s = deps.settings;
    this.status = new MailboxStatus(this.s.name, 'microsoft_graph', deps.metrics, deps.clock);
    this.graph = new GraphClient({
      tokens: deps.tokens,
      clock: deps.clock,
      dispatcher: deps.dispatcher,
      signal: this.abort.signal,
      maxThrottleRetries: deps.throttle?.maxRetries,
      maxRetryAfterMs: deps.throttle?.maxRetryAfterMs,
      defaultRetryMs: deps.throttle?.defaultRetryMs,
    });
    this.status.details = { graph_endpoint: this.s.graphEndpoint, user: this.s.user, folder: this.s.mailbox, poll_interval_s: this.s.pollIntervalMs / 1000, claim: this.s.claim, ...(this.s.claim === 'move' ? { claim_folder: this.s.claimFolder } : {}) };
    this.deltaLink = this.loadDeltaLink();
    this.status.details.delta_link_restored = this.deltaLink !== undefined;
    const state = deps.state;
    this.failing = new FailingMessages({
      policy: this.s.reconnect,
      random: deps.random,
      max: MAX_FAILING,
      scope: this.deltaScope,
      load: () => state?.get(FAILING_KEY),
      // Every change is saved: the mailbox's details follow it here, in one place.
      save: (v) => {
        if (v === undefined) state?.delete(FAILING_KEY);
        else state?.set(FAILING_KEY, v);
        this.status.details.failing_messages = this.failing.size;
      },
    });
    this.status.details.failing_messages = this.failing.size;
  }

  /** What a saved delta link belongs to: a link for another endpoint, user or folder is not used. */
  private get deltaScope(): string {
    return `${this.s.graphEndpoint} ${this.s.user} ${this.s.mailbox}`;
  }

  private loadDeltaLink(): string | undefined {
    const raw = this.deps.state?.get(DELTA_KEY);
    if (!raw) return undefined;
    try {
      const saved = JSON.parse(raw) as { scope?: string; link?: string };
      if (saved.scope === this.deltaScope && typeof saved.link === 'string') return saved.link;
      this.deps.log.info({ mailbox: this.s.name }, 'the saved Graph delta link is for another endpoint, user or folder; starting with a full pass');
    } catch {
      /* unreadable: a full pass */
    }
    return undefined;
  }

  private saveDeltaLink(link: string | undefined): void {
    this.deltaLink = link;
    if (link === undefined) this.deps.state?.delete(DELTA_KEY);
    else this.deps.state?.set(DELTA_KEY, JSON.stringify({ scope: this.deltaScope, link }));
  }

  start(): void {
    this.loop ??= this.run();
  }

  async stop(graceMs: number): Promise<void> {
    this.stopping = true;
    this.wake();
    if (!this.loop) {
      this.status.set('stopped');
      return;
    }
    const result = await waitWithGrace(this.loop, graceMs);
    if (result === 'timeout') this.abort.abort();
    await this.loop;
  }

  /** Runs a pass now instead of at the next poll (tests; an operator nudge). */
  poke(): void {
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  private pause(ms: number): Promise<void> {
    if (this.stopping) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        resolve();
      }, ms);
      this.waiter = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  private get base(): string {
    return `${this.s.graphEndpoint}/v1.0/users/${encodeURIComponent(this.s.user)}`;
  }

  private async run(): Promise<void> {
    this.status.set('connecting');
    while (!this.stopping) {
      try {
        await this.pass();
        if (this.stopping) break;
        this.status.recovered();
        this.status.set('polling');
        // A message passed over is tried again by itself on its own backoff (failing.ts): new mail is still
        // looked for every poll_interval.
        this.status.nextAttemptAt = null;
        await this.pause(this.s.pollIntervalMs);
      } catch (err) {
        if (this.stopping) break;
        const e = classify(err);
        this.status.failed(e);
        if (e.code === 'MAILBOX_AUTH_FAILED') this.deps.tokens.invalidate();
        const delay = Math.max(reconnectDelay(this.s.reconnect, this.status.consecutiveFailures, this.deps.random), e.retryAfterMs ?? 0);
        this.deps.log[e.userFault ? 'error' : 'warn']({ mailbox: this.s.name, kind: e.kind, code: e.code, error: e.message, retryInMs: delay }, 'Graph pass failed; trying again after a pause');
        this.status.nextAttemptAt = this.deps.clock.now() + delay;
        this.status.set('backoff');
        await this.pause(delay);
      }
    }
    this.status.set('stopped');
  }

  /**
   * One pass: the messages passed over earlier that are due, each by itself; then the delta, every page until the
   * delta link, each unread message taken in page order.
   */
  private async pass(): Promise<void> {
    const fullPass = `${this.base}/mailFolders/${encodeURIComponent(this.s.mailbox)}/messages/delta?$select=id,isRead,internetMessageId,receivedDateTime`;
    let url: string | undefined = this.deltaLink ?? fullPass;
    if (this.s.claim === 'move' && this.deps.clock.now() >= this.nextClaimScanAt) await this.scanClaimFolder();
    this.unrecorded = false;
    for (const m of this.failing.due(this.deps.clock.now())) {
      if (this.stopping) return;
      await this.attempt(m.id, m.ident, true);
    }
    while (url && !this.stopping) {
      const fromDelta: boolean = url === this.deltaLink;
      const res: { status: number; body: DeltaPage | undefined } = await this.graph.json<DeltaPage>('GET', url, { headers: { prefer: `odata.maxpagesize=${PAGE_SIZE}` }, allow: fromDelta ? [400, 410] : [] });
      if (res.status >= 400) {
        // The delta token expired or its sync state is gone (410 Gone, or 400 syncStateNotFound): Graph asks
        // for a full synchronisation. Read messages are skipped and committed ones only marked, so nothing is lost.
        const code = ((res.body as { error?: { code?: string } } | undefined)?.error?.code ?? '').toLowerCase();
        if (res.status === 400 && !code.startsWith('syncstate')) throw new MailboxError('MAILBOX_SERVER', `Graph GET messages/delta answered 400: ${code}`);
        this.deps.log.warn({ mailbox: this.s.name, status: res.status, code }, 'the Graph delta token is no longer valid; starting a full pass');
        this.saveDeltaLink(undefined);
        url = fullPass;
        continue;
      }
      const body = res.body;
      if (this.status.state !== 'connected') this.status.set('connected');
      for (const item of body?.value ?? []) {
        if (this.stopping) return;
        if (!item.id) continue;
        if (item['@removed'] !== undefined || item.isRead === true) {
          this.failing.forget(item.id);
          continue;
        }
        if (this.failing.isWaiting(item.id, this.deps.clock.now())) continue; // passed over earlier: its own retry
        await this.attempt(item.id, identity(item), false);
      }
      // The next link and the delta link are opaque: used exactly as given. Only a finished pass advances
      // the delta link, so a pass cut short is repeated from the last one (the spool deduplicates). Messages
      // passed over are in the failing list, tried by themselves: the link moves past them, unless one could
      // not be recorded (the list full), which the next pass must list again.
      if (body?.['@odata.nextLink']) url = body['@odata.nextLink'];
      else {
        if (!this.unrecorded && body?.['@odata.deltaLink'] && body['@odata.deltaLink'] !== this.deltaLink) this.saveDeltaLink(body['@odata.deltaLink']);
        url = undefined;
      }
    }
  }

  /**
   * Takes one message. One Graph refuses (its $value answers 500 or breaks off, its move 400, …) is passed over so
   * the rest flows, and recorded to be tried again by itself after a backoff of its own. Throttling, network, token
   * and spool failures end the pass: the next message would meet them too. `lookFirst` (a retry): the message is
   * looked up first, and one gone (deleted, or moved: its id changes) or read meanwhile is no longer tried.
   */
  private async attempt(id: string, ident: string | undefined, lookFirst: boolean): Promise<void> {
    const givenBack: { id?: string } = {};
    try {
      if (lookFirst) {
        const res = await this.graph.json<DeltaItem>('GET', `${this.base}/messages/${encodeURIComponent(id)}?$select=id,isRead,internetMessageId,receivedDateTime`, { allow: [404] });
        if (res.status === 404 || res.body?.isRead === true) {
          this.failing.forget(id);
          this.deps.log.info({ mailbox: this.s.name, graphId: id }, res.status === 404 ? 'a message passed over earlier is gone from the folder (deleted or moved); no longer tried' : 'a message passed over earlier was read meanwhile; no longer tried');
          return;
        }
        ident = (res.body && identity(res.body)) ?? ident;
      }
      await this.take(id, ident, givenBack);
      if (this.failing.forget(id)) {
        this.deps.log.info({ mailbox: this.s.name, graphId: id }, 'a message passed over earlier was taken');
      }
    } catch (err) {
      const e = classify(err);
      if (this.stopping || e.code !== 'MAILBOX_SERVER' || e.retryAfterMs !== undefined) throw err;
      this.status.messageFailed(e);
      const now = this.deps.clock.now();
      const m = this.failing.failed(id, givenBack.id ?? id, ident, now);
      if (!m) {
        this.unrecorded = true;
        this.deps.log.warn({ mailbox: this.s.name, graphId: id, code: e.code, error: e.message }, `a message failed; ${MAX_FAILING} others are waiting to be tried again already, so the delta link is kept and the next pass lists it again`);
        return;
      }
      this.deps.log.warn({ mailbox: this.s.name, graphId: m.id, code: e.code, error: e.message, tries: m.tries, retryInMs: m.nextAt - now }, 'a message failed; passed over, and tried again by itself after a pause');
    }
  }

  /**
   * The dedupe key. With move claims a message's id changes on every move, so it is keyed by its Message-ID
   * (internetMessageId) and receivedDateTime (both kept by a move) within this mailbox: a different message that
   * reuses a Message-ID is stored, not taken for one the spool holds. Without claims, by its id as before.
   */
  private keyOf(id: string, ident: string | undefined): string {
    return this.s.claim === 'move' && ident ? `graph:${this.s.name}:${ident}` : `graph:${this.s.name}:${id}`;
  }

  /** `givenBack.id`: the id a move claim given back left the message with (it is tried again under it). */
  private async take(sourceId: string, ident: string | undefined, givenBack: { id?: string } = {}): Promise<void> {
    if (this.skipped.has(sourceId) || (ident && this.skipped.has(ident))) return;
    let id = sourceId;
    const heldKey = this.keyOf(id, ident);
    if (this.deps.ingest.isCommitted(heldKey)) return this.markHeld(id, heldKey);
    if (this.s.claim === 'move') {
      // The claim: POST …/move answers 201 with the moved message (a new id) to exactly one instance; the
      // others get 404 ErrorItemNotFound, the id being gone from this folder.
      const moved = await this.claimToFolder(id);
      if (moved === undefined) {
        this.deps.log.debug({ mailbox: this.s.name, graphId: id }, 'message claimed by another instance');
        return;
      }
      id = moved;
    }
    try {
      await this.takeClaimed(id, ident);
    } catch (err) {
      if (this.s.claim === 'move' && !this.stopping) {
        // In our spool already (marking it failed): it stays claimed, in the processing folder, and the next
        // pass only marks it. Not taken: give it back so the next pass (ours or another instance's) takes it now.
        if (this.deps.ingest.isCommitted(this.keyOf(id, ident))) this.nextClaimScanAt = 0;
        else givenBack.id = await this.claimMove(id, this.s.mailbox).catch(() => undefined);
      }
      throw err;
    }
  }

  /** A message the spool holds already (committed before a crash, not marked then): counted as a duplicate, only marked. */
  private async markHeld(id: string, key: string): Promise<void> {
    // Counted once per message: while its marking keeps failing it is found here again at each try.
    if (!this.heldCounted.has(key)) {
      if (this.heldCounted.size >= 10_000) this.heldCounted.clear();
      this.heldCounted.add(key);
      this.deps.ingest.count('duplicate');
      this.deps.log.info({ mailbox: this.s.name, graphId: id }, 'the spool holds this message already (an earlier pass committed it and did not mark it): only marking it');
    }
    await this.afterDelivery(id);
  }
  /** dedupe keys markHeld counted (a bound: cleared past 10,000) */
  private readonly heldCounted = new Set<string>();

  private async takeClaimed(id: string, ident: string | undefined): Promise<void> {
    const key = this.keyOf(id, ident);
    const log = { mailbox: this.s.name, graphId: id };
    if (this.deps.ingest.isCommitted(key)) return this.markHeld(id, key);
    const res = await this.graph.stream(`${this.base}/messages/${encodeURIComponent(id)}/$value`, { allow: [404] });
    if (res.status === 404) {
      await res.body.dump();
      // Without claims it is passed over and looked up again by itself (attempt): one really deleted is then gone.
      if (this.s.claim !== 'move') throw new MailboxError('MAILBOX_SERVER', `message ${id} was listed but could not be read (404); it is looked up again`);
      return; // our claimed copy, deleted meanwhile
    }
    // Graph cuts some $value answers off part-way (the connection reset; for messages of some 25 MB and more, every
    // time): that is this message's failure, passed over like an error status, not one that ends every pass here
    // (with claim none the mailbox stalled at such a message, shown as a 'protocol' error 'cannot store the message').
    const read = { bytes: 0, error: undefined as unknown };
    const cutOff = () => new MailboxError('MAILBOX_SERVER', `Graph GET /$value of message ${id} broke off after ${read.bytes} bytes (${(read.error as Error)?.message ?? read.error}); it is tried again by itself after a pause`, { cause: read.error });
    async function* counted(source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
      try {
        for await (const chunk of source) {
          read.bytes += chunk.length;
          yield chunk;
        }
      } catch (err) {
        read.error = err;
        throw err;
      }
    }
    let peeked: Awaited<ReturnType<typeof peekHeaders>>;
    try {
      peeked = await peekHeaders(counted(res.body as AsyncIterable<Buffer>), MAX_HEADER_BYTES);
    } catch (err) {
      throw read.error !== undefined && !this.stopping ? cutOff() : err;
    }
    const { header, body } = peeked;
    const plan = this.deps.ingest.plan(header);
    if (plan.kind === 'unmatched') {
      try {
        for await (const _ of body) {
          /* discard */
        }
      } catch (err) {
        throw read.error !== undefined && !this.stopping ? cutOff() : err;
      }
      this.deps.ingest.count('unmatched');
      this.deps.log.warn({ ...log, messageId: plan.messageId, candidates: plan.candidates.slice(0, 5) }, 'no route accepts any recipient of this message');
      if (plan.policy.kind === 'move') await this.move(id, plan.policy.folder);
      else await this.leave(id, ident);
      return;
    }
    try {
      const result = await this.deps.ingest.accept(plan, body, key, { graphId: id });
      this.deps.log.info({ ...log, msgId: result.id, duplicate: result.duplicate, route: plan.deliveries[0]?.route, header: plan.header, size: result.size }, 'message accepted');
    } catch (err) {
      if (read.error !== undefined && !this.stopping) throw cutOff();
      if (err instanceof MailhookError && err.code === 'MESSAGE_TOO_LARGE') {
        await this.leave(id, ident);
        this.deps.ingest.count('too_large');
        this.deps.log.warn(log, `message exceeds ${this.deps.ingest.maxBytes} bytes (smtp.max_message_bytes); left in the mailbox`);
        return;
      }
      if (err instanceof MailhookError && err.code === 'MESSAGE_REFUSED') {
        // Past an smtp.limits structure limit: it could never be parsed for its webhook (see the IMAP bridge).
        await this.leave(id, ident);
        this.deps.ingest.count('refused');
        const reason = err.details[0] ?? err.message;
        this.deps.log.warn({ ...log, reason, messageId: plan.messageId }, `message refused by smtp.limits (${reason}); left in the mailbox`);
        return;
      }
      // The spool's own failure (a full disk, the spool closing): kind 'spool', as the IMAP bridge reports it (it
      // was 'protocol' here); it ends the pass.
      if (err instanceof MailhookError) throw new MailboxError('MAILBOX_SPOOL', `the spool could not take the message: ${err.message}`, { cause: err });
      throw err;
    }
    await this.afterDelivery(id);
  }

  /** Leaves a message alone for this process; a claimed one goes back to the folder it came from first. */
  private async leave(id: string, ident: string | undefined): Promise<void> {
    if (this.s.claim === 'move') {
      const back = await this.claimMove(id, this.s.mailbox);
      if (back) this.skipped.add(back);
      if (ident) this.skipped.add(ident);
    } else this.skipped.add(id);
  }

  /** POST …/move; the moved message's new id, or undefined when the id is gone (404: another instance moved it). */
  private async claimMove(id: string, destinationId: string): Promise<string | undefined> {
    const res = await this.graph.json<{ id?: string }>('POST', `${this.base}/messages/${encodeURIComponent(id)}/move`, { body: { destinationId }, allow: [404] });
    if (res.status === 404) return undefined;
    if (!res.body?.id) throw new MailboxError('MAILBOX_PROTOCOL', 'Graph answered a move without the moved message');
    return res.body.id;
  }

  /**
   * The claim: a move to the processing folder. A move to a folder that was deleted answers 404 ErrorItemNotFound,
   * the same as a message another instance moved first (400 ErrorInvalidIdMalformed on some stores): then the
   * folder is looked up again — recreated when gone — and, when it has a new id, the move is tried once more.
   * Undefined when the message is gone (another instance has it).
   */
  private async claimToFolder(id: string): Promise<string | undefined> {
    const folder = await this.claimFolder();
    const url = `${this.base}/messages/${encodeURIComponent(id)}/move`;
    const res = await this.graph.json<{ id?: string; error?: { code?: string } }>('POST', url, { body: { destinationId: folder }, allow: [400, 404] });
    if (res.status < 400) {
      if (!res.body?.id) throw new MailboxError('MAILBOX_PROTOCOL', 'Graph answered a move without the moved message');
      return res.body.id;
    }
    this.claimFolderId = undefined;
    const again = await this.claimFolder();
    if (again !== folder) {
      this.deps.log.warn({ mailbox: this.s.name, folder: this.s.claimFolder }, 'the processing folder was deleted or replaced; using it under its new id');
      this.nextClaimScanAt = 0;
      return this.claimMove(id, again);
    }
    if (res.status === 404) return undefined;
    throw new MailboxError('MAILBOX_SERVER', `Graph POST move answered 400: ${res.body?.error?.code ?? ''}`);
  }

  /** The processing folder's id: found by its display name among the top-level folders, else created. */
  private async claimFolder(): Promise<string> {
    if (this.claimFolderId) return this.claimFolderId;
    const name = this.s.claimFolder;
    const find = async () => {
      const filter = encodeURIComponent(`displayName eq '${name.replace(/'/g, "''")}'`);
      const res = await this.graph.json<{ value?: Array<{ id?: string; displayName?: string }> }>('GET', `${this.base}/mailFolders?$filter=${filter}&$select=id,displayName`);
      return res.body?.value?.find((f) => f.displayName === name)?.id;
    };
    let id = await find();
    if (!id) {
      // Two instances may create it at once: the second gets 409 ErrorFolderExists and looks it up again.
      const created = await this.graph.json<{ id?: string }>('POST', `${this.base}/mailFolders`, { body: { displayName: name }, allow: [409] });
      id = created.status === 409 ? await find() : created.body?.id;
      if (id) this.deps.log.info({ mailbox: this.s.name, folder: name }, 'created the processing folder for move claims');
    }
    if (!id) throw new MailboxError('MAILBOX_SERVER', `could not find or create the processing folder ${name}`);
    this.claimFolderId = id;
    return id;
  }

  /**
   * Claims left by a dead instance: unread messages in the processing folder (only those are listed: with
   * after_delivery: flag, delivered messages pile up there, read). Each is watched from the first
   * time it is seen; one still there after claim_timeout is moved back to the folder (one instance's move
   * succeeds) and taken afresh by the delta pass that follows. One the spool already holds (our own crash
   * between commit and marking) is only marked.
   */
  private async scanClaimFolder(): Promise<void> {
    const now = this.deps.clock.now();
    const folder = await this.claimFolder();
    const present = new Set<string>();
    let url: string | undefined = `${this.base}/mailFolders/${encodeURIComponent(folder)}/messages?$filter=${encodeURIComponent('isRead eq false')}&$select=id,isRead,internetMessageId,receivedDateTime&$top=50`;
    let takenOver = 0;
    while (url && !this.stopping) {
      const { status, body }: { status: number; body: ListPage | undefined } = await this.graph.json<ListPage>('GET', url, { allow: [404] });
      if (status === 404) {
        // The processing folder was deleted: looked up (and recreated) at the next claim or scan.
        this.claimFolderId = undefined;
        this.nextClaimScanAt = 0;
        return;
      }
      for (const m of body?.value ?? []) {
        if (!m.id || m.isRead === true) continue;
        present.add(m.id);
        if (this.deps.ingest.isCommitted(this.keyOf(m.id, identity(m)))) {
          await this.markHeld(m.id, this.keyOf(m.id, identity(m)));
          continue;
        }
        const since = this.claimSeen.get(m.id);
        if (since === undefined) this.claimSeen.set(m.id, now);
        else if (now - since >= this.s.claimTimeoutMs) {
          this.claimSeen.delete(m.id);
          if (await this.claimMove(m.id, this.s.mailbox)) takenOver++;
        }
      }
      url = body?.['@odata.nextLink'];
    }
    for (const id of this.claimSeen.keys()) if (!present.has(id)) this.claimSeen.delete(id);
    if (takenOver > 0) this.deps.log.warn({ mailbox: this.s.name, count: takenOver, timeoutS: this.s.claimTimeoutMs / 1000 }, 'took over stale move claims (their instance stopped before committing): moved back to the folder');
    let next = now + this.s.claimTimeoutMs;
    for (const since of this.claimSeen.values()) next = Math.min(next, since + this.s.claimTimeoutMs);
    this.nextClaimScanAt = next;
  }

  private async afterDelivery(id: string): Promise<void> {
    const a = this.s.afterDelivery;
    const url = `${this.base}/messages/${encodeURIComponent(id)}`;
    if (a.kind === 'flag') await this.graph.json('PATCH', url, { body: { isRead: true }, allow: [404] });
    else if (a.kind === 'delete') await this.graph.json('DELETE', url, { allow: [404] });
    else await this.move(id, a.folder);
  }

  private async move(id: string, folder: string): Promise<void> {
    // destinationId takes a folder id or a well-known name (archive, deleteditems, …).
    const res = await this.graph.json('POST', `${this.base}/messages/${encodeURIComponent(id)}/move`, { body: { destinationId: folder }, allow: [404] });
    if (res.status !== 404) return;
    // 404: the message is gone (someone moved or deleted it: nothing to do) — or the destination folder is.
    const still = await this.graph.json('GET', `${this.base}/messages/${encodeURIComponent(id)}?$select=id`, { allow: [404] });
    if (still.status === 404) return;
    throw new MailboxError('MAILBOX_SERVER', `Graph could not move a message to folder ${folder}: the folder was not found (404); check after_delivery / unmatched move:<folder>`, { userFault: true });
  }
}
