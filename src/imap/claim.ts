// Server-side claims so several instances on one mailbox take each message once: a keyword stored with
// UNCHANGEDSINCE (RFC 7162 §3.1.3), UID sets, and the stale-claim timer (pure parts tested directly).
import type { ImapFlow } from 'imapflow';

/** Set on a message by the instance that takes it; removed by after_delivery (or kept with delete). */
export const CLAIM_KEYWORD = '$MailhookClaimed';
/**
 * Set and removed at once on a claimed message whose move the server refused: the message stays claimed, and its
 * changed mod-sequence tells other instances the claim's holder is alive (their stale-claim timers start again).
 */
export const TOUCH_KEYWORD = '$MailhookTouched';
/** Set on a message the bridge leaves in the mailbox for good (unmatched with "leave", over the size limit). */
export const SKIP_KEYWORD = '$MailhookSkipped';

/** Compresses UIDs into an IMAP sequence set ("1:3,7,9:10"), ascending. */
export function toSequenceSet(uids: readonly number[]): string {
  const sorted = [...new Set(uids)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < sorted.length; ) {
    const start = sorted[i] as number;
    let end = start;
    while (i + 1 < sorted.length && sorted[i + 1] === end + 1) {
      i++;
      end++;
    }
    parts.push(start === end ? `${start}` : `${start}:${end}`);
    i++;
  }
  return parts.join(',');
}

/** Expands an IMAP sequence set of UIDs ("1:3,7"); "*" is not meaningful in a MODIFIED response and is ignored. */
export function parseSequenceSet(set: string): number[] {
  const out: number[] = [];
  for (const part of set.split(',')) {
    const m = /^(\d+)(?::(\d+))?$/.exec(part.trim());
    if (!m) continue;
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    for (let u = Math.min(a, b); u <= Math.max(a, b); u++) out.push(u);
  }
  return out;
}

/**
 * Remembers claims held by someone else. A claim is stale when the same message, at the same mod-sequence,
 * has been seen claimed for longer than the timeout: its holder died between claim and commit. The first
 * sighting starts the timer (there is no clock on the server to read), so after a restart a stale claim
 * is taken over one timeout later.
 */
export class ClaimTracker {
  private readonly seen = new Map<number, { modseq: bigint; since: number }>();
  constructor(private readonly timeoutMs: number) {}

  /** Records a claimed message; true when its claim has gone unchanged for the timeout. */
  isStale(uid: number, modseq: bigint, now: number): boolean {
    const prev = this.seen.get(uid);
    if (!prev || prev.modseq !== modseq) {
      this.seen.set(uid, { modseq, since: now });
      return false;
    }
    return now - prev.since >= this.timeoutMs;
  }

  /** The mod-sequence the claim had when first seen (the condition for taking it over). */
  modseqOf(uid: number): bigint | undefined {
    return this.seen.get(uid)?.modseq;
  }

  forget(uid: number): void {
    this.seen.delete(uid);
  }

  /** Drops entries for messages no longer claimed by others (processed, gone). */
  retain(uids: ReadonlySet<number>): void {
    for (const uid of this.seen.keys()) if (!uids.has(uid)) this.seen.delete(uid);
  }

  /** When the earliest watched claim becomes stale, or undefined when none is watched. */
  nextExpiry(): number | undefined {
    let next: number | undefined;
    for (const v of this.seen.values()) next = next === undefined ? v.since + this.timeoutMs : Math.min(next, v.since + this.timeoutMs);
    return next;
  }

  clear(): void {
    this.seen.clear();
  }
}

interface ExecResponse {
  response: { attributes?: Array<{ type?: string; value?: unknown; section?: Array<{ type?: string; value?: unknown }> }> };
  next(): void;
}
type Exec = (command: string, attributes: unknown[], options?: Record<string, unknown>) => Promise<ExecResponse>;

/**
 * UID STORE with UNCHANGEDSINCE: changes only messages whose mod-sequence is still <= unchangedSince.
 * Returns the UIDs the server refused (the MODIFIED response code); every other UID in the set was stored
 * (or no longer exists). imapflow's messageFlagsAdd() reports only a boolean, so this issues the command
 * through its exec() to read the tagged response. The caller must not be idling (it breaks IDLE first).
 */
export async function conditionalStore(client: ImapFlow, uids: readonly number[], op: '+FLAGS' | '-FLAGS', flags: readonly string[], unchangedSince: bigint): Promise<number[]> {
  if (uids.length === 0) return [];
  const exec = (client as unknown as { exec?: Exec }).exec;
  if (typeof exec !== 'function') throw new Error('this imapflow version has no exec(); conditional STORE is unavailable');
  const response = await exec.call(client, 'UID STORE', [
    { type: 'SEQUENCE', value: toSequenceSet(uids) },
    [
      { type: 'ATOM', value: 'UNCHANGEDSINCE' },
      { type: 'ATOM', value: unchangedSince.toString() },
    ],
    { type: 'ATOM', value: `${op}.SILENT` },
    flags.map((f) => ({ type: 'ATOM', value: f })),
  ]);
  try {
    const section = response.response.attributes?.[0]?.section;
    if (section && String(section[0]?.value ?? '').toUpperCase() === 'MODIFIED') return parseSequenceSet(String(section[1]?.value ?? ''));
    return [];
  } finally {
    response.next();
  }
}
