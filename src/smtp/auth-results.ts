// Sender authentication at the end of DATA: SPF, DKIM, DMARC and ARC with mailauth, the DNS resolver passed in.
import { PassThrough } from 'node:stream';
import type { ARCData, AuthenticateResult, DNSResolver } from 'mailauth';

/** mailauth takes most of a second to load; only deployments that enable sender authentication pay for it. */
let mailauth: Promise<typeof import('mailauth')> | undefined;
const loadMailauth = () => (mailauth ??= import('mailauth'));
import type { Logger } from '../core/logger.js';

/** What the payload's `authentication` holds (results use RFC 8601 names: pass, fail, none, …). */
export interface AuthenticationSummary {
  spf: { result: string; domain: string | null };
  dkim: { result: string; signatures: Array<{ result: string; domain: string; selector: string | null; aligned: boolean }> };
  dmarc: { result: string; domain: string | null; policy: string | null };
  arc: { result: string };
}

export interface AuthenticationOutcome {
  authentication: AuthenticationSummary;
  /** the Authentication-Results header value (RFC 8601), unfolded, starting with the authserv-id */
  authenticationResults: string;
  /** the From domain when DMARC failed and its policy is p=reject at 100 % (the route decides whether to refuse) */
  dmarcRejectDomain: string | null;
  /**
   * DKIM and DMARC were not run because the header section was too big to parse safely (see the size bounds):
   * a route with dmarc_reject refuses such a message, or padding the header would be a way around its policy.
   */
  unevaluated: boolean;
}

export interface SessionFacts {
  /**
   * the client's address; null when unknown (a trusted relay's XFORWARD gave ADDR=[UNAVAILABLE], or no ADDR): SPF
   * cannot be judged and is recorded as none, while DKIM, ARC and DMARC, which need no address, still run
   */
  ip: string | null;
  helo: string | null;
  /** MAIL FROM, '' for the null sender */
  sender: string;
}

export interface AuthenticatorOptions {
  /** the authserv-id of Authentication-Results (smtp.hostname) */
  mta: string;
  /** dns.promises.resolve by default; tests answer in-process */
  resolver?: DNSResolver;
  log: Logger;
  /**
   * A From header bigger than this is not handed to mailauth: its address parser (nodemailer 8 under
   * mailauth 4.13) is quadratic in the number of addresses. DMARC needs one author anyway (RFC 7489 §6.6.1).
   */
  maxFromHeaderBytes?: number;
  /**
   * Nor a header section of more lines than this: mailauth's header parser is quadratic in the lines (on the
   * 2-core VM 10,000 lines took 0.14 s, 40,000 8.6 s, all of it blocking the event loop).
   */
  maxHeaderLines?: number;
}

/** What the DATA filter counted of the message's own header section. */
export interface HeaderFacts {
  fromHeaderBytes: number;
  headerLines: number;
}

/** One message being authenticated: feed it the stored bytes, then read the outcome. */
export interface AuthenticationRun {
  /** the top-level header section ended: what it held */
  headerEnd(facts: HeaderFacts): void;
  write(chunk: Buffer): void;
  /** the last byte; `facts` as counted so far (a message may end inside its header), `refused`: a limit broke */
  end(facts: HeaderFacts, refused: boolean): void;
  readonly outcome: Promise<AuthenticationOutcome>;
}

const DEFAULT_MAX_FROM = 16 * 1024;
const DEFAULT_MAX_HEADER_LINES = 2000;

export class SenderAuthenticator {
  constructor(private readonly opts: AuthenticatorOptions) {
    void loadMailauth().catch((err: unknown) => opts.log.error({ err }, 'cannot load mailauth; sender authentication will report temperror'));
  }

