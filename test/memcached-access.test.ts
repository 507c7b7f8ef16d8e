import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { once } from 'node:events';
import { systemClock, type Clock } from '../shared/clock.js';
import { CachewarmError } from '../shared/errors.js';
import { MemcachedConnection, type Endpoint } from '../shared/memcached/connection.js';
import { stats, version } from '../shared/memcached/commands.js';
import { crawlKeys, crawlModeFor, type KeyBatch } from '../shared/memcached/crawler.js';
import { MetaGetReplies, buildMetaGets, type FetchSink } from '../shared/memcached/meta-get.js';
import { MetaAddReplies, buildMetaAdds, type AddOutcome, type WritableItem } from '../shared/memcached/meta-add.js';
import { freePort, startMemcached, type MemcachedProcess } from './support/memcached.js';
import { allByteValues, patterned } from './support/bytes.js';

const MiB = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Helpers that talk to memcached directly, so that setup and checks do not depend on the code
// under test.
// ---------------------------------------------------------------------------------------------

/** Sends raw bytes on a fresh socket and collects the reply until `done` says it is complete. */
async function raw(port: number, request: Buffer | string, done: (reply: Buffer) => boolean): Promise<Buffer> {
  const socket = connect({ host: '127.0.0.1', port });
  socket.setTimeout(10_000, () => socket.destroy(new Error(`no complete reply to ${String(request).slice(0, 80)}`)));
  try {
    await once(socket, 'connect');
    socket.write(request);
    const chunks: Buffer[] = [];
    let reply = Buffer.alloc(0);
    for await (const chunk of socket) {
      chunks.push(chunk as Buffer);
      reply = Buffer.concat(chunks);
      if (done(reply)) return reply;
    }
    throw new Error(`connection closed after ${JSON.stringify(reply.toString('latin1').slice(-200))}`);
  } finally {
    socket.destroy();
  }
}

const endsWith = (tail: string) => (reply: Buffer) => reply.subarray(-tail.length).toString('latin1') === tail;

interface RawItem {
  /** Bytes of the key; sent base64 with the `b` flag when it holds a space or control byte. */
  key: Buffer;
  value: Buffer;
  flags?: number;
  /** `T` token as memcached takes it: relative seconds or an absolute unix time; absent: none. */
  ttl?: number;
}

/** Stores items with quiet `ms` (set mode), so the only expected reply is the final `MN`. */
async function rawStore(port: number, items: readonly RawItem[]): Promise<void> {
  const parts: Buffer[] = [];
  for (const item of items) {
    const binary = item.key.some((b) => b <= 0x20 || b === 0x7f);
    const key = binary ? Buffer.from(item.key.toString('base64')) : item.key;
    const ttl = item.ttl === undefined ? '' : ` T${item.ttl}`;
    parts.push(Buffer.from('ms '), key, Buffer.from(` ${item.value.length} F${item.flags ?? 0}${ttl}${binary ? ' b' : ''} q\r\n`));
    parts.push(item.value, Buffer.from('\r\n'));
  }
  parts.push(Buffer.from('mn\r\n'));
  const reply = await raw(port, Buffer.concat(parts), endsWith('MN\r\n'));
  assert.equal(reply.toString('latin1'), 'MN\r\n', 'memcached refused some of the setup items');
}

/** Reads one item with a plain `mg <key> v f t` (no `u`), base64 for keys that need it. */
async function rawGet(port: number, key: Buffer): Promise<{ value: Buffer; flags: number; ttl: number } | undefined> {
  const binary = key.some((b) => b <= 0x20 || b === 0x7f);
  const wire = binary ? Buffer.from(key.toString('base64')) : key;
  const request = Buffer.concat([Buffer.from('mg '), wire, Buffer.from(` v f t${binary ? ' b' : ''}\r\n`)]);
  const reply = await raw(port, request, (r) => {
    const lf = r.indexOf(0x0a);
    if (lf < 0) return false;
    if (r.subarray(0, 2).toString() === 'EN') return true;
    const length = Number(/^VA (\d+)/.exec(r.subarray(0, lf).toString('latin1'))?.[1] ?? 0);
    return r.length >= lf + 1 + length + 2;
  });
  const lf = reply.indexOf(0x0a);
  const line = reply.subarray(0, lf - 1).toString('latin1');
  if (line === 'EN') return undefined;
  const m = /^VA (\d+) f(\d+) t(-?\d+)$/.exec(line);
  assert.ok(m, `unexpected mg reply ${JSON.stringify(line)}`);
  return { value: reply.subarray(lf + 1, lf + 1 + Number(m[1])), flags: Number(m[2]), ttl: Number(m[3]) };
}

