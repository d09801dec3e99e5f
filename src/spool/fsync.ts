// Coalesced fsync: callers that arrive while one sync is in flight share the next one (group commit for files).

/**
 * `sync()` resolves once a sync that *started after the call* has finished, so everything the caller wrote
 * before calling is on disk. While one sync runs, every new caller waits for the single next one: N concurrent
 * callers cost at most two syncs, and the event loop never blocks (the sync itself runs on libuv's threadpool).
 */
export class CoalescedSync {
  private running = false;
  private waiters: Array<{ resolve: () => void; reject: (err: unknown) => void }> = [];
  /** syncs started so far (tests read it to check that callers share) */
  count = 0;

  constructor(private readonly doSync: () => Promise<void>) {}

  sync(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      if (!this.running) this.start();
    });
  }

  private start(): void {
    const batch = this.waiters;
    this.waiters = [];
    this.running = true;
    this.count++;
    let p: Promise<void>;
    try {
      p = this.doSync();
    } catch (err) {
      p = Promise.reject(err);
    }
    p.then(
      () => {
        for (const w of batch) w.resolve();
      },
      (err: unknown) => {
        for (const w of batch) w.reject(err);
      },
    ).finally(() => {
      this.running = false;
      if (this.waiters.length > 0) this.start();
    });
  }
}
