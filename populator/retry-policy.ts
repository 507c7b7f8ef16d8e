import { CachewarmError } from '../shared/errors.js';

/** How a node writer retries a node whose connection fails: exponential backoff, capped. */
export interface RetryPolicy {
  readonly attempts: number;
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 6, baseDelayMs: 100, maxDelayMs: 3_000 };

/** The wait before attempt `attempt` (the first attempt, 1, does not wait). */
export function backoffMs(policy: RetryPolicy, attempt: number): number {
  return attempt <= 1 ? 0 : Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 2));
}

/** The error for a node that stayed unreachable through every attempt. */
export function stillFailing(address: string, policy: RetryPolicy, why: string, cause: Error | undefined): CachewarmError {
  return new CachewarmError(
    'NODE_UNREACHABLE',
    `target node ${address} still failing after ${policy.attempts} attempts: ${why}`,
    { node: address },
    { cause },
  );
}
