// The read-back check the end-to-end tests share: is every expected item on the node the
// target ring names for it, byte for byte, with its flags and its absolute expiry?
import assert from 'node:assert/strict';
import { targetRingOf } from '../../controller/warm-plan.js';
import { ringOfTarget } from '../../populator/write-to-ring.js';
import type { TargetRing } from '../../shared/chunk-message.js';
import { stats } from '../../shared/memcached/commands.js';
import { MemcachedConnection } from '../../shared/memcached/connection.js';
import type { WritableItem } from '../../shared/memcached/meta-add.js';
import { MetaGetReplies, buildMetaGets } from '../../shared/memcached/meta-get.js';
import { type Topology, parseAddress } from '../../shared/topology.js';

/** An item as it should be: key, value, client flags, absolute expiry (unix seconds, 0 for none). */
export type ExpectedItem = WritableItem;

export interface ReadBackReport {
  /** Expected items looked up. */
  readonly checked: number;
  /** Found on the node the ring names, with the same value, flags and expiry. */
  readonly identical: number;
  /** Keys (see keyText) the node the ring names does not hold. */
  readonly missing: string[];
  /** Items found there but not as expected, and why. */
  readonly different: { key: string; why: string }[];
}

/** Where to look: a target ring, or a replica of a topology (its ring). */
export type ReadBackTarget = TargetRing | { readonly topology: Topology; readonly replica: string };

const BATCH = 500;
/** Reads of a batch redone when memcached's clock ticked during it (see readNode). */
const SAME_SECOND_ATTEMPTS = 5;

/** A key for people: its text when it is printable UTF-8, else `0x<hex>`. */
export function keyText(key: Buffer): string {
  const text = key.toString('utf8');
  return Buffer.from(text, 'utf8').equals(key) && /^[\x21-\x7e\u00a0-\uffff]*$/u.test(text) ? text : `0x${key.toString('hex')}`;
}

function ringOf(target: ReadBackTarget): TargetRing {
  return 'topology' in target ? targetRingOf(target.topology, target.replica) : target;
}

/**
 * Reads every expected item from the node the target ring names for it, with `mg <key> v f t u`
 * (`u`: the check leaves the node's LRU as it was), and compares it exactly:
 *
 * - the value, byte for byte, and all 32 bits of the client flags;
 * - the expiry: none (TTL -1) for exptime 0, else the absolute time. memcached answers a
 *   remaining TTL counted from its own clock (`stats time`, which ticks once a second), so
 *   each batch is read between two `stats time`; a batch during which the clock ticked is
 *   read again, and the absolute expiry is then exactly `time + TTL`, no tolerance.
 *
 * Every key is read from the ring's node only: an item on another node counts as missing.
 */
export async function readBack(target: ReadBackTarget, expected: readonly ExpectedItem[]): Promise<ReadBackReport> {
  const ring = ringOfTarget(ringOf(target));
  const seen = new Set<string>();
  const byNode = ring.nodes.map(() => [] as ExpectedItem[]);
  for (const item of expected) {
    const id = item.key.toString('hex');
    if (seen.has(id)) throw new Error(`readBack: key ${keyText(item.key)} is expected twice`);
    seen.add(id);
    byNode[ring.indexFor(item.key)]?.push(item);
  }
  const missing: string[] = [];
  const different: { key: string; why: string }[] = [];
  let identical = 0;
  await Promise.all(
    ring.nodes.map(async (node, index) => {
      const items = byNode[index] as ExpectedItem[];
      if (items.length === 0) return;
      const found = await readNode(node.address, items);
      found.forEach((got, i) => {
        const want = items[i] as ExpectedItem;
        if (!got) {
          missing.push(keyText(want.key));
          return;
        }
        const why = differences(want, got);
        if (why) different.push({ key: keyText(want.key), why: `on ${node.address}: ${why}` });
        else identical++;
      });
    }),
  );
  // In the order the items were expected, whatever order the nodes answered in.
  const order = new Map(expected.map((item, i) => [keyText(item.key), i]));
  missing.sort((a, b) => (order.get(a) as number) - (order.get(b) as number));
  different.sort((a, b) => (order.get(a.key) as number) - (order.get(b.key) as number));
  return { checked: expected.length, identical, missing, different };
}

/**
 * Fails, listing the first few problems with the counts, unless every expected item is on the
 * node the ring names, identical (see readBack). With `nothingElseOn`, those nodes (addresses)
 * must also hold no item beyond the expected ones placed on them (`curr_items`).
 */
