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

const EXP_FIELD = Buffer.from(' exp=');
const SIZE_FIELD = Buffer.from(' size=');

/** The integer after ` name=` in a metadump line, -1 when absent or negative. */
function fieldValue(buf: Buffer, field: Buffer, from: number, end: number): number {
  const at = buf.indexOf(field, from);
  if (at < 0 || at >= end) return -1;
  let i = at + field.length;
  if (buf[i] === 0x2d) return -1;
  let n = 0;
  for (let d = buf[i] as number; d >= 0x30 && d <= 0x39; d = buf[++i] as number) n = n * 10 + (d - 0x30);
  return n;
}

/** Streams `lru_crawler metadump` lines into batches; the reply ends at `END`. */
class MetadumpReply extends Reply<DumpEnd> {
  private started = false;
  keys: Buffer[] = [];
  exptimes: number[] = [];
  sizes: number[] = [];

  constructor(
    private readonly label: string,
    private readonly onLine: () => void,
  ) {
    super();
  }

  read(buf: Buffer, pos: number): number {
    for (;;) {
      const end = lineEnd(buf, pos);
      if (end < 0) return pos;
      // key=<uri-encoded> exp=<abs|-1> la=... ; extra fields are ignored (flags= since 1.6.24).
      if (buf[pos] === 0x6b && buf[pos + 1] === 0x65 && buf[pos + 2] === 0x79 && buf[pos + 3] === 0x3d) {
        this.started = true;
        this.parseKeyLine(buf, pos, end);
        pos = end;
        this.onLine();
        continue;
      }
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

  private parseKeyLine(buf: Buffer, pos: number, end: number): void {
    const keyStart = pos + 4;
    let keyEnd = buf.indexOf(0x20, keyStart);
    if (keyEnd < 0 || keyEnd > end) keyEnd = end - 1;
    let key: Buffer;
    try {
      key = decodeUriKey(buf, keyStart, keyEnd);
    } catch (error) {
      throw protocolError(this.label, `undecodable key (${(error as Error).message})`, lineText(buf, pos, end));
    }
    const exp = fieldValue(buf, EXP_FIELD, keyEnd, end);
    this.keys.push(key);
    this.exptimes.push(exp > 0 ? exp : 0); // -1: no expiry
    this.sizes.push(Math.max(0, fieldValue(buf, SIZE_FIELD, keyEnd, end)));
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
    const reply = new MetadumpReply(conn.label, () => {
      if (reply.keys.length >= batchKeys) {
        conn.pause();
        wake?.();
      }
    });
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
