// From a mailbox message to spool.accept: the recipient from headers (routing decides route and key), the
// unmatched policy, the envelope IMAP does not carry, and dedupe lookups. Shared by the IMAP and Graph bridges.
import { Readable, pipeline } from 'node:stream';
import { MailhookError } from '../core/errors.js';
import { createDataFilter } from '../smtp/data-filter.js';
import type { Metrics } from '../core/metrics.js';
import type { Config, ResolvedRoute } from '../config/load.js';
import type { UnmatchedPolicy } from '../config/mailboxes.js';
import type { RecipientHeader } from '../config/schema.js';
import type { Router } from '../routing/router.js';
import type { Spool } from '../spool/spool.js';
import type { AcceptResult } from '../spool/accept.js';
import type { Envelope, PlannedDelivery } from '../spool/types.js';
import { envelopeSenderOf, headerEnd, messageIdOf, parseHeaderFields } from './headers.js';
import { candidateRecipients, chooseRecipient } from './recipients.js';

export type Plan =
  | {
      kind: 'deliver';
      deliveries: PlannedDelivery[];
      envelope: Envelope;
      /** the header the recipient came from; null when the unmatched policy named the route */
      header: RecipientHeader | null;
      messageId: string | undefined;
    }
  | { kind: 'unmatched'; policy: Exclude<UnmatchedPolicy, { kind: 'route' }>; messageId: string | undefined; candidates: string[] };

export interface IngestDeps {
  router: Router;
  routes: readonly ResolvedRoute[];
  spool: Spool;
  metrics: Metrics;
  /** the same limit as SMTP (smtp.max_message_bytes) */
  maxBytes: number;
  /**
   * SMTP's structure limits (smtp.limits, see ingestLimits): a message past them could be stored but never parsed
   * for its webhook, so it is left in the mailbox as SMTP would refuse it
   */
  limits: { maxHeaderBytes: number; maxReceived: number; maxMimeParts: number; maxMimeDepth: number };
}

/**
 * smtp.limits as a mailbox's messages are checked against them: those that keep a message parseable. Not
 * max_received_headers: a hop count stops a relay loop, and a message read from a mailbox has arrived (mailhook
 * relays nothing on); a long forwarding chain is still delivered.
 */
export function ingestLimits(limits: Config['smtp']['limits']): IngestDeps['limits'] {
  return { maxHeaderBytes: limits.max_header_bytes, maxReceived: Number.MAX_SAFE_INTEGER, maxMimeParts: limits.max_mime_parts, maxMimeDepth: limits.max_mime_depth };
}

export interface MailboxRef {
  name: string;
  recipientsFrom: readonly RecipientHeader[];
  unmatched: UnmatchedPolicy;
}

export class MailboxIngest {
  private readonly sinks: ReadonlySet<string>;
  private readonly hasKey;
  private readonly idsWithPrefix;
  private readonly otherGeneration;
  private readonly sameIdAndSize;
  /**
   * Keys whose accept failed in this process. A failed WAL sync rejects an accept whose rows are committed but
   * not known to be on disk: such a key is not taken as committed (which would let after_delivery delete the
   * message) until a later accept of the same message resolves — as a duplicate, after a sync that succeeded.
   */
  private readonly unsure = new Set<string>();

  constructor(
    private readonly deps: IngestDeps,
    private readonly mailbox: MailboxRef,
    private readonly source: 'imap' | 'graph',
  ) {
    this.sinks = new Set(deps.routes.filter((r) => r.sink).map((r) => r.name));
    this.hasKey = deps.spool.db.prepare(`SELECT 1 FROM messages WHERE dedupe_key = ?`).pluck();
    // Range on the unique dedupe_key index: every key of one mailbox shares the prefix "<source>:<name>:".
    this.otherGeneration = deps.spool.db.prepare(`SELECT 1 FROM messages WHERE (dedupe_key >= ? AND dedupe_key < ?) OR (dedupe_key >= ? AND dedupe_key < ?) LIMIT 1`).pluck();
    this.sameIdAndSize = deps.spool.db.prepare(`SELECT id, dedupe_key AS key FROM messages WHERE dedupe_key >= ? AND dedupe_key < ? AND size = ? AND json_extract(meta, '$.messageId') = ?`);
    this.idsWithPrefix = deps.spool.db.prepare(`SELECT json_extract(meta, '$.messageId') FROM messages WHERE dedupe_key >= ? AND dedupe_key < ? AND meta IS NOT NULL`).pluck();
  }

