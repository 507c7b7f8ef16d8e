/**
 * The first 32 bits (little-endian) of MD5(data): all that ketama needs of a key's digest.
 * A plain JS MD5 over the key's bytes, because a native hash call costs about a microsecond
 * of call overhead per key, which is most of placing a key on the ring; this takes a
 * fraction of that and allocates nothing. Checked against node:crypto for every length
 * from 0 to 300 bytes in test/md5-word.test.ts.
 */

const S = [7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21];
const K = new Int32Array(64);
for (let i = 0; i < 64; i++) K[i] = Math.floor(Math.abs(Math.sin(i + 1)) * 2 ** 32) | 0;
const SHIFTS = Int32Array.from(S);
const block = new Int32Array(16);

/** One MD5 step: a += f + K[i] + m[g], rotated by s, plus b. */
const step = (a: number, b: number, f: number, i: number, m: number, s: number): number => {
  const x = (a + f + (K[i] as number) + m) | 0;
  return (b + ((x << s) | (x >>> (32 - s)))) | 0;
};

function compress(state: Int32Array, m: Int32Array): void {
  let a = state[0] as number;
  let b = state[1] as number;
  let c = state[2] as number;
  let d = state[3] as number;
  // The four rounds as four loops: no per-step branch on which round it is.
  let i = 0;
  for (; i < 16; i++) {
    const next = step(a, b, (b & c) | (~b & d), i, m[i] as number, SHIFTS[i] as number);
    a = d;
    d = c;
    c = b;
    b = next;
  }
  for (; i < 32; i++) {
    const next = step(a, b, (d & b) | (~d & c), i, m[(5 * i + 1) & 15] as number, SHIFTS[i] as number);
    a = d;
    d = c;
    c = b;
    b = next;
  }
  for (; i < 48; i++) {
    const next = step(a, b, b ^ c ^ d, i, m[(3 * i + 5) & 15] as number, SHIFTS[i] as number);
    a = d;
    d = c;
    c = b;
    b = next;
  }
  for (; i < 64; i++) {
    const next = step(a, b, c ^ (b | ~d), i, m[(7 * i) & 15] as number, SHIFTS[i] as number);
    a = d;
    d = c;
    c = b;
    b = next;
  }
  state[0] = ((state[0] as number) + a) | 0;
  state[1] = ((state[1] as number) + b) | 0;
  state[2] = ((state[2] as number) + c) | 0;
  state[3] = ((state[3] as number) + d) | 0;
}

const state = new Int32Array(4);

export function md5FirstWord(data: Uint8Array, start = 0, end = data.length): number {
  state[0] = 0x67452301;
  state[1] = 0xefcdab89 | 0;
  state[2] = 0x98badcfe | 0;
  state[3] = 0x10325476;
  const length = end - start;
  let at = start;
  // Whole 64-byte blocks of the message.
  for (; end - at >= 64; at += 64) {
    for (let w = 0; w < 16; w++) {
      const p = at + w * 4;
      block[w] = (data[p] as number) | ((data[p + 1] as number) << 8) | ((data[p + 2] as number) << 16) | ((data[p + 3] as number) << 24);
    }
    compress(state, block);
  }
  // The tail, the 0x80 marker and the bit length: one block, or two when the tail is long.
  block.fill(0);
  const tail = end - at;
  for (let i = 0; i < tail; i++) block[i >> 2] = (block[i >> 2] as number) | ((data[at + i] as number) << ((i & 3) * 8));
  block[tail >> 2] = (block[tail >> 2] as number) | (0x80 << ((tail & 3) * 8));
  if (tail >= 56) {
    compress(state, block);
    block.fill(0);
  }
  block[14] = (length * 8) | 0;
  block[15] = Math.floor(length / 0x20000000);
  compress(state, block);
  return (state[0] as number) >>> 0;
}
