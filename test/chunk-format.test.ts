import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { crc32 } from 'node:zlib';
import { CachewarmError } from '../shared/errors.js';
import {
  CHUNK_FORMAT_VERSION,
  ChunkBuilder,
  HEADER_BYTES,
  chunkHeader,
  decodeDataChunk,
  decodeKeyChunk,
  verifyChunk,
  type DataItem,
  type KeyItem,
} from '../shared/chunk-format.js';
import { allByteValues, patterned } from './support/bytes.js';

const NAME = 'job-7/zone-a/10.0.0.1:11211/000042.chunk';
const REAL_EXPTIME = 1_893_456_000; // 2030-01-01T00:00:00Z, an absolute unix time
const MAX_U32 = 0xffff_ffff;

function dataChunk(items: readonly DataItem[], targetBytes = 64 * 1024): Buffer {
  const builder = new ChunkBuilder('data', targetBytes);
  for (const item of items) builder.addData(item.key, item.value, item.flags, item.exptime);
  return builder.seal();
}

function keyChunk(items: readonly KeyItem[], targetBytes = 64 * 1024): Buffer {
  const builder = new ChunkBuilder('keys', targetBytes);
  for (const item of items) builder.addKey(item.key, item.exptime, item.sizeBytes);
  return builder.seal();
}

/** Rewrites the header checksum so that only the deliberate change is wrong. */
function reseal(chunk: Buffer): Buffer {
  const out = Buffer.from(chunk);
  out.writeUInt32LE(crc32(out.subarray(HEADER_BYTES), crc32(out.subarray(0, 16))), 16);
  return out;
}

function assertDataItems(actual: readonly DataItem[], expected: readonly DataItem[]): void {
  assert.equal(actual.length, expected.length, 'item count');
  expected.forEach((want, i) => {
    const got = actual[i];
    assert.ok(got, `item ${i} is missing`);
    assert.ok(got.key.equals(want.key), `item ${i}: key ${got.key.toString('hex')} != ${want.key.toString('hex')}`);
    assert.equal(got.value.length, want.value.length, `item ${i}: value length`);
    assert.ok(got.value.equals(want.value), `item ${i}: value bytes differ`);
    assert.equal(got.flags, want.flags, `item ${i}: flags`);
    assert.equal(got.exptime, want.exptime, `item ${i}: exptime`);
  });
}

/** Asserts that `fn` throws CHUNK_CORRUPT naming the chunk, with a message matching `why`. */
function assertCorrupt(fn: () => unknown, why: RegExp, context: string): void {
  let thrown: unknown;
  try {
    fn();
  } catch (error) {
    thrown = error;
  }
  assert.ok(thrown !== undefined, `${context}: decoding succeeded but should have been refused`);
  assert.ok(
    thrown instanceof CachewarmError,
    `${context}: expected a CachewarmError, got ${thrown instanceof Error ? `${thrown.name}: ${thrown.message}` : String(thrown)}`,
  );
  assert.equal(thrown.code, 'CHUNK_CORRUPT', `${context}: code (${thrown.message})`);
  assert.ok(thrown.message.includes(NAME), `${context}: message does not name the chunk: ${thrown.message}`);
  assert.match(thrown.message, why, `${context}: message does not say what is wrong`);
}

const SAMPLE_DATA: DataItem[] = [
  { key: Buffer.from('a'), value: Buffer.alloc(0), flags: 0, exptime: 0 },
  { key: Buffer.alloc(250, 0x6b), value: allByteValues(), flags: MAX_U32, exptime: REAL_EXPTIME },
  { key: Buffer.from([0xff, 0xfe, 0x80, 0x41]), value: Buffer.from('hello'), flags: 7, exptime: REAL_EXPTIME + 1 },
  { key: Buffer.from('ключ-🔑'), value: patterned(1500, 3), flags: 0x8000_0000, exptime: 0 },
];

const SAMPLE_KEYS: KeyItem[] = [
  { key: Buffer.from('k'), exptime: 0, sizeBytes: 0 },
  { key: Buffer.alloc(250, 0x7a), exptime: REAL_EXPTIME, sizeBytes: 1024 * 1024 },
  { key: Buffer.from([0xff, 0xfe, 0x00, 0x20, 0x0a]), exptime: MAX_U32, sizeBytes: MAX_U32 },
  { key: Buffer.from('a:b/c?d=e&f%20g'), exptime: 1, sizeBytes: 7 },
];