  get maxBytes(): number {
    return this.deps.maxBytes;
  }

  /** Decides what happens to a message from its header section. */
  plan(headerSection: Buffer): Plan {
    const fields = parseHeaderFields(headerSection);
    const messageId = messageIdOf(fields);
    const envelopeBase = { mailFrom: envelopeSenderOf(fields), remoteAddress: null, helo: null, tls: null };
    const chosen = chooseRecipient(fields, this.mailbox.recipientsFrom, (a) => this.deps.router.match(a));
    if (chosen) {
      return {
        kind: 'deliver',
        deliveries: [{ route: chosen.route, recipients: [{ address: chosen.address, key: chosen.key }], status: this.statusFor(chosen.route) }],
        envelope: { ...envelopeBase, rcptTo: [chosen.address] },
        header: chosen.header,
        messageId,
      };
    }
    const candidates = candidateRecipients(fields, this.mailbox.recipientsFrom).map((c) => c.address);
    const policy = this.mailbox.unmatched;
    if (policy.kind === 'route') {
      const address = candidates[0] ?? '';
      return {
        kind: 'deliver',
        deliveries: [{ route: policy.route, recipients: [{ address, key: null }], status: this.statusFor(policy.route) }],
        envelope: { ...envelopeBase, rcptTo: address ? [address] : [] },
        header: null,
        messageId,
      };
    }
    return { kind: 'unmatched', policy, messageId, candidates };
  }

  /** True when the spool already holds a message under this key (committed before a crash or by an earlier pass). */
  isCommitted(dedupeKey: string): boolean {
    return !this.unsure.has(dedupeKey) && this.hasKey.get(dedupeKey) !== undefined;
  }

  /**
   * True when the spool holds UID keys of this mailbox ("<prefix><uidvalidity>:<uid>") outside the current
   * generation ("<current>", e.g. "imap:name:<uidvalidity>:"): the UIDs were renumbered and Message-IDs must
   * guard against duplicates. Keys that are not UID keys (the move claim's "<prefix>mid:…") do not count.
   */
  hasOtherGeneration(prefix: string, current: string): boolean {
    const upper = (k: string) => `${k.slice(0, -1)};`; // ';' sorts right after ':'
    // UID keys continue the prefix with a digit: [prefix"0", prefix":") holds exactly those (':' follows '9').
    return this.otherGeneration.get(`${prefix}0`, current, upper(current), `${prefix}:`) !== undefined;
  }

  /** Message-IDs of every message this mailbox has put in the spool (the fallback after a UIDVALIDITY change). */
  knownMessageIds(): Set<string> {
    const prefix = `${this.source}:${this.mailbox.name}:`;
    const upper = `${this.source}:${this.mailbox.name};`; // ';' sorts right after ':'
    return new Set((this.idsWithPrefix.all(prefix, upper) as Array<string | null>).filter((v): v is string => typeof v === 'string'));
  }

