// A local OAuth2 authorization server stand-in: a token endpoint (client_credentials and refresh_token grants,
// RFC 6749 error responses) and RFC 7662 token introspection, which Dovecot's oauth2 passdb calls for XOAUTH2.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';

export interface OAuthClient {
  clientId: string;
  clientSecret: string;
  /** the login a token for this client authenticates (IMAP user, Graph app) */
  username: string;
}

export interface TokenRequest {
  path: string;
  grant: string;
  clientId: string;
  scope: string | undefined;
  at: number;
}

export class OAuthStandin {
  readonly clients: OAuthClient[] = [];
  /** refresh token → client id and login */
  readonly refreshTokens = new Map<string, { clientId: string; username: string }>();
  readonly tokenRequests: TokenRequest[] = [];
  readonly introspections: string[] = [];
  /** lifetime of issued access tokens, seconds */
  expiresIn = 3600;
  /** issue a new refresh token with each refresh (Google may; RFC 6749 §6 allows it) */
  rotateRefreshTokens = false;
  /**
   * Answers the token endpoint gives instead of its own, in turn (then its own again): 'hang' never answers; an object
   * is sent as is (status, content type, body: an HTML error page from a proxy, an AADSTS error, …).
   */
  readonly overrides: Array<'hang' | { status: number; contentType: string; body: string }> = [];
  /** hung token requests ('hang') whose client gave up (closed the connection) */
  hungClosed = 0;
  private readonly tokens = new Map<string, { username: string; expiresAt: number }>();
  private server: Server | undefined;
  port = 0;

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }
  /** Microsoft-style token URL for a tenant (the Graph and Office 365 path) */
  tokenUrl(tenant = 'tenant-1'): string {
    return `${this.url}/${tenant}/oauth2/v2.0/token`;
  }
  get introspectionUrl(): string {
    return `${this.url}/introspect`;
  }

  async start(): Promise<this> {
    this.server = createServer((req, res) => void this.handle(req, res));
    this.server.keepAliveTimeout = 100;
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    this.port = (this.server.address() as { port: number }).port;
    return this;
  }

  async stop(): Promise<void> {
    if (!this.server) return;
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server!.close(() => r()));
    this.server = undefined;
  }

  /** True for a token this server issued that has not expired (what a resource server checks). */
  isValid(token: string | undefined): boolean {
    const t = token ? this.tokens.get(token) : undefined;
    return t !== undefined && Date.now() < t.expiresAt;
  }

  revokeAll(): void {
    this.tokens.clear();
  }

  /** Handles the token path when `req` asks for it; false otherwise (so a Graph stand-in can share one server). */
  async handleToken(req: IncomingMessage, res: ServerResponse, body: string): Promise<boolean> {
    const path = (req.url ?? '').split('?')[0] ?? '';
    if (req.method !== 'POST' || !/\/token$/.test(path)) return false;
    const form = new URLSearchParams(body);
    const grant = form.get('grant_type') ?? '';
    const clientId = form.get('client_id') ?? '';
    this.tokenRequests.push({ path, grant, clientId, scope: form.get('scope') ?? undefined, at: Date.now() });
    const override = this.overrides.shift();
    if (override === 'hang') {
      res.on('close', () => this.hungClosed++);
      return true;
    }
    if (override) {
      res.writeHead(override.status, { 'content-type': override.contentType });
      res.end(override.body);
      return true;
    }
    const client = this.clients.find((c) => c.clientId === clientId);
    const fail = (status: number, error: string, description: string) => json(res, status, { error, error_description: description });
    if (grant === 'client_credentials') {
      if (!client || client.clientSecret !== form.get('client_secret')) return fail(401, 'invalid_client', 'AADSTS7000215: Invalid client secret provided.'), true;
      return this.issue(res, client.username), true;
    }
    if (grant === 'refresh_token') {
      const rt = this.refreshTokens.get(form.get('refresh_token') ?? '');
      if (!client || (client.clientSecret && client.clientSecret !== form.get('client_secret'))) return fail(401, 'invalid_client', 'The OAuth client was not found.'), true;
      if (!rt || rt.clientId !== clientId) return fail(400, 'invalid_grant', 'Token has been expired or revoked.'), true;
      let rotated: string | undefined;
      if (this.rotateRefreshTokens) {
        this.refreshTokens.delete(form.get('refresh_token') ?? '');
        rotated = `rt-${randomBytes(8).toString('hex')}`;
        this.refreshTokens.set(rotated, rt);
      }
      return this.issue(res, rt.username, rotated), true;
    }
    return fail(400, 'unsupported_grant_type', `grant_type ${grant} is not supported`), true;
  }

  private issue(res: ServerResponse, username: string, refreshToken?: string): void {
    const token = `at-${randomBytes(16).toString('hex')}`;
    this.tokens.set(token, { username, expiresAt: Date.now() + this.expiresIn * 1000 });
    json(res, 200, { token_type: 'Bearer', expires_in: this.expiresIn, access_token: token, ...(refreshToken ? { refresh_token: refreshToken } : {}) });
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readBody(req);
    if (await this.handleToken(req, res, body)) return;
    if (req.method === 'POST' && req.url === '/introspect') {
      // RFC 7662 §2.2: {"active": false} for anything unknown or expired.
      const token = new URLSearchParams(body).get('token') ?? '';
      this.introspections.push(token);
      const t = this.tokens.get(token);
      if (!t || Date.now() >= t.expiresAt) return json(res, 200, { active: false });
      return json(res, 200, { active: true, username: t.username, exp: Math.floor(t.expiresAt / 1000) });
    }
    json(res, 404, { error: 'not_found' });
  }
}

export function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
  });
}

export function json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}
