/**
 * Whether a warm's target already holds what the warm would copy: a scheduled warm (cron,
 * a scaler) runs again and again, and copying into a target that is already full only loads
 * the source for nothing. Judged from `curr_items`, so it is approximate on purpose: a
 * target within the tolerance of the expected count counts as warm.
 */
import { CachewarmError } from '../shared/errors.js';
import type { NodeSpec, ReplicaSpec, Topology } from '../shared/topology.js';
import { type PeerItems, expectedItems, ringShares } from './expected-share.js';

export const DEFAULT_ALREADY_WARM_RATIO = 0.95;

export interface WarmthCheck {
  readonly alreadyWarm: boolean;
  /** What was judged: a replica name, or a node id for an instance warm. */
  readonly subject: string;
  /** `curr_items` summed over the nodes judged. */
  readonly targetItems: number;
  /** What they should hold; undefined when it cannot be told (then the warm goes ahead). */
  readonly expectedItems: number | undefined;
  /** targetItems / expectedItems, when there is an expectation above zero. */
  readonly ratio: number | undefined;
  /** The ratio from which the target counts as warm (`--already-warm-ratio`). */
  readonly threshold: number;
  /** One sentence for the log and the summary: what was compared and what was decided. */
  readonly reason: string;
}

interface CheckOptions {
  /** The items a node holds, read the way the warm will reach it (SASL-only nodes need the writer's protocol). */
  readonly itemsAt: (node: NodeSpec) => Promise<number>;
  readonly threshold: number;
  readonly signal?: AbortSignal | undefined;
}

/** Parses `--already-warm-ratio`: a fraction above 0, at most 1. */
export function parseAlreadyWarmRatio(text: string): number {
  const value = /^\s*(?:\d+(?:\.\d*)?|\.\d+)\s*$/.test(text) ? Number(text) : Number.NaN;
  checkAlreadyWarmRatio(value, text);
  return value;
}

/** Throws INVALID_ARGUMENT unless `value` is above 0 and at most 1. */
export function checkAlreadyWarmRatio(value: number, input: string = String(value)): void {
  if (!(value > 0 && value <= 1)) {
    throw new CachewarmError('INVALID_ARGUMENT', `--already-warm-ratio must be a number above 0 and at most 1, got "${input}"`, {
      input,
    });
  }
}

/** A replica warm: the target's items against the source replica's. */
export async function replicaWarmth(target: ReplicaSpec, sourceItems: number, options: CheckOptions): Promise<WarmthCheck> {
  checkAlreadyWarmRatio(options.threshold);
  const counts = await Promise.all(target.nodes.map(options.itemsAt));
  const targetItems = counts.reduce((sum, n) => sum + n, 0);
  return judge(target.name, targetItems, sourceItems, options.threshold, 'the source holds');
}

/**
 * An instance warm: the node's items against its share of what its replica's peers hold
 * (expectedItems), since the source replica's count says nothing about one node's part of
 * it. A peer that does not answer is left out of the expectation rather than failing the
 * check: the node itself is what must answer.
 */
export async function instanceWarmth(
  topology: Topology,
  node: NodeSpec,
  replica: ReplicaSpec,
  options: CheckOptions,
): Promise<WarmthCheck> {
  checkAlreadyWarmRatio(options.threshold);
  const peers = replica.nodes.filter((peer) => peer.address !== node.address);
  const [own, ...peerResults] = await Promise.allSettled([node, ...peers].map(options.itemsAt));
  if (own?.status !== 'fulfilled') throw (own as PromiseRejectedResult).reason;
  const peerItems: PeerItems[] = peers.map((peer, i) => {
    const result = peerResults[i];
    return result?.status === 'fulfilled'
      ? { address: peer.address, items: result.value, healthy: true }
      : { address: peer.address, items: 0, healthy: false };
  });
  const shares = ringShares(replica.nodes, topology.hashing);
  const expected = expectedItems(node.address, peerItems, shares);
  return judge(node.id, own.value, expected, options.threshold, 'its share of what its peers hold is');
}

/**
 * Warm when the target holds at least `threshold` of a positive expectation. With nothing
 * to compare with (no peer answered, or the expectation is zero) the warm goes ahead: it is
 * add-only, so copying into a target that turns out full costs load, never data.
 */
export function judge(subject: string, targetItems: number, expected: number | undefined, threshold: number, basis: string): WarmthCheck {
  const holds = `${subject} holds ${count(targetItems)} items`;
  if (expected === undefined || expected <= 0) {
    const why = expected === undefined ? 'no healthy peer to compare with' : `${basis} none`;
    return { alreadyWarm: false, subject, targetItems, expectedItems: expected, ratio: undefined, threshold, reason: `${holds}; ${why}: cannot tell, warming` };
  }
  const ratio = targetItems / expected;
  const alreadyWarm = ratio >= threshold;
  const comparison = `${ratio.toFixed(2)} ${alreadyWarm ? '>=' : '<'} ${threshold}`;
  return {
    alreadyWarm,
    subject,
    targetItems,
    expectedItems: expected,
    ratio,
    threshold,
    reason: `${holds}, ${basis} ~${count(Math.round(expected))} (${comparison}): ${alreadyWarm ? 'already warm' : 'warming'}`,
  };
}

/** 330000 → "330,000": the counts are read by people. */
const count = (value: number): string => value.toLocaleString('en-US');
