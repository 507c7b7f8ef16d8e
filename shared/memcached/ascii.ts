/** Writes a non-negative integer's decimal digits at `at`; returns the index after them. */
export function writeDecimal(buf: Buffer, at: number, n: number): number {
  if (n < 10) {
    buf[at] = 0x30 + n;
    return at + 1;
  }
  let digits = 1;
  for (let x = n; x >= 10; x = Math.floor(x / 10)) digits++;
  let i = at + digits;
  for (let x = n; i > at; x = Math.floor(x / 10)) buf[--i] = 0x30 + (x % 10);
  return at + digits;
}

/** Writes an ASCII string that is known to be short; returns the index after it. */
export function writeAscii(buf: Buffer, at: number, text: string): number {
  for (let i = 0; i < text.length; i++) buf[at + i] = text.charCodeAt(i);
  return at + text.length;
}

/** The key as it goes on a command line: raw, or base64 when it has spaces or control bytes. */
export function keyToken(key: Buffer, raw: boolean): Buffer {
  return raw ? key : Buffer.from(key.toString('base64'), 'latin1');
}

/**
 * Writes the key in src[start, end) as it goes on a command line (see keyToken); returns the
 * index after it.
 */
export function writeKey(buf: Buffer, at: number, src: Buffer, raw: boolean, start = 0, end = src.length): number {
  if (!raw) return at + keyToken(src.subarray(start, end), false).copy(buf, at);
  // Byte by byte: keys are short, and for them a native copy's call costs more than the copy.
  for (let i = start; i < end; i++) buf[at++] = src[i] as number;
  return at;
}
