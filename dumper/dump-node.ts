import pLimit from 'p-limit';
import type { ChunkLocation, ChunkMessage, TargetRing } from '../shared/chunk-message.js';
import type { ChunkQueue } from '../shared/chunk-queue.js';
import type { ChunkStore } from '../shared/chunk-store.js';
import { BufferPool } from '../shared/buffer-pool.js';
import { ChunkBuilder, chunkHeader } from '../shared/chunk-format.js';
import type { Clock } from '../shared/clock.js';
import { type DumpCounters, newDumpCounters } from '../shared/counters.js';
import { MemcachedConnection, type Endpoint } from '../shared/memcached/connection.js';
import type { CrawlMode, KeyBatch } from '../shared/memcached/crawler.js';
import { type RateLimiter, unlimited } from '../shared/token-bucket.js';
import { fetchValues } from './fetch-values.js';
import { listKeys } from './list-keys.js';

export type Connect = (endpoint: Endpoint, signal?: AbortSignal) => Promise<MemcachedConnection>;

export const connectDirect: Connect = (endpoint, signal) => MemcachedConnection.connect(endpoint, { signal });

export interface SourceNode extends Endpoint {
  /** Stable id, `replica/address`: names the node's chunks and its messages. */
  readonly id: string;
}

export interface DumpNodeOptions {
  readonly node: SourceNode;
  readonly jobId: string;
  readonly store: ChunkStore;
  readonly queue: ChunkQueue;
  /** Where the populators will write: travels in every message. */
  readonly target: TargetRing;
  readonly clock: Clock;
  readonly connect?: Connect;
  readonly chunkSizeBytes: number;
  /** Keys per key chunk. */
  readonly keysPerChunk?: number;
  /** Key chunks fetched at once, each on its own connection. */
  readonly fetchConcurrency?: number;
  /** Values requested in one pipelined batch, bounded by the sizes the crawler reported. */
  readonly fetchBatchBytes?: number;
  /** Items per second read from this node. */
  readonly rateLimiter?: RateLimiter;
  /** Bytes per second uploaded to the store (the node's network is shared with live traffic). */
  readonly uploadLimiter?: RateLimiter;
  /**
   * Whether announced messages outlive this process (SQS). When not (the in-process queue), a
   * resumed dump announces again the data chunks an earlier run left in the store.
   */
  readonly durableQueue?: boolean;
  /** The bucket and prefix the store puts chunks under, told to populators in every message. */
  readonly location?: ChunkLocation | undefined;
  /** Only keys for which this returns true are copied (an instance warm's ring filter). */
  readonly keyFilter?: ((key: Buffer) => boolean) | undefined;
  readonly crawlMode?: CrawlMode | undefined;
  /** Most crawl passes: see ListKeysOptions.passes. */
  readonly crawlPasses?: number;
  /** Memory for remembering the keys already listed (a Bloom filter). */
  readonly seenKeysMaxBytes?: number;
  readonly counters?: DumpCounters;
  /** Where chunk and command buffers come from and go back to. */
  readonly pool?: BufferPool;
  readonly onDataChunk?: (message: ChunkMessage) => void;
  readonly signal?: AbortSignal | undefined;
}

/** `127.0.0.1:11211` → `127.0.0.1_11211`: usable as a path segment and an S3 key part. */
function nodeDirectory(node: SourceNode): string {
  return node.id.replace(/[^A-Za-z0-9._-]+/g, '_');
}

const pad = (n: number, width: number): string => String(n).padStart(width, '0');

/**
 * Dumps one source node: crawls its keys into key chunks, reads their values (without
 * bumping them in the LRU) into data chunks of about `chunkSizeBytes`, stores each data chunk
 * and announces it on the queue. The crawl and the reads overlap; the queue's bound pushes
 * back on both.
 *
 * Memory is bounded by configuration, not by the node's size: about
 * fetchConcurrency × (chunkSizeBytes × 2 + 2 × fetchBatchBytes) plus two key chunks.
 */
