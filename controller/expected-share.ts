/**
 * How many items a node of a replica should hold, judged from its peers: the decision
 * behind an instance warm. A node that came back from a restart may be empty (warm it from
 * another replica) or may still hold its data (a restart of the sidecar only, or a network
 * blip): warming a full node would only cost the source load for nothing.
 *
 * Keys spread over a replica's nodes by the ketama ring, so each node holds about its
 * fraction of the ring's hash space of the replica's items. The healthy peers tell how many
 * items the replica holds per unit of hash space; the node's own fraction times that is what
 * it should hold.
 */
import { CachewarmError } from '../shared/errors.js';
import { HASHING_PROFILES, type HashingProfile, KetamaRing } from '../shared/ketama.js';

export interface RingNode {
  readonly address: string;
  /** the string hashed onto the ring (NodeSpec.ringName) */
  readonly ringName: string;
}

export interface PeerItems {
  readonly address: string;
  /** the peer's `curr_items` */
  readonly items: number;
  /** false for a peer that did not answer, or is itself restarting or being warmed */
  readonly healthy: boolean;
}

/** address → fraction of the ring's hash space (0..1) */
export type RingShares = ReadonlyMap<string, number>;

export const DEFAULT_MIN_SHARE = 0.5;

/**
 * Each node's fraction of the ketama continuum on the ring the clients use; the fractions
 * sum to 1. `hashing` is the topology's profile: a profile only changes the ring names, which
 * the nodes already carry, so it is checked but does not change the result.
 */
export function ringShares(nodes: readonly RingNode[], hashing?: HashingProfile): Map<string, number> {
  if (hashing !== undefined && !HASHING_PROFILES.includes(hashing)) {
    throw new CachewarmError('INVALID_ARGUMENT', `unknown hashing profile ${JSON.stringify(hashing)}`, { hashing });
  }
  const ring = new KetamaRing(nodes, (node) => node.ringName);
  const fractions = ring.hashSpaceShares();
  const shares = new Map<string, number>();
  ring.nodes.forEach((node, index) => {
    // Two entries for one address would silently merge their shares.
    if (shares.has(node.address)) {
      throw new CachewarmError('INVALID_ARGUMENT', `address ${node.address} appears twice on the ring`, {
        address: node.address,
      });
    }
    shares.set(node.address, fractions[index]!);
  });
  return shares;
}

/**
 * Items `node` should hold: the healthy peers' items per unit of hash space, times the
 * node's share. The node itself is left out if listed among the peers (its own count is what
 * is being judged). Undefined when no healthy peer holds any of the ring (nothing to judge by).
 */
export function expectedItems(node: string, peers: readonly PeerItems[], shares: RingShares): number | undefined {
  const nodeShare = shareOf(shares, node);
  let peerItems = 0;
  let peerShare = 0;
  for (const peer of peers) {
    if (peer.address === node || !peer.healthy) continue;
    checkCount(peer.items, `items of peer ${peer.address}`);
    peerItems += peer.items;
    peerShare += shareOf(shares, peer.address);
  }
  return peerShare > 0 ? (peerItems / peerShare) * nodeShare : undefined;
}

export interface WarmDecisionInput {
  /** the node's address, as in `shares` */
  readonly node: string;
  /** the node's `curr_items` now */
  readonly actualItems: number;
  readonly peers: readonly PeerItems[];
  readonly shares: RingShares;
  /** warm when the node holds less than this fraction of its expected items */
  readonly minShare?: number;
}

export interface WarmDecision {
  readonly warm: boolean;
  /** undefined when it cannot be computed (no healthy peer) */
  readonly expectedItems: number | undefined;
  readonly actualItems: number;
  /** actualItems / expectedItems; undefined when there is no expectation to compare with */
  readonly ratio: number | undefined;
  /** one sentence for the log, saying what was compared and what was decided */
  readonly reason: string;
}

/** Whether a restarted node holds too little of its share and should be warmed. */
export function warmDecision(input: WarmDecisionInput): WarmDecision {
  const { node, actualItems, peers, shares, minShare = DEFAULT_MIN_SHARE } = input;
  checkCount(actualItems, `items of ${node}`);
  if (!(minShare >= 0 && minShare <= 1)) {
    throw new CachewarmError('INVALID_ARGUMENT', `--min-share must be a number from 0 to 1, got ${minShare}`, {
      minShare,
    });
  }
  const expected = expectedItems(node, peers, shares);
  const holds = `${node} holds ${count(actualItems)}`;
  if (expected === undefined) {
    // Warming blind could copy a whole replica's worth into a node that lost nothing.
    return {
      warm: false,
      expectedItems: undefined,
      actualItems,
      ratio: undefined,
      reason:
        `${holds} items; no healthy peer in its replica to compare with, ` +
        'so its expected share cannot be computed: leave alone',
    };
  }
  if (expected === 0) {
    // The peers are empty too: there is no share to be missing.
    return {
      warm: false,
      expectedItems: 0,
      actualItems,
      ratio: undefined,
      reason: `${holds} items; its healthy peers hold none, so none are expected: leave alone`,
    };
  }
  const ratio = actualItems / expected;
  const warm = ratio < minShare;
  const comparison = `${ratio.toFixed(2)} ${warm ? '<' : '>='} ${minShare}`;
  return {
    warm,
    expectedItems: expected,
    actualItems,
    ratio,
    reason: `${holds} of ~${count(Math.round(expected))} expected items (${comparison}): ${warm ? 'warm' : 'leave alone'}`,
  };
}

function shareOf(shares: RingShares, address: string): number {
  const share = shares.get(address);
  if (share === undefined) {
    // A node missing from the ring means the caller mixed up replicas or topologies.
    throw new CachewarmError('INVALID_ARGUMENT', `${address} is not on the ring the shares were computed for`, {
      address,
      ring: [...shares.keys()].join(','),
    });
  }
  return share;
}

function checkCount(value: number, what: string): void {
  if (!(Number.isFinite(value) && value >= 0)) {
    throw new CachewarmError('INVALID_ARGUMENT', `${what}: expected a count of items, got ${value}`, {
      value: String(value),
    });
  }
}

/** 330000 → "330,000": item counts are read by people in the log */
function count(value: number): string {
  return value.toLocaleString('en-US');
}
