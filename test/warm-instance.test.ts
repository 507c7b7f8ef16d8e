import assert from 'node:assert/strict';
import { mkdtemp, readdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { warmInstance } from '../controller/warm-instance.js';
import { targetRingOf } from '../controller/warm-plan.js';
import { ringOfTarget } from '../populator/write-to-ring.js';
import { systemClock } from '../shared/clock.js';
import { CachewarmError } from '../shared/errors.js';
import type { WritableItem } from '../shared/memcached/meta-add.js';
import { sampleItems } from '../shared/sample-items.js';
import type { Topology } from '../shared/topology.js';
import { cachewarm, topologyFile, topologyFileOf } from './support/cli.js';
import { countersOf, load, nowSeconds, withCluster } from './support/cluster.js';
import { assertExactCopy } from './support/read-back.js';

const workDir = (): Promise<string> => mkdtemp(path.join(os.tmpdir(), 'cachewarm-instance-'));

/** The items a replica's ring places on the node at `address`. */
function ownedBy(topology: Topology, replica: string, address: string, items: readonly WritableItem[]): WritableItem[] {
  const ring = ringOfTarget(targetRingOf(topology, replica));
  return items.filter((item) => ring.nodeFor(item.key).address === address);
}

const sum = (values: readonly number[]): number => values.reduce((a, b) => a + b, 0);

describe('an instance warm on the embedded default', () => {
  test('fills a restarted node with exactly the keys its ring owns, from another replica, and writes to no other node', async () => {
    await withCluster({ a: 3, b: 3 }, async (cluster) => {
      const items = sampleItems({ count: 30_000, valueBytes: 100, nowSeconds: nowSeconds() });
      await load(cluster.topology, 'a', items);
      await load(cluster.topology, 'b', items);
      const restarted = await cluster.restartEmpty('b', 1);
      const peers = (cluster.servers['b'] ?? []).filter((s) => s !== restarted);
      const peersBefore = await countersOf(peers);

      const summary = await warmInstance({
        topology: cluster.topology,
        node: `b/${restarted.address}`,
        workDir: await workDir(),
        chunkSizeBytes: 256 << 10,
        clock: systemClock,
      });

      assert.equal(summary.complete, true);
      assert.equal(summary.kind, 'instance');
      assert.equal(summary.source, 'a');
      assert.equal(summary.node, `b/${restarted.address}`);
      assert.match(summary.jobId, /^instance-/);
      assert.deepEqual(summary.targetNodes.map((n) => n.node), [`b/${restarted.address}`], 'only the node is reported');

      // Every item the node owns is back, value, flags and expiry identical, and nothing else...
      const owned = ownedBy(cluster.topology, 'b', restarted.address, items);
      await assertExactCopy(targetRingOf(cluster.topology, 'b'), owned, {
        what: `the ${owned.length} items b's ring places on ${restarted.address}`,
        nothingElseOn: [restarted.address],
      });
      assert.equal(summary.targetNodes[0]?.stored, owned.length);
      // ...and the dumpers left the other keys out instead of reading them.
      const read = sum(summary.sourceNodes.map((n) => n.read));
      const filtered = sum(summary.sourceNodes.map((n) => n.filtered));
      assert.equal(read, owned.length);
      assert.equal(filtered, items.length - owned.length);

      const peersAfter = await countersOf(peers);
      assert.deepEqual(
        peersAfter.map((c) => ({ cmdSet: c.cmdSet, totalItems: c.totalItems })),
        peersBefore.map((c) => ({ cmdSet: c.cmdSet, totalItems: c.totalItems })),
        "the node's peers received no writes",
      );
    });
  });

  test("copies from another replica, never the node's own, even when its own holds more", async () => {
    await withCluster({ a: 2, b: 3 }, async (cluster) => {
      const items = sampleItems({ count: 6_000, valueBytes: 50, nowSeconds: nowSeconds() });
      await load(cluster.topology, 'a', items.slice(0, 3_000));
      await load(cluster.topology, 'b', items);
      const restarted = await cluster.restartEmpty('b', 0);
      const peers = (cluster.servers['b'] ?? []).filter((s) => s !== restarted);
      const peersBefore = await countersOf(peers);
      const node = `b/${restarted.address}`;
      const options = { topology: cluster.topology, node, workDir: await workDir(), chunkSizeBytes: 64 << 10, clock: systemClock };

      await assert.rejects(warmInstance({ ...options, source: 'b' }), (error: unknown) => {
        assert.ok(error instanceof CachewarmError);
        assert.equal(error.code, 'INVALID_ARGUMENT');
        assert.match(error.message, /--source b is the node's own replica/);
        return true;
      });
      const summary = await warmInstance(options);

      assert.equal(summary.source, 'a');
      assert.equal(summary.complete, true);
      assert.deepEqual(
        (await countersOf(peers)).map((c) => c.cmdGet),
        peersBefore.map((c) => c.cmdGet),
        "nothing was read from the node's own replica",
      );
      const owned = ownedBy(cluster.topology, 'b', restarted.address, items.slice(0, 3_000));
      await assertExactCopy(targetRingOf(cluster.topology, 'b'), owned, {
        what: `the ${owned.length} items of a that b's ring places on ${restarted.address}`,
        nothingElseOn: [restarted.address],
      });
    });
  });

  test('of a node that holds its share already says so, exits 0 and copies nothing; --force copies anyway, every item already present', async () => {
    await withCluster({ a: 2, b: 3 }, async (cluster) => {
      // The expectation comes from ring shares, so it is statistical: with 30,000 keys a full
      // node's ratio stays within ~1% of 1 (with 6,000, a few runs in a hundred fall below 0.95).
      const items = sampleItems({ count: 30_000, valueBytes: 20, nowSeconds: nowSeconds() });
      await load(cluster.topology, 'a', items);
      await load(cluster.topology, 'b', items);
      const file = await topologyFileOf(cluster.topology);
      const dir = await workDir();
      const full = cluster.servers['b']?.[2];
      assert.ok(full);
      const sourceBefore = await countersOf(cluster.servers['a'] ?? []);

      const run = await cachewarm('warm', 'instance', '--topology', file, '--node', `b/${full.address}`, '--work-dir', dir);

      assert.equal(run.code, 0, run.stderr);
      assert.match(run.stdout, new RegExp(`b/${full.address.replace(/\./g, '\\.')} is already warm, nothing copied`));
      assert.match(run.stdout, /\(\d\.\d\d >= 0\.95\)/);
      assert.deepEqual(await readdir(dir), [], 'no job was started');
      assert.deepEqual(
        (await countersOf(cluster.servers['a'] ?? [])).map((c) => c.cmdGet),
        sourceBefore.map((c) => c.cmdGet),
        'the source was not read',
      );

      const forced = await cachewarm('warm', 'instance', '--topology', file, '--node', `b/${full.address}`, '--work-dir', dir, '--force', '--json');
      assert.equal(forced.code, 0, forced.stderr);
      const summary = JSON.parse(forced.stdout) as { skipped?: string; targetNodes: { node: string; stored: number; existed: number }[] };
      assert.equal(summary.skipped, undefined);
      const owned = ownedBy(cluster.topology, 'b', full.address, items);
      assert.deepEqual(summary.targetNodes, [
        { ...summary.targetNodes[0], node: `b/${full.address}`, stored: 0, existed: owned.length },
      ]);
    });
  });

  test('of a node the topology does not have exits 2, naming it and listing its replica’s nodes', async () => {
    const file = await topologyFile({
      replicas: { a: { nodes: [{ address: '127.0.0.1:1' }] }, b: { nodes: [{ address: '127.0.0.1:2' }, { address: '127.0.0.1:3' }] } },
    });
    const run = await cachewarm('warm', 'instance', '--topology', file, '--node', 'b/127.0.0.1:9', '--work-dir', path.dirname(file));
    assert.equal(run.code, 2, run.stderr);
    assert.match(run.stderr, /"b\/127\.0\.0\.1:9"/);
    assert.match(run.stderr, /"127\.0\.0\.1:2", "127\.0\.0\.1:3"/);
    assert.match(run.stderr, /TOPOLOGY_INVALID/);

    const elsewhere = await cachewarm('warm', 'instance', '--topology', file, '--node', 'b/127.0.0.1:1');
    assert.equal(elsewhere.code, 2);
    assert.match(elsewhere.stderr, /that address is in replica "a"/);
  });
});
