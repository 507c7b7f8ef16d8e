import type { Clock } from '../shared/clock.js';
import { newDumpCounters } from '../shared/counters.js';
import { CachewarmError, abortReason, isCachewarmError } from '../shared/errors.js';
import { absoluteExpiry } from '../shared/expiry.js';
import { stats } from '../shared/memcached/commands.js';
import type { Connect } from '../shared/memcached/connect.js';
import type { MemcachedConnection } from '../shared/memcached/connection.js';
import { MetaGetReplies, buildMetaGets } from '../shared/memcached/meta-get.js';
import { type RateLimiter, TokenBucket, unlimited } from '../shared/token-bucket.js';
import { type NodeSpec, type Topology, replicaOf } from '../shared/topology.js';
import { listKeys } from '../dumper/list-keys.js';
import type { SampledKey } from '../shared/key-sample.js';
import { ringOfTarget } from '../populator/write-to-ring.js';
import { targetRingOf } from './warm-plan.js';
import { type ReverseCheck, reverseCheck } from './verify-reverse.js';

/**
 * `cachewarm verify`: compares a target replica with its source as the cache's clients see
 * them. The source's keys are listed with the LRU crawler (as the dumper lists them), each key
 * is routed with both rings, and the item is read from the node the SOURCE ring names and
 * from the node the TARGET ring names, with `mg <key> v f t u`: the `u` (and the crawler's
 * metadump) leave both replicas' LRUs as they were, so the check does not make every item
 * look freshly used.
 *
 * Every key a target node should hold is classified:
 *
 * - identical: same value, same client flags, same expiry (absolute expiries within
 *   `toleranceSeconds`, computed from the remaining TTLs read; no expiry on both sides);
 * - missing: the source holds it, the target node does not (re-read from the source after the
 *   target answered, so a key deleted meanwhile is not blamed on the target);
 * - newerInTarget: the copies differ, but live traffic explains it. Exactly: the source was
 *   read again right after the target; the key counts here when (a) the source's item changed
 *   between its two reads (value, flags, or expiry beyond the tolerance: a write or touch
 *   landed while the replicas were compared), or (b) the target's absolute expiry is later
 *   than the source's by more than the tolerance (the target's copy was written after the
 *   source's, with a fresh TTL: a warm copies expiries exactly, so it cannot have made that).
 *   A target copy with no expiry where the source's has one is not "later" in this sense: it
 *   counts as different;
 * - different: both hold it, value, flags or expiry differ, and neither (a) nor (b) holds;
 * - expired: the source's item expires within `toleranceSeconds` of being read (or had
 *   expired by then): its copies cannot be compared meaningfully;
 * - goneFromSource: listed by the crawl, but missing from the source when read (the first or
 *   the second read): deleted or evicted meanwhile; not counted as checked.
 *
 * checked = identical + missing + different + newerInTarget + expired; `ok` is true iff
 * nothing is missing or different.
 *
 * Which keys: those each source node holds and the source ring places on it (a key left on a
 * node its ring no longer names is invisible to clients: counted as a stray, not checked),
 * and, with `node`, only those the target ring places on that node. With a sample size, a
 * uniform random sample of that many keys per target node (reservoir sampling over the crawl:
 * memory grows with the sample, not with the data); with 'all', every key, checked as the
 * crawl lists it (memory bounded by the batches in flight). A live crawl in memcached's `all`
 * mode (servers before 1.6.19) can list an item moving between LRUs twice: in a sample it is
 * kept once, with 'all' it is checked twice.
 */

