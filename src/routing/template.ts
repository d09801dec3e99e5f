// Address templates as GitLab writes them: literal, "%{key}" capturing part of the local part, or "*@domain".
import { domainToASCII, domainToUnicode } from 'node:url';

export type AddressTemplate =
  | { kind: 'exact'; local: string; domain: string; source: string }
  | { kind: 'key'; prefix: string; suffix: string; domain: string; source: string }
  | { kind: 'any'; domain: string; source: string };

export const KEY_PLACEHOLDER = '%{key}';

export type TemplateResult = { ok: true; template: AddressTemplate } | { ok: false; error: string };

const DOMAIN_RE = /^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/i;

/**
 * Lower-cases A-Z only. String.prototype.toLowerCase() maps more than case in ASCII: U+212A KELVIN SIGN becomes "k"
 * and U+0130 becomes two characters, so "\u212Ailo.test" compared as "kilo.test" and key offsets shifted.
 */
export function lowerAscii(s: string): string {
  return /[A-Z]/.test(s) ? s.replace(/[A-Z]+/g, (c) => c.toLowerCase()) : s;
}

/**
 * The form a domain is compared in: ASCII, lower-case, each internationalized label as its A-label (RFC 5890).
 * smtp-server hands over A-labels converted to Unicode, a config may name either form: both end up the same.
 * A non-ASCII label must be a U-label as written (NFC, lower-case, nothing UTS #46 would map: "\u212Ailo" is
 * not "kilo"); anything else is undefined (no domain mailhook serves).
 */
export function asciiDomain(domain: string): string | undefined {
  if (!/[^\x00-\x7f]/.test(domain)) return lowerAscii(domain); // every label ASCII: the loop below would only lower-case each
  const labels = domain.split('.');
  for (let i = 0; i < labels.length; i++) {
    const label = labels[i] as string;
    if (!/[^\x00-\x7f]/.test(label)) {
      labels[i] = lowerAscii(label);
      continue;
    }
    const a = domainToASCII(label);
    if (!a || a.includes('.') || domainToUnicode(a) !== label) return undefined;
    labels[i] = a;
  }
  return labels.join('.');
}

/** Parses one configured address pattern; errors say how to write it correctly. */
export function parseAddressTemplate(source: string): TemplateResult {
  const at = source.lastIndexOf('@');
  if (at <= 0 || at === source.length - 1) {
    return { ok: false, error: `"${source}" is not an address pattern; write local@domain, e.g. "incoming+%{key}@example.com"` };
  }
  const local = source.slice(0, at);
  // An internationalized domain may be written as U-labels or A-labels; it is kept as A-labels.
  const domain = asciiDomain(source.slice(at + 1).toLowerCase().normalize('NFC'));
  if (domain === undefined || !DOMAIN_RE.test(domain)) return { ok: false, error: `"${source.slice(at + 1)}" in "${source}" is not a domain name` };
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
      return `exact:${lowerAscii(t.local)}@${t.domain}`;
    case 'key':
      return `key:${lowerAscii(t.prefix)}%{key}${lowerAscii(t.suffix)}@${t.domain}`;
    case 'any':
      return `any:*@${t.domain}`;
  }
}

/**
 * Matches a local part (already split from its domain) against a template of that domain.
 * The literal parts match ignoring ASCII case; the captured key keeps its case. Returns the key
 * ("" for exact and catch-all templates) or undefined for no match.
 */
export function matchLocalPart(t: AddressTemplate, local: string): string | undefined {
  switch (t.kind) {
    case 'exact':
      return lowerAscii(local) === lowerAscii(t.local) ? '' : undefined;
    case 'any':
      return local.length > 0 ? '' : undefined;
    case 'key': {
      // %{key} captures one or more characters between the literal prefix and suffix.
      if (local.length < t.prefix.length + t.suffix.length + 1) return undefined;
      const lower = lowerAscii(local);
      if (!lower.startsWith(lowerAscii(t.prefix)) || !lower.endsWith(lowerAscii(t.suffix))) return undefined;
      return local.slice(t.prefix.length, local.length - t.suffix.length);
    }
  }
}