/** `lru_crawler metadump all` over a raw socket: key (still URI-encoded) → the rest of its line. */
async function rawMetadump(port: number): Promise<Map<string, string>> {
  const reply = await raw(port, 'lru_crawler metadump all\r\n', endsWith('END\r\n'));
  const result = new Map<string, string>();
  for (const line of reply.toString('latin1').split('\n')) {
    const m = /^key=(\S+) (.*)$/.exec(line);
    if (m) result.set(m[1] as string, m[2] as string);
  }
  return result;
}

/**
 * Waits until memcached's LRU maintainer has drained freshly written items from HOT into
 * COLD. Right after a burst of writes it moves them for a second or two, and `metadump all`
 * walks each LRU separately, so an item moved during the walk can be missed: that is a
 * property of live nodes (the dumper's second pass is for it), not of the parsing tested here.
 */
async function waitForSettledLru(port: number): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const reply = (await raw(port, 'stats items\r\n', endsWith('END\r\n'))).toString('latin1');
    const moving = [...reply.matchAll(/^STAT items:\d+:number_(?:hot|warm) (\d+)\r$/gm)].some((m) => m[1] !== '0');
    if (!moving) return;
    if (Date.now() > deadline) throw new Error(`memcached's LRU did not settle:\n${reply}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

function endpoint(server: MemcachedProcess, label?: string): Endpoint {
  return { host: server.host, port: server.port, label };
}

interface Fetched {
  value: Buffer;
  flags: number;
  ttl: number;
}

/** Pipelined `mg` of keys[start, end) through the code under test; undefined marks a miss. */
async function fetchAll(conn: MemcachedConnection, keys: Buffer[]): Promise<(Fetched | undefined)[]> {
  const results = new Array<Fetched | undefined>(keys.length);
  const seen = new Set<number>();
  const sink: FetchSink = {
    hit(index, value, flags, ttlSeconds) {
      assert.ok(!seen.has(index), `index ${index} reported twice`);
      seen.add(index);
      results[index] = { value: Buffer.from(value), flags, ttl: ttlSeconds };
    },
    miss(index) {
      assert.ok(!seen.has(index), `index ${index} reported twice`);
      seen.add(index);
      results[index] = undefined;
    },
  };
  await conn.send(buildMetaGets(keys, 0, keys.length), new MetaGetReplies(keys.length, sink, conn.label));
  assert.equal(seen.size, keys.length, 'every key must be reported once, as a hit or a miss');
  return results;
}

async function addAll(conn: MemcachedConnection, items: WritableItem[]): Promise<AddOutcome> {
  return conn.send(buildMetaAdds(items), new MetaAddReplies(items, conn.label));
}

async function collect(batches: AsyncIterable<KeyBatch>): Promise<KeyBatch[]> {
  const out: KeyBatch[] = [];
  for await (const batch of batches) out.push(batch);
  return out;
}

async function assertRejectsWith(promise: Promise<unknown>, code: string, mentions: string[]): Promise<CachewarmError> {
  let thrown: unknown;
  try {
    await promise;
  } catch (error) {
    thrown = error;
  }
  assert.ok(thrown !== undefined, `expected a ${code} failure, but it succeeded`);
  assert.ok(thrown instanceof CachewarmError, `expected a CachewarmError, got ${String(thrown)}`);
  assert.equal(thrown.code, code, thrown.message);
  for (const text of mentions) assert.ok(thrown.message.includes(text), `message ${JSON.stringify(thrown.message)} does not name ${text}`);
  return thrown;
}

const servers: MemcachedProcess[] = [];
const connections: MemcachedConnection[] = [];

async function server(options: Parameters<typeof startMemcached>[0] = {}): Promise<MemcachedProcess> {
  const started = await startMemcached(options);
  servers.push(started);
  return started;
}

async function open(target: MemcachedProcess, label?: string): Promise<MemcachedConnection> {
  const conn = await MemcachedConnection.connect(endpoint(target, label));
  connections.push(conn);
  return conn;
}

after(async () => {
  for (const conn of connections) conn.close();
  await Promise.all(servers.map((s) => s.stop()));
});

// ---------------------------------------------------------------------------------------------

describe('crawl mode', () => {
  test('servers before 1.6.19 are crawled with `all`, 1.6.19 and later with `hash`', () => {
    assert.equal(crawlModeFor('1.6.18'), 'all');
    assert.equal(crawlModeFor('1.6.9'), 'all');
    assert.equal(crawlModeFor('1.5.22'), 'all');
    assert.equal(crawlModeFor('1.6.19'), 'hash');
    assert.equal(crawlModeFor('1.6.43'), 'hash');
    assert.equal(crawlModeFor('1.7.0'), 'hash');
  });
});

describe('crawler: lru_crawler metadump', () => {
  const KEY_COUNT = 25_000;
  const BATCH = 1_000;
  let node: MemcachedProcess;
  let setAt: number;
  const expected = new Map<string, number>(); // key as hex → expected absolute exptime (0: none)
  const odd: RawItem[] = [
    { key: Buffer.from('a:b/c?d=e&f%20g'), value: Buffer.from('punctuation') },
    { key: Buffer.from('ключ-🔑'), value: Buffer.from('utf8') },
    { key: Buffer.from([0xff, 0xfe]), value: Buffer.from('not utf8') },
    { key: Buffer.from([0x6b, 0xff, 0xfe, 0x25, 0x32, 0x30]), value: Buffer.from('bytes and a literal %20') },
    { key: Buffer.from('has space'), value: Buffer.from('base64 key') },
    { key: Buffer.from('~-._AZaz09'), value: Buffer.from('unreserved') },
  ];

  before(async () => {
    node = await server({ memoryMb: 64 });
    setAt = nowSeconds();
    const absolute = setAt + 86_400;
    const items: RawItem[] = [];
    for (let i = 0; i < KEY_COUNT; i++) {
      const key = Buffer.from(`key:${String(i).padStart(5, '0')}`);
      const kind = i % 3;
      const ttl = kind === 0 ? undefined : kind === 1 ? 3_600 : absolute;
      items.push({ key, value: Buffer.from(`v${i}`), ttl });
      expected.set(key.toString('hex'), kind === 0 ? 0 : kind === 1 ? setAt + 3_600 : absolute);
    }
    for (const item of odd) {
      items.push(item);
      expected.set(item.key.toString('hex'), 0);
    }
    await rawStore(node.port, items);
    await waitForSettledLru(node.port);
  });

  test('lists every key of the node once, in full batches of at most batchKeys', async () => {
    const conn = await open(node);
    const batches = await collect(crawlKeys(conn, { batchKeys: BATCH, clock: systemClock }));
    const total = KEY_COUNT + odd.length;
    const listed = batches.flatMap((b) => b.keys.map((k) => k.toString('hex')));
    const listedSet = new Set(listed);
    const missing = [...expected.keys()].filter((k) => !listedSet.has(k)).map((k) => Buffer.from(k, 'hex').toString('latin1'));
    assert.deepEqual(missing, [], 'keys not listed');
    assert.equal(listedSet.size, total, 'distinct keys listed');
    assert.equal(listed.length, total, 'keys listed (an idle node lists each key once)');
    for (const [i, batch] of batches.entries()) {
      assert.equal(batch.keys.length, batch.exptimes.length, `batch ${i}: exptimes per key`);
      assert.equal(batch.keys.length, batch.sizes.length, `batch ${i}: sizes per key`);
      assert.ok(batch.keys.length > 0, `batch ${i} is empty`);
      assert.ok(batch.keys.length <= BATCH, `batch ${i} holds ${batch.keys.length} keys, more than batchKeys ${BATCH}`);
      if (i < batches.length - 1) assert.equal(batch.keys.length, BATCH, `batch ${i} was handed over before it was full`);
    }
    assert.equal(batches.length, Math.ceil(total / BATCH));
    // The connection is usable again after the dump.
    assert.match(await version(conn), /^1\.6\./);
  });

  test('keys the skip predicate turns down, shown still percent-encoded, are never decoded or listed', async () => {
    const conn = await open(node);
    const seen: string[] = [];
    const skip = (line: Buffer, start: number, end: number): boolean => {
      const encoded = line.toString('latin1', start, end);
      seen.push(encoded);
      return encoded.endsWith('7');
    };
    // `hash` walks the hash table and misses nothing; an `all` walk can miss keys moving between LRUs.
    const batches = await collect(crawlKeys(conn, { batchKeys: BATCH, clock: systemClock, mode: 'hash', skip }));
    const listed = batches.flatMap((b) => b.keys.map((k) => encodeURIComponent(k.toString('latin1'))));
    assert.equal(seen.length, KEY_COUNT + odd.length, 'the predicate saw every key');
    assert.ok(seen.some((k) => k.includes('%3A')), 'as the crawler encodes them');
    assert.ok(listed.length > 0 && listed.length < seen.length);
    assert.equal(listed.filter((k) => k.endsWith('7')).length, 0, 'no skipped key listed');
    assert.equal(listed.length, seen.filter((k) => !k.endsWith('7')).length, 'every other key listed');
  });

  test('reports each key\'s absolute expiry (0 for none) and its size', async () => {
    const conn = await open(node);
    let checked = 0;
    for await (const batch of crawlKeys(conn, { batchKeys: 4_096, clock: systemClock, mode: 'all' })) {
      batch.keys.forEach((key, i) => {
        const want = expected.get(key.toString('hex'));
        assert.ok(want !== undefined, `unexpected key ${key.toString('hex')}`);
        const got = batch.exptimes[i] as number;
        if (want === 0) assert.equal(got, 0, `${key.toString('latin1')}: no expiry`);
        else assert.ok(Math.abs(got - want) <= 1, `${key.toString('latin1')}: exptime ${got}, expected ${want} ±1`);
        assert.ok((batch.sizes[i] as number) > key.length, `${key.toString('latin1')}: size ${batch.sizes[i]}`);
        checked++;
      });
    }
    assert.equal(checked, KEY_COUNT + odd.length);
  });

  test('URI-decodes keys to their exact bytes: punctuation, UTF-8, invalid UTF-8, spaces', async () => {
    const conn = await open(node);
    const listed = new Set<string>();
    for await (const batch of crawlKeys(conn, { batchKeys: 10_000, clock: systemClock, mode: 'all' })) {
      for (const key of batch.keys) listed.add(key.toString('hex'));
    }
    for (const item of odd) {
      assert.ok(listed.has(item.key.toString('hex')), `key ${JSON.stringify(item.key.toString('latin1'))} (${item.key.toString('hex')}) not listed exactly`);
    }
    // memcached did encode them (so the decoding is really exercised).
    const dump = await rawMetadump(node.port);
    assert.ok(dump.has('a%3Ab%2Fc%3Fd%3De%26f%2520g'));
    assert.ok(dump.has('%FF%FE'));
    assert.ok(dump.has('has%20space'));
  });

  test('two crawls at once: the second gets BUSY and retries until the first is done; both list every key', async () => {
    const first = await open(node, 'first');
    const second = await open(node, 'second');
    let busySleeps = 0;
    const countingClock: Clock = {
      now: () => systemClock.now(),
      sleep(ms, signal) {
        busySleeps++;
        return systemClock.sleep(ms, signal);
      },
    };
    const total = KEY_COUNT + odd.length;
    // The first crawl takes a small batch and holds on to the generator: memcached's crawler
    // blocks on the full socket and stays busy.
    const firstCrawl = crawlKeys(first, { batchKeys: 100, clock: systemClock, mode: 'all' });
    const firstKeys = new Set<string>();
    const head = await firstCrawl.next();
    assert.equal(head.done, false);
    for (const key of (head.value as KeyBatch).keys) firstKeys.add(key.toString('hex'));

    // With `mode` given, the dump request is written before crawlKeys first awaits.
    const secondKeys = new Set<string>();
    const secondDone = (async () => {
      for await (const batch of crawlKeys(second, { batchKeys: 5_000, clock: countingClock, mode: 'all', busyRetryMs: 30_000 })) {
        for (const key of batch.keys) secondKeys.add(key.toString('hex'));
      }
    })();
    for (let i = 0; i < 5; i++) await new Promise<void>((resolve) => setImmediate(resolve));

    for (;;) {
      const next = await firstCrawl.next();
      if (next.done) break;
      for (const key of next.value.keys) firstKeys.add(key.toString('hex'));
    }
    await secondDone;
    assert.equal(firstKeys.size, total, 'the first crawl listed every key');
    assert.equal(secondKeys.size, total, 'the second crawl listed every key');
    assert.ok(busySleeps >= 1, 'the second crawl never saw BUSY, so the test did not run two crawls at once');
  });
});

describe('meta get: pipelined mg v f t u', () => {
  let node: MemcachedProcess;
  let conn: MemcachedConnection;
  const absolute = nowSeconds() + 7_200;
  const big = patterned(MiB, 11);
  const stored: RawItem[] = [
    { key: Buffer.from('plain'), value: Buffer.from('hello'), flags: 0 },
    { key: Buffer.from('maxflags'), value: Buffer.from('flags'), flags: 4_294_967_295, ttl: absolute },
    { key: Buffer.from('empty'), value: Buffer.alloc(0), flags: 3 },
    { key: Buffer.from('bytes'), value: allByteValues(), flags: 256 },
    { key: Buffer.from('crlf-inside'), value: Buffer.from('a\r\nVA 3 f1 t-1\r\nEN\r\nb'), flags: 1 },
    { key: Buffer.from('big'), value: big, flags: 77, ttl: 900 },
    { key: Buffer.from('has space'), value: Buffer.from('spaced'), flags: 5 },
    { key: Buffer.from([0xff, 0xfe]), value: Buffer.from('binary key'), flags: 6 },
  ];

  before(async () => {
    node = await server({ memoryMb: 64, extraArgs: ['-I', '2m'] });
    await rawStore(node.port, stored);
    conn = await open(node, 'source/mg');
  });

  test('returns value, flags and ttl for each key, and a miss for a missing key', async () => {
    const keys = [...stored.map((s) => s.key), Buffer.from('missing'), Buffer.from('plain')];
    const now = nowSeconds();
    const results = await fetchAll(conn, keys);
    stored.forEach((item, i) => {
      const got = results[i];
      assert.ok(got, `${item.key.toString('latin1')}: reported as a miss`);
      assert.equal(got.value.length, item.value.length, `${item.key.toString('latin1')}: value length`);
      assert.ok(got.value.equals(item.value), `${item.key.toString('latin1')}: value bytes`);
      assert.equal(got.flags, item.flags, `${item.key.toString('latin1')}: flags`);
      if (item.ttl === undefined) assert.equal(got.ttl, -1, `${item.key.toString('latin1')}: no expiry`);
      else {
        const want = item.ttl > 30 * 86_400 ? item.ttl - now : item.ttl;
        assert.ok(Math.abs(got.ttl - want) <= 1, `${item.key.toString('latin1')}: ttl ${got.ttl}, expected ${want} ±1`);
      }
    });
    assert.equal(results[stored.length], undefined, 'a missing key is a miss');
    assert.ok(results[stored.length + 1]?.value.equals(Buffer.from('hello')), 'a key after the miss');
  });

  test('a 1 MiB value arrives whole, also between small ones', async () => {
    const keys = [Buffer.from('plain'), Buffer.from('big'), Buffer.from('empty'), Buffer.from('big'), Buffer.from('bytes')];
    const results = await fetchAll(conn, keys);
    assert.equal(results[1]?.value.length, MiB);
    assert.ok(results[1]?.value.equals(big), 'first copy of the big value');
    assert.ok(results[3]?.value.equals(big), 'second copy of the big value');
    assert.ok(results[0]?.value.equals(Buffer.from('hello')));
    assert.equal(results[2]?.value.length, 0);
    assert.ok(results[4]?.value.equals(allByteValues()));
  });

  test('an empty batch resolves at once and leaves the connection in step', async () => {
    const reply = new MetaGetReplies(0, { hit: () => assert.fail('hit'), miss: () => assert.fail('miss') }, conn.label);
    await reply.promise;
    const results = await fetchAll(conn, [Buffer.from('plain')]);
    assert.ok(results[0]?.value.equals(Buffer.from('hello')));
  });

  test('many batches pipelined on one connection each get their own replies, in order', async () => {
    const pipeConn = await open(node, 'source/pipeline');
    const count = 2_000;
    const items: RawItem[] = [];
    for (let i = 0; i < count; i++) items.push({ key: Buffer.from(`pipe-${i}`), value: Buffer.from(`value-${i}-${'x'.repeat(i % 97)}`), flags: i });
    await rawStore(node.port, items);
    // Mix in misses and the big value so batches end in the middle of socket reads.
    const keys: Buffer[] = [];
    for (let i = 0; i < count; i++) {
      keys.push(items[i]!.key);
      if (i % 50 === 0) keys.push(Buffer.from(`pipe-missing-${i}`));
      if (i % 400 === 0) keys.push(Buffer.from('big'));
    }
    const results: (string | undefined)[][] = [];
    const promises: Promise<void>[] = [];
    const batchSize = 37;
    for (let start = 0, batch = 0; start < keys.length; start += batchSize, batch++) {
      const end = Math.min(keys.length, start + batchSize);
      const mine: (string | undefined)[] = new Array(end - start).fill('unset');
      results.push(mine);
      const reply = new MetaGetReplies(
        end - start,
        {
          hit(index, value, flags) {
            mine[index] = value.length === MiB ? `big:${flags}` : `${value.toString()}:${flags}`;
          },
          miss(index) {
            mine[index] = undefined;
          },
        },
        pipeConn.label,
      );
      await pipeConn.enqueue(buildMetaGets(keys, start, end), reply);
      promises.push(reply.promise);
    }
    await Promise.all(promises);
    const flat = results.flat();
    assert.equal(flat.length, keys.length);
    keys.forEach((key, i) => {
      const name = key.toString();
      const want = name === 'big' ? 'big:77' : name.startsWith('pipe-missing-') ? undefined : `value-${name.slice(5)}-${'x'.repeat(Number(name.slice(5)) % 97)}:${name.slice(5)}`;
      assert.equal(flat[i], want, `reply ${i} (${name})`);
    });
  });

  test('mg with `u` leaves items unfetched in the LRU, where a plain get marks them', async () => {
    const keys = [Buffer.from('plain'), Buffer.from('maxflags'), Buffer.from('empty'), Buffer.from('has space'), Buffer.from([0xff, 0xfe])];
    // Fetched several times already by the tests above, and once more here.
    const results = await fetchAll(conn, keys);
    assert.ok(results.every((r) => r !== undefined));
    const dump = await rawMetadump(node.port);
    for (const encoded of ['plain', 'maxflags', 'empty', 'has%20space', '%FF%FE', 'big', 'bytes']) {
      const line = dump.get(encoded);
      assert.ok(line, `${encoded} missing from metadump`);
      assert.match(line, /\bfetch=no\b/, `${encoded} was marked fetched by mg ... u: ${line}`);
    }
    // The check can fail: a client's plain get does mark the item.
    const reply = await raw(node.port, 'get plain\r\n', endsWith('END\r\n'));
    assert.equal(reply.toString(), 'VALUE plain 0 5\r\nhello\r\nEND\r\n');
    assert.match((await rawMetadump(node.port)).get('plain') ?? '', /\bfetch=yes\b/);
    assert.match((await rawMetadump(node.port)).get('empty') ?? '', /\bfetch=no\b/);
  });
});

describe('meta add: pipelined ms ... ME', () => {
  let node: MemcachedProcess;
  let conn: MemcachedConnection;

  before(async () => {
    node = await server({ memoryMb: 64, extraArgs: ['-I', '2m'] });
    conn = await open(node, 'target/ms');
  });

  test('stores new keys with exact values, flags and absolute expiry', async () => {
    const now = nowSeconds();
    const items: WritableItem[] = [
      { key: Buffer.from('new-none'), value: Buffer.from('v1'), flags: 0, exptime: 0 },
      { key: Buffer.from('new-max'), value: allByteValues(), flags: 4_294_967_295, exptime: now + 5_000 },
      { key: Buffer.from('new-empty'), value: Buffer.alloc(0), flags: 12_345, exptime: now + 40 * 86_400 },
      { key: Buffer.from('new-big'), value: patterned(MiB, 4), flags: 1, exptime: now + 100 },
    ];
    const outcome = await addAll(conn, items);
    assert.deepEqual(outcome, { stored: items.length, existed: 0, refused: [] });
    const readAt = nowSeconds();
    for (const item of items) {
      const got = await rawGet(node.port, item.key);
      assert.ok(got, `${item.key.toString()} was not stored`);
      assert.ok(got.value.equals(item.value), `${item.key.toString()}: value`);
      assert.equal(got.flags, item.flags, `${item.key.toString()}: flags`);
      if (item.exptime === 0) assert.equal(got.ttl, -1, `${item.key.toString()}: no expiry`);
      else assert.ok(Math.abs(got.ttl - (item.exptime - readAt)) <= 1, `${item.key.toString()}: ttl ${got.ttl} for exptime ${item.exptime} at ${readAt}`);
    }
    // The exptime memcached holds is the absolute time given, not one relative to now.
    const dump = await rawMetadump(node.port);
    assert.match(dump.get('new-max') ?? '', new RegExp(`\\bexp=${items[1]!.exptime}\\b`));
    assert.match(dump.get('new-empty') ?? '', new RegExp(`\\bexp=${items[2]!.exptime}\\b`));
    assert.match(dump.get('new-none') ?? '', /\bexp=-1\b/);
  });

  test('never overwrites a key the target already holds, and counts it as existed', async () => {
    await rawStore(node.port, [{ key: Buffer.from('live'), value: Buffer.from('written by traffic'), flags: 9 }]);
    const outcome = await addAll(conn, [
      { key: Buffer.from('fresh-1'), value: Buffer.from('a'), flags: 0, exptime: 0 },
      { key: Buffer.from('live'), value: Buffer.from('stale copy'), flags: 1, exptime: nowSeconds() + 60 },
      { key: Buffer.from('fresh-2'), value: Buffer.from('b'), flags: 0, exptime: 0 },
    ]);
    assert.deepEqual(outcome, { stored: 2, existed: 1, refused: [] });
    const live = await rawGet(node.port, Buffer.from('live'));
    assert.deepEqual(live && { value: live.value.toString(), flags: live.flags, ttl: live.ttl }, { value: 'written by traffic', flags: 9, ttl: -1 });
    // Adding the same batch again stores nothing.
    const again = await addAll(conn, [
      { key: Buffer.from('fresh-1'), value: Buffer.from('changed'), flags: 0, exptime: 0 },
      { key: Buffer.from('fresh-2'), value: Buffer.from('changed'), flags: 0, exptime: 0 },
    ]);
    assert.deepEqual(again, { stored: 0, existed: 2, refused: [] });
    assert.equal((await rawGet(node.port, Buffer.from('fresh-1')))?.value.toString(), 'a');
  });

  test('a value too large for the server fails with its SERVER_ERROR; later items in the pipeline still store', async () => {
    const items: WritableItem[] = [
      { key: Buffer.from('before-big'), value: Buffer.from('1'), flags: 0, exptime: 0 },
      { key: Buffer.from('too-big'), value: Buffer.alloc(3 * MiB, 0x61), flags: 0, exptime: 0 },
      { key: Buffer.from('after-big'), value: Buffer.from('2'), flags: 0, exptime: 0 },
      { key: Buffer.from('after-big-2'), value: Buffer.from('3'), flags: 0, exptime: 0 },
    ];
    const outcome = await addAll(conn, items);
    assert.equal(outcome.stored, 3);
    assert.equal(outcome.existed, 0);
    assert.deepEqual(
      outcome.refused.map((r) => [r.item.key.toString(), r.reason, r.message]),
      [['too-big', 'tooLarge', 'SERVER_ERROR object too large for cache']],
    );
    assert.equal(await rawGet(node.port, Buffer.from('too-big')), undefined);
    assert.equal((await rawGet(node.port, Buffer.from('after-big')))?.value.toString(), '2');
    assert.equal((await rawGet(node.port, Buffer.from('after-big-2')))?.value.toString(), '3');
    // The connection is still in step.
    assert.deepEqual(await addAll(conn, [{ key: Buffer.from('after-big-3'), value: Buffer.from('4'), flags: 0, exptime: 0 }]), {
      stored: 1,
      existed: 0,
      refused: [],
    });
  });

  test('an absolute expiry already in the past leaves nothing readable', async () => {
    const now = nowSeconds();
    const items: WritableItem[] = [
      { key: Buffer.from('past-recent'), value: Buffer.from('x'), flags: 0, exptime: now - 5 },
      { key: Buffer.from('past-old'), value: Buffer.from('y'), flags: 0, exptime: 1_000_000_000 },
      { key: Buffer.from('future'), value: Buffer.from('z'), flags: 0, exptime: now + 600 },
    ];
    await addAll(conn, items);
    assert.equal(await rawGet(node.port, Buffer.from('past-recent')), undefined);
    assert.equal(await rawGet(node.port, Buffer.from('past-old')), undefined);
    assert.equal((await rawGet(node.port, Buffer.from('future')))?.value.toString(), 'z');
  });

  test('keys with spaces and control bytes go base64 and round-trip byte for byte', async () => {
    const keys = [
      Buffer.from('with space'),
      Buffer.from('tab\there'),
      Buffer.from('line\r\nbreak'),
      Buffer.from([0x00, 0x01, 0x7f]),
      Buffer.from([0x20]),
      Buffer.from(' ключ 🔑 '),
    ];
    const items = keys.map((key, i): WritableItem => ({ key, value: Buffer.from(`spaced-${i}`), flags: i, exptime: 0 }));
    assert.deepEqual(await addAll(conn, items), { stored: keys.length, existed: 0, refused: [] });
    // Read back through the code under test and independently.
    const results = await fetchAll(conn, keys);
    keys.forEach((key, i) => {
      assert.equal(results[i]?.value.toString(), `spaced-${i}`, `key ${key.toString('hex')} via mg`);
      assert.equal(results[i]?.flags, i);
    });
    for (const [i, key] of keys.entries()) assert.equal((await rawGet(node.port, key))?.value.toString(), `spaced-${i}`);
    // Stored under the key's bytes, not under its base64 text.
    const dump = await rawMetadump(node.port);
    assert.ok(dump.has('with%20space'), 'the key memcached holds is the decoded one');
    assert.ok(dump.has('%00%01%7F'));
    // A second add of the same keys finds them.
    assert.deepEqual(await addAll(conn, items), { stored: 0, existed: keys.length, refused: [] });
  });

  test('an empty batch resolves at once', async () => {
    assert.deepEqual(await new MetaAddReplies([], conn.label).promise, { stored: 0, existed: 0, refused: [] });
    assert.equal(buildMetaAdds([]).length, 0);
  });
});

describe('connections and errors', () => {
  test('connecting to a port nothing listens on fails with NODE_UNREACHABLE naming the node', async () => {
    const port = await freePort();
    await assertRejectsWith(MemcachedConnection.connect({ host: '127.0.0.1', port }), 'NODE_UNREACHABLE', [`127.0.0.1:${port}`]);
    const error = await assertRejectsWith(
      MemcachedConnection.connect({ host: '127.0.0.1', port, label: 'zone-b/cache-7' }),
      'NODE_UNREACHABLE',
      ['zone-b/cache-7'],
    );
    assert.equal(error.context['node'], 'zone-b/cache-7');
  });

  test('a server killed mid-request fails the pending reply with NODE_UNREACHABLE naming the node', async () => {
    const doomed = await server();
    const conn = await open(doomed, 'zone-c/doomed');
    assert.match(await version(conn), /^1\.6\./);
    // A value memcached is still waiting for the end of: the reply stays pending.
    const pending = assertRejectsWith(
      conn.send(Buffer.from('ms somekey 100 ME\r\nonly part of the value'), new MetaAddReplies([{ key: Buffer.from('somekey'), value: Buffer.alloc(100), flags: 0, exptime: 0 }], conn.label)),
      'NODE_UNREACHABLE',
      ['zone-c/doomed'],
    );
    // And a reply queued behind it.
    const queued = new MetaGetReplies(1, { hit() {}, miss() {} }, conn.label);
    await conn.enqueue(Buffer.from('mg other v\r\n'), queued);
    await doomed.kill();
    await pending;
    await assertRejectsWith(queued.promise, 'NODE_UNREACHABLE', ['zone-c/doomed']);
    assert.equal(conn.closed, true);
    // Later requests fail the same way instead of hanging.
    await assertRejectsWith(version(conn), 'NODE_UNREACHABLE', ['zone-c/doomed']);
  });

  test('stats() returns curr_items and the server pid', async () => {
    const node = await server();
    await rawStore(node.port, [
      { key: Buffer.from('s1'), value: Buffer.from('1') },
      { key: Buffer.from('s2'), value: Buffer.from('2') },
      { key: Buffer.from('s3'), value: Buffer.from('3') },
    ]);
    const conn = await open(node);
    const result = await stats(conn);
    assert.equal(result.get('pid'), String(node.pid));
    assert.equal(result.get('curr_items'), '3');
    assert.match(result.get('version') ?? '', /^1\.6\./);
    // A stats group is asked for by name.
    assert.match((await stats(conn, 'settings')).get('maxconns') ?? '', /^\d+$/);
  });
});