  /**
   * True when the spool holds, from this mailbox, a message with this Message-ID and exactly these bytes. keyPrefix
   * narrows the search to keys starting with it (an index range); without it every key of the mailbox is looked at.
   */
  async holdsCopy(source: Buffer, messageId: string, keyPrefix = `${this.source}:${this.mailbox.name}:`): Promise<boolean> {
    const upper = `${keyPrefix.slice(0, -1)};`; // ';' sorts right after ':'
    for (const { id, key } of this.sameIdAndSize.all(keyPrefix, upper, source.length, messageId) as Array<{ id: string; key: string }>) {
      if (this.unsure.has(key)) continue; // perhaps a row not on disk: not taken as held (stored, deduplicated, again)
      const stored = await this.deps.spool.readRaw(id).catch(() => undefined); // removed meanwhile: not held
      if (stored?.equals(source)) return true;
    }
    return false;
  }

  /** Stores the message; resolves after the durable commit (or with duplicate: true when the key was known). */
  async accept(plan: Extract<Plan, { kind: 'deliver' }>, body: AsyncIterable<Buffer>, dedupeKey: string, meta: Record<string, unknown>): Promise<AcceptResult> {
    let result: AcceptResult;
    // Through the SMTP path's checks, the bytes kept as the server holds them (a lone LF stays one).
    const checked = pipeline(Readable.from(body), createDataFilter({ bareLf: 'keep', maxBytes: this.deps.maxBytes, ...this.deps.limits }), () => undefined);
    try {
      result = await this.deps.spool.accept({
        source: this.source,
        envelope: plan.envelope,
        deliveries: plan.deliveries,
        body: checked,
        maxBytes: this.deps.maxBytes,
        dedupeKey,
        meta: { mailbox: this.mailbox.name, messageId: plan.messageId ?? null, recipientHeader: plan.header, ...meta },
      });
    } catch (err) {
      // Only a failure of the spool can leave a committed row behind; a refusal of the message (too large, past a
      // structure limit) cannot.
      if (!(err instanceof MailhookError && (err.code === 'MESSAGE_TOO_LARGE' || err.code === 'MESSAGE_REFUSED'))) this.unsure.add(dedupeKey);
      throw err;
    }
    this.unsure.delete(dedupeKey);
    if (!result.duplicate) this.deps.metrics.messagesAccepted.inc({ source: this.source });
    this.deps.metrics.mailboxMessages.inc({ mailbox: this.mailbox.name, outcome: result.duplicate ? 'duplicate' : 'accepted' });
    return result;
  }

  /**
   * Counts messages not accepted here: unmatched, too large, past an smtp.limits structure limit (`refused`), or
   * already in the spool (`duplicate`: not stored again).
   */
  count(outcome: 'unmatched' | 'too_large' | 'refused' | 'duplicate', n = 1): void {
    if (n > 0) this.deps.metrics.mailboxMessages.inc({ mailbox: this.mailbox.name, outcome }, n);
  }

  private statusFor(route: string): 'delivered' | 'pending' {
    return this.sinks.has(route) ? 'delivered' : 'pending';
  }
}

/** Splits a stream into its header section and the whole message (the header chunks replayed first). */
export async function peekHeaders(stream: AsyncIterable<Buffer>, limit: number): Promise<{ header: Buffer; body: AsyncIterable<Buffer> }> {
  const iterator = stream[Symbol.asyncIterator]();
  const head: Buffer[] = [];
  let size = 0;
  let done = false;
  while (size < limit) {
    const next = await iterator.next();
    if (next.done) {
      done = true;
      break;
    }
    const chunk = Buffer.isBuffer(next.value) ? next.value : Buffer.from(next.value as Uint8Array);
    head.push(chunk);
    size += chunk.length;
    if (headerEnd(Buffer.concat(head)) >= 0) break;
  }
  const joined = Buffer.concat(head);
  const end = headerEnd(joined);
  const header = end >= 0 ? joined.subarray(0, end) : joined;
  async function* body(): AsyncGenerator<Buffer> {
    if (joined.length > 0) yield joined;
    if (done) return;
    for (;;) {
      const next = await iterator.next();
      if (next.done) return;
      yield Buffer.isBuffer(next.value) ? next.value : Buffer.from(next.value as Uint8Array);
    }
  }
  return { header, body: body() };
}
