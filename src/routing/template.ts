// Address templates as GitLab writes them: literal, "%{key}" capturing part of the local part, or "*@domain".
export type AddressTemplate =
  | { kind: 'exact'; local: string; domain: string; source: string }
  | { kind: 'key'; prefix: string; suffix: string; domain: string; source: string }
  | { kind: 'any'; domain: string; source: string };

export const KEY_PLACEHOLDER = '%{key}';

export type TemplateResult = { ok: true; template: AddressTemplate } | { ok: false; error: string };

const DOMAIN_RE = /^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/i;

/** Parses one configured address pattern; errors say how to write it correctly. */
export function parseAddressTemplate(source: string): TemplateResult {
  const at = source.lastIndexOf('@');
  if (at <= 0 || at === source.length - 1) {
    return { ok: false, error: `"${source}" is not an address pattern; write local@domain, e.g. "incoming+%{key}@example.com"` };
  }
  const local = source.slice(0, at);
  const domain = source.slice(at + 1).toLowerCase();
  if (!DOMAIN_RE.test(domain)) return { ok: false, error: `"${domain}" in "${source}" is not a domain name` };
  if (/[\s<>()[\]\\,;:"@]/.test(local)) {
    return { ok: false, error: `the local part of "${source}" has a character that needs quoting; use a plain local part` };
  }
  if (local === '*') return { ok: true, template: { kind: 'any', domain, source } };
  if (local.includes('*')) return { ok: false, error: `"${source}": "*" is only allowed as the whole local part ("*@${domain}")` };
  const first = local.indexOf(KEY_PLACEHOLDER);
  if (first === -1) {
    if (/%\{/.test(local)) return { ok: false, error: `"${source}": the only placeholder is %{key}` };
    return { ok: true, template: { kind: 'exact', local, domain, source } };
  }
  if (local.indexOf(KEY_PLACEHOLDER, first + 1) !== -1) return { ok: false, error: `"${source}": %{key} may appear only once` };
  const prefix = local.slice(0, first);
  const suffix = local.slice(first + KEY_PLACEHOLDER.length);
  if (/%\{/.test(prefix + suffix)) return { ok: false, error: `"${source}": the only placeholder is %{key}` };
  return { ok: true, template: { kind: 'key', prefix, suffix, domain, source } };
}

/** A canonical form used to find two routes claiming the same pattern. */
export function templateIdentity(t: AddressTemplate): string {
  switch (t.kind) {
    case 'exact':
      return `exact:${t.local.toLowerCase()}@${t.domain}`;
    case 'key':
      return `key:${t.prefix.toLowerCase()}%{key}${t.suffix.toLowerCase()}@${t.domain}`;
    case 'any':
      return `any:*@${t.domain}`;
  }
}

/**
 * Matches a local part (already split from its lower-cased domain) against a template of that domain.
 * The literal parts match case-insensitively; the captured key keeps its case. Returns the key
 * ("" for exact and catch-all templates) or undefined for no match.
 */
export function matchLocalPart(t: AddressTemplate, local: string): string | undefined {
  switch (t.kind) {
    case 'exact':
      return local.toLowerCase() === t.local.toLowerCase() ? '' : undefined;
    case 'any':
      return local.length > 0 ? '' : undefined;
    case 'key': {
      // %{key} captures one or more characters between the literal prefix and suffix.
      if (local.length < t.prefix.length + t.suffix.length + 1) return undefined;
      const lower = local.toLowerCase();
      if (!lower.startsWith(t.prefix.toLowerCase()) || !lower.endsWith(t.suffix.toLowerCase())) return undefined;
      return local.slice(t.prefix.length, local.length - t.suffix.length);
    }
  }
}
