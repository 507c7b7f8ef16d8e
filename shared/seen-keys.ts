/**
 * The keys a crawl pass already listed, as 32-bit fingerprints in an open-addressing table:
 * 8 bytes per expected key (half full), in memory fixed at construction and capped, never
 * growing with the data.
 *
 * Exact enough to count with: a key is taken for one already listed only when another key
 * with the same fingerprint lies in its short probe run, about once in a billion lookups (a
 * Bloom filter of 2 bytes per key did so a dozen times in 300,000 keys, and every such mistake
 * looked like a key the pass had missed). When the table is full, further keys are not
 * remembered: `add` says they are new, so a later pass lists them again, and they are copied
 * twice, add-only, rather than not at all.
 */
export class SeenKeys {
  private readonly slots: Uint32Array;
  private readonly mask: number;
  private readonly capacity: number;
  private count = 0;

  constructor(expectedKeys: number, maxBytes: number) {
    let size = 1024;
    while (size < expectedKeys * 2 && size * 2 * 4 <= maxBytes) size *= 2;
    this.slots = new Uint32Array(size);
    this.mask = size - 1;
    // Past 3/4 full, probe runs grow long: keys beyond are not remembered.
    this.capacity = Math.floor(size * 0.75);
  }

  get byteLength(): number {
    return this.slots.byteLength;
  }

  /** Adds a key (bytes `start` to `end` of `key`); returns whether it was (almost certainly) there already. */
  add(key: Uint8Array, start = 0, end = key.length): boolean {
    let h1 = 0x811c9dc5;
    let h2 = 0x01000193 ^ 0x5bd1e995;
    for (let i = start; i < end; i++) {
      const b = key[i] as number;
      h1 = Math.imul(h1 ^ b, 0x01000193);
      h2 = Math.imul(h2 ^ b, 0x5bd1e995);
      h2 ^= h2 >>> 15;
    }
    // 0 marks an empty slot.
    const fingerprint = h2 >>> 0 || 1;
    for (let slot = (h1 ^ (h1 >>> 16)) & this.mask; ; slot = (slot + 1) & this.mask) {
      const held = this.slots[slot] as number;
      if (held === fingerprint) return true;
      if (held === 0) {
        if (this.count >= this.capacity) return false;
        this.slots[slot] = fingerprint;
        this.count++;
        return false;
      }
    }
  }
}
