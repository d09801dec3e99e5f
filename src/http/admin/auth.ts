// Admin authentication: the bearer token (compared in constant time) or a dashboard session cookie derived from it.
import { createHmac } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { constantTimeEqual } from '../server.js';

export const SESSION_COOKIE = 'mailhook_session';
/** A dashboard login lasts this long; the operator logs in again after. */
export const SESSION_TTL_MS = 12 * 3_600_000;
/** Sent by the dashboard's scripts on every state-changing request: a cross-site form cannot set it. */
export const CSRF_HEADER = 'x-mailhook-csrf';

export type AuthResult = { ok: true; via: 'bearer' | 'session' } | { ok: false; reason: string };

/** A session value is "<expiry ms>.<HMAC of it keyed by the token>": it proves the token without holding it. */
export function issueSession(token: string, now: number): { value: string; maxAgeSeconds: number } {
  const expires = now + SESSION_TTL_MS;
  return { value: `${expires}.${sessionMac(token, expires)}`, maxAgeSeconds: SESSION_TTL_MS / 1000 };
}

export function verifySession(value: string, token: string, now: number): boolean {
  const m = /^(\d{1,16})\.([A-Za-z0-9_-]{43})$/.exec(value);
  if (!m) return false;
  const expires = Number(m[1]);
  if (expires <= now) return false;
  return constantTimeEqual(m[2] as string, sessionMac(token, expires));
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

export function sessionCookie(value: string, maxAgeSeconds: number): string {
  // SameSite=Strict: the browser never sends it on a request another site starts.
  return `${SESSION_COOKIE}=${value}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${maxAgeSeconds}`;
}

/** Checks a request: "Authorization: Bearer <token>", or the session cookie (plus the CSRF header on writes). */
export function authenticate(req: FastifyRequest, token: string, now: number): AuthResult {
  const auth = req.headers.authorization;
  // Another scheme (Basic from a proxy in front) is not for mailhook: the session cookie may still be there.
  if (auth !== undefined && /^Bearer(\s|$)/i.test(auth)) {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
    if (!m) return { ok: false, reason: 'the Authorization header must be "Bearer <admin token>"' };
    return constantTimeEqual(m[1] as string, token) ? { ok: true, via: 'bearer' } : { ok: false, reason: 'the admin token is wrong' };
  }
  const session = readCookie(req.headers.cookie, SESSION_COOKIE);
  if (session !== undefined) {
    if (!verifySession(session, token, now)) return { ok: false, reason: 'the dashboard session expired or the admin token changed; log in again' };
    if (!['GET', 'HEAD'].includes(req.method) && req.headers[CSRF_HEADER] === undefined) {
      return { ok: false, reason: `a state-changing request with the session cookie needs the ${CSRF_HEADER} header` };
    }
    return { ok: true, via: 'session' };
  }
  return { ok: false, reason: 'send "Authorization: Bearer <admin token>" (http.admin_token_file or MAILHOOK_ADMIN_TOKEN)' };
}
