import type { Clock } from '../clock.js';
import { type Backoff, backoffMs } from '../backoff.js';
import { CachewarmError, abortReason } from '../errors.js';
import { MemcachedConnection, Reply, lineEnd, lineText, protocolError } from './connection.js';
import { compareVersions, version } from './commands.js';
import { decodeUriKey } from './keys.js';

/** Waits between looks at a crawler another crawl holds. */
const CRAWLER_BUSY_BACKOFF: Backoff = { baseDelayMs: 100, maxDelayMs: 5_000, random: Math.random };

/**
 * Keys listed by the crawler, with the absolute expiry it saw (unix seconds, 0 for none) and
 * the item's size in memory (which bounds how many values are fetched at once).
 */
export interface KeyBatch {
  readonly keys: Buffer[];
  readonly exptimes: number[];
  readonly sizes: number[];
}

export type CrawlMode = 'hash' | 'all';

/**
 * `metadump hash` walks the hash table, so it cannot miss items that move between LRUs
 * during the walk; before 1.6.19 it held an item lock while writing to the network and could
 * stall the server, so older servers get `all`.
 */
export function crawlModeFor(serverVersion: string): CrawlMode {
  return compareVersions(serverVersion, '1.6.19') >= 0 ? 'hash' : 'all';
}

type DumpEnd = 'done' | 'busy';

const LF = 0x0a;

/** The integer at `at` (digits), -1 when it is negative (`exp=-1`: no expiry). */
function decimalAt(buf: Buffer, at: number): number {
  if (buf[at] === 0x2d) return -1;
  let n = 0;
  for (let d = buf[at] as number; d >= 0x30 && d <= 0x39; d = buf[++at] as number) n = n * 10 + (d - 0x30);
  return n;
}

const isExpField = (buf: Buffer, i: number): boolean =>
  buf[i + 1] === 0x65 && buf[i + 2] === 0x78 && buf[i + 3] === 0x70 && buf[i + 4] === 0x3d; // "exp="
const isSizeField = (buf: Buffer, i: number): boolean =>
  buf[i + 1] === 0x73 && buf[i + 2] === 0x69 && buf[i + 3] === 0x7a && buf[i + 4] === 0x65 && buf[i + 5] === 0x3d; // "size="

/** Streams `lru_crawler metadump` lines into batches; the reply ends at `END`. */
class MetadumpReply extends Reply<DumpEnd> {
  private started = false;
  keys: Buffer[] = [];
  exptimes: number[] = [];
  sizes: number[] = [];

  constructor(
    private readonly label: string,
    private readonly onLine: () => void,
    private readonly skip: CrawlOptions['skip'],
  ) {
    super();
  }

  read(buf: Buffer, pos: number): number {
    for (;;) {
      // key=<uri-encoded> exp=<abs|-1> la=... ; extra fields are ignored (flags= since 1.6.24).
      if (buf[pos] === 0x6b && buf[pos + 1] === 0x65 && buf[pos + 2] === 0x79 && buf[pos + 3] === 0x3d) {
        const end = this.parseKeyLine(buf, pos);
        if (end < 0) return pos;
        this.started = true;
        pos = end;
        this.onLine();
        continue;
      }
      const end = lineEnd(buf, pos);
      if (end < 0) return pos;
      const line = lineText(buf, pos, end);
      pos = end;
      if (line === 'END') {
        this.finish('done');
        return pos;
      }
      if (line === 'OK' && !this.started) continue; // ≥ 1.6.43 acknowledges the command first
      if (!this.started && (line.startsWith('BUSY') || /^ERROR.*locked/.test(line))) {
        this.finish('busy');
        return pos;
      }
      throw protocolError(this.label, 'unexpected line from lru_crawler metadump', line);
    }
  }

  /**
   * Takes the key, `exp=` and `size=` of the `key=` line at `pos`; returns the index past its
   * `\n`, or -1 (nothing taken) when the line is not all there yet. One pass over the bytes
   * here: this runs for every item of a node, twice a warm (the dump and the verify).
   */
  private parseKeyLine(buf: Buffer, pos: number): number {
    const keyStart = pos + 4;
    const length = buf.length;
    let i = keyStart;
    while (i < length && buf[i] !== 0x20 && buf[i] !== LF) i++;
    const keyEnd = i;
    let exp = -1;
    let size = -1;
    let sawExp = false;
    let sawSize = false;
    for (; i < length; i++) {
      const b = buf[i];
      if (b === LF) break;
      if (b !== 0x20) continue;
      if (!sawExp && isExpField(buf, i)) {
        sawExp = true;
        exp = decimalAt(buf, i + 5);
      } else if (!sawSize && isSizeField(buf, i)) {
        sawSize = true;
        size = decimalAt(buf, i + 6);
      }
    }
    if (i >= length) return -1;
    const end = i + 1;
    if (this.skip?.(buf, keyStart, keyEnd)) return end;
    let key: Buffer;
    try {
      key = decodeUriKey(buf, keyStart, keyEnd);
    } catch (error) {
      throw protocolError(this.label, `undecodable key (${(error as Error).message})`, lineText(buf, pos, end));
    }
    this.keys.push(key);
    this.exptimes.push(exp > 0 ? exp : 0); // -1: no expiry
    this.sizes.push(Math.max(0, size));
    return end;
  }
}

