// Admin authentication: the bearer token (compared in constant time) or a dashboard session cookie derived from it.
import { createHmac } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { constantTimeEqual } from '../server.js';

export const SESSION_COOKIE = 'mailhook_session';
/** A dashboard login lasts this long; the operator logs in again after. */
export const SESSION_TTL_MS = 12 * 3_600_000;
/** Sent by the dashboard's scripts on every state-changing request: a cross-site form cannot set it. */
export const CSRF_HEADER = 'x-mailhook-csrf';

/** `guess`: a wrong admin token was given (counted by TokenGuesses), not a missing one or an old session. */
export type AuthResult = { ok: true; via: 'bearer' | 'session' } | { ok: false; reason: string; guess?: boolean };

/** Wrong admin tokens from one address within GUESS_WINDOW_MS after which it is refused (429) until the oldest ages out. */
export const GUESS_LIMIT = 20;
export const GUESS_WINDOW_MS = 60_000;
/** Addresses remembered at most (the oldest are forgotten first), so a spread-out guesser cannot fill the memory. */
const GUESS_ADDRESSES_MAX = 10_000;

/**
 * Wrong admin tokens by remote address (the API's bearer token, the dashboard login, the sink's token): past GUESS_LIMIT in a
 * window the address is refused without its token being looked at, so the token cannot be guessed at network
 * speed. Behind a reverse proxy every browser shares the proxy's address: someone guessing there also locks the
 * operator out for up to a minute. In memory; a restart forgets it.
 */
export class TokenGuesses {
  /** by guessKey of the address */
  private readonly failures = new Map<string, number[]>();

  /** onLimit: called with the address whose wrong token reached GUESS_LIMIT (to log it once), wherever it was given */
  constructor(private readonly onLimit: (address: string) => void = () => {}) {}

  /** Milliseconds until the address may try a token again; 0 when it may now. */
  retryAfterMs(address: string, now: number): number {
    const recent = this.recent(guessKey(address), now);
    return recent.length >= GUESS_LIMIT ? recent[recent.length - GUESS_LIMIT]! + GUESS_WINDOW_MS - now : 0;
  }

  /** The 429 answer for an address past the limit: its Retry-After (seconds) and message; undefined when it may try. */
  refusal(address: string, now: number): { retryAfter: string; message: string } | undefined {
    const wait = this.retryAfterMs(address, now);
    if (wait <= 0) return undefined;
    const seconds = Math.ceil(wait / 1000);
    return { retryAfter: String(seconds), message: `too many wrong admin tokens from this address; try again in ${seconds} s` };
  }

  /** Records a wrong token; true when it is the one that reached the limit (to be logged once). */
  fail(address: string, now: number): boolean {
    const key = guessKey(address);
    const recent = this.recent(key, now);
    recent.push(now);
    this.failures.delete(key); // re-inserted last: the Map's order is the order of last failures
    this.failures.set(key, recent.slice(-GUESS_LIMIT));
    if (this.failures.size > GUESS_ADDRESSES_MAX) this.failures.delete(this.failures.keys().next().value!);
    if (recent.length !== GUESS_LIMIT) return false;
    this.onLimit(address);
    return true;
  }

  private recent(key: string, now: number): number[] {
    return (this.failures.get(key) ?? []).filter((t) => t > now - GUESS_WINDOW_MS);
  }
}

/**
 * Whom guesses are counted against: an IPv4 address (also written IPv4-mapped, ::ffff:a.b.c.d) as it is, an IPv6
 * address by its /64, the smallest block one subscriber gets (counting single addresses, one host could take a
 * new one per guess).
 */
export function guessKey(address: string): string {
  const plain = address.replace(/%.*$/, '').toLowerCase();
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(plain);
  if (mapped) return mapped[1]!;
  if (!plain.includes(':')) return plain;
  const [head = '', tail] = plain.split('::');
  const left = head === '' ? [] : head.split(':');
  const right = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = [...left, ...Array<string>(Math.max(0, 8 - left.length - right.length)).fill('0'), ...right];
  return `${groups.slice(0, 4).map((g) => Number.parseInt(g, 16).toString(16)).join(':')}::/64`;
}

/** A session value is "<expiry ms>.<HMAC of it keyed by the token>": it proves the token without holding it. */
export function issueSession(token: string, now: number): { value: string; maxAgeSeconds: number } {
  const expires = now + SESSION_TTL_MS;
  return { value: `${expires}.${sessionMac(token, expires)}`, maxAgeSeconds: SESSION_TTL_MS / 1000 };
}

