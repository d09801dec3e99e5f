// Which recipient an IMAP/Graph message was for (pure): the first configured header whose address matches a route.
import type { RouteMatch } from '../routing/router.js';
import { addressesIn, fieldValues, receivedFor, type HeaderField } from './headers.js';

/** Header names a mailbox may read recipients from (GitLab's incoming_email names, lower-case). */
export const RECIPIENT_HEADERS = ['to', 'delivered-to', 'x-delivered-to', 'envelope-to', 'x-envelope-to', 'received', 'x-original-to', 'x-forwarded-to', 'cc'] as const;
export type RecipientHeader = (typeof RECIPIENT_HEADERS)[number];

/** GitLab's order: the visible To first, then what MTAs and forwarders record, Received "for", and Cc last. */
export const DEFAULT_RECIPIENTS_FROM: readonly RecipientHeader[] = RECIPIENT_HEADERS;

export interface Candidate {
  header: RecipientHeader;
  address: string;
}

/**
 * Every candidate recipient, in the configured header order; within one header name, fields in message
 * order (the topmost Received and Delivered-To first); within one field, addresses in order.
 */
export function candidateRecipients(fields: readonly HeaderField[], order: readonly RecipientHeader[]): Candidate[] {
  const out: Candidate[] = [];
  const seen = new Set<string>();
  for (const header of order) {
    for (const value of fieldValues(fields, header)) {
      const addresses = header === 'received' ? [receivedFor(value)].filter((a): a is string => a !== undefined) : addressesIn(value);
      for (const address of addresses) {
        const id = `${header}\0${address.toLowerCase()}`;
        if (seen.has(id)) continue;
        seen.add(id);
        out.push({ header, address });
      }
    }
  }
  return out;
}

export interface ChosenRecipient {
  header: RecipientHeader;
  address: string;
  route: string;
  key: string | null;
}

/** The first candidate whose address a route accepts, or undefined (the mailbox's unmatched policy applies). */
export function chooseRecipient(
  fields: readonly HeaderField[],
  order: readonly RecipientHeader[],
  match: (address: string) => RouteMatch,
): ChosenRecipient | undefined {
  for (const c of candidateRecipients(fields, order)) {
    const m = match(c.address);
    if (m.ok) return { header: c.header, address: m.address, route: m.route, key: m.key };
  }
  return undefined;
}
