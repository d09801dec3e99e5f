// A secret value that never prints: logging or serialising it shows "[redacted]".
import { readFileSync } from 'node:fs';
import { inspect } from 'node:util';

export class Secret {
  #value: string;
  readonly #file: string | undefined;
  /** `file`: the absolute path the value was read from (a *_file setting), which reread() reads again */
  constructor(value: string, file?: string) {
    this.#value = value;
    this.#file = file;
  }
  reveal(): string {
    return this.#value;
  }
  /** The file reread() reads (an IMAP/Graph secret's *_file), or undefined: such a value is followed at run time. */
  get file(): string | undefined {
    return this.#file;
  }
  /**
   * Reads the secret's file again, trimmed as at start-up (a secret given inline has none: unchanged). `changed`
   * says whether the value differs from the one read before; a file that cannot be read or is empty leaves the
   * value as it was, and `error` says why.
   */
  reread(): { changed: boolean; error?: string } {
    if (this.#file === undefined) return { changed: false };
    let text: string;
    try {
      text = readFileSync(this.#file, 'utf8').trim();
    } catch (err) {
      return { changed: false, error: `cannot read ${this.#file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); the value read before is used` };
    }
    if (!text) return { changed: false, error: `${this.#file} is empty; the value read before is used` };
    if (text === this.#value) return { changed: false };
    this.#value = text;
    return { changed: true };
  }
  toJSON(): string {
    return '[redacted]';
  }
  toString(): string {
    return '[redacted]';
  }
  [inspect.custom](): string {
    return 'Secret([redacted])';
  }
}

/**
 * Decodes a Standard Webhooks secret ("whsec_" + base64). Returns the key bytes or an explanation.
 * The spec asks for 24 to 64 random bytes.
 */
export function decodeWebhookSecret(secret: string): { ok: true; key: Buffer } | { ok: false; error: string } {
  const body = secret.startsWith('whsec_') ? secret.slice('whsec_'.length) : secret;
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(body) || body.length % 4 !== 0) {
    return { ok: false, error: 'is not a Standard Webhooks secret: write "whsec_" followed by base64, e.g. whsec_$(openssl rand -base64 32)' };
  }
  const key = Buffer.from(body, 'base64');
  if (key.length < 24 || key.length > 64) {
    return { ok: false, error: `decodes to ${key.length} bytes; use 24 to 64 random bytes, e.g. whsec_$(openssl rand -base64 32)` };
  }
  return { ok: true, key };
}
