import assert from 'node:assert/strict';
import { mkdtemp, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { verifyCopy } from '../controller/verify-copy.js';
import { warmReplica } from '../controller/warm-replica.js';
import { targetRingOf } from '../controller/warm-plan.js';
import { connectDirect } from '../shared/memcached/connect.js';
import { ringOfTarget } from '../populator/write-to-ring.js';
import { systemClock } from '../shared/clock.js';
import { CachewarmError } from '../shared/errors.js';
import net from 'node:net';
import type { WritableItem } from '../shared/memcached/meta-add.js';
import { sampleItems } from '../shared/sample-items.js';
import { type Cluster, itemCount, load, nowSeconds, readFrom, withCluster } from './support/cluster.js';

const workDir = (): Promise<string> => mkdtemp(path.join(os.tmpdir(), 'cachewarm-test-'));

function warm(cluster: Cluster, overrides: Partial<Parameters<typeof warmReplica>[0]> & { workDir: string }) {
  return warmReplica({
    topology: cluster.topology,
    target: 'b',
    chunkSizeBytes: 1 << 20,
    clock: systemClock,
    ...overrides,
  });
}

describe('a replica warm on the embedded default', () => {
  test('copies every item of a 3-node replica to the node a 4-node ring names, with identical value, flags and expiry', async () => {
    await withCluster({ a: 3, b: 4 }, async (cluster) => {
      const items = sampleItems({ count: 120_000, valueBytes: 100, nowSeconds: nowSeconds() });
      await load(cluster.topology, 'a', items);

      const summary = await warm(cluster, { workDir: await workDir() });

      assert.equal(summary.complete, true);
      assert.equal(summary.source, 'a');
      const stored = summary.targetNodes.reduce((sum, n) => sum + n.stored, 0);
      assert.equal(stored, items.length);
      const report = await verifyCopy(items, targetRingOf(cluster.topology, 'b'), { connect: connectDirect });
      assert.deepEqual({ missing: report.missing, mismatched: report.mismatched, examples: report.examples }, { missing: 0, mismatched: 0, examples: [] });
      assert.equal(report.matched, items.length);

      // Nothing landed anywhere else: each target node holds exactly its share of the ring.
      const ring = ringOfTarget(targetRingOf(cluster.topology, 'b'));
      const share = new Map<string, number>();
      for (const item of items) {
        const address = ring.nodeFor(item.key).address;
        share.set(address, (share.get(address) ?? 0) + 1);
      }
      for (const server of cluster.servers['b'] ?? []) {
        assert.equal(await itemCount(server), share.get(server.address) ?? 0, `items on ${server.address}`);
      }
    });
  });

  test('never replaces a value the target already holds, whether written before or during the warm', async () => {
    await withCluster({ a: 2, b: 3 }, async (cluster) => {
      const items = sampleItems({ count: 20_000, valueBytes: 64, nowSeconds: nowSeconds() });
      await load(cluster.topology, 'a', items);
      const newer = (item: WritableItem): WritableItem => ({ ...item, value: Buffer.from(`newer:${item.key}`), flags: 7, exptime: 0 });
      const before = items.slice(0, 500).map(newer);
      const during = items.slice(10_000, 10_500).map(newer);
      await load(cluster.topology, 'b', before);

      let wroteDuring: Promise<void> | undefined;
      const summary = await warm(cluster, {
        workDir: await workDir(),
        maxOpsPerNode: 5_000, // slow enough that the live writes land mid-warm
        progressIntervalMs: 50,
        onProgress: () => {
          wroteDuring ??= load(cluster.topology, 'b', during);
        },
      });
      await wroteDuring;

      const existed = summary.targetNodes.reduce((sum, n) => sum + n.existed, 0);
      assert.ok(existed >= before.length, `existed ${existed} counts at least the ${before.length} written before`);
      const report = await verifyCopy([...before, ...during], targetRingOf(cluster.topology, 'b'), { connect: connectDirect });
      assert.equal(report.matched, before.length + during.length, report.examples.join('\n'));
    });
  });

  test('copies awkward keys and values exactly: empty, every byte value, 1 MiB, punctuation, UTF-8, invalid UTF-8, spaces', async () => {
    await withCluster(
      { a: 2, b: 3 },
      async (cluster) => {
        const now = nowSeconds();
        const every = Buffer.alloc(256);
        for (let i = 0; i < 256; i++) every[i] = i;
        const big = Buffer.alloc(1 << 20);
        for (let i = 0; i < big.length; i++) big[i] = (i * 31 + 7) & 0xff;
        const items: WritableItem[] = [
          { key: Buffer.from('empty'), value: Buffer.alloc(0), flags: 0, exptime: 0 },
          { key: Buffer.from('all-bytes'), value: every, flags: 0xffffffff, exptime: now + 3_600 },
          { key: Buffer.from('one-mebibyte'), value: big, flags: 1, exptime: now + 86_400 },
          { key: Buffer.from('a:b/c?d=e&f%20g#h[i]{j}|k~l!m$n'), value: Buffer.from('punct'), flags: 2, exptime: 0 },
          { key: Buffer.from('ключ-🔑-キー'), value: Buffer.from('utf8'), flags: 3, exptime: now + 600 },
          { key: Buffer.from([0x6b, 0xff, 0xfe, 0xc3, 0x28]), value: Buffer.from('invalid utf8'), flags: 4, exptime: 0 },
          { key: Buffer.from('with space\tand tab'), value: Buffer.from('base64 on the wire'), flags: 5, exptime: 0 },
          { key: Buffer.alloc(250, 0x78), value: Buffer.from('longest key'), flags: 6, exptime: 0 },
        ];
        await load(cluster.topology, 'a', items);

        const summary = await warm(cluster, { workDir: await workDir(), chunkSizeBytes: 64 << 10 });

        assert.equal(summary.complete, true);
        const report = await verifyCopy(items, targetRingOf(cluster.topology, 'b'), { connect: connectDirect });
        assert.equal(report.matched, items.length, report.examples.join('\n'));
      },
      { extraArgs: ['-I', '2m'] },
    );
  });

  test('skips and counts a key the text protocol cannot name, and reports the warm incomplete', async () => {
    await withCluster({ a: 1, b: 1 }, async (cluster) => {
      // A 200-byte key with a space: its base64 form exceeds memcached's 250-character token.
      const unnameable = Buffer.concat([Buffer.from('space '), Buffer.alloc(194, 0x61)]);
      // Only a binary-protocol client can write such a key: a raw binary SET.
      const header = Buffer.alloc(24);
      header[0] = 0x80;
      header[1] = 0x01;
      header.writeUInt16BE(unnameable.length, 2);
      header[4] = 8;
      header.writeUInt32BE(8 + unnameable.length + 1, 8);
      await new Promise<void>((resolve) => {
        const socket = net.connect(cluster.servers['a']?.[0] as { host: string; port: number }, () => {
          socket.write(Buffer.concat([header, Buffer.alloc(8), unnameable, Buffer.from('v')]));
        });
        socket.on('data', () => socket.destroy());
        socket.on('close', () => resolve());
      });
      await load(cluster.topology, 'a', sampleItems({ count: 100, valueBytes: 10, nowSeconds: nowSeconds() }));

      const summary = await warm(cluster, { workDir: await workDir() });

      assert.equal(summary.sourceNodes[0]?.unsupported, 1);
      assert.equal(summary.targetNodes[0]?.stored, 100);
      assert.equal(summary.complete, false);
    });
  });

  test('does not resurrect items that expire during the warm', async () => {
    await withCluster({ a: 2, b: 2 }, async (cluster) => {
      const now = nowSeconds();
      const lasting = sampleItems({ count: 2_000, valueBytes: 32, nowSeconds: now, seed: 'lasting' }).map((i) => ({ ...i, exptime: now + 3_600 }));
      const shortLived = sampleItems({ count: 2_000, valueBytes: 32, nowSeconds: now, seed: 'short' }).map((i) => ({ ...i, exptime: now + 3 }));
      await load(cluster.topology, 'a', [...lasting, ...shortLived]);

      // 4,000 items at 500/s per node: the warm outlives the short-lived items.
      const summary = await warm(cluster, { workDir: await workDir(), maxOpsPerNode: 500 });
      while (nowSeconds() <= now + 4) await new Promise((r) => setTimeout(r, 200));

      // Expired by the time they were read (memcached answers a miss, `gone`: nothing else
      // deletes here), or read in their last second (`expired`), or expired before written.
      const expired =
        summary.sourceNodes.reduce((s, n) => s + n.expired + n.gone, 0) + summary.targetNodes.reduce((s, n) => s + n.expired, 0);
      assert.ok(expired > 0, 'some short-lived items expired before they were copied');
      for (const server of cluster.servers['b'] ?? []) {
        const back = await readFrom(server, shortLived.map((i) => i.key));
        assert.equal(back.filter(Boolean).length, 0, `short-lived items alive on ${server.address} after their expiry`);
      }
      const report = await verifyCopy(lasting, targetRingOf(cluster.topology, 'b'), { connect: connectDirect });
      assert.equal(report.matched, lasting.length);
    });
  });

  test('picks the fullest replica other than the target as the source', async () => {
    await withCluster({ a: 1, b: 1, c: 1 }, async (cluster) => {
      await load(cluster.topology, 'a', sampleItems({ count: 100, valueBytes: 10, nowSeconds: nowSeconds(), seed: 'a' }));
      await load(cluster.topology, 'c', sampleItems({ count: 300, valueBytes: 10, nowSeconds: nowSeconds(), seed: 'c' }));
      const summary = await warm(cluster, { workDir: await workDir() });
      assert.equal(summary.source, 'c');
      assert.equal(summary.targetNodes[0]?.stored, 300);
    });
  });

  test('limits each source node to --max-ops items per second', async () => {
    await withCluster({ a: 1, b: 1 }, async (cluster) => {
      await load(cluster.topology, 'a', sampleItems({ count: 3_000, valueBytes: 10, nowSeconds: nowSeconds() }));
      const started = Date.now();
      await warm(cluster, { workDir: await workDir(), maxOpsPerNode: 1_000 });
      // A lower bound only: 3,000 items at 1,000/s cannot take less than ~2.9 s (burst 100).
      assert.ok(Date.now() - started >= 2_800, `took ${Date.now() - started} ms`);
    });
  });

  test('writes a job record with the chunks produced and consumed', async () => {
    await withCluster({ a: 1, b: 1 }, async (cluster) => {
      await load(cluster.topology, 'a', sampleItems({ count: 5_000, valueBytes: 100, nowSeconds: nowSeconds() }));
      const dir = await workDir();
      const summary = await warm(cluster, { workDir: dir, jobId: 'job-1', chunkSizeBytes: 64 << 10 });
      const record = JSON.parse(await readFile(path.join(dir, 'job-1', 'job.json'), 'utf8')) as { status: string; source: string };
      assert.equal(record.status, 'completed');
      assert.equal(record.source, 'a');
      const log = (await readFile(path.join(dir, 'job-1', 'chunks.log'), 'utf8')).trim().split('\n');
      const produced = log.filter((l) => l.includes(' produced ')).length;
      const consumed = log.filter((l) => l.includes(' consumed ')).length;
      assert.equal(produced, summary.sourceNodes[0]?.dataChunks);
      assert.ok(produced > 1);
      assert.equal(consumed, produced);
    });
  });
});

describe('a replica warm that cannot go on', () => {
  test('fails naming the source node that is down', async () => {
    await withCluster({ a: 2, b: 1 }, async (cluster) => {
      const down = cluster.servers['a']?.[1];
      await down?.stop();
      await assert.rejects(warm(cluster, { workDir: await workDir(), source: 'a' }), (error: unknown) => {
        assert.ok(error instanceof CachewarmError);
        assert.equal(error.code, 'NODE_UNREACHABLE');
        assert.match(error.message, new RegExp(`a/${down?.address.replace(/\./g, '\\.')}`));
        return true;
      });
    });
  });

  /** Kills `replica`'s node `index` once the warm is under way; the warm must fail naming it. */
  async function failsWhenKilled(replica: 'a' | 'b', index: number, sizes: Record<string, number>, chunkSizeBytes?: number): Promise<void> {
    await withCluster(sizes, async (cluster) => {
      await load(cluster.topology, 'a', sampleItems({ count: 8_000, valueBytes: 10, nowSeconds: nowSeconds() }));
      const victim = cluster.servers[replica]?.[index];
      let killed: Promise<void> | undefined;
      await assert.rejects(
        warm(cluster, {
          workDir: await workDir(),
          ...(chunkSizeBytes ? { chunkSizeBytes } : {}),
          maxOpsPerNode: 2_000,
          progressIntervalMs: 300,
          onProgress: () => {
            killed ??= victim?.kill();
          },
        }),
        (error: unknown) => {
          assert.ok(error instanceof CachewarmError, String(error));
          assert.equal(error.code, 'NODE_UNREACHABLE');
          assert.ok(error.message.includes(`${replica}/${victim?.address}`), error.message);
          return true;
        },
      );
      await killed;
    });
  }

  test('fails naming the source node that dies mid-dump', () => failsWhenKilled('a', 0, { a: 2, b: 1 }));

  test('fails naming the target node that dies mid-warm', () => failsWhenKilled('b', 1, { a: 1, b: 2 }, 16 << 10));

  test('refuses to start when a target node is down, naming it', async () => {
    await withCluster({ a: 1, b: 2 }, async (cluster) => {
      const down = cluster.servers['b']?.[0];
      await down?.stop();
      await assert.rejects(warm(cluster, { workDir: await workDir() }), (error: unknown) => {
        assert.ok(error instanceof CachewarmError);
        assert.ok(error.message.includes(`b/${down?.address}`), error.message);
        return true;
      });
    });
  });

  test('refuses the target as its own source, and says when no replica can be the source', async () => {
    await withCluster({ a: 1, b: 1 }, async (cluster) => {
      await assert.rejects(warm(cluster, { workDir: await workDir(), source: 'b' }), /cannot be warmed from itself/);
      await cluster.servers['a']?.[0]?.stop();
      await assert.rejects(warm(cluster, { workDir: await workDir() }), (error: unknown) => {
        assert.ok(error instanceof CachewarmError);
        assert.equal(error.code, 'SOURCE_UNAVAILABLE');
        assert.match(error.message, /a: cannot connect to a\//);
        return true;
      });
    });
  });
});
