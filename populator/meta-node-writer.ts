import type { BufferPool } from '../shared/buffer-pool.js';
import type { Clock } from '../shared/clock.js';
import type { MemcachedConnection } from '../shared/memcached/connection.js';
import { stats } from '../shared/memcached/commands.js';
import { type AddBatch, type AddOutcome, MetaAddReplies, type PackedSelection, type WritableItem, type WrittenItem, buildMetaAdds } from '../shared/memcached/meta-add.js';
import { type DeleteOutcome, MetaCasReplies, MetaDeleteReplies, buildMetaCas, buildMetaDeletesIfUnchanged, newDeleteOutcome } from '../shared/memcached/meta-reconcile.js';
import { addInto } from '../shared/counters.js';
import type { Connect } from '../shared/memcached/connect.js';
import type { NodeWriter } from './node-writer.js';
import { DEFAULT_RETRY, type RetryPolicy } from './retry-policy.js';
import { type CheckConnection, TargetConnections, inBatches } from './target-connections.js';

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

/** A batch of adds and the value bytes it carries (reported with its outcome). */
interface Batch {
  readonly items: AddBatch;
  readonly valueBytes: number;
}

/** Splits items into batches of about maxBytes, each item's size told by keyBytes and valueBytes. */
function split<T>(all: readonly T[], maxBytes: number, keyBytes: (t: T) => number, valueBytes: (t: T) => number, make: (part: T[]) => AddBatch): Batch[] {
  const batches: Batch[] = [];
  let part: T[] = [];
  let bytes = 0;
  let values = 0;
  for (const one of all) {
    const value = valueBytes(one);
    const size = keyBytes(one) + value + 40;
    if (part.length > 0 && bytes + size > maxBytes) {
      batches.push({ items: make(part), valueBytes: values });
      part = [];
      bytes = 0;
      values = 0;
    }
    part.push(one);
    bytes += size;
    values += value;
  }
  if (part.length > 0) batches.push({ items: make(part), valueBytes: values });
  return batches;
}

function batchesOf(items: readonly WritableItem[], maxBytes: number): Batch[] {
  return split(items, maxBytes, (item) => item.key.length, (item) => item.value.length, (part) => part);
}

function packedBatchesOf({ packed, indices }: PackedSelection, maxBytes: number): Batch[] {
  return split(indices, maxBytes, (i) => packed.keyBytes(i), (i) => packed.valueBytes(i), (part) => ({ packed, indices: part }));
}

/** Write batches unanswered at once on one connection. */
const WINDOW = 4;
/** Conditional deletes (or CAS lookups) a pipelined batch. */
const DELETE_BATCH = 1_000;

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

  addItems(
    address: string,
    items: readonly WritableItem[],
    onOutcome: (outcome: AddOutcome, valueBytes: number) => void,
    signal?: AbortSignal,
    withCas = false,
  ): Promise<void> {
    return this.write(address, batchesOf(items, this.batchBytes), onOutcome, signal, withCas);
  }

  addPacked(
    address: string,
    selection: PackedSelection,
    onOutcome: (outcome: AddOutcome, valueBytes: number) => void,
    signal?: AbortSignal,
    withCas = false,
  ): Promise<void> {
    return this.write(address, packedBatchesOf(selection, this.batchBytes), onOutcome, signal, withCas);
  }

  /**
   * `md <key> C<cas>` for each item, pipelined. Sent again on a new connection when one fails:
   * a delete the failed attempt carried out is then found gone, never repeated on another item.
   */
  async deleteUnchanged(address: string, items: readonly WrittenItem[], signal?: AbortSignal): Promise<DeleteOutcome> {
    const outcome = newDeleteOutcome();
    await this.connections.eachWithRetries(address, inBatches(items, DELETE_BATCH), this.retry, this.clock, signal, async (conn, { part }) => {
      addInto(outcome, await conn.send(buildMetaDeletesIfUnchanged(part), new MetaDeleteReplies(part.length, conn.label)));
    });
    return outcome;
  }

  /** `mg <key> c` for each key, pipelined: the CAS of the item it names, undefined where there is none. */
  async casOf(address: string, keys: readonly Buffer[], signal?: AbortSignal): Promise<(number | undefined)[]> {
    const cas: (number | undefined)[] = [];
    await this.connections.eachWithRetries(address, inBatches(keys, DELETE_BATCH), this.retry, this.clock, signal, async (conn, { start, part }) => {
      const found = await conn.send(buildMetaCas(part), new MetaCasReplies(part.length, conn.label));
      found.forEach((value, i) => (cas[start + i] = value));
    });
    return cas;
  }

  private write(
    address: string,
    batches: readonly Batch[],
    onOutcome: (outcome: AddOutcome, valueBytes: number) => void,
    signal: AbortSignal | undefined,
    withCas: boolean,
  ): Promise<void> {
    const sent = new WeakSet<Batch>();
    return this.connections.withRetries(address, batches, this.retry, this.clock, signal, (conn, pending) => this.send(conn, pending, sent, onOutcome, withCas));
  }

  /**
   * Pipelines the batches on one connection, at most WINDOW unanswered at a time: enough to
   * keep the server busy, without queueing megabytes in the socket. Returns those that failed.
   */
  private async send(
    conn: MemcachedConnection,
    batches: readonly Batch[],
    sent: WeakSet<Batch>,
    onOutcome: (outcome: AddOutcome, valueBytes: number) => void,
    withCas: boolean,
  ): Promise<{ batch: Batch; error: Error }[]> {
    const failed: { batch: Batch; error: Error }[] = [];
    const inFlight: Promise<void>[] = [];
    for (const batch of batches) {
      if (inFlight.length >= WINDOW) await inFlight.shift();
      const again = sent.has(batch);
      sent.add(batch);
      const reply = new MetaAddReplies(batch.items, conn.label, withCas);
      const request = buildMetaAdds(batch.items, this.pool, withCas);
      await conn.enqueue(request, reply);
      inFlight.push(
        reply.promise.then(
          (outcome) => {
            // Answered, so the socket is done with the request. (After a failure it may
            // not be: that buffer is left to the garbage collector.)
            this.pool?.release(request);
            onOutcome(again ? { ...outcome, resent: true } : outcome, batch.valueBytes);
          },
          (error: unknown) => void failed.push({ batch, error: error as Error }),
        ),
      );
    }
    await Promise.all(inFlight);
    return failed;
  }
}
