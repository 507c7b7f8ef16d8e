import type { BufferPool } from '../shared/buffer-pool.js';
import type { Clock } from '../shared/clock.js';
import { isRetryable } from '../shared/errors.js';
import type { MemcachedConnection } from '../shared/memcached/connection.js';
import { stats } from '../shared/memcached/commands.js';
import { type AddOutcome, MetaAddReplies, type WritableItem, buildMetaAdds } from '../shared/memcached/meta-add.js';
import type { Connect } from '../shared/memcached/connect.js';
import type { NodeWriter } from './node-writer.js';
import { backoffMs } from '../shared/backoff.js';
import { DEFAULT_RETRY, type RetryPolicy, stillFailing } from './retry-policy.js';
import { type CheckConnection, TargetConnections } from './target-connections.js';

export interface MetaNodeWriterOptions {
  readonly connect: Connect;
  readonly clock: Clock;
  /** Connections per target node, shared by every chunk being written. */
  readonly connectionsPerNode?: number;
  /** How a node is named in errors, e.g. its id `replica/address`. */
  readonly labelOf?: (address: string) => string;
  readonly batchBytes?: number;
  readonly retry?: RetryPolicy;
  readonly pool?: BufferPool | undefined;
  /**
   * Checks every new connection before it is written on, e.g. that it reaches the process
   * the job was planned for (PinnedTargets). A permanent error from it fails the write at once.
   */
  readonly checkConnection?: CheckConnection | undefined;
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

/** Write batches unanswered at once on one connection. */
const WINDOW = 4;

const valueBytes = (batch: readonly WritableItem[]): number => batch.reduce((sum, item) => sum + item.value.length, 0);

/**
 * Adds items to one target node, every batch pipelined on a shared connection. A batch
 * whose connection fails is sent again on a new one, with exponential backoff: `add` makes
 * that safe, since an item the failed attempt did store is simply found present. A node
 * that stays down fails with an error naming it.
 */
export class MetaNodeWriter implements NodeWriter {
  private readonly connections: TargetConnections;
  private readonly clock: Clock;
  private readonly batchBytes: number;
  private readonly retry: RetryPolicy;
  private readonly pool: BufferPool | undefined;

  constructor(options: MetaNodeWriterOptions) {
    this.connections = new TargetConnections(options.connect, options.connectionsPerNode ?? 4, options.labelOf, options.checkConnection);
    this.clock = options.clock;
    this.batchBytes = options.batchBytes ?? 1 << 20;
    this.retry = options.retry ?? DEFAULT_RETRY;
    this.pool = options.pool;
  }

  close(): Promise<void> {
    return this.connections.close();
  }

  async probe(address: string, signal?: AbortSignal): Promise<number> {
    return Number((await stats(await this.connections.get(address, signal))).get('curr_items') ?? 0);
  }

  async addItems(
    address: string,
    items: readonly WritableItem[],
    onOutcome: (outcome: AddOutcome, valueBytes: number) => void,
    signal?: AbortSignal,
  ): Promise<void> {
    let pending = batchesOf(items, this.batchBytes);
    let lastError: Error | undefined;
    for (let attempt = 1; attempt <= this.retry.attempts && pending.length > 0; attempt++) {
      if (attempt > 1) await this.clock.sleep(backoffMs(this.retry, attempt - 1), signal);
      let conn: MemcachedConnection;
      try {
        conn = await this.connections.get(address, signal);
      } catch (error) {
        if (!isRetryable(error)) throw error;
        lastError = error as Error;
        continue;
      }
      const failed = await this.send(conn, pending, onOutcome);
      pending = failed.map((f) => f.batch);
      if (pending.length === 0) return;
      lastError = failed[0]?.error;
      if (signal?.aborted) break;
      // Out of step with the server: another attempt would only repeat it.
      if (!isRetryable(lastError)) throw lastError;
      await this.connections.discard(address, conn);
    }
    if (signal?.aborted) throw signal.reason;
    throw stillFailing(address, this.retry, lastError?.message ?? 'unknown error', lastError);
  }

  /**
   * Pipelines the batches on one connection, at most WINDOW unanswered at a time: enough to
   * keep the server busy, without queueing megabytes in the socket. Returns those that failed.
   */
  private async send(
    conn: MemcachedConnection,
    batches: readonly WritableItem[][],
    onOutcome: (outcome: AddOutcome, valueBytes: number) => void,
  ): Promise<{ batch: WritableItem[]; error: Error }[]> {
    const failed: { batch: WritableItem[]; error: Error }[] = [];
    const inFlight: Promise<void>[] = [];
    for (const batch of batches) {
      if (inFlight.length >= WINDOW) await inFlight.shift();
      const reply = new MetaAddReplies(batch, conn.label);
      const request = buildMetaAdds(batch, this.pool);
      await conn.enqueue(request, reply);
      inFlight.push(
        reply.promise.then(
          (outcome) => {
            // Answered, so the socket is done with the request. (After a failure it may
            // not be: that buffer is left to the garbage collector.)
            this.pool?.release(request);
            onOutcome(outcome, valueBytes(batch));
          },
          (error: unknown) => {
            failed.push({ batch, error: error as Error });
          },
        ),
      );
    }
    await Promise.all(inFlight);
    return failed;
  }
}
