import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { targetRingOf } from '../controller/warm-plan.js';
import { type DumpNodeOptions, dumpNode } from '../dumper/dump-node.js';
import { decodeDataChunk } from '../shared/chunk-format.js';
import type { ChunkMessage } from '../shared/chunk-message.js';
import { systemClock } from '../shared/clock.js';
import { type EndMarker, chunkDoneName, crawlDoneName, endMarkerName, getJson, nodePrefix, putJson, unmarkedChunksOf } from '../shared/job-layout.js';
import { MemoryQueue } from '../shared/queue/memory-queue.js';
import { sampleItems } from '../shared/sample-items.js';
import { BufferPool } from '../shared/buffer-pool.js';
import { HandOffStore } from '../shared/store/hand-off-store.js';
import { LocalDirStore } from '../shared/store/local-dir-store.js';
import { load, nowSeconds, startCluster } from './support/cluster.js';

/** Every message on the queue, acknowledged, with the keys of its chunk. */
async function drain(queue: MemoryQueue, store: LocalDirStore): Promise<{ messages: ChunkMessage[]; keys: string[] }> {
  queue.close();
  const messages: ChunkMessage[] = [];
  const keys: string[] = [];
  for (let d = await queue.receive(); d; d = await queue.receive()) {
    messages.push(d.message);
    const body = await store.get(d.message.chunk.name);
    assert.equal(d.message.chunk.bytes, body.length, `the message of ${d.message.chunk.name} states its size`);
    for (const item of decodeDataChunk(body, d.message.chunk.name)) keys.push(item.key.toString());
    await d.ack();
  }
  return { messages, keys };
}

async function crawlFinished(store: LocalDirStore, jobId: string, nodeId: string): Promise<void> {
  while (!(await getJson(store, crawlDoneName(jobId, nodeId)))) await new Promise((resolve) => setTimeout(resolve, 10));
}

/** A source replica `a` of one node loaded with `count` items, a target replica `b`, an empty store, and the options of a dump. */
async function loadedSource(count: number, targetNodes = 1) {
  const cluster = await startCluster({ a: 1, b: targetNodes });
  try {
    const items = sampleItems({ count, valueBytes: 100, nowSeconds: nowSeconds() });
    await load(cluster.topology, 'a', items);
    const source = cluster.topology.replicas.get('a')?.nodes[0];
    assert.ok(source);
    const store = new LocalDirStore(await mkdtemp(path.join(os.tmpdir(), 'cachewarm-resume-')));
    /** A dump of the source node into the store for replica `b`: small chunks, one reader. */
    const dumpOptions = (jobId: string, queue: MemoryQueue, more: Partial<DumpNodeOptions> = {}): DumpNodeOptions => ({
      node: { id: source.id, host: source.host, port: source.port },
      jobId,
      store,
      queue,
      target: targetRingOf(cluster.topology, 'b'),
      clock: systemClock,
      chunkSizeBytes: 16 << 10,
      keysPerChunk: 500,
      fetchConcurrency: 1,
      ...more,
    });
    return { cluster, items, source, store, dumpOptions };
  } catch (error) {
    await cluster.stop();
    throw error;
  }
}

