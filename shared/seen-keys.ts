/**
 * A Bloom filter of keys: remembers which keys a crawl pass already listed, in memory fixed
 * at construction (about 2 bytes per expected key, capped), never growing with the data.
 * A false positive makes a later pass skip a key it should have listed, at the rate
 * `falsePositiveRate` reports (about 0.07 % at the uncapped size).
 */
export class SeenKeys {
  private readonly bits: Uint32Array;
  private readonly bitCount: number;
  private static readonly HASHES = 7;
  private count = 0;
  private setBits = 0;
  private expected = 0;

  constructor(expectedKeys: number, maxBytes: number) {
    const wantedBytes = Math.max(1024, Math.ceil((Math.max(expectedKeys, 1) * 16) / 8));
    const bytes = Math.min(wantedBytes, Math.max(1024, maxBytes));
    this.bits = new Uint32Array(Math.ceil(bytes / 4));
    this.bitCount = this.bits.length * 32;
  }

  get byteLength(): number {
    return this.bits.byteLength;
  }

  /** Adds a key; returns whether it was (probably) there already. */
  add(key: Uint8Array): boolean {
    // The chance that this key, if new, is taken for one seen: every one of its bits already set.
    this.expected += (this.setBits / this.bitCount) ** SeenKeys.HASHES;
    let h1 = 0x811c9dc5;
    let h2 = 0x01000193 ^ 0x5bd1e995;
    for (let i = 0; i < key.length; i++) {
      const b = key[i] as number;
      h1 = Math.imul(h1 ^ b, 0x01000193);
      h2 = Math.imul(h2 ^ b, 0x5bd1e995);
      h2 ^= h2 >>> 15;
    }
    h2 |= 1; // odd, so the probe sequence visits distinct bits
    let present = true;
    for (let i = 0; i < SeenKeys.HASHES; i++) {
      const bit = ((h1 >>> 0) + i * (h2 >>> 0)) % this.bitCount;
      const word = bit >>> 5;
      const mask = 1 << (bit & 31);
      const value = this.bits[word] as number;
      if ((value & mask) === 0) {
        present = false;
        this.bits[word] = value | mask;
        this.setBits++;
      }
    }
    if (!present) this.count++;
    return present;
  }

  /**
   * How many of the keys added so far were, by chance, reported as already there: a number
   * that, with a mean of `expectedFalsePositives`, stays below this but once in tens of
   * thousands (Poisson: mean + 4 standard deviations + 1).
   */
  falsePositiveBound(): number {
    return Math.ceil(this.expected + 4 * Math.sqrt(this.expected) + 1);
  }

  /** The chance that a key never added is reported as seen, at the current fill. */
  falsePositiveRate(): number {
    return (1 - Math.exp((-SeenKeys.HASHES * this.count) / this.bitCount)) ** SeenKeys.HASHES;
  }
}
