// Generates the configuration reference (docs/configuration.md) from the schema, so docs and validation never drift.
import { z } from 'zod';
import { configSchema, listenAddress, type ListenAddress } from './schema.js';
import { ENV_OVERRIDES, MAILBOX_SECRET_ENV, mailboxSecretEnvName, routeSecretEnvName } from './load.js';

interface JsonSchema {
  type?: string | string[];
  description?: string;
  default?: unknown;
  enum?: unknown[];
  properties?: Record<string, JsonSchema>;
  items?: JsonSchema;
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  required?: string[];
  minimum?: number;
  exclusiveMinimum?: number;
  maximum?: number;
  minItems?: number;
  format?: string;
  pattern?: string;
}

interface Row {
  key: string;
  type: string;
  def: string;
  description: string;
  required: boolean;
}

function typeOf(s: JsonSchema): string {
  if (s.enum) return s.enum.map((v) => `\`${String(v)}\``).join(' \\| ');
  const alts = s.anyOf ?? s.oneOf;
  if (alts) return alts.map(typeOf).join(' or ');
  if (s.type === 'array') return `list of ${s.items ? typeOf(s.items) : 'values'}`;
  if (s.type === 'object' && s.properties) return 'mapping';
  const t = Array.isArray(s.type) ? s.type.join(' or ') : (s.type ?? 'any');
  return t;
}

function walk(s: JsonSchema, path: string, required: boolean, rows: Row[]): void {
  const obj = s.properties ? s : (s.anyOf ?? s.oneOf)?.find((a) => a.properties);
  const isLeafObject = !obj?.properties;
  if (path) {
    rows.push({
      key: path,
      type: typeOf(s),
      def: s.default === undefined || (typeof s.default === 'object' && s.default !== null && Object.keys(s.default).length === 0) ? '' : `\`${JSON.stringify(s.default)}\``,
      description: (s.description ?? '').replace(/\|/g, '\\|').replace(/\n/g, ' '),
      required,
    });
  }
  if (!isLeafObject && obj?.properties) {
    for (const [k, v] of Object.entries(obj.properties)) walk(v, path ? `${path}.${k}` : k, obj.required?.includes(k) ?? false, rows);
  }
  if (s.type === 'array' && s.items) {
    const item = s.items;
    const inner = item.properties ? item : (item.anyOf ?? item.oneOf)?.find((a) => a.properties);
    if (inner?.properties) for (const [k, v] of Object.entries(inner.properties)) walk(v, `${path}[].${k}`, inner.required?.includes(k) ?? false, rows);
  }
}

/**
 * A listen address's default is the parsed {host, port}, which the input JSON Schema leaves out (the transform makes
 * input and output differ): put it back as the host:port text the file takes.
 */
function listenDefault(ctx: { zodSchema: unknown; jsonSchema: { default?: unknown } }): void {
  const s = ctx.zodSchema;
  if (!(s instanceof z.ZodDefault) || s.unwrap() !== listenAddress || ctx.jsonSchema.default !== undefined) return;
  const { host, port } = s.def.defaultValue as ListenAddress;
  ctx.jsonSchema.default = `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

export function configReferenceMarkdown(): string {
  const schema = z.toJSONSchema(configSchema, { io: 'input', unrepresentable: 'any', override: listenDefault }) as JsonSchema;
  const rows: Row[] = [];
  walk(schema, '', true, rows);
  const out: string[] = [
    '# Configuration reference',
    '',
    '<!-- Generated from src/config/schema.ts by `mailhook config-reference`; do not edit by hand. -->',
    '',
    'mailhook reads one YAML file (`mailhook serve --config FILE`), applies the environment overrides below, and validates',
    'everything once at start-up: unknown keys, wrong types, missing secrets, two routes claiming one address and bad listen',
    'addresses are each reported with the key\'s path, and mailhook exits with status 2 before listening.',
    '`mailhook check-config --config FILE` runs the same checks without starting. Relative paths resolve against the',
    'working directory. Address patterns: `local@domain` (dedicated), `prefix%{key}suffix@domain` (GitLab\'s `%{key}`,',
    'one or more characters, case kept) and `*@domain` (any local part); domains match case-insensitively.',
    '',
    '| key | type | default | description |',
    '| --- | --- | --- | --- |',
  ];
  for (const r of rows) out.push(`| \`${r.key}\`${r.required ? ' (required)' : ''} | ${r.type} | ${r.def} | ${r.description} |`);
  out.push('', '## Environment variables', '', 'Each overrides the key named beside it; use them for secrets and for listen addresses in containers. A variable that is set (and not empty; a secret of only whitespace counts as empty) wins over the file, including over the `*_file` key of the same secret.', '');
  out.push('| variable | overrides |', '| --- | --- |');
  for (const o of ENV_OVERRIDES) out.push(`| \`${o.env}\` | \`${o.description}\` |`);
  out.push(`| \`${routeSecretEnvName('NAME').replace('NAME', '<NAME>')}\` | \`routes[].webhook.secret\` of the route called \`<name>\` (upper-cased, other characters as \`_\`) |`);
  for (const m of MAILBOX_SECRET_ENV) out.push(`| \`${mailboxSecretEnvName('NAME', m.what).replace('NAME', '<NAME>')}\` | ${m.description} of the mailbox called \`<name>\` |`);
  out.push('');
  return out.join('\n');
}
