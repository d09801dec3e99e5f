// Identifiers: time-ordered, URL-safe ids for messages and deliveries.
import { randomBytes } from 'node:crypto';

const ALPHABET = '0123456789abcdefghijklmnopqrstuvwxyz';

/** 10 chars of base-36 milliseconds then 12 random chars: sorts by creation time, unguessable. */
export function newId(now: number = Date.now()): string {
  const time = now.toString(36).padStart(10, '0');
  const bytes = randomBytes(12);
  let rand = '';
  for (const b of bytes) rand += ALPHABET[b % 36];
  return time + rand;
}
