import { dumpNode } from '../dumper/dump-node.js';
import { type ReadPace, listedUntilClosed } from '../dumper/read-pace.js';
import type { BufferPool } from '../shared/buffer-pool.js';
import type { ChunkMessage, TargetRing } from '../shared/chunk-message.js';
import type { ChunkQueue } from '../shared/chunk-queue.js';
import type { ChunkStore } from '../shared/chunk-store.js';
import type { Clock } from '../shared/clock.js';
import { type DumpCounters, newDumpCounters } from '../shared/counters.js';
import { abortReason, isCachewarmError } from '../shared/errors.js';
import type { Connect } from '../shared/memcached/connect.js';
import { HandOffStore } from '../shared/store/hand-off-store.js';
import { Listing } from '../shared/key-sample.js';
import type { NodeSpec, ReplicaSpec } from '../shared/topology.js';
import { endpointOf } from './node-stats.js';

export interface SharedCopyOptions {
  /** The replica every target copies from. */
  readonly source: ReplicaSpec;
  /** Names the dump's chunks in the store: `<jobId>/<node id>/…`. */
  readonly jobId: string;
  /** How many targets will join or leave: the dump starts once each has done one or the other. */
  readonly targets: number;
  readonly store: ChunkStore;
  readonly chunkSizeBytes: number;
  readonly fetchConcurrency: number;
  /**
   * Removes a chunk once every target that received it has written it. Chunks are then
   * handed to the targets in memory, never stored unless parked.
   */
  readonly deleteConsumed: boolean;
  readonly readPace: (node: NodeSpec, signal: AbortSignal) => Promise<ReadPace>;
  readonly clock: Clock;
  readonly connect: Connect;
  readonly pool: BufferPool;
  /** Keys of the dump's listing kept for the targets' read-backs (see Listing); 0 or absent: none. */
  readonly sampleKeys?: number | undefined;
}

/** A target's side of the copy: where its chunks go, and how it stops taking them. */
export interface CopySubscriber {
  readonly target: string;
  /** The target's ring: it replaces the dump's in every message this target receives. */
  readonly ring: TargetRing;
  readonly queue: ChunkQueue;
  /** Aborted when this target's pass fails: the others go on without it. */
  readonly signal: AbortSignal;
  readonly onDataChunk?: ((message: ChunkMessage) => void) | undefined;
}

/**
 * One dump of the source for several target replicas (dump once, fill many): the source is
 * crawled and read once, and each data chunk is handed to every target's own queue, with that
 * target's ring. Each target writes, counts, repairs and verifies on its own; one whose pass
 * fails drops out, and the dump goes on for the rest. A chunk is removed from the store once
 * every target it was handed to has written it (a parked one stays, as in a single warm).
 *
 * The slowest target sets the pace: the fan-out waits for room in every queue, so memory
 * stays bounded by each queue's capacity × chunk size.
 */
export class SharedCopy {
  /** Dump counters per source node id, shared by every target's report. */
  readonly counters: ReadonlyMap<string, DumpCounters>;
  /** The read pace of each source node being dumped now. */
  readonly paces = new Map<string, ReadPace>();
  /** Where the targets' populators take the dump's chunks from. */
  readonly store: ChunkStore;
  /** What the dump listed, sampled: every target's read-back draws from it. */
  readonly listing: Listing | undefined;
  private readonly handOff: HandOffStore | undefined;
  private readonly subscribers = new Map<string, CopySubscriber>();
  private readonly left = new Set<string>();
  /** Per chunk, the targets that received it and have not written it yet. */
  private readonly unwritten = new Map<string, Set<string>>();
  /** Chunks a target parked: kept in the store, as a single warm keeps them. */
  private readonly kept = new Set<string>();
  private readonly stop = new AbortController();
  private started: Promise<ReadonlyMap<string, Error>> | undefined;
  private readonly ready: { resolve: () => void; promise: Promise<void> };

  constructor(private readonly options: SharedCopyOptions) {
    this.counters = new Map(options.source.nodes.map((n) => [n.id, newDumpCounters()]));
    this.handOff = options.deleteConsumed ? new HandOffStore(options.store, options.pool) : undefined;
    this.store = this.handOff ?? options.store;
    this.listing = options.sampleKeys ? new Listing(options.sampleKeys, options.source.nodes.map((n) => n.id)) : undefined;
    let resolve = (): void => undefined;
    const promise = new Promise<void>((r) => (resolve = r));
    this.ready = { resolve, promise };
  }

  get source(): string {
    return this.options.source.name;
  }

