// Free space of the file system a spool folder is on, as an unprivileged process may use it.
import { statfsSync } from 'node:fs';

/** Bytes free in `dir`'s file system for a process without root's reserve (statfs bavail × bsize). Throws as statfs does. */
export function diskFree(dir: string): number {
  const s = statfsSync(dir);
  return Number(s.bavail) * Number(s.bsize);
}
