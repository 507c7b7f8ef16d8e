import type { TargetRing } from '../shared/chunk-message.js';
import type { Clock } from '../shared/clock.js';
import { type WriteCounters, WriteTally } from '../shared/counters.js';
import type { Connect } from '../shared/memcached/connect.js';
import { MetaNodeWriter } from './meta-node-writer.js';
import { isCachewarmError } from '../shared/errors.js';
import { hasExpired } from '../shared/expiry.js';
import { KetamaRing } from '../shared/ketama.js';
import type { AddOutcome, PackedItems, Refusal, WritableItem, WrittenItem } from '../shared/memcached/meta-add.js';
import type { NodeWriter } from './node-writer.js';

export type TargetNodeRing = KetamaRing<TargetRing['nodes'][number]>;

export function ringOfTarget(target: TargetRing): TargetNodeRing {
  return new KetamaRing(target.nodes, (node) => node.ringName);
}

export interface WriteToRingOptions {
  readonly writer: NodeWriter;
  readonly clock: Clock;
  readonly tally: WriteTally;
  /** Addresses that may be written; items that hash elsewhere are left out. */
  readonly writeOnly?: readonly string[] | undefined;
  /** Told of every item a node refused (counted in the tally too), e.g. to retry it later. */
  readonly onRefused?: ((address: string, refusals: readonly Refusal[]) => void) | undefined;
  /**
   * Takes back what a source deleted meanwhile (DeleteReconciler): called with the items each
   * batch of adds stored, and their CAS, as soon as it is answered; awaited before this
   * returns. A writer that cannot delete conditionally stores without it, and counts what it
   * stored as unchecked.
   */
  readonly reconcile?: ((address: string, deleteUnchanged: NonNullable<NodeWriter['deleteUnchanged']>, written: readonly WrittenItem[]) => Promise<void>) | undefined;
  /**
   * These items may have been written before (a chunk delivered again after its holder
   * failed mid-write): what the adds find present may be the warm's own, so the reconcile
   * looks its CAS up and checks it too. (A batch a writer sent again says so itself.)
   */
  readonly mayHaveWritten?: boolean | undefined;
  readonly signal?: AbortSignal | undefined;
}

/**
 * Routes items over a ring and adds each to the node its clients will look in, all nodes
 * at once. Items already expired are counted and skipped: writing them would either
 * resurrect nothing or, with a relative TTL, resurrect them. Items packed in a chunk are
 * routed and written from where they lie (see PackedItems).
 */
export async function writeToRing(
  items: readonly WritableItem[] | PackedItems,
  ring: TargetNodeRing,
  options: WriteToRingOptions,
): Promise<void> {
  const { tally, writeOnly, writer, reconcile } = options;
  const deleteUnchanged = reconcile && writer.deleteUnchanged?.bind(writer);
  const allowed = writeOnly ? new Set(writeOnly) : undefined;
  const perNode: number[][] = ring.nodes.map(() => []);
  const now = Math.floor(options.clock.now() / 1000);
  const packed = Array.isArray(items) ? undefined : (items as PackedItems);
  const list = packed ? undefined : (items as readonly WritableItem[]);
  for (let i = 0; i < items.length; i++) {
    let index: number;
    let exptime: number;
    if (packed) {
      const keyAt = packed.keyStart(i);
      index = ring.indexForBytes(packed.bytes, keyAt, keyAt + packed.keyBytes(i));
      exptime = packed.exptime(i);
    } else {
      const item = list?.[i] as WritableItem;
      index = ring.indexFor(item.key);
      exptime = item.exptime;
    }
    const address = (ring.nodes[index] as TargetRing['nodes'][number]).address;
    // An instance warm's dumper already filtered by this ring; this keeps a stray message
    // from writing to a node the job must not touch.
    if (allowed && !allowed.has(address)) continue;
    if (hasExpired(exptime, now)) tally.for(address).expired++;
    else (perNode[index] as number[]).push(i);
  }
  const reconcileWritten = async (
    address: string,
    deleteUnchanged: NonNullable<NodeWriter['deleteUnchanged']>,
    written: readonly WrittenItem[],
    maybeOurs: readonly Buffer[] | undefined,
  ): Promise<void> => {
    let items = written;
    if (maybeOurs?.length && writer.casOf) {
      const cas = await writer.casOf(address, maybeOurs, options.signal);
      items = [...written, ...maybeOurs.flatMap((key, i) => (cas[i] === undefined ? [] : [{ key, cas: cas[i] }]))];
    }
    await (reconcile as NonNullable<typeof reconcile>)(address, deleteUnchanged, items);
  };
  // allSettled: the caller may reuse the items' memory as soon as this returns, so no node's
  // writes may still be running when another's failure is reported.
  const results = await Promise.allSettled(
    perNode.map(async (indices, index) => {
      if (indices.length === 0) return;
      const address = (ring.nodes[index] as TargetRing['nodes'][number]).address;
      const counters = tally.for(address);
      let handled = 0;
      const reconciling: Promise<void>[] = [];
      const count = (outcome: AddOutcome, bytes: number): void => {
        handled += outcome.stored + outcome.existed + outcome.refused.length;
        counters.stored += outcome.stored;
        if (deleteUnchanged && outcome.written) {
          const maybeOurs = outcome.resent || options.mayHaveWritten ? outcome.existedKeys : undefined;
          const done = reconcileWritten(address, deleteUnchanged, outcome.written, maybeOurs);
          // Awaited below; until then a failure must not count as unhandled.
          done.catch(() => undefined);
          reconciling.push(done);
        } else if (reconcile) {
          counters.reconcileUnchecked += outcome.stored;
        }
        counters.existed += outcome.existed;
        counters.bytesWritten += bytes;
        if (outcome.refused.length === 0) return;
        for (const refusal of outcome.refused) counters[refusal.reason]++;
        counters.failed += outcome.refused.length;
        options.onRefused?.(address, outcome.refused);
      };
      const withCas = deleteUnchanged !== undefined;
      let failure: { readonly error: unknown } | undefined;
      try {
        if (packed && writer.addPacked) await writer.addPacked(address, { packed, indices }, count, options.signal, withCas);
        else if (packed) await writer.addItems(address, indices.map((i) => packed.item(i)), count, options.signal, withCas);
        else await writer.addItems(address, indices.map((i) => list?.[i] as WritableItem), count, options.signal, withCas);
      } catch (error) {
        failure = { error };
      }
      // The reconcile reads its keys from the items: it too must be over before this returns.
      for (const result of await Promise.allSettled(reconciling)) if (result.status === 'rejected') failure ??= { error: result.reason };
      if (!failure) return;
      // Another process than the job's: its share is the job's to refill, not this chunk's to write.
      if (!isCachewarmError(failure.error, 'TARGET_REPLACED')) throw failure.error;
      counters.replaced += indices.length - handled;
    }),
  );
  for (const result of results) if (result.status === 'rejected') throw result.reason;
}

/** Writes items to a whole target over connections of its own, e.g. to load a demo replica. */
export async function writeAll(
  items: readonly WritableItem[],
  target: TargetRing,
  options: { connect: Connect; clock: Clock; signal?: AbortSignal | undefined },
): Promise<WriteCounters> {
  const writer = new MetaNodeWriter({ connect: options.connect, clock: options.clock, connectionsPerNode: 2 });
  const tally = new WriteTally();
  try {
    await writeToRing(items, ringOfTarget(target), { writer, clock: options.clock, tally, signal: options.signal });
  } finally {
    await writer.close();
  }
  return tally.total();
}
