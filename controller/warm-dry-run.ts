import type { WarmthCheck } from './already-warm.js';
import { ringShares } from './expected-share.js';
import { endpointOf } from './node-stats.js';
import { readNodeState } from './node-watch.js';
import { statsAt } from '../shared/memcached/commands.js';
import { type SourceChoice, selectSource } from './select-source.js';
import { USABLE_MEMORY, checkRequestedSource, checkWarmth, scopeOf } from './warm-plan.js';
import { listKeys } from '../dumper/list-keys.js';
import { newDumpCounters } from '../shared/counters.js';
import { type Connect, connectDirect } from '../shared/memcached/connect.js';
import { MetaGetReplies, buildMetaGets } from '../shared/memcached/meta-get.js';
import type { NodeSpec } from '../shared/topology.js';
import type { WarmReplicaOptions } from './warm-replica.js';

/** What a warm is planned from: its own options (`fetchConcurrency`: connections per source node, default 2). */
export type DryRunOptions = Pick<
  WarmReplicaOptions,
  'topology' | 'target' | 'only' | 'source' | 'alreadyWarmRatio' | 'maxOpsPerNode' | 'fetchConcurrency' | 'clock' | 'connect' | 'signal'
> & {
  /** Keys listed and read from the fullest source node to time the reads. @default 2000 */
  readonly sampleKeys?: number | undefined;
  /** The other targets filled from the same dump (`--target c,d`): the source is none of them either. */
  readonly otherTargets?: readonly string[] | undefined;
};

/** What a warm would do, told before it does anything. */
export interface WarmPlanReport {
  readonly dryRun: true;
  readonly kind: 'replica' | 'instance';
  readonly target: string;
  readonly source: string;
  /** Every replica considered for the source, with why the others were not chosen. */
  readonly considered: SourceChoice['considered'];
  readonly sourceItems: number;
  readonly sourceBytes: number;
  readonly targetNodes: readonly TargetNodePlan[];
  /** The already-warm check a new job makes (a warm would copy nothing when it says so). */
  readonly warmth: WarmthCheck;
  readonly estimate: DurationEstimate;
}

export interface TargetNodePlan {
  readonly node: string;
  /** The node's share of the target ring. */
  readonly share: number;
  readonly expectedItems: number;
  readonly expectedBytes: number;
  readonly limitMaxBytes: number;
  /** What it holds now. */
  readonly bytes: number;
  /** Whether what it would receive fits in 90 % of its memory (slab rounding takes the rest). */
  readonly fits: boolean;
}

export interface DurationEstimate {
  /** Keys listed and read from the source to time the reads. */
  readonly sampledKeys: number;
  /** Items per second one connection read in the sample. */
  readonly itemsPerSecondPerConnection: number;
  /** The reads of the whole source at that pace over every node's connections, capped by --max-ops. */
  readonly readSeconds: number;
}

/**
 * The plan of a warm, as `--dry-run` shows it: the source chosen and why, what each target
 * node would receive against its memory, the already-warm check, and how long reading the
 * source would take at the pace a short sample was read. It reads `stats` of every node and
 * `sampleKeys` keys of one source node (listed with the crawler, read with `mg … u`, which
 * leaves the LRU as it was), and writes nothing. The estimate is of the reads only: the
 * writes into the target, and this machine's CPU, often bound a warm first (see the bench).
 */
export async function planWarm(options: DryRunOptions): Promise<WarmPlanReport> {
  const { topology, signal } = options;
  const connect = options.connect ?? connectDirect;
  const scope = scopeOf(topology, options.target, options.only);
  checkRequestedSource(scope, options.source);
  const targets = [scope.replica.name, ...(options.otherTargets ?? [])];
  const { source, considered } = await selectSource(topology, targets, { connect, requested: options.source, signal });
  const warmth = await checkWarmth(topology, scope, source, { connect, alreadyWarmRatio: options.alreadyWarmRatio, signal });
  const shares = ringShares(scope.replica.nodes, topology.hashing);
  const targetNodes = await Promise.all(
    scope.nodes.map(async (node) => {
      const now = await readNodeState(node, (n, sig) => statsAt(endpointOf(n), connect, sig), signal);
      const share = shares.get(node.address) ?? 0;
      const expectedBytes = Math.round(source.bytes * share);
      return {
        node: node.id,
        share,
        expectedItems: Math.round(source.items * share),
        expectedBytes,
        limitMaxBytes: now.limitMaxBytes,
        bytes: now.bytes,
        fits: expectedBytes <= USABLE_MEMORY * now.limitMaxBytes,
      };
    }),
  );
  const fullest = [...source.nodes].sort((a, b) => b.items - a.items)[0];
  const sample = fullest ? await timeSampleReads(fullest.node, options, connect) : { keys: 0, seconds: 0 };
  const perConnection = sample.seconds > 0 ? sample.keys / sample.seconds : 0;
  const connections = source.replica.nodes.length * (options.fetchConcurrency ?? 2);
  const pace = Math.min(perConnection * connections, (options.maxOpsPerNode ?? Infinity) * source.replica.nodes.length);
  return {
    dryRun: true,
    kind: scope.kind,
    target: scope.label,
    source: source.replica.name,
    considered,
    sourceItems: source.items,
    sourceBytes: source.bytes,
    targetNodes,
    warmth,
    estimate: {
      sampledKeys: sample.keys,
      itemsPerSecondPerConnection: Math.round(perConnection),
      readSeconds: pace > 0 ? Math.ceil(source.items / pace) : 0,
    },
  };
}

/** Lists up to `sampleKeys` keys of a node and times reading them back over one connection. */
async function timeSampleReads(node: NodeSpec, options: DryRunOptions, connect: Connect): Promise<{ keys: number; seconds: number }> {
  const { clock, signal } = options;
  const want = options.sampleKeys ?? 2_000;
  let keys: Buffer[] = [];
  // Its own connection: closing it ends the crawl the sample was taken from.
  const crawl = await connect(endpointOf(node), signal);
  try {
    for await (const batch of listKeys(crawl, { batchKeys: want, clock, counters: newDumpCounters(), passes: 1, signal })) {
      keys = batch.keys.slice(0, want);
      break;
    }
  } finally {
    crawl.close();
  }
  if (keys.length === 0) return { keys: 0, seconds: 0 };
  const conn = await connect(endpointOf(node), signal);
  try {
    const started = process.hrtime.bigint();
    const reply = new MetaGetReplies(keys.length, { hit: () => undefined, miss: () => undefined }, conn.label);
    await conn.enqueue(buildMetaGets(keys, 0, keys.length), reply);
    await reply.promise;
    return { keys: keys.length, seconds: Number(process.hrtime.bigint() - started) / 1e9 };
  } finally {
    conn.close();
  }
}
