import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { once } from 'node:events';
import { mkdtemp, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { sampleItems } from '../shared/sample-items.js';
import { bin, cachewarm, topologyFile, topologyFileOf } from './support/cli.js';
import { load, nowSeconds, startCluster } from './support/cluster.js';

describe('the cachewarm command', () => {
  test('warm replica copies a replica and prints the summary as JSON with --json, exiting 0', async () => {
    const cluster = await startCluster({ a: 2, b: 3 });
    try {
      await load(cluster.topology, 'a', sampleItems({ count: 5_000, valueBytes: 100, nowSeconds: nowSeconds() }));
      const file = await topologyFileOf(cluster.topology);
      const run = await cachewarm('warm', 'replica', '--topology', file, '--target', 'b', '--json', '--work-dir', path.dirname(file));
      assert.equal(run.code, 0, run.stderr);
      const summary = JSON.parse(run.stdout) as { complete: boolean; source: string; targetNodes: { stored: number }[] };
      assert.equal(summary.complete, true);
      assert.equal(summary.source, 'a');
      assert.equal(summary.targetNodes.reduce((s, n) => s + n.stored, 0), 5_000);
    } finally {
      await cluster.stop();
    }
  });

  test('a topology mistake exits 2 with a message naming the file and the field', async () => {
    const file = await topologyFile({ replicas: { a: { nodes: [{ address: '127.0.0.1:1', weight: 2 }] }, b: { nodes: [{ address: '127.0.0.1:2' }] } } });
    const run = await cachewarm('warm', 'replica', '--topology', file, '--target', 'b');
    assert.equal(run.code, 2);
    assert.ok(run.stderr.includes(file), run.stderr);
    assert.match(run.stderr, /replicas\["a"\]\.nodes\[0\]\.weight/);
    assert.match(run.stderr, /TOPOLOGY_INVALID/);
  });

  test('an unknown target replica exits 2 and lists the replicas there are', async () => {
    const file = await topologyFile({ replicas: { a: { nodes: [{ address: '127.0.0.1:1' }] } } });
    const run = await cachewarm('warm', 'replica', '--topology', file, '--target', 'zone-z');
    assert.equal(run.code, 2);
    assert.match(run.stderr, /zone-z/);
    assert.match(run.stderr, /"a"|\ba\b/);
  });

  test('a bad option value is refused before anything starts', async () => {
    const run = await cachewarm('warm', 'replica', '--topology', 'x.json', '--target', 'b', '--chunk-size', 'lots');
    assert.notEqual(run.code, 0);
    assert.match(run.stderr, /--chunk-size/);
    assert.match(run.stderr, /lots/);
  });

  test('an unreachable source exits 1 naming the node', async () => {
    const file = await topologyFile({ replicas: { a: { nodes: [{ address: '127.0.0.1:1' }] }, b: { nodes: [{ address: '127.0.0.1:2' }] } } });
    const run = await cachewarm('warm', 'replica', '--topology', file, '--target', 'b', '--source', 'a');
    assert.equal(run.code, 1);
    assert.match(run.stderr, /cannot connect to a\/127\.0\.0\.1:1/);
  });

  test('SIGINT stops a warm: exit 130, and the job record says it failed and why', async () => {
    const cluster = await startCluster({ a: 1, b: 1 });
    try {
      await load(cluster.topology, 'a', sampleItems({ count: 5_000, valueBytes: 10, nowSeconds: nowSeconds() }));
      const file = await topologyFileOf(cluster.topology);
      const dir = path.dirname(file);
      const child = spawn(process.execPath, [bin, 'warm', 'replica', '--topology', file, '--target', 'b', '--max-ops', '500', '--job-id', 'stopped', '--work-dir', dir]);
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => {
        stderr += chunk.toString();
      });
      // Interrupt once the job is under way (its record exists).
      for (let i = 0; i < 100 && !existsSync(path.join(dir, 'stopped', 'job.json')); i++) await new Promise((r) => setTimeout(r, 50));
      child.kill('SIGINT');
      const [code] = (await once(child, 'exit')) as [number | null];
      assert.equal(code, 130, stderr);
      assert.match(stderr, /SIGINT/);
      const record = JSON.parse(await readFile(path.join(dir, 'stopped', 'job.json'), 'utf8')) as { status: string; error: string };
      assert.equal(record.status, 'failed');
      assert.match(record.error, /interrupted by SIGINT/);
    } finally {
      await cluster.stop();
    }
  });

  test('demo runs the main job on a local cluster and verifies every item', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'cachewarm-demo-'));
    const run = await cachewarm('demo', '--items', '3000', '--work-dir', dir);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /verify: 3,000 of 3,000 items identical/);
    assert.match(run.stdout, /demo-a -> demo-b completed/);
  });
});
