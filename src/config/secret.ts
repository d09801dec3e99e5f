// A secret value that never prints: logging or serialising it shows "[redacted]".
import { inspect } from 'node:util';

export class Secret {
  readonly #value: string;
  constructor(value: string) {
    this.#value = value;
  }
  reveal(): string {
    return this.#value;
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
