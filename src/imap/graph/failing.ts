// The Graph messages a pass passed over (their $value, claim or marking failed): each is tried again by itself on a
// backoff of its own, so the delta link moves on and one message that keeps failing holds up neither new mail nor
// the listing. Kept in the spool's mailbox_state (through load/save) so that a restart still tries them.
import type { Random } from '../../core/clock.js';
import { reconnectDelay, type ReconnectPolicy } from '../backoff.js';

export interface FailingMessage {
  /** the message's Graph id as it is now (a move claim given back gives it a new one) */
  id: string;
  /** its identity across moves ("mid:<Message-ID>:<received>"), when known */
  ident?: string;
  /** failed tries so far */
  tries: number;
  /** when it is tried again (epoch ms) */
  nextAt: number;
  /** first failure (epoch ms) */
  since: number;
}

export interface FailingMessagesOptions {
  policy: ReconnectPolicy;
  random: Random;
  /** at most this many are kept; past it a failure is not recorded and the pass keeps its delta link instead */
  max: number;
  /** what the list belongs to (endpoint, user, folder): a saved list of another scope is not used */
  scope: string;
  load?: () => string | undefined;
  save?: (value: string | undefined) => void;
}

export class FailingMessages {
  private readonly items = new Map<string, FailingMessage>();

  constructor(private readonly o: FailingMessagesOptions) {
    const raw = o.load?.();
    if (!raw) return;
    try {
      const saved = JSON.parse(raw) as { scope?: string; items?: FailingMessage[] };
      if (saved.scope !== o.scope || !Array.isArray(saved.items)) return;
      for (const m of saved.items) {
        if (typeof m?.id === 'string' && Number.isFinite(m.tries) && Number.isFinite(m.nextAt) && Number.isFinite(m.since)) this.items.set(m.id, { id: m.id, ...(typeof m.ident === 'string' ? { ident: m.ident } : {}), tries: m.tries, nextAt: m.nextAt, since: m.since });
      }
    } catch {
      /* unreadable: the delta passes list them again only if they change; an empty list is the safe reading */
    }
  }

  get size(): number {
    return this.items.size;
  }

  get(id: string): FailingMessage | undefined {
    return this.items.get(id);
  }

  /** Listed again by a delta pass before its time: left to its own retry. */
  isWaiting(id: string, now: number): boolean {
    const m = this.items.get(id);
    return m !== undefined && m.nextAt > now;
  }

  /** The ones due now, earliest first. */
  due(now: number): FailingMessage[] {
    return [...this.items.values()].filter((m) => m.nextAt <= now).sort((a, b) => a.nextAt - b.nextAt);
  }

  /**
   * Records a failed try of message `id`, now known as `nowId` (its id after a claim was given back). Returns the
   * entry, or undefined when the list is full and the message was not recorded (the caller keeps its delta link).
   */
  failed(id: string, nowId: string, ident: string | undefined, now: number): FailingMessage | undefined {
    const before = this.items.get(id);
    if (!before && this.items.size >= this.o.max) return undefined;
    this.items.delete(id);
    const tries = (before?.tries ?? 0) + 1;
    const m: FailingMessage = { id: nowId, ...(ident ?? before?.ident ? { ident: ident ?? before?.ident } : {}), tries, nextAt: now + reconnectDelay(this.o.policy, tries, this.o.random), since: before?.since ?? now };
    this.items.set(nowId, m);
    this.persist();
    return m;
  }

  /** Taken, gone or read: no longer tried. */
  forget(id: string): boolean {
    if (!this.items.delete(id)) return false;
    this.persist();
    return true;
  }

  private persist(): void {
    this.o.save?.(this.items.size === 0 ? undefined : JSON.stringify({ scope: this.o.scope, items: [...this.items.values()] }));
  }
}
