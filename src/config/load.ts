// Loads the configuration: YAML file, then MAILHOOK_* environment overrides, then one validation pass.
import { isIP } from 'node:net';
import { readFileSync } from 'node:fs';
import { hostname as osHostname } from 'node:os';
import { resolve } from 'node:path';
import { parseDocument, visit, isPair, isSeq, isScalar, isAlias, type Document, type Node as YamlNode } from 'yaml';
import type { z } from 'zod';
import { ConfigError, type ConfigProblem, isErrnoException } from '../core/errors.js';
import { hasCredentials } from '../core/url.js';
import { templateIdentity, parseAddressTemplate } from '../routing/template.js';
import { configSchema, routeSchema, isPlaceholderToken, PLACEHOLDER_TOKEN_MESSAGE, FORMAT_OPTIONS, FORMAT_SECRETS, type FormatOptionKey, type SecretKind, type RawConfig, type RouteConfig, type WebhookConfig, type ListenAddress } from './schema.js';
import { Secret, decodeWebhookSecret } from './secret.js';
import { resolveMailboxes, type MailboxSettings } from './mailboxes.js';

export interface ResolvedWebhook {
  url: string;
  format: WebhookConfig['format'];
  timeoutMs: number;
  /** the secret as configured (text), whatever the format makes of it */
  signingKey: Secret | undefined;
  /**
   * the key bytes as the format uses them (decoded whsec_ key, GitLab's 32 bytes, or the text's UTF-8 bytes);
   * a non-enumerable property, so JSON.stringify and util.inspect of the config do not show them
   */
  signingKeyBytes: Buffer | undefined;
  /** the format-specific switches (FORMAT_OPTIONS), false when not set */
  options: Record<FormatOptionKey, boolean>;
}

export interface ResolvedRoute {
  name: string;
  addresses: string[];
  sink: boolean;
  /** finish deliveries of automatic messages as dropped instead of calling the webhook */
  dropAutomatic: boolean;
  webhook: ResolvedWebhook | undefined;
  /** live recipient verification at RCPT (smtp/verify.ts) */
  verify?: { url: string; timeoutMs: number; cacheTtlMs: number };
  /** refuse messages whose DMARC check fails under p=reject */
  dmarcReject?: boolean;
  /** earlier names: the spool's deliveries under them are renamed to this route at start-up */
  renamedFrom?: string[];
}

export interface Config {
  smtp: Omit<RawConfig['smtp'], 'hostname'> & { hostname: string };
  http: { listen: ListenAddress; adminToken: Secret | undefined };
  spool: RawConfig['spool'];
  delivery: RawConfig['delivery'];
  log: RawConfig['log'];
  routes: ResolvedRoute[];
  /** IMAP and Microsoft Graph mailboxes (the imap: list), secrets resolved */
  imap: MailboxSettings[];
  /** where the configuration came from, for messages */
  source: string;
  /** keys whose value an environment variable set (key path -> variable), for messages about them */
  fromEnvironment?: Readonly<Record<string, string>>;
  /** what the file's text shows that may not be what was meant (see secretCommentWarnings); configWarnings reports them */
  fileWarnings?: ReadonlyArray<{ path: string; message: string }>;
  /** secret variables in the environment that name no route or mailbox (a typo: the secret is not used) */
  envWarnings?: ReadonlyArray<{ path: string; message: string }>;
}

export type Env = Record<string, string | undefined>;

/** Environment variable for a route's secret: MAILHOOK_ROUTE_<NAME>_SECRET, name upper-cased, other characters as "_". */
export function routeSecretEnvName(route: string): string {
  return `MAILHOOK_ROUTE_${route.toUpperCase().replace(/[^A-Z0-9]/g, '_')}_SECRET`;
}

/** `clears`: a key of the same section the variable replaces (a secret from the environment wins over its *_file). */
export const ENV_OVERRIDES: ReadonlyArray<{ env: string; path: readonly string[]; description: string; clears?: string }> = [
  { env: 'MAILHOOK_SMTP_LISTEN', path: ['smtp', 'listen'], description: 'smtp.listen' },
  { env: 'MAILHOOK_SMTP_HOSTNAME', path: ['smtp', 'hostname'], description: 'smtp.hostname' },
  { env: 'MAILHOOK_HTTP_LISTEN', path: ['http', 'listen'], description: 'http.listen' },
  { env: 'MAILHOOK_ADMIN_TOKEN', path: ['http', 'admin_token'], description: 'http.admin_token', clears: 'admin_token_file' },
  { env: 'MAILHOOK_SPOOL_PATH', path: ['spool', 'path'], description: 'spool.path' },
  { env: 'MAILHOOK_LOG_LEVEL', path: ['log', 'level'], description: 'log.level' },
  { env: 'MAILHOOK_SMTP_IMPLICIT_LISTEN', path: ['smtp', 'tls', 'implicit_listen'], description: 'smtp.tls.implicit_listen' },
];

/** Environment variable for a secret of an imap: mailbox: MAILHOOK_IMAP_<NAME>_<WHAT>, name upper-cased, other characters as "_". */
export function mailboxSecretEnvName(mailbox: string, what: 'PASSWORD' | 'CLIENT_SECRET' | 'REFRESH_TOKEN'): string {
  return `MAILHOOK_IMAP_${mailbox.toUpperCase().replace(/[^A-Z0-9]/g, '_')}_${what}`;
}

