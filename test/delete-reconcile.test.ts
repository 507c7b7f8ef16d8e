// Issue 14: a key the application deletes during a warm stays deleted in the target. The
// application here is real traffic on the real nodes, sent at the moments that matter: before
// the key's dump, between its dump and its write, and between its write and the warm's check.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { summaryText } from '../controller/report.js';
import { targetRingOf } from '../controller/warm-plan.js';
import { warmReplica } from '../controller/warm-replica.js';
import type { WarmSummary } from '../controller/warm-summary.js';
import { MemjsNodeWriter } from '../populator/memjs-node-writer.js';
import { MetaNodeWriter } from '../populator/meta-node-writer.js';
import type { NodeWriter } from '../populator/node-writer.js';
import { type TargetNodeRing, ringOfTarget, writeToRing } from '../populator/write-to-ring.js';
import { DeleteReconciler } from '../populator/delete-reconciler.js';
import { type WriteCounters, WriteTally } from '../shared/counters.js';
import { systemClock } from '../shared/clock.js';
import type { NodeSpec } from '../shared/topology.js';
import { connectDirect } from '../shared/memcached/connect.js';
import type { AddOutcome, PackedSelection, WritableItem, WrittenItem } from '../shared/memcached/meta-add.js';
import { sampleItems } from '../shared/sample-items.js';
import { type Cluster, itemCount, load, nowSeconds, readFrom, withCluster } from './support/cluster.js';
import { Application } from './support/application.js';
import { assertExactCopy } from './support/read-back.js';
import { cuttingProxy } from './support/cutting-proxy.js';

/** What the application does to a key, chosen by the key's hash so that every chunk has some of each. */
type Fate = 'deletedBetweenDumpAndWrite' | 'deletedAndSetAgain' | 'deletedAfterWrite' | 'overwrittenInTargetAfterWrite' | 'untouched';

function fateOf(key: Buffer): Fate {
  const h = createHash('md5').update(key).digest()[0] as number;
  if (h < 20) return 'deletedBetweenDumpAndWrite';
  if (h < 30) return 'deletedAndSetAgain';
  if (h < 50) return 'deletedAfterWrite';
  if (h < 60) return 'overwrittenInTargetAfterWrite';
  return 'untouched';
}

const APP_VALUE = (key: Buffer): Buffer => Buffer.from(`application's own value for ${key.toString()}`);

/**
 * The warm's writer, unchanged, with the application acting around each batch: before it is
 * written (its keys dumped, not yet in the target), and after its adds are answered but before
 * the warm hears of them (and so before its reconcile looks anything up).
 */
function writerWithApplication(inner: MetaNodeWriter, app: Application): NodeWriter {
  return {
    probe: (address, signal) => inner.probe(address, signal),
    close: () => inner.close(),
    deleteUnchanged: (address, items, signal) => inner.deleteUnchanged(address, items, signal),
    addItems: (address, items, onOutcome, signal, withCas) => inner.addItems(address, items, onOutcome, signal, withCas),
    async addPacked(address, selection: PackedSelection, onOutcome, signal, withCas) {
      const keys = selection.indices.map((i) => {
        const at = selection.packed.keyStart(i);
        return Buffer.from(selection.packed.bytes.subarray(at, at + selection.packed.keyBytes(i)));
      });
      for (const key of keys) {
        const fate = fateOf(key);
        if (fate === 'deletedBetweenDumpAndWrite' || fate === 'deletedAndSetAgain') {
          await app.delete('a', key);
          await app.delete('b', key);
        }
        if (fate === 'deletedAndSetAgain') {
          await app.set('a', key, APP_VALUE(key));
          await app.set('b', key, APP_VALUE(key));
        }
      }
      const held: [AddOutcome, number][] = [];
      await inner.addPacked(address, selection, (outcome, bytes) => held.push([outcome, bytes]), signal, withCas);
      for (const key of keys) {
        const fate = fateOf(key);
        if (fate === 'deletedAfterWrite') {
          await app.delete('a', key);
          await app.delete('b', key);
        } else if (fate === 'overwrittenInTargetAfterWrite') {
          await app.set('b', key, APP_VALUE(key));
          await app.delete('a', key);
        }
      }
      for (const [outcome, bytes] of held) onOutcome(outcome, bytes);
    },
  };
}