describe('chunk format: round trip', () => {
  test('a data chunk returns every key, value, flags and exptime exactly', () => {
    const items: DataItem[] = [
      ...SAMPLE_DATA,
      { key: Buffer.from('x'), value: Buffer.from([0]), flags: MAX_U32, exptime: 0 },
      { key: Buffer.alloc(250, 0xff), value: Buffer.alloc(0), flags: 0, exptime: REAL_EXPTIME },
    ];
    const chunk = dataChunk(items);
    assert.deepEqual(verifyChunk(chunk, NAME), { kind: 'data', count: items.length });
    assertDataItems(decodeDataChunk(chunk, NAME), items);
  });

  test('a 1 MiB value round-trips byte for byte', () => {
    const big = patterned(1024 * 1024, 99);
    const items: DataItem[] = [
      { key: Buffer.from('before'), value: Buffer.from('b'), flags: 1, exptime: REAL_EXPTIME },
      { key: Buffer.from('big'), value: big, flags: MAX_U32, exptime: REAL_EXPTIME },
      { key: Buffer.from('after'), value: Buffer.alloc(0), flags: 0, exptime: 0 },
    ];
    const chunk = dataChunk(items, 4096);
    const decoded = decodeDataChunk(chunk, NAME);
    assertDataItems(decoded, items);
    assert.equal(decoded[1]?.value.length, 1024 * 1024);
  });

  test('a keys chunk returns every key and exptime exactly', () => {
    const chunk = keyChunk(SAMPLE_KEYS);
    assert.deepEqual(verifyChunk(chunk, NAME), { kind: 'keys', count: SAMPLE_KEYS.length });
    const decoded = decodeKeyChunk(chunk, NAME);
    assert.equal(decoded.length, SAMPLE_KEYS.length);
    SAMPLE_KEYS.forEach((want, i) => {
      const got = decoded[i];
      assert.ok(got);
      assert.ok(got.key.equals(want.key), `key ${i}: ${got.key.toString('hex')} != ${want.key.toString('hex')}`);
      assert.equal(got.exptime, want.exptime, `exptime ${i}`);
      assert.equal(got.sizeBytes, want.sizeBytes, `size ${i}`);
    });
  });

  test('an empty chunk round-trips as zero items', () => {
    assert.deepEqual(decodeDataChunk(new ChunkBuilder('data', 1024).seal(), NAME), []);
    assert.deepEqual(decodeKeyChunk(new ChunkBuilder('keys', 1024).seal(), NAME), []);
  });

  test('the header states the item count and the checksum of the sealed bytes', () => {
    const chunk = dataChunk(SAMPLE_DATA);
    const header = chunkHeader(chunk);
    assert.equal(header.items, SAMPLE_DATA.length);
    assert.equal(header.crc32, crc32(chunk.subarray(HEADER_BYTES), crc32(chunk.subarray(0, 16))));
    assert.equal(chunk.subarray(0, 4).toString('latin1'), 'CWCH');
    assert.equal(chunk[4], CHUNK_FORMAT_VERSION);
  });

  test('a builder is empty again after seal, and the sealed bytes are not reused', () => {
    const builder = new ChunkBuilder('data', 1024);
    builder.addData(Buffer.from('first'), Buffer.from('1111'), 1, 0);
    const first = builder.seal();
    const firstCopy = Buffer.from(first);
    assert.equal(builder.itemCount, 0);
    assert.equal(builder.byteLength, HEADER_BYTES);
    builder.addData(Buffer.from('second'), Buffer.from('2222'), 2, REAL_EXPTIME);
    const second = builder.seal();
    assert.ok(first.equals(firstCopy), 'sealing the next chunk changed an earlier one');
    assertDataItems(decodeDataChunk(first, NAME), [{ key: Buffer.from('first'), value: Buffer.from('1111'), flags: 1, exptime: 0 }]);
    assertDataItems(decodeDataChunk(second, NAME), [
      { key: Buffer.from('second'), value: Buffer.from('2222'), flags: 2, exptime: REAL_EXPTIME },
    ]);
  });
});

