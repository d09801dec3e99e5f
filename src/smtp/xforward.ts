// XFORWARD (http://www.postfix.org/XFORWARD_README.html): reading a trusted relay's attributes, and who a transaction's client is.
import { isIP } from 'node:net';
import type { SMTPServerSession } from 'smtp-server';
import { normalizeIPv6 } from 'smtp-server/lib/ipv6-normalize.js';

/** The attributes smtp-server announces in its EHLO reply (XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE). */
const ATTRIBUTES: ReadonlySet<string> = new Set(['NAME', 'ADDR', 'PORT', 'PROTO', 'HELO', 'IDENT', 'SOURCE']);
/** Postfix's value for an attribute it does not know (XFORWARD_README: "[UNAVAILABLE]"). */
const UNAVAILABLE = '[UNAVAILABLE]';
/** Longest attribute value taken: Postfix sends a host name (255) or a HELO argument, never more. */
const MAX_VALUE = 255;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x1f\x7f]/;

/** One XFORWARD command's attributes: a value, or false for [UNAVAILABLE]. ADDR is a normalized IP address. */
export type XforwardAttributes = Map<string, string | false>;

/**
 * The arguments of one XFORWARD command (after the command name), all checked before any is applied, as Postfix's
 * smtpd does: `name=value` pairs, values xtext-encoded (RFC 3461 §4), names from the announced list. ADDR is an IPv4
 * or IPv6 address (Postfix writes IPv6 as "IPV6:2001:db8::1"), normalized as smtp-server writes client addresses.
 * HELO is kept as sent, lower-cased (smtp-server lower-cases the EHLO argument too). Returns why not, otherwise.
 */
export function parseXforward(args: readonly string[]): { attributes: XforwardAttributes } | { error: 'syntax' | 'attribute' | 'address' } {
  if (args.length === 0) return { error: 'syntax' };
  const attributes: XforwardAttributes = new Map();
  for (const arg of args) {
    const eq = arg.indexOf('=');
    if (eq <= 0) return { error: 'syntax' };
    const name = arg.slice(0, eq).toUpperCase();
    if (!ATTRIBUTES.has(name)) return { error: 'attribute' };
    const value = decodeXtext(arg.slice(eq + 1));
    if (value === undefined || value.length > MAX_VALUE || CONTROL.test(value)) return { error: 'syntax' };
    if (value.toUpperCase() === UNAVAILABLE) {
      attributes.set(name, false);
      continue;
    }
    if (name === 'ADDR') {
      const ip = value.replace(/^IPV6:/i, '');
      const family = isIP(ip);
      if (family === 0) return { error: 'address' };
      attributes.set(name, family === 6 ? unmapped(normalizeIPv6(ip).toLowerCase()) : ip);
      continue;
    }
    attributes.set(name, name === 'HELO' ? value.toLowerCase() : value);
  }
  return { attributes };
}

/**
 * An IPv4 address in IPv6 form (::ffff:a.b.c.d or ::ffff:XXXX:XXXX, normalized) is the IPv4 address, as smtp-server
 * writes a socket's peer: SPF's ip4: mechanisms judge it. Any other address as it is.
 */
function unmapped(v6: string): string {
  const dotted = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(v6);
  if (dotted) return dotted[1]!;
  const hex = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(v6);
  if (!hex) return v6;
  const [hi, lo] = [parseInt(hex[1]!, 16), parseInt(hex[2]!, 16)];
  return [hi >> 8, hi & 255, lo >> 8, lo & 255].join('.');
}

/**
 * xtext (RFC 3461 §4): "+XX" is the byte XX, and the bytes are UTF-8 (Postfix encodes every byte of an SMTPUTF8
 * client's HELO this way: "m+C3+BCller.test" is müller.test); undefined when a "+" is not followed by two hex
 * digits or the bytes are not UTF-8.
 */
function decodeXtext(text: string): string | undefined {
  if (!text.includes('+')) return text;
  const parts: Buffer[] = [];
  let at = 0;
  for (const m of text.matchAll(/\+([0-9A-Fa-f]{2})?/g)) {
    if (m[1] === undefined) return undefined;
    parts.push(Buffer.from(text.slice(at, m.index), 'utf8'), Buffer.from([parseInt(m[1], 16)]));
    at = m.index + m[0].length;
  }
  parts.push(Buffer.from(text.slice(at), 'utf8'));
  try {
    return UTF8.decode(Buffer.concat(parts));
  } catch {
    return undefined;
  }
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });

/** Who sent the message of the transaction in progress. */
export interface TransactionClient {
  /** the client's IP address; null when a relay forwarded the client without one (ADDR=[UNAVAILABLE], or no ADDR) */
  address: string | null;
  /** its HELO/EHLO argument; null when unknown */
  helo: string | null;
  /** the relay that forwarded the client with XFORWARD (the connection's own peer and HELO); null when not forwarded */
  relay: { address: string; helo: string | null } | null;
}

/**
 * The connection's peer, or the client a trusted relay described with XFORWARD for this transaction. The adapter
 * keeps session.xForward to the current transaction's attributes (Postfix resets them at the end of each
 * transaction) and never lets them replace the session's own address and HELO, which stay the relay's. As in
 * Postfix's smtpd (smtpd_xforward_preset), once a transaction has any XFORWARD the attributes not sent are unknown,
 * not the relay's: Postfix forwards mail submitted on its own machine, and its address-verification probes, with
 * "XFORWARD SOURCE=LOCAL" alone, and SPF must not then judge the relay's address.
 */
export function transactionClient(session: Pick<SMTPServerSession, 'remoteAddress' | 'hostNameAppearsAs' | 'xForward'>): TransactionClient {
  const own = { address: session.remoteAddress, helo: session.hostNameAppearsAs || null };
  const forwarded = session.xForward;
  if (!forwarded || forwarded.size === 0) return { ...own, relay: null };
  const addr = forwarded.get('ADDR');
  const helo = forwarded.get('HELO');
  return { address: typeof addr === 'string' && addr ? addr : null, helo: typeof helo === 'string' && helo ? helo : null, relay: own };
}
