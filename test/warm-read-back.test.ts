import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { warmReplica } from '../controller/warm-replica.js';
import { MetaNodeWriter } from '../populator/meta-node-writer.js';
import type { NodeWriter } from '../populator/node-writer.js';
import { systemClock } from '../shared/clock.js';
import { KeySample, type NodeSample, mergeSamples } from '../shared/key-sample.js';
import { sampleOfStatus } from '../dumper/sidecar-api.js';
import { connectDirect } from '../shared/memcached/connect.js';
import { type WritableItem, type WrittenItem, newAddOutcome } from '../shared/memcached/meta-add.js';
import { sampleItems } from '../shared/sample-items.js';
import { crawlsStarted, load, nowSeconds, withCluster } from './support/cluster.js';

const workDir = (): Promise<string> => mkdtemp(path.join(os.tmpdir(), 'cachewarm-test-'));

// The LRU maintainer schedules crawls of its own: without it, every crawl a node starts is the warm's.
const ONLY_OUR_CRAWLS = { extraArgs: ['-o', 'no_lru_maintainer'] };


/** A target that acknowledges every write and keeps only some: what the read-back is there to catch. */
function losingWriter(loses: (item: WritableItem) => boolean): NodeWriter & { lost: number } {
  const real = new MetaNodeWriter({ connect: connectDirect, clock: systemClock });
  const writer = {
    lost: 0,
    probe: (address: string, signal?: AbortSignal) => real.probe(address, signal),
    close: () => real.close(),
    deleteUnchanged: (address: string, items: readonly WrittenItem[], signal?: AbortSignal) => real.deleteUnchanged(address, items, signal),
    async addItems(address: string, items: readonly WritableItem[], onOutcome: Parameters<NodeWriter['addItems']>[2], signal?: AbortSignal, withCas?: boolean): Promise<void> {
      const dropped = items.filter(loses);
      writer.lost += dropped.length;
      // Acknowledged as a real add would be, with a CAS when asked for one.
      const written = withCas ? { written: dropped.map((i) => ({ key: i.key, cas: 1 })) } : {};
      onOutcome({ ...newAddOutcome(), stored: dropped.length, ...written }, dropped.reduce((sum, i) => sum + i.value.length, 0));
      await real.addItems(address, items.filter((i) => !loses(i)), onOutcome, signal, withCas);
    },
  };
  return writer;
}

describe('the read-back at the end of a warm', () => {
  test('checks a sample of the keys the dump listed: each source node is crawled once per warm, not twice', async () => {
    await withCluster(
      { a: 2, b: 2 },
      async (cluster) => {
        const items = sampleItems({ count: 10_000, valueBytes: 100, nowSeconds: nowSeconds() });
        await load(cluster.topology, 'a', items);
        const before = await crawlsStarted(cluster.servers['a'] ?? []);

        const summary = await warmReplica({ topology: cluster.topology, target: 'b', workDir: await workDir(), chunkSizeBytes: 1 << 20, clock: systemClock, verifySamplePerNode: 2_000 });

        assert.equal(summary.complete, true, (summary.problems ?? []).join('; '));
        assert.deepEqual({ checked: summary.verification?.checked, identical: summary.verification?.identical }, { checked: 4_000, identical: 4_000 });
        const after = await crawlsStarted(cluster.servers['a'] ?? []);
        assert.deepEqual(after.map((n, i) => n - (before[i] as number)), [1, 1], 'crawls started on each source node');
      },
      ONLY_OUR_CRAWLS,
    );
  });

  test('a target that acknowledges writes it then lacks fails the warm: the sample finds exactly the keys it lost', async () => {
    await withCluster({ a: 2, b: 2 }, async (cluster) => {
      const items = sampleItems({ count: 5_000, valueBytes: 100, nowSeconds: nowSeconds() });
      await load(cluster.topology, 'a', items);
      const writer = losingWriter((item) => item.key[item.key.length - 1] === 0x37); // keys ending in "7"

      // A sample as large as the source: every key listed is checked.
      const summary = await warmReplica({ topology: cluster.topology, target: 'b', workDir: await workDir(), chunkSizeBytes: 1 << 20, clock: systemClock, writer, verifySamplePerNode: 10_000 });

      assert.ok(writer.lost > 0);
      assert.equal(summary.complete, false);
      assert.deepEqual({ checked: summary.verification?.checked, missing: summary.verification?.missing }, { checked: items.length, missing: writer.lost }, (summary.problems ?? []).join('; '));
      assert.ok((summary.problems ?? []).some((p) => p.includes(`${writer.lost}`)), (summary.problems ?? []).join('; '));
    });
  });
});

