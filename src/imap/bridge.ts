// The IMAP bridge for one mailbox: connect (password or XOAUTH2), claim new messages on the server (a keyword
// with UNCHANGEDSINCE, or MOVE to a processing folder), fetch them in bounded batches oldest first, commit them
// to the spool, and only then flag, move or delete them; IDLE
// (restarted every idle_timeout) or polling for news; every failure ends the session and reconnects with
// capped, jittered backoff — nothing here throws out to the process.
import { untilAborted, waitWithGrace } from '../core/lifecycle.js';
import { ImapFlow, type FetchMessageObject, type MailboxObject } from 'imapflow';
import { isIP } from 'node:net';
import { Readable } from 'node:stream';
import type { Clock, Random } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import type { ImapMailboxSettings } from '../config/mailboxes.js';
import type { Secret } from '../config/secret.js';
import { MailhookError } from '../core/errors.js';
import { reconnectDelay } from './backoff.js';
import { CLAIM_KEYWORD, ClaimTracker, SKIP_KEYWORD, TOUCH_KEYWORD, conditionalStore, toSequenceSet } from './claim.js';
import { MailboxError, classify } from './errors.js';
import { MAX_HEADER_BYTES, headerSection, messageIdOf, parseHeaderFields } from './headers.js';
import { peekHeaders, type MailboxIngest, type Plan } from './ingest.js';
import type { TokenProvider } from './oauth.js';
import { MailboxStatus } from './status.js';
import type { Metrics } from '../core/metrics.js';

/** Messages up to this size are fetched together in one FETCH; larger ones are streamed one at a time. */
const INLINE_FETCH_MAX = 1024 * 1024;
/** Bytes of message sources held in memory at once when fetching small messages together. */
const GROUP_FETCH_BYTES = 8 * 1024 * 1024;
/** A command that gets no answer in this long means the connection is dead (IDLE can hide that). */
const COMMAND_TIMEOUT_MS = 60_000;
/** rounds of one drain that look again at messages left for changing during a batch FETCH (see drain) */
const CHANGED_ROUNDS = 3;

export interface ImapBridgeDeps {
  settings: ImapMailboxSettings;
  ingest: MailboxIngest;
  log: Logger;
  metrics: Metrics;
  clock: Clock;
  random: Random;
  /** OAuth2 access tokens, when settings.auth is oauth2 */
  tokens?: TokenProvider;
  /** connection timeouts, shortened by tests */
  timeouts?: { connectMs?: number; commandMs?: number };
}

/** What the dedupe key is made of (see keyOf). */
type Ident = Pick<FetchMessageObject, 'uid' | 'size' | 'internalDate'> & { messageId?: string | undefined };

type Outcome = 'committed' | 'duplicate' | 'unmatched' | 'too_large' | 'refused' | 'failed' | 'gone' | 'unreadable';

/** The server answered NO to a command (as opposed to a lost connection or a protocol error). */
const refused = (err: unknown) => (err as { responseStatus?: unknown } | undefined)?.responseStatus === 'NO';

export class ImapBridge {
  readonly status: MailboxStatus;
  private readonly s: ImapMailboxSettings;
  private readonly log: Logger;
  private stopping = false;
  /** aborted when stop()'s grace runs out: ends waits that no connection close reaches (a token request) */
  private readonly abort = new AbortController();
  private loop: Promise<void> | undefined;
  private client: ImapFlow | undefined;
  private waiter: (() => void) | undefined;
  private dirty = false;
  private readonly claims: ClaimTracker;
  /** move claims: delivered copies marked \Deleted in the processing folder, expunged after claim_timeout */
  private readonly expungeWatch: ClaimTracker;
  /** move claims: processing-folder UIDs this process moved and has not finished (a session died meanwhile) */
  private readonly held = new Set<number>();
  private heldValidity: bigint | undefined;
  /**
   * Keyword claims: messages this process claimed and has not finished, with the mod-sequence the claim gave them
   * and when. A session that died between claim and commit leaves them claimed; the next session (same UIDVALIDITY)
   * takes back those whose claim is still as we left it, younger than half of claim_timeout (see isOwnClaim), at once
   * instead of waiting claim_timeout as for another instance's.
   */
  private readonly ownClaims = new Map<number, { modseq: bigint; at: number }>();
  /** UIDs left alone for good in this UIDVALIDITY (for servers that cannot store the skip keyword) */
  private readonly skipped = new Set<number>();
  private skippedFor: bigint | undefined;
  /**
   * Move claims on a server that cannot store the skip keyword (no PERMANENTFLAGS \*, e.g. Office 365): messages
   * left alone, by their dedupe key (Message-ID, size, INTERNALDATE), which survives the UID change another
   * instance's claim and return cause; so each instance looks at such a message once per process.
   */
  private readonly skippedKeys = new Set<string>();
  /** messages the last round of batches left because they changed while a batch FETCH ran (see drain) */
  private leftChanged = 0;
  /** UIDs whose FETCH the server refused (NO) in this drain: released and passed over until the next one */
  private readonly passedOver = new Set<number>();
  /** Message-IDs already spooled from this mailbox, loaded when the UIDVALIDITY changed (dedupe fallback) */
  private knownIds: Set<string> | undefined;
  private claimMode: 'keyword' | 'move' | 'none' = 'none';
  /** move claims: when the processing folder is next looked at for claims left by dead instances */
  private nextClaimScanAt = 0;
  private spoolError: unknown;
  /** the server's text for the last command it refused (NO/BAD) in this session */
  private lastRefusal: string | undefined;

  constructor(private readonly deps: ImapBridgeDeps) {
    this.s = deps.settings;
    this.log = deps.log;
    this.status = new MailboxStatus(this.s.name, 'imap', deps.metrics, deps.clock);
    this.claims = new ClaimTracker(this.s.claimTimeoutMs);
    this.expungeWatch = new ClaimTracker(this.s.claimTimeoutMs);
  }

  start(): void {
    this.loop ??= this.run();
  }

