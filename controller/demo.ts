import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { connectDirect } from '../shared/memcached/connect.js';
import { writeAll } from '../populator/write-to-ring.js';
import type { Clock } from '../shared/clock.js';
import { CachewarmError } from '../shared/errors.js';
import { type MemcachedProcess, startMemcachedCluster } from '../shared/local-memcached.js';
import { sampleItems } from '../shared/sample-items.js';
import type { Log } from '../shared/log.js';
import { parseTopology } from '../shared/topology.js';
import { type VerifyReport, verifyCopy } from './verify-copy.js';
import { warmReplica } from './warm-replica.js';
import type { WarmProgress, WarmSummary } from './warm-summary.js';
import { targetRingOf } from './warm-plan.js';

export interface DemoOptions {
  readonly items: number;
  readonly valueBytes: number;
  readonly sourceNodes: number;
  readonly targetNodes: number;
  readonly workDir: string;
  readonly chunkSizeBytes: number;
  readonly clock: Clock;
  readonly log: Log;
  readonly onProgress?: (progress: WarmProgress) => void;
  readonly signal?: AbortSignal | undefined;
}

export interface DemoResult {
  readonly summary: WarmSummary;
  readonly verify: VerifyReport;
}

/**
 * The main job on a local demo cluster: two replicas of real memcached processes on
 * loopback, the first loaded with sample items, warmed into the second, then checked item by
 * item. Every process started is stopped at the end, whatever happens.
 */
export async function runDemo(options: DemoOptions): Promise<DemoResult> {
  const { log, clock } = options;
  const servers: MemcachedProcess[] = [];
  try {
    log({ event: 'demo-starting', msg: `starting ${options.sourceNodes} + ${options.targetNodes} memcached processes on 127.0.0.1` });
    servers.push(...(await startMemcachedCluster(options.sourceNodes + options.targetNodes, { memoryMb: 256 })));
    const document = {
      hashing: 'spymemcached',
      replicas: {
        'demo-a': { nodes: servers.slice(0, options.sourceNodes).map((s) => ({ address: s.address })) },
        'demo-b': { nodes: servers.slice(options.sourceNodes).map((s) => ({ address: s.address })) },
      },
    };
    await mkdir(options.workDir, { recursive: true });
    const topologyFile = path.join(options.workDir, 'demo-topology.json');
    await writeFile(topologyFile, `${JSON.stringify(document, null, 2)}\n`);
    const topology = parseTopology(document, topologyFile);
    log({ event: 'demo-topology', msg: `topology written to ${topologyFile}`, file: topologyFile });

    const nowSeconds = Math.floor(clock.now() / 1000);
    const items = sampleItems({ count: options.items, valueBytes: options.valueBytes, nowSeconds });
    log({ event: 'demo-loading', msg: `loading ${items.length.toLocaleString('en-US')} items of ${options.valueBytes} bytes into demo-a` });
    const loaded = await writeAll(items, targetRingOf(topology, 'demo-a'), { connect: connectDirect, clock, signal: options.signal });
    if (loaded.stored !== items.length) {
      throw new CachewarmError('JOB_FAILED', `loading demo-a stored ${loaded.stored} of ${items.length} items`);
    }

    log({ event: 'demo-warming', msg: 'warming demo-b from demo-a' });
    const summary = await warmReplica({
      topology,
      target: 'demo-b',
      source: 'auto',
      workDir: options.workDir,
      chunkSizeBytes: options.chunkSizeBytes,
      clock,
      onProgress: options.onProgress,
      signal: options.signal,
    });
    log({ event: 'demo-verifying', msg: "verifying every item on the node demo-b's ring names for it" });
    const verify = await verifyCopy(items, targetRingOf(topology, 'demo-b'), { connect: connectDirect });
    return { summary, verify };
  } finally {
    await Promise.allSettled(servers.map((s) => s.stop()));
  }
}
