import { randomBytes } from 'node:crypto';
import pLimit from 'p-limit';
import type { ChunkLocation, ChunkMessage, TargetRing } from '../shared/chunk-message.js';
import type { ChunkQueue } from '../shared/chunk-queue.js';
import type { ChunkStore } from '../shared/chunk-store.js';
import { BufferPool } from '../shared/buffer-pool.js';
import { ChunkBuilder, type KeyItem, chunkHeader, decodeKeyChunk } from '../shared/chunk-format.js';
import type { Clock } from '../shared/clock.js';
import { type DumpCounters, newDumpCounters } from '../shared/counters.js';
import { type EndMarker, LAYOUT_VERSION, crawlDoneName, endMarkerName, getJson, nodePrefix, putJson } from '../shared/job-layout.js';
import type { MemcachedConnection, Endpoint } from '../shared/memcached/connection.js';
import { type Connect, connectDirect } from '../shared/memcached/connect.js';
import type { CrawlMode, KeyBatch } from '../shared/memcached/crawler.js';
import type { HandOffStore } from '../shared/store/hand-off-store.js';
import { type RateLimiter, unlimited } from '../shared/token-bucket.js';
import { ServerClock } from '../shared/expiry.js';
import { fetchValues } from './fetch-values.js';
import type { ReadPace } from './read-pace.js';
import { listKeys } from './list-keys.js';

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
  /** Items per second read from this node (when there is no readPace). */
  readonly rateLimiter?: RateLimiter;
  /**
   * Paces the reads instead of rateLimiter (a source guard: see read-pace.ts). Started once
   * there is something to read, before the crawl, so a node whose dump had finished is not
   * even probed; closed when the dump ends.
   */
  readonly readPace?: (() => Promise<ReadPace>) | undefined;
  /** Bytes per second uploaded to the store (the node's network is shared with live traffic). */
  readonly uploadLimiter?: RateLimiter;
  /**
   * Whether announced messages outlive this process (SQS). When not (the in-process queue), a
   * resumed dump announces again the data chunks an earlier run left in the store.
   */
  readonly durableQueue?: boolean;
  /**
   * On a durable queue that many jobs share (a standing queue), which of the data chunks an
   * earlier, unfinished run stored to announce again: those no populator has marked yet. A
   * chunk stored but never announced (the run died between the two) would otherwise hold the
   * job forever; one whose message is still on the queue is written twice, add-only.
   */
  readonly unmarkedOf?: ((stored: readonly string[], signal?: AbortSignal) => Promise<readonly string[]>) | undefined;
  /**
   * Populators in this process take data chunks from here instead of the store (the embedded
   * default): a key chunk is then removed only once every data chunk made from it was written.
   */
  readonly handOff?: HandOffStore | undefined;
  /** The bucket and prefix the store puts chunks under, told to populators in every message. */
  readonly location?: ChunkLocation | undefined;
  /** Only keys for which this returns true are copied (an instance warm's ring filter). */
  readonly keyFilter?: ((key: Buffer) => boolean) | undefined;
  readonly crawlMode?: CrawlMode | undefined;
  /** Most crawl passes: see ListKeysOptions.passes. */
  readonly crawlPasses?: number;
  /** Memory for remembering the keys already listed (8 bytes a key; see SeenKeys). */
  readonly seenKeysMaxBytes?: number;
  readonly counters?: DumpCounters;
  /** Where chunk and command buffers come from and go back to. */
  readonly pool?: BufferPool;
  readonly onDataChunk?: (message: ChunkMessage) => void;
  /** Every batch of keys this run's crawl lists, after the key filter (a resumed dump whose crawl had finished lists none). */
  readonly onListed?: ((batch: KeyBatch) => void) | undefined;
  /** This run's crawl listed the node to the end. */
  readonly onCrawled?: (() => void) | undefined;
  readonly signal?: AbortSignal | undefined;
}

const pad = (n: number, width: number): string => String(n).padStart(width, '0');
const KEY_CHUNK = /\/keys-(\d+)\.chunk$/;
const DATA_CHUNK = /\/data-[^/]+\.chunk$/;