  /** Ends the session: the batch in hand finishes (its messages are committed and marked) within graceMs, then the connection closes. */
  async stop(graceMs: number): Promise<void> {
    this.stopping = true;
    this.wake();
    if (!this.loop) {
      this.status.set('stopped');
      return;
    }
    const result = await waitWithGrace(this.loop, graceMs);
    if (result === 'timeout') {
      this.log.warn({ mailbox: this.s.name }, 'mailbox still busy at shutdown; closing its connection (unmarked messages are fetched again next start)');
      this.abort.abort();
      this.client?.close();
      await this.loop;
    }
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  /** Waits until woken (new message, closed connection, stop) or for ms. */
  private async pause(ms: number, ready: () => boolean): Promise<void> {
    if (ready()) return;
    await new Promise<void>((resolve) => {
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

  private async run(): Promise<void> {
    while (!this.stopping) {
      let failure: ReturnType<typeof classify> | undefined;
      try {
        await this.session();
      } catch (err) {
        if (this.stopping) break;
        failure = classify(err);
        this.status.failed(failure);
        if (failure.code === 'MAILBOX_AUTH_FAILED') this.deps.tokens?.invalidate();
      }
      if (this.stopping) break;
      const delay = reconnectDelay(this.s.reconnect, Math.max(1, this.status.consecutiveFailures), this.deps.random);
      if (failure) {
        this.log[failure.userFault ? 'error' : 'warn']({ mailbox: this.s.name, kind: failure.kind, code: failure.code, error: failure.message, failures: this.status.consecutiveFailures, pauseMs: delay }, 'mailbox session ended; reconnecting after a pause');
      }
      this.status.nextAttemptAt = this.deps.clock.now() + delay;
      this.status.set('backoff');
      await this.pause(delay, () => this.stopping);
    }
    this.status.set('stopped');
  }

  /** A password from password_file is read again at each login: one fixed or rotated while mailhook runs is used. */
  private reread(secret: Secret, key: string): void {
    const r = secret.reread();
    if (r.changed) this.log.info({ mailbox: this.s.name }, `${key} changed; logging in with the new one`);
    if (r.error) this.log.warn({ mailbox: this.s.name }, `${key}: ${r.error}`);
  }

  private async session(): Promise<void> {
    const s = this.s;
    this.status.set('connecting');
    let closed = false;
    let sessionError: unknown;
    if (s.auth.kind === 'password') this.reread(s.auth.password, 'password_file');
    const auth = s.auth.kind === 'password' ? { user: s.user, pass: s.auth.password.reveal() } : { user: s.user, accessToken: await untilAborted(this.requireTokens().token(), this.abort.signal) };
    const client = new ImapFlow({
      host: s.host,
      port: s.port,
      secure: s.ssl,
      // start_tls: true requires the upgrade (no silent plaintext when STARTTLS is stripped); false stays plain.
      doSTARTTLS: s.ssl ? undefined : s.startTls,
      servername: isIP(s.host) ? undefined : s.host,
      auth,
      // Only what the server answered a refused command (imapflow tells its logger alone), for our own messages.
      logger: refusalLogger((text) => (this.lastRefusal = text)),
      disableAutoIdle: true,
      clientInfo: { name: 'mailhook' },
      connectionTimeout: this.deps.timeouts?.connectMs ?? 30_000,
      greetingTimeout: this.deps.timeouts?.connectMs ?? 16_000,
      // The longest quiet pause is idle_timeout (IDLE) or poll_interval (polling; not known before connecting):
      // a socket silent for longer than that plus a command's time is dead. (min(idle, poll) here made a
      // server without IDLE time out in every poll_interval over idle_timeout + 60 s.)
      socketTimeout: Math.max(s.idleTimeoutMs, s.pollIntervalMs) + (this.deps.timeouts?.commandMs ?? COMMAND_TIMEOUT_MS),
    });
    this.client = client;
    client.on('error', (err: unknown) => {
      sessionError ??= err;
      this.wake();
    });
    client.on('close', () => {
      closed = true;
      this.wake();
    });
    client.on('exists', () => {
      this.dirty = true;
      this.wake();
    });
    const alive = () => {
      if (closed || !client.usable) throw sessionError ?? new MailboxError('MAILBOX_NETWORK', 'the server closed the connection');
    };
    try {
      await client.connect();
      const caps = client.capabilities;
      await this.ensureFolders(client);
      let box = await client.mailboxOpen(s.mailbox);
      this.onMailboxOpened(client, box);
      if (this.claimMode === 'move') {
        await this.ensureFolder(client, s.claimFolder);
        this.nextClaimScanAt = 0; // at every connect: finish or watch what a dead session left there
      }
      this.status.details = {
        host: s.host,
        folder: box.path,
        idle: caps.has('IDLE'),
        condstore: client.enabled.has('CONDSTORE'),
        move: caps.has('MOVE'),
        uidplus: caps.has('UIDPLUS'),
        claim: this.claimMode,
        ...(this.claimMode === 'move' ? { claim_folder: s.claimFolder } : {}),
        ...(this.claimMode === 'none' && s.claim === 'auto' ? { single_instance_only: true } : {}),
        uid_validity: box.uidValidity.toString(),
      };
      this.status.set('connected');
      this.log.info({ mailbox: s.name, ...this.status.details }, 'mailbox connected');
      await this.finishInterruptedDeletes(client, box);

      while (!this.stopping) {
        alive();
        this.dirty = false;
        this.status.set('connected');
        if (this.claimMode === 'move' && this.deps.clock.now() >= this.nextClaimScanAt) box = await this.scanClaimFolder(client, box);
        await this.drain(client, box);
        // Recovered once a pass has gone through, not at login: a session that fails after SELECT (a spool that
        // cannot write, a refused MOVE) would otherwise be failure #1 every time and never back off.
        this.status.recovered();
        if (this.stopping) break;
        alive();
        if (this.dirty) continue;
        // RFC 2177: IDLE is re-issued at least every 29 minutes; idle_timeout restarts it sooner, and
        // each restart re-runs the search, so nothing depends on a notification arriving.
        const stale = this.claimMode === 'move' ? this.nextClaimScanAt : this.claims.nextExpiry();
        const untilStale = stale === undefined ? Infinity : Math.max(50, stale - this.deps.clock.now());
        if (caps.has('IDLE')) {
          this.status.set('idle');
          const idling = client.idle().catch(() => undefined);
          await this.pause(Math.min(s.idleTimeoutMs, untilStale), () => this.dirty || this.stopping || closed);
          // Any command ends IDLE (DONE); NOOP also proves the connection is alive, LOGOUT ends the session.
          if (!closed && client.usable) await (this.stopping ? this.timed(client.logout(), 'LOGOUT', 5000).catch(() => undefined) : this.timed(client.noop(), 'NOOP after IDLE'));
          await idling;
        } else {
          this.status.set('polling');
          await this.pause(Math.min(s.pollIntervalMs, untilStale), () => this.dirty || this.stopping || closed);
          if (!closed && client.usable && !this.stopping) await this.timed(client.noop(), 'NOOP');
        }
      }
    } finally {
      this.client = undefined;
      if (this.stopping && !closed && client.usable) {
        await this.timed(client.logout(), 'LOGOUT', 5000).catch(() => undefined);
      }
      client.close();
    }
  }

  private requireTokens(): TokenProvider {
    if (!this.deps.tokens) throw new MailboxError('OAUTH_TOKEN_FAILED', 'oauth2 is configured but no token provider was built');
    return this.deps.tokens;
  }

  private timed<T>(p: Promise<T>, what: string, ms = this.deps.timeouts?.commandMs ?? COMMAND_TIMEOUT_MS): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new MailboxError('MAILBOX_NETWORK', `${what} got no answer within ${ms} ms`)), ms);
    });
    return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
  }

  /** Folders named by after_delivery and unmatched move:<folder> are created when missing. */
  private async ensureFolders(client: ImapFlow): Promise<void> {
    const folders = new Set<string>();
    if (this.s.afterDelivery.kind === 'move') folders.add(this.s.afterDelivery.folder);
    if (this.s.unmatched.kind === 'move') folders.add(this.s.unmatched.folder);
    if (folders.size === 0) return;
    const existing = new Set((await client.list()).map((l) => l.path));
    for (const f of folders) if (!existing.has(f)) await client.mailboxCreate(f);
  }

  /** Creates one folder when missing (another instance may create it at the same moment: that is fine). */
  private async ensureFolder(client: ImapFlow, folder: string): Promise<void> {
    const existing = new Set((await client.list()).map((l) => l.path));
    if (existing.has(folder)) return;
    try {
      await client.mailboxCreate(folder);
    } catch (err) {
      if (!new Set((await client.list()).map((l) => l.path)).has(folder)) throw err;
    }
  }

  private onMailboxOpened(client: ImapFlow, box: MailboxObject): void {
    const s = this.s;
    const canKeyword = client.enabled.has('CONDSTORE') && !box.noModseq && (box.permanentFlags?.has('\\*') ?? false);
    // RFC 6851 MOVE, with RFC 4315 UIDPLUS for the COPYUID that names the claimed message's new UID.
    const canMove = client.capabilities.has('MOVE') && client.capabilities.has('UIDPLUS');
    if (s.claim === 'keyword' && !canKeyword) {
      throw new MailboxError('MAILBOX_SERVER', `claim: keyword needs CONDSTORE and custom keywords, which ${s.host} does not offer for ${s.mailbox}; use claim: move (needs MOVE and UIDPLUS) or run one instance with claim: none`, { userFault: true });
    }
    if (s.claim === 'move' && !canMove) {
      throw new MailboxError('MAILBOX_SERVER', `claim: move needs the MOVE and UIDPLUS extensions, which ${s.host} does not offer; run one instance with claim: none`, { userFault: true });
    }
    if (s.claim === 'none') this.claimMode = 'none';
    else if (s.claim === 'move') this.claimMode = 'move';
    else this.claimMode = canKeyword ? 'keyword' : canMove ? 'move' : 'none';
    if (s.claim === 'auto' && this.claimMode === 'none') {
      this.log.warn({ mailbox: s.name, folder: s.mailbox, host: s.host }, `the server offers neither CONDSTORE with custom keywords nor MOVE with UIDPLUS: messages in mailbox ${s.name} (${s.mailbox}) are not claimed; run a single instance on it`);
    }
    if (s.claim === 'auto' && this.claimMode === 'move') {
      this.log.info({ mailbox: s.name, claimFolder: s.claimFolder }, 'the server has no CONDSTORE: messages are claimed by MOVE to the processing folder');
    }
    if (this.skippedFor !== box.uidValidity) {
      // RFC 3501 §2.3.1.1: a new UIDVALIDITY invalidates every UID we remember.
      this.skipped.clear();
      this.claims.clear();
      this.ownClaims.clear();
      this.skippedFor = box.uidValidity;
    }
    const prefix = `imap:${s.name}:`;
    const current = `${prefix}${box.uidValidity}:`;
    // Move claims key messages by Message-ID (their UIDs change on every MOVE): no UID generation to guard.
    this.knownIds = this.claimMode !== 'move' && this.ingest.hasOtherGeneration(prefix, current) ? this.ingest.knownMessageIds() : undefined;
    if (this.knownIds) this.log.warn({ mailbox: s.name, uidValidity: box.uidValidity.toString() }, 'UIDVALIDITY changed since messages were last taken; deduplicating by Message-ID');
  }

  private get ingest(): MailboxIngest {
    return this.deps.ingest;
  }

  private dedupeKey(box: MailboxObject, uid: number): string {
    return `imap:${this.s.name}:${box.uidValidity}:${uid}`;
  }

  /**
   * The spool's dedupe key. A move claim changes the UID (and the folder) of a message, so there the key is
   * its Message-ID, size and INTERNALDATE within this mailbox: a message taken over after a crash, or a second
   * copy, is not stored twice. A message without a Message-ID is keyed by its UID in the processing folder.
   */
  private keyOf(box: MailboxObject, m: Ident): string {
    if (this.claimMode !== 'move') return this.dedupeKey(box, m.uid);
    // Size and INTERNALDATE travel with a message through MOVE (RFC 3501 §6.4.7): with them, a different message
    // that reuses a Message-ID (a broken sender, a resend) gets its own key, is stored, and is never taken for
    // one the spool holds (which, with after_delivery: delete, would expunge it unstored).
    const date = m.internalDate === undefined ? NaN : Math.floor(new Date(m.internalDate).getTime() / 1000);
    if (m.messageId && m.size !== undefined && Number.isFinite(date)) return `imap:${this.s.name}:mid:${m.messageId}:${m.size}:${date}`;
    return `imap:${this.s.name}:p${box.uidValidity}:${m.uid}`;
  }

  /**
   * A session that ended between STORE \Deleted and UID EXPUNGE left committed messages flagged but present;
   * expunge those (only messages the spool holds: other \Deleted messages are not ours to remove).
   */
  private async finishInterruptedDeletes(client: ImapFlow, box: MailboxObject): Promise<void> {
    if (this.s.afterDelivery.kind !== 'delete') return;
    const deleted = await this.timed(client.search({ deleted: true }, { uid: true }), 'SEARCH DELETED');
    if (!Array.isArray(deleted) || deleted.length === 0) return;
    const ours =
      this.claimMode === 'move' && box.path === this.s.claimFolder
        ? (await this.fetchClaimed(client, deleted)).filter((m) => this.ingest.isCommitted(this.keyOf(box, m))).map((m) => m.uid)
        : deleted.filter((uid) => this.ingest.isCommitted(this.dedupeKey(box, uid)));
    if (ours.length === 0) return;
    this.log.info({ mailbox: this.s.name, count: ours.length }, 'expunging delivered messages an earlier session flagged \\Deleted but did not expunge');
    if (!(await client.messageDelete(toSequenceSet(ours), { uid: true }))) throw new MailboxError('MAILBOX_SERVER', 'UID EXPUNGE of delivered messages failed');
  }

  /** Works through everything pending, batch by batch, oldest first; returns when only others' claims remain. */
  private async drain(client: ImapFlow, box: MailboxObject): Promise<void> {
    this.passedOver.clear(); // tried again at every drain (each IDLE restart or poll)
    // Rounds left in this drain for messages a batch left because they changed while its FETCH ran (keyword
    // claims): looked at again at once rather than at the next new message or IDLE restart, a bounded number of
    // times so another client that keeps changing one cannot make a busy loop of it.
    let changedRounds = CHANGED_ROUNDS;
    while (!this.stopping) {
      this.leftChanged = 0;
      const found = await this.timed(client.search({ seen: false, deleted: false, unKeyword: SKIP_KEYWORD }, { uid: true }), 'SEARCH');
      if (!Array.isArray(found)) throw new MailboxError('MAILBOX_SERVER', `SEARCH in ${this.s.mailbox} failed`);
      const uids = found.filter((u) => !this.skipped.has(u) && !this.passedOver.has(u)).sort((a, b) => a - b);
      if (this.claimMode !== 'move') {
        this.claims.retain(new Set(uids));
        const unread = new Set(found);
        for (const uid of this.ownClaims.keys()) if (!unread.has(uid)) this.ownClaims.delete(uid);
      }
      if (uids.length === 0) return;
      let progressed = false;
      for (let i = 0; i < uids.length && !this.stopping; i += this.s.batchSize) {
        const batch = uids.slice(i, i + this.s.batchSize);
        if (await (this.claimMode === 'move' ? this.processMoveBatch(client, box, batch) : this.processBatch(client, box, batch))) progressed = true;
        if (this.spoolError) {
          const err = this.spoolError;
          this.spoolError = undefined;
          // A body stream cut by a lost connection fails inside accept too: that is the network's fault.
          if (!client.usable) throw new MailboxError('MAILBOX_NETWORK', `the connection was lost while fetching messages: ${(err as Error).message}`, { cause: err });
          throw new MailboxError('MAILBOX_SPOOL', `the spool could not take messages: ${(err as Error).message}`, { cause: err });
        }
      }
      if (!progressed && (this.leftChanged === 0 || changedRounds-- <= 0)) return;
    }
  }

  /** One bounded batch: claim, fetch, commit, then mark. Returns true when any message was dealt with. */
  private async processBatch(client: ImapFlow, box: MailboxObject, uids: number[]): Promise<boolean> {
    const changed = new Set<number>();
    const fetched = await onePerUid(client.fetch(toSequenceSet(uids), { uid: true, flags: true, size: true }, { uid: true }), new Set(uids), changed);
    fetched.sort((a, b) => a.uid - b.uid);
    this.log.debug({ mailbox: this.s.name, count: fetched.length, first: fetched[0]?.uid, last: fetched.at(-1)?.uid }, 'batch fetched');
    const now = this.deps.clock.now();
    const finish: number[] = [];
    const toClaim: FetchMessageObject[] = [];
    const stale: FetchMessageObject[] = [];
    const reclaimed: FetchMessageObject[] = [];
    for (const m of fetched) {
      if (m.flags?.has('\\Seen') || m.flags?.has('\\Deleted')) continue; // changed since the search
      if (this.ingest.isCommitted(this.dedupeKey(box, m.uid))) {
        // Committed before a crash or a lost connection: only the marking is left.
        finish.push(m.uid);
        continue;
      }
      if (this.claimMode === 'keyword' && m.flags?.has(CLAIM_KEYWORD)) {
        if (this.isOwnClaim(m, now)) reclaimed.push(m);
        else if (this.claims.isStale(m.uid, m.modseq ?? 0n, now)) stale.push(m);
        continue;
      }
      // Changed while the FETCH ran (a server that names the UID in its update): its mod-sequence is past the
      // FETCH's snapshot, and counted in the claim's UNCHANGEDSINCE it could let through another instance's claim
      // of a message the server has not reported yet. Left for the drain's next round (see drain).
      if (this.claimMode === 'keyword' && changed.has(m.uid)) {
        this.leftChanged++;
        continue;
      }
      toClaim.push(m);
    }
    if (reclaimed.length > 0) {
      this.log.info({ mailbox: this.s.name, count: reclaimed.length, uids: reclaimed.slice(0, 20).map((m) => m.uid) }, 'taking back messages this process claimed before its connection was lost (not waiting claim_timeout)');
    }

    let mine = toClaim;
    if (this.claimMode === 'keyword' && toClaim.length > 0) {
      // One conditional STORE for the batch: any change after our FETCH (another instance's claim) has a
      // mod-sequence above every one we saw, so UNCHANGEDSINCE the batch's highest refuses exactly those.
      const highest = toClaim.reduce((max, m) => ((m.modseq ?? 0n) > max ? (m.modseq ?? 0n) : max), 0n);
      if (highest === 0n) throw new MailboxError('MAILBOX_PROTOCOL', 'the server enabled CONDSTORE but sent no MODSEQ with FETCH; set claim: none for this mailbox');
      const refused = new Set(await this.timed(conditionalStore(client, toClaim.map((m) => m.uid), '+FLAGS', [CLAIM_KEYWORD], highest), 'STORE (claim)'));
      mine = toClaim.filter((m) => !refused.has(m.uid));
      if (refused.size > 0) this.log.debug({ mailbox: this.s.name, uids: [...refused] }, 'messages claimed by another instance');
      await this.rememberOwnClaims(client, mine, now);
    }
    mine = [...reclaimed, ...mine].sort((a, b) => a.uid - b.uid);
    for (const m of stale) {
      // Take over a claim whose holder died: remove it only if nothing changed since we first saw it.
      const refused = await this.timed(conditionalStore(client, [m.uid], '-FLAGS', [CLAIM_KEYWORD], this.claims.modseqOf(m.uid) ?? m.modseq ?? 0n), 'STORE (release stale claim)');
      this.claims.forget(m.uid);
      if (refused.length === 0) {
        this.log.warn({ mailbox: this.s.name, uid: m.uid, timeoutS: this.s.claimTimeoutMs / 1000 }, 'took over a stale claim (unchanged for claim_timeout: its holder stopped or lost its connection before committing)');
        this.dirty = true;
      }
    }

    const worked = await this.work(client, box, mine, finish);
    // Committed and marked, left, or released: no longer ours to take back (a session that dies in work() keeps them).
    for (const m of mine) this.ownClaims.delete(m.uid);
    return worked || stale.length > 0;
  }

  /** The mod-sequence our claim gave each message (one FETCH), so a later session can tell the claim is still ours. */
  private async rememberOwnClaims(client: ImapFlow, mine: FetchMessageObject[], now: number): Promise<void> {
    if (mine.length === 0) return;
    const asked = new Set(mine.map((m) => m.uid));
    for (const m of await onePerUid(client.fetch(toSequenceSet([...asked]), { uid: true, flags: true }, { uid: true }), asked)) {
      if (m.modseq !== undefined && m.flags?.has(CLAIM_KEYWORD)) this.ownClaims.set(m.uid, { modseq: m.modseq, at: now });
    }
  }

  /**
   * A claimed message is still ours when our claim left it at this mod-sequence (nobody changed it since) and is
   * younger than half of claim_timeout. Another instance may take it over for stale one claim_timeout after it first
   * saw it, which is after our claim: taken back by then, its batch has at least half of claim_timeout to finish,
   * as any batch has the whole of it. Older, it goes the usual stale way.
   */
  private isOwnClaim(m: FetchMessageObject, now: number): boolean {
    const own = this.ownClaims.get(m.uid);
    if (!own) return false;
    if (own.modseq === m.modseq && now - own.at < this.s.claimTimeoutMs / 2) return true;
    this.ownClaims.delete(m.uid);
    return false;
  }

  /**
   * Fetches the messages this instance holds (claimed, or the only instance), commits them, then marks them:
   * after_delivery for those in the spool (and `finish`, committed earlier), the unmatched policy, and a
   * release of those the spool could not take. Returns true when any message was dealt with.
   */
  private async work(client: ImapFlow, box: MailboxObject, mine: FetchMessageObject[], finish: number[]): Promise<boolean> {
    if (finish.length > 0) {
      // Committed before a crash or a lost connection, not marked then: counted as duplicates (not stored again).
      this.ingest.count('duplicate', finish.length);
      this.log.info({ mailbox: this.s.name, count: finish.length, uids: finish.slice(0, 20) }, 'the spool holds these messages already (an earlier session committed them and did not mark them): only marking them');
    }
    const outcomes = new Map<number, { outcome: Outcome; plan?: Plan }>();
    const small: FetchMessageObject[] = [];
    const large: FetchMessageObject[] = [];
    for (const m of mine) {
      if ((m.size ?? 0) > this.ingest.maxBytes) {
        // RFC822.SIZE says it cannot be stored: not fetched at all.
        outcomes.set(m.uid, { outcome: 'too_large' });
        this.ingest.count('too_large');
        this.log.warn({ mailbox: this.s.name, uid: m.uid, size: m.size }, `message exceeds ${this.ingest.maxBytes} bytes (smtp.max_message_bytes); left in the mailbox, marked ${SKIP_KEYWORD}`);
      } else if ((m.size ?? 0) <= INLINE_FETCH_MAX) small.push(m);
      else large.push(m);
    }
    const unreadable = (uid: number, err: unknown) => {
      outcomes.set(uid, { outcome: 'unreadable' });
      const e = classify(err);
      this.status.messageFailed(e);
      this.log.warn({ mailbox: this.s.name, uid, error: e.message }, 'the server refused to send this message; released and passed over until the next pass');
    };
    for (const group of groupBySize(small, GROUP_FETCH_BYTES)) {
      const sources = new Map<number, Buffer>();
      try {
        for await (const m of client.fetch(toSequenceSet(group.map((g) => g.uid)), { uid: true, source: true }, { uid: true })) {
          if (m.source) sources.set(m.uid, m.source);
        }
      } catch (err) {
        // NO for the group (one message the server cannot read): one at a time, so the others are taken.
        if (!refused(err) || !client.usable) throw err;
        for (const g of group) {
          if (sources.has(g.uid)) continue;
          try {
            for await (const m of client.fetch(String(g.uid), { uid: true, source: true }, { uid: true })) if (m.uid === g.uid && m.source) sources.set(m.uid, m.source);
          } catch (one) {
            if (!refused(one) || !client.usable) throw one;
            unreadable(g.uid, one);
          }
        }
      }
      // Accepted together, so the spool commits the group in one transaction (one fsync).
      await Promise.all(
        group.map(async (m) => {
          if (outcomes.has(m.uid)) return; // unreadable
          const source = sources.get(m.uid);
          if (!source) return outcomes.set(m.uid, { outcome: 'gone' });
          outcomes.set(m.uid, await this.take(box, m, headerSection(source), Readable.from([source]), source));
        }),
      );
    }
    for (const m of large) {
      let dl: Awaited<ReturnType<ImapFlow['download']>>;
      try {
        dl = await client.download(String(m.uid), undefined, { uid: true, maxBytes: this.ingest.maxBytes + 1 });
      } catch (err) {
        if (!refused(err) || !client.usable) throw err;
        unreadable(m.uid, err);
        continue;
      }
      if (!dl.content) {
        outcomes.set(m.uid, { outcome: 'gone' });
        continue;
      }
      const { header, body } = await peekHeaders(dl.content, MAX_HEADER_BYTES);
      outcomes.set(m.uid, await this.take(box, m, header, body));
    }

    const committed = [...finish];
    const leave: number[] = [];
    const release: number[] = [];
    const moveTo = new Map<string, number[]>();
    for (const [uid, { outcome, plan }] of outcomes) {
      if (outcome === 'committed' || outcome === 'duplicate') committed.push(uid);
      else if (outcome === 'too_large' || outcome === 'refused') leave.push(uid);
      else if (outcome === 'unmatched' && plan?.kind === 'unmatched') {
        if (plan.policy.kind === 'move') moveTo.set(plan.policy.folder, [...(moveTo.get(plan.policy.folder) ?? []), uid]);
        else leave.push(uid);
      } else if (outcome === 'failed') release.push(uid);
      else if (outcome === 'unreadable') {
        release.push(uid);
        if (this.claimMode !== 'move') this.passedOver.add(uid); // (move: by its UID back in the mailbox, below)
      }
    }

    if (committed.length > 0) await this.afterDelivery(client, committed);
    if (leave.length > 0 && this.claimMode === 'move') {
      // Left alone: back where it was found, marked so no instance claims it again.
      if (box.permanentFlags?.has('\\*')) await client.messageFlagsAdd(toSequenceSet(leave), [SKIP_KEYWORD], { uid: true });
      else for (const m of mine) if (leave.includes(m.uid)) this.skippedKeys.add(this.keyOf(box, m));
      for (const uid of (await this.moveBack(client, leave)).values()) this.skipped.add(uid);
    } else if (leave.length > 0) {
      for (const uid of leave) this.skipped.add(uid);
      await client.messageFlagsAdd(toSequenceSet(leave), [SKIP_KEYWORD], { uid: true });
      if (this.claimMode === 'keyword') await client.messageFlagsRemove(toSequenceSet(leave), [CLAIM_KEYWORD], { uid: true });
    }
    for (const [folder, list] of moveTo) {
      if (this.claimMode === 'keyword') await client.messageFlagsRemove(toSequenceSet(list), [CLAIM_KEYWORD], { uid: true });
      const moved = await client.messageMove(toSequenceSet(list), folder, { uid: true });
      if (!moved) throw new MailboxError('MAILBOX_SERVER', `could not move unmatched messages to ${folder}`);
    }
    if (release.length > 0 && this.claimMode === 'keyword') {
      // Not taken: let the next pass (ours or another instance's) have them without waiting for the claim timeout.
      await client.messageFlagsRemove(toSequenceSet(release), [CLAIM_KEYWORD], { uid: true });
    }
    if (release.length > 0 && this.claimMode === 'move' && client.usable) {
      for (const [from, to] of await this.moveBack(client, release)) if (outcomes.get(from)?.outcome === 'unreadable') this.passedOver.add(to);
    }
    return committed.length + leave.length + moveTo.size > 0;
  }

  /**
   * Claims by RFC 6851 UID MOVE into the processing folder: a message moves once, so only the instance whose
   * MOVE took it (COPYUID, RFC 4315) holds it. Returns source UID → UID in the processing folder.
   * Dovecot refuses a whole set when another instance moved part of it first (NO [EXPUNGEISSUED]): the rest
   * is then tried one message at a time.
   */
  private async claimByMove(client: ImapFlow, uids: number[]): Promise<Map<number, number>> {
    const folder = this.s.claimFolder;
    const won = new Map<number, number>();
    const first = await this.timed(client.messageMove(toSequenceSet(uids), folder, { uid: true }), 'UID MOVE (claim)');
    if (first && first.uidMap) for (const [from, to] of first.uidMap) won.set(from, to);
    const left = uids.filter((u) => !won.has(u));
    if (left.length > 0) {
      for (const uid of left) {
        if (!client.usable) break;
        const one = await this.timed(client.messageMove(String(uid), folder, { uid: true }), 'UID MOVE (claim)');
        const to = one ? one.uidMap?.get(uid) : undefined;
        if (to !== undefined) won.set(uid, to);
      }
      const lost = left.filter((u) => !won.has(u));
      if (lost.length > 0) this.log.debug({ mailbox: this.s.name, uids: lost }, 'messages claimed by another instance');
    }
    return won;
  }

  /** Moves messages from the processing folder (selected) back to the mailbox; returns their new UIDs there. */
  private async moveBack(client: ImapFlow, uids: number[]): Promise<Map<number, number>> {
    const moved = await this.timed(client.messageMove(toSequenceSet(uids), this.s.mailbox, { uid: true }), 'UID MOVE (release)');
    if (!moved) throw new MailboxError('MAILBOX_SERVER', `could not move ${uids.length} message(s) from ${this.s.claimFolder} back to ${this.s.mailbox}`);
    return moved.uidMap ?? new Map();
  }

  /** Selects the mailbox again after work in the processing folder; a changed UIDVALIDITY restarts the session. */
  private async reopen(client: ImapFlow, box: MailboxObject): Promise<MailboxObject> {
    const again = await this.timed(client.mailboxOpen(this.s.mailbox), 'SELECT');
    if (again.uidValidity !== box.uidValidity) throw new MailboxError('MAILBOX_SERVER', `the UIDVALIDITY of ${this.s.mailbox} changed during the session; reconnecting`);
    return again;
  }

  /** Reads the claimed messages in the (selected) processing folder: flags, size and Message-ID. */
  private async fetchClaimed(client: ImapFlow, uids: number[]): Promise<Array<FetchMessageObject & { messageId: string | undefined }>> {
    const rows = await onePerUid(client.fetch(toSequenceSet(uids), { uid: true, flags: true, size: true, internalDate: true, headers: ['message-id'] }, { uid: true }), new Set(uids));
    return rows.map((m) => ({ ...m, messageId: m.headers ? messageIdOf(parseHeaderFields(m.headers)) : undefined })).sort((a, b) => a.uid - b.uid);
  }

  /**
   * One batch with move claims: claim by MOVE, then in the processing folder fetch, commit and apply
   * after_delivery there (a message already in the spool, by Message-ID, is only marked).
   */
  private async processMoveBatch(client: ImapFlow, box: MailboxObject, uids: number[]): Promise<boolean> {
    const candidates: number[] = [];
    const keyed = this.skippedKeys.size > 0;
    for (const m of await onePerUid(client.fetch(toSequenceSet(uids), { uid: true, flags: true, ...(keyed ? { size: true, internalDate: true, headers: ['message-id'] } : {}) }, { uid: true }), new Set(uids))) {
      if (m.flags?.has('\\Seen') || m.flags?.has('\\Deleted')) continue; // changed since the search
      if (keyed && this.skippedKeys.has(this.keyOf(box, { ...m, messageId: m.headers ? messageIdOf(parseHeaderFields(m.headers)) : undefined }))) {
        this.skipped.add(m.uid); // left alone already, back under a new UID
        continue;
      }
      candidates.push(m.uid);
    }
    if (candidates.length === 0) return false;
    const won = await this.claimByMove(client, candidates.sort((a, b) => a - b));
    if (won.size === 0) {
      // Lost every one, or the MOVE failed outright (e.g. someone deleted the processing folder: recreate it).
      await this.ensureFolder(client, this.s.claimFolder);
      return false;
    }
    this.log.debug({ mailbox: this.s.name, count: won.size, folder: this.s.claimFolder }, 'messages claimed by MOVE');
    for (const uid of won.values()) this.held.add(uid);
    const proc = await this.timed(client.mailboxOpen(this.s.claimFolder), 'SELECT (processing folder)');
    if (this.heldValidity !== proc.uidValidity) {
      if (this.heldValidity !== undefined) this.held.clear();
      this.heldValidity = proc.uidValidity;
      for (const uid of won.values()) this.held.add(uid);
    }
    try {
      const claimed = await this.fetchClaimed(client, [...won.values()]);
      const lost = await this.arbitrate(client, proc, claimed);
      if (lost.size > 0) {
        // Our copy of a message another instance's MOVE copied first: removed, the other instance takes it.
        this.log.debug({ mailbox: this.s.name, count: lost.size }, 'messages claimed by another instance (a concurrent MOVE copied them first)');
        if (!(await client.messageDelete(toSequenceSet([...lost]), { uid: true }))) throw new MailboxError('MAILBOX_SERVER', `could not remove duplicate copies from ${this.s.claimFolder}`);
      }
      await this.workClaimed(client, proc, claimed.filter((m) => !lost.has(m.uid)));
      // Kept when the spool failed: given back at the next scan if the release below could not be sent.
      if (!this.spoolError) for (const uid of won.values()) this.held.delete(uid);
    } finally {
      if (client.usable) await this.reopen(client, box);
    }
    return true;
  }

  /**
   * Two instances moving the same message at the same moment can both succeed: Dovecot implements MOVE as
   * copy + expunge, and the copies land in the processing folder twice (each with its own COPYUID). UIDs are
   * given out in order, so the copy with the lowest UID is the claim: for each message we moved, any other
   * copy (same Message-ID) with a lower UID means another instance holds it. Delivered copies stay in the
   * folder (\Seen, or \Deleted until the deferred expunge) for claim_timeout, so a slower competitor still sees
   * them. Returns our UIDs that lost. (Servers that move atomically, as Exchange does, never have copies.)
   */
  private async arbitrate(client: ImapFlow, proc: MailboxObject, claimed: Array<Ident & { messageId: string | undefined }>): Promise<Set<number>> {
    const lost = new Set<number>();
    const ours = new Set(claimed.map((m) => m.uid));
    const withId = claimed.filter((m): m is Ident & { messageId: string } => m.messageId !== undefined);
    for (let i = 0; i < withId.length; i += 50) {
      const chunk = withId.slice(i, i + 50);
      const found = await this.timed(client.search({ or: chunk.map((m) => ({ header: { 'message-id': m.messageId } })) }, { uid: true }), 'SEARCH (copies)');
      const others = (Array.isArray(found) ? found : []).filter((u) => !ours.has(u));
      if (others.length === 0) continue;
      // A copy is the same Message-ID with the same size and INTERNALDATE (the dedupe key): an older, different
      // message that reused the Message-ID (e.g. delivered and left \Seen with after_delivery: flag) is no competitor.
      const lowest = new Map<string, number>();
      for (const o of await this.fetchClaimed(client, others)) {
        const key = this.keyOf(proc, o);
        if (o.uid < (lowest.get(key) ?? Infinity)) lowest.set(key, o.uid);
      }
      for (const m of chunk) if ((lowest.get(this.keyOf(proc, m)) ?? Infinity) < m.uid) lost.add(m.uid);
    }
    return lost;
  }

  /** In the selected processing folder: messages the spool holds are only marked, the others are taken. */
  private async workClaimed(client: ImapFlow, proc: MailboxObject, claimed: Array<FetchMessageObject & { messageId: string | undefined }>): Promise<void> {
    const finish: number[] = [];
    const mine: FetchMessageObject[] = [];
    for (const m of claimed) {
      if (this.ingest.isCommitted(this.keyOf(proc, m))) finish.push(m.uid);
      else mine.push(m);
    }
    await this.work(client, proc, mine, finish);
  }

  /**
   * Move claims left by a dead instance: messages still unread in the processing folder. Each is watched
   * from the first time it is seen (the server keeps no claim time); one still there after claim_timeout is
   * moved back to the mailbox — only one instance's MOVE succeeds — and claimed afresh. One the spool already
   * holds (our own crash between commit and marking) is only marked. Returns the reselected mailbox.
   */
  private async scanClaimFolder(client: ImapFlow, box: MailboxObject): Promise<MailboxObject> {
    const now = this.deps.clock.now();
    const proc = await this.timed(client.mailboxOpen(this.s.claimFolder), 'SELECT (processing folder)');
    if (this.heldValidity !== proc.uidValidity) this.held.clear();
    try {
      await this.expungeDelivered(client, now);
      const found = await this.timed(client.search({ seen: false, deleted: false }, { uid: true }), 'SEARCH (processing folder)');
      const uids = Array.isArray(found) ? found.sort((a, b) => a - b) : [];
      this.claims.retain(new Set(uids));
      const stale: number[] = [];
      const finish: number[] = [];
      for (let i = 0; i < uids.length; i += this.s.batchSize) {
        for (const m of await this.fetchClaimed(client, uids.slice(i, i + this.s.batchSize))) {
          if (this.ingest.isCommitted(this.keyOf(proc, m))) finish.push(m.uid);
          // Ours from a session that died (still held by this process): given back now, no timeout to wait.
          else if (this.held.has(m.uid) || this.claims.isStale(m.uid, 0n, now)) stale.push(m.uid);
        }
      }
      if (finish.length > 0) {
        this.ingest.count('duplicate', finish.length);
        this.log.info({ mailbox: this.s.name, count: finish.length }, 'marking messages an earlier session committed but did not mark');
        await this.afterDelivery(client, finish);
        for (const uid of finish) {
          this.claims.forget(uid);
          this.held.delete(uid);
        }
      }
      if (stale.length > 0) {
        const back = await this.moveBack(client, stale);
        for (const uid of stale) {
          this.claims.forget(uid);
          this.held.delete(uid);
        }
        if (back.size > 0) {
          this.log.warn({ mailbox: this.s.name, count: back.size, timeoutS: this.s.claimTimeoutMs / 1000 }, 'took over stale move claims (their instance stopped before committing): moved back to the mailbox');
          this.dirty = true;
        }
      }
    } finally {
      this.nextClaimScanAt = Math.min(now + this.s.claimTimeoutMs, this.claims.nextExpiry() ?? Infinity, this.expungeWatch.nextExpiry() ?? Infinity);
      if (client.usable) box = await this.reopen(client, box);
    }
    return box;
  }

  /**
   * The deferred expunge in the (selected) processing folder: a delivered copy marked \\Deleted is expunged once
   * it has been seen so for claim_timeout, long enough for a competing instance to have compared UIDs.
   */
  private async expungeDelivered(client: ImapFlow, now: number): Promise<void> {
    const deleted = await this.timed(client.search({ deleted: true }, { uid: true }), 'SEARCH DELETED (processing folder)');
    const uids = Array.isArray(deleted) ? deleted : [];
    this.expungeWatch.retain(new Set(uids));
    const due = uids.filter((uid) => this.expungeWatch.isStale(uid, 0n, now));
    if (due.length === 0) return;
    if (!(await client.messageDelete(toSequenceSet(due), { uid: true }))) throw new MailboxError('MAILBOX_SERVER', `UID EXPUNGE in ${this.s.claimFolder} failed`);
    for (const uid of due) this.expungeWatch.forget(uid);
  }

  /** Plans and commits one message. Never throws for a message's own problems; spool failures end the session. */
  private async take(box: MailboxObject, m: FetchMessageObject, header: Buffer, body: AsyncIterable<Buffer>, source?: Buffer): Promise<{ outcome: Outcome; plan?: Plan }> {
    const uid = m.uid;
    const plan = this.ingest.plan(header);
    const log = { mailbox: this.s.name, uid, messageId: plan.messageId };
    if (plan.kind === 'unmatched') {
      await drain(body);
      this.ingest.count('unmatched');
      this.log.warn({ ...log, candidates: plan.candidates.slice(0, 5), policy: plan.policy.kind === 'move' ? `move:${plan.policy.folder}` : 'leave' }, 'no route accepts any recipient of this message');
      return { outcome: 'unmatched', plan };
    }
    // A message under a new UID (after a UIDVALIDITY change) or a new INTERNALDATE (move claims: appended again)
    // whose Message-ID the spool knows is taken for one already stored only when its bytes are the same:
    // after_delivery (delete, too) then applies to a message the spool holds. A new message that reuses a
    // Message-ID, or one streamed (over 1 MiB, not held whole to compare), is stored (at worst delivered twice).
    const copyPrefix = this.claimMode === 'move' ? `imap:${this.s.name}:mid:${plan.messageId}:` : undefined;
    if (plan.messageId && source && (copyPrefix || this.knownIds?.has(plan.messageId)) && (await this.ingest.holdsCopy(source, plan.messageId, copyPrefix))) {
      await drain(body);
      this.ingest.count('duplicate');
      this.log.info(log, 'the spool holds this message (the same bytes under another UID); not stored again');
      return { outcome: 'duplicate', plan };
    }
    try {
      const result = await this.ingest.accept(plan, body, this.keyOf(box, { uid, size: m.size, internalDate: m.internalDate, messageId: plan.messageId }), { uidValidity: box.uidValidity.toString(), uid, folder: box.path, host: this.s.host });
      this.log.info({ ...log, msgId: result.id, duplicate: result.duplicate, route: plan.deliveries[0]?.route, header: plan.header, size: result.size }, result.duplicate ? 'message was already in the spool' : 'message accepted');
      return { outcome: result.duplicate ? 'duplicate' : 'committed', plan };
    } catch (err) {
      if (err instanceof MailhookError && err.code === 'MESSAGE_TOO_LARGE') {
        this.ingest.count('too_large');
        this.log.warn(log, `message exceeds ${this.ingest.maxBytes} bytes (smtp.max_message_bytes); left in the mailbox, marked ${SKIP_KEYWORD}`);
        return { outcome: 'too_large', plan };
      }
      if (err instanceof MailhookError && err.code === 'MESSAGE_REFUSED') {
        // What SMTP refuses with 5xx for its structure (too many MIME parts, a header section too large) could be stored
        // but never parsed for its webhook: dead-lettered at its first attempt. Left in the mailbox instead, marked.
        this.ingest.count('refused');
        const reason = err.details[0] ?? err.message;
        this.log.warn({ ...log, reason, messageId: plan.messageId }, `message refused by smtp.limits (${reason}); left in the mailbox, marked ${SKIP_KEYWORD}`);
        return { outcome: 'refused', plan };
      }
      this.spoolError ??= err;
      this.log.error({ ...log, err }, 'message not stored');
      return { outcome: 'failed', plan };
    }
  }

  /** The after_delivery action, for messages the spool holds. */
  private async afterDelivery(client: ImapFlow, uids: number[]): Promise<void> {
    const set = toSequenceSet(uids);
    const a = this.s.afterDelivery;
    let ok: boolean;
    if (this.claimMode === 'move' && a.kind !== 'flag') {
      // In the processing folder a delivered copy stays, \Deleted, until the deferred expunge (see arbitrate()).
      if (a.kind === 'move') ok = (await client.messageCopy(set, a.folder, { uid: true })) !== false;
      else ok = true;
      if (ok) ok = await client.messageFlagsAdd(set, ['\\Seen', '\\Deleted'], { uid: true });
    } else if (a.kind === 'delete') {
      // \Deleted then UID EXPUNGE (UIDPLUS) of just these messages.
      ok = await client.messageDelete(set, { uid: true });
    } else if (a.kind === 'flag') {
      ok = await client.messageFlagsAdd(set, ['\\Seen'], { uid: true });
      if (ok && this.claimMode === 'keyword') await client.messageFlagsRemove(set, [CLAIM_KEYWORD], { uid: true });
    } else {
      // One UID MOVE, the claim keyword (keyword claims) travelling with the message: removing it first left the
      // message neither claimed nor read in the folder for a moment, and another instance took it then (and a
      // connection lost in that moment would have stranded it). A MOVE the server refuses (the folder gone, over
      // quota) leaves it claimed where it was, the claim touched so no other instance takes it for stale while we
      // retry; it is moved on the next pass.
      this.lastRefusal = undefined;
      ok = (await client.messageMove(set, a.folder, { uid: true })) !== false;
      if (!ok && this.claimMode === 'keyword' && client.usable) {
        const refusal = this.lastRefusal;
        await client.messageFlagsAdd(set, [TOUCH_KEYWORD], { uid: true }).catch(() => undefined);
        await client.messageFlagsRemove(set, [TOUCH_KEYWORD], { uid: true }).catch(() => undefined);
        this.lastRefusal = refusal;
      }
    }
    if (!ok) {
      if (!client.usable) throw new MailboxError('MAILBOX_NETWORK', 'the connection was lost while marking delivered messages');
      const said = a.kind === 'move' && this.lastRefusal ? ` (the server: ${this.lastRefusal})` : '';
      throw new MailboxError('MAILBOX_SERVER', `after_delivery ${a.kind === 'move' ? `move:${a.folder}` : a.kind} failed for ${uids.length} message(s)${said}; they are in the spool and are marked on the next pass`);
    }
  }
}