describe('chunk format: sizing', () => {
  test('a producer that seals when fits() says no gets chunks of about the target size', () => {
    const target = 4096;
    const builder = new ChunkBuilder('data', target);
    const chunks: Buffer[] = [];
    const all: DataItem[] = [];
    for (let i = 0; i < 500; i++) {
      const key = Buffer.from(`key-${i}`);
      const value = patterned(10 + ((i * 37) % 300), i);
      const bytes = ChunkBuilder.dataRecordBytes(key, value.length);
      if (!builder.fits(bytes)) {
        // The builder said no: the next record really would have crossed the target.
        assert.ok(builder.byteLength + bytes > target, `fits() refused a record that fits (chunk ${chunks.length})`);
        chunks.push(builder.seal());
      }
      builder.addData(key, value, i, 0);
      all.push({ key, value, flags: i, exptime: 0 });
    }
    if (builder.itemCount > 0) chunks.push(builder.seal());

    assert.ok(chunks.length > 5, `expected several chunks, got ${chunks.length}`);
    for (const [i, chunk] of chunks.entries()) {
      assert.ok(chunk.length <= target, `chunk ${i} is ${chunk.length} bytes, over the ${target}-byte target`);
      if (i < chunks.length - 1) {
        assert.ok(chunk.length > target - (13 + 7 + 309), `chunk ${i} is only ${chunk.length} bytes: sealed too early`);
      }
    }
    assertDataItems(chunks.flatMap((c) => decodeDataChunk(c, NAME)), all);
  });

  test('byteLength counts the header and every record', () => {
    const builder = new ChunkBuilder('keys', 1024);
    assert.equal(builder.byteLength, HEADER_BYTES);
    const key = Buffer.from('abc');
    builder.addKey(key, 0);
    assert.equal(builder.byteLength, HEADER_BYTES + ChunkBuilder.keyRecordBytes(key));
    assert.equal(builder.seal().length, HEADER_BYTES + ChunkBuilder.keyRecordBytes(key));
  });

  test('fits() accepts any first record, so a single item larger than the target still makes a chunk', () => {
    const target = 1024;
    const builder = new ChunkBuilder('data', target);
    const key = Buffer.from('huge');
    const value = patterned(100_000, 5);
    const bytes = ChunkBuilder.dataRecordBytes(key, value.length);
    assert.equal(builder.fits(bytes), true, 'an empty builder must accept an oversized record');
    builder.addData(key, value, 9, REAL_EXPTIME);
    assert.equal(builder.fits(1), false, 'nothing fits after an oversized record');
    const chunk = builder.seal();
    assert.equal(chunk.length, HEADER_BYTES + bytes);
    assertDataItems(decodeDataChunk(chunk, NAME), [{ key, value, flags: 9, exptime: REAL_EXPTIME }]);
    // The builder still works at its normal size afterwards.
    builder.addData(Buffer.from('small'), Buffer.from('v'), 0, 0);
    assertDataItems(decodeDataChunk(builder.seal(), NAME), [{ key: Buffer.from('small'), value: Buffer.from('v'), flags: 0, exptime: 0 }]);
  });
});

describe('chunk format: keys are checked when added', () => {
  for (const [what, key] of [
    ['empty', Buffer.alloc(0)],
    ['251 bytes', Buffer.alloc(251, 0x61)],
    ['1000 bytes', Buffer.alloc(1000, 0x61)],
  ] as const) {
    test(`a ${what} key is refused by addData and addKey, and nothing is added`, () => {
      const data = new ChunkBuilder('data', 1024);
      const keys = new ChunkBuilder('keys', 1024);
      for (const add of [() => data.addData(key, Buffer.from('v'), 0, 0), () => keys.addKey(key, 0)]) {
        assert.throws(add, (error: unknown) => {
          assert.ok(error instanceof CachewarmError, `expected a CachewarmError, got ${String(error)}`);
          assert.equal(error.code, 'INVALID_ARGUMENT');
          assert.match(error.message, new RegExp(`\\b${key.length}\\b`));
          return true;
        });
      }
      assert.equal(data.itemCount, 0);
      assert.equal(keys.itemCount, 0);
      assert.equal(data.byteLength, HEADER_BYTES);
      assert.deepEqual(decodeDataChunk(data.seal(), NAME), []);
      assert.deepEqual(decodeKeyChunk(keys.seal(), NAME), []);
    });
  }

  test('keys of exactly 1 and 250 bytes are accepted', () => {
    const keys = new ChunkBuilder('keys', 1024);
    keys.addKey(Buffer.from([0]), 0);
    keys.addKey(Buffer.alloc(250, 0xff), 0);
    assert.equal(decodeKeyChunk(keys.seal(), NAME).length, 2);
  });
});

