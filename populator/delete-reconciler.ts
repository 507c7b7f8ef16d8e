import type { TargetRing } from '../shared/chunk-message.js';
import type { Clock } from '../shared/clock.js';
import type { WriteCounters } from '../shared/counters.js';
import type { Connect } from '../shared/memcached/connect.js';
import type { WrittenItem } from '../shared/memcached/meta-add.js';
import { MetaExistsReplies, buildMetaExists } from '../shared/memcached/meta-reconcile.js';
import { type RateLimiter, TokenBucket } from '../shared/token-bucket.js';
import type { NodeWriter } from './node-writer.js';
import { type TargetNodeRing, ringOfTarget } from './write-to-ring.js';
import { DEFAULT_RETRY, type RetryPolicy } from './retry-policy.js';
import { type CheckConnection, TargetConnections, inBatches } from './target-connections.js';

export interface DeleteReconcilerOptions {
  readonly connect: Connect;
  readonly clock: Clock;
  /**
   * Keys looked up a second, per source node, by this process: the pass's cap on what it asks
   * of a source. @default 100_000 (a `mg <key> u` costs memcached a hash lookup and a
   * 4-byte reply, a small share of one worker thread at that rate)
   */
  readonly maxChecksPerSecond?: number;
  /** How a node is named in errors, e.g. its id `replica/address`. */
  readonly labelOf?: (address: string) => string;
  /** Checks every new source connection, e.g. that it reaches the process the job was planned with (PinnedProcesses). */
  readonly checkSource?: CheckConnection | undefined;
  readonly retry?: RetryPolicy;
  /**
   * Another full replica, asked in place of a source node that cannot be (it restarted, or
   * stays unreachable): each key is looked up at the node that holds it on that replica's
   * ring. The application deletes from every replica, so that replica lacking a key says
   * what the source would have; it is also the replica a restarted node's share is then
   * copied from. Absent: such items are counted unchecked.
   */
  readonly fallback?: TargetRing | undefined;
  /** Told when a batch could not be looked up at its source (nor at the fallback): counted as unchecked. */
  readonly onUnchecked?: ((source: string, items: number, error: Error) => void) | undefined;
}

const CHECK_BATCH = 1_000;

/**
 * Closes a warm's resurrection window (issue 14). While a replica is warmed the application
 * keeps deleting keys from source and target; a key dumped before its delete and written
 * after it would come back to life in the target. So right after a batch of adds is answered,
 * the keys it stored are looked up at the source node they were dumped from (`mg <key> u`:
 * no value, no LRU bump), and each one the source no longer holds is deleted from the target
 * with `md <key> C<cas>`: only if the target still holds exactly what the add stored. A value
 * the application wrote meanwhile has another CAS and stays.
 *
 * What remains: a delete the application makes to the source after the lookup is made to
 * the target too, after the add, and removes it there. Only an application that deletes from
 * the target first and from the source later, with the add and the lookup (milliseconds
 * apart) falling between its two deletes, can still see the key come back.
 *
 * A source that cannot be asked (unreachable through every retry, or another process since
 * the job was planned, whose emptiness says nothing of deletes) is stood in for by the
 * fallback replica when the job has one; otherwise, or when that fails too, its keys stay in
 * the target, counted as unchecked: the job reports them rather than guess.
 */
export class DeleteReconciler {
  private readonly sources: TargetConnections;
  private readonly limiters = new Map<string, RateLimiter>();
  private readonly clock: Clock;
  private readonly retry: RetryPolicy;
  private readonly maxChecksPerSecond: number;
  private readonly fallback: TargetNodeRing | undefined;

  constructor(private readonly options: DeleteReconcilerOptions) {
    const { fallback, labelOf = (address: string) => address } = options;
    this.fallback = fallback && ringOfTarget(fallback);
    const onFallback = new Set(fallback?.nodes.map((n) => n.address));
    const label = (address: string): string => (onFallback.has(address) ? `${fallback?.replica}/${address}` : labelOf(address));
    this.sources = new TargetConnections(options.connect, 1, label, options.checkSource, 'source');
    this.clock = options.clock;
    this.retry = options.retry ?? DEFAULT_RETRY;
    this.maxChecksPerSecond = options.maxChecksPerSecond ?? 100_000;
  }

  /**
   * Reconciles what one batch of adds stored in `target` from `source`'s dump; counts into
   * `counters` (the target node's). Rejects only when the target fails the deletes (or on
   * abort): the chunk is then handed back.
   */
  async reconcile(
    source: string,
    target: string,
    deleteUnchanged: NonNullable<NodeWriter['deleteUnchanged']>,
    written: readonly WrittenItem[],
    counters: WriteCounters,
    signal?: AbortSignal,
  ): Promise<void> {
    if (written.length === 0) return;
    let absent: readonly WrittenItem[];
    try {
      absent = await this.absentAt(source, written, signal);
    } catch (error) {
      if (signal?.aborted) throw error;
      try {
        if (!this.fallback) throw error;
        absent = await this.absentAtFallback(written, signal);
      } catch (fallbackError) {
        if (signal?.aborted) throw fallbackError;
        counters.reconcileUnchecked += written.length;
        this.options.onUnchecked?.(source, written.length, fallbackError as Error);
        return;
      }
    }
    counters.reconcileChecked += written.length;
    if (absent.length === 0) return;
    const outcome = await deleteUnchanged(target, absent, signal);
    counters.reconcileRemoved += outcome.removed;
    counters.reconcileKept += outcome.kept;
    counters.reconcileGone += outcome.alreadyGone;
  }

  /** The items whose keys the fallback replica's nodes do not hold, each asked at its own node. */
  private async absentAtFallback(written: readonly WrittenItem[], signal: AbortSignal | undefined): Promise<WrittenItem[]> {
    const ring = this.fallback as TargetNodeRing;
    const byNode = new Map<string, WrittenItem[]>();
    for (const item of written) {
      const address = (ring.nodes[ring.indexFor(item.key)] as TargetNodeRing['nodes'][number]).address;
      const items = byNode.get(address);
      if (items) items.push(item);
      else byNode.set(address, [item]);
    }
    const absent = await Promise.all([...byNode].map(([address, items]) => this.absentAt(address, items, signal)));
    return absent.flat();
  }

  /** The items whose keys the node at `address` does not hold, asked at the pass's rate. */
  private async absentAt(address: string, written: readonly WrittenItem[], signal: AbortSignal | undefined): Promise<WrittenItem[]> {
    await this.limiterFor(address).take(written.length, signal);
    const missing = await this.absentIndices(address, written, signal);
    return missing.map((i) => written[i] as WrittenItem);
  }

  /** The indices of the items whose keys `source` does not hold. */
  private async absentIndices(source: string, written: readonly WrittenItem[], signal: AbortSignal | undefined): Promise<number[]> {
    const keys = written.map((item) => item.key);
    const absent: number[] = [];
    await this.sources.eachWithRetries(source, inBatches(keys, CHECK_BATCH), this.retry, this.clock, signal, async (conn, { start, part }) => {
      const missing = await conn.send(buildMetaExists(part), new MetaExistsReplies(part.length, conn.label));
      absent.push(...missing.map((i) => start + i));
    });
    return absent;
  }

  private limiterFor(source: string): RateLimiter {
    let limiter = this.limiters.get(source);
    if (!limiter) {
      limiter = new TokenBucket({ ratePerSecond: this.maxChecksPerSecond, clock: this.clock });
      this.limiters.set(source, limiter);
    }
    return limiter;
  }

  /** Idempotent. */
  close(): Promise<void> {
    return this.sources.close();
  }
}