/** The per-mailbox secrets the environment can set, and what each overrides (documented in the configuration reference). */
export const MAILBOX_SECRET_ENV: ReadonlyArray<{ what: 'PASSWORD' | 'CLIENT_SECRET' | 'REFRESH_TOKEN'; description: string }> = [
  { what: 'PASSWORD', description: '`imap[].password`' },
  { what: 'CLIENT_SECRET', description: '`imap[].oauth2.client_secret` (`imap[].inbox_options.client_secret` for microsoft_graph)' },
  { what: 'REFRESH_TOKEN', description: '`imap[].oauth2.refresh_token`' },
];

/**
 * How a caller uses the configuration. secretsOptional: it does not serve (the admin CLI reading where to
 * connect), so a secret that is not set here (it lives in the service's environment) or a secret or TLS file
 * this user cannot read (/run/credentials/…, a root-only key) is no problem; such routes have no key and such
 * mailboxes are left out. check-config and serve never set it.
 */
export interface LoadOptions {
  secretsOptional?: boolean;
}

/** Relative paths in the file (spool.path, *_file) resolve against cwd, as for any daemon's working directory. */
export function loadConfigFile(file: string, env: Env, cwd: string, load: LoadOptions = {}): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const why = isErrnoException(err) && err.code === 'ENOENT' ? 'no such file' : String((err as Error).message);
    throw new ConfigError(file, [{ path: '', message: `cannot read the configuration file: ${why}` }]);
  }
  return loadConfigText(text, { source: file, baseDir: cwd, env, ...load });
}

export function loadConfigText(text: string, opts: { source: string; baseDir: string; env?: Env } & LoadOptions): Config {
  const env = opts.env ?? {};
  // merge: YAML merge keys (<<: *anchor), bounded like any alias by toJS's maxAliasCount.
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true, merge: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(opts.source, doc.errors.map((e) => ({ path: '', message: yamlSyntaxMessage(e) })));
  }
  const yamlProblems = yamlDocumentProblems(doc);
  if (yamlProblems.length > 0) throw new ConfigError(opts.source, yamlProblems);
  let data: unknown;
  try {
    data = doc.toJS() ?? {};
  } catch (err) {
    // Only the alias limit is left to fail here (unresolved aliases are reported above); its text names no value.
    const alias = err instanceof ReferenceError && /alias count/i.test(err.message);
    throw new ConfigError(opts.source, [{ path: '', message: alias ? 'YAML: too many aliases (*name) to expand; a configuration needs few, and this many is how a file exhausts memory' : 'YAML: the document cannot be read as data' }]);
  }
  if (typeof data !== 'object' || Array.isArray(data) || data === null) {
    throw new ConfigError(opts.source, [{ path: '', message: 'the file must hold a mapping of sections (smtp, http, spool, delivery, routes)' }]);
  }
  dropEmptySections(data as Record<string, unknown>);
  const origins = applyEnvOverrides(data as Record<string, unknown>, env);
  if (opts.secretsOptional) standInMailboxSecrets(data as Record<string, unknown>);
  try {
    const config = validateConfig(data as Record<string, unknown>, { ...opts, env });
    config.fromEnvironment = Object.fromEntries(origins.filter((o) => !o.created).map((o) => [o.path, o.env]));
    config.fileWarnings = secretCommentWarnings(doc).filter((w) => !(w.path in config.fromEnvironment!));
    config.envWarnings = straySecretVariables(env, config);
    return config;
  } catch (err) {
    throw err instanceof ConfigError ? blameEnvironment(err, origins, opts.source) : err;
  }
}

function validateConfig(data: Record<string, unknown>, opts: { source: string; baseDir: string; env: Env } & LoadOptions): Config {
  const parsed = configSchema.safeParse(data);
  if (!parsed.success) {
    // Report every problem at once: also check the routes that are well-formed on their own.
    const problems = zodProblems(parsed.error);
    const routes = Array.isArray((data as { routes?: unknown }).routes) ? ((data as { routes: unknown[] }).routes) : [];
    const names = new Map<string, number>();
    routes.forEach((r, i) => {
      const name = (r as { name?: unknown } | null)?.name;
      if (typeof name === 'string') uniqueName(names, name, i, problems);
      const route = routeSchema.safeParse(r);
      if (route.success) resolveRoute(route.data, `routes[${i}]`, 30_000, opts, problems);
    });
    throw new ConfigError(opts.source, problems);
  }
  return resolveConfig(parsed.data, opts);
}

/**
 * What the yaml library would let through or throw raw: aliases to no anchor (toJS throws, naming the alias, which
 * may be a secret written unquoted: `secret: *Tr0ub4dor`) and warnings (an unknown tag is dropped with a warning:
 * `secret: !r4ils pa55word` would load as "pa55word"). Reported with the key path, never the value.
 */
