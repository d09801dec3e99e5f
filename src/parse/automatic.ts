// Is a message automatic (auto-reply, bulk, bounce, report)? Pure: reads only the header section and the envelope sender.
import type { StoredMessage } from '../spool/types.js';

export interface HeaderField {
  /** lower-cased field name */
  name: string;
  /** unfolded value, still encoded as on the wire */
  value: string;
}

export interface AutomaticVerdict {
  automatic: boolean;
  /** why, e.g. ["auto-submitted: auto-replied", "null sender"]; empty when not automatic */
  reasons: string[];
}

/** The header section is what matters; a message whose headers run past this is read no further. */
const MAX_HEADER_BYTES = 256 * 1024;

/** The header section of a message: everything before the first empty line (CRLF or bare LF), as latin1 text. */
export function headerSection(raw: Buffer): string {
  const limit = Math.min(raw.length, MAX_HEADER_BYTES);
  for (let i = 0; i < limit; i++) {
    if (raw[i] !== 0x0a) continue;
    // "\n\n" or "\n\r\n" ends the section (RFC 5322 §2.1: an empty line separates header and body).
    if (raw[i + 1] === 0x0a) return raw.toString('latin1', 0, i + 1);
    if (raw[i + 1] === 0x0d && raw[i + 2] === 0x0a) return raw.toString('latin1', 0, i + 1);
  }
  return raw.toString('latin1', 0, limit);
}

/** Header fields in order, unfolded (RFC 5322 §2.2.3). Lines that are not fields are skipped. */
export function parseHeaderFields(section: string): HeaderField[] {
  const out: HeaderField[] = [];
  const lines = section.split(/\r?\n/);
  let current: { name: string; value: string } | undefined;
  for (const line of lines) {
    if ((line.startsWith(' ') || line.startsWith('\t')) && current) {
      current.value += ' ' + line.trim();
      continue;
    }
    if (current) out.push({ name: current.name, value: current.value.trim() });
    current = undefined;
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const name = line.slice(0, colon).trim().toLowerCase();
    if (!/^[\x21-\x39\x3b-\x7e]+$/.test(name)) continue;
    current = { name, value: line.slice(colon + 1) };
  }
  if (current) out.push({ name: current.name, value: current.value.trim() });
  return out;
}

/** The first token of a structured value, lower-cased: "Auto-Replied (vacation); x=y" → "auto-replied". */
function firstToken(value: string): string {
  return value
    .replace(/\([^)]*\)/g, ' ')
    .split(';')[0]!
    .trim()
    .toLowerCase();
}

/**
 * Decides whether a message was sent by a machine rather than a person, so consumers can ignore it
 * and never answer it (RFC 3834 §2: do not respond to automatic messages).
 * `mailFrom` is the envelope sender when known ('' is the null sender), or null when the source has no envelope.
 */
export function detectAutomatic(input: { mailFrom: string | null; headers: readonly HeaderField[] }): AutomaticVerdict {
  const reasons: string[] = [];
  // RFC 5321 §4.5.5: the null reverse-path is used by bounces and other notifications.
  if (input.mailFrom === '') reasons.push('null sender');
  for (const h of input.headers) {
    switch (h.name) {
      case 'auto-submitted': {
        // RFC 3834 §5: any value other than "no" marks the message automatic.
        const v = firstToken(h.value);
        if (v && v !== 'no') reasons.push(`auto-submitted: ${v}`);
        break;
      }
      case 'x-autoreply': {
        const v = firstToken(h.value);
        if (v && v !== 'no' && v !== 'false' && v !== '0') reasons.push('x-autoreply');
        break;
      }
      case 'precedence': {
        const v = firstToken(h.value);
        if (v === 'bulk' || v === 'junk' || v === 'list') reasons.push(`precedence: ${v}`);
        break;
      }
      case 'return-path':
        if (input.mailFrom !== '' && /^<\s*>$/.test(h.value.replace(/\([^)]*\)/g, '').trim())) reasons.push('null sender');
        break;
      case 'content-type': {
        // RFC 6522: multipart/report carries machine-generated reports (DSN, MDN, feedback reports).
        if (firstToken(h.value) === 'multipart/report') {
          const type = /report-type\s*=\s*"?([A-Za-z0-9._-]+)"?/i.exec(h.value)?.[1]?.toLowerCase();
          reasons.push(`report: ${type ?? 'unknown'}`);
        }
        break;
      }
    }
  }
  const unique = [...new Set(reasons)];
  return { automatic: unique.length > 0, reasons: unique };
}

/** The verdict for a stored message: its header section, and the envelope sender where the source had an SMTP envelope. */
export function automaticOf(message: Pick<StoredMessage, 'source' | 'envelope'>, raw: Buffer): AutomaticVerdict {
  const mailFrom = message.source === 'smtp' ? message.envelope.mailFrom : null;
  return detectAutomatic({ mailFrom, headers: parseHeaderFields(headerSection(raw)) });
}
