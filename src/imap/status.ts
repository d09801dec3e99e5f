// Each mailbox's state (connecting, idle, backoff, last error, …) for readiness, metrics and logs.
import type { Clock } from '../core/clock.js';
import type { Metrics } from '../core/metrics.js';
import type { MailboxError } from './errors.js';

export const MAILBOX_STATES = ['starting', 'connecting', 'connected', 'idle', 'polling', 'backoff', 'stopped'] as const;
export type MailboxState = (typeof MAILBOX_STATES)[number];

/** States in which the mailbox is being read: readiness counts these as healthy. */
const HEALTHY: ReadonlySet<MailboxState> = new Set(['connected', 'idle', 'polling']);

export type MailboxStatusView = {
  name: string;
  method: 'imap' | 'microsoft_graph';
  state: MailboxState;
  since: string;
  healthy: boolean;
  consecutive_failures: number;
  next_attempt_at: string | null;
  last_error: { kind: string; code: string; message: string; at: string } | null;
  /** what the server offers that the bridge uses (IMAP: IDLE, CONDSTORE, MOVE, UIDPLUS) and the claim mode in use */
  details: Record<string, unknown>;
};

export class MailboxStatus {
  state: MailboxState = 'starting';
  since: number;
  consecutiveFailures = 0;
  nextAttemptAt: number | null = null;
  lastError: { kind: string; code: string; message: string; at: number } | null = null;
  details: Record<string, unknown> = {};

  constructor(
    readonly name: string,
    readonly method: 'imap' | 'microsoft_graph',
    private readonly metrics: Metrics,
    private readonly clock: Clock,
  ) {
    this.since = clock.now();
    this.publish();
  }

  set(state: MailboxState): void {
    if (state === this.state) return;
    this.state = state;
    this.since = this.clock.now();
    if (state !== 'backoff') this.nextAttemptAt = null;
    this.publish();
  }

  /** A session failed: count it and remember it (the message names no secret). */
  failed(err: MailboxError): void {
    this.consecutiveFailures++;
    this.lastError = { kind: err.kind, code: err.code, message: err.message, at: this.clock.now() };
    this.metrics.mailboxErrors.inc({ mailbox: this.name, kind: err.kind });
  }

  /** One message failed and was passed over (the session goes on, no backoff): remembered and counted. */
  messageFailed(err: MailboxError): void {
    this.lastError = { kind: err.kind, code: err.code, message: err.message, at: this.clock.now() };
    this.metrics.mailboxErrors.inc({ mailbox: this.name, kind: err.kind });
  }

  /** A session got as far as reading the mailbox: the failure streak ends (the last error stays visible). */
  recovered(): void {
    this.consecutiveFailures = 0;
  }

  get healthy(): boolean {
    return HEALTHY.has(this.state);
  }

  view(): MailboxStatusView {
    return {
      name: this.name,
      method: this.method,
      state: this.state,
      since: new Date(this.since).toISOString(),
      healthy: this.healthy,
      consecutive_failures: this.consecutiveFailures,
      next_attempt_at: this.nextAttemptAt === null ? null : new Date(this.nextAttemptAt).toISOString(),
      last_error: this.lastError && { ...this.lastError, at: new Date(this.lastError.at).toISOString() },
      details: this.details,
    };
  }

  private publish(): void {
    for (const s of MAILBOX_STATES) this.metrics.mailboxState.set({ mailbox: this.name, state: s }, s === this.state ? 1 : 0);
  }
}