function yamlDocumentProblems(doc: Document): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const nodes: Array<{ start: number; path: string }> = [];
  visit(doc, {
    Node(key, node, ancestors) {
      const path = yamlKeyPath(ancestors, node);
      if (node.range) nodes.push({ start: node.range[0], path });
      if (isAlias(node) && node.resolve(doc) === undefined) {
        problems.push({ path, message: 'YAML: an alias (a value starting with "*") names no anchor set before it; if the "*" is part of the value, quote the value' });
      }
    },
  });
  for (const w of doc.warnings) {
    // The node the warning is about starts at or after its token (a tag precedes its value).
    const at = nodes.filter((n) => n.start >= w.pos[0]).sort((a, b) => a.start - b.start)[0];
    const line = w.linePos?.[0]?.line;
    const message = w.code === 'TAG_RESOLVE_FAILED'
      ? 'YAML: unknown tag (a value starting with "!" is a YAML tag, which would be dropped); if the "!" is part of the value, quote the value'
      : `YAML: ${w.code.toLowerCase().replace(/_/g, ' ')}${line ? ` at line ${line}` : ''}; fix it or quote the value`;
    problems.push({ path: at?.path ?? '', message });
  }
  return problems;
}

/**
 * The yaml library's messages that quote the file's text (a block scalar header, a tag, an escape sequence, a
 * value's first character), which can be part of a secret: said without it, with what to do instead.
 */
const QUOTING_YAML_ERRORS: ReadonlyArray<[RegExp, string]> = [
  [/^Block scalar header includes extra characters/, 'a value starting with "|" or ">" is a block scalar header; if the "|" or ">" is part of the value, quote the value'],
  [/^(Unresolved|Could not resolve) tag/, 'a value starting with "!" is a YAML tag; if the "!" is part of the value, quote the value'],
  [/^Invalid escape sequence/, 'an invalid escape sequence in a double-quoted value; use single quotes, or write a backslash as \\\\'],
  [/^Plain value cannot start with/, 'a value cannot start with this character unquoted; quote the value'],
];

/** A YAML syntax error by its position and kind, never by the text of the file around it. */
function yamlSyntaxMessage(e: { message: string; linePos?: ReadonlyArray<{ line: number; col: number }> }): string {
  const text = (e.message.split('\n')[0] ?? '').replace(/ at line \d+, column \d+:?\s*$/, '');
  const at = e.linePos?.[0] ? ` at line ${e.linePos[0].line}, column ${e.linePos[0].col}` : '';
  const quoting = QUOTING_YAML_ERRORS.find(([re]) => re.test(text));
  return `YAML syntax${at}: ${quoting ? quoting[1] : text}`;
}

/** Keys whose value is a secret written in the file (the *_file keys and environment variables are the better way). */
const SECRET_KEYS = new Set(['secret', 'admin_token', 'password', 'client_secret', 'refresh_token']);

/**
 * An unquoted secret followed by " #…" on its line: YAML reads "#" after a space as the start of a comment, so
 * `secret: abc #def` loads as "abc", with no error, and a consumer refuses every signature. Said by key, never by
 * the value or the comment (either may be the rest of the secret); a warning, as the comment may be just that.
 */
function secretCommentWarnings(doc: Document): Array<{ path: string; message: string }> {
  const warnings: Array<{ path: string; message: string }> = [];
  visit(doc, {
    Pair(_key, pair, ancestors) {
      const value = pair.value;
      if (!isScalar(pair.key) || !SECRET_KEYS.has(String(pair.key.value)) || !isScalar(value)) return;
      if (value.type !== 'PLAIN' || value.comment === undefined) return;
      warnings.push({
        path: yamlKeyPath([...ancestors, pair], value),
        message: 'a comment follows the value on its line, and YAML ends an unquoted value at " #": if the "#" and what follows are part of the secret, quote the value (or use the *_file key)',
      });
    },
  });
  return warnings;
}

/** "routes[0].webhook.secret" for a node, from the ancestors visit() passes (Document, maps, pairs, sequences). */
function yamlKeyPath(ancestors: readonly unknown[], node: unknown): string {
  let out = '';
  ancestors.forEach((a, i) => {
    const child = ancestors[i + 1] ?? node;
    if (isPair(a) && child === a.value) {
      const key = isScalar(a.key) ? String(a.key.value) : '?';
      out += out ? `.${key}` : key;
    } else if (isSeq(a)) {
      out += `[${a.items.indexOf(child as YamlNode)}]`;
    }
  });
  return out;
}

/** Sections whose keys are all commented out read as null (`smtp:` alone): treated as absent, so their defaults apply. */
const SECTIONS = ['smtp', 'http', 'spool', 'delivery', 'log', 'imap', 'smtp.tls', 'smtp.limits', 'smtp.sender_auth', 'spool.retention', 'delivery.retry'];
function dropEmptySections(data: Record<string, unknown>): void {
  for (const section of SECTIONS) {
    const parts = section.split('.');
    const parent = parts.length === 1 ? data : data[parts[0]!];
    if (typeof parent !== 'object' || parent === null || Array.isArray(parent)) continue;
    const key = parts[parts.length - 1]!;
    if ((parent as Record<string, unknown>)[key] === null) delete (parent as Record<string, unknown>)[key];
  }
}

/** A key the environment set (or a section it created, `created`), so problems there name the variable. */
interface EnvOrigin {
  path: string;
  env: string;
  created?: boolean;
}

/** A secret from the environment, trimmed like a secret file (a Kubernetes Secret made --from-file keeps the newline). */
function envSecret(env: Env, name: string): string | undefined {
  return env[name]?.trim() || undefined;
}