describe('chunk format: damage is refused as CHUNK_CORRUPT', () => {
  const decoders = {
    data: (chunk: Buffer) => decodeDataChunk(chunk, NAME),
    keys: (chunk: Buffer) => decodeKeyChunk(chunk, NAME),
  };
  const samples = { data: dataChunk(SAMPLE_DATA), keys: keyChunk(SAMPLE_KEYS) };

  for (const kind of ['data', 'keys'] as const) {
    const chunk = samples[kind];
    const decode = decoders[kind];

    test(`${kind}: truncated at every length (inside the header, mid-record, last byte missing)`, () => {
      assert.doesNotThrow(() => decode(chunk));
      for (let length = 0; length < chunk.length; length++) {
        assertCorrupt(() => decode(chunk.subarray(0, length)), /truncated/, `${kind} chunk cut to ${length} of ${chunk.length} bytes`);
        assertCorrupt(() => verifyChunk(chunk.subarray(0, length), NAME), /truncated/, `verify, cut to ${length} bytes`);
      }
    });

    test(`${kind}: a single flipped bit anywhere is refused`, () => {
      // Every bit of the header and of the first records, then a stride over the rest.
      const positions: number[] = [];
      for (let i = 0; i < chunk.length; i += i < 600 ? 1 : 7) positions.push(i);
      positions.push(chunk.length - 1);
      for (const at of positions) {
        for (let bit = 0; bit < 8; bit++) {
          const damaged = Buffer.from(chunk);
          damaged[at] = (damaged[at] as number) ^ (1 << bit);
          const why =
            at < 4
              ? /bad magic/
              : at === 4
                ? /format version \d+ is not supported/
                : at === 5
                  ? /kind/
                  : at >= 12 && at < 16
                    ? /truncated|unexpected bytes after the body/
                    : /checksum mismatch/;
          assertCorrupt(() => decode(damaged), why, `${kind} chunk, bit ${bit} of byte ${at} flipped`);
        }
      }
    });

    test(`${kind}: extra bytes after the body are refused`, () => {
      for (const extra of [Buffer.from([0]), Buffer.from('trailing garbage'), Buffer.from(chunk)]) {
        assertCorrupt(() => decode(Buffer.concat([chunk, extra])), /unexpected bytes after the body/, `${extra.length} extra bytes`);
      }
    });

    test(`${kind}: bad magic is refused`, () => {
      const damaged = Buffer.from(chunk);
      damaged.write('PK\x03\x04', 0, 'latin1');
      assertCorrupt(() => decode(reseal(damaged)), /bad magic/, 'zip magic');
      assertCorrupt(() => decode(Buffer.alloc(chunk.length)), /bad magic/, 'all zeros');
    });

    test(`${kind}: an unsupported format version is refused`, () => {
      for (const version of [0, CHUNK_FORMAT_VERSION + 1, 255]) {
        const damaged = Buffer.from(chunk);
        damaged[4] = version;
        assertCorrupt(() => decode(reseal(damaged)), new RegExp(`format version ${version} is not supported`), `version ${version}`);
      }
    });

    test(`${kind}: an unknown kind code is refused`, () => {
      for (const code of [0, 3, 255]) {
        const damaged = Buffer.from(chunk);
        damaged[5] = code;
        assertCorrupt(() => decode(reseal(damaged)), new RegExp(`unknown chunk kind ${code}`), `kind code ${code}`);
      }
    });

    test(`${kind}: a header count that disagrees with the records is refused even with a valid checksum`, () => {
      const count = chunk.readUInt32LE(8);
      for (const claimed of [0, count - 1, count + 1, count + 1000]) {
        const damaged = Buffer.from(chunk);
        damaged.writeUInt32LE(claimed, 8);
        assertCorrupt(() => decode(reseal(damaged)), /record|left after/, `count ${claimed} instead of ${count}`);
      }
    });
  }

  test('a data chunk decoded as keys, and a keys chunk decoded as data, are refused', () => {
    assertCorrupt(() => decodeKeyChunk(samples.data, NAME), /expected a keys chunk, found a data chunk/, 'data as keys');
    assertCorrupt(() => decodeDataChunk(samples.keys, NAME), /expected a data chunk, found a keys chunk/, 'keys as data');
  });

  test('the error carries the chunk name in its context', () => {
    try {
      decodeDataChunk(samples.data.subarray(0, 30), NAME);
      assert.fail('a truncated chunk decoded');
    } catch (error) {
      assert.ok(error instanceof CachewarmError);
      assert.equal(error.context['chunk'], NAME);
    }
  });
});
