// The web dashboard at "/": static HTML/CSS/JS read from assets/ once at start, the app itself behind the admin token.
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { Clock } from '../../core/clock.js';
import type { Config } from '../../config/load.js';
import { authenticate, type LoggedOutSessions } from '../admin/auth.js';
import { ADMIN_DISABLED_MESSAGE } from '../admin/index.js';

const TYPES: Record<string, string> = { html: 'text/html; charset=utf-8', css: 'text/css; charset=utf-8', js: 'text/javascript; charset=utf-8', svg: 'image/svg+xml' };
/** Served without a session: the login page needs them. Everything else needs the token. */
const PUBLIC_ASSETS = new Set(['login.html', 'login.js', 'style.css', 'favicon.svg']);
const ASSETS = ['index.html', 'login.html', 'app.js', 'login.js', 'style.css', 'favicon.svg'];

const SECURITY_HEADERS = {
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  'cache-control': 'no-cache',
};

/**
 * The assets sit beside this module in src/; a build (tsc) puts the module in dist/ without them, so that
 * layout looks for them back in src/.
 */
export function findAssetDir(): string {
  for (const rel of ['./assets/', '../../../src/http/dashboard/assets/']) {
    const dir = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(`${dir}index.html`)) return dir;
  }
  throw new Error('the dashboard assets (src/http/dashboard/assets) are missing from this installation');
}

export function registerDashboard(app: FastifyInstance, deps: { config: Config; clock: Clock; loggedOut: LoggedOutSessions }): void {
  const secret = deps.config.http.adminToken;
  if (!secret) {
    app.get('/', async (_req, reply) => reply.code(404).type('text/plain; charset=utf-8').send(`mailhook: the dashboard is off; ${ADMIN_DISABLED_MESSAGE.replace(/^the admin API is off: /, '')}\n`));
    return;
  }
  const dir = findAssetDir();
  const files = new Map(ASSETS.map((name) => [name, readFileSync(`${dir}${name}`)]));
  const send = (reply: FastifyReply, name: string) => reply.headers(SECURITY_HEADERS).type(TYPES[name.split('.').pop() as string] ?? 'application/octet-stream').send(files.get(name));
  const authed = (req: Parameters<typeof authenticate>[0]) => authenticate(req, secret.reveal(), deps.clock.now(), deps.loggedOut).ok;

  app.get('/', async (req, reply) => send(reply, authed(req) ? 'index.html' : 'login.html'));
  app.get('/assets/:name', { schema: { params: { type: 'object', properties: { name: { type: 'string', pattern: '^[a-z]+\\.[a-z]+$' } }, required: ['name'] } } }, async (req, reply) => {
    const { name } = req.params as { name: string };
    if (!files.has(name)) return reply.code(404).send({ error: 'not_found', message: `no dashboard asset ${name}` });
    if (!PUBLIC_ASSETS.has(name) && !authed(req)) return reply.code(401).send({ error: 'unauthorized', message: 'log in on / first' });
    return send(reply, name);
  });
}
