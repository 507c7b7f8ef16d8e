import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { targetRingOf } from '../controller/warm-plan.js';
import { connectDirect } from '../shared/memcached/connect.js';
import { runPopulator } from '../populator/populate.js';
import { MetaNodeWriter } from '../populator/meta-node-writer.js';
import { ChunkBuilder, chunkHeader } from '../shared/chunk-format.js';
import type { ChunkStore } from '../shared/chunk-store.js';
import { type ChunkMessage, type MessageScope, type TargetRing, checkMessageScope, parseChunkMessage } from '../shared/chunk-message.js';
import { systemClock } from '../shared/clock.js';
import { WriteTally } from '../shared/counters.js';
import { CachewarmError } from '../shared/errors.js';
import { nodePrefix } from '../shared/job-layout.js';
import { MemoryQueue } from '../shared/queue/memory-queue.js';
import { BufferPool } from '../shared/buffer-pool.js';
import { HandOffStore } from '../shared/store/hand-off-store.js';
import { LocalDirStore } from '../shared/store/local-dir-store.js';
import { sampleItems } from '../shared/sample-items.js';
import { type Cluster, nowSeconds, readFrom, startCluster } from './support/cluster.js';

function dataChunk(items: ReturnType<typeof sampleItems>): Buffer {
  const builder = new ChunkBuilder('data', 1 << 20);
  for (const item of items) builder.addData(item.key, item.value, item.flags, item.exptime);
  return builder.seal();
}

function messageFor(name: string, chunk: Buffer, target: TargetRing): ChunkMessage {
  const { items, crc32 } = chunkHeader(chunk);
  return { version: 2, jobId: 'job', source: 'a/x', chunk: { name, bytes: chunk.length, items, crc32 }, target };
}

async function populate(cluster: Cluster, store: ChunkStore, queue: MemoryQueue, deleteConsumed = false) {
  const retry = { attempts: 2, baseDelayMs: 10, maxDelayMs: 20 };
  const tally = new WriteTally();
  const writer = new MetaNodeWriter({ connect: connectDirect, clock: systemClock, retry });
  queue.close();
  try {
    await runPopulator({ queue, store, writer, clock: systemClock, tally, deleteConsumed });
  } finally {
    await writer.close();
  }
  return tally;
}

describe('the populator', () => {
  test('parks a corrupt, a truncated and a missing chunk with the reason, and writes the rest', async () => {
    const cluster = await startCluster({ b: 2 });
    try {
      const store = new LocalDirStore(await mkdtemp(path.join(os.tmpdir(), 'cachewarm-pop-')));
      const queue = new MemoryQueue({ capacity: 10 });
      const target = targetRingOf(cluster.topology, 'b');
      const good = sampleItems({ count: 1_000, valueBytes: 50, nowSeconds: nowSeconds(), seed: 'good' });
      const bad = sampleItems({ count: 1_000, valueBytes: 50, nowSeconds: nowSeconds(), seed: 'bad' });

      const goodChunk = dataChunk(good);
      const flipped = dataChunk(bad.slice(0, 500));
      const flippedMessage = messageFor('j/flipped', flipped, target);
      flipped[flipped.length - 7] = (flipped[flipped.length - 7] as number) ^ 0x10;
      const whole = dataChunk(bad.slice(500));
      const truncatedMessage = messageFor('j/truncated', whole, target);
      await store.put('j/good', goodChunk);
      await store.put('j/flipped', flipped);
      await store.put('j/truncated', whole.subarray(0, whole.length - 100));
      await queue.send(flippedMessage);
      await queue.send(truncatedMessage);
      await queue.send(messageFor('j/missing', goodChunk, target));
      await queue.send(messageFor('j/good', goodChunk, target));

      const tally = await populate(cluster, store, queue);

      assert.equal(tally.total().stored, good.length);
      const reasons = new Map(queue.parked.map((p) => [p.message.chunk.name, p.reason]));
      assert.deepEqual([...reasons.keys()].sort(), ['j/flipped', 'j/missing', 'j/truncated']);
      assert.match(reasons.get('j/flipped') ?? '', /flipped: checksum mismatch/);
      assert.match(reasons.get('j/truncated') ?? '', /truncated: truncated: header says \d+ body bytes, found \d+/);
      assert.match(reasons.get('j/missing') ?? '', /chunk j\/missing is not in/);
      for (const server of cluster.servers['b'] ?? []) {
        const back = await readFrom(server, bad.map((i) => i.key));
        assert.equal(back.filter(Boolean).length, 0, 'no item of a refused chunk was written');
      }
    } finally {
      await cluster.stop();
    }
  });

  test('retries a chunk whose target node is down, then parks it with an error naming the node', async () => {
    const cluster = await startCluster({ b: 2 });
    try {
      const store = new LocalDirStore(await mkdtemp(path.join(os.tmpdir(), 'cachewarm-pop-')));
      const queue = new MemoryQueue({ capacity: 10, maxReceives: 2 });
      const down = cluster.servers['b']?.[1];
      await down?.stop();
      const chunk = dataChunk(sampleItems({ count: 500, valueBytes: 10, nowSeconds: nowSeconds() }));
      await store.put('j/c', chunk);
      await queue.send(messageFor('j/c', chunk, targetRingOf(cluster.topology, 'b')));

      await populate(cluster, store, queue);

      assert.equal(queue.parked.length, 1);
      assert.match(queue.parked[0]?.reason ?? '', new RegExp(`target node ${down?.address.replace(/\./g, '\\.')} still failing after 2 attempts`));
    } finally {
      await cluster.stop();
    }
  });
});