function keyBatchOf(items: readonly KeyItem[]): KeyBatch {
  return { keys: items.map((i) => i.key), exptimes: items.map((i) => i.exptime), sizes: items.map((i) => i.sizeBytes) };
}

/**
 * Dumps one source node: crawls its keys into key chunks, reads their values (without
 * bumping them in the LRU) into data chunks of about `chunkSizeBytes`, stores each data chunk
 * and announces it on the queue, and last writes the node's end marker. The crawl and the
 * reads overlap; the queue's bound pushes back on the reads.
 *
 * Resumable: what is in the store says what is left. A key chunk is removed once every data
 * chunk made from it is stored and announced (or, handed off, written), the crawl leaves
 * `keys-done.json` when it finished, and the end marker says the node is done. A rerun of
 * the same job (a restarted sidecar or controller) reads the key chunks still there instead
 * of crawling again; only when the crawl itself was cut short does it list the node again.
 * Work redone this way is written add-only, so it is harmless; data chunks get a new run tag
 * in their names, so a message of the earlier run never finds its chunk replaced.
 *
 * Memory is bounded by configuration, not by the node's size: about
 * fetchConcurrency × (chunkSizeBytes × 2 + 2 × fetchBatchBytes) plus 2 × fetchConcurrency
 * key chunks (keysPerChunk keys each); data chunks handed off are held by the hand-off
 * until written.
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
    uploadLimiter = unlimited,
    handOff,
    keyFilter,
    signal,
  } = options;
  const counters = options.counters ?? newDumpCounters();
  const pool = options.pool ?? new BufferPool();
  const directory = nodePrefix(jobId, node.id);

  const stored = await store.list(`${directory}/`, signal);
  const ended = stored.includes(endMarkerName(jobId, node.id))
    ? await getJson<EndMarker>(store, endMarkerName(jobId, node.id), signal)
    : undefined;
  const crawlDone = stored.includes(crawlDoneName(jobId, node.id));
  const keyChunks = stored.filter((name) => KEY_CHUNK.test(name));
  // Names this run's data chunks apart from those of an interrupted run.
  const run = randomBytes(3).toString('hex');

  /** Announces a stored chunk; `chunk` is read here only, before any await (the caller may release it then). */
  async function announce(name: string, chunk: Buffer): Promise<void> {
    const message: ChunkMessage = {
      version: 2,
      jobId,
      source: node.id,
      ...(options.location && { store: options.location }),
      chunk: { name, bytes: chunk.length, ...chunkHeader(chunk) },
      target,
    };
    await queue.send(message, signal);
    counters.dataChunks++;
    options.onDataChunk?.(message);
  }

  async function emit(name: string, chunk: Buffer): Promise<void> {
    if (handOff) {
      handOff.hold(name, chunk);
      await announce(name, chunk);
      return;
    }
    await uploadLimiter.take(chunk.length, signal);
    await store.put(name, chunk, signal);
    const announced = announce(name, chunk);
    pool.release(chunk);
    await announced;
  }

  // An in-process queue lost its messages with the process that ran it: announce again what
  // an earlier run stored (SQS kept them), even for a node whose dump had finished: its last
  // chunks may not have been written when that process stopped. On a standing queue, what no
  // populator marked of an unfinished run's chunks (a finished run announced all of its own,
  // and a resumed one announced its predecessors' first).
  const earlier = stored.filter((n) => DATA_CHUNK.test(n));
  const again = !options.durableQueue ? earlier : options.unmarkedOf && !ended ? await options.unmarkedOf(earlier, signal) : [];
  for (const name of again) {
    const chunk = await store.get(name, { signal, into: pool });
    const announced = announce(name, chunk);
    pool.release(chunk);
    await announced;
  }
  if (ended) return Object.assign(counters, ended.counters);

  // Key chunks are read in parallel, each on a connection of its own. The crawl runs ahead
  // of the reads: its batches go to the store and are read back when a reader gets to them,
  // so the crawl finishes early (a paused crawl holds memcached's only crawler, and a
  // finished one is what lets a restarted dump resume without listing again). Only the
  // batches a reader is about to take stay in memory.
  const limit = pLimit(fetchConcurrency);
  const serverClock = new ServerClock();
  const readers: { conn: MemcachedConnection; builder: ChunkBuilder }[] = [];
  const reads: Promise<void>[] = [];
  // Key chunks waiting for their handed-off data chunks to be written before they go.
  const removals: Promise<void>[] = [];
  let failure: { error: unknown } | undefined;
  // Reads still queued then return at once (p-limit's clearQueue would leave them unsettled).
  const fail = (error: unknown): void => {
    failure ??= { error };
  };

  function schedule(name: string, batch?: KeyBatch): void {
    const held = batch && limit.pendingCount < fetchConcurrency ? batch : undefined;
    reads.push(limit(() => readKeyChunk(name, held)).catch(fail));
  }

  async function readKeyChunk(name: string, held: KeyBatch | undefined): Promise<void> {
    if (failure) return;
    const reader = readers.pop() as (typeof readers)[number]; // p-limit runs at most one per reader
    try {
      const batch = held ?? keyBatchOf(decodeKeyChunk(await store.get(name, { signal }), store.describe(name)));
      const seq = KEY_CHUNK.exec(name)?.[1] ?? '0';
      const made: string[] = [];
      await fetchValues(reader.conn, batch, {
        builder: reader.builder,
        pool,
        clock,
        counters,
        rateLimiter: limiter,
        serverClock,
        batchBytes: fetchBatchBytes,
        signal,
        onChunk: (chunk) => {
          const dataName = `${directory}/data-${seq}-${run}-${pad(made.length, 3)}.chunk`;
          made.push(dataName);
          return emit(dataName, chunk);
        },
      });
      if (handOff) removals.push(handOff.settled(made, signal).then(() => store.delete(name, signal)).catch(fail));
      else await store.delete(name, signal);
    } finally {
      readers.push(reader);
    }
  }

  async function crawl(conn: MemcachedConnection): Promise<void> {
    let seq = keyChunks.reduce((max, name) => Math.max(max, Number(KEY_CHUNK.exec(name)?.[1]) + 1), 0);
    const batches = listKeys(conn, {
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
      if (failure) return;
      options.onListed?.(batch);
      const name = `${directory}/keys-${pad(seq++, 6)}.chunk`;
      const builder = new ChunkBuilder('keys', batch.keys.length * 64, pool);
      for (let i = 0; i < batch.keys.length; i++) {
        builder.addKey(batch.keys[i] as Buffer, batch.exptimes[i] as number, batch.sizes[i] as number);
      }
      const chunk = builder.seal();
      await store.put(name, chunk, signal);
      pool.release(chunk);
      schedule(name, batch);
    }
    await putJson(store, crawlDoneName(jobId, node.id), { version: LAYOUT_VERSION, keyChunks: seq }, signal);
    options.onCrawled?.();
  }

  const pace = await options.readPace?.();
  const limiter = pace?.limiter ?? options.rateLimiter ?? unlimited;
  const connections: MemcachedConnection[] = [];
  try {
    for (let i = 0; i < fetchConcurrency; i++) {
      const conn = await connect(node, signal);
      connections.push(conn);
      readers.push({ conn, builder: new ChunkBuilder('data', chunkSizeBytes, pool) });
    }
    for (const name of keyChunks) schedule(name);
    if (!crawlDone) {
      const crawlConnection = await connect(node, signal);
      connections.push(crawlConnection);
      await crawl(crawlConnection).catch(fail);
    }
    // Reads scheduled while others ran are awaited too: the array grows until the crawl ends.
    for (let i = 0; i < reads.length; i++) await reads[i];
    await Promise.all(removals);
    if (failure) throw failure.error;
    const marker: EndMarker = {
      version: LAYOUT_VERSION,
      jobId,
      source: node.id,
      dataChunks: counters.dataChunks,
      counters: { ...counters },
      finishedAt: new Date(clock.now()).toISOString(),
    };
    await putJson(store, endMarkerName(jobId, node.id), marker, signal);
    return counters;
  } finally {
    for (const conn of connections) conn.close();
    await pace?.close();
  }
}
