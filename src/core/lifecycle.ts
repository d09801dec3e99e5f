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