  /**
   * Header bytes are held until the header section is complete (bounded by the header limit), so the From
   * size is known before mailauth parses it; the body then streams through. Nothing is buffered whole.
   */
  start(facts: SessionFacts): AuthenticationRun {
    const maxFrom = this.opts.maxFromHeaderBytes ?? DEFAULT_MAX_FROM;
    const maxLines = this.opts.maxHeaderLines ?? DEFAULT_MAX_HEADER_LINES;
    let held: Buffer[] | null = [];
    let input: PassThrough | null = null;
    let skipped: string | null = null;
    let decided = false;
    let resolveOutcome!: (o: AuthenticationOutcome) => void;
    const outcome = new Promise<AuthenticationOutcome>((r) => (resolveOutcome = r));

    const begin = (header: HeaderFacts) => {
      if (decided) return;
      decided = true;
      if (header.fromHeaderBytes > maxFrom || header.headerLines > maxLines) {
        skipped = header.fromHeaderBytes > maxFrom ? `From header over ${maxFrom} bytes` : `header section over ${maxLines} lines`;
        held = null;
        return;
      }
      input = new PassThrough();
      void this.run(input, facts).then(resolveOutcome);
      for (const c of held ?? []) input.write(c);
      held = null;
    };

    return {
      headerEnd: (header) => begin(header),
      write: (chunk) => {
        if (held) held.push(chunk);
        else input?.write(chunk);
      },
      end: (header, refused) => {
        if (!decided && refused) {
          // The message is refused for its size or shape: nothing will read the outcome, so no work for it.
          decided = true;
          held = null;
          resolveOutcome(errorOutcome(this.opts.mta, 'permerror', 'message refused'));
          return;
        }
        if (!decided) begin(header); // a message that ends inside its header section
        if (input) input.end();
        else void this.spfOnly(facts, skipped ?? 'not authenticated').then(resolveOutcome);
      },
      outcome,
    };
  }

  private async run(input: PassThrough, facts: SessionFacts): Promise<AuthenticationOutcome> {
    try {
      if (facts.ip === null) return await this.runWithoutClient(input, facts);
      const { authenticate } = await loadMailauth();
      const r = await authenticate(input, {
        ip: facts.ip,
        helo: facts.helo ?? undefined,
        sender: facts.sender || undefined,
        mta: this.opts.mta,
        disableBimi: true,
        ...(this.opts.resolver ? { resolver: this.opts.resolver } : {}),
      });
      return summarize(r, this.opts.mta);
    } catch (err) {
      input.resume(); // whatever is left is not needed
      this.opts.log.warn({ err }, 'sender authentication failed; results are temperror');
      return errorOutcome(this.opts.mta, 'temperror', 'authentication error');
    }
  }

  /**
   * mailauth's authenticate() without its SPF step, for a client whose address is unknown: SPF is none (RFC 8601
   * §2.7.2 has no "not checked"; none passes nothing and fails nothing), DMARC is judged on DKIM alone (RFC 7489 §4.2:
   * either aligned pass will do). The same steps and order as authenticate() in mailauth 4.13, BIMI left out as there.
   */
  private async runWithoutClient(input: PassThrough, facts: SessionFacts): Promise<AuthenticationOutcome> {
    const { dkimVerify, arc, dmarc } = await loadMailauth();
    const resolver = this.opts.resolver ? { resolver: this.opts.resolver } : {};
    const dkim = await dkimVerify(input, { ...resolver, ...(facts.sender ? { sender: facts.sender } : {}) });
    const arcResult = dkim.arc ? await arc(dkim.arc as ARCData, resolver) : false;
    const dmarcResult = dkim.headerFrom
      ? await dmarc({
          headerFrom: dkim.headerFrom,
          spfDomains: [],
          dkimDomains: (dkim.results ?? [])
            .filter((r) => r.status.result === 'pass')
            // As authenticate() passes them (DMARC reads domain and underSized, a key size, not a flag).
            .map((r) => ({ id: r.id, domain: r.signingDomain, aligned: r.status.aligned, underSized: r.status.underSized })),
          ...(arcResult ? { arcResult } : {}),
          ...resolver,
        })
      : false;
    const parts = [...(dkim.results ?? []).map((r) => r.info), SPF_NONE, ...(arcResult && arcResult.info ? [arcResult.info] : []), ...(dmarcResult && dmarcResult.info ? [dmarcResult.info] : [])];
    // spf: false is summarized as { result: 'none', domain: null }.
    return summarize({ dkim, spf: false, dmarc: dmarcResult, arc: arcResult, bimi: false, headers: `Authentication-Results: ${this.opts.mta}; ${parts.map(unfold).join('; ')}\r\n` }, this.opts.mta);
  }