describe('a dump resumes from what its store holds', () => {
  test('an interrupted dump, run again, reads only the key chunks left and lists nothing again', async () => {
    const { items, source, store, cluster, dumpOptions } = await loadedSource(20_000, 2);
    try {
      const base = (queue: MemoryQueue, signal?: AbortSignal): DumpNodeOptions =>
        dumpOptions('job-1', queue, { chunkSizeBytes: 32 << 10, keysPerChunk: 1_000, durableQueue: true, signal });

      // First run: stopped once a few data chunks are out, as a killed sidecar would be.
      const firstQueue = new MemoryQueue({ capacity: 10_000 });
      const stop = new AbortController();
      let announced = 0;
      await assert.rejects(
        dumpNode({
          ...base(firstQueue, stop.signal),
          // Reads wait for the crawl to finish, as they do when a node's values are slow to read.
          rateLimiter: { take: () => crawlFinished(store, 'job-1', source.id) },
          onDataChunk: () => {
            if (++announced === 5) stop.abort(new Error('sidecar killed'));
          },
        }),
        /sidecar killed/,
      );
      const first = await drain(firstQueue, store);
      assert.ok(await getJson(store, crawlDoneName('job-1', source.id)), 'the crawl had finished and said so');
      assert.equal(await getJson(store, endMarkerName('job-1', source.id)), undefined, 'no end marker for a dump cut short');
      const keyChunksLeft = (await store.list(`${nodePrefix('job-1', source.id)}/`)).filter((n) => /keys-\d+\.chunk$/.test(n));
      assert.ok(keyChunksLeft.length > 0 && keyChunksLeft.length < 20, `key chunks left: ${keyChunksLeft.length}`);

      // Second run of the same job: the remaining key chunks only, no new crawl.
      const secondQueue = new MemoryQueue({ capacity: 10_000 });
      const counters = await dumpNode(base(secondQueue));
      const second = await drain(secondQueue, store);
      assert.equal(counters.listed, 0, 'nothing listed again');
      assert.ok(counters.read <= keyChunksLeft.length * 1_000, `read ${counters.read} for ${keyChunksLeft.length} key chunks`);
      assert.ok(counters.read < items.length);

      const all = new Set([...first.keys, ...second.keys]);
      assert.equal(all.size, items.length, 'every item is in a data chunk of one run or the other');
      const firstNames = new Set(first.messages.map((m) => m.chunk.name));
      assert.ok(second.messages.every((m) => !firstNames.has(m.chunk.name)), 'a redone chunk never replaces an announced one');

      const marker = await getJson<EndMarker>(store, endMarkerName('job-1', source.id));
      assert.equal(marker?.dataChunks, second.messages.length);

      // Third run: the end marker says it is done; nothing is read or announced.
      const thirdQueue = new MemoryQueue({ capacity: 10 });
      const again = await dumpNode(base(thirdQueue));
      assert.equal((await drain(thirdQueue, store)).messages.length, 0);
      assert.deepEqual(again, marker?.counters);
    } finally {
      await cluster.stop();
    }
  });

  test('with an in-process queue, data chunks an earlier run stored are announced again', async () => {
    const { items, store, cluster, dumpOptions } = await loadedSource(3_000);
    try {
      const options = (queue: MemoryQueue, signal?: AbortSignal): DumpNodeOptions => dumpOptions('job-2', queue, { signal });
      const stop = new AbortController();
      let announced = 0;
      const lost = new MemoryQueue({ capacity: 10_000 }); // its messages die with "the process"
      await assert.rejects(
        dumpNode({ ...options(lost, stop.signal), onDataChunk: () => void (++announced === 3 && stop.abort(new Error('killed'))) }),
        /killed/,
      );

      const queue = new MemoryQueue({ capacity: 10_000 });
      await dumpNode(options(queue));
      const { keys } = await drain(queue, store);
      assert.equal(new Set(keys).size, items.length, 'every item reaches the new queue');
    } finally {
      await cluster.stop();
    }
  });

  test('on a standing queue, a resumed dump announces again the stored chunks no populator marked, and only those', async () => {
    const { items, source, store, cluster, dumpOptions } = await loadedSource(6_000);
    try {
      const options = (queue: MemoryQueue, signal?: AbortSignal): DumpNodeOptions =>
        dumpOptions('job-s', queue, { durableQueue: true, unmarkedOf: unmarkedChunksOf(store, ['job-s'], source.id), signal });
      const stop = new AbortController();
      let announced = 0;
      const first = new MemoryQueue({ capacity: 10_000 });
      await assert.rejects(dumpNode({ ...options(first, stop.signal), onDataChunk: () => void (++announced === 4 && stop.abort(new Error('killed'))) }), /killed/);
      const { messages, keys: firstKeys } = await drain(first, store);
      // Two of the first run's chunks were written and marked; the others' messages are still out
      // (or never went: a chunk stored but not announced looks the same from here).
      const written = messages.slice(0, 2);
      for (const m of written) await putJson(store, chunkDoneName('job-s', source.id, m.chunk.name), { chunk: m.chunk.name });
      const writtenNames = new Set(written.map((m) => m.chunk.name));
      const storedBefore = (await store.list(`${nodePrefix('job-s', source.id)}/`)).filter((n) => /data-[^/]+\.chunk$/.test(n));

      const queue = new MemoryQueue({ capacity: 10_000 });
      await dumpNode(options(queue));
      const second = await drain(queue, store);
      const announcedAgain = second.messages.map((m) => m.chunk.name).filter((name) => storedBefore.includes(name));
      assert.deepEqual(announcedAgain.sort(), storedBefore.filter((name) => !writtenNames.has(name)).sort(), 'every unmarked chunk of the earlier run, no marked one');
      const writtenKeys = firstKeys.slice(0, written.reduce((sum, m) => sum + m.chunk.items, 0));
      assert.equal(new Set([...writtenKeys, ...second.keys]).size, items.length, 'what was written and what is announced cover every item');
    } finally {
      await cluster.stop();
    }
  });

  test('with an in-process queue, a dump that had finished announces again the data chunks still in the store', async () => {
    const { items, source, store, cluster, dumpOptions } = await loadedSource(2_000);
    try {
      const options = (queue: MemoryQueue): DumpNodeOptions => dumpOptions('job-3', queue, { keysPerChunk: 20_000 });
      // The dump finishes, but the process stops before any of its chunks is written.
      const finished = await dumpNode(options(new MemoryQueue({ capacity: 10_000 })));
      assert.ok(await getJson<EndMarker>(store, endMarkerName('job-3', source.id)));

      const queue = new MemoryQueue({ capacity: 10_000 });
      const again = await dumpNode(options(queue));
      const { keys } = await drain(queue, store);

      assert.equal(new Set(keys).size, items.length, 'every item reaches the new queue');
      assert.deepEqual(again, finished, 'the counters are those of the finished dump: nothing was read again');
    } finally {
      await cluster.stop();
    }
  });

  test('handed off in memory, data chunks never reach the store, and a key chunk stays until they are written: a crash redoes its reads', async () => {
    const { items, source, store: disk, cluster, dumpOptions } = await loadedSource(3_000);
    try {
      const options = (queue: MemoryQueue, handOff: HandOffStore, signal?: AbortSignal): DumpNodeOptions => dumpOptions('job-4', queue, { handOff, signal });
      /** Writes (here: reads the keys of) and deletes each handed-off chunk, the first `limit` only. */
      const consume = async (queue: MemoryQueue, handOff: HandOffStore, keys: Set<string>, limit = Infinity): Promise<void> => {
        for (let n = 0; n < limit; n++) {
          const delivery = await queue.receive();
          if (!delivery) return;
          const loan = handOff.lend(delivery.message.chunk.name);
          assert.ok(loan, `${delivery.message.chunk.name} is lent from memory`);
          for (const item of decodeDataChunk(loan.bytes, delivery.message.chunk.name)) keys.add(item.key.toString());
          loan.giveBack();
          await delivery.ack();
          await handOff.delete(delivery.message.chunk.name);
        }
      };
      const dataChunksOnDisk = async (): Promise<string[]> => (await disk.list(`${nodePrefix('job-4', source.id)}/`)).filter((n) => /data-/.test(n));
      const written = new Set<string>();

      // First run: the process dies once 3 chunks are written; the others were only in memory.
      const stop = new AbortController();
      const firstQueue = new MemoryQueue({ capacity: 10_000 });
      const firstHandOff = new HandOffStore(disk, new BufferPool());
      const dumping = dumpNode(options(firstQueue, firstHandOff, stop.signal));
      dumping.catch(() => undefined);
      await consume(firstQueue, firstHandOff, written, 3);
      await crawlFinished(disk, 'job-4', source.id);
      stop.abort(new Error('killed'));
      await assert.rejects(dumping, /killed/);
      assert.deepEqual(await dataChunksOnDisk(), [], 'no data chunk was stored');
      const keyChunksLeft = (await disk.list(`${nodePrefix('job-4', source.id)}/`)).filter((n) => /keys-\d+\.chunk$/.test(n));
      assert.ok(keyChunksLeft.length > 0, 'the key chunks whose data was not all written are kept');
      assert.ok(written.size < items.length);

      // Second run: the kept key chunks are read again; the dump ends only once all is written.
      const queue = new MemoryQueue({ capacity: 4 });
      const handOff = new HandOffStore(disk, new BufferPool());
      const consuming = consume(queue, handOff, written);
      const counters = await dumpNode(options(queue, handOff));
      assert.ok(counters.read >= items.length - written.size, 'what only the first run held in memory is read again');
      queue.close();
      await consuming;
      assert.equal(written.size, items.length, 'every item was written by one run or the other');
      assert.deepEqual(await dataChunksOnDisk(), []);
      const left = await disk.list(`${nodePrefix('job-4', source.id)}/`);
      assert.ok(!left.some((n) => /keys-\d+\.chunk$/.test(n)), `no key chunk is left: ${left.join(', ')}`);
      assert.ok(await getJson<EndMarker>(disk, endMarkerName('job-4', source.id)));
    } finally {
      await cluster.stop();
    }
  });
});
