/** Test values whose bytes matter: every byte value once, and deterministic pseudo-random fill. */
export function allByteValues(): Buffer {
  return Buffer.from(Array.from({ length: 256 }, (_, i) => i));
}

export function patterned(length: number, seed: number): Buffer {
  const buf = Buffer.allocUnsafe(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x = (Math.imul(x, 1_103_515_245) + 12_345) >>> 0;
    buf[i] = x >>> 24;
  }
  return buf;
}
