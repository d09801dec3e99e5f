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
  /**
   * IPv6 clients are counted by this prefix, not by address: one host holds a /64 or more, so per-address
   * counters would not hold it (Postfix smtpd_client_ipv6_prefix_length, 84 by default). 128: by address.
   */
  ipv6PrefixLength?: number;
}

interface Rate {
  windowStart: number;
  messages: number;
  recipients: number;
}

/**
 * Above this many tracked clients the rate table is swept for expired windows, so memory stays bounded; the next
 * sweep waits until the table has doubled again, so a table full of live windows is not swept at every new client.
 */
const SWEEP_AT = 50_000;

/** Postfix's default for smtpd_client_ipv6_prefix_length. */
export const DEFAULT_IPV6_PREFIX = 84;

/**
 * The key a client is counted under: an IPv4 address as it is (also when written IPv4-mapped, ::ffff:a.b.c.d, as
 * a dual-stack listener reports it), an IPv6 address cut to its first `prefix` bits.
 */
export function clientKey(ip: string, prefix: number): string {
  if (isIP(ip) !== 6) return ip;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  if (mapped) return mapped[1] as string;
  const bytes = ipv6Bytes(ip);
  if (!bytes) return ip;
  for (let bit = prefix; bit < 128; bit++) bytes[bit >> 3]! &= ~(0x80 >> (bit & 7));
  return `${bytes.toString('hex')}/${prefix}`;
}

/** The 16 bytes of an IPv6 address (with "::", an embedded IPv4 tail or a zone); undefined if it is not one. */
function ipv6Bytes(ip: string): Buffer | undefined {
  let text = ip.replace(/%.*$/, '');
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (v4) {
    const [a, b, c, d] = v4.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, v4.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const head = halves[0] ? halves[0].split(':') : [];
  const tail = halves.length === 2 && halves[1] ? halves[1].split(':') : [];
  const groups = halves.length === 2 ? [...head, ...Array<string>(8 - head.length - tail.length).fill('0'), ...tail] : head;
  if (groups.length !== 8) return undefined;
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16) || 0, i * 2));
  return out;
}

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
  private readonly ipv6Prefix: number;
  private sweepAt = SWEEP_AT;

  constructor(
    private readonly config: ClientLimitsConfig,
    private readonly clock: Clock,
  ) {
    this.ipv6Prefix = config.ipv6PrefixLength ?? DEFAULT_IPV6_PREFIX;
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
    const key = clientKey(ip, this.ipv6Prefix);
    const n = this.connections.get(key) ?? 0;
    if (this.config.maxConnectionsPerIp > 0 && n >= this.config.maxConnectionsPerIp && !this.isExempt(ip)) return false;
    this.connections.set(key, n + 1);
    return true;
  }

  /** The pair of a successful openConnection. */
  closeConnection(ip: string): void {
    const key = clientKey(ip, this.ipv6Prefix);
    const n = this.connections.get(key) ?? 0;
    if (n <= 1) this.connections.delete(key);
    else this.connections.set(key, n - 1);
  }

  connectionsFrom(ip: string): number {
    return this.connections.get(clientKey(ip, this.ipv6Prefix)) ?? 0;
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
    const key = clientKey(ip, this.ipv6Prefix);
    let r = this.rates.get(key);
    if (!r || now - r.windowStart >= this.config.windowMs) {
      if (!r && this.rates.size >= this.sweepAt) this.sweep(now);
      r = { windowStart: now, messages: 0, recipients: 0 };
      this.rates.set(key, r);
    }
    return r;
  }

  private sweep(now: number): void {
    for (const [key, r] of this.rates) if (now - r.windowStart >= this.config.windowMs) this.rates.delete(key);
    this.sweepAt = Math.max(SWEEP_AT, this.rates.size * 2);
  }
}
