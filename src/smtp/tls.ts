// TLS key and certificate: load and check them, and reload them (SIGHUP or a file change) without dropping connections.
import { readFileSync, statSync, unwatchFile, watch, watchFile, type FSWatcher, type Stats } from 'node:fs';
import { basename, dirname } from 'node:path';
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { createSecureContext } from 'node:tls';
import { MailhookError, isErrnoException } from '../core/errors.js';
import type { Logger } from '../core/logger.js';

export interface TlsFiles {
  keyFile: string;
  certFile: string;
}

export interface TlsMaterial {
  key: Buffer;
  cert: Buffer;
}

/** Reads the PEM key and certificate chain and checks they belong together; errors name the config key. */
export function loadTlsMaterial(files: TlsFiles): TlsMaterial {
  const read = (file: string, key: string): Buffer => {
    try {
      return readFileSync(file);
    } catch (err) {
      const why = isErrnoException(err) ? err.code : String(err);
      throw new MailhookError('CONFIG_INVALID', `cannot read ${file} (${why}); check smtp.tls.${key}`, { cause: err, userFault: true });
    }
  };
  const material = { key: read(files.keyFile, 'key_file'), cert: read(files.certFile, 'cert_file') };
  const problem = tlsIdentityProblem(material);
  if (problem) throw new MailhookError('CONFIG_INVALID', `smtp.tls.${problem.key}: ${problem.message}`, { cause: problem.cause, userFault: true });
  return material;
}

type IdentityProblem = { key: 'key_file' | 'cert_file'; message: string; cause: unknown };

const NOT_THE_KEY = (why: string) => `does not belong to the certificate in smtp.tls.cert_file (${why}); give the key the certificate was issued for`;

/**
 * Which of the two files keeps them from making a usable TLS identity, and how (the certificate alone, the key
 * alone, then the pair); undefined when they do. The message gives OpenSSL's reason, never the key material.
 * The pair is matched by the key's public part too: OpenSSL keeps an RSA and an ECDSA key in separate slots, so a
 * key of another type than the certificate's loads without complaint and then every handshake fails.
 */
export function tlsIdentityProblem(material: TlsMaterial): IdentityProblem | undefined {
  const attempts = [
    { options: { cert: material.cert }, key: 'cert_file', fix: (why: string) => `is not a usable PEM certificate chain (${why}); give the certificate file (leaf first), e.g. fullchain.pem` },
    { options: { key: material.key }, key: 'key_file', fix: (why: string) => `is not a usable PEM private key (${why}); give the unencrypted private key file, e.g. privkey.pem` },
  ] as const;
  for (const a of attempts) {
    try {
      createSecureContext(a.options);
    } catch (err) {
      return { key: a.key, message: a.fix(opensslReason(err)), cause: err };
    }
  }
  const pair = keyPairProblem(material);
  if (pair) return pair;
  try {
    createSecureContext(material);
  } catch (err) {
    return { key: 'key_file', message: NOT_THE_KEY(opensslReason(err)), cause: err };
  }
  return undefined;
}

/** The first certificate of cert_file must be the key's: another type, another key, or the key's further down. */
function keyPairProblem(material: TlsMaterial): IdentityProblem | undefined {
  let key: KeyObject;
  let certs: X509Certificate[];
  try {
    key = createPrivateKey(material.key);
    certs = pemCertificates(material.cert);
  } catch {
    return undefined; // what OpenSSL loads and Node's parser does not: left to the secure context's own check
  }
  const leaf = certs[0];
  if (!leaf || leaf.checkPrivateKey(key)) return undefined;
  const at = certs.findIndex((c) => c.checkPrivateKey(key));
  if (at > 0) {
    return { key: 'cert_file', message: `has the certificate of smtp.tls.key_file's key in place ${at + 1}, not first: put the server's own certificate (the leaf) first, then its intermediates, as fullchain.pem has them`, cause: undefined };
  }
  const certType = leaf.publicKey.asymmetricKeyType;
  const why = key.asymmetricKeyType === certType ? 'the key is not the one in the certificate' : `the key is ${key.asymmetricKeyType?.toUpperCase()}, the certificate's ${certType?.toUpperCase()}`;
  return { key: 'key_file', message: NOT_THE_KEY(why), cause: undefined };
}

