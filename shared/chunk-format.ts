import { crc32 } from 'node:zlib';
import { BufferPool } from './buffer-pool.js';
import { CachewarmError } from './errors.js';
import { checkKey } from './memcached/keys.js';
import type { PackedItems } from './memcached/meta-add.js';

/**
 * Chunk format, version 2. Everything is little-endian.
 *
 *   header (20 bytes)
 *     0  magic "CWCH"
 *     4  u8  format version (2)
 *     5  u8  kind: 1 = keys, 2 = data
 *     6  u16 reserved, 0
 *     8  u32 record count
 *    12  u32 body length in bytes
 *    16  u32 CRC-32 of header bytes 0..15 followed by the body
 *   body: records back to back
 *     keys: u8 key length, u32 exptime, u32 value size the crawler reported, key
 *     data: u8 key length, u32 client flags, u32 exptime, u32 value length, key, value
 *
 * (Version 2 added the value size to key records: a resumed dump sizes its reads by it.)
 *
 * exptime is an absolute unix time in seconds, 0 for none. The header carries the length
 * and checksum, so a truncated or corrupted chunk is refused whole, before any item of it
 * reaches a target.
 */
export const CHUNK_MAGIC = 0x48435743; // "CWCH" read little-endian
export const CHUNK_FORMAT_VERSION = 2;
export const HEADER_BYTES = 20;

export type ChunkKind = 'keys' | 'data';
const KIND_CODE: Record<ChunkKind, number> = { keys: 1, data: 2 };
const KEY_RECORD_OVERHEAD = 9;
const EMPTY = Buffer.alloc(0);
const DATA_RECORD_OVERHEAD = 13;

export interface DataItem {
  readonly key: Buffer;
  readonly value: Buffer;
  readonly flags: number;
  readonly exptime: number;
}

export interface KeyItem {
  readonly key: Buffer;
  readonly exptime: number;
  /** The value's size as the crawler reported it: how reads are batched. */
  readonly sizeBytes: number;
}

/**
 * Accumulates records into one chunk. Memory is the chunk's size: the buffer is allocated
 * at `targetBytes` on the first record (grown only for a single item larger than that),
 * from a pool: give a sealed chunk back to the pool once it is stored.
 */
export class ChunkBuilder {
  private buf: Buffer;
  private length = HEADER_BYTES;
  private count = 0;

  constructor(
    readonly kind: ChunkKind,
    readonly targetBytes: number,
    private readonly pool: BufferPool = new BufferPool(0),
  ) {
    this.buf = EMPTY;
  }

  get itemCount(): number {
    return this.count;
  }

  get byteLength(): number {
    return this.length;
  }

  /** Whether a record of `recordBytes` still fits, so the caller can seal the chunk first. */
  fits(recordBytes: number): boolean {
    return this.count === 0 || this.length + recordBytes <= this.targetBytes;
  }

  static dataRecordBytes(key: Uint8Array, valueBytes: number): number {
    return DATA_RECORD_OVERHEAD + key.length + valueBytes;
  }

  static keyRecordBytes(key: Uint8Array): number {
    return KEY_RECORD_OVERHEAD + key.length;
  }

  addData(key: Uint8Array, value: Uint8Array, flags: number, exptime: number): void {
    this.addDataFrom(key, value, 0, value.length, flags, exptime);
  }

  /** addData with the value given as source[start, end), copied from there. */
  addDataFrom(key: Uint8Array, source: Buffer | Uint8Array, start: number, end: number, flags: number, exptime: number): void {
    this.expectKind('data');
    checkKey(key, `${this.kind} chunk`);
    const valueBytes = end - start;
    const at = this.reserve(DATA_RECORD_OVERHEAD + key.length + valueBytes);
    const buf = this.buf;
    buf[at] = key.length;
    buf.writeUInt32LE(flags >>> 0, at + 1);
    buf.writeUInt32LE(exptime, at + 5);
    buf.writeUInt32LE(valueBytes, at + 9);
    buf.set(key, at + 13);
    if (Buffer.isBuffer(source)) source.copy(buf, at + 13 + key.length, start, end);
    else buf.set(source.subarray(start, end), at + 13 + key.length);
  }