  /**
   * Takes the dump's chunks into the subscriber's queue. Resolves, once the dump has ended,
   * with the source nodes whose connections were lost mid-dump (as a single pass does);
   * rejects with the dump's failure. The subscriber closes its queue after either.
   */
  async join(subscriber: CopySubscriber): Promise<ReadonlyMap<string, Error>> {
    const { target, signal } = subscriber;
    if (signal.aborted) {
      this.leave(target);
      throw abortReason(signal);
    }
    this.subscribers.set(target, subscriber);
    // A target that fails leaves at once: its warm reports its failure without waiting for the others'.
    const left = new Promise<never>((_, reject) => {
      signal.addEventListener(
        'abort',
        () => {
          this.leave(target);
          reject(abortReason(signal));
        },
        { once: true },
      );
    });
    left.catch(() => undefined);
    this.checkReady();
    await Promise.race([this.ready.promise, left]);
    if (!this.started) {
      this.started = this.dump();
      // Every target may have left by the time it fails: the failure is theirs to report, not the process's.
      this.started.catch(() => undefined);
    }
    return await Promise.race([this.started, left]);
  }

  /**
   * The target takes no (more) chunks: it will not copy, its copy is done, or it failed.
   * Idempotent. What it had not written is no longer waited for.
   */
  leave(target: string): void {
    if (this.left.has(target)) return;
    this.left.add(target);
    this.subscribers.delete(target);
    for (const name of [...this.unwritten.keys()]) this.written(target, name);
    this.checkReady();
    // Nobody is left to fill: reading the source on would only cost it.
    if (this.started && this.subscribers.size === 0) this.stop.abort(new Error('every target left the shared copy'));
  }

  /** The target wrote the chunk: removed from the store once every target has (and none parked it). */
  written(target: string, name: string): void {
    const waiting = this.unwritten.get(name);
    if (!waiting?.delete(target) || waiting.size > 0) return;
    this.unwritten.delete(name);
    if (this.options.deleteConsumed && !this.kept.has(name)) this.store.delete(name).catch(() => undefined);
  }

  /** The target parked the chunk: it stays in the store for whoever looks into why. */
  parked(target: string, name: string): void {
    this.kept.add(name);
    // The dump waits for its handed-off chunks to be written or stored: failing to store one fails it.
    this.handOff?.persist(name).catch((error: unknown) => this.stop.abort(error));
    this.written(target, name);
  }

  private checkReady(): void {
    if (this.subscribers.size + this.left.size >= this.options.targets) this.ready.resolve();
  }

  private async dump(): Promise<ReadonlyMap<string, Error>> {
    const { options, stop } = this;
    const lost = new Map<string, Error>();
    const queue: ChunkQueue = {
      send: (message) => this.fanOut(message),
      receive: () => Promise.reject(new Error('the shared copy hands chunks out; it is not read from')),
    };
    if (this.subscribers.size === 0) return lost;
    const ring = [...this.subscribers.values()][0]?.ring as TargetRing;
    await Promise.all(
      options.source.nodes.map((node) =>
        dumpNode({
          node: { id: node.id, ...endpointOf(node) },
          jobId: options.jobId,
          store: this.store,
          handOff: this.handOff,
          queue,
          // Replaced by each target's own in fanOut.
          target: ring,
          clock: options.clock,
          connect: options.connect,
          chunkSizeBytes: options.chunkSizeBytes,
          fetchConcurrency: options.fetchConcurrency,
          readPace: () => this.trackedPace(node),
          counters: this.counters.get(node.id) as DumpCounters,
          pool: options.pool,
          ...this.listing?.of(node.id),
          signal: stop.signal,
        }).catch((error: unknown) => {
          // A source node lost mid-dump may have restarted: each target's job tells, as a single pass does.
          if (!stop.signal.aborted && isCachewarmError(error, 'NODE_UNREACHABLE') && error.message.includes(node.id)) lost.set(node.id, error);
          else {
            if (!stop.signal.aborted) stop.abort(error);
            throw abortReason(stop.signal);
          }
        }),
      ),
    );
    return lost;
  }

  private async trackedPace(node: NodeSpec): Promise<ReadPace> {
    return listedUntilClosed(this.paces, node.id, await this.options.readPace(node, this.stop.signal));
  }

  private async fanOut(message: ChunkMessage): Promise<void> {
    const receivers = [...this.subscribers.values()];
    this.unwritten.set(message.chunk.name, new Set(receivers.map((s) => s.target)));
    await Promise.all(
      receivers.map(async (s) => {
        try {
          await s.queue.send({ ...message, target: s.ring }, s.signal);
          s.onDataChunk?.(message);
        } catch (error) {
          // A target that failed takes no more chunks: its queue may never drain again.
          if (!s.signal.aborted) throw error;
          this.leave(s.target);
        }
      }),
    );
  }
}
