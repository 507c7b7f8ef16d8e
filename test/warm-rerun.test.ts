import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { verifyCopy } from '../controller/verify-copy.js';
import { warmReplica } from '../controller/warm-replica.js';
import { targetRingOf } from '../controller/warm-plan.js';
import { connectDirect } from '../shared/memcached/connect.js';
import { systemClock } from '../shared/clock.js';
import { CachewarmError } from '../shared/errors.js';
import { nodeDirectory } from '../shared/job-layout.js';
import { sampleItems } from '../shared/sample-items.js';
import { cachewarm, topologyFileOf } from './support/cli.js';
import { countersOf, load, loadNode, nowSeconds, withCluster } from './support/cluster.js';

const workDir = (): Promise<string> => mkdtemp(path.join(os.tmpdir(), 'cachewarm-rerun-'));

interface JobJson {
  status: string;
  createdAt: string;
  error?: string;
}

const jobJson = async (dir: string, jobId: string): Promise<JobJson> =>
  JSON.parse(await readFile(path.join(dir, jobId, 'job.json'), 'utf8')) as JobJson;

const sum = (values: readonly number[]): number => values.reduce((a, b) => a + b, 0);

describe('a warm run again with the same --job-id and work dir', () => {
  test('resumes an interrupted job: every item ends up in place, and a source node whose dump had finished is not read again', async () => {
    await withCluster({ a: 3, b: 2 }, async (cluster) => {
      // Unequal source nodes, so one finishes its dump long before the others.
      const now = nowSeconds();
      const small = sampleItems({ count: 1_000, valueBytes: 100, nowSeconds: now, seed: 'small' });
      const large1 = sampleItems({ count: 12_000, valueBytes: 100, nowSeconds: now, seed: 'large-1' });
      const large2 = sampleItems({ count: 12_000, valueBytes: 100, nowSeconds: now, seed: 'large-2' });
      const [quick, slow1, slow2] = cluster.servers['a'] ?? [];
      assert.ok(quick && slow1 && slow2);
      await Promise.all([loadNode(quick, small), loadNode(slow1, large1), loadNode(slow2, large2)]);
      const all = [...small, ...large1, ...large2];
      const dir = await workDir();
      const jobId = 'scale-up-b';
      const quickEnd = path.join(dir, jobId, 'copy', nodeDirectory(`a/${quick.address}`), 'end.json');
      // The delete reconcile's lookups (one per item written) would be counted with the dump's
      // reads: this test counts the dump's alone.
      const options = { topology: cluster.topology, target: 'b', workDir: dir, jobId, chunkSizeBytes: 32 << 10, clock: systemClock, reconcileDeletes: false };

      // First run: interrupted once the small node's dump has finished, the others' not.
      const interrupt = new AbortController();
      await assert.rejects(
        warmReplica({
          ...options,
          maxOpsPerNode: 4_000,
          signal: interrupt.signal,
          progressIntervalMs: 20,
          onProgress: () => {
            if (existsSync(quickEnd)) interrupt.abort(new CachewarmError('ABORTED', 'interrupted by the test'));
          },
        }),
        /interrupted by the test/,
      );
      const interrupted = await jobJson(dir, jobId);
      assert.equal(interrupted.status, 'failed');
      assert.equal(existsSync(path.join(dir, jobId, 'copy', nodeDirectory(`a/${slow1.address}`), 'end.json')), false, 'a large node was still dumping');
      const before = await countersOf([quick, slow1, slow2]);
      const chunksLog = path.join(dir, jobId, 'chunks.log');
      const logBefore = await readFile(chunksLog, 'utf8');

      // No read-back at the end: it reads every source node, and this counts the dump's reads.
      const summary = await warmReplica({ ...options, verifySamplePerNode: 0 });

      assert.equal(summary.complete, true);
      assert.equal(summary.resumed, true);
      assert.equal(summary.jobId, jobId);
      const report = await verifyCopy(all, targetRingOf(cluster.topology, 'b'), { connect: connectDirect });
      assert.equal(report.matched, all.length, report.examples.join('\n'));
      const reads = (await countersOf([quick, slow1, slow2])).map((after, i) => after.cmdGet - (before[i]?.cmdGet ?? 0));
      assert.equal(reads[0], 0, 'the node that had finished was not read again');
      assert.ok(sum(reads) < all.length, `the rerun read ${sum(reads)} items, a full run reads ${all.length}`);

      const resumed = await jobJson(dir, jobId);
      assert.equal(resumed.status, 'completed');
      assert.equal(resumed.createdAt, interrupted.createdAt, 'the job keeps its creation time');
      const logAfter = await readFile(chunksLog, 'utf8');
      assert.ok(logAfter.startsWith(logBefore) && logAfter.length > logBefore.length, 'the rerun appends to chunks.log');
    });
  });

  test('reports a job that completed as already complete, exit 0, and does nothing', async () => {
    await withCluster({ a: 1, b: 1 }, async (cluster) => {
      await load(cluster.topology, 'a', sampleItems({ count: 3_000, valueBytes: 50, nowSeconds: nowSeconds() }));
      const file = await topologyFileOf(cluster.topology);
      const args = ['warm', 'replica', '--topology', file, '--target', 'b', '--work-dir', path.dirname(file), '--job-id', 'nightly'];
      const first = await cachewarm(...args);
      assert.equal(first.code, 0, first.stderr);
      const completed = await jobJson(path.dirname(file), 'nightly');
      const source = await countersOf(cluster.servers['a'] ?? []);

      const again = await cachewarm(...args);

      assert.equal(again.code, 0, again.stderr);
      assert.match(again.stdout, /^job nightly was already complete: nothing redone/);
      assert.match(again.stdout, /a -> b completed/);
      assert.deepEqual(await countersOf(cluster.servers['a'] ?? []), source, 'the source was not touched');
      assert.deepEqual(await jobJson(path.dirname(file), 'nightly'), completed, 'the record is unchanged');
      assert.doesNotMatch(again.stderr + first.stderr, /\r|\x1b\[/, 'no progress bar when not on a terminal');
    });
  });

  test('refuses a job id that names another warm, naming the warm it is', async () => {
    await withCluster({ a: 1, b: 1, c: 1 }, async (cluster) => {
      await load(cluster.topology, 'a', sampleItems({ count: 100, valueBytes: 10, nowSeconds: nowSeconds() }));
      const dir = await workDir();
      const options = { topology: cluster.topology, workDir: dir, jobId: 'job-1', chunkSizeBytes: 1 << 20, clock: systemClock };
      await warmReplica({ ...options, target: 'b' });
      await assert.rejects(warmReplica({ ...options, target: 'c' }), (error: unknown) => {
        assert.ok(error instanceof CachewarmError);
        assert.equal(error.code, 'INVALID_ARGUMENT');
        assert.match(error.message, /job job-1 is the replica warm of b, not the replica warm of c/);
        return true;
      });
    });
  });
});

describe('a replica warm into a target that is already warm', () => {
  test('says so, exits 0 and copies nothing; --force copies anyway, every item already present', async () => {
    await withCluster({ a: 2, b: 2 }, async (cluster) => {
      const items = sampleItems({ count: 4_000, valueBytes: 50, nowSeconds: nowSeconds() });
      await load(cluster.topology, 'a', items);
      await load(cluster.topology, 'b', items);
      const file = await topologyFileOf(cluster.topology);
      const args = ['warm', 'replica', '--topology', file, '--target', 'b', '--work-dir', path.dirname(file)];
      const source = await countersOf(cluster.servers['a'] ?? []);

      const run = await cachewarm(...args);

      assert.equal(run.code, 0, run.stderr);
      assert.match(run.stdout, /^b is already warm, nothing copied: b holds 4,000 items, the source holds ~4,000 \(1\.00 >= 0\.95\)/);
      assert.deepEqual((await countersOf(cluster.servers['a'] ?? [])).map((c) => c.cmdGet), source.map((c) => c.cmdGet));

      const forced = await cachewarm(...args, '--force', '--json');
      assert.equal(forced.code, 0, forced.stderr);
      const summary = JSON.parse(forced.stdout) as { complete: boolean; targetNodes: { stored: number; existed: number }[] };
      assert.equal(summary.complete, true);
      assert.equal(sum(summary.targetNodes.map((n) => n.stored)), 0);
      assert.equal(sum(summary.targetNodes.map((n) => n.existed)), items.length);
    });
  });

  test('counts as warm from --already-warm-ratio of the source: below it, the rest is copied', async () => {
    await withCluster({ a: 1, b: 1 }, async (cluster) => {
      const items = sampleItems({ count: 2_000, valueBytes: 50, nowSeconds: nowSeconds() });
      await load(cluster.topology, 'a', items);
      await load(cluster.topology, 'b', items.slice(0, 1_800));
      const base = { topology: cluster.topology, target: 'b', chunkSizeBytes: 1 << 20, clock: systemClock };

      const lenient = await warmReplica({ ...base, workDir: await workDir(), alreadyWarmRatio: 0.9 });
      assert.equal(lenient.skipped, 'already-warm');
      assert.equal(lenient.warmth?.ratio, 0.9);

      const strict = await warmReplica({ ...base, workDir: await workDir() });
      assert.equal(strict.skipped, undefined);
      assert.equal(strict.warmth?.alreadyWarm, false);
      assert.deepEqual(strict.targetNodes.map((n) => ({ stored: n.stored, existed: n.existed })), [{ stored: 200, existed: 1_800 }]);
    });
  });
});