  addKey(key: Uint8Array, exptime: number, sizeBytes = 0): void {
    this.expectKind('keys');
    checkKey(key, `${this.kind} chunk`);
    const at = this.reserve(KEY_RECORD_OVERHEAD + key.length);
    this.buf[at] = key.length;
    this.buf.writeUInt32LE(exptime, at + 1);
    this.buf.writeUInt32LE(sizeBytes, at + 5);
    this.buf.set(key, at + 9);
  }

  /** Seals the chunk: returns its bytes and starts the next chunk in a fresh buffer. */
  seal(): Buffer {
    if (this.buf === EMPTY) this.buf = this.pool.acquire(HEADER_BYTES);
    const out = this.buf.subarray(0, this.length);
    out.writeUInt32LE(CHUNK_MAGIC, 0);
    out[4] = CHUNK_FORMAT_VERSION;
    out[5] = KIND_CODE[this.kind];
    out.writeUInt16LE(0, 6);
    out.writeUInt32LE(this.count, 8);
    out.writeUInt32LE(this.length - HEADER_BYTES, 12);
    out.writeUInt32LE(checksum(out), 16);
    // The sealed bytes now belong to the caller; the next chunk gets its own buffer.
    this.buf = EMPTY;
    this.length = HEADER_BYTES;
    this.count = 0;
    return out;
  }

  private reserve(bytes: number): number {
    const at = this.length;
    if (at + bytes > this.buf.length) {
      const grown = this.pool.acquire(Math.max(this.buf.length * 2, this.targetBytes, at + bytes));
      this.buf.copy(grown, 0, 0, at);
      if (this.buf !== EMPTY) this.pool.release(this.buf);
      this.buf = grown;
    }
    this.length += bytes;
    this.count++;
    return at;
  }

  private expectKind(kind: ChunkKind): void {
    if (this.kind !== kind) throw new Error(`cannot add ${kind} records to a ${this.kind} chunk`);
  }
}

function checksum(chunk: Buffer): number {
  return crc32(chunk.subarray(HEADER_BYTES), crc32(chunk.subarray(0, 16)));
}

function corrupt(where: string, why: string): CachewarmError {
  return new CachewarmError('CHUNK_CORRUPT', `chunk ${where}: ${why}`, { chunk: where });
}

/** Checks a chunk's header, length and checksum; returns its kind and record count. */
export function verifyChunk(chunk: Buffer, where: string, check: { checksum: boolean } = { checksum: true }): { kind: ChunkKind; count: number } {
  if (chunk.length < HEADER_BYTES) {
    throw corrupt(where, `truncated: ${chunk.length} bytes is shorter than the ${HEADER_BYTES}-byte header`);
  }
  if (chunk.readUInt32LE(0) !== CHUNK_MAGIC) throw corrupt(where, 'not a cachewarm chunk (bad magic)');
  const formatVersion = chunk[4];
  if (formatVersion !== CHUNK_FORMAT_VERSION) {
    throw corrupt(where, `format version ${formatVersion} is not supported (this build reads ${CHUNK_FORMAT_VERSION})`);
  }
  const kind = chunk[5] === 1 ? 'keys' : chunk[5] === 2 ? 'data' : undefined;
  if (!kind) throw corrupt(where, `unknown chunk kind ${chunk[5]}`);
  const count = chunk.readUInt32LE(8);
  const bodyBytes = chunk.readUInt32LE(12);
  const actual = chunk.length - HEADER_BYTES;
  if (actual < bodyBytes) throw corrupt(where, `truncated: header says ${bodyBytes} body bytes, found ${actual}`);
  if (actual > bodyBytes) throw corrupt(where, `${actual - bodyBytes} unexpected bytes after the body`);
  const expected = chunk.readUInt32LE(16);
  const got = check.checksum ? checksum(chunk) : expected;
  if (expected !== got) {
    throw corrupt(where, `checksum mismatch (header ${hex(expected)}, content ${hex(got)})`);
  }
  return { kind, count };
}

function hex(n: number): string {
  return n.toString(16).padStart(8, '0');
}

/**
 * A verified data chunk's records, read where they lie in the chunk: an offset per record and
 * no object per item, which is what lets a populator route and write millions of items
 * without the garbage collector copying them about. Valid as long as the chunk's buffer.
 */