describe('the populator, handed chunks in memory', () => {
  test('writes a lent chunk, and stores one it must park: the dumper waiting on it is released', async () => {
    const cluster = await startCluster({ b: 2 });
    try {
      const disk = new LocalDirStore(await mkdtemp(path.join(os.tmpdir(), 'cachewarm-pop-')));
      const pool = new BufferPool();
      const store = new HandOffStore(disk, pool);
      const queue = new MemoryQueue({ capacity: 10, maxReceives: 2, onPark: ({ message }) => void store.persist(message.chunk.name) });
      const target = targetRingOf(cluster.topology, 'b');
      const items = sampleItems({ count: 500, valueBytes: 10, nowSeconds: nowSeconds() });
      const first = dataChunk(items);
      store.hold('j/first', first);
      await queue.send(messageFor('j/first', first, target));
      const settled = store.settled(['j/first']);
      const tally = await populate(cluster, store, queue, true);
      assert.equal(tally.total().stored, items.length);
      await settled;
      assert.deepEqual(await disk.list('j'), [], 'written from memory, never stored');

      const down = cluster.servers['b']?.[1];
      await down?.stop();
      const second = dataChunk(sampleItems({ count: 500, valueBytes: 10, nowSeconds: nowSeconds(), seed: 'second' }));
      store.hold('j/second', second);
      const again = new MemoryQueue({ capacity: 10, maxReceives: 2, onPark: ({ message }) => void store.persist(message.chunk.name) });
      await again.send(messageFor('j/second', second, target));
      await populate(cluster, store, again, true);
      assert.equal(again.parked.length, 1);
      await store.settled(['j/second']);
      assert.deepEqual(await disk.get('j/second'), second, 'the parked chunk is stored whole');
    } finally {
      await cluster.stop();
    }
  });
});

describe('a chunk message from outside the process', () => {
  const valid = {
    version: 2,
    jobId: 'j',
    source: 'a/10.0.0.1:11211',
    chunk: { name: 'j/a/data-000000-000.chunk', bytes: 100, items: 3, crc32: 12345 },
    target: { replica: 'b', hashing: 'spymemcached', nodes: [{ address: '10.0.1.1:11211', ringName: '10.0.1.1:11211' }] },
  };

  test('parses when well formed', () => {
    assert.deepEqual(parseChunkMessage(JSON.stringify(valid), 'm1').chunk, valid.chunk);
  });

  for (const [what, body, pattern] of [
    ['not JSON', '{oops', /message m1: not JSON/],
    ['an unknown version', JSON.stringify({ ...valid, version: 9 }), /version 9 is not supported/],
    ['a missing chunk name', JSON.stringify({ ...valid, chunk: { ...valid.chunk, name: '' } }), /name: expected a chunk name/],
    ['a negative item count', JSON.stringify({ ...valid, chunk: { ...valid.chunk, items: -1 } }), /items: expected an item count/],
    ['an unknown ring profile', JSON.stringify({ ...valid, target: { ...valid.target, hashing: 'crc32' } }), /hashing: expected one of/],
    ['no target nodes', JSON.stringify({ ...valid, target: { ...valid.target, nodes: [] } }), /target.nodes: expected a non-empty array/],
  ] as const) {
    test(`is refused with MESSAGE_MALFORMED for ${what}`, () => {
      assert.throws(() => parseChunkMessage(body, 'm1'), (error: unknown) => {
        assert.ok(error instanceof CachewarmError);
        assert.equal(error.code, 'MESSAGE_MALFORMED');
        assert.match(error.message, pattern);
        return true;
      });
    });
  }
});

