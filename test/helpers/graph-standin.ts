// A local stand-in for the parts of Microsoft Graph the mailbox bridge uses, behaving as Microsoft documents them:
// messages delta (@odata.nextLink pages, then an @odata.deltaLink whose $deltatoken returns only changes and
// "@removed" entries; an expired token answers 410 SyncStateNotFound), Prefer: odata.maxpagesize, raw MIME at
// /$value, GET a message, PATCH isRead, DELETE, POST move (201 with the moved message under a new id; the old id then answers
// 404 ErrorItemNotFound, as does a move to a deleted folder), mailFolders (list with $filter on displayName, create: 201, or 409 ErrorFolderExists),
// a folder's messages (paged by $top/$skip, $filter on isRead), bearer tokens from the same server's token endpoint (client
// credentials), and throttling (429/503 Retry-After).
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { OAuthStandin, json, readBody } from './oauth-standin.js';

export interface GraphMessage {
  id: string;
  folder: string;
  raw: Buffer;
  isRead: boolean;
  receivedDateTime: string;
  internetMessageId: string;
  /**
   * Its $value is cut off after this many bytes (the connection then reset), wherever it is moved: Graph does so
   * for some large messages ("Unable to read data from the transport connection" past about 25 MB).
   */
  cutValueAt?: number;
  /** Its $value stops after this many bytes and never goes on (a download that hangs), the connection held open. */
  stallValueAt?: number;
}

export interface GraphRequest {
  method: string;
  path: string;
  query: URLSearchParams;
  status: number;
  at: number;
  prefer: string | undefined;
}

interface Change {
  seq: number;
  id: string;
}

const WELL_KNOWN = ['inbox', 'archive', 'deleteditems', 'drafts', 'sentitems', 'junkemail'];

export class GraphStandin {
  readonly oauth = new OAuthStandin();
  readonly messages = new Map<string, GraphMessage>();
  readonly requests: GraphRequest[] = [];
  /** the mailbox (user principal name) this tenant holds */
  user = 'support@corp.test';
  private seq = 0;
  private readonly changes: Change[] = [];
  /** where each id was when last changed (for @removed after a move or delete) */
  private readonly lastFolder = new Map<string, string>();
  private readonly snapshots = new Map<string, { ids: string[]; endSeq: number }>();
  /** delta tokens up to this change sequence answer 410 Gone (their sync state was dropped) */
  private expiredThrough = -1;
  private throttles: Array<{ status: number; retryAfter: string | undefined; match: (method: string, path: string) => boolean }> = [];
  private failures: Array<{ status: number; match: (method: string, path: string) => boolean; html?: string }> = [];
  /**
   * What the application may do: 'Mail.ReadWrite' (all), 'Mail.Read' (reads only: PATCH, DELETE and move answer 403
   * ErrorAccessDenied, as Graph does for a missing permission), or 'policy' (an application access policy that
   * excludes the mailbox: every request answers 403 ErrorAccessDenied).
   */
  permission: 'Mail.ReadWrite' | 'Mail.Read' | 'policy' = 'Mail.ReadWrite';
  /** folders created through POST mailFolders: id → displayName */
  readonly folders = new Map<string, string>();
  private server: Server | undefined;
  port = 0;

  constructor() {
    this.oauth.clients.push({ clientId: 'graph-app', clientSecret: 'graph-secret', username: 'graph-app' });
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async start(): Promise<this> {
    this.server = createServer((req, res) => void this.handle(req, res));
    this.server.keepAliveTimeout = 100;
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    this.port = (this.server.address() as { port: number }).port;
    this.oauth.port = this.port;
    return this;
  }

  async stop(): Promise<void> {
    if (!this.server) return;
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server!.close(() => r()));
  }

  /** Delivers a message to a folder (as Exchange would); returns its Graph id. */
  add(raw: string | Buffer, opts: { folder?: string; isRead?: boolean; receivedDateTime?: string } = {}): string {
    // Real ids are long base64 strings with "/", "+" and "=": clients must encode them in URLs.
    const id = `AAMkAD${randomBytes(24).toString('base64')}`;
    const text = raw.toString();
    const mid = /^Message-ID:\s*(<[^>]+>)/im.exec(text)?.[1] ?? `<${id}@standin>`;
    this.messages.set(id, { id, folder: (opts.folder ?? 'inbox').toLowerCase(), raw: Buffer.from(raw), isRead: opts.isRead ?? false, receivedDateTime: opts.receivedDateTime ?? new Date().toISOString(), internetMessageId: mid });
    this.changed(id);
    return id;
  }

