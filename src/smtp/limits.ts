// Per-client-IP counters (connections, message and recipient rates) as pure state with an injected clock.
import { BlockList, isIP } from 'node:net';
import type { Clock } from '../core/clock.js';

export interface ClientLimitsConfig {
  /** concurrent connections from one IP; 0 turns the check off */
  maxConnectionsPerIp: number;
  /** MAIL commands from one IP per window; 0 turns the check off */
  maxMessagesPerIp: number;
  /** RCPT commands from one IP per window; 0 turns the check off */
  maxRecipientsPerIp: number;
  windowMs: number;
  /** addresses or CIDR ranges the per-IP limits do not apply to (Postfix: smtpd_client_event_limit_exceptions) */
  exempt: readonly string[];
}

interface Rate {
  windowStart: number;
  messages: number;
  recipients: number;
}

/** Above this many tracked IPs the rate table is swept for expired windows, so memory stays bounded. */
const SWEEP_AT = 50_000;

/** Parses "a.b.c.d", "a.b.c.d/n", "v6" or "v6/n"; undefined when it is neither. */
export function parseCidr(entry: string): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } | undefined {
  const [address = '', bits, extra] = entry.trim().split('/');
  if (extra !== undefined) return undefined;
  const v = isIP(address);
  if (v === 0) return undefined;
  const max = v === 4 ? 32 : 128;
  const prefix = bits === undefined ? max : /^\d{1,3}$/.test(bits) ? Number(bits) : NaN;
  if (!(prefix >= 0 && prefix <= max)) return undefined;
  return { address, prefix, family: v === 4 ? 'ipv4' : 'ipv6' };
}

export class ClientLimits {
  private readonly connections = new Map<string, number>();
  private readonly rates = new Map<string, Rate>();
  private readonly exempt = new BlockList();
  private readonly exemptCache = new Map<string, boolean>();

  constructor(
    private readonly config: ClientLimitsConfig,
    private readonly clock: Clock,
  ) {
    for (const entry of config.exempt) {
      const c = parseCidr(entry);
      if (c) this.exempt.addSubnet(c.address, c.prefix, c.family);
    }
  }

  isExempt(ip: string): boolean {
    let v = this.exemptCache.get(ip);
    if (v === undefined) {
      const family = isIP(ip);
      v = family === 0 ? false : this.exempt.check(ip, family === 4 ? 'ipv4' : 'ipv6');
      if (this.exemptCache.size > 10_000) this.exemptCache.clear();
      this.exemptCache.set(ip, v);
    }
    return v;
  }

  /** Counts a new connection; false when the IP already holds its maximum (the caller refuses it, nothing counted). */
  openConnection(ip: string): boolean {
    const n = this.connections.get(ip) ?? 0;
    if (this.config.maxConnectionsPerIp > 0 && n >= this.config.maxConnectionsPerIp && !this.isExempt(ip)) return false;
    this.connections.set(ip, n + 1);
    return true;
  }

  /** The pair of a successful openConnection. */
  closeConnection(ip: string): void {
    const n = this.connections.get(ip) ?? 0;
    if (n <= 1) this.connections.delete(ip);
    else this.connections.set(ip, n - 1);
  }

  connectionsFrom(ip: string): number {
    return this.connections.get(ip) ?? 0;
  }

  /** Counts one message (a MAIL command); false when the IP is over its rate in this window. */
  takeMessage(ip: string): boolean {
    if (this.config.maxMessagesPerIp <= 0 || this.isExempt(ip)) return true;
    const r = this.rate(ip);
    if (r.messages >= this.config.maxMessagesPerIp) return false;
    r.messages++;
    return true;
  }

  /** Counts one recipient (a RCPT command); false when the IP is over its rate in this window. */
  takeRecipient(ip: string): boolean {
    if (this.config.maxRecipientsPerIp <= 0 || this.isExempt(ip)) return true;
    const r = this.rate(ip);
    if (r.recipients >= this.config.maxRecipientsPerIp) return false;
    r.recipients++;
    return true;
  }

  get trackedIps(): number {
    return this.rates.size;
  }

  private rate(ip: string): Rate {
    const now = this.clock.now();
    let r = this.rates.get(ip);
    if (!r || now - r.windowStart >= this.config.windowMs) {
      if (!r && this.rates.size >= SWEEP_AT) this.sweep(now);
      r = { windowStart: now, messages: 0, recipients: 0 };
      this.rates.set(ip, r);
    }
    return r;
  }

  private sweep(now: number): void {
    for (const [ip, r] of this.rates) if (now - r.windowStart >= this.config.windowMs) this.rates.delete(ip);
  }
}
