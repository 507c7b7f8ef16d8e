import { systemClock, type Clock } from './clock.js';
import { abortReason, CachewarmError } from './errors.js';

export interface RateLimiter {
  /** Resolves once `amount` units may be spent; rejects with the signal's reason, taking nothing, if aborted first. */
  take(amount: number, signal?: AbortSignal): Promise<void>;
  /**
   * The most units worth asking for at once at the current pace, for a limiter that has a view
   * (a source guard keeps pipelined batches short while it holds a dump back).
   */
  readonly batchKeys?: number;
}

export const unlimited: RateLimiter = {
  take(amount: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    const invalid = checkAmount(amount);
    return invalid ? Promise.reject(invalid) : Promise.resolve();
  },
};

export interface TokenBucketOptions {
  ratePerSecond: number;
  /** How many units may be spent at once after idling. Default: ratePerSecond / 10, at least 1. */
  burst?: number;
  clock?: Clock;
}

interface Waiter {
  readonly amount: number;
  readonly grant: () => void;
  readonly fail: (error: unknown) => void;
}

// Refill arithmetic is floating point; without slack a waiter woken exactly on time can
// find itself a rounding error short and sleep another millisecond.
const EPSILON = 1e-9;

/**
 * A token bucket that serves waiters strictly in arrival order, so a large request cannot be
 * starved by a stream of small ones.
 *
 * A request larger than the burst could never fit in the bucket, so it is taken as debt: its
 * caller waits until the bucket would have refilled past zero after paying for it, which is
 * (amount - tokens) / rate, and the bucket is left empty. While such a request is at the head
 * of the queue the bucket is allowed to fill up to its size; that is the same arithmetic as
 * charging the debt up front, but an abort then only has to drop the excess to return the
 * bucket to where it would have been without the request.
 */
export class TokenBucket implements RateLimiter {
  readonly ratePerSecond: number;
  readonly burst: number;
  private readonly clock: Clock;
  private tokens: number;
  private lastRefill: number;
  private readonly queue: Waiter[] = [];
  private pumping = false;
  private wake: AbortController | undefined;

  constructor(opts: TokenBucketOptions) {
    const { ratePerSecond, clock = systemClock } = opts;
    if (!Number.isFinite(ratePerSecond) || ratePerSecond <= 0) {
      throw new CachewarmError(
        'INVALID_ARGUMENT',
        `rate limit must be a positive number per second, got ${ratePerSecond}`,
        { ratePerSecond },
      );
    }
    const burst = opts.burst ?? Math.max(1, ratePerSecond / 10);
    if (!Number.isFinite(burst) || burst <= 0) {
      throw new CachewarmError('INVALID_ARGUMENT', `rate limit burst must be a positive number, got ${burst}`, {
        burst,
      });
    }
    this.ratePerSecond = ratePerSecond;
    this.burst = burst;
    this.clock = clock;
    this.tokens = burst;
    this.lastRefill = clock.now();
  }

  take(amount: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    const invalid = checkAmount(amount);
    if (invalid) return Promise.reject(invalid);

    if (this.queue.length === 0) {
      this.refill();
      if (this.tokens + EPSILON >= amount) {
        this.tokens -= amount;
        return Promise.resolve();
      }
    }

    return new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        const index = this.queue.indexOf(waiter);
        if (index === -1) return;
        if (index === 0) {
          // Credit the time spent at the head under its (possibly raised) cap before dropping it.
          this.refill();
        }
        this.queue.splice(index, 1);
        this.tokens = Math.min(this.tokens, this.burst);
        if (index === 0) this.wake?.abort();
        reject(abortReason(signal!));
      };
      const waiter: Waiter = {
        amount,
        grant: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
        fail: (error: unknown) => {
          signal?.removeEventListener('abort', onAbort);
          reject(error);
        },
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.queue.push(waiter);
      if (!this.pumping) void this.pump();
    });
  }

  private capacity(): number {
    const head = this.queue[0];
    return head ? Math.max(this.burst, head.amount) : this.burst;
  }

  private refill(): void {
    const now = this.clock.now();
    // A wall clock stepping backwards must not drain the bucket.
    const elapsed = Math.max(0, now - this.lastRefill);
    this.lastRefill = now;
    this.tokens = Math.min(this.capacity(), this.tokens + (elapsed * this.ratePerSecond) / 1000);
  }

  private async pump(): Promise<void> {
    this.pumping = true;
    try {
      for (let head = this.queue[0]; head; head = this.queue[0]) {
        this.refill();
        if (this.tokens + EPSILON >= head.amount) {
          this.queue.shift();
          this.tokens -= head.amount;
          head.grant();
          continue;
        }
        const waitMs = Math.max(1, Math.ceil(((head.amount - this.tokens) / this.ratePerSecond) * 1000));
        const wake = new AbortController();
        this.wake = wake;
        try {
          await this.clock.sleep(waitMs, wake.signal);
        } catch (error) {
          // Being woken because the head gave up is expected; anything else is the clock failing.
          if (!wake.signal.aborted) throw error;
        } finally {
          this.wake = undefined;
        }
      }
    } catch (error) {
      // Without a working clock nobody queued would ever be woken; fail them rather than hang.
      for (const waiter of this.queue.splice(0)) waiter.fail(error);
    } finally {
      this.pumping = false;
    }
  }
}

/** The error for an amount no limiter can take (negative, NaN, infinite), else undefined. */
export function checkAmount(amount: number): CachewarmError | undefined {
  if (Number.isFinite(amount) && amount >= 0) return undefined;
  return new CachewarmError('INVALID_ARGUMENT', `rate limiter amount must be a non-negative number, got ${amount}`, {
    amount,
  });
}
