import { randomBytes } from 'node:crypto';
import { type Connect, connectDirect } from '../shared/memcached/connect.js';
import { ringFilter } from '../dumper/ring-filter.js';
import type { NodeWriter } from '../populator/node-writer.js';
import type { TargetRing } from '../shared/chunk-message.js';
import type { FallbackReplica } from '../shared/job-layout.js';
import { CachewarmError } from '../shared/errors.js';
import { type NodeSpec, type ReplicaSpec, type Topology, replicaOf } from '../shared/topology.js';
import { DEFAULT_ALREADY_WARM_RATIO, type WarmthCheck, instanceWarmth, replicaWarmth } from './already-warm.js';
import { nodeStats } from './node-stats.js';
import { type ReplicaStats, replicaStats } from './select-source.js';
import { ringShares } from './expected-share.js';
import { NodeWatch, type NodeWatchOptions, type ReadStats, type WatchedNode } from './node-watch.js';
import type { Clock } from '../shared/clock.js';
import { verifyReplicas } from './verify-replicas.js';
import type { SampledKey } from '../shared/key-sample.js';
import { type JobKind, type VerificationSummary, type WarmSummary, identity, processUsage, targetNodeReport, verificationSummary } from './warm-summary.js';

/**
 * What every transport decides the same way before it copies anything: what is warmed (a
 * replica, or one node of it), which replicas may be the source, whether the target is
 * already warm, and how a warm that copied nothing is reported.
 */

export type { JobKind };

export function targetRingOf(topology: Topology, replica: string, writeOnly?: readonly string[]): TargetRing {
  return {
    replica,
    hashing: topology.hashing,
    nodes: replicaOf(topology, replica).nodes.map((n) => ({ address: n.address, ringName: n.ringName })),
    writeOnly,
  };
}

export function newJobId(kind: string, target: string, now: number): string {
  const stamp = new Date(now).toISOString().replace(/[-:]/g, '').replace(/\..*/, '');
  return `${kind}-${target}-${stamp}-${randomBytes(3).toString('hex')}`;
}

/** What a warm copies and writes: a whole replica, or one node of it (an instance warm). */
export interface WarmScope {
  readonly kind: JobKind;
  readonly replica: ReplicaSpec;
  /** An instance warm's node. */
  readonly node: NodeSpec | undefined;
  /** The target nodes written, probed, judged and reported. */
  readonly nodes: readonly NodeSpec[];
  /** Travels in every message; an instance warm's allows writes to its node only. */
  readonly ring: TargetRing;
  /** An instance warm's dumpers keep only the keys its node owns on the target ring. */
  readonly keyFilter: ((key: Buffer) => boolean) | undefined;
  /** The job record's target: the replica's name, or the node's id. */
  readonly label: string;
}

/** The scope of a warm of `target`, or with `node`, of that one node of it. */
export function scopeOf(topology: Topology, target: string, node: NodeSpec | undefined): WarmScope {
  const replica = replicaOf(topology, target, '--target');
  if (!node) {
    const ring = targetRingOf(topology, target);
    return { kind: 'replica', replica, node: undefined, nodes: replica.nodes, ring, keyFilter: undefined, label: target };
  }
  // The source is chosen among the replicas other than the target: the node's own replica
  // must be the target, or the node could be "warmed" from the very replica it missed writes in.
  if (node.replica !== target) {
    throw new CachewarmError('INVALID_ARGUMENT', `node ${node.id} is in replica ${node.replica}, not in the target ${target}`, {
      node: node.id,
      target,
    });
  }
  const ring = targetRingOf(topology, target, [node.address]);
  return { kind: 'instance', replica, node, nodes: [node], ring, keyFilter: ringFilter(ring.nodes, [node.address]), label: node.id };
}

/** An instance warm's source is never the node's own replica: it missed the writes made while the node was down. */
export function checkRequestedSource(scope: WarmScope, requested: string | undefined): void {
  if (scope.node && requested === scope.replica.name) {
    throw new CachewarmError(
      'INVALID_ARGUMENT',
      `--source ${requested} is the node's own replica: it missed the writes made while ${scope.node.id} was down`,
      { source: requested, node: scope.node.id },
    );
  }
}

