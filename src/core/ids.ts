// Identifiers: time-ordered, URL-safe ids for messages and deliveries.
import { randomFillSync } from 'node:crypto';

const ALPHABET = '0123456789abcdefghijklmnopqrstuvwxyz';
const RANDOM_CHARS = 12;

/** Random bytes drawn 3 KB at a time (as crypto.randomUUID does): one call into the CSPRNG per 256 ids. */
const pool = Buffer.alloc(RANDOM_CHARS * 256);
let offset = pool.length;

/** 10 chars of base-36 milliseconds then 12 random chars: sorts by creation time, unguessable. */
export function newId(now: number = Date.now()): string {
  if (offset + RANDOM_CHARS > pool.length) {
    randomFillSync(pool);
    offset = 0;
  }
  let rand = '';
  for (let i = 0; i < RANDOM_CHARS; i++) rand += ALPHABET[(pool[offset + i] as number) % 36];
  offset += RANDOM_CHARS;
  return now.toString(36).padStart(10, '0') + rand;
}
