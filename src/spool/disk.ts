// Size and free space of the file system a spool folder is on, as an unprivileged process may use them.
import { statfsSync } from 'node:fs';

/** Bytes free in `dir`'s file system for a process without root's reserve (statfs bavail × bsize). Throws as statfs does. */
export function diskFree(dir: string): number {
  return diskSize(dir).free;
}

/** A file system's size and free space as an unprivileged process may use them (root's reserve left out). */
export interface DiskSize {
  usable: number;
  free: number;
}

/** `dir`'s file system: bytes it can hold and has free for a process without root's reserve. Throws as statfs does. */
export function diskSize(dir: string): DiskSize {
  const s = statfsSync(dir);
  const block = Number(s.bsize);
  return { usable: (Number(s.blocks) - Number(s.bfree) + Number(s.bavail)) * block, free: Number(s.bavail) * block };
}