describe('a sample of listed keys (KeySample)', () => {
  test('holds at most its capacity, each key kept with the same chance wherever it came in the listing', () => {
    const keys = Array.from({ length: 2_000 }, (_, i) => Buffer.from(`key:${i}`));
    const kept = new Array<number>(keys.length).fill(0);
    for (let round = 0; round < 500; round++) {
      const sample = new KeySample(200);
      for (let at = 0; at < keys.length; at += 100) {
        const batch = keys.slice(at, at + 100);
        sample.offer({ keys: batch, exptimes: batch.map(() => 0), sizes: batch.map(() => 1) }, 'a/n1');
      }
      assert.equal(sample.keys.length, 200);
      assert.equal(sample.listed, keys.length);
      for (const { key } of sample.keys) kept[Number(key.toString().slice(4))] = (kept[Number(key.toString().slice(4))] ?? 0) + 1;
    }
    // Each key's chance is 200 / 2,000 = 0.1: over 500 rounds, 50 expected per key. The first,
    // middle and last tenths of the listing each average that within 10 %.
    for (const tenth of [0, 5, 9]) {
      const slice = kept.slice(tenth * 200, tenth * 200 + 200);
      const mean = slice.reduce((a, b) => a + b, 0) / slice.length;
      assert.ok(Math.abs(mean - 50) < 5, `tenth ${tenth}: mean ${mean}`);
    }
  });
});

describe('samples of several nodes merged (mergeSamples)', () => {
  const sampleOf = (node: string, listed: number, size: number): NodeSample => ({
    listed,
    keys: Array.from({ length: size }, (_, i) => ({ key: Buffer.from(`${node}:${i}`), exptime: 0, sizeBytes: 60, source: node })),
  });

  test('each node gives keys in proportion to what it listed, not to the size of its sample', () => {
    const merged = mergeSamples([sampleOf('a/n1', 90_000, 1_000), sampleOf('a/n2', 10_000, 1_000)], 1_000);
    assert.equal(merged.length, 1_000);
    assert.equal(merged.filter((k) => k.source === 'a/n1').length, 900);
    assert.equal(new Set(merged.map((k) => k.key.toString())).size, 1_000, 'no key twice');
  });

  test('a node with fewer sampled keys than its share gives all it has; nodes that listed nothing give nothing', () => {
    const merged = mergeSamples([sampleOf('a/n1', 500, 10), sampleOf('a/n2', 500, 1_000), sampleOf('a/n3', 0, 0)], 1_000);
    assert.deepEqual([merged.filter((k) => k.source === 'a/n1').length, merged.filter((k) => k.source === 'a/n2').length], [10, 500]);
    assert.deepEqual(mergeSamples([sampleOf('a/n3', 0, 0)], 1_000), []);
  });
});

describe("a sidecar's sample as its status carries it (sampleOfStatus)", () => {
  const good = { listed: 10, keys: [{ key: Buffer.from('user:1').toString('base64'), exptime: 1_900_000_000, sizeBytes: 80 }] };

  test('a well-formed sample is read as keys of the node it came from', () => {
    assert.deepEqual(sampleOfStatus(good, 'a/n1'), { listed: 10, keys: [{ key: Buffer.from('user:1'), exptime: 1_900_000_000, sizeBytes: 80, source: 'a/n1' }] });
  });

  test('anything malformed is not used (the read-back lists the source again): no trust in a sample that cannot be right', () => {
    const entry = good.keys[0] as (typeof good.keys)[number];
    for (const bad of [
      undefined,
      { ...good, listed: -1 },
      { ...good, listed: 0 }, // more keys than were listed
      { ...good, keys: 'user:1' },
      { ...good, keys: [{ ...entry, key: '' }] },
      { ...good, keys: [{ ...entry, key: 'not base64!' }] },
      { ...good, keys: [{ ...entry, key: Buffer.alloc(251, 0x61).toString('base64') }] },
      { ...good, keys: [{ ...entry, exptime: -5 }] },
      { ...good, keys: [{ ...entry, sizeBytes: 1.5 }] },
    ]) {
      assert.equal(sampleOfStatus(bad, 'a/n1'), undefined, JSON.stringify(bad));
    }
  });
});
