// A warmed replica read back by the clients that will read it in production: pylibmc
// (libmemcached's ketama) and spymemcached (KetamaConnectionFactory), each placing every key
// on its own ring. A copy is only useful if each item is on the node those clients ask.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { warmReplica } from '../controller/warm-replica.js';
import { systemClock } from '../shared/clock.js';
import type { WritableItem } from '../shared/memcached/meta-add.js';
import { sampleItems } from '../shared/sample-items.js';
import type { HashingProfile } from '../shared/ketama.js';
import { type Topology, parseTopology } from '../shared/topology.js';
import { type Cluster, load, nowSeconds, withCluster } from './support/cluster.js';
import { assertExactCopy } from './support/read-back.js';
import {
  CLIENTS, PYTHON, assertReadAsExpected, compileSpyRead, keysInput, pylibmcMissing, run, spymemcachedMissing,
} from './support/third-party-clients.js';

/**
 * A replica pair `a` (2 nodes, the source) and `b` (3 nodes, the target) over the cluster's
 * servers, hashed the way the client under test hashes.
 */
function topologyFor(cluster: Cluster, hashing: HashingProfile): Topology {
  const nodes = (replica: string) => (cluster.servers[replica] ?? []).map((s) => ({ address: s.address }));
  return parseTopology({ hashing, replicas: { a: { nodes: nodes('a') }, b: { nodes: nodes('b') } } }, `third-party-${hashing}`);
}

/**
 * The items: varied values and expiries, keys that are plain, UTF-8 beyond ASCII and 250 bytes
 * long, one large value, and flags each client can hand back unchanged (`flagsMask`).
 */
function itemsFor(seed: string, flagsMask: number): WritableItem[] {
  const now = nowSeconds();
  const items = sampleItems({ count: 6_000, valueBytes: 200, nowSeconds: now, seed });
  const more: WritableItem[] = [
    { key: Buffer.from(`${seed}:café-ключ-鍵-🔑`), value: Buffer.from('utf-8 key'), flags: 0x1234_5670, exptime: now + 3_600 },
    { key: Buffer.from(`${seed}:${'k'.repeat(250 - seed.length - 1)}`), value: Buffer.from('longest key'), flags: 1, exptime: 0 },
    { key: Buffer.from(`${seed}:large`), value: sampleItems({ count: 1, valueBytes: 300_000, nowSeconds: now, seed: `${seed}-large` })[0]!.value, flags: 2, exptime: 0 },
  ];
  return [...items, ...more].map((item) => ({ ...item, flags: (item.flags & flagsMask) >>> 0 }));
}

/** Loads `a`, warms `b` from it with the embedded warm, and checks the copy with the read-back checker. */
async function warmed(cluster: Cluster, hashing: HashingProfile, items: readonly WritableItem[]): Promise<Topology> {
  const topology = topologyFor(cluster, hashing);
  await load(topology, 'a', items);
  const workDir = await mkdtemp(path.join(os.tmpdir(), `cachewarm-${hashing}-`));
  try {
    const summary = await warmReplica({ topology, target: 'b', chunkSizeBytes: 256 << 10, clock: systemClock, workDir });
    assert.equal(summary.complete, true, JSON.stringify(summary));
    assert.equal(summary.source, 'a');
    assert.equal(summary.targetNodes.reduce((sum, n) => sum + n.stored, 0), items.length);
  } finally {
    await rm(workDir, { recursive: true, force: true });
  }
  await assertExactCopy({ topology, replica: 'b' }, items, { what: `b warmed with ${hashing} hashing` });
  return topology;
}

const addressesOf = (topology: Topology, replica: string): string[] => topology.replicas.get(replica)!.nodes.map((n) => n.address);

const pylibmcSkip = pylibmcMissing();
const spymemcachedSkip = spymemcachedMissing();

describe('a warmed replica, read by third-party clients on their own rings', () => {
  test(
    "pylibmc (libmemcached ketama_weighted) finds every item warmed with 'libmemcached' hashing, value and flags exact",
    { skip: pylibmcSkip ? `pylibmc unavailable: ${pylibmcSkip}` : false },
    async () => {
      await withCluster({ a: 2, b: 3 }, async (cluster) => {
        // pylibmc inflates any value whose flags have bit 3 (its zlib flag) set before any hook
        // sees it, so the items leave that bit clear; every other bit comes back as stored.
        const items = itemsFor('pylibmc', ~0x8);
        const topology = await warmed(cluster, 'libmemcached', items);
        const ran = await run(PYTHON, [path.join(CLIENTS, 'pylibmc_read.py'), ...addressesOf(topology, 'b')], keysInput(items));
        assertReadAsExpected('pylibmc', ran, items);
      });
    },
  );

  test(
    '(control) pylibmc misses the items placed on a ring other than its own',
    { skip: pylibmcSkip ? `pylibmc unavailable: ${pylibmcSkip}` : false },
    async () => {
      await withCluster({ b: 3 }, async (cluster) => {
        // The same nodes with their ring names rotated: every key hashes to the same point,
        // owned by another node than the one pylibmc asks.
        const addresses = (cluster.servers['b'] ?? []).map((s) => s.address);
        const rotated = parseTopology(
          { hashing: 'libmemcached', replicas: { b: { nodes: addresses.map((address, i) => ({ address, ringName: addresses[(i + 1) % addresses.length] })) } } },
          'rotated',
        );
        const items = itemsFor('misplaced', ~0x8).slice(0, 600);
        await load(rotated, 'b', items);
        const ran = await run(PYTHON, [path.join(CLIENTS, 'pylibmc_read.py'), ...addresses], keysInput(items));
        assert.equal(ran.code, 0, ran.stderr);
        const misses = ran.stdout.split('\n').filter((line) => line.endsWith('\tMISS')).length;
        assert.ok(misses > items.length / 2, `pylibmc missed ${misses} of ${items.length} misplaced items`);
        assert.throws(() => assertReadAsExpected('pylibmc', ran, items), /pylibmc read \d+ of 600 items as written; \d+ missing/);
      });
    },
  );

  test(
    "spymemcached (KetamaConnectionFactory) finds every item warmed with 'spymemcached' hashing, value and flags exact",
    { skip: spymemcachedSkip ? `spymemcached unavailable: ${spymemcachedSkip}` : false },
    async () => {
      const spyRead = await compileSpyRead();
      try {
        await withCluster({ a: 2, b: 3 }, async (cluster) => {
          // spymemcached parses flags as a Java int: it fails on flags of 2^31 and up, which
          // it never writes itself. The items keep the other 31 bits.
          const items = itemsFor('spymemcached', 0x7fff_ffff);
          const topology = await warmed(cluster, 'spymemcached', items);
          const ran = await run('java', ['-cp', spyRead.classpath, 'SpyRead', addressesOf(topology, 'b').join(' ')], keysInput(items));
          assertReadAsExpected('spymemcached', ran, items);
        });
      } finally {
        await spyRead.remove();
      }
    },
  );
});
