// Shared by the admin, CLI and dashboard tests: an app with the admin token and an authenticated fetch.
import { configYaml, startTestApp, tempDir, type TestApp } from '../helpers/app.js';

export const ADMIN_TOKEN = 'test-admin-token-0123456789abcdef';

/** configYaml with the admin token set (and optional extra lines under spool:). */
export function adminYaml(opts: { routes: string; dir: string; token?: string | null; spoolExtra?: string }): string {
  let yaml = configYaml({ routes: opts.routes, dir: opts.dir });
  if (opts.token !== null) yaml = yaml.replace('http:\n  listen: "127.0.0.1:0"', `http:\n  listen: "127.0.0.1:0"\n  admin_token: "${opts.token ?? ADMIN_TOKEN}"`);
  if (opts.spoolExtra) yaml = yaml.replace(/(spool:\n  path: [^\n]+)/, `$1\n${opts.spoolExtra}`);
  return yaml;
}

export async function startAdminApp(opts: { routes: string; token?: string | null; spoolExtra?: string }): Promise<TestApp> {
  const dir = tempDir();
  const app = await startTestApp({ routes: '', dir, yaml: adminYaml({ ...opts, dir }) });
  const close = app.close.bind(app);
  return Object.assign(app, {
    async close() {
      await close();
      const { rmSync } = await import('node:fs');
      rmSync(dir, { recursive: true, force: true });
    },
  });
}

export interface ApiResult<T = any> {
  status: number;
  headers: Headers;
  body: T;
}

/** Calls the admin API with the bearer token (or the given headers) and parses JSON. */
export async function call<T = any>(app: { httpUrl: string }, method: string, path: string, opts: { body?: unknown; headers?: Record<string, string>; token?: string | null } = {}): Promise<ApiResult<T>> {
  const headers: Record<string, string> = { ...(opts.headers ?? {}) };
  if (opts.token !== null) headers.authorization ??= `Bearer ${opts.token ?? ADMIN_TOKEN}`;
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${app.httpUrl}${path}`, { method, headers, body: opts.body === undefined ? undefined : JSON.stringify(opts.body) });
  const text = await res.text();
  let body: unknown = text;
  if ((res.headers.get('content-type') ?? '').includes('json')) body = JSON.parse(text);
  return { status: res.status, headers: res.headers, body: body as T };
}
