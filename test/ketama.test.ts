import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isCachewarmError } from '../shared/errors.js';
import {
  HASHING_PROFILES,
  KetamaRing,
  ketamaHash,
  ringNameFor,
  type HashingProfile,
  type RingMember,
} from '../shared/ketama.js';

// The reference vectors are fixtures in the repository (test/fixtures/ketama-vectors/, see its
// README for the client versions that produced them). The compiled test runs from dist/test/,
// so the path is taken from the project root, two levels up.
const VECTORS_DIR = fileURLToPath(new URL('../../test/fixtures/ketama-vectors/', import.meta.url));

function readVectorFile(name: string): string {
  const path = join(VECTORS_DIR, name);
  assert.ok(existsSync(path), `ketama vector file ${path} is missing`);
  return readFileSync(path, 'utf8');
}

function lines(text: string): string[] {
  const all = text.split('\n');
  if (all.at(-1) === '') all.pop();
  return all;
}

/** the rings the vectors README describes */
const RINGS: Record<string, (profile: HashingProfile) => RingMember[]> = {
  '6nodes': (profile) =>
    [1, 2, 3, 4, 5, 6].map((n) => ({
      host: `10.1.0.${n}`,
      port: 11211,
      hostname: profile === 'evcache' ? `cache-${n}.example` : undefined,
    })),
  '3ports': () => [21001, 21002, 21003].map((port) => ({ host: '127.0.0.1', port })),
};

const VECTOR_FILES: ReadonlyArray<{ profile: HashingProfile; ring: string }> = [
  { profile: 'spymemcached', ring: '6nodes' },
  { profile: 'spymemcached', ring: '3ports' },
  { profile: 'libmemcached', ring: '6nodes' },
  { profile: 'libmemcached', ring: '3ports' },
  { profile: 'evcache', ring: '6nodes' },
];

/** how the vectors' node column writes a node */
function vectorLabel(node: RingMember): string {
  const address = `${node.host}:${node.port}`;
  return node.hostname ? `${node.hostname}/${address}` : address;
}

describe('ketama placement matches the reference clients', () => {
  for (const { profile, ring } of VECTOR_FILES) {
    const file = `${profile}-${ring}.tsv`;
    test(`${file}: every key lands on the node the real client chose`, () => {
      const members = RINGS[ring]!(profile);
      const ketama = new KetamaRing(members, (n) => ringNameFor(profile, n));
      const keys = lines(readVectorFile('keys.txt'));
      const rows = lines(readVectorFile(file));
      assert.equal(keys.length, 1001, 'keys.txt should hold 1,001 keys');
      assert.equal(rows.length, keys.length, `${file} should have one row per key`);

      let mismatches = 0;
      let first: string | undefined;
      rows.forEach((row, i) => {
        const tab = row.lastIndexOf('\t');
        const key = row.slice(0, tab);
        const expected = row.slice(tab + 1);
        assert.equal(key, keys[i], `${file} row ${i + 1} is not keys.txt line ${i + 1}`);
        const actual = vectorLabel(ketama.nodeFor(Buffer.from(key, 'utf8')));
        if (actual !== expected) {
          mismatches++;
          first ??= `key ${JSON.stringify(key)}: expected ${expected}, got ${actual}`;
        }
      });
      assert.equal(mismatches, 0, `${mismatches} of ${rows.length} keys misplaced; first: ${first}`);
    });
  }

  test('no vector file goes unchecked', () => {
    assert.ok(existsSync(VECTORS_DIR), `ketama vectors directory ${VECTORS_DIR} is missing`);
    const present = readdirSync(VECTORS_DIR).filter((f) => f.endsWith('.tsv')).sort();
    const checked = VECTOR_FILES.map(({ profile, ring }) => `${profile}-${ring}.tsv`).sort();
    assert.deepEqual(present, checked);
  });
});

describe('ringNameFor', () => {
  const plain: RingMember = { host: '10.1.0.1', port: 11211 };
  const named: RingMember = { host: '10.1.0.1', port: 11211, hostname: 'cache-1.example' };
  const otherPort: RingMember = { host: '10.1.0.1', port: 21001, hostname: 'cache-1.example' };

  test('spymemcached names a node ip:port, prefixed by hostname/ when it has one', () => {
    assert.equal(ringNameFor('spymemcached', plain), '10.1.0.1:11211');
    assert.equal(ringNameFor('spymemcached', named), 'cache-1.example/10.1.0.1:11211');
    assert.equal(ringNameFor('spymemcached', otherPort), 'cache-1.example/10.1.0.1:21001');
  });

  test('evcache always writes port 11211, whatever port the node listens on', () => {
    assert.equal(ringNameFor('evcache', named), 'cache-1.example/10.1.0.1:11211');
    assert.equal(ringNameFor('evcache', otherPort), 'cache-1.example/10.1.0.1:11211');
  });

  test('evcache refuses a node without a hostname', () => {
    assert.throws(
      () => ringNameFor('evcache', plain),
      (error: unknown) => isCachewarmError(error, 'TOPOLOGY_INVALID') && /hostname/.test(error.message),
    );
    assert.throws(
      () => new KetamaRing([plain], (n) => ringNameFor('evcache', n)),
      (error: unknown) => isCachewarmError(error, 'TOPOLOGY_INVALID'),
    );
  });

  test('libmemcached names a node by host alone on 11211, host:port otherwise', () => {
    assert.equal(ringNameFor('libmemcached', named), '10.1.0.1');
    assert.equal(ringNameFor('libmemcached', otherPort), '10.1.0.1:21001');
  });

  test('an explicit ringName is hashed as-is under every profile', () => {
    for (const profile of HASHING_PROFILES) {
      assert.equal(ringNameFor(profile, { host: '10.1.0.1', port: 21001, ringName: 'custom' }), 'custom', profile);
    }
  });

  test('evcache placement ignores the real port', () => {
    const on11211 = RINGS['6nodes']!('evcache');
    const elsewhere = on11211.map((n, i) => ({ ...n, port: 22000 + i }));
    const a = new KetamaRing(on11211, (n) => ringNameFor('evcache', n));
    const b = new KetamaRing(elsewhere, (n) => ringNameFor('evcache', n));
    for (let i = 0; i < 1000; i++) assert.equal(a.indexFor(`k${i}`), b.indexFor(`k${i}`));
  });
});

