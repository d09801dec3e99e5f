// Time and randomness as injectable parameters, so schedules and leases are testable without sleeping.
export interface Clock {
  /** milliseconds since the Unix epoch */
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };

/** A source of uniform numbers in [0, 1); Math.random unless a test passes its own. */
export type Random = () => number;
