// Ordered shutdown: parts register a stop step as they start; stop runs them in reverse order once.
import type { Logger } from './logger.js';

type StopStep = { name: string; stop: () => Promise<void> | void };

export class Lifecycle {
  private readonly steps: StopStep[] = [];
  private stopping: Promise<void> | undefined;
  constructor(private readonly log: Logger) {}

  onStop(name: string, stop: StopStep['stop']): void {
    this.steps.push({ name, stop });
  }

  get isStopping(): boolean {
    return this.stopping !== undefined;
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      for (const step of [...this.steps].reverse()) {
        try {
          await step.stop();
          this.log.debug({ part: step.name }, 'stopped');
        } catch (err) {
          this.log.error({ err, part: step.name }, 'error while stopping');
        }
      }
    })();
    return this.stopping;
  }
}

/** Waits for `work` at most `graceMs`; says which came first. The timer never outlives the wait. */
export async function waitWithGrace(work: Promise<unknown>, graceMs: number): Promise<'done' | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  const grace = new Promise<'timeout'>((r) => {
    timer = setTimeout(() => r('timeout'), graceMs);
  });
  try {
    return await Promise.race([work.then(() => 'done' as const), grace]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * `work`'s result, or the signal's reason as soon as it aborts: for work that cannot be told to stop (a parse on a
 * worker thread), so that whoever waits for it is not held by it. Its later result or failure is dropped.
 */
export function untilAborted<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    work.catch(() => {});
    return Promise.reject(signal.reason as Error);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err as Error);
      },
    );
  });
}