function applyEnvOverrides(data: Record<string, unknown>, env: Env): EnvOrigin[] {
  const origins: EnvOrigin[] = [];
  for (const o of ENV_OVERRIDES) {
    // A secret is trimmed as envSecret trims a route's: one of only whitespace is not set.
    const value = o.clears ? env[o.env]?.trim() : env[o.env];
    if (value === undefined || value === '') continue;
    let obj = data;
    o.path.slice(0, -1).forEach((part, i) => {
      const current = obj[part];
      const exists = typeof current === 'object' && current !== null && !Array.isArray(current);
      if (!exists) origins.push({ path: o.path.slice(0, i + 1).join('.'), env: o.env, created: true });
      const next = exists ? (current as Record<string, unknown>) : {};
      obj[part] = next;
      obj = next;
    });
    obj[o.path[o.path.length - 1]!] = value;
    origins.push({ path: o.path.join('.'), env: o.env });
    if (o.clears) delete obj[o.clears];
  }
  applyMailboxSecretEnv(data, env, origins);
  if (Array.isArray(data.routes)) {
    (data.routes as unknown[]).forEach((route, i) => {
      if (typeof route !== 'object' || route === null) return;
      const r = route as Record<string, unknown>;
      if (typeof r.name !== 'string' || typeof r.webhook !== 'object' || r.webhook === null) return;
      const name = routeSecretEnvName(r.name);
      const value = envSecret(env, name);
      if (value) {
        const w = r.webhook as Record<string, unknown>;
        delete w.secret_file;
        w.secret = value;
        origins.push({ path: `routes[${i}].webhook.secret`, env: name });
      }
    });
  }
  return origins;
}

/** A mailbox secret from the environment replaces the value or *_file the file gives for it. */
function applyMailboxSecretEnv(data: Record<string, unknown>, env: Env, origins: EnvOrigin[]): void {
  if (!Array.isArray(data.imap)) return;
  const objectAt = (o: Record<string, unknown>, key: string) => (typeof o[key] === 'object' && o[key] !== null && !Array.isArray(o[key]) ? (o[key] as Record<string, unknown>) : undefined);
  (data.imap as unknown[]).forEach((mailbox, i) => {
    if (typeof mailbox !== 'object' || mailbox === null) return;
    const m = mailbox as Record<string, unknown>;
    if (typeof m.name !== 'string') return;
    const set = (o: Record<string, unknown>, at: string, key: string, what: 'PASSWORD' | 'CLIENT_SECRET' | 'REFRESH_TOKEN', value: string) => {
      delete o[`${key}_file`];
      o[key] = value;
      origins.push({ path: `imap[${i}]${at}.${key}`, env: mailboxSecretEnvName(m.name as string, what) });
    };
    const password = envSecret(env, mailboxSecretEnvName(m.name, 'PASSWORD'));
    const clientSecret = envSecret(env, mailboxSecretEnvName(m.name, 'CLIENT_SECRET'));
    const refreshToken = envSecret(env, mailboxSecretEnvName(m.name, 'REFRESH_TOKEN'));
    const oauth2 = objectAt(m, 'oauth2');
    const graph = objectAt(m, 'inbox_options');
    if (password) set(m, '', 'password', 'PASSWORD', password);
    if (clientSecret && (oauth2 ?? graph)) set((oauth2 ?? graph)!, oauth2 ? '.oauth2' : '.inbox_options', 'client_secret', 'CLIENT_SECRET', clientSecret);
    if (refreshToken && oauth2) set(oauth2, '.oauth2', 'refresh_token', 'REFRESH_TOKEN', refreshToken);
  });
}

/**
 * secretsOptional: a mailbox secret set nowhere here may come from the service's environment
 * (MAILHOOK_IMAP_<NAME>_*), so a stand-in takes its place for validation; the admin CLI never logs in.
 */
function standInMailboxSecrets(data: Record<string, unknown>): void {
  if (!Array.isArray(data.imap)) return;
  const standIn = '(set in the service environment)';
  const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  for (const m of data.imap as unknown[]) {
    if (!isObject(m)) continue;
    if (m.inbox_method === 'microsoft_graph') {
      const g = m.inbox_options;
      if (isObject(g) && g.client_secret === undefined && g.client_secret_file === undefined) g.client_secret = standIn;
    } else if (isObject(m.oauth2)) {
      const o = m.oauth2;
      if (o.grant === 'client_credentials' && o.client_secret === undefined && o.client_secret_file === undefined) o.client_secret = standIn;
      if (o.grant === 'refresh_token' && o.refresh_token === undefined && o.refresh_token_file === undefined) o.refresh_token = standIn;
    } else if (m.oauth2 === undefined && m.password === undefined && m.password_file === undefined) {
      m.password = standIn;
    }
  }
}

/** Problems at keys the environment set name the variable: the file holds no such value. */
function blameEnvironment(err: ConfigError, origins: readonly EnvOrigin[], source: string): ConfigError {
  if (origins.length === 0) return err;
  const under = (path: string, prefix: string) => path === prefix || path.startsWith(`${prefix}.`) || path.startsWith(`${prefix}[`);
  const problems = err.problems.map((p) => {
    const set = origins.find((o) => !o.created && under(p.path, o.path));
    if (set) return { path: p.path, message: `${p.message} (the value comes from the environment variable ${set.env}, not the file: fix or unset ${set.env})` };
    const created = origins.filter((o) => o.created && under(p.path, o.path)).sort((a, b) => b.path.length - a.path.length)[0]; // the innermost
    if (created) return { path: p.path, message: `${p.message} (${created.path} is only there because the environment variable ${created.env} is set: configure ${created.path} in the file, or unset ${created.env})` };
    return p;
  });
  return new ConfigError(source, problems);
}

