/**
 * Ketama consistent hashing, placing keys exactly where the memcached clients that wrote
 * them do (spymemcached, EVCache, libmemcached/pylibmc `ketama_weighted` with equal
 * weights). A warm copy is only useful if every item lands on the node the real clients
 * will read it from, so the ring names and the tie rules below follow those clients
 * byte for byte; see /work/shared/ketama-vectors for the reference placements.
 */
import * as nodeCrypto from 'node:crypto';
import { CachewarmError } from './errors.js';
import { md5FirstWord } from './md5-word.js';

export type HashingProfile = 'spymemcached' | 'evcache' | 'libmemcached';

export const HASHING_PROFILES: readonly HashingProfile[] = Object.freeze([
  'spymemcached',
  'evcache',
  'libmemcached',
] as const);

export interface RingMember {
  /** the address the client connects to (an IP for spymemcached/evcache) */
  host: string;
  port: number;
  /** the host name the client was given, when it resolved `host` from one */
  hostname?: string | undefined;
  /** the exact string to hash, overriding the profile's rule */
  ringName?: string | undefined;
}

/** EVCache writes every node as port 11211 in its ring names, whatever it listens on. */
const EVCACHE_RING_PORT = 11211;
const MEMCACHED_DEFAULT_PORT = 11211;

/** the string hashed for a node under a profile */
export function ringNameFor(profile: HashingProfile, node: RingMember): string {
  if (node.ringName !== undefined) return node.ringName;
  switch (profile) {
    case 'spymemcached':
      // Java's InetSocketAddress.toString() less its leading '/': the host name only
      // appears when the client was given one.
      return node.hostname ? `${node.hostname}/${node.host}:${node.port}` : `${node.host}:${node.port}`;
    case 'evcache':
      if (!node.hostname) {
        // Guessing (e.g. using the IP) would silently move every key; make the operator say.
        throw new CachewarmError(
          'TOPOLOGY_INVALID',
          `evcache hashing needs a hostname for node ${node.host}:${node.port} (or an explicit ringName)`,
          { host: node.host, port: node.port, profile },
        );
      }
      return `${node.hostname}/${node.host}:${EVCACHE_RING_PORT}`;
    case 'libmemcached':
      return node.port === MEMCACHED_DEFAULT_PORT ? node.host : `${node.host}:${node.port}`;
    default: {
      const unknown: never = profile;
      throw new CachewarmError('INVALID_ARGUMENT', `unknown hashing profile ${String(unknown)}`);
    }
  }
}

type Md5 = (data: Uint8Array | string) => Buffer;

// crypto.hash skips the Hash object allocation that createHash needs per call, which is
// most of the cost of placing a key; it only exists on Node >= 21.7 / 20.12.
const oneShotHash = nodeCrypto.hash as typeof nodeCrypto.hash | undefined;
const md5: Md5 =
  typeof oneShotHash === 'function'
    ? (data) => oneShotHash('md5', data, 'buffer')
    : (data) => nodeCrypto.createHash('md5').update(data).digest();

/**
 * The last key hashed and its hash. A key is often placed on two rings in a row (the verifier
 * routes every key of a source over the source's ring and the target's), and comparing a
 * key's bytes costs a small fraction of hashing them again.
 */
const lastKey = new Uint8Array(256);
let lastKeyLength = -1;
let lastHash = 0;

function isLastKey(key: Uint8Array): boolean {
  if (key.length !== lastKeyLength) return false;
  for (let i = key.length - 1; i >= 0; i--) if (key[i] !== lastKey[i]) return false;
  return true;
}

/** ketama hash of a key (key given as bytes or as a UTF-8 string) */
export function ketamaHash(key: Uint8Array | string): number {
  if (typeof key === 'string') return md5FirstWord(Buffer.from(key, 'utf8'));
  if (isLastKey(key)) return lastHash;
  const hash = md5FirstWord(key);
  if (key.length <= lastKey.length) {
    for (let i = 0; i < key.length; i++) lastKey[i] = key[i] as number;
    lastKeyLength = key.length;
    lastHash = hash;
  }
  return hash;
}

const DIGESTS_PER_NODE = 40;
const POINTS_PER_DIGEST = 4;
export const POINTS_PER_NODE = DIGESTS_PER_NODE * POINTS_PER_DIGEST;
/** key hashes are 32-bit */
const HASH_SPACE = 2 ** 32;