export interface CrawlOptions {
  /** Keys per batch handed to the caller. */
  readonly batchKeys: number;
  readonly clock: Clock;
  readonly signal?: AbortSignal | undefined;
  /** Forces a mode; by default chosen from the server's version. */
  readonly mode?: CrawlMode | undefined;
  /** How long to keep retrying while another crawl holds the crawler. */
  readonly busyRetryMs?: number | undefined;
  /**
   * Keys for which this returns true (given the line's bytes and where the key lies in them,
   * still percent-encoded as the crawler writes it) are passed over before they are decoded:
   * a later pass's keys already listed cost no allocation.
   */
  readonly skip?: ((line: Buffer, keyStart: number, keyEnd: number) => boolean) | undefined;
}

/**
 * Lists every key of one node with the LRU crawler. The connection must carry nothing else
 * while the dump runs (memcached requires it). Batches are yielded as they fill; while the
 * caller is behind, reading from the socket stops, so memory stays at about two batches
 * and the crawler waits instead of the caller buffering the whole key space.
 * The walk is live: a key may be listed twice, and items may expire or go before they are read.
 */
export async function* crawlKeys(conn: MemcachedConnection, options: CrawlOptions): AsyncGenerator<KeyBatch> {
  const { batchKeys, clock, signal, busyRetryMs = 60_000 } = options;
  const mode = options.mode ?? crawlModeFor(await version(conn));
  const giveUpAt = clock.now() + busyRetryMs;
  for (let attempt = 0; ; attempt++) {
    if (signal?.aborted) throw abortReason(signal);
    let wake: (() => void) | undefined;
    const reply = new MetadumpReply(
      conn.label,
      () => {
        if (reply.keys.length >= batchKeys) {
          conn.pause();
          wake?.();
        }
      },
      options.skip,
    );
    const onAbort = (): void => conn.destroy(abortReason(signal as AbortSignal));
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      let finished: DumpEnd | undefined;
      void reply.promise.then(
        (end) => {
          finished = end;
          wake?.();
        },
        () => wake?.(),
      );
      await conn.enqueue(Buffer.from(`lru_crawler metadump ${mode}\r\n`), reply);
      for (;;) {
        if (reply.keys.length < batchKeys && finished === undefined) {
          await new Promise<void>((resolve) => {
            wake = resolve;
            // The reply may have progressed between the check and here.
            if (reply.keys.length >= batchKeys || reply.done) resolve();
          });
          wake = undefined;
        }
        if (reply.done && finished === undefined) await reply.promise; // rethrows the failure
        if (reply.keys.length > 0 && (reply.keys.length >= batchKeys || finished !== undefined)) {
          let batch: KeyBatch;
          if (reply.keys.length <= batchKeys) {
            batch = { keys: reply.keys, exptimes: reply.exptimes, sizes: reply.sizes };
            reply.keys = [];
            reply.exptimes = [];
            reply.sizes = [];
          } else {
            // One socket read can carry many more lines than the batch still had room for.
            batch = {
              keys: reply.keys.splice(0, batchKeys),
              exptimes: reply.exptimes.splice(0, batchKeys),
              sizes: reply.sizes.splice(0, batchKeys),
            };
          }
          yield batch;
          if (reply.keys.length < batchKeys) conn.resume();
        }
        if (finished !== undefined && reply.keys.length === 0) break;
      }
      if (finished === 'done') return;
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
    // BUSY: another crawl (ours or an operator's) holds the crawler. Back off with jitter.
    if (clock.now() >= giveUpAt) {
      throw new CachewarmError('NODE_PROTOCOL', `${conn.label}: the LRU crawler stayed busy for ${busyRetryMs} ms`, {
        node: conn.label,
      });
    }
    await clock.sleep(backoffMs(CRAWLER_BUSY_BACKOFF, attempt + 1), signal);
  }
}
