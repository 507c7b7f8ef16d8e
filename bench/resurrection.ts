/**
 * Issue 14's scenario as a bench row: while a warm runs into the flushed target, an
 * application deletes every 20th key from source and target at once, starting when half the
 * target's items are there; afterwards, how many of those keys the target still holds (back
 * to life, though the source has none), with the delete reconcile and without.
 */
import { statsAt } from '../shared/memcached/commands.js';
import { MemcachedConnection } from '../shared/memcached/connection.js';
import { MetaDeleteReplies, MetaExistsReplies, buildMetaExists } from '../shared/memcached/meta-reconcile.js';
import type { WritableItem } from '../shared/memcached/meta-add.js';
import type { MemcachedProcess } from '../shared/local-memcached.js';
import type { TargetNodeRing } from '../populator/write-to-ring.js';

export interface ResurrectionRun {
  readonly reconcile: boolean;
  /** Keys the application deleted from both replicas during the warm. */
  readonly deleted: number;
  /** The deletes began while the warm ran (when half its items were in), as the scenario wants. */
  readonly duringWarm: boolean;
  /** Of those, held by the target once the warm was over. */
  readonly resurrected: number;
}

/** A replica's nodes and the ring its clients route keys by. */
export interface BenchReplica {
  readonly nodes: readonly MemcachedProcess[];
  readonly ring: TargetNodeRing;
}

const BATCH = 1_000;

/**
 * Runs the scenario twice, with the reconcile and without (`warm` runs the warm with the
 * extra options, into the target flushed before each run), and puts the deleted keys back
 * into the source after each.
 */
export async function resurrection(
  items: readonly WritableItem[],
  replicas: { readonly source: BenchReplica; readonly target: BenchReplica },
  warm: (extra: readonly string[]) => Promise<unknown>,
  restore: (items: readonly WritableItem[]) => Promise<void>,
): Promise<ResurrectionRun[]> {
  const runs: ResurrectionRun[] = [];
  for (const [reconcile, offset] of [[false, 3], [true, 11]] as const) {
    const victims = items.filter((_, i) => i % 20 === offset);
    const keys = victims.map((item) => item.key);
    const halfway = waitForStores(replicas.target.nodes, items.length / 2);
    let duringWarm = false;
    const deleting = halfway.then(() => {
      duringWarm = true;
      return Promise.all([deleteFrom(replicas.source, keys), deleteFrom(replicas.target, keys)]);
    });
    await warm(reconcile ? [] : ['--reconcile-deletes', 'off']);
    halfway.cancel();
    if (!(await deleting.then(() => true, () => false))) {
      // The warm was over before half its items were in: the deletes come after it.
      await Promise.all([deleteFrom(replicas.source, keys), deleteFrom(replicas.target, keys)]);
    }
    runs.push({ reconcile, deleted: keys.length, duringWarm, resurrected: await heldBy(replicas.target, keys) });
    await restore(victims);
  }
  return runs;
}

/**
 * Resolves once the nodes stored `items` more (`total_items`, polled every 50 ms: a flushed
 * node still counts its old items in `curr_items`); `cancel` rejects it.
 */
function waitForStores(nodes: readonly MemcachedProcess[], items: number): Promise<void> & { cancel(): void } {
  let cancelled = false;
  const stored = async (): Promise<number> => (await Promise.all(nodes.map(async (n) => Number((await statsAt(n)).get('total_items'))))).reduce((a, b) => a + b, 0);
  const waiting = (async () => {
    const before = await stored();
    while (!cancelled) {
      if ((await stored()) - before >= items) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error('cancelled');
  })();
  return Object.assign(waiting, { cancel: () => void (cancelled = true) });
}

/** `md <key>` for each key at the node its ring names, pipelined in batches. */
async function deleteFrom(replica: BenchReplica, keys: readonly Buffer[]): Promise<void> {
  await onNodes(replica, keys, async (conn, part) => {
    await conn.send(Buffer.from(part.map((key) => `md ${key.toString('latin1')}\r\n`).join('')), new MetaDeleteReplies(part.length, conn.label));
  });
}

/** How many of the keys the replica holds (`mg <key> u`). */
async function heldBy(replica: BenchReplica, keys: readonly Buffer[]): Promise<number> {
  let held = 0;
  await onNodes(replica, keys, async (conn, part) => {
    held += part.length - (await conn.send(buildMetaExists(part), new MetaExistsReplies(part.length, conn.label))).length;
  });
  return held;
}

async function onNodes(replica: BenchReplica, keys: readonly Buffer[], each: (conn: MemcachedConnection, part: readonly Buffer[]) => Promise<void>): Promise<void> {
  const byNode = new Map<string, Buffer[]>();
  for (const key of keys) {
    const address = replica.ring.nodeFor(key).address;
    const mine = byNode.get(address);
    if (mine) mine.push(key);
    else byNode.set(address, [key]);
  }
  await Promise.all(
    replica.nodes.map(async (node) => {
      const mine = byNode.get(node.address) ?? [];
      const conn = await MemcachedConnection.connect(node);
      try {
        for (let i = 0; i < mine.length; i += BATCH) await each(conn, mine.slice(i, i + BATCH));
      } finally {
        conn.close();
      }
    }),
  );
}