/** The served certificate (cert_file's first), as logs and the expiry metric tell it; undefined if Node cannot read it. */
export interface CertificateFacts {
  subject: string;
  notBefore: Date;
  notAfter: Date;
  fingerprint256: string;
}

export function certificateFacts(material: TlsMaterial): CertificateFacts | undefined {
  const leaf = leafOf(material);
  if (!leaf) return undefined;
  return { subject: leaf.subject.replace(/\n/g, ', '), notBefore: new Date(leaf.validFrom), notAfter: new Date(leaf.validTo), fingerprint256: leaf.fingerprint256 };
}

/** Days before its end a certificate is warned of at start-up, on reload and by check-config (the alert's too). */
export const EXPIRY_WARNING_DAYS = 14;

/** Whole days left, or on the last day whole hours ("in 0 days" said nothing of how soon). */
function timeLeft(ms: number): string {
  const days = Math.floor(ms / 86_400_000);
  if (days >= 1) return `${days} day${days === 1 ? '' : 's'}`;
  const hours = Math.floor(ms / 3_600_000);
  return hours >= 1 ? `${hours} hour${hours === 1 ? '' : 's'}` : 'less than an hour';
}

/**
 * What makes senders that check certificates (MTA-STS, DANE, many large providers) refuse or fall back, each
 * with its fix: out of date or close to it, not for smtp.hostname, or the server's certificate without the
 * intermediate that issued it. STARTTLS still works for senders that do not check. Empty when nothing is wrong.
 */
export function certificateWarnings(material: TlsMaterial, hostname: string, nowMs: number): string[] {
  let certs: X509Certificate[];
  try {
    certs = pemCertificates(material.cert);
  } catch {
    return [];
  }
  const leaf = certs[0];
  if (!leaf) return [];
  const warnings: string[] = [];
  const notBefore = new Date(leaf.validFrom).getTime();
  const notAfter = new Date(leaf.validTo).getTime();
  const day = 86_400_000;
  const checking = 'senders that check certificates (MTA-STS, DANE) will not deliver';
  if (nowMs >= notAfter) warnings.push(`the certificate expired on ${iso(notAfter)}: ${checking}; renew it`);
  else if (nowMs < notBefore) warnings.push(`the certificate is not valid before ${iso(notBefore)}: ${checking} until then; check the machine's clock or the certificate`);
  else if (notAfter - nowMs < EXPIRY_WARNING_DAYS * day) {
    warnings.push(`the certificate expires on ${iso(notAfter)}, in ${timeLeft(notAfter - nowMs)}; renew it`);
  }
  if (leaf.checkHost(hostname) === undefined) {
    const names = leaf.subjectAltName ?? leaf.subject.replace(/\n/g, ', ');
    warnings.push(`the certificate is for ${names}, not for smtp.hostname ${hostname}: ${checking}; use a certificate for ${hostname} or set smtp.hostname to the MX name it is for`);
  }
  if (certs.length === 1 && leaf.issuer !== leaf.subject) {
    warnings.push(`the file holds the server's certificate only, without the intermediate that issued it (${leaf.issuer.replace(/\n/g, ', ')}): senders cannot build the chain; give the full chain, e.g. fullchain.pem`);
  }
  return warnings;
}