  inFolder(folder: string): GraphMessage[] {
    return [...this.messages.values()].filter((m) => m.folder === folder.toLowerCase());
  }

  /** The next `count` Graph requests (not token requests) matching `match` are answered with `status` and Retry-After. */
  throttle(count: number, status: 429 | 503, retryAfter: string | undefined, match: (method: string, path: string) => boolean = () => true): void {
    for (let i = 0; i < count; i++) this.throttles.push({ status, retryAfter, match });
  }

  /** The next `count` matching requests fail with `status` (no Retry-After); with `html`, as a proxy's page would. */
  fail(count: number, status: number, match: (method: string, path: string) => boolean, html?: string): void {
    for (let i = 0; i < count; i++) this.failures.push({ status, match, html });
  }

  /** Forgets the failures still queued by fail(). */
  clearFailures(): void {
    this.failures = [];
  }

  /**
   * Drops the sync state of every delta token issued so far, as Exchange does when its delta token cache
   * overflows: using one answers 410 Gone with SyncStateNotFound and the client must start a full sync.
   */
  expireDeltaTokens(): void {
    this.expiredThrough = this.seq;
  }

  private changed(id: string): void {
    this.changes.push({ seq: ++this.seq, id });
  }

  private item(m: GraphMessage) {
    return { '@odata.type': '#microsoft.graph.message', '@odata.etag': `W/"${m.id.slice(-6)}${this.seq}"`, id: m.id, isRead: m.isRead, receivedDateTime: m.receivedDateTime, internetMessageId: m.internetMessageId };
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readBody(req);
    if (await this.oauth.handleToken(req, res, body)) return;
    const url = new URL(req.url ?? '/', this.url);
    const path = url.pathname;
    const method = req.method ?? 'GET';
    const record = (status: number) => this.requests.push({ method, path, query: url.searchParams, status, at: Date.now(), prefer: req.headers.prefer as string | undefined });
    const auth = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
    if (!this.oauth.isValid(auth)) {
      record(401);
      return json(res, 401, { error: { code: 'InvalidAuthenticationToken', message: 'Access token has expired or is not yet valid.' } }, { 'www-authenticate': 'Bearer' });
    }
    if (this.permission === 'policy' || (this.permission === 'Mail.Read' && method !== 'GET')) {
      record(403);
      const message = this.permission === 'policy' ? 'Access to OData is disabled: Blocked by tenant configured AppOnly AccessPolicy settings.' : 'Access is denied. Check credentials and try again.';
      return json(res, 403, { error: { code: 'ErrorAccessDenied', message } });
    }
    const t = this.throttles.findIndex((x) => x.match(method, path));
    if (t >= 0) {
      const [x] = this.throttles.splice(t, 1);
      record(x!.status);
      const code = x!.status === 429 ? 'TooManyRequests' : 'ServiceNotAvailable';
      return json(res, x!.status, { error: { code, message: 'Application is over its MailboxConcurrency limit.' } }, x!.retryAfter ? { 'retry-after': x!.retryAfter } : {});
    }
    const f = this.failures.findIndex((x) => x.match(method, path));
    if (f >= 0) {
      const [x] = this.failures.splice(f, 1);
      record(x!.status);
      if (x!.html !== undefined) {
        res.writeHead(x!.status, { 'content-type': 'text/html; charset=utf-8' });
        res.end(x!.html);
        return;
      }
      return json(res, x!.status, { error: { code: 'InternalServerError', message: 'injected failure' } });
    }
    const userPrefix = `/v1.0/users/${encodeURIComponent(this.user)}`;
    const route = path.startsWith(userPrefix) ? path.slice(userPrefix.length) : undefined;
    if (route === undefined) {
      record(404);
      return json(res, 404, { error: { code: 'ErrorInvalidUser', message: `The requested user '${decodeURIComponent(path.split('/')[3] ?? '')}' is invalid.` } });
    }
    let m: RegExpExecArray | null;
    if (route === '/mailFolders' && method === 'GET') {
      // Top-level folders; $filter supports what clients use here: displayName eq '<name>' ('' doubles a quote).
      const filter = /^displayName eq '((?:[^']|'')*)'$/.exec(url.searchParams.get('$filter') ?? '');
      const all = [...WELL_KNOWN.map((w) => ({ id: w, displayName: w })), ...[...this.folders].map(([id, displayName]) => ({ id, displayName }))];
      const value = filter ? all.filter((f) => f.displayName === filter[1]!.replace(/''/g, "'")) : all;
      record(200);
      return json(res, 200, { '@odata.context': `${this.url}/v1.0/$metadata#users('${this.user}')/mailFolders`, value: value.map((f) => ({ ...f, parentFolderId: 'msgfolderroot', childFolderCount: 0, unreadItemCount: this.inFolder(f.id).filter((x) => !x.isRead).length, totalItemCount: this.inFolder(f.id).length, isHidden: false })) });
    }
    if (route === '/mailFolders' && method === 'POST') {
      const name = String((JSON.parse(body || '{}') as { displayName?: string }).displayName ?? '');
      if ([...this.folders.values()].includes(name) || WELL_KNOWN.includes(name.toLowerCase())) {
        record(409);
        return json(res, 409, { error: { code: 'ErrorFolderExists', message: 'A folder with the specified name already exists.' } });
      }
      // Lower-case so the stand-in's case-insensitive folder matching keeps working; real ids are opaque.
      const id = `aamkfolder${randomBytes(8).toString('hex')}`;
      this.folders.set(id, name);
      record(201);
      return json(res, 201, { id, displayName: name, parentFolderId: 'msgfolderroot', childFolderCount: 0, unreadItemCount: 0, totalItemCount: 0, isHidden: false });
    }
    if (method === 'GET' && (m = /^\/mailFolders\/([^/]+)\/messages$/.exec(route))) {
      const folder = decodeURIComponent(m[1]!).toLowerCase();
      if (!WELL_KNOWN.includes(folder) && !this.folders.has(folder)) {
        record(404);
        return json(res, 404, { error: { code: 'ErrorItemNotFound', message: 'The specified object was not found in the store.' } });
      }
      const top = Math.min(Number(url.searchParams.get('$top') ?? 10), 1000);
      const skip = Number(url.searchParams.get('$skip') ?? 0);
      // $filter: what clients use here, isRead eq true|false; anything else is refused as Graph refuses an unknown property.
      const filter = url.searchParams.get('$filter');
      const isRead = filter ? /^isRead eq (true|false)$/.exec(filter) : null;
      if (filter && !isRead) {
        record(400);
        return json(res, 400, { error: { code: 'BadRequest', message: `unsupported $filter: ${filter}` } });
      }
      const list = this.inFolder(folder).filter((x) => !isRead || x.isRead === (isRead[1] === 'true'));
      const out: Record<string, unknown> = { value: list.slice(skip, skip + top).map((x) => this.item(x)) };
      if (skip + top < list.length) {
        const next = new URL(url.toString());
        next.searchParams.set('$skip', String(skip + top));
        out['@odata.nextLink'] = next.toString();
      }
      record(200);
      return json(res, 200, out);
    }
    if (method === 'GET' && (m = /^\/mailFolders\/([^/]+)\/messages\/delta$/.exec(route))) {
      const folder = decodeURIComponent(m[1]!).toLowerCase();
      if (!WELL_KNOWN.includes(folder)) {
        record(404);
        return json(res, 404, { error: { code: 'ErrorInvalidIdMalformed', message: 'Id is malformed.' } });
      }
      return this.delta(req, res, url, folder, record);
    }
    if ((m = /^\/messages\/([^/]+)(\/\$value|\/move)?$/.exec(route))) {
      const id = decodeURIComponent(m[1]!);
      const msg = this.messages.get(id);
      if (!msg) {
        record(404);
        return json(res, 404, { error: { code: 'ErrorItemNotFound', message: 'The specified object was not found in the store.' } });
      }
      if (method === 'GET' && !m[2]) {
        record(200);
        return json(res, 200, this.item(msg));
      }
      if (method === 'GET' && m[2] === '/$value') {
        record(200);
        res.writeHead(200, { 'content-type': 'text/plain' });
        if (msg.stallValueAt !== undefined) return void res.write(msg.raw.subarray(0, msg.stallValueAt));
        const cut = msg.cutValueAt;
        if (cut !== undefined) {
          // Chunked, part of the message, then the connection reset: the client sees the body end in an error.
          res.write(msg.raw.subarray(0, cut));
          return void setTimeout(() => res.socket?.destroy(), 20);
        }
        return void res.end(msg.raw);
      }
      if (method === 'PATCH' && !m[2]) {
        const patch = JSON.parse(body || '{}') as { isRead?: boolean };
        if (typeof patch.isRead === 'boolean') msg.isRead = patch.isRead;
        this.changed(id);
        record(200);
        return json(res, 200, this.item(msg));
      }
      if (method === 'DELETE' && !m[2]) {
        this.lastFolder.set(id, msg.folder);
        this.messages.delete(id);
        this.changed(id);
        record(204);
        res.writeHead(204);
        return void res.end();
      }
      if (method === 'POST' && m[2] === '/move') {
        const dest = String((JSON.parse(body || '{}') as { destinationId?: string }).destinationId ?? '').toLowerCase();
        if (!WELL_KNOWN.includes(dest) && !this.folders.has(dest)) {
          // A well-formed id of a folder that no longer exists: 404, as for a missing message; anything else is malformed.
          if (/^aamkfolder[0-9a-f]{16}$/.test(dest)) {
            record(404);
            return json(res, 404, { error: { code: 'ErrorItemNotFound', message: 'The specified object was not found in the store.' } });
          }
          record(400);
          return json(res, 400, { error: { code: 'ErrorInvalidIdMalformed', message: 'Id is malformed.' } });
        }
        this.lastFolder.set(id, msg.folder);
        this.messages.delete(id);
        this.changed(id);
        // A moved message gets a new id in its new folder.
        const newId = `AAMkAD${randomBytes(24).toString('base64')}`;
        this.messages.set(newId, { ...msg, id: newId, folder: dest });
        this.changed(newId);
        record(201);
        return json(res, 201, this.item(this.messages.get(newId)!));
      }
    }
    record(400);
    json(res, 400, { error: { code: 'BadRequest', message: `unsupported: ${method} ${path}` } });
  }

  /** Delta query: the initial round lists the folder, later rounds (with $deltatoken) only changes since. */
  private delta(req: IncomingMessage, res: ServerResponse, url: URL, folder: string, record: (status: number) => void): void {
    const prefer = /odata\.maxpagesize=(\d+)/.exec(String(req.headers.prefer ?? ''));
    const pageSize = prefer ? Math.min(Number(prefer[1]), 1000) : 10;
    const skip = url.searchParams.get('$skiptoken');
    const deltaToken = url.searchParams.get('$deltatoken');
    let snapshotKey: string;
    let offset = 0;
    if (skip) {
      const [key, off] = Buffer.from(skip, 'base64url').toString().split(':');
      snapshotKey = key!;
      offset = Number(off);
    } else {
      const since = deltaToken ? Number(Buffer.from(deltaToken, 'base64url').toString()) : -1;
      if (deltaToken && since <= this.expiredThrough) {
        record(410);
        return json(res, 410, { error: { code: 'SyncStateNotFound', message: 'The sync state generation is not found. The delta token is expired and data must be synchronized again.' } });
      }
      let ids: string[];
      if (since < 0) {
        ids = this.inFolder(folder).map((m) => m.id);
      } else {
        const touched = [...new Set(this.changes.filter((c) => c.seq > since).map((c) => c.id))];
        ids = touched.filter((id) => this.messages.get(id)?.folder === folder || this.lastFolder.get(id) === folder);
      }
      snapshotKey = randomBytes(6).toString('hex');
      this.snapshots.set(snapshotKey, { ids, endSeq: this.seq });
    }
    const snap = this.snapshots.get(snapshotKey);
    record(snap ? 200 : 410);
    if (!snap) return json(res, 410, { error: { code: 'SyncStateNotFound', message: 'The sync state is not found.' } });
    const page = snap.ids.slice(offset, offset + pageSize).map((id) => {
      const m = this.messages.get(id);
      return m && m.folder === folder ? this.item(m) : { '@odata.type': '#microsoft.graph.message', id, '@removed': { reason: 'deleted' } };
    });
    const base = `${this.url}${url.pathname}`;
    const out: Record<string, unknown> = { '@odata.context': `${this.url}/v1.0/$metadata#Collection(message)`, value: page };
    if (offset + pageSize < snap.ids.length) out['@odata.nextLink'] = `${base}?$skiptoken=${Buffer.from(`${snapshotKey}:${offset + pageSize}`).toString('base64url')}`;
    else out['@odata.deltaLink'] = `${base}?$deltatoken=${Buffer.from(String(snap.endSeq)).toString('base64url')}`;
    json(res, 200, out, prefer ? { 'preference-applied': `odata.maxpagesize=${pageSize}` } : {});
  }
}