export class DataRecords implements PackedItems {
  private constructor(
    readonly bytes: Buffer,
    /** Where each record starts in `bytes`. */
    private readonly starts: Uint32Array,
  ) {}

  /** Walks a chunk's records after verifying it (its checksum too, unless told it was never out of this process). */
  static decode(chunk: Buffer, where: string, check: { checksum: boolean } = { checksum: true }): DataRecords {
    const { kind, count } = verifyChunk(chunk, where, check);
    if (kind !== 'data') throw corrupt(where, `expected a data chunk, found a ${kind} chunk`);
    const starts = new Uint32Array(count);
    let at = HEADER_BYTES;
    for (let i = 0; i < count; i++) {
      if (at + DATA_RECORD_OVERHEAD > chunk.length) throw corrupt(where, `record ${i} runs past the end`);
      const keyBytes = chunk[at] as number;
      const end = at + DATA_RECORD_OVERHEAD + keyBytes + chunk.readUInt32LE(at + 9);
      if (keyBytes === 0 || end > chunk.length) throw corrupt(where, `record ${i} runs past the end`);
      starts[i] = at;
      at = end;
    }
    if (at !== chunk.length) throw corrupt(where, `${chunk.length - at} bytes left after ${count} records`);
    return new DataRecords(chunk, starts);
  }

  get length(): number {
    return this.starts.length;
  }

  keyStart(i: number): number {
    return (this.starts[i] as number) + DATA_RECORD_OVERHEAD;
  }

  keyBytes(i: number): number {
    return this.bytes[this.starts[i] as number] as number;
  }

  valueStart(i: number): number {
    return this.keyStart(i) + this.keyBytes(i);
  }

  valueBytes(i: number): number {
    return this.bytes.readUInt32LE((this.starts[i] as number) + 9);
  }

  flags(i: number): number {
    return this.bytes.readUInt32LE((this.starts[i] as number) + 1);
  }

  exptime(i: number): number {
    return this.bytes.readUInt32LE((this.starts[i] as number) + 5);
  }

  /** Record i as an item whose key and value are views of the chunk. */
  item(i: number): DataItem {
    const keyAt = this.keyStart(i);
    const valueAt = keyAt + this.keyBytes(i);
    return {
      key: this.bytes.subarray(keyAt, valueAt),
      value: this.bytes.subarray(valueAt, valueAt + this.valueBytes(i)),
      flags: this.flags(i),
      exptime: this.exptime(i),
    };
  }
}

/**
 * Decodes a data chunk after verifying it. Items point into `chunk` (no copies), so they live
 * as long as the chunk's buffer.
 */
export function decodeDataChunk(chunk: Buffer, where: string): DataItem[] {
  const records = DataRecords.decode(chunk, where);
  return Array.from({ length: records.length }, (_, i) => records.item(i));
}

export function decodeKeyChunk(chunk: Buffer, where: string): KeyItem[] {
  const { kind, count } = verifyChunk(chunk, where);
  if (kind !== 'keys') throw corrupt(where, `expected a keys chunk, found a ${kind} chunk`);
  const items: KeyItem[] = new Array<KeyItem>(count);
  let at = HEADER_BYTES;
  for (let i = 0; i < count; i++) {
    if (at + KEY_RECORD_OVERHEAD > chunk.length) throw corrupt(where, `record ${i} runs past the end`);
    const keyBytes = chunk[at] as number;
    const end = at + KEY_RECORD_OVERHEAD + keyBytes;
    if (keyBytes === 0 || end > chunk.length) throw corrupt(where, `record ${i} runs past the end`);
    items[i] = { key: chunk.subarray(at + KEY_RECORD_OVERHEAD, end), exptime: chunk.readUInt32LE(at + 1), sizeBytes: chunk.readUInt32LE(at + 5) };
    at = end;
  }
  if (at !== chunk.length) throw corrupt(where, `${chunk.length - at} bytes left after ${count} records`);
  return items;
}

/** Record count and checksum of a sealed chunk, as its header states them. */
export function chunkHeader(chunk: Buffer): { items: number; crc32: number } {
  return { items: chunk.readUInt32LE(8), crc32: chunk.readUInt32LE(16) };
}
