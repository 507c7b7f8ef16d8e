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
  test('an `all` walk that listed every key is not repeated, even when the table of keys listed is far too small for them', async () => {
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
          // A table of 1 KiB for 5,000 keys: most are not remembered, none is taken for another.
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

  test('a walk that came up short is walked again, and the second pass yields only the keys the first did not list', async () => {
    await withCluster(
      { a: 1 },
      async (cluster) => {
        const node = cluster.servers['a']?.[0];
        assert.ok(node);
        const first = sampleItems({ count: 3_000, valueBytes: 10, nowSeconds: nowSeconds(), seed: 'first' });
        const later = sampleItems({ count: 500, valueBytes: 10, nowSeconds: nowSeconds(), seed: 'later' });
        await loadNode(node, first);
        const crawlsBefore = Number((await statsAt(node)).get('lru_crawler_starts'));
        const conn = await MemcachedConnection.connect(node);
        const counters = newDumpCounters();
        const batches: string[][] = [];
        try {
          // One batch a pass (batchKeys above the node's count): keys written once the first
          // pass has ended are ones it cannot have listed, and the node then holds more.
          for await (const batch of listKeys(conn, { batchKeys: 10_000, clock: systemClock, counters, mode: 'all' })) {
            batches.push(batch.keys.map((k) => k.toString('latin1')));
            if (batches.length === 1) await loadNode(node, later);
          }
        } finally {
          conn.close();
        }
        assert.equal(Number((await statsAt(node)).get('lru_crawler_starts')) - crawlsBefore, 2, 'crawls the listing started');
        assert.deepEqual(batches.map((b) => b.length), [first.length, later.length]);
        assert.deepEqual(new Set(batches[1]), new Set(later.map((i) => i.key.toString('latin1'))), 'the second pass: exactly the later keys');
        assert.deepEqual({ listed: counters.listed, caughtUp: counters.caughtUp }, { listed: first.length + later.length, caughtUp: later.length });
      },
      { extraArgs: ['-o', 'no_lru_maintainer'] },
    );
  });
});

describe('the keys a pass already listed (SeenKeys)', () => {
  test('takes no new key for one already listed, and knows every key it was given', () => {
    const keys = Array.from({ length: 300_000 }, (_, i) => Buffer.from(`user:${i}:profile`));
    const seen = new SeenKeys(keys.length * 1.2, 64 << 20);
    assert.equal(keys.filter((key) => seen.add(key)).length, 0, 'new keys taken for listed ones');
    assert.equal(keys.filter((key) => !seen.add(key)).length, 0, 'listed keys taken for new ones');
  });

  test('when full, forgets further keys (a later pass lists them again) rather than taking them for listed ones', () => {
    const seen = new SeenKeys(1_000_000, 1_024); // the least: 1,024 slots
    const keys = Array.from({ length: 1_000 }, (_, i) => Buffer.from(`key:${i}`));
    assert.equal(keys.filter((key) => seen.add(key)).length, 0);
    assert.equal(keys.filter((key) => seen.add(key)).length, 768, 'three quarters of 1,024 slots remembered');
  });
});