export interface WarmthOptions {
  readonly connect?: Connect | undefined;
  /** When given, the target's items are read through it (a SASL-only target answers no text `stats`). */
  readonly writer?: NodeWriter | undefined;
  readonly alreadyWarmRatio?: number | undefined;
  readonly signal?: AbortSignal | undefined;
}

/** Whether the scope's target already holds what the warm would copy. */
export function checkWarmth(topology: Topology, scope: WarmScope, source: ReplicaStats, options: WarmthOptions): Promise<WarmthCheck> {
  const { writer, signal } = options;
  const connect = options.connect ?? connectDirect;
  const check = {
    itemsAt: (node: NodeSpec): Promise<number> =>
      writer ? writer.probe(node.address, signal) : nodeStats(node, connect, signal).then((s) => s.items),
    threshold: options.alreadyWarmRatio ?? DEFAULT_ALREADY_WARM_RATIO,
    signal: options.signal,
  };
  return scope.node ? instanceWarmth(topology, scope.node, scope.replica, check) : replicaWarmth(scope.replica, source.items, check);
}

/** The fields that say which warm a summary is of. */
export function planIdentity(plan: { readonly scope: WarmScope; readonly source: ReplicaStats; readonly jobId: string }): ReturnType<typeof identity> {
  return identity({
    jobId: plan.jobId,
    kind: plan.scope.kind,
    source: plan.source.replica.name,
    target: plan.scope.replica.name,
    node: plan.scope.node?.id,
  });
}

/** The summary of a warm that found its target warm already: nothing copied. */
export function alreadyWarm(plan: { readonly scope: WarmScope; readonly source: ReplicaStats; readonly jobId: string; readonly warmth: WarmthCheck; readonly durationMs: number }): WarmSummary {
  return {
    ...planIdentity(plan),
    durationMs: plan.durationMs,
    sourceNodes: [],
    targetNodes: plan.scope.nodes.map((n) => targetNodeReport(n.id, undefined)),
    parked: [],
    complete: true,
    ...processUsage(),
    skipped: 'already-warm',
    warmth: plan.warmth,
  };
}

/**
 * A warm that cannot fit is refused before it starts: what each target node would receive
 * (the source's bytes times the node's share of the target ring) against its memory. Slab
 * rounding leaves about a tenth of `limit_maxbytes` unusable for items.
 */
export function checkCapacity(topology: Topology, scope: WarmScope, source: ReplicaStats, targets: readonly WatchedNode[]): void {
  const shares = ringShares(scope.replica.nodes, topology.hashing);
  const short = targets.filter((w) => source.bytes * (shares.get(w.node.address) ?? 0) > USABLE_MEMORY * w.latest.limitMaxBytes);
  if (short.length === 0) return;
  const mib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  const lines = short.map((w) => `${w.node.id} would receive ~${mib(source.bytes * (shares.get(w.node.address) ?? 0))} but has ${mib(w.latest.limitMaxBytes)} (-m)`);
  throw new CachewarmError(
    'TARGET_TOO_SMALL',
    `the target cannot hold what ${source.replica.name} would copy (${mib(source.bytes)}): ${lines.join('; ')}. Give it more memory or nodes, or accept evictions with --accept-evictions`,
    { target: scope.label, sourceBytes: source.bytes },
  );
}

/** Of `limit_maxbytes`, what items can fill: slab rounding leaves about a tenth unusable. */
export const USABLE_MEMORY = 0.9;

/** The source's and the target's nodes, each watched for the length of a job (see node-watch). */
export interface JobWatch {
  readonly targets: NodeWatch;
  readonly sources: NodeWatch;
  /** Idempotent. */
  stop(): Promise<void>;
}

/**
 * Reads every node of the job before it starts (one that does not answer fails it here,
 * naming it), then keeps watching them. `readTargetStats` reads the targets another way (a
 * SASL-only target answers only its writer's protocol).
 */
export async function watchJob(
  scope: WarmScope,
  source: ReplicaStats,
  options: NodeWatchOptions & { readonly readTargetStats?: ReadStats | undefined },
  signal?: AbortSignal,
): Promise<JobWatch> {
  const targets = await NodeWatch.start(scope.nodes, { ...options, readStats: options.readTargetStats }, signal);
  const sources = await NodeWatch.start(source.replica.nodes, options, signal).catch(async (error: unknown) => {
    await targets.stop();
    throw error;
  });
  return { targets, sources, stop: async () => void (await Promise.all([targets.stop(), sources.stop()])) };
}

