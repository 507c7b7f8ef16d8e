import { abortReason } from '../../shared/errors.js';
import type { Clock } from '../../shared/clock.js';

interface Sleeper {
  readonly wakeAt: number;
  readonly resolve: () => void;
}

/**
 * A Clock whose time moves only when a test calls advance(), so rate-limiting tests assert
 * exact waits instead of racing real timers.
 */
export class FakeClock implements Clock {
  private current: number;
  private sleepers: Sleeper[] = [];

  constructor(start = 1_700_000_000_000) {
    this.current = start;
  }

  now(): number {
    return this.current;
  }

  /** How many sleeps are waiting for time to move. */
  get pendingSleeps(): number {
    return this.sleepers.length;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    return new Promise<void>((resolve, reject) => {
      const sleeper: Sleeper = {
        wakeAt: this.current + Math.max(0, ms),
        resolve: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
      };
      const onAbort = (): void => {
        this.sleepers = this.sleepers.filter((s) => s !== sleeper);
        reject(abortReason(signal!));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.sleepers.push(sleeper);
      if (sleeper.wakeAt <= this.current) this.wakeDue();
    });
  }

  /**
   * Moves time forward by `ms`, stopping at each sleeper's deadline so woken code sees the
   * time it asked for, and lets the promise chains it starts settle before returning.
   */
  async advance(ms: number): Promise<void> {
    const target = this.current + ms;
    await settle();
    for (;;) {
      const next = this.earliest();
      if (next === undefined || next > target) break;
      this.current = Math.max(this.current, next);
      this.wakeDue();
      await settle();
    }
    this.current = target;
    await settle();
  }

  /** Steps the clock without waking anyone, as a wall clock stepped by NTP would. */
  set(time: number): void {
    this.current = time;
  }

  private earliest(): number | undefined {
    let min: number | undefined;
    for (const s of this.sleepers) if (min === undefined || s.wakeAt < min) min = s.wakeAt;
    return min;
  }

  private wakeDue(): void {
    const due = this.sleepers.filter((s) => s.wakeAt <= this.current);
    this.sleepers = this.sleepers.filter((s) => s.wakeAt > this.current);
    for (const s of due.sort((a, b) => a.wakeAt - b.wakeAt)) s.resolve();
  }
}

/** Lets every pending promise continuation run. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 3; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}