async function warmWithApplication(cluster: Cluster, items: readonly WritableItem[], reconcileDeletes: boolean, only?: NodeSpec): Promise<WarmSummary> {
  const { topology } = cluster;
  await load(topology, 'a', items);
  const app = new Application(topology);
  // Before any dump: these keys are simply not there to copy.
  for (const item of items.slice(0, 200)) {
    await app.delete('a', item.key);
    await app.delete('b', item.key);
  }
  const workDir = await mkdtemp(path.join(os.tmpdir(), 'cachewarm-reconcile-'));
  const writer = writerWithApplication(new MetaNodeWriter({ connect: connectDirect, clock: systemClock }), app);
  try {
    return await warmReplica({ topology, source: 'a', target: 'b', chunkSizeBytes: 64 << 10, clock: systemClock, workDir, writer, reconcileDeletes, protectSource: 'off', only });
  } finally {
    await app.close();
    await rm(workDir, { recursive: true, force: true });
  }
}

const total = (summary: WarmSummary, field: 'stored' | 'reconcileChecked' | 'reconcileRemoved' | 'reconcileKept' | 'reconcileGone' | 'reconcileUnchecked'): number =>
  summary.targetNodes.reduce((sum, n) => sum + n[field], 0);

/** Keys of `items` the target replica holds, by the node its ring names. */
async function heldInTarget(cluster: Cluster, keys: readonly Buffer[]): Promise<number> {
  const ring = ringOfTarget(targetRingOf(cluster.topology, 'b'));
  let held = 0;
  for (const server of cluster.servers['b'] ?? []) {
    const mine = keys.filter((key) => ring.nodeFor(key).address === server.address);
    held += (await readFrom(server, mine)).filter(Boolean).length;
  }
  return held;
}

/**
 * A warm of a into b, c a full replica a little less full than a (so a is the source and c
 * the one to fall back on). Before anything is written, the given nodes restart empty: every
 * key the warm writes is looked up after that. Meanwhile the application deletes keys from
 * every replica, between their dump and their write.
 */
async function warmAcrossRestarts(
  cluster: Cluster,
  restarts: readonly [replica: string, index: number][],
): Promise<{ summary: WarmSummary; items: WritableItem[]; inC: WritableItem[]; restarted: Promise<unknown> | undefined }> {
  const items = sampleItems({ count: 20_000, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'reconcile-fallback' });
  const inC = items.slice(0, 19_900);
  await Promise.all([load(cluster.topology, 'a', items), load(cluster.topology, 'c', inC)]);
  const app = new Application(cluster.topology);
  const inner = new MetaNodeWriter({ connect: connectDirect, clock: systemClock });
  let restarted: Promise<unknown> | undefined;
  const writer: NodeWriter = {
    probe: (address, signal) => inner.probe(address, signal),
    close: () => inner.close(),
    deleteUnchanged: (address, batch, signal) => inner.deleteUnchanged(address, batch, signal),
    casOf: (address, keys, signal) => inner.casOf(address, keys, signal),
    addItems: (address, batch, onOutcome, signal, withCas) => inner.addItems(address, batch, onOutcome, signal, withCas),
    async addPacked(address, selection, onOutcome, signal, withCas) {
      await (restarted ??= Promise.all(restarts.map(([replica, index]) => cluster.restartEmpty(replica, index))));
      for (const i of selection.indices) {
        const at = selection.packed.keyStart(i);
        const key = Buffer.from(selection.packed.bytes.subarray(at, at + selection.packed.keyBytes(i)));
        if (fateOf(key) !== 'deletedBetweenDumpAndWrite') continue;
        await app.delete('b', key);
        await app.delete('c', key);
      }
      await inner.addPacked(address, selection, onOutcome, signal, withCas);
    },
  };
  const workDir = await mkdtemp(path.join(os.tmpdir(), 'cachewarm-reconcile-'));
  try {
    const summary = await warmReplica({ topology: cluster.topology, target: 'b', chunkSizeBytes: 16 << 10, clock: systemClock, workDir, writer, protectSource: 'off', maxOpsPerNode: 20_000 });
    return { summary, items, inC, restarted };
  } finally {
    await app.close();
    await rm(workDir, { recursive: true, force: true });
  }
}

/** Items dumped from a's only node, a tenth of which the application then deleted there. */
async function dumpedThenDeleted(cluster: Cluster, seed: string): Promise<{ items: WritableItem[]; deleted: WritableItem[]; kept: WritableItem[] }> {
  const items = sampleItems({ count: 3_000, valueBytes: 200, nowSeconds: nowSeconds(), seed });
  await load(cluster.topology, 'a', items);
  const deleted = items.filter((_, i) => i % 10 === 0);
  const app = new Application(cluster.topology);
  try {
    for (const item of deleted) await app.delete('a', item.key);
  } finally {
    await app.close();
  }
  return { items, deleted, kept: items.filter((_, i) => i % 10 !== 0) };
}

