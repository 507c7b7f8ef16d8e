import type { ChunkMessage, TargetRing } from '../shared/chunk-message.js';
import type { ChunkQueue } from '../shared/chunk-queue.js';
import type { ChunkStore } from '../shared/chunk-store.js';
import { BufferPool } from '../shared/buffer-pool.js';
import { ChunkBuilder, chunkHeader } from '../shared/chunk-format.js';
import type { Clock } from '../shared/clock.js';
import { type DumpCounters, newDumpCounters } from '../shared/counters.js';
import { absoluteExpiry, hasExpired } from '../shared/expiry.js';
import { MemcachedConnection, type Endpoint } from '../shared/memcached/connection.js';
import { stats, version } from '../shared/memcached/commands.js';
import { type CrawlMode, type KeyBatch, crawlKeys, crawlModeFor } from '../shared/memcached/crawler.js';
import { type FetchSink, MetaGetReplies, buildMetaGets } from '../shared/memcached/meta-get.js';
import { SeenKeys } from '../shared/seen-keys.js';
import { type RateLimiter, unlimited } from '../shared/token-bucket.js';

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
  /** Only keys for which this returns true are copied (an instance warm's ring filter). */
  readonly keyFilter?: ((key: Buffer) => boolean) | undefined;
  readonly crawlMode?: CrawlMode | undefined;
  /**
   * Most crawl passes. `metadump all` walks the LRUs and misses items that move between them
   * during the walk (a freshly written item moving from HOT to COLD, say), so in that mode,
   * when a pass listed fewer distinct keys than the node held, another pass lists the keys
   * again and copies those not seen before. Default: 2 in `all` mode, 1 in `hash` mode, which
   * walks the hash table and misses nothing.
   */
  readonly crawlPasses?: number;
  /** Memory for remembering the first pass's keys (a Bloom filter). */
  readonly seenKeysMaxBytes?: number;
  readonly counters?: DumpCounters;
  /** Where chunk and command buffers come from and go back to. */
  readonly pool?: BufferPool;
  readonly onDataChunk?: (message: ChunkMessage) => void;
  readonly signal?: AbortSignal | undefined;
}

const FETCH_BATCH_MAX_KEYS = 1_000;
/** mg batches in flight per connection: one being answered while the next is on the wire. */
const FETCH_WINDOW = 2;

/** `127.0.0.1:11211` → `127.0.0.1_11211`: usable as a path segment and an S3 key part. */
function nodeDirectory(node: SourceNode): string {
  return node.id.replace(/[^A-Za-z0-9._-]+/g, '_');
}

const pad = (n: number, width: number): string => String(n).padStart(width, '0');

/** The keys of a later pass that the earlier passes did not list; remembers them too. */
function unseen(batch: KeyBatch, seen: SeenKeys | undefined): KeyBatch {
  const keys: Buffer[] = [];
  const exptimes: number[] = [];
  const sizes: number[] = [];
  batch.keys.forEach((key, i) => {
    if (seen?.add(key)) return;
    keys.push(key);
    exptimes.push(batch.exptimes[i] as number);
    sizes.push(batch.sizes[i] as number);
  });
  return { keys, exptimes, sizes };
}