export interface VerifyReplicasOptions {
  readonly topology: Topology;
  /** The replica the target is compared with. */
  readonly source: string;
  /** The replica checked. */
  readonly target: string;
  /** Only the keys the target ring places on this node of the target (e.g. after an instance warm). */
  readonly node?: NodeSpec | undefined;
  /** A random sample of this many keys per target node, or every key. */
  readonly sample: number | 'all';
  /** Items per second read from each source node (both of a key's reads count). Default: unlimited. */
  readonly maxOpsPerNode?: number | undefined;
  readonly connect: Connect;
  readonly clock: Clock;
  readonly signal?: AbortSignal | undefined;
  /** How far two absolute expiries may be apart and still be equal. Default 2 s. */
  readonly toleranceSeconds?: number | undefined;
  /**
   * Items of at least this many bytes (key + value) that the target lacks were accepted as too
   * large for it (a warm's `--skip-too-large`): counted as `tooLarge`, not as missing.
   */
  readonly tooLargeFromBytes?: number | undefined;
  /**
   * A uniform sample of the keys a warm's own dump listed (see KeySample), drawn from instead
   * of listing the source's keys again: the read-back then costs the source no second crawl.
   * Only with a sample size; it should hold more keys than sample × target nodes, since the
   * keys spread over the target nodes unevenly.
   */
  readonly listedSample?: readonly SampledKey[] | undefined;
  /**
   * Look the other way too (verify-reverse.ts): list the target nodes' keys and count those the
   * source does not hold, as a warm that resurrected deleted keys would leave them.
   */
  readonly reverse?: boolean | undefined;
}

/** What a check found (checked = the five counts after it). */
export interface VerifyCounts {
  readonly checked: number;
  readonly identical: number;
  readonly missing: number;
  readonly different: number;
  readonly newerInTarget: number;
  readonly expired: number;
}

/** What one target node's check found. */
export interface VerifyNodeCounts extends VerifyCounts {
  /** The target node's id, `replica/address`. */
  readonly node: string;
}

export interface VerifyReport extends VerifyCounts {
  readonly source: string;
  readonly target: string;
  /** The target node checked alone, when one was given. */
  readonly node?: string | undefined;
  /** The sample size per target node, or 'all'. */
  readonly sample: number | 'all';
  /** Whether fewer keys were checked than listed: some target node had more keys than the sample size. */
  readonly sampled: boolean;
  /** Keys the crawl listed that were in scope (owned by their source node, not expired, on the target node checked). */
  readonly listed: number;
  /** Keys listed on a source node the source ring does not name for them: invisible to clients, not checked. */
  readonly strays: number;
  /** Keys the text protocol cannot name (base64 form over 250 characters): never copied, not checked. */
  readonly unsupported: number;
  /** Missing from the target but too large for it, as accepted (see tooLargeFromBytes): not counted as checked. */
  readonly tooLarge: number;
  /** Listed, but gone from the source when read: not counted as checked. */
  readonly goneFromSource: number;
  readonly perNode: readonly VerifyNodeCounts[];
  /** At most 10 keys missing or different: the key (as text when printable, else hex), the node, what differs. */
  readonly examples: readonly string[];
  readonly durationMs: number;
  /** Keys checked per second of the whole run (crawl included). */
  readonly keysPerSecond: number;
  /** Keys listed per second of the whole run. */
  readonly listedPerSecond: number;
  /** The other direction, when asked for (`reverse`): keys in the target the source does not hold. */
  readonly reverse?: ReverseCheck | undefined;
  /** missing === 0 && different === 0, and nothing found only in the target */
  readonly ok: boolean;
}

const DEFAULT_TOLERANCE_SECONDS = 2;
const MAX_EXAMPLES = 10;
/** Keys per crawl batch. */
const CRAWL_BATCH_KEYS = 1_000;
/** Keys read in one pipelined check, and the item bytes (as the crawler reported them) it may hold. */
const CHECK_KEYS = 500;
const CHECK_BYTES = 1 << 20;
/** Checks in flight per source node: one being answered while the next is on the wire. */
const WINDOW = 2;

/** A key to check: the target node the ring names, and what the crawler said of it. */
interface Candidate {
  readonly key: Buffer;
  readonly exptime: number;
  readonly size: number;
  readonly target: number;
}

type NodeCounts = { -readonly [K in keyof VerifyCounts]: number };