export function verifySession(value: string, token: string, now: number): boolean {
  return sessionExpiry(value, token, now) !== undefined;
}

/** When a valid, unexpired session ends (ms); undefined for anything else. */
function sessionExpiry(value: string, token: string, now: number): number | undefined {
  const m = /^(\d{1,16})\.([A-Za-z0-9_-]{43})$/.exec(value);
  if (!m) return undefined;
  const expires = Number(m[1]);
  if (expires <= now) return undefined;
  return constantTimeEqual(m[2] as string, sessionMac(token, expires)) ? expires : undefined;
}

/**
 * Sessions logged out before they expired, refused until then: a session is a signed expiry, so logging out can
 * only clear the browser's copy, and a copy kept elsewhere (a shared machine's profile, a proxy's log) would stay
 * good for up to 12 h. Held in memory (a restart forgets them); only valid sessions are added, so its size is
 * bounded by the logins of the last 12 hours.
 */
export class LoggedOutSessions {
  private readonly until = new Map<string, number>();

  add(value: string, token: string, now: number): void {
    for (const [v, expires] of this.until) if (expires <= now) this.until.delete(v);
    const expires = sessionExpiry(value, token, now);
    if (expires !== undefined) this.until.set(value, expires);
  }

  has(value: string): boolean {
    return this.until.has(value);
  }
}

function sessionMac(token: string, expires: number): string {
  return createHmac('sha256', token).update(`mailhook-dashboard-session:${expires}`).digest('base64url');
}

export function readCookie(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const i = part.indexOf('=');
    if (i > 0 && part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
  }
  return undefined;
}

/**
 * The session cookie, or with an empty value and Max-Age=0 the one that clears it. SameSite=Strict: the browser
 * never sends it on a request another site starts. Secure when the browser reached mailhook over HTTPS, which is
 * through a TLS proxy (mailhook's HTTP is plain): then the browser never sends it over plain HTTP. Only then, as a
 * browser drops a Secure cookie set over http:// (other than localhost).
 */
export function sessionCookie(value: string, maxAgeSeconds: number, secure: boolean): string {
  return `${SESSION_COOKIE}=${value}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${maxAgeSeconds}${secure ? '; Secure' : ''}`;
}

/** The browser's request was HTTPS: to a TLS proxy that says so in X-Forwarded-Proto (its first hop), or to TLS here. */
export function viaHttps(req: Pick<FastifyRequest, 'headers' | 'protocol'>): boolean {
  const forwarded = req.headers['x-forwarded-proto'];
  const first = (Array.isArray(forwarded) ? forwarded[0] : forwarded)?.split(',')[0]?.trim().toLowerCase();
  return first === 'https' || req.protocol === 'https';
}

/** Checks a request: "Authorization: Bearer <token>", or the session cookie (plus the CSRF header on writes). */
export function authenticate(req: FastifyRequest, token: string, now: number, loggedOut?: LoggedOutSessions): AuthResult {
  const auth = req.headers.authorization;
  // Another scheme (Basic from a proxy in front) is not for mailhook: the session cookie may still be there.
  if (auth !== undefined && /^Bearer(\s|$)/i.test(auth)) {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
    if (!m) return { ok: false, reason: 'the Authorization header must be "Bearer <admin token>"' };
    return constantTimeEqual(m[1] as string, token) ? { ok: true, via: 'bearer' } : { ok: false, reason: 'the admin token is wrong', guess: true };
  }
  const session = readCookie(req.headers.cookie, SESSION_COOKIE);
  if (session !== undefined) {
    if (!verifySession(session, token, now)) return { ok: false, reason: 'the dashboard session expired or the admin token changed; log in again' };
    if (loggedOut?.has(session)) return { ok: false, reason: 'the dashboard session was logged out; log in again' };
    if (!['GET', 'HEAD'].includes(req.method) && req.headers[CSRF_HEADER] === undefined) {
      return { ok: false, reason: `a state-changing request with the session cookie needs the ${CSRF_HEADER} header` };
    }
    return { ok: true, via: 'session' };
  }
  return { ok: false, reason: 'send "Authorization: Bearer <admin token>" (http.admin_token_file or MAILHOOK_ADMIN_TOKEN)' };
}
