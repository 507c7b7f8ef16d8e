import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { verifyCopy } from '../controller/verify-copy.js';
import { targetRingOf } from '../controller/warm-plan.js';
import { type WarmProgress, warmReplica } from '../controller/warm-replica.js';
import { parseProtectSource } from '../dumper/read-pace.js';
import { parseStartDumpRequest } from '../dumper/sidecar-api.js';
import { systemClock } from '../shared/clock.js';
import { CachewarmError } from '../shared/errors.js';
import { connectDirect } from '../shared/memcached/connect.js';
import { sampleItems } from '../shared/sample-items.js';
import { cachewarm, topologyFileOf } from './support/cli.js';
import { load, nowSeconds, withCluster } from './support/cluster.js';

const workDir = (): Promise<string> => mkdtemp(path.join(os.tmpdir(), 'cachewarm-protect-'));

describe('protecting the source: on by default, a guard per source node', () => {
  test('a default warm measures each source node before reading it, shows its guard in the progress, and copies exactly', async () => {
    await withCluster({ a: 2, b: 2 }, async (cluster) => {
      const items = sampleItems({ count: 20_000, valueBytes: 100, nowSeconds: nowSeconds() });
      await load(cluster.topology, 'a', items);
      const seen: WarmProgress[] = [];
      const summary = await warmReplica({
        topology: cluster.topology,
        target: 'b',
        chunkSizeBytes: 1 << 20,
        workDir: await workDir(),
        clock: systemClock,
        // Long enough for the guard to have decided at least once on each node.
        maxOpsPerNode: 4_000,
        progressIntervalMs: 200,
        onProgress: (p) => seen.push(p),
      });
      assert.equal(summary.complete, true);
      const guards = seen.flatMap((p) => p.sourceGuards ?? []);
      assert.deepEqual(new Set(guards.map((g) => g.node)), new Set(cluster.topology.replicas.get('a')?.nodes.map((n) => n.id)));
      for (const guard of guards) {
        assert.equal(guard.factor, 1.2);
        assert.ok(guard.baselineP99Micros !== undefined && guard.baselineP99Micros > 0, JSON.stringify(guard));
        assert.ok(guard.paceItemsPerSecond <= 4_000, `--max-ops stays a hard cap: ${JSON.stringify(guard)}`);
      }
      assert.ok(guards.some((g) => g.decisions > 0), 'the guard adjusted the pace while the dump ran');
      const report = await verifyCopy(items, targetRingOf(cluster.topology, 'b'), { connect: connectDirect });
      assert.deepEqual({ missing: report.missing, mismatched: report.mismatched, examples: report.examples }, { missing: 0, mismatched: 0, examples: [] });
      assert.equal(report.matched, items.length);
    });
  });

  test('a source node that stalls mid-dump makes its guard back off (the pace drops), and the copy is still exact', async () => {
    await withCluster({ a: 1, b: 1 }, async (cluster) => {
      const items = sampleItems({ count: 30_000, valueBytes: 100, nowSeconds: nowSeconds() });
      await load(cluster.topology, 'a', items);
      const source = cluster.servers['a']?.[0];
      assert.ok(source);
      const seen: WarmProgress[] = [];
      let stalled = false;
      const summary = await warmReplica({
        topology: cluster.topology,
        target: 'b',
        chunkSizeBytes: 1 << 20,
        workDir: await workDir(),
        clock: systemClock,
        maxOpsPerNode: 5_000,
        progressIntervalMs: 100,
        onProgress: (p) => {
          seen.push(p);
          const guard = p.sourceGuards?.[0];
          // Once the guard runs at its cap, the node is frozen for 1.5 s: what a live client
          // would see as a latency spike, as long as its probe's control interval and more.
          if (!stalled && guard && guard.state !== 'measuring' && p.dumped.read > 5_000) {
            stalled = true;
            process.kill(source.pid, 'SIGSTOP');
            setTimeout(() => process.kill(source.pid, 'SIGCONT'), 1_500);
          }
        },
      });
      assert.ok(stalled, 'the node was stalled mid-dump');
      assert.equal(summary.complete, true);
      const guards = seen.flatMap((p) => p.sourceGuards ?? []);
      const backedOff = guards.find((g) => g.backoffs > 0);
      assert.ok(backedOff, `the guard backed off: ${JSON.stringify(guards.at(-1))}`);
      const fastest = Math.max(...guards.filter((g) => g.backoffs === 0).map((g) => g.paceItemsPerSecond));
      assert.ok(backedOff.paceItemsPerSecond < fastest, `the pace dropped from ${fastest} to ${backedOff.paceItemsPerSecond}`);
      const report = await verifyCopy(items, targetRingOf(cluster.topology, 'b'), { connect: connectDirect });
      assert.deepEqual({ missing: report.missing, mismatched: report.mismatched, examples: report.examples }, { missing: 0, mismatched: 0, examples: [] });
      assert.equal(report.matched, items.length);
    });
  });

  test('--protect-source off reads without a guard; a factor below 1 is a usage error naming the option', async () => {
    await withCluster({ a: 1, b: 1 }, async (cluster) => {
      await load(cluster.topology, 'a', sampleItems({ count: 2_000, valueBytes: 100, nowSeconds: nowSeconds() }));
      const file = await topologyFileOf(cluster.topology);
      const off = await cachewarm('warm', 'replica', '--topology', file, '--target', 'b', '--protect-source', 'off', '--verbose', '--work-dir', path.dirname(file));
      assert.equal(off.code, 0, off.stderr);
      assert.doesNotMatch(off.stderr, /source p99/);
      const below = await cachewarm('warm', 'replica', '--topology', file, '--target', 'b', '--protect-source', '0.5');
      assert.equal(below.code, 2);
      assert.match(below.stderr, /^cachewarm: .*--protect-source.*factor from 1 to 100/);
    });
  });

  test('a sidecar start request carries the factor or "off"; anything else is refused naming the field', () => {
    const request = (protectSource: unknown) => ({
      jobId: 'j',
      node: 'a/127.0.0.1:1',
      bucket: 'b',
      prefix: '',
      queueUrl: 'http://127.0.0.1:1/q',
      chunkSizeBytes: 1 << 20,
      protectSource,
      target: { replica: 'b', hashing: 'spymemcached', nodes: [{ address: '127.0.0.1:2', ringName: '127.0.0.1:2' }] },
    });
    assert.equal(parseStartDumpRequest(request(1.5)).protectSource, 1.5);
    assert.equal(parseStartDumpRequest(request('off')).protectSource, 'off');
    assert.equal(parseStartDumpRequest(request(undefined)).protectSource, undefined);
    for (const bad of [0.9, 'on', true, -1]) {
      assert.throws(
        () => parseStartDumpRequest(request(bad)),
        (e: unknown) => e instanceof CachewarmError && e.context['field'] === 'protectSource',
      );
    }
    assert.equal(parseProtectSource('1'), 1);
    assert.throws(() => parseProtectSource('1.2x'));
  });
});
