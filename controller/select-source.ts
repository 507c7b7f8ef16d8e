import type { Connect } from '../shared/memcached/connect.js';
import { CachewarmError } from '../shared/errors.js';
import { type ReplicaSpec, type Topology, replicaOf } from '../shared/topology.js';
import { type NodeStats, nodeStats } from './node-stats.js';

export interface ReplicaStats {
  readonly replica: ReplicaSpec;
  readonly nodes: readonly NodeStats[];
  readonly items: number;
  readonly bytes: number;
}

export interface SourceChoice {
  readonly source: ReplicaStats;
  /** Every replica considered, with why the others were not chosen. */
  readonly considered: readonly { replica: string; items?: number; bytes?: number; rejected?: string }[];
}

/** Every node's `stats` of a replica, summed; fails naming a node that does not answer. */
export async function replicaStats(replica: ReplicaSpec, connect: Connect, signal?: AbortSignal): Promise<ReplicaStats> {
  const nodes = await Promise.all(replica.nodes.map((node) => nodeStats(node, connect, signal)));
  return {
    replica,
    nodes,
    items: nodes.reduce((sum, n) => sum + n.items, 0),
    bytes: nodes.reduce((sum, n) => sum + n.bytes, 0),
  };
}

/**
 * Picks the replica to copy from: the one holding the most data (items, then bytes) among
 * those whose every node answers, never the target. A replica with a node down is passed
 * over: it lacks that node's share. A requested source is checked the same way, and its
 * failure is an error naming the node.
 */
export async function selectSource(
  topology: Topology,
  target: string | readonly string[],
  options: { connect: Connect; requested?: string | undefined; signal?: AbortSignal | undefined },
): Promise<SourceChoice> {
  const { connect, requested, signal } = options;
  // Several targets (one dump filling many): the source is none of them.
  const targets: readonly string[] = typeof target === 'string' ? [target] : target;
  for (const name of targets) replicaOf(topology, name, '--target');
  const targetName = targets.join(', ');
  if (requested !== undefined && requested !== 'auto') {
    if (targets.includes(requested)) {
      throw new CachewarmError('INVALID_ARGUMENT', `--source ${requested} is the target: a replica cannot be warmed from itself`, {
        source: requested,
      });
    }
    const source = await replicaStats(replicaOf(topology, requested, '--source'), connect, signal);
    return { source, considered: [{ replica: requested, items: source.items, bytes: source.bytes }] };
  }
  const candidates = [...topology.replicas.values()].filter((r) => !targets.includes(r.name));
  const results = await Promise.allSettled(candidates.map((r) => replicaStats(r, connect, signal)));
  const considered: { replica: string; items?: number; bytes?: number; rejected?: string }[] = targets.map((name) => ({
    replica: name,
    rejected: 'it is the target',
  }));
  let best: ReplicaStats | undefined;
  results.forEach((result, i) => {
    const name = (candidates[i] as ReplicaSpec).name;
    if (result.status === 'rejected') {
      considered.push({ replica: name, rejected: (result.reason as Error).message });
      return;
    }
    const stats = result.value;
    considered.push({ replica: name, items: stats.items, bytes: stats.bytes });
    if (!best || stats.items > best.items || (stats.items === best.items && stats.bytes > best.bytes)) best = stats;
  });
  if (!best) {
    const why = considered.map((c) => `${c.replica}: ${c.rejected ?? 'no data'}`).join('; ');
    throw new CachewarmError('SOURCE_UNAVAILABLE', `no replica can serve as the source for ${targetName} (${why})`, {
      target: targetName,
    });
  }
  return { source: best, considered };
}