/**
 * A logger for imapflow that keeps only the server's text of a refused command (imapflow logs `{err}` at warn,
 * `err.response` the text after NO/BAD, `err.serverResponseCode` its code) and drops everything else, error and
 * fatal included (imapflow prints those on the console when its logger has no method for them).
 */
function refusalLogger(keep: (text: string) => void): Record<'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal', (entry?: unknown) => void> {
  const drop = () => undefined;
  return {
    trace: drop,
    debug: drop,
    info: drop,
    error: drop,
    fatal: drop,
    warn: (entry) => {
      const err = (entry as { err?: { response?: unknown; serverResponseCode?: unknown } } | undefined)?.err;
      if (typeof err?.response !== 'string' || !err.response) return;
      const code = typeof err.serverResponseCode === 'string' ? `[${err.serverResponseCode}] ` : '';
      // "<tag> NO [CODE] text": the part after NO/BAD, which holds the code.
      const text = /^\S+\s+(?:NO|BAD)\s+(.*)$/is.exec(err.response)?.[1] ?? `${code}${err.response}`;
      keep(text.replace(/[\u0000-\u001f\u007f]+/g, ' ').trim().slice(0, 300));
    },
  };
}

/**
 * The rows of one UID FETCH, one per UID asked for (in the order each UID first came; rows without a UID or for one
 * not asked are dropped). While a FETCH runs the server may add unsolicited FETCH responses for messages another
 * session changes (RFC 3501 §7.4.2: FLAGS, with MODSEQ under CONDSTORE), and imapflow yields them as rows of the
 * command. Dovecot sends them without the UID; a server may name it (RFC 7162 requires it once QRESYNC is enabled,
 * some servers always do), and such a row, lacking the solicited size, INTERNALDATE and header fields, was taken for
 * the message a second time: move claims keyed it without its Message-ID and stored and delivered the message twice;
 * keyword claims and none took it twice in one batch (the spool kept one, counted a duplicate). Rows for one UID are
 * merged: other attributes as the latest row carrying them has them (the solicited ones stay); FLAGS and MODSEQ
 * together, one state of the message, from the row with FLAGS and the highest MODSEQ (a row with a MODSEQ but no
 * FLAGS tells no flags, and an older state arriving later does not win). `changed` receives the UIDs whose state
 * moved while the FETCH ran (a higher MODSEQ, or other FLAGS without CONDSTORE): their rows are not the snapshot the
 * others are.
 */