/** A one-node ring at `address` (b's node, or a proxy in front of it). */
const ringOf = (address: string): TargetNodeRing => ringOfTarget({ replica: 'b', hashing: 'spymemcached', nodes: [{ address, ringName: address }] });

/** Writes `items` to `address`, each batch reconciled with a's only node; what it did there. */
async function writeReconciled(cluster: Cluster, writer: NodeWriter, items: readonly WritableItem[], address: string, mayHaveWritten: boolean): Promise<WriteCounters> {
  const source = cluster.servers['a']![0]!.address;
  const reconciler = new DeleteReconciler({ connect: connectDirect, clock: systemClock });
  const tally = new WriteTally();
  try {
    await writeToRing(items, ringOf(address), {
      writer,
      clock: systemClock,
      tally,
      mayHaveWritten,
      reconcile: (node, deleteUnchanged, written) => reconciler.reconcile(source, node, deleteUnchanged, written, tally.for(node)),
    });
  } finally {
    await reconciler.close();
  }
  return tally.total();
}

describe('deleted keys stay deleted: the warm takes back what the source deleted meanwhile', () => {
  test('deleted before the dump, between dump and write, and after the write: none is in the target; every other item is exact', async () => {
    await withCluster({ a: 2, b: 3 }, async (cluster) => {
      const items = sampleItems({ count: 20_000, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'reconcile' });
      const summary = await warmWithApplication(cluster, items, true);
      assert.equal(summary.complete, true, JSON.stringify(summary.problems ?? summary));

      const dumped = items.slice(200);
      const byFate = (fate: Fate): WritableItem[] => dumped.filter((item) => fateOf(item.key) === fate);
      const deleted = [...items.slice(0, 200), ...byFate('deletedBetweenDumpAndWrite'), ...byFate('deletedAfterWrite')];
      assert.equal(await heldInTarget(cluster, deleted.map((i) => i.key)), 0, 'no deleted key is in the target');

      const appValues = [...byFate('deletedAndSetAgain'), ...byFate('overwrittenInTargetAfterWrite')].map((item) => ({ ...item, value: APP_VALUE(item.key), flags: 0, exptime: 0 }));
      const expected = [...byFate('untouched'), ...appValues];
      await assertExactCopy({ topology: cluster.topology, replica: 'b' }, expected, {
        what: 'the target after the warm',
        nothingElseOn: (cluster.servers['b'] ?? []).map((s) => s.address),
      });

      // Every key the warm stored was looked up once; what it stored after the application's
      // delete was removed, what the application deleted after it was found gone, what the
      // application overwrote was kept.
      assert.equal(total(summary, 'reconcileChecked'), total(summary, 'stored'));
      assert.equal(total(summary, 'reconcileRemoved'), byFate('deletedBetweenDumpAndWrite').length);
      assert.equal(total(summary, 'reconcileGone'), byFate('deletedAfterWrite').length);
      assert.equal(total(summary, 'reconcileKept'), byFate('overwrittenInTargetAfterWrite').length);
      assert.equal(total(summary, 'reconcileUnchecked'), 0);
      const n = (count: number): string => count.toLocaleString('en-US');
      assert.ok(
        summaryText(summary).includes(
          `deletes reconciled: ${n(total(summary, 'stored'))} items written looked up at the source; ${n(byFate('deletedBetweenDumpAndWrite').length)} removed (deleted there meanwhile), ` +
            `${n(byFate('overwrittenInTargetAfterWrite').length)} kept (changed in the target since written), ${n(byFate('deletedAfterWrite').length)} already gone`,
        ),
        summaryText(summary),
      );
    });
  });

  test('an instance warm takes back the same deletes, on the one node it fills', async () => {
    await withCluster({ a: 2, b: 3 }, async (cluster) => {
      const items = sampleItems({ count: 20_000, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'reconcile-instance' });
      const node = cluster.topology.replicas.get('b')!.nodes[1]!;
      const ring = ringOfTarget(targetRingOf(cluster.topology, 'b'));
      const owned = items.slice(200).filter((item) => ring.nodeFor(item.key).address === node.address);
      const summary = await warmWithApplication(cluster, items, true, node);
      assert.equal(summary.complete, true, JSON.stringify(summary.problems ?? summary));
      const byFate = (fate: Fate): WritableItem[] => owned.filter((item) => fateOf(item.key) === fate);
      const appValues = [...byFate('deletedAndSetAgain'), ...byFate('overwrittenInTargetAfterWrite')].map((item) => ({ ...item, value: APP_VALUE(item.key), flags: 0, exptime: 0 }));
      await assertExactCopy({ topology: cluster.topology, replica: 'b' }, [...byFate('untouched'), ...appValues], {
        what: `${node.id} after its instance warm`,
        nothingElseOn: [node.address],
      });
      assert.equal(total(summary, 'reconcileRemoved'), byFate('deletedBetweenDumpAndWrite').length);
      assert.equal(total(summary, 'reconcileKept'), byFate('overwrittenInTargetAfterWrite').length);
    });
  });

  test('(control) with --reconcile-deletes off the same application leaves the keys deleted between dump and write alive in the target', async () => {
    await withCluster({ a: 2, b: 3 }, async (cluster) => {
      const items = sampleItems({ count: 20_000, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'reconcile' });
      const summary = await warmWithApplication(cluster, items, false);
      assert.equal(total(summary, 'reconcileChecked'), 0);
      const resurrected = items.slice(200).filter((item) => fateOf(item.key) === 'deletedBetweenDumpAndWrite');
      assert.equal(await heldInTarget(cluster, resurrected.map((i) => i.key)), resurrected.length, 'each is back in the target, though the source has none');
    });
  });

  test('a source node that restarts before its items are looked up: another full replica is asked in its place, and its share comes from there', async () => {
    await withCluster({ a: 1, b: 2, c: 2 }, async (cluster) => {
      const { summary, items, inC, restarted } = await warmAcrossRestarts(cluster, [['a', 0]]);
      assert.ok(restarted, 'a restarted mid-warm');
      assert.equal(summary.source, 'a');
      assert.equal(summary.complete, true, JSON.stringify(summary.problems ?? summary));
      assert.ok(summary.repairs?.some((r) => /restarted: its share taken from c$/.test(r.reason)), JSON.stringify(summary.repairs));
      assert.equal(total(summary, 'reconcileUnchecked'), 0, 'every item written was looked up, at a or at c');
      assert.equal(total(summary, 'reconcileChecked'), total(summary, 'stored'));
      assert.ok(total(summary, 'reconcileRemoved') > 0, 'what a gave before its restart and the application deleted since was taken back');
      const deleted = items.filter((item) => fateOf(item.key) === 'deletedBetweenDumpAndWrite');
      assert.equal(await heldInTarget(cluster, deleted.map((i) => i.key)), 0, 'no deleted key is in the target');
      const gone = new Set(deleted.map((i) => i.key.toString()));
      await assertExactCopy({ topology: cluster.topology, replica: 'b' }, inC.filter((i) => !gone.has(i.key.toString())), {
        what: 'the target: what c holds',
        nothingElseOn: (cluster.servers['b'] ?? []).map((s) => s.address),
      });
    });
  });

  test('a node of that replica restarted too: nothing is taken back on its word; the items are reported unchecked', async () => {
    await withCluster({ a: 1, b: 2, c: 2 }, async (cluster) => {
      const { summary, restarted } = await warmAcrossRestarts(cluster, [['a', 0], ['c', 0]]);
      assert.ok(restarted, 'a and c restarted mid-warm');
      assert.equal(summary.complete, false);
      assert.ok(total(summary, 'reconcileUnchecked') > 0);
      assert.equal(total(summary, 'reconcileRemoved'), 0, 'no key was taken back because an empty process lacked it');
      assert.match((summary.problems ?? []).join('\n'), /items written were never checked against their source for deletes/);
    });
  });

  test('a chunk delivered again after its first holder stored it and died before its reconcile: what the adds find present is looked up too', async () => {
    await withCluster({ a: 1, b: 1 }, async (cluster) => {
      const { items, deleted, kept } = await dumpedThenDeleted(cluster, 'redelivered');
      const target = cluster.servers['b']![0]!;
      const writer = new MetaNodeWriter({ connect: connectDirect, clock: systemClock });
      try {
        // The first holder: stored everything, then died before looking anything up.
        await writeToRing(items, ringOf(target.address), { writer, clock: systemClock, tally: new WriteTally() });
        const asFirst = await writeReconciled(cluster, writer, items, target.address, false);
        assert.equal(asFirst.existed, items.length);
        assert.equal(asFirst.reconcileChecked, 0, 'a first delivery takes what it finds present for the application\'s');
        assert.equal((await readFrom(target, deleted.map((i) => i.key))).filter(Boolean).length, deleted.length);

        const again = await writeReconciled(cluster, writer, items, target.address, true);
        assert.equal(again.reconcileChecked, items.length);
        assert.equal(again.reconcileRemoved, deleted.length);
      } finally {
        await writer.close();
      }
      assert.equal((await readFrom(target, deleted.map((i) => i.key))).filter(Boolean).length, 0, 'no deleted key is in the target');
      await assertExactCopy({ topology: cluster.topology, replica: 'b' }, kept, { nothingElseOn: [target.address] });
    });
  });

  for (const [name, make, replyBytes] of [
    ['meta', () => new MetaNodeWriter({ connect: connectDirect, clock: systemClock }), 10],
    ['memjs', () => new MemjsNodeWriter({ clock: systemClock, timeoutSeconds: 1 }), 24],
  ] as const) {
    test(`adds the ${name} writer sends again after their connection was cut: what the cut attempt stored is looked up too`, async () => {
      await withCluster({ a: 1, b: 1 }, async (cluster) => {
        const { items, deleted, kept } = await dumpedThenDeleted(cluster, `cut-${name}`);
        const target = cluster.servers['b']![0]!;
        // Replies to the first 100 adds come back, then the connection is cut.
        const proxy = await cuttingProxy(target.port, 100 * replyBytes);
        const writer = make();
        let counters: WriteCounters;
        try {
          counters = await writeReconciled(cluster, writer, items, `127.0.0.1:${proxy.port}`, false);
        } finally {
          await writer.close();
          await proxy.close();
        }
        assert.ok(proxy.connections() >= 2, `the proxy saw ${proxy.connections()} connection(s)`);
        assert.ok(counters.existed > 0, 'the adds sent again found what the cut attempt stored');
        assert.equal(counters.reconcileChecked, items.length, 'every item is looked up once, stored now or found present');
        assert.equal(counters.reconcileUnchecked, 0);
        assert.equal((await readFrom(target, deleted.map((i) => i.key))).filter(Boolean).length, 0, 'no deleted key is in the target');
        await assertExactCopy({ topology: cluster.topology, replica: 'b' }, kept, { nothingElseOn: [target.address] });
      });
    });
  }

  for (const [name, seed, make] of [
    ['meta commands (ms … c, md … C<cas>)', 'cas-meta', () => new MetaNodeWriter({ connect: connectDirect, clock: systemClock })],
    ['memjs (binary ADD, DELETE with a CAS)', 'cas-memjs', () => new MemjsNodeWriter({ clock: systemClock })],
  ] as const) {
    test(`the ${name} writer hands back the CAS of what it stored, and deletes an item only while it is unchanged`, async () => {
      await withCluster({ b: 1 }, async (cluster) => {
        const server = cluster.servers['b']![0]!;
        const items = sampleItems({ count: 300, valueBytes: 50, nowSeconds: nowSeconds(), seed });
        const writer: NodeWriter = make();
        const app = new Application(cluster.topology);
        try {
          const written: WrittenItem[] = [];
          await writer.addItems(server.address, items, (outcome) => written.push(...(outcome.written ?? [])), undefined, true);
          assert.deepEqual(written.map((w) => w.key.toString()).sort(), items.map((i) => i.key.toString()).sort(), 'a CAS for every item stored');
          assert.equal(new Set(written.map((w) => w.cas)).size, items.length, 'each its own');

          const overwritten = items.slice(0, 30);
          const deleted = items.slice(30, 60);
          for (const item of overwritten) await app.set('b', item.key, APP_VALUE(item.key));
          for (const item of deleted) await app.delete('b', item.key);
          const outcome = await writer.deleteUnchanged!(server.address, written);
          assert.deepEqual(outcome, { removed: items.length - 60, kept: 30, alreadyGone: 30 });
          assert.equal(await itemCount(server), 30, 'only what the application overwrote is left');
          const left = await readFrom(server, overwritten.map((i) => i.key));
          assert.deepEqual(left.map((r) => r?.value.toString()), overwritten.map((i) => APP_VALUE(i.key).toString()));
        } finally {
          await app.close();
          await writer.close();
        }
      });
    });
  }
});
