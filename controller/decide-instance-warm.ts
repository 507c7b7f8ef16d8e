/**
 * Whether a restarted node should be warmed: its `curr_items` against its share of what its
 * replica's healthy peers hold (expected-share.ts). A node that came back with its data (only
 * its sidecar restarted, or the network blipped) is left alone rather than loading a source
 * replica for nothing.
 */
import type { Connect } from '../shared/memcached/connect.js';
import { CachewarmError } from '../shared/errors.js';
import { stats } from '../shared/memcached/commands.js';
import { type NodeSpec, type Topology, replicaOf } from '../shared/topology.js';
import { DEFAULT_MIN_SHARE, type PeerItems, type WarmDecision, ringShares, warmDecision } from './expected-share.js';
import { endpointOf } from './node-stats.js';

export interface DecideInstanceWarmOptions {
  readonly connect: Connect;
  /** Warm when the node holds less than this fraction of its expected items. Default 0.5. */
  readonly minShare?: number | undefined;
  /** How long each node's `stats` may take; a peer slower than that counts as unhealthy. Default 2 s. */
  readonly statsTimeoutMs?: number | undefined;
  /**
   * Peers to count as unhealthy whatever they answer: one being warmed itself, or that
   * restarted too, holds less than its share and would drag the expectation down.
   */
  readonly excludePeer?: ((peer: NodeSpec) => boolean) | undefined;
}

export const DEFAULT_STATS_TIMEOUT_MS = 2_000;

/**
 * Reads the node's and its peers' `stats` and decides. The node itself must answer (a
 * decision about a node that does not is no decision): NODE_UNREACHABLE naming it otherwise.
 * A peer that does not answer is unhealthy and left out of the expectation.
 */
export async function decideInstanceWarm(
  node: NodeSpec,
  topology: Topology,
  options: DecideInstanceWarmOptions & { readonly signal?: AbortSignal | undefined },
): Promise<WarmDecision> {
  const replica = replicaOf(topology, node.replica);
  const peers = replica.nodes.filter((peer) => peer.address !== node.address);
  const timeoutMs = options.statsTimeoutMs ?? DEFAULT_STATS_TIMEOUT_MS;
  const read = (target: NodeSpec): Promise<number> => itemsOf(target, options.connect, timeoutMs, options.signal);
  const [own, ...answers] = await Promise.allSettled([node, ...peers].map(read));
  options.signal?.throwIfAborted();
  if (own?.status !== 'fulfilled') {
    const why = own?.reason instanceof Error ? own.reason.message : String(own?.reason);
    throw new CachewarmError('NODE_UNREACHABLE', `cannot judge ${node.id}: its stats cannot be read (${why})`, { node: node.id }, {
      cause: own?.reason,
    });
  }
  const peerItems: PeerItems[] = peers.map((peer, i) => {
    const answer = answers[i];
    const healthy = answer?.status === 'fulfilled' && !(options.excludePeer?.(peer) ?? false);
    return { address: peer.address, items: answer?.status === 'fulfilled' ? answer.value : 0, healthy };
  });
  return warmDecision({
    node: node.address,
    actualItems: own.value,
    peers: peerItems,
    shares: ringShares(replica.nodes, topology.hashing),
    minShare: options.minShare ?? DEFAULT_MIN_SHARE,
  });
}

/**
 * The node's `curr_items`, within `timeoutMs`. The connection is closed on the deadline, so
 * a server that accepts connections but never answers cannot hold the decision up.
 */
async function itemsOf(node: NodeSpec, connect: Connect, timeoutMs: number, outer: AbortSignal | undefined): Promise<number> {
  const deadline = AbortSignal.timeout(timeoutMs);
  const signal = outer ? AbortSignal.any([outer, deadline]) : deadline;
  const conn = await connect(endpointOf(node), signal);
  const closeOnAbort = (): void => conn.close();
  signal.addEventListener('abort', closeOnAbort, { once: true });
  try {
    const reply = await stats(conn);
    const items = Number(reply.get('curr_items'));
    if (!Number.isSafeInteger(items) || items < 0) {
      throw new CachewarmError('NODE_PROTOCOL', `${node.id}: stats has no curr_items count`, { node: node.id });
    }
    return items;
  } catch (error) {
    if (deadline.aborted && !outer?.aborted) {
      throw new CachewarmError('NODE_UNREACHABLE', `${node.id}: no reply to stats within ${timeoutMs} ms`, { node: node.id, timeoutMs });
    }
    throw error;
  } finally {
    signal.removeEventListener('abort', closeOnAbort);
    conn.close();
  }
}

/** decideInstanceWarm with its settings bound, in the shape the job manager takes. */
export function instanceWarmDecider(
  options: DecideInstanceWarmOptions,
): (node: NodeSpec, topology: Topology, signal: AbortSignal) => Promise<WarmDecision> {
  return (node, topology, signal) => decideInstanceWarm(node, topology, { ...options, signal });
}