/** What to write instead, by the type a key takes (the value given is not repeated: it may be a secret). */
const TYPE_FIX: Record<string, string> = {
  boolean: 'must be true or false (unquoted; YAML 1.2 reads yes, no, on and off as text)',
  number: 'must be a number (unquoted, digits only, e.g. 100)',
  string: 'must be text; quote it',
  object: 'must be a mapping of keys (key: value lines, indented under it)',
  array: 'must be a list (- item lines, or [a, b])',
};

/** gitlab.rb's incoming_email / service_desk_email keys that an imap[] entry names differently, and what to write. */
const GITLAB_MAILBOX_KEYS: Record<string, string> = {
  delete_after_delivery: 'write after_delivery: delete (GitLab deletes by default; mailhook\'s default is after_delivery: flag)',
  expunge_deleted: 'after_delivery: delete expunges the messages it deletes',
  address: 'the addresses belong to a route (routes[].addresses), which the mailbox\'s recipients are routed by',
  enabled: 'a mailbox listed under imap: is read; remove the entry to stop',
  log_path: 'mailhook logs JSON lines to stdout (log.level)',
  delivery_method: 'mail goes to a route\'s webhook (format: gitlab for GitLab\'s postback)',
  encrypted_secret_file: 'give the password as password_file or MAILHOOK_IMAP_<NAME>_PASSWORD',
};

function zodProblems(error: z.ZodError): ConfigProblem[] {
  return error.issues.map((issue) => {
    const path = issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('').replace(/^\./, '');
    let message = issue.message;
    if (issue.code === 'unrecognized_keys') {
      message = `unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')}; check the spelling against the config reference (docs/configuration.md)`;
      // A mailbox copied from gitlab.rb: GitLab's keys that mailhook names differently, each with what to write.
      const gitlab = /^imap\[\d+\]$/.test(path) ? issue.keys.filter((k) => k in GITLAB_MAILBOX_KEYS) : [];
      if (gitlab.length > 0) message += `; from GitLab's incoming_email: ${gitlab.map((k) => `${k}: ${GITLAB_MAILBOX_KEYS[k]}`).join('; ')}`;
    } else if (issue.code === 'invalid_type' && /received undefined/.test(issue.message)) {
      message = `is required (${issue.expected})`;
    } else if ((issue.code === 'too_small' || issue.code === 'too_big') && /^Too (small|big)/.test(issue.message) && (issue.origin === 'number' || issue.origin === 'int')) {
      // zod's default for a number out of range ("Too small: expected number to be >0"), in the words of the others
      const bound = Number(issue.code === 'too_small' ? issue.minimum : issue.maximum);
      const inclusive = issue.inclusive !== false;
      message = issue.code === 'too_small' ? `must be at least ${inclusive ? bound : bound + 1}` : `must be at most ${inclusive ? bound : bound - 1}`;
    } else if (!/^Invalid (input|option)/.test(issue.message)) {
      // the schema's own message
    } else if (issue.code === 'invalid_type') {
      message = TYPE_FIX[issue.expected] ?? `must be ${issue.expected === 'array' ? 'a list' : `a ${issue.expected}`}`;
    } else if (issue.code === 'invalid_union') {
      message = 'is none of the forms this key takes; see its entry in the config reference (docs/configuration.md)';
    }
    return { path, message };
  });
}

/**
 * MAILHOOK_ROUTE_<NAME>_SECRET and MAILHOOK_IMAP_<NAME>_<WHAT> variables whose name is no configured route's or
 * mailbox's: a misspelt name is otherwise ignored, and the route keeps the secret from its file (or none). Pure.
 */
export function straySecretVariables(env: Env, config: Pick<Config, 'routes' | 'imap'>): Array<{ path: string; message: string }> {
  const routes = new Set(config.routes.map((r) => routeSecretEnvName(r.name)));
  const mailboxes = new Set(config.imap.flatMap((m) => MAILBOX_SECRET_ENV.map((e) => mailboxSecretEnvName(m.name, e.what))));
  const listed = (names: string[]) => (names.length > 0 ? names.join(', ') : 'none');
  return Object.keys(env)
    .filter((name) => env[name] !== undefined)
    .sort()
    .flatMap((name) => {
      if (/^MAILHOOK_ROUTE_.+_SECRET$/.test(name) && !routes.has(name)) {
        return [{ path: name, message: `names no configured route, so it is not used; a route's secret variable is MAILHOOK_ROUTE_<NAME>_SECRET (the name upper-cased, other characters as "_"): ${listed([...routes])}` }];
      }
      if (/^MAILHOOK_IMAP_.+_(PASSWORD|CLIENT_SECRET|REFRESH_TOKEN)$/.test(name) && !mailboxes.has(name)) {
        return [{ path: name, message: `names no configured mailbox, so it is not used; a mailbox's variables are MAILHOOK_IMAP_<NAME>_PASSWORD, _CLIENT_SECRET and _REFRESH_TOKEN (the name upper-cased, other characters as "_"): ${listed([...mailboxes])}` }];
      }
      return [];
    });
}

