// Waiting in tests without racing the clock: wait for a condition (or a promise) with a
// deadline that FAILS the test, never count what happened in a time window.
import assert from 'node:assert/strict';
import { setTimeout as delay } from 'node:timers/promises';

export interface WaitOptions {
  /** How long before the test fails. Generous: a loaded 2-core machine is slow, not wrong. */
  readonly timeoutMs?: number;
  /** What is waited for, for the failure message ("no <what> within <timeoutMs> ms"). */
  readonly what: string;
  /** Pause between two looks at the condition. Default 20 ms. */
  readonly intervalMs?: number;
  /** Said in the failure message too: what was seen last (a status, a log tail...). */
  readonly detail?: () => unknown;
}

export const DEFAULT_WAIT_MS = 30_000;

/**
 * Resolves as soon as `condition` holds (it may be async; a value other than false/undefined/
 * null counts as holding, and is returned); fails the test with `what` if it does not within
 * the deadline. A condition that throws fails the test at once with that error.
 */
export async function waitFor<T>(condition: () => T | Promise<T>, options: WaitOptions): Promise<Exclude<T, false | undefined | null>> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_WAIT_MS;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await condition();
    if (value !== false && value !== undefined && value !== null) return value as Exclude<T, false | undefined | null>;
    if (Date.now() >= deadline) assert.fail(failure(options, timeoutMs));
    await delay(options.intervalMs ?? 20);
  }
}

/** `promise`'s outcome, unless it does not settle within the deadline: then the test fails. */
export async function within<T>(promise: Promise<T>, options: Omit<WaitOptions, 'intervalMs'>): Promise<T> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_WAIT_MS;
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new assert.AssertionError({ message: failure(options, timeoutMs) })), timeoutMs);
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}

function failure(options: Omit<WaitOptions, 'intervalMs'>, timeoutMs: number): string {
  let message = `no ${options.what} within ${timeoutMs} ms`;
  if (options.detail) {
    let seen: unknown;
    try {
      seen = options.detail();
    } catch (error) {
      seen = `(detail failed: ${String(error)})`;
    }
    message += `; last seen: ${typeof seen === 'string' ? seen : JSON.stringify(seen)}`;
  }
  return message;
}
