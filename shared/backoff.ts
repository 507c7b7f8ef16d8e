/**
 * The one backoff every retry loop in cachewarm waits by: doubling from a base, capped, and
 * optionally jittered down by up to half (so that peers restarted together do not retry in
 * step).
 */
export interface Backoff {
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
  /** 0 ≤ random() < 1, for the jitter; without it the waits are exact. */
  readonly random?: (() => number) | undefined;
}

/** The wait before retry `retry` (1 for the first retry). */
export function backoffMs(backoff: Backoff, retry: number): number {
  const ceiling = Math.min(backoff.maxDelayMs, backoff.baseDelayMs * 2 ** Math.min(Math.max(retry, 1) - 1, 30));
  return backoff.random ? Math.round(ceiling * (0.5 + 0.5 * backoff.random())) : ceiling;
}