function leafOf(material: TlsMaterial): X509Certificate | undefined {
  try {
    return pemCertificates(material.cert)[0];
  } catch {
    return undefined;
  }
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

/** The certificates of a PEM file, in their order. */
export function pemCertificates(pem: Buffer): X509Certificate[] {
  return (pem.toString('latin1').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []).map((block) => new X509Certificate(block));
}

/** OpenSSL's reason (e.g. "key values mismatch"), without its error-code prefix. */
function opensslReason(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return (text.split('\n')[0] ?? '').replace(/^error:[0-9A-F]+:/, '').slice(0, 200);
}

/** How often the TLS files are looked at through their links (see TlsReloader.watch). */
export const TLS_POLL_MS = 5000;

/**
 * Keeps the servers' TLS identity current. A reload builds a new secure context for new handshakes only:
 * established sessions keep theirs, so nothing is dropped. A key and certificate that fail to load are logged
 * and the previous identity stays in use (a half-written renewal must not take TLS down).
 */
export class TlsReloader {
  private watchers: FSWatcher[] = [];
  private polled: Array<[string, (now: Stats, before: Stats) => void]> = [];
  private timer: NodeJS.Timeout | undefined;
  /** each file as it was at the last load (see statKey): the polling reloads only for another one */
  private loaded = new Map<string, string>();
  /** how many reloads took effect, for tests and logs */
  generation = 0;

  constructor(
    private readonly files: TlsFiles,
    private readonly apply: (material: TlsMaterial) => void,
    private readonly log: Logger,
    private readonly debounceMs = 200,
    private readonly pollMs = TLS_POLL_MS,
  ) {}

  /** Loads the files now; true when the new identity is in use. */
  reload(reason: string): boolean {
    this.noteLoaded();
    let material: TlsMaterial;
    try {
      material = loadTlsMaterial(this.files);
    } catch (err) {
      // A file's problem is its message (which names the key and the fix); a stack only for anything else.
      if (err instanceof MailhookError && err.userFault) this.log.error({ reason, problem: err.message }, 'TLS key or certificate not reloaded; the previous ones stay in use');
      else this.log.error({ err, reason }, 'TLS key or certificate not reloaded; the previous ones stay in use');
      return false;
    }
    this.apply(material);
    this.generation++;
    const facts = certificateFacts(material);
    this.log.info({ reason, generation: this.generation, ...(facts ? { certificate: { subject: facts.subject, not_after: facts.notAfter.toISOString(), fingerprint256: facts.fingerprint256 } } : {}) }, 'TLS key and certificate reloaded');
    return true;
  }

  /**
   * Watches the files' folders (renewal tools replace files by rename: seen at once) and looks at the files
   * themselves every pollMs through their symbolic links: a Kubernetes Secret volume or a swapped folder link
   * changes what a path leads to without an event in its folder. Reloads after changes settle.
   */
  watch(): void {
    this.noteLoaded();
    const changed = () => {
      if (this.timer) clearTimeout(this.timer);
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.reload('file change');
      }, this.debounceMs);
      this.timer.unref();
    };
    const names = new Map<string, Set<string>>();
    for (const f of [this.files.keyFile, this.files.certFile]) {
      const set = names.get(dirname(f)) ?? new Set<string>();
      set.add(basename(f));
      names.set(dirname(f), set);
    }
    for (const [dir, files] of names) {
      try {
        const w = watch(dir, { persistent: false }, (_event, filename) => {
          if (filename && !files.has(filename.toString())) return;
          changed();
        });
        w.on('error', (err) => this.log.warn({ err, dir }, 'cannot watch the TLS files\' folder; their changes are seen by looking at them every few seconds, or at SIGHUP'));
        this.watchers.push(w);
      } catch (err) {
        this.log.warn({ err, dir }, 'cannot watch the TLS files\' folder; their changes are seen by looking at them every few seconds, or at SIGHUP');
      }
    }
    for (const f of new Set([this.files.keyFile, this.files.certFile])) {
      // stat follows links: another file behind the path has another inode, a rewritten one another mtime or size.
      // Against the file as last loaded, not the last poll: a rename the folder watch already reloaded for is no
      // second reload (nor is a broken file retried every poll until it changes again).
      const listener = (now: Stats) => {
        if (statKey(now) !== this.loaded.get(f)) changed();
      };
      watchFile(f, { persistent: false, interval: this.pollMs }, listener);
      this.polled.push([f, listener]);
    }
  }

  /** What the files are now, as the loads about to happen (or just made) read them. */
  private noteLoaded(): void {
    for (const f of [this.files.keyFile, this.files.certFile]) {
      let key = '';
      try {
        key = statKey(statSync(f));
      } catch {
        // absent: the load reports it
      }
      this.loaded.set(f, key);
    }
  }

  close(): void {
    if (this.timer) clearTimeout(this.timer);
    for (const w of this.watchers) w.close();
    this.watchers = [];
    for (const [f, listener] of this.polled) unwatchFile(f, listener);
    this.polled = [];
  }
}

/** A file's identity and version as stat (through links) sees it: another file behind the path, or rewritten. */
function statKey(s: Stats): string {
  // watchFile reports an absent file with zeros, which statSync of an absent file (key '') must equal.
  return s.ino === 0 && s.mtimeMs === 0 ? '' : `${s.dev}:${s.ino}:${s.mtimeMs}:${s.size}`;
}