  private async spfOnly(facts: SessionFacts, reason: string): Promise<AuthenticationOutcome> {
    const base = { ...errorOutcome(this.opts.mta, 'permerror', reason), unevaluated: true };
    if (facts.ip === null) {
      base.authentication.spf = { result: 'none', domain: null };
      base.authenticationResults = `${this.opts.mta}; ${SPF_NONE}; dkim=permerror (${reason}); dmarc=permerror (${reason})`;
      return base;
    }
    try {
      const { spf: checkSpf } = await loadMailauth();
      const r = await checkSpf({ ip: facts.ip, helo: facts.helo ?? undefined, sender: facts.sender || undefined, mta: this.opts.mta, ...(this.opts.resolver ? { resolver: this.opts.resolver } : {}) });
      base.authentication.spf = { result: r.status.result, domain: r.domain ?? null };
      base.authenticationResults = `${this.opts.mta}; ${unfold(r.info)}; dkim=permerror (${reason}); dmarc=permerror (${reason})`;
    } catch (err) {
      this.opts.log.warn({ err }, 'SPF check failed');
    }
    return base;
  }
}

function errorOutcome(mta: string, result: string, reason: string): AuthenticationOutcome {
  return {
    authentication: {
      spf: { result: 'temperror', domain: null },
      dkim: { result, signatures: [] },
      dmarc: { result, domain: null, policy: null },
      arc: { result: 'none' },
    },
    authenticationResults: `${mta}; spf=temperror; dkim=${result} (${reason}); dmarc=${result} (${reason})`,
    dmarcRejectDomain: null,
    unevaluated: false,
  };
}

/** The Authentication-Results entry for SPF when the client's address is unknown: not checked for any domain. */
const SPF_NONE = 'spf=none (client address unknown: the relay did not give it)';

function unfold(s: string): string {
  return s.replace(/\r?\n[ \t]+/g, ' ').trim();
}

/** mailauth's result as the payload shows it. */
export function summarize(r: AuthenticateResult, mta: string): AuthenticationOutcome {
  const signatures = (r.dkim.results ?? [])
    .filter((s) => s.signingDomain)
    .map((s) => ({ result: s.status.result, domain: s.signingDomain, selector: s.selector ?? null, aligned: Boolean(s.status.aligned) }));
  const dkimResult = signatures.length === 0 ? 'none' : signatures.some((s) => s.result === 'pass') ? 'pass' : (signatures[0]?.result ?? 'none');
  const dmarc = r.dmarc
    ? { result: r.dmarc.status.result, domain: r.dmarc.domain ?? null, policy: r.dmarc.policy ?? null }
    : { result: 'none', domain: null, policy: null };
  const at = r.headers.indexOf('Authentication-Results: ');
  const ar = at === -1 ? `${mta}; none` : unfold(r.headers.slice(at + 'Authentication-Results: '.length));
  // RFC 7489 §6.6.4: p=reject applies to a failing message; pct < 100 samples, mailhook then only records it.
  const rejects = r.dmarc && r.dmarc.status.result === 'fail' && r.dmarc.policy === 'reject' && (r.dmarc.pct === undefined || r.dmarc.pct >= 100);
  return {
    authentication: {
      spf: r.spf ? { result: r.spf.status.result, domain: r.spf.domain ?? null } : { result: 'none', domain: null },
      dkim: { result: dkimResult, signatures },
      dmarc,
      arc: { result: r.arc ? r.arc.status.result : 'none' },
    },
    authenticationResults: ar,
    dmarcRejectDomain: rejects && r.dmarc ? r.dmarc.domain : null,
    unevaluated: false,
  };
}
