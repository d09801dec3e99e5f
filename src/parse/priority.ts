// A parse thread's CPU priority: lowered below the event loop's, so with every core busy SMTP intake runs first and delivery takes the rest.
import { readlinkSync } from 'node:fs';
import { getPriority, setPriority } from 'node:os';

/**
 * Nice steps a parse thread runs below the process (Linux; capped at 19). A 1 MB message costs ~25 ms of parsing
 * (mailparser, JSON) against ~10 ms to accept it; during a burst the parse thread would otherwise take a core's
 * worth of CPU from the SMTP sessions, whose replies then wait (bench, 1 MB x 20 sessions). Idle cores are still
 * the parse thread's: the priority only decides who runs first when there are none.
 */
export const PARSE_THREAD_NICE_STEPS = 10;

/** The calling thread's kernel id: /proc/thread-self links to <pid>/task/<tid> on Linux; undefined elsewhere. */
export function currentThreadId(): number | undefined {
  try {
    const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
    return Number.isInteger(tid) && tid > 0 ? tid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Lowers the calling thread's priority by `steps` nice values (the thread alone: Linux's setpriority takes a thread
 * id). Lowering needs no privilege. Returns the thread's nice value after, or undefined where it cannot be done
 * (not Linux, or refused): the thread then runs at the process's priority, as before.
 */
export function lowerThreadPriority(steps: number): number | undefined {
  const tid = currentThreadId();
  if (tid === undefined) return undefined;
  try {
    const nice = Math.min(19, getPriority(tid) + steps);
    setPriority(tid, nice);
    return getPriority(tid);
  } catch {
    return undefined;
  }
}
