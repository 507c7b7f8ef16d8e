import type { Clock } from '../shared/clock.js';
import { CachewarmError } from '../shared/errors.js';
import type { Endpoint } from '../shared/memcached/connection.js';
import { type RateLimiter, TokenBucket, unlimited } from '../shared/token-bucket.js';
import { startWorkerLatencyProbe } from './latency-probe.js';
import { SourceGuard, type SourceGuardStatus } from './source-guard.js';

/**
 * `--protect-source`: the factor over its baseline a live client's p99 on the source node may
 * reach while it is dumped, or `off` for a source that serves no traffic.
 */
export type ProtectSource = number | 'off';

export const DEFAULT_PROTECT_SOURCE = 1.2;

/** How long the probe watches the node, before the dump touches it, for the baseline. */
export const BASELINE_MS = 1_000;

/** `--protect-source <factor|off>`: a factor from 1 (the p99 may not rise at all) to 100. */
export function parseProtectSource(text: string): ProtectSource {
  if (text === 'off') return 'off';
  const factor = Number(text);
  if (!/^\d+(\.\d+)?$/.test(text) || !(factor >= 1 && factor <= 100)) {
    throw new CachewarmError('INVALID_ARGUMENT', `expected a factor from 1 to 100 (e.g. 1.2) or off, got ${JSON.stringify(text)}`);
  }
  return factor;
}

export interface ReadPaceSettings {
  /** @default DEFAULT_PROTECT_SOURCE */
  readonly protectSource?: ProtectSource | undefined;
  /** Hard cap, items/s read from the node (`--max-ops`); none by default. */
  readonly maxItemsPerSecond?: number | undefined;
  readonly clock: Clock;
  readonly signal?: AbortSignal | undefined;
}

/** What paces one dump's reads of its node: `limiter` goes to dumpNode as its rateLimiter. */
export interface ReadPace {
  readonly limiter: RateLimiter;
  /** The source guard's state, for progress lines, statuses and metrics; undefined when protection is off. */
  status(): SourceGuardStatus | undefined;
  /** Stops the probe. Idempotent. */
  close(): Promise<void>;
}

/**
 * Starts pacing the reads of `node`. Protected (the default), a latency probe on a worker
 * thread of its own watches the node and a SourceGuard measures the baseline before this
 * resolves, so it holds no dump traffic; the guard then adjusts the pace every second,
 * under `maxItemsPerSecond`. Off, the reads go at `maxItemsPerSecond`, or unpaced.
 */
export async function startReadPace(node: Endpoint, settings: ReadPaceSettings): Promise<ReadPace> {
  const { protectSource = DEFAULT_PROTECT_SOURCE, maxItemsPerSecond, clock, signal } = settings;
  if (protectSource === 'off') {
    const limiter = maxItemsPerSecond ? new TokenBucket({ ratePerSecond: maxItemsPerSecond, clock }) : unlimited;
    return { limiter, status: () => undefined, close: async () => undefined };
  }
  const probe = await startWorkerLatencyProbe(node, { signal });
  const guard = new SourceGuard({ latency: probe, factor: protectSource, maxItemsPerSecond: maxItemsPerSecond ?? Infinity, baselineMs: BASELINE_MS, clock, signal });
  const close = async (): Promise<void> => {
    guard.close();
    await probe.close();
  };
  try {
    await guard.start();
  } catch (error) {
    await close();
    throw error;
  }
  return { limiter: guard, status: () => guard.status(), close };
}

/** The pace, listed in `paces` under `id` (for progress reports) until it is closed. */
export function listedUntilClosed(paces: Map<string, ReadPace>, id: string, pace: ReadPace): ReadPace {
  paces.set(id, pace);
  return {
    ...pace,
    close: async () => {
      paces.delete(id);
      await pace.close();
    },
  };
}
