import { findNode } from '../shared/topology.js';
import { type WarmReplicaOptions, type WarmSummary, warmReplica } from './warm-replica.js';

export interface WarmInstanceOptions extends Omit<WarmReplicaOptions, 'target' | 'only'> {
  /** The node to warm, `replica/host:port` as in the topology (e.g. `zone-b/10.0.1.7:11211`). */
  readonly node: string;
}

/**
 * An instance warm on the embedded transport: a replaced or restarted node comes back empty
 * and is filled from another replica with the keys that hash to it on its replica's ring,
 * and nothing else of its replica is written. The source is never the node's own replica
 * (it missed the writes made while the node was down): by default the fullest reachable
 * other one.
 *
 * An unknown node is a TOPOLOGY_INVALID naming it and listing its replica's nodes.
 */
export function warmInstance(options: WarmInstanceOptions): Promise<WarmSummary> {
  const { node: id, ...rest } = options;
  const node = findNode(options.topology, id);
  return warmReplica({ ...rest, target: node.replica, only: node });
}
