/** What one source node's dump did; read live by progress reports, summed in the summary. */
export interface DumpCounters {
  /** Keys the crawler listed (a live walk may list a key twice). */
  listed: number;
  /** Of those, keys only a catch-up pass found (items that moved between LRUs during the first). */
  caughtUp: number;
  /** Already expired when listed or read: never copied. */
  expired: number;
  /** Left out by the key filter (an instance warm copies one node's keys only). */
  filtered: number;
  /** Deleted or evicted between the crawl and the read. */
  gone: number;
  /** Keys the text protocol cannot name (base64 form over 250 characters): not copied. */
  unsupported: number;
  /** Items read with their value and written to data chunks. */
  read: number;
  bytesRead: number;
  dataChunks: number;
}

/** What the populators did to one target node. */
export interface WriteCounters {
  stored: number;
  /** The target already had the key, newer than the warm's copy: kept, never replaced. */
  existed: number;
  /** Expired while waiting in a chunk: skipped rather than written with a wrong TTL. */
  expired: number;
  /** Refused by the target, for any of the reasons below (their sum). */
  failed: number;
  /** Refused as larger than the node's item size limit (`-I`, `item_size_max`). */
  tooLarge: number;
  /** Refused for want of memory (`-M`, or no slab memory left for the item's size). */
  outOfMemory: number;
  /** Any other SERVER_ERROR (or binary status) the node answered with. */
  serverError: number;
  /**
   * Not written: the node is another process than the one the job was planned for (it
   * restarted), and what the job wrote before is gone with the old one. The job refills it.
   */
  replaced: number;
  bytesWritten: number;
  /**
   * The delete reconcile (DeleteReconciler): items the warm stored whose key was then looked
   * up at the source node they came from.
   */
  reconcileChecked: number;
  /** Of those, gone from the source (deleted there since the dump) and removed from the target, unchanged since the add. */
  reconcileRemoved: number;
  /** Gone from the source, but changed in the target since the add (the application wrote it): kept. */
  reconcileKept: number;
  /** Gone from the source, and from the target already (the application's own delete, an eviction). */
  reconcileGone: number;
  /** Stored, but never looked up at the source (it stayed unreachable, or is another process now): reported. */
  reconcileUnchecked: number;
}

/** The delete reconcile's counters by outcome, as metrics and reports name them. */
export function reconcileOutcomes(c: WriteCounters): Record<'checked' | 'removed' | 'kept' | 'gone' | 'unchecked', number> {
  return { checked: c.reconcileChecked, removed: c.reconcileRemoved, kept: c.reconcileKept, gone: c.reconcileGone, unchecked: c.reconcileUnchecked };
}

export function newDumpCounters(): DumpCounters {
  return { listed: 0, caughtUp: 0, expired: 0, filtered: 0, gone: 0, unsupported: 0, read: 0, bytesRead: 0, dataChunks: 0 };
}

export function newWriteCounters(): WriteCounters {
  return {
    stored: 0,
    existed: 0,
    expired: 0,
    failed: 0,
    tooLarge: 0,
    outOfMemory: 0,
    serverError: 0,
    replaced: 0,
    bytesWritten: 0,
    reconcileChecked: 0,
    reconcileRemoved: 0,
    reconcileKept: 0,
    reconcileGone: 0,
    reconcileUnchecked: 0,
  };
}

/** Just the write counters of a report that carries more (a target node's). */
export function writeCountersOf(report: WriteCounters): WriteCounters {
  const counters = newWriteCounters();
  for (const name of Object.keys(counters) as (keyof WriteCounters)[]) counters[name] = report[name];
  return counters;
}

/** Write counters per target node address, created on first use. */
export class WriteTally {
  readonly byNode = new Map<string, WriteCounters>();

  for(address: string): WriteCounters {
    let counters = this.byNode.get(address);
    if (!counters) {
      counters = newWriteCounters();
      this.byNode.set(address, counters);
    }
    return counters;
  }

  total(): WriteCounters {
    const sum = newWriteCounters();
    for (const c of this.byNode.values()) addInto(sum, c);
    return sum;
  }
}

export function addInto<T extends object>(sum: T, part: T): T {
  const target = sum as Record<string, number>;
  for (const [name, value] of Object.entries(part)) {
    if (typeof value === 'number') target[name] = (target[name] ?? 0) + value;
  }
  return sum;
}
