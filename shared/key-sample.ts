import type { KeyBatch } from './memcached/crawler.js';

/** A key as the crawl listed it, and the source node it was listed on. */
export interface SampledKey {
  readonly key: Buffer;
  /** Absolute expiry the crawler reported, 0 for none. */
  readonly exptime: number;
  readonly sizeBytes: number;
  /** The source node's id. */
  readonly source: string;
}

/**
 * A uniform random sample of the keys a dump lists, across every source node (reservoir
 * sampling: memory grows with the sample, not with the data). What the end-of-warm read-back
 * checks, so that it need not list the source's keys a second time.
 */
export class KeySample {
  private readonly kept: SampledKey[] = [];
  private seen = 0;

  constructor(
    readonly capacity: number,
    private readonly random: () => number = Math.random,
  ) {}

  offer(batch: KeyBatch, source: string): void {
    const { keys, exptimes, sizes } = batch;
    for (let i = 0; i < keys.length; i++) {
      this.seen++;
      let slot = this.kept.length;
      if (slot >= this.capacity) {
        slot = Math.floor(this.random() * this.seen);
        if (slot >= this.capacity) continue;
      }
      // A copy: the batch's keys may share memory that is reused once the batch is written.
      this.kept[slot] = { key: Buffer.from(keys[i] as Buffer), exptime: exptimes[i] as number, sizeBytes: sizes[i] as number, source };
    }
  }

  /** Keys offered so far. */
  get listed(): number {
    return this.seen;
  }

  get keys(): readonly SampledKey[] {
    return this.kept;
  }
}

/**
 * What a dump's crawls listed, sampled for the read-back, and which source nodes' crawls ran
 * to their end: the sample stands for the whole source only when every one did in this run
 * (a resumed dump whose crawl had finished lists nothing again).
 */
export class Listing {
  readonly sample: KeySample;
  private readonly crawled = new Set<string>();

  constructor(
    capacity: number,
    private readonly nodes: readonly string[],
  ) {
    this.sample = new KeySample(capacity);
  }

  /** The hooks a node's dump calls (see DumpNodeOptions.onListed and onCrawled). */
  of(node: string): { onListed: (batch: KeyBatch) => void; onCrawled: () => void } {
    return { onListed: (batch) => this.sample.offer(batch, node), onCrawled: () => void this.crawled.add(node) };
  }

  /** The sample, if every node's crawl listed its node to the end. */
  get whole(): readonly SampledKey[] | undefined {
    return this.nodes.every((n) => this.crawled.has(n)) ? this.sample.keys : undefined;
  }
}

/** One source node's sample and how many keys it was drawn from. */
export interface NodeSample {
  readonly listed: number;
  readonly keys: readonly SampledKey[];
}

/**
 * One uniform sample of at most `capacity` keys from uniform samples of several nodes' keys:
 * each node gives a share of its sample in proportion to the keys it listed, so a node with
 * few keys is not over-represented for having a sample as large as the others'.
 */
export function mergeSamples(samples: readonly NodeSample[], capacity: number, random: () => number = Math.random): SampledKey[] {
  const listed = samples.reduce((sum, s) => sum + s.listed, 0);
  if (listed === 0) return [];
  return samples.flatMap(({ listed: n, keys }) => {
    const take = Math.min(keys.length, Math.round((capacity * n) / listed));
    // A partial Fisher-Yates shuffle: the first `take` of a copy, drawn without replacement.
    const pool = [...keys];
    for (let i = 0; i < take; i++) {
      const j = i + Math.floor(random() * (pool.length - i));
      [pool[i], pool[j]] = [pool[j] as SampledKey, pool[i] as SampledKey];
    }
    return pool.slice(0, take);
  });
}
