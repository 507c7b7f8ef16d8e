import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { type PeerItems, expectedItems, ringShares, warmDecision } from '../controller/expected-share.js';
import { isCachewarmError } from '../shared/errors.js';
import { KetamaRing } from '../shared/ketama.js';
import { OneLine } from '../shared/memcached/commands.js';
import { MemcachedConnection } from '../shared/memcached/connection.js';
import { sampleItems } from '../shared/sample-items.js';
import { replicaOf } from '../shared/topology.js';
import { type Cluster, itemCount, load, nowSeconds, startCluster } from './support/cluster.js';

const nodesOf = (count: number): { address: string; ringName: string }[] =>
  Array.from({ length: count }, (_, i) => ({ address: `10.0.0.${i + 1}:11211`, ringName: `10.0.0.${i + 1}:11211` }));

const sum = (values: Iterable<number>): number => [...values].reduce((a, b) => a + b, 0);

describe('ringShares: each node’s fraction of the ketama continuum', () => {
  test('the shares sum to 1 and are near 1/n for n equal nodes', () => {
    for (const n of [1, 2, 3, 4, 8, 16]) {
      const shares = ringShares(nodesOf(n), 'spymemcached');
      assert.equal(shares.size, n);
      assert.ok(Math.abs(sum(shares.values()) - 1) < 1e-12, `n=${n}: sum ${sum(shares.values())}`);
      for (const [address, share] of shares) {
        // 160 points per node leave each share within ~20 % of the even split.
        assert.ok(Math.abs(share * n - 1) < 0.2, `n=${n}: ${address} has ${share}`);
      }
    }
  });

  test('a node’s share is the fraction of keys the ring places on it', () => {
    const nodes = nodesOf(5);
    const shares = ringShares(nodes);
    const ring = new KetamaRing(nodes, (n) => n.ringName);
    const placed = new Map<string, number>();
    const keys = 200_000;
    for (let i = 0; i < keys; i++) {
      const { address } = ring.nodeFor(`share-probe:${i}`);
      placed.set(address, (placed.get(address) ?? 0) + 1);
    }
    for (const [address, share] of shares) {
      const fraction = (placed.get(address) ?? 0) / keys;
      assert.ok(Math.abs(fraction - share) < 0.005, `${address}: share ${share}, placed ${fraction}`);
    }
  });

  test('follows the ring names, not the order the nodes are listed in', () => {
    const nodes = nodesOf(4);
    assert.deepEqual(new Map([...ringShares([...nodes].reverse())].sort()), new Map([...ringShares(nodes)].sort()));
  });

  test('refuses an address listed twice and an unknown hashing profile', () => {
    const twice = [
      { address: '10.0.0.1:11211', ringName: 'a' },
      { address: '10.0.0.1:11211', ringName: 'b' },
    ];
    assert.throws(() => ringShares(twice), (e) => isCachewarmError(e, 'INVALID_ARGUMENT'));
    assert.throws(
      () => ringShares(nodesOf(2), 'ketama' as never),
      (e) => isCachewarmError(e, 'INVALID_ARGUMENT'),
    );
  });
});

describe('expectedItems: the node’s share of what its healthy peers hold', () => {
  const shares = new Map([
    ['n1', 0.2],
    ['n2', 0.3],
    ['n3', 0.5],
  ]);

  test('scales the healthy peers’ items per unit of share to the node’s share', () => {
    // n2 and n3 hold 80,000 items on 0.8 of the ring: 100,000 per ring, so 20,000 for n1.
    const peers: PeerItems[] = [
      { address: 'n2', items: 30_000, healthy: true },
      { address: 'n3', items: 50_000, healthy: true },
    ];
    assert.equal(expectedItems('n1', peers, shares), 20_000);
  });

  test('leaves out unhealthy peers and the node itself', () => {
    const peers: PeerItems[] = [
      { address: 'n1', items: 7, healthy: true },
      { address: 'n2', items: 30_000, healthy: true },
      { address: 'n3', items: 0, healthy: false },
    ];
    assert.equal(expectedItems('n1', peers, shares), 20_000);
  });

  test('is undefined when no healthy peer is left to judge by', () => {
    assert.equal(expectedItems('n1', [{ address: 'n2', items: 5, healthy: false }], shares), undefined);
    assert.equal(expectedItems('n1', [], shares), undefined);
  });

  test('refuses a node or peer that is not on the ring, and a count that is not one', () => {
    assert.throws(() => expectedItems('n9', [], shares), (e) => isCachewarmError(e, 'INVALID_ARGUMENT'));
    assert.throws(
      () => expectedItems('n1', [{ address: 'n9', items: 1, healthy: true }], shares),
      (e) => isCachewarmError(e, 'INVALID_ARGUMENT'),
    );
    assert.throws(
      () => expectedItems('n1', [{ address: 'n2', items: Number.NaN, healthy: true }], shares),
      (e) => isCachewarmError(e, 'INVALID_ARGUMENT'),
    );
  });
});

