import type { BufferPool } from '../shared/buffer-pool.js';
import { ChunkBuilder } from '../shared/chunk-format.js';
import type { Clock } from '../shared/clock.js';
import type { DumpCounters } from '../shared/counters.js';
import { EXPIRY_SLACK_SECONDS, type ServerClock, absoluteExpiryBetween } from '../shared/expiry.js';
import type { MemcachedConnection } from '../shared/memcached/connection.js';
import type { KeyBatch } from '../shared/memcached/crawler.js';
import { type FetchSink, MetaGetReplies, buildMetaGets } from '../shared/memcached/meta-get.js';
import type { RateLimiter } from '../shared/token-bucket.js';

export interface FetchValuesOptions {
  readonly builder: ChunkBuilder;
  readonly pool: BufferPool;
  readonly clock: Clock;
  readonly counters: DumpCounters;
  readonly rateLimiter: RateLimiter;
  /** The source node's clock, learnt from the items read (shared by every reader of the node). */
  readonly serverClock: ServerClock;
  /** Values requested in one pipelined batch, bounded by the sizes the crawler reported. */
  readonly batchBytes: number;
  /** Called with each data chunk as it fills, and with the last one; the chunk is the callee's. */
  readonly onChunk: (chunk: Buffer) => Promise<void>;
  readonly signal?: AbortSignal | undefined;
}

const BATCH_MAX_KEYS = 1_000;
/** mg batches in flight: one being answered while the next is on the wire. */
const WINDOW = 2;

/**
 * Reads the values of a batch of keys (value, client flags, remaining TTL; `u` so the source's
 * LRU is left as it was) with pipelined `mg`, into data chunks. An item gone or expired since
 * the crawl is counted and skipped.
 */
export async function fetchValues(conn: MemcachedConnection, batch: KeyBatch, options: FetchValuesOptions): Promise<void> {
  const { builder, pool, counters, rateLimiter, serverClock, signal } = options;
  const { keys, exptimes, sizes } = batch;
  const sealed: Buffer[] = [];
  const flush = async (): Promise<void> => {
    for (const chunk of sealed.splice(0)) await options.onChunk(chunk);
  };
  const window: Promise<void>[] = [];
  for (let start = 0; start < keys.length; ) {
    const maxKeys = Math.min(BATCH_MAX_KEYS, rateLimiter.batchKeys ?? BATCH_MAX_KEYS);
    let end = start;
    let bytes = 0;
    while (end < keys.length && end - start < maxKeys && (end === start || bytes + (sizes[end] as number) <= options.batchBytes)) {
      bytes += sizes[end] as number;
      end++;
    }
    await rateLimiter.take(end - start, signal);
    const base = start;
    const now = Math.floor(options.clock.now() / 1000);
    // The value is copied straight from the connection's buffer into the chunk.
    const hitAt = (index: number, buf: Buffer, valueStart: number, valueEnd: number, flags: number, ttlSeconds: number): void => {
      const key = keys[base + index] as Buffer;
      const crawled = exptimes[base + index] as number;
      const answered = Math.floor(options.clock.now() / 1000);
      // Learnt only from a batch answered within the second it was sent: one the server sat
      // on (a stall, a pause) would teach an offset as wrong as the wait was long, and move
      // later expiries by it.
      if (answered === now) serverClock.observe(crawled, ttlSeconds, now);
      const exptime = absoluteExpiryBetween(
        ttlSeconds,
        crawled,
        serverClock.nowSeconds(now),
        serverClock.nowSeconds(answered),
        EXPIRY_SLACK_SECONDS,
      );
      if (exptime === undefined) {
        counters.expired++;
        return;
      }
      const valueBytes = valueEnd - valueStart;
      if (!builder.fits(ChunkBuilder.dataRecordBytes(key, valueBytes))) sealed.push(builder.seal());
      builder.addDataFrom(key, buf, valueStart, valueEnd, flags, exptime);
      counters.read++;
      counters.bytesRead += valueBytes;
    };
    const sink: FetchSink = {
      hit: (index, value, flags, ttlSeconds) => hitAt(index, value, 0, value.length, flags, ttlSeconds),
      hitAt,
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
    if (window.length >= WINDOW) {
      await window.shift();
      await flush();
    }
    start = end;
  }
  await Promise.all(window);
  if (builder.itemCount > 0) sealed.push(builder.seal());
  await flush();
}
