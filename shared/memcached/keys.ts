import { CachewarmError } from '../errors.js';

/** memcached's limit on a key's length in bytes. */
export const MAX_KEY_BYTES = 250;

/**
 * Whether a key can be sent as-is on a text/meta command line. Keys are bytes: anything but
 * spaces and control characters goes through raw (invalid UTF-8 included); the rest must be
 * sent base64-encoded with the meta `b` flag. (`start`/`end`: a key inside a larger buffer.)
 */
export function isRawSafeKey(key: Uint8Array, start = 0, end = key.length): boolean {
  for (let i = start; i < end; i++) {
    const byte = key[i] as number;
    if (byte <= 0x20 || byte === 0x7f) return false;
  }
  return true;
}

/**
 * Whether a key can be named on a meta command line at all: raw, or base64-encoded for keys
 * with spaces or control bytes, the token must stay within memcached's 250 characters.
 * (Only binary-protocol clients can write the keys that fail this.)
 */
export function fitsMetaCommand(key: Uint8Array): boolean {
  if (isRawSafeKey(key)) return key.length <= MAX_KEY_BYTES;
  return Math.ceil(key.length / 3) * 4 <= MAX_KEY_BYTES;
}

export function checkKey(key: Uint8Array, where: string): void {
  if (key.length === 0 || key.length > MAX_KEY_BYTES) {
    throw new CachewarmError('INVALID_ARGUMENT', `${where}: a key must be 1 to ${MAX_KEY_BYTES} bytes, got ${key.length}`, {
      where,
    });
  }
}

function hexValue(byte: number): number {
  if (byte >= 0x30 && byte <= 0x39) return byte - 0x30;
  const lower = byte | 0x20;
  if (lower >= 0x61 && lower <= 0x66) return lower - 0x61 + 10;
  return -1;
}

/**
 * Decodes a key from `lru_crawler metadump`, which percent-encodes every byte outside the
 * URI-unreserved set. Decodes to bytes, not a string: a key need not be valid UTF-8.
 */
export function decodeUriKey(buf: Uint8Array, start: number, end: number): Buffer {
  // Sized exactly up front (most keys have escapes: memcached encodes even `:`), so that
  // each key is one allocation and no second view.
  let escapes = 0;
  for (let i = start; i < end; i++) if (buf[i] === 0x25) escapes++;
  const out = Buffer.allocUnsafe(Math.max(0, end - start - 2 * escapes));
  let n = 0;
  for (let i = start; i < end; i++) {
    const byte = buf[i] as number;
    if (byte !== 0x25) {
      out[n++] = byte;
      continue;
    }
    const hi = i + 2 < end ? hexValue(buf[i + 1] as number) : -1;
    const lo = i + 2 < end ? hexValue(buf[i + 2] as number) : -1;
    if (hi < 0 || lo < 0) throw new Error(`bad percent-escape in key at byte ${i - start}`);
    out[n++] = (hi << 4) | lo;
    i += 2;
  }
  return out;
}
