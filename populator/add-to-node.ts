import type { BufferPool } from '../shared/buffer-pool.js';
import type { Clock } from '../shared/clock.js';
import { CachewarmError, isCachewarmError } from '../shared/errors.js';
import { type AddOutcome, MetaAddReplies, type WritableItem, buildMetaAdds } from '../shared/memcached/meta-add.js';
import type { TargetConnections } from './target-connections.js';

export interface RetryPolicy {
  readonly attempts: number;
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 6, baseDelayMs: 100, maxDelayMs: 3_000 };

export interface AddToNodeOptions {
  readonly connections: TargetConnections;
  readonly clock: Clock;
  readonly batchBytes: number;
  readonly retry: RetryPolicy;
  /** Called as each batch is answered, for live progress. */
  readonly onOutcome: (outcome: AddOutcome, bytes: number) => void;
  readonly pool?: BufferPool | undefined;
  readonly signal?: AbortSignal | undefined;
}

function batchesOf(items: readonly WritableItem[], maxBytes: number): WritableItem[][] {
  const batches: WritableItem[][] = [];
  let batch: WritableItem[] = [];
  let bytes = 0;
  for (const item of items) {
    const size = item.key.length + item.value.length + 40;
    if (batch.length > 0 && bytes + size > maxBytes) {
      batches.push(batch);
      batch = [];
      bytes = 0;
    }
    batch.push(item);
    bytes += size;
  }
  if (batch.length > 0) batches.push(batch);
  return batches;
}

const valueBytes = (batch: readonly WritableItem[]): number => batch.reduce((sum, item) => sum + item.value.length, 0);

/**
 * Adds items to one target node, every batch pipelined on a shared connection. A batch
 * whose connection fails is sent again on a new one, with exponential backoff: `add` makes
 * that safe, since an item the failed attempt did store is simply found present. A node
 * that stays down fails with an error naming it.
 */
export async function addToNode(address: string, items: readonly WritableItem[], options: AddToNodeOptions): Promise<void> {
  const { connections, clock, batchBytes, retry, onOutcome, pool, signal } = options;
  let pending = batchesOf(items, batchBytes);
  let lastError: Error | undefined;
  for (let attempt = 1; attempt <= retry.attempts && pending.length > 0; attempt++) {
    if (attempt > 1) await clock.sleep(Math.min(retry.maxDelayMs, retry.baseDelayMs * 2 ** (attempt - 2)), signal);
    let conn;
    try {
      conn = await connections.get(address, signal);
    } catch (error) {
      lastError = error as Error;
      continue;
    }
    const sent = [];
    for (const batch of pending) {
      const reply = new MetaAddReplies(batch.length, conn.label);
      const request = buildMetaAdds(batch, pool);
      await conn.enqueue(request, reply);
      sent.push(
        reply.promise.then((outcome) => {
          // Answered, so the socket is done with the request. (After a failure it may not
          // be: that buffer is left to the garbage collector.)
          pool?.release(request);
          onOutcome(outcome, valueBytes(batch));
        }),
      );
    }
    const results = await Promise.allSettled(sent);
    const failed: WritableItem[][] = [];
    results.forEach((result, i) => {
      if (result.status === 'rejected') {
        failed.push(pending[i] as WritableItem[]);
        lastError = result.reason as Error;
      }
    });
    pending = failed;
    if (pending.length === 0) return;
    if (signal?.aborted) break;
    // Out of step with the server: another attempt would only repeat it.
    if (isCachewarmError(lastError, 'NODE_PROTOCOL')) throw lastError;
    await connections.discard(address, conn);
  }
  if (signal?.aborted) throw signal.reason;
  const why = lastError?.message ?? 'unknown error';
  throw new CachewarmError(
    'NODE_UNREACHABLE',
    `target node ${address} still failing after ${retry.attempts} attempts: ${why}`,
    { node: address },
    { cause: lastError },
  );
}
