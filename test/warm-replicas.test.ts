import assert from 'node:assert/strict';
import { mkdtemp, readdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { warmReplicas } from '../controller/warm-replicas.js';
import { systemClock } from '../shared/clock.js';
import { sampleItems } from '../shared/sample-items.js';
import { type Cluster, countersOf, crawlsStarted, load, nowSeconds, withCluster } from './support/cluster.js';
import { cachewarm, topologyFileOf } from './support/cli.js';
import { readBack } from './support/read-back.js';

const workDir = (): Promise<string> => mkdtemp(path.join(os.tmpdir(), 'cachewarm-test-'));

function warmBoth(cluster: Cluster, overrides: Partial<Parameters<typeof warmReplicas>[0]> & { workDir: string }) {
  return warmReplicas({ topology: cluster.topology, targets: ['c', 'd'], chunkSizeBytes: 256 << 10, clock: systemClock, ...overrides });
}

/** Reads that found their item on the source's nodes. */
async function sourceHits(cluster: Cluster): Promise<number> {
  return (await countersOf(cluster.servers['a'] ?? [])).reduce((sum, c) => sum + c.getHits, 0);
}

describe('dump once, fill many: one dump of the source warms several replicas', () => {
  test('reads each source item once for two targets, and each target ends up holding every item exactly', async () => {
    await withCluster({ a: 2, c: 3, d: 2 }, async (cluster) => {
      const items = sampleItems({ count: 30_000, valueBytes: 200, nowSeconds: nowSeconds() });
      await load(cluster.topology, 'a', items);
      const hitsBefore = await sourceHits(cluster);
      const dir = await workDir();

      // No read-back at the end: it reads the source too, and here every read is counted.
      const summary = await warmBoth(cluster, { workDir: dir, verifySamplePerNode: 0 });

      // Each target's delete reconcile looks every item it wrote up at the source (mg u): one
      // lookup per item per target, on top of the dump's one read per item.
      const lookups = summary.outcomes.reduce((sum, o) => sum + ('summary' in o ? o.summary.targetNodes.reduce((s, n) => s + n.reconcileChecked, 0) : 0), 0);
      assert.equal(lookups, 2 * items.length, 'each target looked up what it wrote');
      assert.equal(await sourceHits(cluster) - hitsBefore - lookups, items.length, 'source items read: one read per item, not one per target');
      assert.deepEqual({ complete: summary.complete, completed: summary.completed, source: summary.source }, { complete: true, completed: ['c', 'd'], source: 'a' });
      for (const target of ['c', 'd']) {
        const report = await readBack({ topology: cluster.topology, replica: target }, items);
        assert.deepEqual({ identical: report.identical, missing: report.missing.length, different: report.different }, { identical: items.length, missing: 0, different: [] }, `replica ${target}`);
        const outcome = summary.outcomes.find((o) => o.target === target);
        assert.ok(outcome && 'summary' in outcome, `${target} has a summary`);
        assert.equal(outcome.summary.jobId, `${summary.jobId}.${target}`);
        assert.equal(outcome.summary.targetNodes.reduce((sum, n) => sum + n.stored, 0), items.length, `${target}: stored counts every item`);
      }
      // Each target's job has its record; the shared dump's chunks are gone once both are written.
      assert.deepEqual((await readdir(dir)).sort(), [`${summary.jobId}.c`, `${summary.jobId}.d`]);
    });
  });

  test('each target is verified on its own, from a sample of what the one dump listed: the source is crawled once', async () => {
    await withCluster(
      { a: 1, c: 2, d: 1 },
      async (cluster) => {
        const items = sampleItems({ count: 5_000, valueBytes: 100, nowSeconds: nowSeconds() });
        await load(cluster.topology, 'a', items);
        const [before = 0] = await crawlsStarted(cluster.servers['a'] ?? []);

        const summary = await warmBoth(cluster, { workDir: await workDir(), verifySamplePerNode: 500 });

        assert.equal(summary.complete, true);
        for (const outcome of summary.outcomes) {
          assert.ok('summary' in outcome);
          const v = outcome.summary.verification;
          assert.ok(v, `${outcome.target} was read back`);
          assert.equal(v.checked, outcome.target === 'c' ? 1_000 : 500, `${outcome.target}: up to 500 keys per target node`);
          assert.deepEqual({ missing: v.missing, different: v.different }, { missing: 0, different: 0 });
        }
        const [after = 0] = await crawlsStarted(cluster.servers['a'] ?? []);
        assert.equal(after - before, 1, 'crawls of the source node: the dump\'s, none for the read-backs');
      },
      // The LRU maintainer schedules crawls of its own: without it, every crawl a node starts is the warm's.
      { extraArgs: ['-o', 'no_lru_maintainer'] },
    );
  });

  test('a target whose node dies mid-warm fails alone: the other target completes, and the summary says which did', async () => {
    await withCluster({ a: 2, c: 2, d: 2 }, async (cluster) => {
      const items = sampleItems({ count: 20_000, valueBytes: 100, nowSeconds: nowSeconds() });
      await load(cluster.topology, 'a', items);
      let killed: Promise<void> | undefined;

      const summary = await warmBoth(cluster, {
        workDir: await workDir(),
        // Slow enough that the node dies while the dump still runs.
        maxOpsPerNode: 3_000,
        protectSource: 'off',
        progressIntervalMs: 50,
        onProgress: (target, p) => {
          if (target === 'd' && p.written.stored > 0) killed ??= cluster.servers['d']?.[1]?.stop();
        },
      });
      await killed;

      assert.deepEqual({ complete: summary.complete, completed: summary.completed }, { complete: false, completed: ['c'] });
      const d = summary.outcomes.find((o) => o.target === 'd');
      assert.ok(d && 'error' in d, 'd failed');
      assert.equal(d.error.code, 'NODE_UNREACHABLE');
      assert.match(d.error.message, new RegExp(cluster.servers['d']?.[1]?.address ?? 'none'));
      const report = await readBack({ topology: cluster.topology, replica: 'c' }, items);
      assert.deepEqual({ identical: report.identical, missing: report.missing.length }, { identical: items.length, missing: 0 });
    });
  });

  test('the CLI takes a comma-separated --target, prints each target\'s outcome and exits 0 only when every one completed', async () => {
    await withCluster({ a: 1, c: 1, d: 1 }, async (cluster) => {
      const items = sampleItems({ count: 2_000, valueBytes: 50, nowSeconds: nowSeconds() });
      await load(cluster.topology, 'a', items);
      const topology = await topologyFileOf(cluster.topology);
      const dir = await workDir();

      const run = await cachewarm('warm', 'replica', '--topology', topology, '--target', 'c,d', '--work-dir', dir, '--job-id', 'scale-up', '--json');

      assert.equal(run.code, 0, run.stderr);
      const out = JSON.parse(run.stdout) as { jobId: string; complete: boolean; completed: string[]; outcomes: { target: string; summary?: { jobId: string; complete: boolean } }[] };
      assert.deepEqual(
        { jobId: out.jobId, complete: out.complete, completed: out.completed, jobs: out.outcomes.map((o) => [o.target, o.summary?.jobId, o.summary?.complete]) },
        { jobId: 'scale-up', complete: true, completed: ['c', 'd'], jobs: [['c', 'scale-up.c', true], ['d', 'scale-up.d', true]] },
      );

      // Run again: both jobs are complete, nothing is redone.
      const again = await cachewarm('warm', 'replica', '--topology', topology, '--target', 'c,d', '--work-dir', dir, '--job-id', 'scale-up');
      assert.equal(again.code, 0, again.stderr);
      assert.match(again.stdout, /job scale-up\.c was already complete/);
      assert.match(again.stdout, /job scale-up\.d was already complete/);

      const sameTwice = await cachewarm('warm', 'replica', '--topology', topology, '--target', 'c,c', '--work-dir', dir);
      assert.equal(sameTwice.code, 2);
      assert.match(sameTwice.stderr, /two or more different replicas/);
      const sourceIsTarget = await cachewarm('warm', 'replica', '--topology', topology, '--target', 'c,d', '--source', 'd', '--work-dir', dir);
      assert.equal(sourceIsTarget.code, 2);
      assert.match(sourceIsTarget.stderr, /--source d is the target/);
    });
  });

  test('a dry run of several targets plans each from a source that is none of them, even when another target holds more', async () => {
    await withCluster({ a: 1, c: 1, d: 1 }, async (cluster) => {
      await load(cluster.topology, 'a', sampleItems({ count: 1_000, valueBytes: 50, nowSeconds: nowSeconds() }));
      await load(cluster.topology, 'd', sampleItems({ count: 2_000, valueBytes: 50, nowSeconds: nowSeconds(), seed: 'fuller' }));
      const topology = await topologyFileOf(cluster.topology);

      const run = await cachewarm('warm', 'replica', '--topology', topology, '--target', 'c,d', '--dry-run', '--json');

      assert.equal(run.code, 0, run.stderr);
      const { plans } = JSON.parse(run.stdout) as { plans: { target: string; source: string }[] };
      assert.deepEqual(plans.map((p) => [p.target, p.source]), [['c', 'a'], ['d', 'a']]);
    });
  });
});
