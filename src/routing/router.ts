// The route table: which route (and key) a recipient address belongs to, or why it is refused. Pure.
import { asciiDomain, lowerAscii, matchLocalPart, parseAddressTemplate, type AddressTemplate } from './template.js';

export interface RouteLike {
  name: string;
  addresses: readonly string[];
}

export type RouteMatch =
  | { ok: true; route: string; key: string | null; address: string }
  | { ok: false; reason: 'unknown_domain' | 'unknown_recipient' | 'bad_address' };

interface Entry {
  route: string;
  template: AddressTemplate;
}

// Specificity: a dedicated address beats a %{key} template, which beats a catch-all.
const RANK: Record<AddressTemplate['kind'], number> = { exact: 0, key: 1, any: 2 };

export interface RouterOptions {
  /**
   * The route that takes postmaster@ each domain the routes serve and the bare <postmaster> (RFC 5321 §4.5.1),
   * unless a route lists postmaster@ that domain as a dedicated address. Unset: postmaster is a local part like any.
   */
  postmasterRoute?: string;
}

export class Router {
  private readonly byDomain = new Map<string, Entry[]>();
  private readonly postmasterRoute: string | undefined;

  constructor(routes: readonly RouteLike[], opts: RouterOptions = {}) {
    this.postmasterRoute = opts.postmasterRoute;
    for (const route of routes) {
      for (const source of route.addresses) {
        const parsed = parseAddressTemplate(source);
        if (!parsed.ok) throw new Error(parsed.error); // config validation has already reported it
        const list = this.byDomain.get(parsed.template.domain) ?? [];
        list.push({ route: route.name, template: parsed.template });
        this.byDomain.set(parsed.template.domain, list);
      }
    }
    for (const list of this.byDomain.values()) {
      // Longer literal parts first among templates, so "incoming+%{key}-x" wins over "incoming+%{key}".
      list.sort((a, b) => RANK[a.template.kind] - RANK[b.template.kind] || literalLength(b.template) - literalLength(a.template));
    }
  }

  get domains(): string[] {
    return [...this.byDomain.keys()];
  }

  servesDomain(domain: string): boolean {
    const ascii = asciiDomain(domain);
    return ascii !== undefined && this.byDomain.has(ascii);
  }

  match(address: string): RouteMatch {
    const postmaster = this.postmasterRoute;
    // RFC 5321 §4.1.1.3: RCPT TO:<Postmaster> without a domain names this server's postmaster.
    if (lowerAscii(address) === 'postmaster') return postmaster === undefined ? { ok: false, reason: 'unknown_recipient' } : { ok: true, route: postmaster, key: null, address };
    const at = address.lastIndexOf('@');
    if (at <= 0 || at === address.length - 1) return { ok: false, reason: 'bad_address' };
    // Syntax before any route: a catch-all must not take, nor a template capture into %{key}, what is no mailbox.
    // A trailing dot (user@example.com.) is refused as smtp-server refuses it on the wire: RFC 5321 §4.1.2's Domain
    // has none, and the mailbox bridges strip a sentence's final dot before they ask (imap/headers.ts).
    if (!isLocalPart(address.slice(0, at)) || address.endsWith('.')) return { ok: false, reason: 'bad_address' };
    const local = unquoteLocalPart(address.slice(0, at));
    const domain = asciiDomain(address.slice(at + 1));
    const entries = domain === undefined ? undefined : this.byDomain.get(domain);
    if (!entries) return { ok: false, reason: 'unknown_domain' };
    const isPostmaster = postmaster !== undefined && lowerAscii(local) === 'postmaster';
    for (const entry of entries) {
      // Dedicated addresses come first (RANK): past them, postmaster goes to its route, not to a template.
      if (isPostmaster && entry.template.kind !== 'exact') break;
      const key = matchLocalPart(entry.template, local);
      if (key !== undefined) {
        return { ok: true, route: entry.route, key: entry.template.kind === 'key' ? key : null, address: `${local}@${domain}` };
      }
    }
    if (isPostmaster) return { ok: true, route: postmaster, key: null, address: `${local}@${domain}` };
    return { ok: false, reason: 'unknown_recipient' };
  }
}

/**
 * RFC 5321 §4.1.2 Dot-string (Atom *("." Atom), atext only), with UTF-8 beyond ASCII as RFC 6531 §3.3 adds to
 * atext (a non-ASCII address reaches routing only with SMTPUTF8: adapter.ts answers 553 5.6.7 otherwise). The same
 * set as RFC 5322 §3.2.3 dot-atom-text with RFC 6532 §3.2.
 */
const DOT_ATOM_RE = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\u{10ffff}-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\u{10ffff}-]+)*$/u;

/**
 * RFC 5321 §4.1.2 Quoted-string: DQUOTE *(qtextSMTP / quoted-pairSMTP) DQUOTE, where qtextSMTP is printable ASCII
 * and space but '"' and '\\' (plus UTF-8 beyond ASCII, RFC 6531 §3.3) and quoted-pairSMTP is '\\' and one
 * printable ASCII character or space.
 */
const QUOTED_STRING_RE = /^"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\u{10ffff}]|\\[\x20-\x7e])*"$/u;

/**
 * RFC 5321 §4.1.2 Local-part = Dot-string / Quoted-string. Anything else (an unquoted '"', '(', '\\', '[', ';',
 * ',', ':', a quote followed by more text...) is no mailbox: 501 5.1.3, whatever the routes.
 */
export function isLocalPart(local: string): boolean {
  return DOT_ATOM_RE.test(local) || QUOTED_STRING_RE.test(local);
}

/**
 * A quoted local part that needs no quoting names the same mailbox as the bare one (RFC 5322 §3.2.4: the quotes
 * are not part of the quoted-string, RFC 5321 §4.1.2), so "user"@ routes as user@. One that needs its quotes (a
 * space, a '(', a second '@' from a mailbox bridge...) is kept as written and only a catch-all takes it.
 */
export function unquoteLocalPart(local: string): string {
  if (local.length < 2 || !local.startsWith('"') || !local.endsWith('"')) return local;
  const bare = local.slice(1, -1).replace(/\\(.)/gsu, '$1');
  return DOT_ATOM_RE.test(bare) ? bare : local;
}

function literalLength(t: AddressTemplate): number {
  return t.kind === 'key' ? t.prefix.length + t.suffix.length : 0;
}
