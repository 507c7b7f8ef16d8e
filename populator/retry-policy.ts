import type { Backoff } from '../shared/backoff.js';
import { CachewarmError } from '../shared/errors.js';

/** How a node writer retries a node whose connection fails: this many attempts, with backoff between them. */
export interface RetryPolicy extends Backoff {
  readonly attempts: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 6, baseDelayMs: 100, maxDelayMs: 3_000 };

/** The error for a node that stayed unreachable through every attempt. */
export function stillFailing(address: string, policy: RetryPolicy, why: string, cause: Error | undefined, role: 'target' | 'source' = 'target'): CachewarmError {
  return new CachewarmError(
    'NODE_UNREACHABLE',
    `${role} node ${address} still failing after ${policy.attempts} attempts: ${why}`,
    { node: address },
    { cause },
  );
}