describe('ketamaHash', () => {
  // Expected values from Python: struct.unpack('<I', hashlib.md5(key).digest()[:4])[0]
  test('is the first four MD5 bytes read little-endian', () => {
    assert.equal(ketamaHash('key:0'), 2192279263);
    assert.equal(ketamaHash(''), 3649838548);
    assert.equal(ketamaHash('é'), 2546851174);
  });

  test('a key given as a string or as its UTF-8 bytes hashes and places the same', () => {
    const ring = new KetamaRing(RINGS['6nodes']!('spymemcached'), (n) => ringNameFor('spymemcached', n));
    for (const key of ['key:0', 'é', '日本語のキー', 'a b\tc', 'x'.repeat(250)]) {
      assert.equal(ketamaHash(key), ketamaHash(Buffer.from(key, 'utf8')), key);
      assert.equal(ring.indexFor(key), ring.indexFor(Buffer.from(key, 'utf8')), key);
    }
  });

  test('a non-UTF-8 key is hashed as its raw bytes, not via a lossy string', () => {
    const bytes = Buffer.from([0xff, 0xfe, 0x00, 0x80]);
    assert.equal(ketamaHash(bytes), 3587636670);
    assert.equal(ketamaHash(new Uint8Array(bytes)), 3587636670);
    assert.notEqual(ketamaHash(bytes), ketamaHash(bytes.toString('utf8')));
  });
});

describe('KetamaRing', () => {
  test('refuses an empty node list', () => {
    assert.throws(
      () => new KetamaRing<RingMember>([], (n) => ringNameFor('spymemcached', n)),
      (error: unknown) => isCachewarmError(error, 'INVALID_ARGUMENT'),
    );
  });

  test('refuses two nodes with the same ring name', () => {
    const twice = [
      { host: '10.1.0.1', port: 11211 },
      { host: '10.1.0.1', port: 11211 },
    ];
    assert.throws(
      () => new KetamaRing(twice, (n) => ringNameFor('libmemcached', n)),
      (error: unknown) => isCachewarmError(error, 'TOPOLOGY_INVALID'),
    );
  });

  test('nodeFor returns the member at indexFor', () => {
    const members = RINGS['3ports']!('spymemcached');
    const ring = new KetamaRing(members, (n) => ringNameFor('spymemcached', n));
    for (let i = 0; i < 100; i++) assert.equal(ring.nodeFor(`k${i}`), members[ring.indexFor(`k${i}`)]);
  });

  test('a hash past the last point wraps to the first point', () => {
    const ring = new KetamaRing(RINGS['6nodes']!('spymemcached'), (n) => ringNameFor('spymemcached', n));
    assert.equal(ring.indexForHash(0xffffffff), ring.indexForHash(0));
  });

  test("a hash exactly on a ring point belongs to that point's node", () => {
    const names = ['10.1.0.1:11211', '10.1.0.2:11211'];
    const ring = new KetamaRing(names, (n) => n);
    names.forEach((name, index) => {
      for (let d = 0; d < 40; d++) {
        const digest = createHash('md5').update(`${name}-${d}`).digest();
        for (let h = 0; h < 4; h++) {
          const point = digest.readUInt32LE(h * 4);
          assert.equal(ring.indexForHash(point), index, `${name} point ${d}/${h} (${point})`);
        }
      }
    });
  });

  test('where two nodes share a point, the node added later owns it (spymemcached TreeMap.put)', () => {
    // Found by search: both names yield ring point 3152960057, and "collide:1" hashes to
    // 3138229475, which falls in the gap just below it in a ring of these two nodes.
    const a = '10.0.2.53:11211';
    const b = '10.0.2.161:11211';
    assert.equal(ketamaHash('collide:1'), 3138229475);
    assert.equal(new KetamaRing([a, b], (n) => n).nodeFor('collide:1'), b);
    assert.equal(new KetamaRing([b, a], (n) => n).nodeFor('collide:1'), a);
  });

  test('spreads keys roughly evenly: each of 4 nodes gets 15-35% of 20,000 keys', () => {
    const members = [1, 2, 3, 4].map((n) => ({ host: `10.2.0.${n}`, port: 11211 }));
    const ring = new KetamaRing(members, (n) => ringNameFor('spymemcached', n));
    const counts = [0, 0, 0, 0];
    const total = 20_000;
    for (let i = 0; i < total; i++) counts[ring.indexFor(`item:${i}`)]! += 1;
    for (const [i, count] of counts.entries()) {
      const share = count / total;
      assert.ok(share >= 0.15 && share <= 0.35, `node ${i} got ${(share * 100).toFixed(1)}% (${counts.join(', ')})`);
    }
  });
});
