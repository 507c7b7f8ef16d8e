import assert from 'node:assert/strict';
import { createServer, type Socket } from 'node:net';
import { once } from 'node:events';
import { describe, test } from 'node:test';
import { dumpNode } from '../dumper/dump-node.js';
import { ringFilter } from '../dumper/ring-filter.js';
import { targetRingOf } from '../controller/warm-plan.js';
import { ringOfTarget } from '../populator/write-to-ring.js';
import { decodeDataChunk } from '../shared/chunk-format.js';
import { systemClock } from '../shared/clock.js';
import { MemcachedConnection } from '../shared/memcached/connection.js';
import { crawlKeys } from '../shared/memcached/crawler.js';
import { MemoryQueue } from '../shared/queue/memory-queue.js';
import { sampleItems } from '../shared/sample-items.js';
import { LocalDirStore } from '../shared/store/local-dir-store.js';
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { load, nowSeconds, startCluster } from './support/cluster.js';

describe('the dumper', () => {
  test('with a ring filter, copies only the keys that hash to the chosen nodes of another ring', async () => {
    const cluster = await startCluster({ a: 1, b: 3 });
    try {
      const items = sampleItems({ count: 6_000, valueBytes: 20, nowSeconds: nowSeconds() });
      await load(cluster.topology, 'a', items);
      const target = targetRingOf(cluster.topology, 'b');
      const chosen = target.nodes[1]?.address as string;
      const store = new LocalDirStore(await mkdtemp(path.join(os.tmpdir(), 'cachewarm-dump-')));
      const queue = new MemoryQueue({ capacity: 1_000 });
      const source = cluster.topology.replicas.get('a')?.nodes[0];
      assert.ok(source);

      const counters = await dumpNode({
        node: { id: source.id, host: source.host, port: source.port },
        jobId: 'job',
        store,
        queue,
        target: { ...target, writeOnly: [chosen] },
        clock: systemClock,
        chunkSizeBytes: 64 << 10,
        keyFilter: ringFilter(target.nodes, [chosen]),
      });
      queue.close();

      const ring = ringOfTarget(target);
      const expected = items.filter((i) => ring.nodeFor(i.key).address === chosen).map((i) => i.key.toString()).sort();
      const dumped: string[] = [];
      for (let d = await queue.receive(); d; d = await queue.receive()) {
        for (const item of decodeDataChunk(await store.get(d.message.chunk.name), d.message.chunk.name)) dumped.push(item.key.toString());
        await d.ack();
      }
      assert.deepEqual(dumped.sort(), expected);
      assert.equal(counters.read, expected.length);
      assert.equal(counters.filtered, items.length - expected.length);
      assert.ok(expected.length > 1_000 && expected.length < 3_000, 'the chosen node holds about a third');
    } finally {
      await cluster.stop();
    }
  });

  test('a ring filter naming a node that is not on the ring is refused', () => {
    assert.throws(() => ringFilter([{ address: '10.0.0.1:11211', ringName: '10.0.0.1:11211' }], ['10.0.0.9:11211']), /not on the ring: 10\.0\.0\.9:11211/);
  });
});

describe('the crawler, against the metadump output of newer memcached releases', () => {
  // memcached 1.6.43 acknowledges `lru_crawler metadump` with OK and, since 1.6.24, adds
  // flags=; the installed 1.6.18 does neither, so a scripted peer replays that output.
  async function scriptedPeer(version: string): Promise<{ port: number; commands: string[]; close: () => void }> {
    const commands: string[] = [];
    const server = createServer((socket: Socket) => {
      socket.on('data', (data) => {
        for (const line of data.toString('latin1').split('\r\n').filter(Boolean)) {
          commands.push(line);
          if (line === 'version') socket.write(`VERSION ${version}\r\n`);
          else if (line.startsWith('lru_crawler metadump')) {
            socket.write('OK\r\nkey=a%20b exp=-1 la=1 cas=2 fetch=no cls=1 size=60 flags=5\nkey=%FFc exp=1900000000 la=1 cas=3 fetch=no cls=1 size=61 flags=0\nEND\r\n');
          }
        }
      });
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const address = server.address();
    return { port: typeof address === 'object' && address ? address.port : 0, commands, close: () => server.close() };
  }

  test('tolerates the leading OK and the extra flags= field, and walks the hash table from 1.6.19', async () => {
    const peer = await scriptedPeer('1.6.43');
    const conn = await MemcachedConnection.connect({ host: '127.0.0.1', port: peer.port });
    try {
      const keys: Buffer[] = [];
      const exptimes: number[] = [];
      for await (const batch of crawlKeys(conn, { batchKeys: 100, clock: systemClock })) {
        keys.push(...batch.keys);
        exptimes.push(...batch.exptimes);
      }
      assert.deepEqual(keys, [Buffer.from('a b'), Buffer.from([0xff, 0x63])]);
      assert.deepEqual(exptimes, [0, 1_900_000_000]);
      assert.ok(peer.commands.includes('lru_crawler metadump hash'), peer.commands.join(' | '));
    } finally {
      conn.close();
      peer.close();
    }
  });
});
