import type { Clock } from '../shared/clock.js';
import { newDumpCounters } from '../shared/counters.js';
import type { Connect } from '../shared/memcached/connect.js';
import type { MemcachedConnection } from '../shared/memcached/connection.js';
import { MetaExistsReplies, buildMetaExists } from '../shared/memcached/meta-reconcile.js';
import { type RateLimiter, TokenBucket, unlimited } from '../shared/token-bucket.js';
import type { NodeSpec, Topology } from '../shared/topology.js';
import { listKeys } from '../dumper/list-keys.js';
import { ringOfTarget } from '../populator/write-to-ring.js';
import { targetRingOf } from './warm-plan.js';

export interface ReverseCheckOptions {
  readonly topology: Topology;
  readonly source: string;
  readonly target: string;
  /** The target nodes whose keys are listed (all of the target's, or the one checked). */
  readonly nodes: readonly NodeSpec[];
  /** A random sample of this many keys per target node, or every key. */
  readonly sample: number | 'all';
  readonly maxOpsPerNode?: number | undefined;
  readonly connect: Connect;
  readonly clock: Clock;
  readonly signal?: AbortSignal | undefined;
  /** Told of each key found only in the target, for the report's examples. */
  readonly onFound?: ((key: Buffer, target: NodeSpec, source: NodeSpec) => void) | undefined;
}

export interface ReverseCheck {
  /** Keys listed on the target nodes that their ring places there. */
  readonly listed: number;
  /** Of those (or of the sample), looked up at the source node the source ring names. */
  readonly checked: number;
  /**
   * Held by the target, not by the source, both read twice: deleted at the source and left
   * (or brought back) in the target. A warm's delete reconcile leaves none.
   */
  readonly notInSource: number;
}

const CRAWL_BATCH_KEYS = 1_000;
const CHECK_KEYS = 500;

/**
 * The other direction of `verify`: keys the target holds that the source does not. Each target
 * node's keys are listed with the LRU crawler, those its ring places there kept (a sample, or
 * all), and each is looked up with `mg <key> u` (no value, no LRU bump) at the source node the
 * source ring names. A key the source lacks is looked for again, in the target and then the
 * source, so that a set or delete of the application in flight is not counted.
 */
export async function reverseCheck(options: ReverseCheckOptions): Promise<ReverseCheck> {
  const { topology, nodes, sample, connect, clock, signal } = options;
  const sourceRing = ringOfTarget(targetRingOf(topology, options.source));
  const targetRing = ringOfTarget(targetRingOf(topology, options.target));
  const sourceNodes = topology.replicas.get(options.source)?.nodes ?? [];
  const limiters = new Map<string, RateLimiter>();
  const limiterOf = (address: string): RateLimiter => {
    let limiter = limiters.get(address);
    if (!limiter) {
      limiter = options.maxOpsPerNode === undefined ? unlimited : new TokenBucket({ ratePerSecond: options.maxOpsPerNode, clock });
      limiters.set(address, limiter);
    }
    return limiter;
  };
  const opened: MemcachedConnection[] = [];
  const open = async (node: NodeSpec): Promise<MemcachedConnection> => {
    const conn = await connect({ host: node.host, port: node.port, label: node.id }, signal);
    opened.push(conn);
    return conn;
  };
  const sourceConns = new Map<string, Promise<MemcachedConnection>>();
  const sourceConn = (node: NodeSpec): Promise<MemcachedConnection> => {
    let conn = sourceConns.get(node.address);
    if (!conn) sourceConns.set(node.address, (conn = open(node)));
    return conn;
  };
  /** The indices of the keys `conn`'s node does not hold. */
  const absent = async (conn: MemcachedConnection, keys: readonly Buffer[]): Promise<number[]> =>
    keys.length === 0 ? [] : conn.send(buildMetaExists(keys), new MetaExistsReplies(keys.length, conn.label));

  let listed = 0;
  let checked = 0;
  let notInSource = 0;

  /** Looks keys of one target node up at their source nodes; counts those only the target holds. */
  async function check(target: NodeSpec, targetConn: MemcachedConnection, keys: readonly Buffer[]): Promise<void> {
    const bySource = new Map<number, Buffer[]>();
    for (const key of keys) {
      const s = sourceRing.indexFor(key);
      let list = bySource.get(s);
      if (!list) bySource.set(s, (list = []));
      list.push(key);
    }
    for (const [s, group] of bySource) {
      const source = sourceNodes[s] as NodeSpec;
      const conn = await sourceConn(source);
      await limiterOf(source.address).take(group.length, signal);
      checked += group.length;
      const lacking = (await absent(conn, group)).map((i) => group[i] as Buffer);
      if (lacking.length === 0) continue;
      const stillHeld = new Set(await absent(targetConn, lacking));
      const held = lacking.filter((_, i) => !stillHeld.has(i));
      await limiterOf(source.address).take(held.length, signal);
      for (const i of await absent(conn, held)) {
        notInSource++;
        options.onFound?.(held[i] as Buffer, target, source);
      }
    }
  }

  try {
    for (const target of nodes) {
      const index = targetRing.nodes.findIndex((n) => n.address === target.address);
      const crawlConn = await open(target);
      const readConn = await open(target);
      const kept: Buffer[] = [];
      let seen = 0;
      const offer = async (key: Buffer): Promise<void> => {
        if (sample === 'all') {
          kept.push(key);
          if (kept.length >= CHECK_KEYS) await check(target, readConn, kept.splice(0));
          return;
        }
        // Algorithm R: a uniform sample of the listing, memory bounded by the sample.
        seen++;
        if (kept.length < sample) kept.push(Buffer.from(key));
        else {
          const slot = Math.floor(Math.random() * seen);
          if (slot < sample) kept[slot] = Buffer.from(key);
        }
      };
      for await (const batch of listKeys(crawlConn, { batchKeys: CRAWL_BATCH_KEYS, clock, counters: newDumpCounters(), signal })) {
        for (const key of batch.keys) {
          if (targetRing.indexFor(key) !== index) continue;
          listed++;
          await offer(key);
        }
      }
      crawlConn.close(); // frees the node's crawler for others
      for (let start = 0; start < kept.length; start += CHECK_KEYS) await check(target, readConn, kept.slice(start, start + CHECK_KEYS));
    }
  } finally {
    for (const conn of opened) conn.close();
  }
  return { listed, checked, notInSource };
}
