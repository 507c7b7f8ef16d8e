/**
 * Which crawler settings hurt a source node's live clients least: one node holding the
 * items, a live client on it, and a key listing (`lru_crawler metadump`, read as the dumper
 * reads it) under each setting in turn. The listing alone, without the reads that follow it:
 * what the crawl costs the node's clients, apart from what the dump's `mg` batches do.
 */
import { listKeys } from '../dumper/list-keys.js';
import { systemClock } from '../shared/clock.js';
import { newDumpCounters } from '../shared/counters.js';
import { type MemcachedProcess } from '../shared/local-memcached.js';
import { OneLine } from '../shared/memcached/commands.js';
import { MemcachedConnection } from '../shared/memcached/connection.js';
import type { CrawlMode } from '../shared/memcached/crawler.js';
import type { LatencySummary, LiveClient } from './live-client.js';

export interface CrawlSetting {
  readonly label: string;
  readonly mode: CrawlMode;
  /** `lru_crawler sleep <µs>`: the crawler's pause every so many items (memcached's default 100). */
  readonly sleepMicros: number;
}

export const CRAWL_SETTINGS: readonly CrawlSetting[] = [
  { label: 'metadump all, sleep 100 µs (default)', mode: 'all', sleepMicros: 100 },
  { label: 'metadump all, sleep 0', mode: 'all', sleepMicros: 0 },
  { label: 'metadump all, sleep 1000 µs', mode: 'all', sleepMicros: 1000 },
  { label: 'metadump hash, sleep 100 µs', mode: 'hash', sleepMicros: 100 },
];

export interface CrawlHarm {
  readonly setting: CrawlSetting;
  /** Whole listings made: as many as fit in the measuring time, so a small node still gives samples. */
  readonly listings: number;
  readonly keysPerSecond: number;
  readonly latency: LatencySummary;
}

/** Listings are repeated for at least this long per setting. */
const MEASURE_SECONDS = 5;

async function command(conn: MemcachedConnection, text: string): Promise<void> {
  const reply = await conn.send(Buffer.from(`${text}\r\n`), new OneLine());
  if (reply !== 'OK') throw new Error(`${text}: ${reply}`);
}

/** Lists every key of `node` under each setting (repeatedly, see MEASURE_SECONDS), with `client` timing its round trips meanwhile. */
export async function crawlHarm(node: MemcachedProcess, client: LiveClient, settings: readonly CrawlSetting[] = CRAWL_SETTINGS): Promise<CrawlHarm[]> {
  const rows: CrawlHarm[] = [];
  for (const setting of settings) {
    const conn = await MemcachedConnection.connect(node);
    try {
      await command(conn, `lru_crawler sleep ${setting.sleepMicros}`);
      await new Promise((r) => setTimeout(r, 1_000));
      await client.take();
      const started = performance.now();
      let keys = 0;
      let listings = 0;
      const seconds = (): number => (performance.now() - started) / 1000;
      while (seconds() < MEASURE_SECONDS) {
        for await (const batch of listKeys(conn, { batchKeys: 20_000, clock: systemClock, counters: newDumpCounters(), mode: setting.mode, passes: 1 })) {
          keys += batch.keys.length;
        }
        listings++;
      }
      rows.push({ setting, listings, keysPerSecond: keys / seconds(), latency: await client.take() });
      await command(conn, 'lru_crawler sleep 100');
    } finally {
      conn.close();
    }
  }
  return rows;
}