describe('a chunk message held to its job\'s manifest', () => {
  const target: TargetRing = {
    replica: 'b',
    hashing: 'spymemcached',
    nodes: [
      { address: '10.0.1.1:11211', ringName: '10.0.1.1:11211' },
      { address: '10.0.1.2:11211', ringName: '10.0.1.2:11211' },
    ],
  };
  const source = 'a/10.0.0.1:11211';
  const scope: MessageScope = {
    jobId: 'j',
    store: { bucket: 'chunks', prefix: 'warm' },
    manifest: { where: 's3://chunks/warm/j/manifest.json', target, sourceNodes: [source, 'a/10.0.0.2:11211'] },
  };
  const chunkName = `${nodePrefix('j', source)}/data-000000-r1-000.chunk`;
  // As it comes off a queue: parsed from JSON (writeOnly present as undefined).
  const valid = parseChunkMessage(
    JSON.stringify({ version: 2, jobId: 'j', source, store: scope.store, chunk: { name: chunkName, bytes: 100, items: 3, crc32: 1 }, target }),
    'm1',
  );

  test('passes when it names the manifest\'s ring, one of its source nodes and a data chunk of that node', () => {
    checkMessageScope(valid, scope, 'm1');
  });

  const refusals: [string, ChunkMessage, RegExp][] = [
    ['a node of its own', { ...valid, target: { ...target, nodes: [...target.nodes, { address: '10.6.6.6:11211', ringName: '10.6.6.6:11211' }] } }, /names target ring "b" \[10\.0\.1\.1:11211, 10\.0\.1\.2:11211, 10\.6\.6\.6:11211\], not the job's "b" \[10\.0\.1\.1:11211, 10\.0\.1\.2:11211\] \(from s3:\/\/chunks\/warm\/j\/manifest\.json\)/],
    ['the same addresses hashed by other names', { ...valid, target: { ...target, nodes: target.nodes.map((n) => ({ ...n, ringName: `x/${n.ringName}` })) } }, /names target ring "b"/],
    ['another hashing', { ...valid, target: { ...target, hashing: 'libmemcached' } }, /names target ring "b"/],
    ['one node of the ring only', { ...valid, target: { ...target, writeOnly: ['10.0.1.2:11211'] } }, /names target ring "b" \[.*\] writing only 10\.0\.1\.2:11211, not the job's/],
    ['a source node the manifest does not list', { ...valid, source: 'a/10.9.9.9:11211', chunk: { ...valid.chunk, name: `${nodePrefix('j', 'a/10.9.9.9:11211')}/data-000000-r1-000.chunk` } }, /comes from source node "a\/10\.9\.9\.9:11211", not one of the job's \(a\/10\.0\.0\.1:11211, a\/10\.0\.0\.2:11211, from s3:\/\/chunks\/warm\/j\/manifest\.json\)/],
    ['a chunk of another source node\'s directory', { ...valid, chunk: { ...valid.chunk, name: `${nodePrefix('j', 'a/10.0.0.2:11211')}/data-000000-r1-000.chunk` } }, /chunk "j\/a_10\.0\.0\.2_11211\/data-000000-r1-000\.chunk" is not a data chunk of source node a\/10\.0\.0\.1:11211 \(j\/a_10\.0\.0\.1_11211\/data-….chunk\)/],
    ['a key chunk of its node', { ...valid, chunk: { ...valid.chunk, name: `${nodePrefix('j', source)}/keys-000000.chunk` } }, /is not a data chunk of source node/],
    ['a chunk beside the nodes\' directories', { ...valid, chunk: { ...valid.chunk, name: 'j/populators/data-000000-r1-000.chunk' } }, /is not a data chunk of source node/],
    ['a chunk below a data chunk\'s name', { ...valid, chunk: { ...valid.chunk, name: `${nodePrefix('j', source)}/data-x/y.chunk` } }, /is not a data chunk of source node/],
  ];
  for (const [what, message, reason] of refusals) {
    test(`refuses, with MESSAGE_MALFORMED and the reason, ${what}`, () => {
      assert.throws(() => checkMessageScope(message, scope, 'm1'), (error: unknown) => {
        assert.ok(error instanceof CachewarmError);
        assert.equal(error.code, 'MESSAGE_MALFORMED');
        assert.match(error.message, /^message m1: /);
        assert.match(error.message, reason);
        return true;
      });
    });
  }

  test('without a manifest (the embedded transport) the message\'s own ring and source are taken as they are', () => {
    const { manifest: _, ...embedded } = scope;
    for (const [, message] of refusals.slice(0, 5)) checkMessageScope(message, embedded, 'm1');
  });
});