/** The source's first read of an item. */
interface SourceCopy {
  readonly value: Buffer;
  readonly flags: number;
  /** Absolute expiry, unix seconds; 0 for none. */
  readonly exptime: number;
}

type TargetVerdict =
  | { readonly kind: 'identical' }
  | { readonly kind: 'missing' }
  | { readonly kind: 'differs'; readonly what: string; readonly targetLater: boolean };

export async function verifyReplicas(options: VerifyReplicasOptions): Promise<VerifyReport> {
  const { topology, connect, clock, sample } = options;
  const tolerance = options.toleranceSeconds ?? DEFAULT_TOLERANCE_SECONDS;
  const sourceReplica = replicaOf(topology, options.source, 'source');
  const targetReplica = replicaOf(topology, options.target, 'target');
  if (options.source === options.target) {
    throw new CachewarmError('INVALID_ARGUMENT', `the source and the target are both ${options.source}: compare two different replicas`, {
      source: options.source,
      target: options.target,
    });
  }
  if (sample !== 'all' && !(Number.isSafeInteger(sample) && sample > 0)) {
    throw new CachewarmError('INVALID_ARGUMENT', `sample: expected a positive whole number of keys per node or 'all', got ${String(sample)}`, {
      sample: String(sample),
    });
  }
  if (!(Number.isFinite(tolerance) && tolerance >= 0)) {
    throw new CachewarmError('INVALID_ARGUMENT', `toleranceSeconds: expected a non-negative number, got ${tolerance}`, { tolerance });
  }
  let onlyTarget: number | undefined;
  if (options.node) {
    const wanted = options.node;
    onlyTarget = targetReplica.nodes.findIndex((n) => n.address === wanted.address);
    if (wanted.replica !== targetReplica.name || onlyTarget < 0) {
      throw new CachewarmError('INVALID_ARGUMENT', `node ${wanted.id} is not a node of the target ${targetReplica.name}`, {
        node: wanted.id,
        target: targetReplica.name,
      });
    }
  }
  const limiters: RateLimiter[] = sourceReplica.nodes.map(() =>
    options.maxOpsPerNode === undefined ? unlimited : new TokenBucket({ ratePerSecond: options.maxOpsPerNode, clock }),
  );

  // Both rings exactly as the warm builds them, so a key is looked for where clients look.
  const sourceRing = ringOfTarget(targetRingOf(topology, sourceReplica.name));
  const targetRing = ringOfTarget(targetRingOf(topology, targetReplica.name));
  const inScope = targetReplica.nodes.map((_, index) => onlyTarget === undefined || onlyTarget === index);

  const started = clock.now();
  const counts: NodeCounts[] = targetReplica.nodes.map(() => ({ checked: 0, identical: 0, missing: 0, different: 0, newerInTarget: 0, expired: 0 }));
  let goneFromSource = 0;
  let tooLarge = 0;
  let listed = 0;
  let strays = 0;
  const dumpCounters = newDumpCounters();
  const examples: string[] = [];
  const note = (text: string): void => {
    if (examples.length < MAX_EXAMPLES) examples.push(text);
  };

  // One stop for everything: the caller's signal, or the first failure, closes every connection.
  const stop = new AbortController();
  const onOuterAbort = (): void => stop.abort(abortReason(options.signal as AbortSignal));
  if (options.signal?.aborted) throw abortReason(options.signal);
  options.signal?.addEventListener('abort', onOuterAbort, { once: true });
  const opened: MemcachedConnection[] = [];
  const closeAll = (): void => {
    for (const conn of opened) conn.close();
  };
  stop.signal.addEventListener('abort', closeAll, { once: true });
  /** The first failure: it stops everything else. */
  let failure: { error: unknown } | undefined;
  const fail = (error: unknown): void => {
    if (failure) return;
    failure = { error };
    stop.abort(error);
  };

  async function open(node: NodeSpec): Promise<MemcachedConnection> {
    let conn: MemcachedConnection;
    try {
      conn = await connect({ host: node.host, port: node.port, label: node.id }, stop.signal);
    } catch (error) {
      if (stop.signal.aborted) throw abortReason(stop.signal);
      if (isCachewarmError(error, 'NODE_UNREACHABLE') && error.message.includes(node.id)) throw error;
      const why = error instanceof Error ? error.message : String(error);
      throw new CachewarmError('NODE_UNREACHABLE', `cannot connect to ${node.id}: ${why}`, { node: node.id }, { cause: error });
    }
    opened.push(conn);
    if (stop.signal.aborted) conn.close();
    return conn;
  }

  /** Opens one connection per node, all at once; one that fails fails the lot (the others are closed in the end). */
  async function openAll(nodes: readonly (NodeSpec | undefined)[]): Promise<(MemcachedConnection | undefined)[]> {
    const results = await Promise.allSettled(nodes.map((node) => (node ? open(node) : Promise.resolve(undefined))));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    return results.map((r) => (r.status === 'fulfilled' ? r.value : undefined));
  }

  /** Reads keys with pipelined `mg <key> v f t u` (base64 `b` for keys that need it). */
  async function metaGet(
    conn: MemcachedConnection,
    keys: readonly Buffer[],
    hit: (index: number, value: Buffer, flags: number, ttl: number) => void,
    miss: (index: number) => void,
  ): Promise<void> {
    if (keys.length === 0) return;
    await conn.send(buildMetaGets(keys, 0, keys.length), new MetaGetReplies(keys.length, { hit, miss }, conn.label));
  }

  // Each node's own clock (`stats time`), read on the connection the batch goes to: memcached's
  // clock lags ours on a busy machine, and TTLs count down on it, not on ours.
  const serverNow = async (conn: MemcachedConnection): Promise<number> => Number((await stats(conn)).get('time'));
  const expiresSoon = (ttl: number): boolean => ttl >= 0 && ttl <= tolerance;
  const expiryText = (exptime: number): string => (exptime === 0 ? 'none' : String(exptime));
  const sameExpiry = (a: number, b: number): boolean => (a === 0 || b === 0 ? a === b : Math.abs(a - b) <= tolerance);

  let sourceReads: (MemcachedConnection | undefined)[] = [];
  let targetReads: (MemcachedConnection | undefined)[] = [];

  /** Checks keys that all live on source node `s`: source, then target, then the source again for those that disagree. */
  async function check(s: number, batch: readonly Candidate[]): Promise<void> {
    const sourceConn = sourceReads[s] as MemcachedConnection;
    const sourceNode = sourceReplica.nodes[s] as NodeSpec;
    const keys = batch.map((c) => c.key);

    await limiters[s]?.take(keys.length, stop.signal);
    const firstNow = await serverNow(sourceConn);
    const first: (SourceCopy | 'gone' | 'expired')[] = new Array(batch.length).fill('gone');
    await metaGet(
      sourceConn,
      keys,
      (i, value, flags, ttl) => {
        const exptime = expiresSoon(ttl) ? undefined : absoluteExpiry(ttl, (batch[i] as Candidate).exptime, firstNow);
        first[i] = exptime === undefined ? 'expired' : { value: Buffer.from(value), flags, exptime };
      },
      () => undefined,
    );

    // The target's copies, each from the node the target ring names, all target nodes at once.
    const verdicts: (TargetVerdict | undefined)[] = new Array(batch.length).fill(undefined);
    const byTarget = new Map<number, number[]>();
    first.forEach((copy, i) => {
      if (typeof copy === 'string') return;
      const t = (batch[i] as Candidate).target;
      let list = byTarget.get(t);
      if (!list) byTarget.set(t, (list = []));
      list.push(i);
    });
    await Promise.all(
      [...byTarget].map(async ([t, indices]) => {
        const targetNow = await serverNow(targetReads[t] as MemcachedConnection);
        await metaGet(
          targetReads[t] as MemcachedConnection,
          indices.map((i) => keys[i] as Buffer),
          (j, value, flags, ttl) => {
            const i = indices[j] as number;
            const want = first[i] as SourceCopy;
            const exptime = ttl < 0 ? 0 : targetNow + ttl;
            const differences: string[] = [];
            if (!value.equals(want.value)) {
              differences.push(
                value.length === want.value.length ? `value differs (${value.length} bytes both)` : `value ${want.value.length} vs ${value.length} bytes`,
              );
            }
            if (flags !== want.flags) differences.push(`flags ${want.flags} vs ${flags}`);
            if (!sameExpiry(want.exptime, exptime)) differences.push(`expiry ${expiryText(want.exptime)} vs ${expiryText(exptime)}`);
            verdicts[i] =
              differences.length === 0
                ? { kind: 'identical' }
                : { kind: 'differs', what: differences.join(', '), targetLater: want.exptime !== 0 && exptime !== 0 && exptime - want.exptime > tolerance };
          },
          (j) => {
            verdicts[indices[j] as number] = { kind: 'missing' };
          },
        );
      }),
    );

    // The source again, for the keys the target disagrees on: did live traffic change them meanwhile?
    const recheck = verdicts.flatMap((v, i) => (v !== undefined && v.kind !== 'identical' ? [i] : []));
    const second: ('same' | 'changed' | 'gone' | 'expired')[] = new Array(recheck.length).fill('gone');
    if (recheck.length > 0) {
      await limiters[s]?.take(recheck.length, stop.signal);
      const secondNow = await serverNow(sourceConn);
      await metaGet(
        sourceConn,
        recheck.map((i) => keys[i] as Buffer),
        (j, value, flags, ttl) => {
          const was = first[recheck[j] as number] as SourceCopy;
          const exptime = absoluteExpiry(ttl, (batch[recheck[j] as number] as Candidate).exptime, secondNow);
          if (exptime === undefined || expiresSoon(ttl)) second[j] = 'expired';
          else second[j] = value.equals(was.value) && flags === was.flags && sameExpiry(was.exptime, exptime) ? 'same' : 'changed';
        },
        () => undefined,
      );
    }
    const again = new Map<number, (typeof second)[number]>(recheck.map((i, j) => [i, second[j] as (typeof second)[number]]));

    batch.forEach((candidate, i) => {
      const copy = first[i] as SourceCopy | 'gone' | 'expired';
      if (copy === 'gone') {
        goneFromSource++;
        return;
      }
      const node = counts[candidate.target] as NodeCounts;
      if (copy === 'expired') {
        node.checked++;
        node.expired++;
        return;
      }
      const verdict = verdicts[i] as TargetVerdict;
      if (verdict.kind === 'identical') {
        node.checked++;
        node.identical++;
        return;
      }
      const secondRead = again.get(i);
      if (secondRead === 'gone') {
        goneFromSource++;
        return;
      }
      node.checked++;
      if (secondRead === 'expired') {
        node.expired++;
        return;
      }
      const targetNode = targetReplica.nodes[candidate.target] as NodeSpec;
      if (verdict.kind === 'missing' && options.tooLargeFromBytes !== undefined && candidate.key.length + copy.value.length >= options.tooLargeFromBytes) {
        node.checked--;
        tooLarge++;
      } else if (verdict.kind === 'missing') {
        node.missing++;
        note(`missing: ${keyText(candidate.key)} is on ${sourceNode.id}, not on ${targetNode.id}`);
      } else if (secondRead === 'changed' || verdict.targetLater) {
        node.newerInTarget++;
      } else {
        node.different++;
        note(`different: ${keyText(candidate.key)} on ${targetNode.id} (source ${sourceNode.id}): ${verdict.what}`);
      }
    });
  }

  /** Runs checks of up to CHECK_KEYS keys / CHECK_BYTES, at most WINDOW at once, for one source node. */
  function checker(s: number): { add: (c: Candidate) => Promise<void> | undefined; finish: () => Promise<void> } {
    const window: Promise<void>[] = [];
    let pending: Candidate[] = [];
    let bytes = 0;
    const flush = async (): Promise<void> => {
      if (pending.length === 0) return;
      const running = check(s, pending);
      running.catch(() => undefined); // awaited below
      window.push(running);
      pending = [];
      bytes = 0;
      if (window.length >= WINDOW) await window.shift();
    };
    return {
      // Returns a promise only when a check was started (no await per key on a crawl of millions).
      add: (c) => {
        const full = pending.length > 0 && (pending.length >= CHECK_KEYS || bytes + c.size > CHECK_BYTES);
        const started = full ? flush() : undefined;
        pending.push(c);
        bytes += c.size;
        return started;
      },
      finish: async () => {
        if (failure) pending = [];
        else await flush();
        // Every one, even after a failure: none may still run when the connections close.
        const results = await Promise.allSettled(window.splice(0));
        const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
        if (failed) throw failed.reason;
      },
    };
  }

  /** Hands on a key listed on source node `s` if it is in scope, with the target node it belongs to. */
  function consider(s: number, key: Buffer, exptime: number, size: number, take: (c: Candidate) => Promise<void> | undefined): Promise<void> | undefined {
    if (sourceRing.indexFor(key) !== s) {
      strays++;
      return undefined;
    }
    const target = targetRing.indexFor(key);
    if (!inScope[target]) return undefined;
    listed++;
    return take({ key, exptime, size, target });
  }

  /** Lists source node `s`'s keys and hands on those in scope, with the target node each belongs to. */
  async function crawl(s: number, take: (c: Candidate) => Promise<void> | undefined): Promise<void> {
    const node = sourceReplica.nodes[s] as NodeSpec;
    const conn = await open(node);
    try {
      for await (const batch of listKeys(conn, { batchKeys: CRAWL_BATCH_KEYS, clock, counters: dumpCounters, signal: stop.signal })) {
        for (let i = 0; i < batch.keys.length; i++) {
          const taken = consider(s, batch.keys[i] as Buffer, batch.exptimes[i] as number, batch.sizes[i] as number, take);
          if (taken) await taken;
        }
      }
    } finally {
      conn.close(); // frees the node's crawler for others
    }
  }

  const reservoirs = sample === 'all' ? [] : targetReplica.nodes.map(() => new Reservoir(sample));
  try {
    // Every node is reached before anything is read: an unreachable one fails the check at once.
    [sourceReads, targetReads] = await Promise.all([
      openAll(sourceReplica.nodes),
      openAll(targetReplica.nodes.map((n, index) => (inScope[index] ? n : undefined))),
    ]);
    if (sample === 'all') {
      await Promise.all(
        sourceReplica.nodes.map(async (_, s) => {
          const checks = checker(s);
          // A failed crawl stops everything before its last keys would be checked.
          await crawl(s, checks.add).catch(fail);
          await checks.finish().catch(fail);
        }),
      );
    } else {
      const offer = (s: number) => (c: Candidate): undefined => {
        (reservoirs[c.target] as Reservoir).offer(c, s);
        return undefined;
      };
      if (options.listedSample) {
        const indexOf = new Map(sourceReplica.nodes.map((n, s) => [n.id, s]));
        for (const { key, exptime, sizeBytes, source } of options.listedSample) {
          const s = indexOf.get(source);
          if (s !== undefined) consider(s, key, exptime, sizeBytes, offer(s));
        }
      } else await Promise.all(sourceReplica.nodes.map((_, s) => crawl(s, offer(s)).catch(fail)));
      const bySource = sourceReplica.nodes.map(() => [] as Candidate[]);
      if (!failure) for (const reservoir of reservoirs) for (const { candidate, source } of reservoir.entries()) bySource[source]?.push(candidate);
      await Promise.all(
        bySource.map(async (candidates, s) => {
          const checks = checker(s);
          try {
            for (const c of candidates) {
              if (failure) break;
              const taken = checks.add(c);
              if (taken) await taken;
            }
          } catch (error) {
            fail(error);
          }
          await checks.finish().catch(fail);
        }),
      );
    }
  } catch (error) {
    fail(error);
  } finally {
    options.signal?.removeEventListener('abort', onOuterAbort);
    closeAll();
  }
  if (options.signal?.aborted) throw abortReason(options.signal);
  if (failure) throw failure.error;
  const reverse = options.reverse
    ? await reverseCheck({
        topology,
        source: sourceReplica.name,
        target: targetReplica.name,
        nodes: targetReplica.nodes.filter((_, index) => inScope[index]),
        sample,
        maxOpsPerNode: options.maxOpsPerNode,
        connect,
        clock,
        signal: options.signal,
        onFound: (key, target, source) => note(`only in the target: ${keyText(key)} is on ${target.id}, not on ${source.id}`),
      })
    : undefined;

  const durationMs = Math.max(0, clock.now() - started);
  const perNode: VerifyNodeCounts[] = targetReplica.nodes.flatMap((n, index) => (inScope[index] ? [{ node: n.id, ...(counts[index] as NodeCounts) }] : []));
  const sum = (field: keyof NodeCounts): number => perNode.reduce((total, n) => total + n[field], 0);
  const checked = sum('checked');
  const missing = sum('missing');
  const different = sum('different');
  const perSecond = (n: number): number => Math.round(durationMs > 0 ? (n * 1000) / durationMs : n);
  return {
    source: sourceReplica.name,
    target: targetReplica.name,
    ...(options.node && { node: options.node.id }),
    sample,
    sampled: reservoirs.some((r) => r.dropped),
    listed,
    strays,
    unsupported: dumpCounters.unsupported,
    checked,
    identical: sum('identical'),
    missing,
    different,
    newerInTarget: sum('newerInTarget'),
    expired: sum('expired'),
    goneFromSource,
    tooLarge,
    perNode,
    examples,
    durationMs,
    keysPerSecond: perSecond(checked),
    listedPerSecond: perSecond(listed),
    ...(reverse && { reverse }),
    ok: missing === 0 && different === 0 && (reverse?.notInSource ?? 0) === 0,
  };
}