export async function onePerUid<T extends { uid?: number | undefined; flags?: Set<string> | undefined; modseq?: bigint | undefined }>(rows: AsyncIterable<T>, asked: ReadonlySet<number>, changed?: Set<number>): Promise<T[]> {
  const byUid = new Map<number, T>();
  for await (const row of rows) {
    if (row.uid === undefined || !asked.has(row.uid)) continue;
    const prev = byUid.get(row.uid);
    if (!prev) {
      byUid.set(row.uid, row);
      continue;
    }
    const { flags, modseq, ...rest } = row;
    const next = { ...prev, ...Object.fromEntries(Object.entries(rest).filter(([, v]) => v !== undefined)) } as T;
    if (flags !== undefined && (modseq === undefined || prev.modseq === undefined || modseq >= prev.modseq)) {
      const moved = modseq !== undefined && prev.modseq !== undefined ? modseq > prev.modseq : !sameFlags(flags, prev.flags);
      if (moved) changed?.add(row.uid);
      next.flags = flags;
      if (modseq !== undefined) next.modseq = modseq;
    }
    byUid.set(row.uid, next);
  }
  return [...byUid.values()];
}

function sameFlags(a: Set<string>, b: Set<string> | undefined): boolean {
  return b !== undefined && a.size === b.size && [...a].every((f) => b.has(f));
}

function groupBySize(list: FetchMessageObject[], maxBytes: number): FetchMessageObject[][] {
  const groups: FetchMessageObject[][] = [];
  let current: FetchMessageObject[] = [];
  let bytes = 0;
  for (const m of list) {
    const size = m.size ?? 0;
    if (current.length > 0 && bytes + size > maxBytes) {
      groups.push(current);
      current = [];
      bytes = 0;
    }
    current.push(m);
    bytes += size;
  }
  if (current.length > 0) groups.push(current);
  return groups;
}

async function drain(body: AsyncIterable<Buffer>): Promise<void> {
  for await (const _ of body) {
    /* discard */
  }
}