/**
 * Dumps one source node: crawls its keys into key chunks, reads their values (without
 * bumping them in the LRU) into data chunks of about `chunkSizeBytes`, stores each data chunk
 * and announces it on the queue. The crawl and the reads overlap; the queue's bound pushes
 * back on both.
 *
 * Memory is bounded by configuration, not by the node's size: about
 * fetchConcurrency × (chunkSizeBytes × 2 + FETCH_WINDOW × fetchBatchBytes) plus two key chunks.
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
    keyFilter,
    signal,
  } = options;
  const counters = options.counters ?? newDumpCounters();
  const pool = options.pool ?? new BufferPool();
  const directory = `${jobId}/${nodeDirectory(node)}`;
  const nowSeconds = (): number => Math.floor(clock.now() / 1000);

  /** Drops what the crawl already says is expired, and keys the filter leaves out. */
  function select(batch: KeyBatch): KeyBatch {
    const now = nowSeconds();
    const keys: Buffer[] = [];
    const exptimes: number[] = [];
    const sizes: number[] = [];
    for (let i = 0; i < batch.keys.length; i++) {
      const key = batch.keys[i] as Buffer;
      const exptime = batch.exptimes[i] as number;
      if (hasExpired(exptime, now)) counters.expired++;
      else if (keyFilter && !keyFilter(key)) counters.filtered++;
      else {
        keys.push(key);
        exptimes.push(exptime);
        sizes.push(batch.sizes[i] as number);
      }
    }
    return { keys, exptimes, sizes };
  }

  async function storeKeyChunk(name: string, batch: KeyBatch): Promise<void> {
    const builder = new ChunkBuilder('keys', batch.keys.length * 64, pool);
    for (let i = 0; i < batch.keys.length; i++) builder.addKey(batch.keys[i] as Buffer, batch.exptimes[i] as number);
    const chunk = builder.seal();
    await store.put(name, chunk, signal);
    pool.release(chunk);
  }

  async function emit(name: string, chunk: Buffer): Promise<void> {
    await store.put(name, chunk, signal);
    const { items, crc32 } = chunkHeader(chunk);
    pool.release(chunk);
    const message: ChunkMessage = {
      version: 1,
      jobId,
      source: node.id,
      chunk: { name, bytes: chunk.length, items, crc32 },
      target,
    };
    await queue.send(message, signal);
    counters.dataChunks++;
    options.onDataChunk?.(message);
  }

  async function fetchKeyChunk(conn: MemcachedConnection, builder: ChunkBuilder, seq: number, batch: KeyBatch): Promise<void> {
    const { keys, exptimes, sizes } = batch;
    const sealed: Buffer[] = [];
    let part = 0;
    const flush = async (): Promise<void> => {
      for (const chunk of sealed.splice(0)) await emit(`${directory}/data-${pad(seq, 6)}-${pad(part++, 3)}.chunk`, chunk);
    };
    const window: Promise<void>[] = [];
    for (let start = 0; start < keys.length; ) {
      let end = start;
      let bytes = 0;
      while (end < keys.length && end - start < FETCH_BATCH_MAX_KEYS && (end === start || bytes + (sizes[end] as number) <= fetchBatchBytes)) {
        bytes += sizes[end] as number;
        end++;
      }
      await rateLimiter.take(end - start, signal);
      const base = start;
      const now = nowSeconds();
      const sink: FetchSink = {
        hit(index, value, flags, ttlSeconds) {
          const key = keys[base + index] as Buffer;
          const exptime = absoluteExpiry(ttlSeconds, exptimes[base + index] as number, now);
          if (exptime === undefined) {
            counters.expired++;
            return;
          }
          if (!builder.fits(ChunkBuilder.dataRecordBytes(key, value.length))) sealed.push(builder.seal());
          builder.addData(key, value, flags, exptime);
          counters.read++;
          counters.bytesRead += value.length;
        },
        miss() {
          counters.gone++;
        },
      };
      const reply = new MetaGetReplies(end - start, sink, conn.label);
      const request = buildMetaGets(keys, start, end, pool);
      await conn.enqueue(request, reply);
      const answered = reply.promise.then(() => pool.release(request));
      answered.catch(() => undefined); // awaited below; a failure surfaces there, not as unhandled
      window.push(answered);
      if (window.length >= FETCH_WINDOW) {
        await window.shift();
        await flush();
      }
      start = end;
    }
    await Promise.all(window);
    if (builder.itemCount > 0) sealed.push(builder.seal());
    await flush();
  }

  const crawlConnection = await connect(node, signal);
  const workers: { conn: MemcachedConnection; builder: ChunkBuilder }[] = [];
  try {
    for (let i = 0; i < fetchConcurrency; i++) {
      workers.push({ conn: await connect(node, signal), builder: new ChunkBuilder('data', chunkSizeBytes, pool) });
    }
    const idle = [...workers];
    const running = new Set<Promise<void>>();
    let failure: unknown;
    let seq = 0;
    const mode = options.crawlMode ?? crawlModeFor(await version(crawlConnection));
    const passes = options.crawlPasses ?? (mode === 'all' ? 2 : 1);
    const itemsHeld = async (): Promise<number> => Number((await stats(crawlConnection)).get('curr_items') ?? 0);
    const heldBefore = await itemsHeld();
    const seen = passes > 1 ? new SeenKeys(heldBefore * 1.2 + 1_000, options.seenKeysMaxBytes ?? 64 << 20) : undefined;
    let distinct = 0;
    for (let pass = 1; pass <= passes && failure === undefined; pass++) {
      // Each further pass costs the node a full walk: only when the last one came up short.
      if (pass > 1 && distinct >= Math.max(heldBefore, await itemsHeld())) break;
      let found = 0;
      for await (const listed of crawlKeys(crawlConnection, { batchKeys: keysPerChunk, clock, signal, mode })) {
        const fresh = pass === 1 ? listed : unseen(listed, seen);
        if (pass === 1) {
          for (const key of listed.keys) if (!seen?.add(key)) distinct++;
        } else {
          counters.caughtUp += fresh.keys.length;
          distinct += fresh.keys.length;
        }
        counters.listed += fresh.keys.length;
        found += fresh.keys.length;
        const batch = select(fresh);
        if (batch.keys.length === 0) continue;
        const keyChunk = `${directory}/keys-${pad(seq, 6)}.chunk`;
        const chunkSeq = seq++;
        await storeKeyChunk(keyChunk, batch);
        while (idle.length === 0 && failure === undefined) await Promise.race(running);
        if (failure !== undefined) break;
        const worker = idle.pop() as (typeof workers)[number];
        const task = fetchKeyChunk(worker.conn, worker.builder, chunkSeq, batch)
          .then(() => store.delete(keyChunk, signal))
          .then(
            () => {
              idle.push(worker);
            },
            (error: unknown) => {
              failure ??= error;
            },
          )
          .finally(() => running.delete(task));
        running.add(task);
      }
      if (pass > 1 && found === 0) break;
    }
    await Promise.all(running);
    if (failure !== undefined) throw failure;
    return counters;
  } finally {
    crawlConnection.close();
    for (const { conn } of workers) conn.close();
  }
}
