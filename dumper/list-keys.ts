import type { Clock } from '../shared/clock.js';
import type { DumpCounters } from '../shared/counters.js';
import { hasExpired } from '../shared/expiry.js';
import type { MemcachedConnection } from '../shared/memcached/connection.js';
import { stats, version } from '../shared/memcached/commands.js';
import { type CrawlMode, type KeyBatch, crawlKeys, crawlModeFor } from '../shared/memcached/crawler.js';
import { fitsMetaCommand } from '../shared/memcached/keys.js';
import { SeenKeys } from '../shared/seen-keys.js';

export interface ListKeysOptions {
  readonly batchKeys: number;
  readonly clock: Clock;
  readonly counters: DumpCounters;
  /** Forces a crawl mode; by default chosen from the server's version. */
  readonly mode?: CrawlMode | undefined;
  /**
   * Most crawl passes. `metadump all` walks the LRUs and misses items that move between them
   * during the walk (a freshly written item moving from HOT to COLD, say), so in that mode,
   * when a pass listed fewer distinct keys than the node held, another pass lists the keys
   * again and yields those not seen before. Default: 2 in `all` mode, 1 in `hash` mode, which
   * walks the hash table and misses nothing.
   */
  readonly passes?: number | undefined;
  /** Memory for remembering the keys already listed (8 bytes a key; see SeenKeys). */
  readonly seenKeysMaxBytes?: number | undefined;
  /** Only keys for which this returns true are yielded (an instance warm's ring filter). */
  readonly keyFilter?: ((key: Buffer) => boolean) | undefined;
  readonly signal?: AbortSignal | undefined;
}

/**
 * The batch less the keys `keep` turns down, `keep` called once per key in order. Most
 * batches keep every key: those are handed on as they are, not copied.
 */
function where(batch: KeyBatch, keep: (key: Buffer, i: number) => boolean): KeyBatch {
  const { keys, exptimes, sizes } = batch;
  let i = 0;
  while (i < keys.length && keep(keys[i] as Buffer, i)) i++;
  if (i === keys.length) return batch;
  const kept: KeyBatch = { keys: keys.slice(0, i), exptimes: exptimes.slice(0, i), sizes: sizes.slice(0, i) };
  for (i++; i < keys.length; i++) {
    if (!keep(keys[i] as Buffer, i)) continue;
    kept.keys.push(keys[i] as Buffer);
    kept.exptimes.push(exptimes[i] as number);
    kept.sizes.push(sizes[i] as number);
  }
  return kept;
}

/**
 * Lists the keys of one node worth copying, in batches: every key the crawler sees, less
 * those it already reports expired and those the filter leaves out, counted as it goes.
 * The connection carries nothing else meanwhile (memcached requires it of a crawl).
 */
export async function* listKeys(conn: MemcachedConnection, options: ListKeysOptions): AsyncGenerator<KeyBatch> {
  const { batchKeys, clock, counters, keyFilter, signal } = options;
  const mode = options.mode ?? crawlModeFor(await version(conn));
  const passes = options.passes ?? (mode === 'all' ? 2 : 1);
  const itemsHeld = async (): Promise<number> => Number((await stats(conn)).get('curr_items') ?? 0);
  const heldBefore = await itemsHeld();
  const seen = passes > 1 ? new SeenKeys(heldBefore * 1.2 + 1_000, options.seenKeysMaxBytes ?? 64 << 20) : undefined;
  let distinct = 0;
  for (let pass = 1; pass <= passes; pass++) {
    // Each further pass costs the node a full walk: only when the last one came up short.
    if (pass > 1 && distinct >= Math.max(heldBefore, await itemsHeld())) return;
    let found = 0;
    // Keys are remembered as the crawler encodes them (one encoding a key): one already listed
    // is passed over before it is decoded, so a further pass costs little but the walk.
    const skip = seen && ((line: Buffer, start: number, end: number) => seen.add(line, start, end));
    for await (const fresh of crawlKeys(conn, { batchKeys, clock, signal, mode, skip })) {
      if (pass > 1) counters.caughtUp += fresh.keys.length;
      distinct += fresh.keys.length;
      counters.listed += fresh.keys.length;
      found += fresh.keys.length;
      const now = Math.floor(clock.now() / 1000);
      const selected = where(fresh, (key, i) => {
        if (hasExpired(fresh.exptimes[i] as number, now)) counters.expired++;
        else if (keyFilter && !keyFilter(key)) counters.filtered++;
        else if (!fitsMetaCommand(key)) counters.unsupported++;
        else return true;
        return false;
      });
      if (selected.keys.length > 0) yield selected;
    }
    if (found === 0) return;
  }
}