export async function dumpNode(options: DumpNodeOptions): Promise<DumpCounters> {
  const {
    node,
    jobId,
    store,
    queue,
    target,
    clock,
    connect = connectDirect,
    chunkSizeBytes,
    keysPerChunk = 20_000,
    fetchConcurrency = 2,
    fetchBatchBytes = 1 << 20,
    rateLimiter = unlimited,
    uploadLimiter = unlimited,
    keyFilter,
    signal,
  } = options;
  const counters = options.counters ?? newDumpCounters();
  const pool = options.pool ?? new BufferPool();
  const directory = `${jobId}/${nodeDirectory(node)}`;

  async function storeKeyChunk(name: string, batch: KeyBatch): Promise<void> {
    const builder = new ChunkBuilder('keys', batch.keys.length * 64, pool);
    for (let i = 0; i < batch.keys.length; i++) builder.addKey(batch.keys[i] as Buffer, batch.exptimes[i] as number);
    const chunk = builder.seal();
    await store.put(name, chunk, signal);
    pool.release(chunk);
  }

  async function emit(name: string, chunk: Buffer): Promise<void> {
    await uploadLimiter.take(chunk.length, signal);
    await store.put(name, chunk, signal);
    const { items, crc32 } = chunkHeader(chunk);
    pool.release(chunk);
    const message: ChunkMessage = {
      version: 2,
      jobId,
      source: node.id,
      ...(options.location && { store: options.location }),
      chunk: { name, bytes: chunk.length, items, crc32 },
      target,
    };
    await queue.send(message, signal);
    counters.dataChunks++;
    options.onDataChunk?.(message);
  }

  const crawlConnection = await connect(node, signal);
  const workers: { conn: MemcachedConnection; builder: ChunkBuilder }[] = [];
  try {
    for (let i = 0; i < fetchConcurrency; i++) {
      workers.push({ conn: await connect(node, signal), builder: new ChunkBuilder('data', chunkSizeBytes, pool) });
    }
    const idle = [...workers];
    const limit = pLimit(fetchConcurrency);
    const running = new Set<Promise<void>>();
    let failure: unknown;
    let seq = 0;
    const batches = listKeys(crawlConnection, {
      batchKeys: keysPerChunk,
      clock,
      counters,
      mode: options.crawlMode,
      passes: options.crawlPasses,
      seenKeysMaxBytes: options.seenKeysMaxBytes,
      keyFilter,
      signal,
    });
    for await (const batch of batches) {
      const chunkSeq = seq++;
      const keyChunk = `${directory}/keys-${pad(chunkSeq, 6)}.chunk`;
      await storeKeyChunk(keyChunk, batch);
      // Hold the crawl while every reader is busy and a batch already waits its turn: the
      // keys in memory stay at a few batches however large the node.
      while (limit.pendingCount > 0 && failure === undefined) await Promise.race(running);
      if (failure !== undefined) break;
      let part = 0;
      const task = limit(async () => {
        if (failure !== undefined) return; // another batch failed: the dump is over
        // p-limit runs at most fetchConcurrency of these, so a worker is always free here.
        const worker = idle.pop() as (typeof workers)[number];
        try {
          await fetchValues(worker.conn, batch, {
            builder: worker.builder,
            pool,
            clock,
            counters,
            rateLimiter,
            batchBytes: fetchBatchBytes,
            signal,
            onChunk: (chunk) => emit(`${directory}/data-${pad(chunkSeq, 6)}-${pad(part++, 3)}.chunk`, chunk),
          });
          await store.delete(keyChunk, signal);
        } finally {
          idle.push(worker);
        }
      })
        .catch((error: unknown) => {
          failure ??= error;
        })
        .finally(() => running.delete(task));
      running.add(task);
    }
    await Promise.all(running);
    if (failure !== undefined) throw failure;
    return counters;
  } finally {
    crawlConnection.close();
    for (const { conn } of workers) conn.close();
  }
}
