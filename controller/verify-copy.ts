import type { Connect } from '../shared/memcached/connect.js';
import type { TargetRing } from '../shared/chunk-message.js';
import { stats } from '../shared/memcached/commands.js';
import { MetaGetReplies, buildMetaGets } from '../shared/memcached/meta-get.js';
import type { WritableItem } from '../shared/memcached/meta-add.js';
import { parseAddress } from '../shared/topology.js';
import { ringOfTarget } from '../populator/write-to-ring.js';

export interface VerifyReport {
  readonly checked: number;
  readonly matched: number;
  readonly missing: number;
  readonly mismatched: number;
  /** A few of the differences, for a person to read. */
  readonly examples: readonly string[];
}

const BATCH = 500;

/**
 * Reads every expected item back from the node the target ring names for it and compares
 * value, flags and expiry. Reads with `u`, so the check itself does not disturb the target's
 * LRU.
 *
 * The TTL a node answers counts from its own clock, which ticks on a timer and lags ours by up
 * to 2 s on a busy machine; so each batch's expiries are that node's clock (its `time` stat,
 * read just before) plus the TTL, and the tolerance covers a tick between the two reads.
 */
export async function verifyCopy(
  expected: readonly WritableItem[],
  target: TargetRing,
  options: { connect: Connect; toleranceSeconds?: number },
): Promise<VerifyReport> {
  const { connect, toleranceSeconds = 1 } = options;
  const ring = ringOfTarget(target);
  const byNode = ring.nodes.map(() => [] as WritableItem[]);
  for (const item of expected) byNode[ring.indexFor(item.key)]?.push(item);
  let matched = 0;
  let missing = 0;
  let mismatched = 0;
  const examples: string[] = [];
  const note = (text: string): void => {
    if (examples.length < 10) examples.push(text);
  };
  await Promise.all(
    ring.nodes.map(async (node, index) => {
      const items = byNode[index] as WritableItem[];
      if (items.length === 0) return;
      const conn = await connect({ ...parseAddress(node.address), label: node.address });
      try {
        const keys = items.map((item) => item.key);
        for (let start = 0; start < keys.length; start += BATCH) {
          const end = Math.min(keys.length, start + BATCH);
          const nodeNowSeconds = Number((await stats(conn)).get('time'));
          const reply = new MetaGetReplies(end - start, {
            hit(i, value, flags, ttl) {
              const want = items[start + i] as WritableItem;
              const exptime = ttl < 0 ? 0 : nodeNowSeconds + ttl;
              const expiryOk = want.exptime === 0 ? exptime === 0 : Math.abs(exptime - want.exptime) <= toleranceSeconds;
              if (value.equals(want.value) && flags === want.flags && expiryOk) matched++;
              else {
                mismatched++;
                note(`${want.key.toString('hex')} on ${node.address}: flags ${flags}/${want.flags}, exptime ${exptime}/${want.exptime}, value ${value.equals(want.value) ? 'same' : 'differs'}`);
              }
            },
            miss(i) {
              missing++;
              note(`${(items[start + i] as WritableItem).key.toString('hex')} missing on ${node.address}`);
            },
          }, conn.label);
          await conn.send(buildMetaGets(keys, start, end), reply);
        }
      } finally {
        conn.close();
      }
    }),
  );
  return { checked: expected.length, matched, missing, mismatched, examples };
}
