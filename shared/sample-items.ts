import { createHash } from 'node:crypto';
import type { WritableItem } from './memcached/meta-add.js';

export interface SampleOptions {
  readonly count: number;
  readonly valueBytes: number;
  /** Unix seconds the expiries are counted from. */
  readonly nowSeconds: number;
  /** Distinguishes one data set from another. */
  readonly seed?: string;
}

/**
 * Deterministic items for the demo, the benchmark and the tests: varied keys, values of
 * pseudo-random bytes, random 32-bit flags, and a mix of TTLs (a quarter without expiry, the
 * rest from minutes to days), so a copy that drops flags or shifts expiries shows.
 */
export function sampleItems(options: SampleOptions): WritableItem[] {
  const { count, valueBytes, nowSeconds, seed = 'cachewarm' } = options;
  const items: WritableItem[] = new Array<WritableItem>(count);
  let block = createHash('sha256').update(seed).digest();
  const pool = Buffer.allocUnsafe(Math.max(valueBytes, 1) + 4096);
  for (let at = 0; at < pool.length; at += block.length) {
    block = createHash('sha256').update(block).digest();
    block.copy(pool, at);
  }
  for (let i = 0; i < count; i++) {
    const h = (Math.imul(i + 1, 2654435761) ^ (i >>> 7)) >>> 0;
    const offset = h % 4096;
    const value = Buffer.from(pool.subarray(offset, offset + valueBytes));
    if (valueBytes >= 4) value.writeUInt32LE(i, 0); // unique content per item
    const ttlKind = h % 4;
    const exptime = ttlKind === 0 ? 0 : nowSeconds + ([0, 600, 3_600, 86_400][ttlKind] as number) + (h % 500);
    items[i] = { key: Buffer.from(`${seed}:item:${i}`), value, flags: Math.imul(h, 2246822519) >>> 0, exptime };
  }
  return items;
}