describe('warmDecision: warm a restarted node only when it lacks its share', () => {
  const shares = new Map([
    ['10.0.0.1:11211', 1 / 3],
    ['10.0.0.2:11211', 1 / 3],
    ['10.0.0.3:11211', 1 / 3],
  ]);
  const peers: PeerItems[] = [
    { address: '10.0.0.2:11211', items: 330_000, healthy: true },
    { address: '10.0.0.3:11211', items: 330_000, healthy: true },
  ];

  test('a node holding far less than expected is warmed, and the log says why', () => {
    const decision = warmDecision({ node: '10.0.0.1:11211', actualItems: 120, peers, shares });
    assert.equal(decision.warm, true);
    assert.ok(Math.abs((decision.expectedItems ?? 0) - 330_000) < 1e-6);
    assert.equal(decision.actualItems, 120);
    assert.ok(decision.ratio !== undefined && decision.ratio < 0.001);
    assert.equal(decision.reason, '10.0.0.1:11211 holds 120 of ~330,000 expected items (0.00 < 0.5): warm');
  });

  test('a node still holding its share is left alone', () => {
    const decision = warmDecision({ node: '10.0.0.1:11211', actualItems: 300_000, peers, shares });
    assert.equal(decision.warm, false);
    assert.equal(decision.reason, '10.0.0.1:11211 holds 300,000 of ~330,000 expected items (0.91 >= 0.5): leave alone');
  });

  test('--min-share sets the line', () => {
    assert.equal(warmDecision({ node: '10.0.0.1:11211', actualItems: 200_000, peers, shares }).warm, false);
    assert.equal(warmDecision({ node: '10.0.0.1:11211', actualItems: 200_000, peers, shares, minShare: 0.9 }).warm, true);
    assert.throws(
      () => warmDecision({ node: '10.0.0.1:11211', actualItems: 1, peers, shares, minShare: 1.5 }),
      (e) => isCachewarmError(e, 'INVALID_ARGUMENT'),
    );
  });

  test('without a healthy peer nothing is warmed, and the log says the expectation cannot be computed', () => {
    const down = peers.map((p) => ({ ...p, healthy: false }));
    const decision = warmDecision({ node: '10.0.0.1:11211', actualItems: 0, peers: down, shares });
    assert.equal(decision.warm, false);
    assert.equal(decision.expectedItems, undefined);
    assert.equal(decision.ratio, undefined);
    assert.match(decision.reason, /cannot be computed/);
  });

  test('when the peers are empty too, there is nothing to warm', () => {
    const empty = peers.map((p) => ({ ...p, items: 0 }));
    const decision = warmDecision({ node: '10.0.0.1:11211', actualItems: 0, peers: empty, shares });
    assert.equal(decision.warm, false);
    assert.equal(decision.expectedItems, 0);
    assert.match(decision.reason, /none are expected: leave alone/);
  });
});

describe('on a real 3-node replica', () => {
  async function withReplica(run: (cluster: Cluster, addresses: string[]) => Promise<void>): Promise<void> {
    const cluster = await startCluster({ a: 3 });
    try {
      await load(cluster.topology, 'a', sampleItems({ count: 30_000, valueBytes: 50, nowSeconds: nowSeconds() }));
      await run(cluster, replicaOf(cluster.topology, 'a').nodes.map((n) => n.address));
    } finally {
      await cluster.stop();
    }
  }

  async function peerCounts(cluster: Cluster): Promise<PeerItems[]> {
    const servers = cluster.servers['a'] ?? [];
    return Promise.all(servers.map(async (s) => ({ address: s.address, items: await itemCount(s), healthy: true })));
  }

  test('each node holds within a few % of what the other two predict for it', async () => {
    await withReplica(async (cluster, addresses) => {
      const shares = ringShares(replicaOf(cluster.topology, 'a').nodes, cluster.topology.hashing);
      const peers = await peerCounts(cluster);
      assert.equal(sum(peers.map((p) => p.items)), 30_000);
      for (const node of addresses) {
        const actual = peers.find((p) => p.address === node)?.items ?? 0;
        const expected = expectedItems(node, peers, shares) ?? 0;
        assert.ok(Math.abs(actual / expected - 1) < 0.05, `${node}: holds ${actual}, expected ${expected}`);
        const decision = warmDecision({ node, actualItems: actual, peers, shares });
        assert.equal(decision.warm, false, decision.reason);
      }
    });
  });

  test('a node emptied with flush_all is decided "warm"; its full peers "leave alone"', async () => {
    await withReplica(async (cluster, addresses) => {
      const shares = ringShares(replicaOf(cluster.topology, 'a').nodes, cluster.topology.hashing);
      const emptied = cluster.servers['a']?.[0];
      assert.ok(emptied);
      await flushAndReclaim(emptied);

      const peers = await peerCounts(cluster);
      const decisions = addresses.map((node) =>
        warmDecision({ node, actualItems: peers.find((p) => p.address === node)?.items ?? 0, peers, shares }),
      );
      assert.deepEqual(
        decisions.map((d) => d.warm),
        addresses.map((a) => a === emptied.address),
      );
      assert.match(decisions[addresses.indexOf(emptied.address)]?.reason ?? '', /^\S+ holds 0 of ~[\d,]+ expected items \(0\.00 < 0\.5\): warm$/);
    });
  });
});

/**
 * flush_all only marks items dead; curr_items drops as they are reclaimed, which a crawl
 * does at once. (A restarted node, the real case, reports 0 from the start.)
 */
async function flushAndReclaim(server: { host: string; port: number }): Promise<void> {
  const conn = await MemcachedConnection.connect(server);
  try {
    assert.equal(await conn.send(Buffer.from('flush_all\r\n'), new OneLine()), 'OK');
    assert.equal(await conn.send(Buffer.from('lru_crawler crawl all\r\n'), new OneLine()), 'OK');
  } finally {
    conn.close();
  }
  for (let waited = 0; (await itemCount(server)) > 0; waited += 50) {
    if (waited > 5_000) assert.fail('the crawl did not reclaim the flushed items within 5 s');
    await delay(50);
  }
}
