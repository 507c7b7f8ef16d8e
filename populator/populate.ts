import { type ChunkMessage, type MessageScope, type TargetRing, checkMessageScope } from '../shared/chunk-message.js';
import type { ChunkQueue, Delivery } from '../shared/chunk-queue.js';
import type { ChunkStore } from '../shared/chunk-store.js';
import { BufferPool } from '../shared/buffer-pool.js';
import { DataRecords, chunkHeader } from '../shared/chunk-format.js';
import type { Clock } from '../shared/clock.js';
import { WriteTally, addInto } from '../shared/counters.js';
import { CachewarmError, isRetryable } from '../shared/errors.js';
import type { NodeWriter } from './node-writer.js';
import type { Refusal } from '../shared/memcached/meta-add.js';
import { type TargetNodeRing, ringOfTarget, writeToRing } from './write-to-ring.js';
import type { DeleteReconciler } from './delete-reconciler.js';
import { addressOfNodeId } from '../shared/topology.js';

/**
 * Where one message's chunk is read from and how its items are written: the same for every
 * message of a job's own queue; per job on a standing queue that many jobs share.
 */
export interface MessageRoute {
  readonly store: ChunkStore;
  readonly writer: NodeWriter;
  /**
   * The job the message must belong to: a message for another job, bucket or prefix is
   * parked, not applied (a queue is writable by more principals than the job's dumpers).
   * With the job's manifest, items are routed over the manifest's ring, and a message naming
   * another ring, source node or chunk path is parked too.
   */
  readonly scope?: MessageScope | undefined;
  /**
   * Takes back, right after each batch of adds, what the chunk's source node deleted since its
   * dump (issue 14); absent when the job's warm turned the reconcile off.
   */
  readonly reconciler?: DeleteReconciler | undefined;
}

interface PopulatorBase {
  readonly queue: ChunkQueue;
  readonly clock: Clock;
  readonly tally: WriteTally;
  /** Chunks handled at once. Memory: about concurrency × chunk size. */
  readonly concurrency?: number;
  /** Remove a chunk from the store once all its items are handled. */
  readonly deleteConsumed?: boolean;
  readonly onChunkDone?: (message: ChunkMessage) => void;
  /**
   * Every item of the chunk was handled: what it did to each target node (in `tally` too).
   * Called before the message is acknowledged, so that a count of whole chunks can be made
   * durable before their messages go.
   */
  readonly onChunkWritten?: ((message: ChunkMessage, written: WriteTally) => void) | undefined;
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
  readonly signal?: AbortSignal | undefined;
}

/**
 * One route for every message, or a route found for each (a failure to find one — a job
 * whose manifest is not in the store, a location not allowed — parks the message when it
 * is not retryable, else hands it back).
 */
export type PopulatorOptions = PopulatorBase & (MessageRoute | { readonly routeOf: (message: ChunkMessage, signal?: AbortSignal) => Promise<MessageRoute> });


/**
 * Drains the queue: each message's chunk is downloaded, verified, routed item by item over
 * the target ring and written add-only. A message is acknowledged only after every item was
 * handled; a failure returns it for redelivery, and a chunk that can never apply (corrupt,
 * missing) is parked with the reason while the rest of the job goes on.
 */
export async function runPopulator(options: PopulatorOptions): Promise<void> {
  const { queue, clock, tally, concurrency = 4, signal } = options;
  const routeOf = 'routeOf' in options ? options.routeOf : async (): Promise<MessageRoute> => options;
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

  /**
   * Writes the message's chunk; returns what it did, counted in `tally` too, written whole or
   * not. `again`: the message was delivered before, so its items may have been written already.
   */
  async function apply(message: ChunkMessage, route: MessageRoute, again: boolean): Promise<WriteTally> {
    const { store, scope } = route;
    if (scope) checkMessageScope(message, scope, `for chunk ${message.chunk.name}`);
    // Equal to the message's once checked; taken from the manifest all the same, so that what
    // is written where never depends on a message's word.
    const target = scope?.manifest?.target ?? message.target;
    const where = store.describe(message.chunk.name);
    // A chunk lent by the dumper in this process never left memory: its checksum was just
    // computed, and is only compared with the message's.
    const lent = store.lend?.(message.chunk.name);
    const body = lent?.bytes ?? (await store.get(message.chunk.name, { signal, into: pool }));
    const written = new WriteTally();
    try {
      const items = DataRecords.decode(body, where, { checksum: !lent });
      if (chunkHeader(body).crc32 !== message.chunk.crc32 || items.length !== message.chunk.items) {
        throw new CachewarmError('CHUNK_CORRUPT', `chunk ${where} does not match its message (checksum or item count)`, {
          chunk: message.chunk.name,
        });
      }
      const recorded: Promise<void>[] = [];
      const onRefused = options.onRefused;
      const { reconciler } = route;
      const source = addressOfNodeId(message.source);
      await writeToRing(items, ringFor(target), {
        writer: route.writer,
        clock,
        tally: written,
        writeOnly: target.writeOnly,
        onRefused:
          onRefused &&
          ((address, refusals) => {
            const record = Promise.resolve(onRefused(message, address, refusals));
            // Awaited below; until then a failure must not count as unhandled.
            record.catch(() => undefined);
            recorded.push(record);
          }),
        reconcile: reconciler && ((address, deleteUnchanged, stored) => reconciler.reconcile(source, address, deleteUnchanged, stored, written.for(address), signal)),
        mayHaveWritten: again,
        signal,
      });
      await Promise.all(recorded);
      return written;
    } finally {
      for (const [address, counters] of written.byNode) addInto(tally.for(address), counters);
      // writeToRing settles only when nothing reads the chunk's items any more.
      if (lent) lent.giveBack();
      else pool.release(body);
    }
  }

  async function handle(delivery: Delivery): Promise<void> {
    const { message } = delivery;
    let written: WriteTally;
    let route: MessageRoute | undefined;
    try {
      route = await routeOf(message, signal);
      written = await apply(message, route, delivery.receiveCount > 1);
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
    options.onChunkWritten?.(message, written);
    await delivery.ack();
    if (options.deleteConsumed) await route.store.delete(message.chunk.name).catch(() => undefined);
    options.onChunkDone?.(message);
  }

  const running = new Set<Promise<void>>();
  // A delivery that could not be settled (its queue gone, say) ends the drain, once the
  // other chunks being written are settled too.
  let failure: { readonly error: unknown } | undefined;
  for (;;) {
    while (running.size >= concurrency) await Promise.race(running);
    if (failure) break;
    const delivery = await queue.receive(signal).catch(async (error: unknown) => {
      if (signal?.aborted) return undefined;
      // The chunks being written settle first (each acknowledged or handed back), so the
      // caller's tally is final when it sees the error.
      await Promise.allSettled(running);
      throw error;
    });
    if (!delivery) break;
    const task = handle(delivery)
      .catch((error: unknown) => {
        failure ??= { error };
      })
      .finally(() => running.delete(task));
    running.add(task);
  }
  await Promise.all(running);
  if (failure) throw failure.error;
}