export class KetamaRing<N> {
  readonly nodes: readonly N[];
  /** ascending, no duplicates */
  private readonly points: Uint32Array;
  /** owners[i] is the index into `nodes` of the node owning points[i] */
  private readonly owners: Int32Array;

  /** nodes: the members; nameOf: the hashed ring name of each (e.g. n => ringNameFor(profile, n)) */
  constructor(nodes: readonly N[], nameOf: (node: N) => string) {
    if (nodes.length === 0) {
      throw new CachewarmError('INVALID_ARGUMENT', 'a ketama ring needs at least one node');
    }
    // A copy, so indexFor stays valid if the caller later mutates its array.
    this.nodes = Object.freeze([...nodes]);

    const names = this.nodes.map(nameOf);
    const seen = new Map<string, number>();
    names.forEach((name, index) => {
      const earlier = seen.get(name);
      if (earlier !== undefined) {
        // The later node would take every point of the earlier one, leaving it no keys.
        throw new CachewarmError('TOPOLOGY_INVALID', `nodes ${earlier} and ${index} share the ring name "${name}"`, {
          ringName: name,
        });
      }
      seen.set(name, index);
    });

    const total = names.length * POINTS_PER_NODE;
    const raw = new Uint32Array(total);
    names.forEach((name, index) => {
      for (let d = 0; d < DIGESTS_PER_NODE; d++) {
        const digest = md5(`${name}-${d}`);
        for (let h = 0; h < POINTS_PER_DIGEST; h++) {
          raw[index * POINTS_PER_NODE + d * POINTS_PER_DIGEST + h] = digest.readUInt32LE(h * 4);
        }
      }
    });

    // Entry e belongs to node floor(e / POINTS_PER_NODE), so sorting ties by e keeps the
    // order nodes were added in. Where two entries share a point the LAST one wins, as in
    // spymemcached's TreeMap.put, where a later node overwrites an earlier one.
    // (libmemcached sorts with an unstable qsort, so no rule matches it better.)
    const order = new Uint32Array(total);
    for (let e = 0; e < total; e++) order[e] = e;
    order.sort((a, b) => raw[a]! - raw[b]! || a - b);

    const points = new Uint32Array(total);
    const owners = new Int32Array(total);
    let count = 0;
    for (let i = 0; i < total; i++) {
      const entry = order[i]!;
      const point = raw[entry]!;
      const owner = Math.floor(entry / POINTS_PER_NODE);
      if (count > 0 && points[count - 1] === point) {
        owners[count - 1] = owner;
      } else {
        points[count] = point;
        owners[count] = owner;
        count++;
      }
    }
    this.points = points.slice(0, count);
    this.owners = owners.slice(0, count);
  }

  /** the node a key lands on */
  nodeFor(key: Uint8Array | string): N {
    return this.nodes[this.indexFor(key)]!;
  }

  /** index of that node in the constructor's array */
  indexFor(key: Uint8Array | string): number {
    return this.indexForHash(ketamaHash(key));
  }

  /** indexFor the key data[start, end), without a view of it */
  indexForBytes(data: Uint8Array, start: number, end: number): number {
    return this.indexForHash(md5FirstWord(data, start, end));
  }

  /**
   * Each member's fraction of the 2^32 hash space, in the constructor's order; sums to 1.
   * A point owns the hashes after the previous point up to itself (indexForHash's rule), and
   * the first point also owns the wrap-around past the last one.
   */
  hashSpaceShares(): number[] {
    const owned = new Array<number>(this.nodes.length).fill(0);
    const points = this.points;
    const last = points.length - 1;
    for (let i = 0; i <= last; i++) {
      const arc = i === 0 ? HASH_SPACE - points[last]! + points[0]! : points[i]! - points[i - 1]!;
      owned[this.owners[i]!]! += arc;
    }
    return owned.map((hashes) => hashes / HASH_SPACE);
  }

  /** index of the node owning the first point at or after `hash`, wrapping to the first point */
  indexForHash(hash: number): number {
    const points = this.points;
    let lo = 0;
    let hi = points.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (points[mid]! < hash) lo = mid + 1;
      else hi = mid;
    }
    return this.owners[lo === points.length ? 0 : lo]!;
  }
}