export async function assertExactCopy(
  target: ReadBackTarget,
  expected: readonly ExpectedItem[],
  options: { what?: string; nothingElseOn?: readonly string[]; show?: number } = {},
): Promise<ReadBackReport> {
  const report = await readBack(target, expected);
  const show = options.show ?? 5;
  const what = options.what ?? `the ${expected.length} expected items`;
  const problems: string[] = [];
  if (report.missing.length > 0) {
    problems.push(`${report.missing.length} missing: ${report.missing.slice(0, show).join(', ')}${report.missing.length > show ? ', …' : ''}`);
  }
  if (report.different.length > 0) {
    const listed = report.different.slice(0, show).map((d) => `${d.key} (${d.why})`);
    problems.push(`${report.different.length} different: ${listed.join('; ')}${report.different.length > show ? '; …' : ''}`);
  }
  if (options.nothingElseOn) {
    const ring = ringOfTarget(ringOf(target));
    const placed = new Map<string, number>();
    for (const item of expected) {
      const address = ring.nodeFor(item.key).address;
      placed.set(address, (placed.get(address) ?? 0) + 1);
    }
    for (const address of options.nothingElseOn) {
      const held = await currItems(address);
      const want = placed.get(address) ?? 0;
      if (held !== want) problems.push(`${address} holds ${held} items, expected exactly ${want}`);
    }
  }
  if (problems.length > 0) {
    assert.fail(`${what}: ${report.identical} of ${report.checked} identical; ${problems.join('; ')}`);
  }
  return report;
}

interface Found {
  readonly value: Buffer;
  readonly flags: number;
  /** Absolute expiry by the node's own clock; 0 for none. */
  readonly exptime: number;
  /**
   * The latest the expiry can be: the same as exptime, unless memcached's clock kept ticking
   * through every attempt at the batch (a very slow machine); then exptime + the ticks.
   */
  readonly exptimeUpTo: number;
}

function differences(want: ExpectedItem, got: Found): string | undefined {
  const why: string[] = [];
  if (!got.value.equals(want.value)) {
    let at = 0;
    while (at < got.value.length && at < want.value.length && got.value[at] === want.value[at]) at++;
    why.push(`value differs (${got.value.length} bytes, expected ${want.value.length}; first difference at byte ${at})`);
  }
  if (got.flags !== want.flags >>> 0) why.push(`flags ${got.flags}, expected ${want.flags >>> 0}`);
  const expiryOk = want.exptime === 0 ? got.exptime === 0 : got.exptime !== 0 && want.exptime >= got.exptime && want.exptime <= got.exptimeUpTo;
  if (!expiryOk) {
    const describe = (exptime: number): string => (exptime === 0 ? 'no expiry' : `exptime ${exptime}`);
    const by = got.exptime !== 0 && want.exptime !== 0 ? ` (${got.exptime > want.exptime ? '+' : ''}${got.exptime - want.exptime} s)` : '';
    why.push(`${describe(got.exptime)}, expected ${describe(want.exptime)}${by}`);
  }
  return why.length > 0 ? why.join(', ') : undefined;
}

/** memcached's own clock: `stats time` (unix seconds, as it counts TTLs). */
async function serverTime(conn: MemcachedConnection): Promise<number> {
  const time = Number((await stats(conn)).get('time'));
  if (!Number.isSafeInteger(time)) throw new Error(`${conn.label}: stats gave no time`);
  return time;
}

async function readNode(address: string, items: readonly ExpectedItem[]): Promise<(Found | undefined)[]> {
  const conn = await MemcachedConnection.connect({ ...parseAddress(address), label: address });
  const keys = items.map((item) => item.key);
  const out: (Found | undefined)[] = new Array(items.length).fill(undefined);
  try {
    for (let start = 0; start < keys.length; start += BATCH) {
      const end = Math.min(keys.length, start + BATCH);
      for (let attempt = 1; ; attempt++) {
        const ttls: { at: number; value: Buffer; flags: number; ttl: number }[] = [];
        const before = await serverTime(conn);
        await conn.send(
          buildMetaGets(keys, start, end),
          new MetaGetReplies(end - start, {
            hit: (i, value, flags, ttl) => void ttls.push({ at: start + i, value: Buffer.from(value), flags, ttl }),
            miss: () => undefined,
          }, `read-back ${address}`),
        );
        const after = await serverTime(conn);
        // A tick between the two leaves each TTL a second uncertain: read the batch again.
        if (before !== after && attempt < SAME_SECOND_ATTEMPTS) continue;
        for (const hit of ttls) {
          const exptime = hit.ttl < 0 ? 0 : before + hit.ttl;
          out[hit.at] = { value: hit.value, flags: hit.flags, exptime, exptimeUpTo: hit.ttl < 0 ? 0 : after + hit.ttl };
        }
        break;
      }
    }
  } finally {
    conn.close();
  }
  return out;
}

async function currItems(address: string): Promise<number> {
  const conn = await MemcachedConnection.connect({ ...parseAddress(address), label: address });
  try {
    return Number((await stats(conn)).get('curr_items'));
  } finally {
    conn.close();
  }
}