/** The key as a person reads it: itself when printable ASCII, else hex. */
function keyText(key: Buffer): string {
  for (const byte of key) if (byte <= 0x20 || byte >= 0x7f) return `key hex:${key.toString('hex')}`;
  return `key ${key.toString('latin1')}`;
}

/**
 * A uniform random sample of up to `size` keys (algorithm R), each kept once: the crawl may
 * list a key twice. Keys are held as latin1 strings, one byte per character, so a kept key
 * pins no crawl buffer.
 */
interface Kept {
  readonly key: string;
  readonly exptime: number;
  readonly size: number;
  readonly target: number;
  readonly source: number;
}

class Reservoir {
  private readonly kept: Kept[] = [];
  private readonly at = new Map<string, number>();
  private seen = 0;

  constructor(private readonly size: number) {}

  get dropped(): boolean {
    return this.seen > this.size;
  }

  offer(c: Candidate, source: number): void {
    const key = c.key.toString('latin1');
    if (this.at.has(key)) return;
    this.seen++;
    const entry: Kept = { key, exptime: c.exptime, size: c.size, target: c.target, source };
    if (this.kept.length < this.size) {
      this.at.set(key, this.kept.length);
      this.kept.push(entry);
      return;
    }
    const slot = Math.floor(Math.random() * this.seen);
    if (slot >= this.size) return;
    this.at.delete((this.kept[slot] as Kept).key);
    this.kept[slot] = entry;
    this.at.set(key, slot);
  }

  *entries(): Generator<{ candidate: Candidate; source: number }> {
    for (const e of this.kept) {
      yield { candidate: { key: Buffer.from(e.key, 'latin1'), exptime: e.exptime, size: e.size, target: e.target }, source: e.source };
    }
  }
}