/**
 * Whether two listeners' hosts take the same port's addresses: the same host; "::" (or no host), which takes IPv4
 * too; "0.0.0.0" and any IPv4 address or host name (0.0.0.0 and ::1 bind side by side).
 */
function hostsOverlap(a: string, b: string): boolean {
  if (a === b || a === '' || b === '' || a === '::' || b === '::') return true;
  const v4 = (h: string) => isIP(h) !== 6;
  return (a === '0.0.0.0' && v4(b)) || (b === '0.0.0.0' && v4(a));
}

/**
 * Two listeners on one port: start-up would fail with "another program listens there" when the other program is
 * mailhook's own other listener. Port 0 (any free port) never clashes.
 */
function sharedListeners(raw: RawConfig, problems: ConfigProblem[]): void {
  const listeners: Array<[string, ListenAddress]> = [['smtp.listen', raw.smtp.listen], ['http.listen', raw.http.listen]];
  if (raw.smtp.tls?.implicit_listen) listeners.push(['smtp.tls.implicit_listen', raw.smtp.tls.implicit_listen]);
  listeners.forEach(([path, a], i) => {
    const other = listeners.slice(0, i).find(([, b]) => a.port !== 0 && a.port === b.port && hostsOverlap(a.host, b.host));
    if (other) problems.push({ path, message: `port ${a.port} is also ${other[0]}'s (${other[1].host.includes(':') ? `[${other[1].host}]` : other[1].host}:${other[1].port}); each listener needs a port of its own: give ${path} another port` });
  });
}

function uniqueName(names: Map<string, number>, name: string, i: number, problems: ConfigProblem[]): void {
  const seen = names.get(name);
  if (seen !== undefined) problems.push({ path: `routes[${i}].name`, message: `"${name}" is already the name of routes[${seen}]; route names must be unique` });
  else names.set(name, i);
}

/**
 * Names that differ but map to one environment variable (gitlab-desk, gitlab_desk and Gitlab.Desk all read
 * MAILHOOK_ROUTE_GITLAB_DESK_SECRET) would share a secret without anyone choosing to: a problem, naming both.
 */
function sharedSecretVariables(names: readonly string[], section: 'routes' | 'imap', variables: (name: string) => string[], problems: ConfigProblem[]): void {
  const first = new Map<string, number>();
  names.forEach((name, i) => {
    const variable = variables(name)[0]!;
    const seen = first.get(variable);
    if (seen === undefined) first.set(variable, i);
    else if (names[seen] !== name) {
      const what = section === 'routes' ? 'route' : 'mailbox';
      problems.push({ path: `${section}[${i}].name`, message: `"${name}" and ${section}[${seen}] "${names[seen]}" would both read their secrets from ${variables(name).join(', ')}; rename one so the ${what} names differ in more than case and punctuation${section === 'routes' ? ' (renamed_from: [<old name>] on the renamed route keeps the mail the spool holds for it)' : ''}` });
    }
  });
}

/** renamed_from names no route has now, each claimed by one route: deliveries under it go to that route. */
function renamedRoutes(routes: RawConfig['routes'], problems: ConfigProblem[]): void {
  const current = new Map(routes.map((r, i) => [r.name, i]));
  const claimedBy = new Map<string, number>();
  routes.forEach((route, i) => {
    route.renamed_from?.forEach((old, j) => {
      const path = `routes[${i}].renamed_from[${j}]`;
      const now = current.get(old);
      const other = claimedBy.get(old);
      if (now !== undefined) problems.push({ path, message: `"${old}" is the name of routes[${now}]${now === i ? ' itself' : ''}; renamed_from lists earlier names that no route has now` });
      else if (other !== undefined) problems.push({ path, message: `"${old}" is in routes[${other}].renamed_from already; the deliveries under an earlier name go to one route` });
      else claimedBy.set(old, i);
    });
  });
}

