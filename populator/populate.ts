import { type ChunkLocation, type ChunkMessage, type TargetRing, checkMessageScope } from '../shared/chunk-message.js';
import type { ChunkQueue, Delivery } from '../shared/chunk-queue.js';
import type { ChunkStore } from '../shared/chunk-store.js';
import { BufferPool } from '../shared/buffer-pool.js';
import { chunkHeader, decodeDataChunk } from '../shared/chunk-format.js';
import type { Clock } from '../shared/clock.js';
import type { WriteTally } from '../shared/counters.js';
import { CachewarmError, isRetryable } from '../shared/errors.js';
import type { NodeWriter } from './node-writer.js';
import type { Refusal } from '../shared/memcached/meta-add.js';
import { type TargetNodeRing, ringOfTarget, writeToRing } from './write-to-ring.js';

export interface PopulatorOptions {
  readonly queue: ChunkQueue;
  readonly store: ChunkStore;
  readonly writer: NodeWriter;
  readonly clock: Clock;
  readonly tally: WriteTally;
  /** Chunks handled at once. Memory: about concurrency × chunk size. */
  readonly concurrency?: number;
  /** Remove a chunk from the store once all its items are handled. */
  readonly deleteConsumed?: boolean;
  readonly onChunkDone?: (message: ChunkMessage) => void;
  /**
   * Items a target node refused, with the message whose chunk held them (counted in the tally
   * too). Called while the chunk is held: what it keeps of the items it must copy at once. A
   * promise it returns is awaited before the message is acknowledged, and its failure hands
   * the message back: the record of a refusal is as durable as the message was.
   */
  readonly onRefused?: ((message: ChunkMessage, address: string, refusals: readonly Refusal[]) => void | Promise<void>) | undefined;
  /** A chunk failed: `parked` when it can never apply, else it was handed back for redelivery. */
  readonly onChunkFailed?: (message: ChunkMessage, error: Error, parked: boolean) => void;
  /** Where chunk buffers come from and go back to. */
  readonly pool?: BufferPool;
  /**
   * The job the queue belongs to: a message for another job, bucket or prefix is parked, not
   * applied (a queue is writable by more principals than the job's dumpers).
   */
  readonly scope?: { readonly jobId: string; readonly store?: ChunkLocation | undefined } | undefined;
  readonly signal?: AbortSignal | undefined;
}


/**
 * Drains the queue: each message's chunk is downloaded, verified, routed item by item over
 * the target ring and written add-only. A message is acknowledged only after every item was
 * handled; a failure returns it for redelivery, and a chunk that can never apply (corrupt,
 * missing) is parked with the reason while the rest of the job goes on.
 */
export async function runPopulator(options: PopulatorOptions): Promise<void> {
  const { queue, store, clock, tally, concurrency = 4, signal } = options;
  const pool = options.pool ?? new BufferPool();
  const rings = new Map<string, TargetNodeRing>();

  function ringFor(target: TargetRing): TargetNodeRing {
    const id = JSON.stringify([target.hashing, target.nodes]);
    let ring = rings.get(id);
    if (!ring) {
      ring = ringOfTarget(target);
      rings.set(id, ring);
    }
    return ring;
  }

  async function apply(message: ChunkMessage): Promise<void> {
    if (options.scope) checkMessageScope(message, options.scope, `for chunk ${message.chunk.name}`);
    const where = store.describe(message.chunk.name);
    const body = await store.get(message.chunk.name, { signal, into: pool });
    try {
      const items = decodeDataChunk(body, where);
      if (chunkHeader(body).crc32 !== message.chunk.crc32 || items.length !== message.chunk.items) {
        throw new CachewarmError('CHUNK_CORRUPT', `chunk ${where} does not match its message (checksum or item count)`, {
          chunk: message.chunk.name,
        });
      }
      const recorded: Promise<void>[] = [];
      const onRefused = options.onRefused;
      await writeToRing(items, ringFor(message.target), {
        writer: options.writer,
        clock,
        tally,
        writeOnly: message.target.writeOnly,
        onRefused:
          onRefused &&
          ((address, refusals) => {
            const record = Promise.resolve(onRefused(message, address, refusals));
            // Awaited below; until then a failure must not count as unhandled.
            record.catch(() => undefined);
            recorded.push(record);
          }),
        signal,
      });
      await Promise.all(recorded);
    } finally {
      // writeToRing settles only when nothing reads the chunk's items any more.
      pool.release(body);
    }
  }

  async function handle(delivery: Delivery): Promise<void> {
    const { message } = delivery;
    try {
      await apply(message);
    } catch (thrown) {
      const error = thrown instanceof Error ? thrown : new Error(String(thrown));
      if (signal?.aborted) {
        await delivery.retry('aborted');
        return;
      }
      // What no redelivery can cure is parked with the reason.
      const permanent = !isRetryable(error);
      if (permanent) await delivery.park(error.message);
      else await delivery.retry(error.message);
      options.onChunkFailed?.(message, error, permanent);
      return;
    }
    await delivery.ack();
    if (options.deleteConsumed) await store.delete(message.chunk.name).catch(() => undefined);
    options.onChunkDone?.(message);
  }

  const running = new Set<Promise<void>>();
  for (;;) {
    while (running.size >= concurrency) await Promise.race(running);
    const delivery = await queue.receive(signal).catch((error: unknown) => {
      if (signal?.aborted) return undefined;
      throw error;
    });
    if (!delivery) break;
    const task = handle(delivery).finally(() => running.delete(task));
    running.add(task);
  }
  await Promise.all(running);
}
