import { abortReason } from './errors.js';

/**
 * Lets code wait until some state it reads changes: waiters re-check their condition after
 * every `notify`. Simple and hard to get wrong, which matters more here than waking only
 * the one waiter that could proceed.
 */
export class StateChange {
  private waiters: (() => void)[] = [];

  notify(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }

  async until(ready: () => boolean, signal?: AbortSignal): Promise<void> {
    while (!ready()) {
      if (signal?.aborted) throw abortReason(signal);
      await new Promise<void>((resolve, reject) => {
        const onAbort = (): void => {
          this.waiters = this.waiters.filter((w) => w !== wake);
          reject(abortReason(signal as AbortSignal));
        };
        const wake = (): void => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        };
        this.waiters.push(wake);
        signal?.addEventListener('abort', onAbort, { once: true });
      });
    }
  }
}