function resolveConfig(raw: RawConfig, opts: { source: string; baseDir: string; env: Env } & LoadOptions): Config {
  const problems: ConfigProblem[] = [];
  const names = new Map<string, number>();
  const claimed = new Map<string, string>();
  const routes: ResolvedRoute[] = [];

  raw.routes.forEach((route, i) => {
    const at = `routes[${i}]`;
    uniqueName(names, route.name, i, problems);
    route.addresses.forEach((address, j) => {
      const parsed = parseAddressTemplate(address);
      if (!parsed.ok) return;
      const id = templateIdentity(parsed.template);
      const owner = claimed.get(id);
      if (owner !== undefined) {
        problems.push({ path: `${at}.addresses[${j}]`, message: `"${address}" is already claimed by ${owner}; an address belongs to one route` });
      } else {
        claimed.set(id, `route "${route.name}"`);
      }
    });
    routes.push(resolveRoute(route, at, raw.delivery.timeout_ms, opts, problems));
  });

  renamedRoutes(raw.routes, problems);
  sharedSecretVariables(raw.routes.map((r) => r.name), 'routes', (name) => [routeSecretEnvName(name)], problems);
  sharedSecretVariables(raw.imap.map((m) => m.name), 'imap', (name) => MAILBOX_SECRET_ENV.map((e) => mailboxSecretEnvName(name, e.what)), problems);

  // Problems reading secret and key files; not counted when secrets are optional (see LoadOptions).
  const fileProblems: ConfigProblem[] = opts.secretsOptional ? [] : problems;
  let adminToken: Secret | undefined;
  if (raw.http.admin_token && raw.http.admin_token_file) {
    problems.push({ path: 'http.admin_token_file', message: 'set either http.admin_token or http.admin_token_file, not both' });
  } else if (raw.http.admin_token) {
    adminToken = new Secret(raw.http.admin_token);
  } else if (raw.http.admin_token_file) {
    const value = readSecretFile(raw.http.admin_token_file, opts.baseDir, 'http.admin_token_file', fileProblems);
    if (value !== undefined && value.length < 16) problems.push({ path: 'http.admin_token_file', message: 'the token in the file must be at least 16 characters' });
    else if (value !== undefined && /\s/.test(value)) problems.push({ path: 'http.admin_token_file', message: 'the token in the file must be one word, no spaces: it is sent as "Authorization: Bearer <token>"' });
    else if (value !== undefined && isPlaceholderToken(value)) problems.push({ path: 'http.admin_token_file', message: `the token in the file ${PLACEHOLDER_TOKEN_MESSAGE}` });
    else if (value !== undefined) adminToken = new Secret(value);
  }

  const postmaster = raw.smtp.postmaster_route;
  if (postmaster !== undefined && !names.has(postmaster)) {
    problems.push({ path: 'smtp.postmaster_route', message: `no route is named "${postmaster}"; name one of ${[...names.keys()].map((n) => `"${n}"`).join(', ')}` });
  }

  sharedListeners(raw, problems);
  const smtpTls = resolveSmtpChecks(raw, opts.baseDir, problems, fileProblems);
  const imap = resolveMailboxes(
    raw.imap,
    new Set(routes.map((r) => r.name)),
    (file, path) => {
      const value = readSecretFile(file, opts.baseDir, path, fileProblems);
      return value === undefined ? undefined : new Secret(value, resolve(opts.baseDir, file));
    },
    problems,
  );

  if (problems.length > 0) throw new ConfigError(opts.source, problems);

  return {
    smtp: { ...raw.smtp, hostname: raw.smtp.hostname ?? osHostname(), tls: smtpTls },
    http: { listen: raw.http.listen, adminToken },
    spool: { ...raw.spool, path: resolve(opts.baseDir, raw.spool.path) },
    delivery: raw.delivery,
    log: raw.log,
    routes,
    imap,
    source: opts.source,
  };
}

function resolveRoute(route: RouteConfig, at: string, defaultTimeout: number, opts: { baseDir: string } & LoadOptions, problems: ConfigProblem[]): ResolvedRoute {
  const out: ResolvedRoute = { name: route.name, addresses: route.addresses, sink: route.sink === true, dropAutomatic: route.drop_automatic, webhook: undefined, dmarcReject: route.dmarc_reject };
  if (route.renamed_from) out.renamedFrom = route.renamed_from;
  if (route.verify) out.verify = { url: route.verify.url, timeoutMs: route.verify.timeout_ms, cacheTtlMs: route.verify.cache_ttl_s * 1000 };
  if (route.verify && hasCredentials(route.verify.url)) {
    problems.push({ path: `${at}.verify.url`, message: 'credentials in the URL (user:password@) are not sent with verify requests; remove them (the requests are signed with the route\'s webhook secret, when it has one)' });
  }
  const w = route.webhook;
  if (!w) return out;
  if (hasCredentials(w.url) && !URL_CREDENTIAL_FORMATS.has(w.format)) {
    problems.push({ path: `${at}.webhook.url`, message: `credentials in the URL (user:password@) are not sent by format ${w.format}, only by ${[...URL_CREDENTIAL_FORMATS].join(', ')} (as HTTP Basic auth); remove them: ${URL_CREDENTIAL_FIX[w.format] ?? ''}` });
  }
  let secretText: string | undefined;
  if (w.secret && w.secret_file) {
    problems.push({ path: `${at}.webhook.secret_file`, message: 'set either secret or secret_file, not both' });
  } else if (w.secret) {
    secretText = w.secret;
  } else if (w.secret_file) {
    secretText = readSecretFile(w.secret_file, opts.baseDir, `${at}.webhook.secret_file`, opts.secretsOptional ? [] : problems);
  }
  const rule = FORMAT_SECRETS[w.format];
  const secretPath = `${at}.webhook.${w.secret_file ? 'secret_file' : 'secret'}`;
  let keyBytes: Buffer | undefined;
  if (secretText === undefined) {
    if (!w.secret_file && rule.required && !opts.secretsOptional) {
      problems.push({ path: `${at}.webhook.secret`, message: `missing: format ${w.format} needs ${describeSecret(rule.kind)}; set secret, secret_file, or ${routeSecretEnvName(route.name)}` });
    }
  } else if (rule.kind === 'none') {
    problems.push({ path: secretPath, message: `format ${w.format} takes no secret; remove it` });
  } else if (rule.kind === 'whsec') {
    const decoded = decodeWebhookSecret(secretText);
    if (decoded.ok) keyBytes = decoded.key;
    else problems.push({ path: secretPath, message: `the secret ${decoded.error}` });
  } else if (rule.kind === 'gitlab_base64') {
    const key = /^[A-Za-z0-9+/]+={0,2}$/.test(secretText) ? Buffer.from(secretText, 'base64') : undefined;
    if (key && key.length === 32) keyBytes = key;
    else problems.push({ path: secretPath, message: 'is not a GitLab secret (base64 of 32 bytes, as in gitlab_incoming_email_secret); point secret_file at the file GitLab wrote' });
  } else {
    keyBytes = Buffer.from(secretText, 'utf8');
  }
  const options = {} as Record<FormatOptionKey, boolean>;
  for (const [key, owner] of Object.entries(FORMAT_OPTIONS) as Array<[FormatOptionKey, string]>) {
    if (w[key] !== undefined && w.format !== owner) problems.push({ path: `${at}.webhook.${key}`, message: `applies only to format ${owner}; remove it or set format: ${owner}` });
    options[key] = w[key] === true;
  }
  const webhook = {
    url: w.url,
    format: w.format,
    timeoutMs: w.timeout_ms ?? defaultTimeout,
    signingKey: secretText === undefined ? undefined : new Secret(secretText),
    options,
  } as ResolvedWebhook;
  // The bytes are the secret too (an action_mailbox password is its UTF-8): kept out of serialisation and inspect.
  Object.defineProperty(webhook, 'signingKeyBytes', { value: keyBytes, enumerable: false, writable: false, configurable: false });
  out.webhook = webhook;
  return out;
}