/**
 * The read-back that ends a warm: a sample of keys per target node compared between source
 * and target as clients read them. Made only when nothing else is wrong (it costs the source
 * a crawl and reads) and a sample is asked for.
 */
/**
 * How many of the keys a dump lists it keeps for the read-back: twice the keys the read-back
 * checks, since they spread over the target nodes unevenly.
 */
export function listedSampleKeys(samplePerNode: number, targetNodes: number): number {
  return samplePerNode * targetNodes * 2;
}

export async function readBackSample(
  plan: { readonly topology: Topology; readonly scope: WarmScope; readonly source: ReplicaStats },
  options: {
    readonly samplePerNode: number;
    readonly maxOpsPerNode?: number | undefined;
    readonly connect: Connect;
    readonly clock: Clock;
    readonly tooLargeFromBytes?: number | undefined;
    /** Keys the warm's dump listed, sampled (see verifyReplicas): no second crawl of the source. */
    readonly listedSample?: readonly SampledKey[] | undefined;
    readonly signal?: AbortSignal | undefined;
  },
): Promise<VerificationSummary | undefined> {
  if (options.samplePerNode <= 0) return undefined;
  const report = await verifyReplicas({
    topology: plan.topology,
    source: plan.source.replica.name,
    target: plan.scope.replica.name,
    node: plan.scope.node,
    sample: options.samplePerNode,
    maxOpsPerNode: options.maxOpsPerNode,
    connect: options.connect,
    clock: options.clock,
    tooLargeFromBytes: options.tooLargeFromBytes,
    listedSample: options.listedSample,
    signal: options.signal,
  });
  return verificationSummary(report);
}

type AlternateOptions = {
  readonly topology: Topology;
  readonly source?: string | undefined;
  readonly connect?: Connect | undefined;
  readonly alreadyWarmRatio?: number | undefined;
  readonly signal?: AbortSignal | undefined;
};

/**
 * Another replica that can stand in for source nodes that restarted: only when the source
 * was chosen automatically (`--source auto`), the fullest reachable replica other than the
 * source and the target that holds at least the already-warm ratio of the source's items.
 */
export async function alternateSource(
  plan: { readonly scope: WarmScope; readonly source: ReplicaStats },
  options: AlternateOptions,
  /** The one chosen earlier in the job (the delete reconcile's fallback): taken while it qualifies. */
  prefer?: string | undefined,
): Promise<string | undefined> {
  const full = await alternates(plan, options);
  return (full.find((c) => c.replica.name === prefer) ?? full[0])?.replica.name;
}

/**
 * The delete reconcile's fallback (DeleteReconcilerOptions.fallback), chosen when the job
 * starts as alternateSource chooses, with its nodes' processes then: a node of it that
 * restarts later is not asked (its emptiness says nothing of deletes either).
 */
export async function fallbackReplica(plan: { readonly scope: WarmScope; readonly source: ReplicaStats }, options: AlternateOptions): Promise<FallbackReplica | undefined> {
  const [fullest] = await alternates(plan, options);
  if (!fullest) return undefined;
  const processes = Object.fromEntries(fullest.nodes.map((n) => [n.node.address, { pid: n.pid, startedAtSeconds: n.startedAtSeconds }]));
  return { ...targetRingOf(options.topology, fullest.replica.name), processes };
}

/** The replicas that qualify as alternateSource's, fullest first. */
async function alternates(plan: { readonly scope: WarmScope; readonly source: ReplicaStats }, options: AlternateOptions): Promise<ReplicaStats[]> {
  if (options.source !== undefined && options.source !== 'auto') return [];
  const { topology, connect = connectDirect } = options;
  const others = [...topology.replicas.values()].filter((r) => r.name !== plan.source.replica.name && r.name !== plan.scope.replica.name);
  const candidates = await Promise.all(others.map((r) => replicaStats(r, connect, options.signal).catch(() => undefined)));
  return candidates
    .filter((c): c is ReplicaStats => c !== undefined && c.items >= (options.alreadyWarmRatio ?? DEFAULT_ALREADY_WARM_RATIO) * plan.source.items)
    .sort((a, b) => b.items - a.items);
}
