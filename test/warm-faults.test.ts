// What "complete" means when nodes fail mid-warm: every fault is repaired, or the job says
// what was lost and is not complete; a rerun redoes exactly what is not done. Every outcome
// is checked on the target item by item, never by the tool's own counters alone.
import assert from 'node:assert/strict';
import { access, mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { type WarmReplicaOptions, warmReplica } from '../controller/warm-replica.js';
import type { WarmSummary } from '../controller/warm-summary.js';
import { systemClock } from '../shared/clock.js';
import { CachewarmError } from '../shared/errors.js';
import type { WritableItem } from '../shared/memcached/meta-add.js';
import { sampleItems } from '../shared/sample-items.js';
import { type MemcachedProcess, type StartMemcachedOptions, startMemcached } from '../shared/local-memcached.js';
import { type Topology, parseTopology } from '../shared/topology.js';
import { type Cluster, load, loadNode, nowSeconds, setMemoryLimit, withCluster } from './support/cluster.js';
import { assertExactCopy, readBack } from './support/read-back.js';
import { waitFor, within } from './support/wait.js';

const workDir = (): Promise<string> => mkdtemp(path.join(os.tmpdir(), 'cachewarm-faults-'));
const MiB = 1 << 20;

function warm(topology: Topology, overrides: Partial<WarmReplicaOptions> & { workDir: string }): Promise<WarmSummary> {
  return warmReplica({ topology, target: 'b', chunkSizeBytes: 256 << 10, clock: systemClock, watchIntervalMs: 100, ...overrides });
}

/** A cluster whose replicas each get their own memcached options (memory, item size). */
async function withReplicas(
  replicas: Record<string, { nodes: number; options?: StartMemcachedOptions }>,
  run: (topology: Topology, servers: Record<string, MemcachedProcess[]>) => Promise<void>,
): Promise<void> {
  const servers: Record<string, MemcachedProcess[]> = {};
  try {
    for (const [name, spec] of Object.entries(replicas)) {
      servers[name] = await Promise.all(Array.from({ length: spec.nodes }, () => startMemcached({ memoryMb: 64, ...spec.options })));
    }
    const topology = parseTopology(
      { hashing: 'spymemcached', replicas: Object.fromEntries(Object.entries(servers).map(([name, s]) => [name, { nodes: s.map((n) => ({ address: n.address })) }])) },
      'test-topology',
    );
    await run(topology, servers);
  } finally {
    await Promise.allSettled(Object.values(servers).flat().map((s) => s.stop()));
  }
}

const problemsText = (summary: WarmSummary): string => (summary.problems ?? []).join('\n');

describe('a warm whose target node restarts', () => {
  for (const [moment, fraction] of [['early', 0.1], ['midway', 0.5], ['near the end', 0.9]] as const) {
    test(`${moment}, back at once: the node is refilled in a repair pass, and the target then holds every item exactly`, async () => {
      await withCluster({ a: 2, b: 3 }, async (cluster) => {
        const items = sampleItems({ count: 40_000, valueBytes: 200, nowSeconds: nowSeconds() });
        await load(cluster.topology, 'a', items);
        let restarted: Promise<MemcachedProcess> | undefined;
        const summary = await warm(cluster.topology, {
          workDir: await workDir(),
          maxOpsPerNode: 8_000,
          progressIntervalMs: 20,
          onProgress: (p) => {
            if (p.written.stored + p.written.existed >= fraction * items.length) restarted ??= cluster.restartEmpty('b', 1);
          },
        });
        const fresh = await restarted;
        assert.ok(fresh, 'the node was restarted mid-warm');
        assert.equal(summary.complete, true, problemsText(summary));
        const victim = `b/${fresh.address}`;
        assert.ok(summary.repairs?.some((r) => r.nodes?.includes(victim) && /restarted during copy/.test(r.reason)), JSON.stringify(summary.repairs));
        assert.equal(summary.targetNodes.find((n) => n.node === victim)?.restarts, 1);
        await assertExactCopy({ topology: cluster.topology, replica: 'b' }, items);
      });
    });
  }

  test('down longer than the writers wait: the run fails naming it; the rerun refills its share, exactly', async () => {
    await withCluster({ a: 2, b: 2 }, async (cluster) => {
      const items = sampleItems({ count: 30_000, valueBytes: 200, nowSeconds: nowSeconds() });
      await load(cluster.topology, 'a', items);
      const dir = await workDir();
      const victim = cluster.servers['b']?.[0] as MemcachedProcess;
      let stopped: Promise<void> | undefined;
      await assert.rejects(
        warm(cluster.topology, {
          workDir: dir,
          jobId: 'outage',
          maxOpsPerNode: 8_000,
          progressIntervalMs: 50,
          onProgress: (p) => {
            if (p.written.stored > 8_000) stopped ??= victim.stop();
          },
        }),
        (error: unknown) => error instanceof CachewarmError && error.message.includes(`b/${victim.address}`),
      );
      await stopped;
      await cluster.restartEmpty('b', 0);

      const rerun = await warm(cluster.topology, { workDir: dir, jobId: 'outage' });
      assert.equal(rerun.complete, true, problemsText(rerun));
      assert.equal(rerun.resumed, true);
      assert.ok(rerun.repairs?.some((r) => r.nodes?.includes(`b/${victim.address}`) && /restarted since the last run/.test(r.reason)), JSON.stringify(rerun.repairs));
      assert.equal(rerun.targetNodes.find((n) => n.node === `b/${victim.address}`)?.restarts, 1);
      assert.equal(rerun.targetNodes.find((n) => n.node !== `b/${victim.address}`)?.restarts, 0);
      await assertExactCopy({ topology: cluster.topology, replica: 'b' }, items);
    });
  });
});

describe('a warm into a target too small for it', () => {
  test('is refused before anything is copied, with the numbers; accepted, its evictions leave it incomplete, rerun or not', async () => {
    await withReplicas({ a: { nodes: 1, options: { memoryMb: 128 } }, b: { nodes: 1, options: { memoryMb: 8 } } }, async (topology, servers) => {
      await load(topology, 'a', sampleItems({ count: 30_000, valueBytes: 1000, nowSeconds: nowSeconds() }));
      const target = servers['b']?.[0] as MemcachedProcess;
      const dir = await workDir();
      const timersBefore = activeTimers();
      await assert.rejects(warm(topology, { workDir: dir, jobId: 'small' }), (error: unknown) => {
        assert.ok(error instanceof CachewarmError, String(error));
        assert.equal(error.code, 'TARGET_TOO_SMALL');
        assert.match(error.message, new RegExp(`b/${target.address} would receive ~\\d+\\.\\d MiB but has 8\\.0 MiB`));
        return true;
      });
      assert.equal(activeTimers(), timersBefore, 'the refused warm left nothing running (its node watches are stopped)');

      const accepted = await warm(topology, { workDir: dir, jobId: 'small', acceptEvictions: true });
      assert.equal(accepted.complete, false);
      const node = accepted.targetNodes[0];
      assert.ok((node?.evictions ?? 0) > 0, JSON.stringify(node));
      assert.match(problemsText(accepted), new RegExp(`target node b/${target.address} evicted [\\d,]+ items during the warm \\(it holds [\\d.]+ of 8\\.0 MiB\\)`));

      const rerun = await warm(topology, { workDir: dir, jobId: 'small', acceptEvictions: true });
      assert.equal(rerun.complete, false, 'the rerun evicts again: still incomplete');
      assert.ok(rerun.repairs?.some((r) => /evicted/.test(r.reason)), JSON.stringify(rerun.repairs));
    });
  });
});

describe('a warm whose target refuses items', () => {
  const bigItems = (now: number): WritableItem[] =>
    ['big-1', 'big-2', 'big-3'].map((key, i) => ({ key: Buffer.from(key), value: Buffer.alloc(1.5 * MiB, 0x61 + i), flags: i, exptime: 0 }));

  test('too large for it: counted by reason on every run, the job never completes, unless --skip-too-large accepts it', async () => {
    await withReplicas({ a: { nodes: 1, options: { extraArgs: ['-I', '2m'] } }, b: { nodes: 2 } }, async (topology) => {
      const now = nowSeconds();
      const small = sampleItems({ count: 2_000, valueBytes: 100, nowSeconds: now });
      await load(topology, 'a', [...small, ...bigItems(now)]);
      const dir = await workDir();

      const first = await warm(topology, { workDir: dir, jobId: 'big' });
      assert.equal(first.complete, false);
      assert.equal(first.targetNodes.reduce((sum, n) => sum + n.tooLarge, 0), 3);
      assert.match(problemsText(first), /refused \d items as too large for it \(its item size limit is 1\.0 MiB;/);
      assert.ok(first.targetNodes.every((n) => n.tooLarge === 0 || n.itemSizeMaxBytes === MiB), JSON.stringify(first.targetNodes));
      await assertExactCopy({ topology, replica: 'b' }, small);

      const second = await warm(topology, { workDir: dir, jobId: 'big' });
      assert.equal(second.complete, false, 'an identical rerun is not complete');
      assert.equal(second.targetNodes.reduce((sum, n) => sum + n.tooLarge, 0), 3, 'it tried exactly those items again');
      assert.equal(second.targetNodes.reduce((sum, n) => sum + n.stored + n.existed, 0), 0, 'and nothing else');

      const accepted = await warm(topology, { workDir: dir, jobId: 'big', skipTooLarge: true });
      assert.equal(accepted.complete, true, problemsText(accepted));
      assert.equal(accepted.skippedTooLarge, 3);
      const again = await warm(topology, { workDir: dir, jobId: 'big' });
      assert.equal(again.skipped, 'already-complete');
    });
  });

  test('out of memory (-M): incomplete; once the node has room, the rerun writes exactly what was refused', async () => {
    await withReplicas({ a: { nodes: 1, options: { memoryMb: 128 } }, b: { nodes: 1, options: { memoryMb: 8, extraArgs: ['-M'] } } }, async (topology, servers) => {
      const items = sampleItems({ count: 20_000, valueBytes: 1000, nowSeconds: nowSeconds() });
      await load(topology, 'a', items);
      const dir = await workDir();
      const first = await warm(topology, { workDir: dir, jobId: 'oom', acceptEvictions: true });
      assert.equal(first.complete, false);
      const refused = first.targetNodes[0]?.outOfMemory ?? 0;
      assert.ok(refused > 0, JSON.stringify(first.targetNodes));
      assert.match(problemsText(first), /items for want of memory/);
      assert.equal((await readBack({ topology, replica: 'b' }, items)).missing.length, refused, 'what was refused is exactly what is missing');

      // The node gets room without losing what it holds: flushing nothing, only raising its limit.
      const target = servers['b']?.[0] as MemcachedProcess;
      await setMemoryLimit(target, 128);
      const rerun = await warm(topology, { workDir: dir, jobId: 'oom' });
      assert.equal(rerun.complete, true, problemsText(rerun));
      assert.equal(rerun.targetNodes[0]?.stored, refused, 'the rerun wrote exactly the refused items');
      assert.equal(rerun.targetNodes[0]?.reconcileChecked, refused, 'and looked each up at the source for deletes');
      await assertExactCopy({ topology, replica: 'b' }, items);
    });
  });
});

describe('a warm whose source node restarts mid-dump', () => {
  test('with another full replica, its share is taken from there: complete in one run, every item in place', async () => {
    await withCluster({ a: 2, b: 2, c: 2 }, async (cluster) => {
      const items = sampleItems({ count: 30_000, valueBytes: 100, nowSeconds: nowSeconds() });
      await Promise.all([load(cluster.topology, 'a', items), load(cluster.topology, 'c', items.slice(0, 29_000))]);
      let restarted: Promise<MemcachedProcess> | undefined;
      const summary = await warm(cluster.topology, {
        workDir: await workDir(),
        maxOpsPerNode: 5_000,
        progressIntervalMs: 20,
        onProgress: (p) => {
          if (p.dumped.read > 3_000) restarted ??= cluster.restartEmpty('a', 0);
        },
      });
      const fresh = await restarted;
      assert.ok(fresh);
      assert.equal(summary.source, 'a', 'the fullest replica was the source');
      assert.equal(summary.complete, true, problemsText(summary));
      assert.ok(summary.repairs?.some((r) => r.reason === `a/${fresh.address} restarted: its share taken from c`), JSON.stringify(summary.repairs));
      // What the node gave before its restart was looked up for deletes at c in its place.
      assert.equal(summary.targetNodes.reduce((sum, n) => sum + n.reconcileUnchecked, 0), 0);
      // What c holds of the restarted node's share, and everything the other source node holds.
      const fromC = new Set((await itemsHeld(cluster, items, 'c')).map((i) => i.key.toString()));
      const survivor = new Set((await itemsHeld(cluster, items, 'a')).map((i) => i.key.toString()));
      const expected = items.filter((i) => survivor.has(i.key.toString()) || fromC.has(i.key.toString()));
      assert.ok(expected.length >= 29_000);
      await assertExactCopy({ topology: cluster.topology, replica: 'b' }, expected);
    });
  });

  test('with no other replica: incomplete, naming the node; the rerun copies its share from what it holds now', async () => {
    await withCluster({ a: 2, b: 2 }, async (cluster) => {
      const items = sampleItems({ count: 30_000, valueBytes: 100, nowSeconds: nowSeconds() });
      await load(cluster.topology, 'a', items);
      const dir = await workDir();
      let restarted: Promise<MemcachedProcess> | undefined;
      const first = await warm(cluster.topology, {
        workDir: dir,
        jobId: 'source-restart',
        maxOpsPerNode: 5_000,
        progressIntervalMs: 20,
        onProgress: (p) => {
          if (p.dumped.read > 3_000) restarted ??= cluster.restartEmpty('a', 0);
        },
      });
      const fresh = await restarted;
      assert.ok(fresh);
      assert.equal(first.complete, false, 'what the restarted node held is gone: not complete');
      assert.equal(first.sourceNodes.find((n) => n.node === `a/${fresh.address}`)?.restarted, true);
      assert.match(problemsText(first), new RegExp(`source node a/${fresh.address} restarted during its dump: .* no other full replica has it`));

      // What the restarted node holds now: keys written again by the application.
      const rewritten = sampleItems({ count: 500, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'rewritten' });
      await loadNode(fresh, rewritten);
      const rerun = await warm(cluster.topology, { workDir: dir, jobId: 'source-restart' });
      assert.equal(rerun.complete, true, problemsText(rerun));
      assert.ok(rerun.repairs?.some((r) => /source .* restarted/.test(r.reason)), JSON.stringify(rerun.repairs));
      const stillInSource = await itemsHeld(cluster, items, 'a');
      assert.ok(stillInSource.length < items.length);
      await assertExactCopy({ topology: cluster.topology, replica: 'b' }, [...stillInSource, ...rewritten]);
    });
  });
});

describe('one run per job id', () => {
  test('a second run of a running job exits at once naming the holder; a dead holder does not keep the job', async () => {
    await withCluster({ a: 1, b: 1 }, async (cluster) => {
      const items = sampleItems({ count: 20_000, valueBytes: 100, nowSeconds: nowSeconds() });
      await load(cluster.topology, 'a', items);
      const dir = await workDir();
      const stop = new AbortController();
      const first = warm(cluster.topology, { workDir: dir, jobId: 'once', maxOpsPerNode: 2_000, signal: stop.signal });
      first.catch(() => undefined);
      await waitFor(() => existsLock(dir, 'once'), { what: 'the first run to take the lock' });
      await assert.rejects(warm(cluster.topology, { workDir: dir, jobId: 'once' }), (error: unknown) => {
        assert.ok(error instanceof CachewarmError);
        assert.equal(error.code, 'JOB_LOCKED');
        assert.match(error.message, new RegExp(`job once is already running \\(${os.hostname()} pid ${process.pid} since \\d{4}-`));
        return true;
      });
      stop.abort(new CachewarmError('ABORTED', 'stopped by the test'));
      await within(assert.rejects(first, /stopped by the test/), { what: 'the first run to stop' });

      // A lock left by a process that is gone.
      await writeFile(path.join(dir, 'once', 'lock.json'), JSON.stringify({ host: os.hostname(), pid: 2 ** 22 + 1, since: new Date().toISOString() }));
      const summary = await warm(cluster.topology, { workDir: dir, jobId: 'once' });
      assert.equal(summary.complete, true, problemsText(summary));
      await assertExactCopy({ topology: cluster.topology, replica: 'b' }, items);
    });
  });
});

/** Timers keeping this process alive: a watch left polling after its job shows here. */
const activeTimers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;

function existsLock(dir: string, jobId: string): Promise<boolean> {
  return access(path.join(dir, jobId, 'lock.json')).then(
    () => true,
    () => false,
  );
}

/** The items a replica still holds (as they were written: none is rewritten in these tests). */
async function itemsHeld(cluster: Cluster, items: readonly WritableItem[], replica: string): Promise<WritableItem[]> {
  const report = await readBack({ topology: cluster.topology, replica }, items);
  const missing = new Set(report.missing);
  return items.filter((item) => !missing.has(item.key.toString()));
}

