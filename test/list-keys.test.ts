import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { listKeys } from '../dumper/list-keys.js';
import { systemClock } from '../shared/clock.js';
import { newDumpCounters } from '../shared/counters.js';
import { statsAt } from '../shared/memcached/commands.js';
import { MemcachedConnection } from '../shared/memcached/connection.js';
import { sampleItems } from '../shared/sample-items.js';
import { SeenKeys } from '../shared/seen-keys.js';
import { loadNode, nowSeconds, withCluster } from './support/cluster.js';

describe('listing the keys of a node', () => {
  test('an `all` walk that listed every key is not repeated, however many keys the filter of listed keys mistakes for repeats', async () => {
    // Without the LRU maintainer, every crawl the node starts is the listing's.
    await withCluster(
      { a: 1 },
      async (cluster) => {
        const node = cluster.servers['a']?.[0];
        assert.ok(node);
        const items = sampleItems({ count: 5_000, valueBytes: 10, nowSeconds: nowSeconds() });
        await loadNode(node, items);
        const crawlsBefore = Number((await statsAt(node)).get('lru_crawler_starts'));
        const conn = await MemcachedConnection.connect(node);
        const counters = newDumpCounters();
        let listed = 0;
        try {
          // A filter of 1 KiB for 5,000 keys takes most of them for keys it has seen.
          for await (const batch of listKeys(conn, { batchKeys: 1_000, clock: systemClock, counters, mode: 'all', seenKeysMaxBytes: 1_024 })) listed += batch.keys.length;
        } finally {
          conn.close();
        }
        assert.equal(listed, items.length);
        assert.equal(counters.caughtUp, 0);
        assert.equal(Number((await statsAt(node)).get('lru_crawler_starts')) - crawlsBefore, 1, 'crawls the listing started');
      },
      { extraArgs: ['-o', 'no_lru_maintainer'] },
    );
  });
});

describe('the filter of keys already listed (SeenKeys)', () => {
  test('its false positives stay within the bound it gives, at any size', () => {
    for (const [keys, bytes] of [
      [5_000, 1 << 20],
      [300_000, 64 << 20],
      [50_000, 16 << 10], // capped far below its 2 bytes a key
    ] as const) {
      const seen = new SeenKeys(keys, bytes);
      let falsePositives = 0;
      for (let i = 0; i < keys; i++) if (seen.add(Buffer.from(`key:${i}:${keys}`))) falsePositives++;
      assert.ok(falsePositives <= seen.falsePositiveBound(), `${keys} keys in ${bytes} bytes: ${falsePositives} false positives, bound ${seen.falsePositiveBound()}`);
      assert.ok(seen.falsePositiveBound() < keys, 'a bound that says something');
    }
  });
});