/** Formats that send a webhook URL's userinfo as HTTP Basic auth, as the hosted services do (docs/consumers.md). */
const URL_CREDENTIAL_FORMATS: ReadonlySet<WebhookConfig['format']> = new Set(['mailgun', 'postmark', 'sendgrid'] as const);
/** How the other formats authenticate, for the problem's fix. */
const URL_CREDENTIAL_FIX: Partial<Record<WebhookConfig['format'], string>> = {
  json: 'the consumer authenticates requests by their Standard Webhooks signature (webhook.secret)',
  raw: 'the consumer authenticates requests by their Standard Webhooks signature (webhook.secret)',
  gitlab: 'GitLab authenticates requests by the JWT signed with webhook.secret',
  action_mailbox: 'the ingress password is webhook.secret (sent as Basic auth, user actionmailbox)',
};

/** smtp.tls file paths resolved against the working directory and readable; settings that need each other. */
function resolveSmtpChecks(raw: RawConfig, baseDir: string, problems: ConfigProblem[], fileProblems: ConfigProblem[]): RawConfig['smtp']['tls'] {
  raw.routes.forEach((route, i) => {
    if (route.dmarc_reject && !raw.smtp.sender_auth.enabled) {
      problems.push({ path: `routes[${i}].dmarc_reject`, message: 'needs DMARC results: set smtp.sender_auth.enabled: true (or remove dmarc_reject)' });
    }
  });
  const tls = raw.smtp.tls;
  if (!tls) return undefined;
  const out = { ...tls, key_file: resolve(baseDir, tls.key_file), cert_file: resolve(baseDir, tls.cert_file) };
  for (const key of ['key_file', 'cert_file'] as const) {
    try {
      readFileSync(out[key]);
    } catch (err) {
      fileProblems.push({ path: `smtp.tls.${key}`, message: cannotRead(tls[key], err, 'the PEM itself: save it to a file and give that file\'s path') });
    }
  }
  return out;
}

/** Reads a secret from a file (relative paths from the working directory), trimmed of surrounding whitespace. */
function readSecretFile(file: string, baseDir: string, path: string, problems: ConfigProblem[]): string | undefined {
  try {
    const value = readFileSync(resolve(baseDir, file), 'utf8').trim();
    if (!value) {
      problems.push({ path, message: looksLikePath(file) ? `${file} is empty` : 'the file it names is empty' });
      return undefined;
    }
    return value;
  } catch (err) {
    problems.push({ path, message: cannotRead(file, err, `the secret itself: set ${path.replace(/_file$/, '')} or its environment variable instead, or write it to a file and give that file's path`) });
    return undefined;
  }
}

/**
 * Whether a *_file value may be shown in a message: a path (a "/" or a file extension, path characters only).
 * A secret or a PEM block pasted in by mistake does not look like one, and is not echoed.
 */
export function looksLikePath(value: string): boolean {
  return /^[\w.@:~/-]{1,1024}$/.test(value) && !value.startsWith('whsec_') && (value.includes('/') || /\.[A-Za-z0-9]{1,8}$/.test(value));
}

/** "cannot read <file> (ENOENT)…", naming the file only when it looks like a path (`pasted`: what else it may be). */
function cannotRead(file: string, err: unknown, pasted: string): string {
  const why = isErrnoException(err) ? err.code : 'unreadable';
  if (looksLikePath(file)) return `cannot read ${file} (${why}); check the path and that mailhook's user may read it`;
  return `cannot read the file it names (${why}); the value is not shown because it does not look like a path: if it is ${pasted}`;
}

function describeSecret(kind: SecretKind): string {
  switch (kind) {
    case 'whsec':
      return 'a Standard Webhooks secret (whsec_…)';
    case 'gitlab_base64':
      return "GitLab's incoming email secret (base64 of 32 bytes)";
    case 'text':
      return 'a secret';
    case 'none':
      return 'no secret';
  }
}
