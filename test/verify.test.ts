import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, test } from 'node:test';
import { Command } from 'commander';
import { formatVerifyReport, registerVerifyCommand, verifyReportText } from '../bin/verify-command.js';
import { targetRingOf } from '../controller/warm-plan.js';
import { type VerifyReplicasOptions, type VerifyReport, verifyReplicas } from '../controller/verify-replicas.js';
import { ringOfTarget } from '../populator/write-to-ring.js';
import { systemClock } from '../shared/clock.js';
import { CachewarmError } from '../shared/errors.js';
import { OneLine, stats } from '../shared/memcached/commands.js';
import { type Connect, connectDirect } from '../shared/memcached/connect.js';
import { MemcachedConnection, type Reply } from '../shared/memcached/connection.js';
import { keyToken } from '../shared/memcached/ascii.js';
import { isRawSafeKey } from '../shared/memcached/keys.js';
import type { WritableItem } from '../shared/memcached/meta-add.js';
import { sampleItems } from '../shared/sample-items.js';
import { type NodeSpec, type Topology, parseTopology } from '../shared/topology.js';
import { type Cluster, load, nowSeconds, withCluster } from './support/cluster.js';

// Every test is bounded: a hung read fails it instead of hanging the suite.
const BOUNDED = { timeout: 120_000 };

type Server = { readonly host: string; readonly port: number; readonly address: string };

function verify(cluster: Cluster, overrides: Partial<VerifyReplicasOptions> = {}): Promise<VerifyReport> {
  return verifyReplicas({ topology: cluster.topology, source: 'a', target: 'b', sample: 'all', connect: connectDirect, clock: systemClock, ...overrides });
}

const nodesOf = (topology: Topology, replica: string): readonly NodeSpec[] => topology.replicas.get(replica)?.nodes ?? [];

/** The server the replica's ring names for a key: where its clients read and write it. */
function ownerOf(cluster: Cluster, replica: string, key: Buffer): Server {
  const address = ringOfTarget(targetRingOf(cluster.topology, replica)).nodeFor(key).address;
  const server = cluster.servers[replica]?.find((s) => s.address === address);
  assert.ok(server, `no server at ${address}`);
  return server;
}

/** Keys that need base64 on the wire, and other awkward ones: they must be checked like any other. */
function awkwardItems(now: number): WritableItem[] {
  return [
    { key: Buffer.from('with space\tand tab'), value: Buffer.from('base64 on the wire'), flags: 5, exptime: now + 3_600 },
    { key: Buffer.from([0x6b, 0xff, 0xfe, 0xc3, 0x28]), value: Buffer.from('invalid utf8'), flags: 4, exptime: 0 },
    { key: Buffer.from('ключ-🔑-キー'), value: Buffer.from('utf8'), flags: 3, exptime: now + 600 },
    { key: Buffer.alloc(250, 0x78), value: Buffer.from('longest key'), flags: 6, exptime: 0 },
    { key: Buffer.from('empty-value'), value: Buffer.alloc(0), flags: 0xffffffff, exptime: now + 86_400 },
  ];
}

/** Sends pipelined one-line commands to a server; returns each reply line. */
async function commands(server: { host: number | string; port: number }, requests: readonly Buffer[]): Promise<string[]> {
  const conn = await MemcachedConnection.connect({ host: String(server.host), port: server.port });
  try {
    return await Promise.all(requests.map((request) => conn.send(request, new OneLine())));
  } finally {
    conn.close();
  }
}

/** Overwrites items on a server (`ms ... MS`, a plain set): what a client's later write does. */
async function setOn(server: Server, items: readonly WritableItem[]): Promise<void> {
  const replies = await commands(
    server,
    items.map((item) => {
      const raw = isRawSafeKey(item.key);
      const head = `ms ${keyToken(item.key, raw).toString('latin1')} ${item.value.length} MS F${item.flags >>> 0}${item.exptime > 0 ? ` T${item.exptime}` : ''}${raw ? '' : ' b'}\r\n`;
      return Buffer.concat([Buffer.from(head, 'latin1'), item.value, Buffer.from('\r\n')]);
    }),
  );
  assert.deepEqual(replies, items.map(() => 'HD'));
}

async function deleteOn(server: Server, keys: readonly Buffer[]): Promise<void> {
  const replies = await commands(
    server,
    keys.map((key) => {
      const raw = isRawSafeKey(key);
      return Buffer.from(`md ${keyToken(key, raw).toString('latin1')}${raw ? '' : ' b'}\r\n`, 'latin1');
    }),
  );
  assert.deepEqual(replies, keys.map(() => 'HD'));
}

/** Sets items on the node a replica's ring names for each. */
async function setInReplica(cluster: Cluster, replica: string, items: readonly WritableItem[]): Promise<void> {
  for (const item of items) await setOn(ownerOf(cluster, replica, item.key), [item]);
}

async function deleteInReplica(cluster: Cluster, replica: string, keys: readonly Buffer[]): Promise<void> {
  for (const key of keys) await deleteOn(ownerOf(cluster, replica, key), [key]);
}

/**
 * Waits until the LRU maintainer has moved freshly written items out of HOT and WARM: the
 * crawler of memcached < 1.6.19 (`metadump all`) walks each LRU apart and can list an item
 * moving between them twice, which would make exact counts flaky. Bounded.
 */
async function settle(servers: readonly Server[]): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (const server of servers) {
    const conn = await MemcachedConnection.connect(server);
    try {
      for (;;) {
        const items = await stats(conn, 'items');
        const moving = [...items].some(([name, value]) => /:number_(?:hot|warm)$/.test(name) && value !== '0');
        if (!moving) break;
        assert.ok(Date.now() < deadline, `${server.address}: LRU still moving items after 20 s`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    } finally {
      conn.close();
    }
  }
}

/** `lru_crawler metadump all` over a raw socket: every item's line (key still URI-encoded). */
function metadump(server: Server): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = net.connect(server, () => socket.write('lru_crawler metadump all\r\n'));
    const timer = setTimeout(() => socket.destroy(new Error(`${server.address}: metadump not finished in 20 s`)), 20_000);
    socket.on('data', (data: Buffer) => {
      chunks.push(data);
      const text = Buffer.concat(chunks).toString('latin1');
      if (text.endsWith('END\r\n')) {
        clearTimeout(timer);
        socket.destroy();
        resolve(text.split('\n').filter((line) => line.startsWith('key=')));
      }
    });
    socket.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}

/** Items per target node id, by the target ring. */
function shareOf(cluster: Cluster, keys: readonly Buffer[]): Map<string, number> {
  const ring = ringOfTarget(targetRingOf(cluster.topology, 'b'));
  const ids = new Map(nodesOf(cluster.topology, 'b').map((n) => [n.address, n.id] as const));
  const share = new Map<string, number>();
  for (const key of keys) {
    const id = ids.get(ring.nodeFor(key).address) as string;
    share.set(id, (share.get(id) ?? 0) + 1);
  }
  return share;
}

const counts = (r: VerifyReport): Record<string, number> => ({
  checked: r.checked,
  identical: r.identical,
  missing: r.missing,
  different: r.different,
  newerInTarget: r.newerInTarget,
  expired: r.expired,
  goneFromSource: r.goneFromSource,
});

describe('cachewarm verify: a target replica compared with its source as clients see them', () => {
  test('identical replicas: every key checked once, all identical, ok; the report prints as text and as JSON', BOUNDED, async () => {
    await withCluster({ a: 3, b: 4 }, async (cluster) => {
      const now = nowSeconds();
      const items = [...sampleItems({ count: 3_000, valueBytes: 100, nowSeconds: now }), ...awkwardItems(now)];
      await load(cluster.topology, 'a', items);
      await load(cluster.topology, 'b', items);
      await settle(cluster.servers['a'] ?? []);

      const report = await verify(cluster);

      const n = items.length;
      assert.deepEqual(counts(report), { checked: n, identical: n, missing: 0, different: 0, newerInTarget: 0, expired: 0, goneFromSource: 0 });
      assert.equal(report.ok, true);
      assert.equal(report.sampled, false);
      assert.equal(report.listed, n);
      assert.equal(report.strays, 0);
      assert.deepEqual(report.examples, []);
      assert.equal(report.source, 'a');
      assert.equal(report.target, 'b');
      assert.equal(report.node, undefined);
      // Per target node: exactly the keys the target ring gives it.
      const share = shareOf(cluster, items.map((i) => i.key));
      assert.deepEqual(
        report.perNode.map((p) => [p.node, p.checked, p.identical]),
        nodesOf(cluster.topology, 'b').map((node) => [node.id, share.get(node.id) ?? 0, share.get(node.id) ?? 0]),
      );
      assert.ok(report.keysPerSecond > 0 && report.durationMs >= 0);

      assert.deepEqual(JSON.parse(formatVerifyReport(report, { json: true })), JSON.parse(JSON.stringify(report)));
      const text = verifyReportText(report);
      assert.match(text, /^verify a -> b \(every key\): OK$/m);
      assert.match(text, new RegExp(`identical ${n.toLocaleString('en-US')}, missing 0, different 0, newer in target 0, expired 0`));
      assert.match(text, /keys checked/);
      for (const node of nodesOf(cluster.topology, 'b')) assert.ok(text.includes(node.id), `${node.id} in the text report`);
    });
  });

  test('a target that lost N keys: exactly N missing, not ok, examples name the key and both nodes', BOUNDED, async () => {
    await withCluster({ a: 2, b: 3 }, async (cluster) => {
      const now = nowSeconds();
      const items = [...sampleItems({ count: 2_000, valueBytes: 64, nowSeconds: now }), ...awkwardItems(now)];
      await load(cluster.topology, 'a', items);
      await load(cluster.topology, 'b', items);
      const lost = items.filter((_, i) => i % 97 === 5).map((i) => i.key);
      await deleteInReplica(cluster, 'b', lost);
      await settle(cluster.servers['a'] ?? []);

      const report = await verify(cluster);

      assert.deepEqual(counts(report), {
        checked: items.length,
        identical: items.length - lost.length,
        missing: lost.length,
        different: 0,
        newerInTarget: 0,
        expired: 0,
        goneFromSource: 0,
      });
      assert.equal(report.ok, false);
      assert.equal(report.examples.length, 10, 'at most 10 examples');
      for (const example of report.examples) {
        assert.match(example, /^missing: key \S+ is on a\/127\.0\.0\.1:\d+, not on b\/127\.0\.0\.1:\d+$/);
      }
      const share = shareOf(cluster, lost);
      for (const p of report.perNode) assert.equal(p.missing, share.get(p.node) ?? 0, `missing on ${p.node}`);
      assert.match(verifyReportText(report), /: NOT OK$/m);
    });
  });

  test('the other way (reverse): keys the source deleted and the target still holds are found only in the target, not ok', BOUNDED, async () => {
    await withCluster({ a: 2, b: 3 }, async (cluster) => {
      const now = nowSeconds();
      const items = [...sampleItems({ count: 2_000, valueBytes: 64, nowSeconds: now, seed: 'reverse' }), ...awkwardItems(now)];
      await load(cluster.topology, 'a', items);
      await load(cluster.topology, 'b', items);
      const resurrected = items.filter((_, i) => i % 89 === 7).map((i) => i.key);
      await deleteInReplica(cluster, 'a', resurrected);
      await settle(cluster.servers['b'] ?? []);

      const report = await verify(cluster, { reverse: true });
      assert.deepEqual(report.reverse, { listed: items.length, checked: items.length, notInSource: resurrected.length });
      assert.equal(report.missing, 0);
      assert.equal(report.ok, false, 'a key resurrected in the target is a wrong copy');
      for (const example of report.examples) assert.match(example, /^only in the target: key \S+ is on b\/127\.0\.0\.1:\d+, not on a\/127\.0\.0\.1:\d+$/);
      assert.match(verifyReportText(report), new RegExp(`${resurrected.length} only in the target`));

      const sampled = await verify(cluster, { reverse: true, sample: 100 });
      assert.equal(sampled.reverse?.checked, 300, 'a sample of 100 keys per target node');
      const node = nodesOf(cluster.topology, 'b')[0] as NodeSpec;
      const onOne = await verify(cluster, { reverse: true, node });
      const owned = resurrected.filter((key) => ownerOf(cluster, 'b', key).address === node.address);
      assert.equal(onOne.reverse?.notInSource, owned.length, `only ${node.id}'s keys`);

      // Not asked for: nothing listed the other way, and the copy itself is as good as before.
      const forward = await verify(cluster);
      assert.equal(forward.reverse, undefined);
      assert.equal(forward.ok, true);
    });
  });

  test('a changed value (same TTL) or changed flags is different; a non-printable key is shown in hex', BOUNDED, async () => {
    await withCluster({ a: 2, b: 2 }, async (cluster) => {
      const now = nowSeconds();
      const items = [...sampleItems({ count: 1_000, valueBytes: 64, nowSeconds: now }), ...awkwardItems(now)];
      await load(cluster.topology, 'a', items);
      await load(cluster.topology, 'b', items);
      const spaced = items.find((i) => i.key.toString() === 'with space\tand tab') as WritableItem;
      const changedValue = [spaced, ...items.slice(10, 14)].map((i) => ({ ...i, value: Buffer.from(`changed:${i.key.toString('hex')}`) }));
      const changedFlags = items.slice(20, 23).map((i) => ({ ...i, flags: (i.flags + 1) >>> 0 }));
      await setInReplica(cluster, 'b', [...changedValue, ...changedFlags]);
      await settle(cluster.servers['a'] ?? []);

      const report = await verify(cluster);

      const differ = changedValue.length + changedFlags.length;
      assert.deepEqual(counts(report), { checked: items.length, identical: items.length - differ, missing: 0, different: differ, newerInTarget: 0, expired: 0, goneFromSource: 0 });
      assert.equal(report.ok, false);
      assert.equal(report.examples.length, differ);
      assert.ok(
        report.examples.some((e) => e.startsWith(`different: key hex:${spaced.key.toString('hex')} on b/`) && /value \d+ vs \d+ bytes/.test(e)),
        report.examples.join('\n'),
      );
      for (const item of items.slice(20, 23)) {
        assert.ok(
          report.examples.some((e) => e.includes(`key ${item.key.toString()} `) && e.endsWith(`flags ${item.flags} vs ${(item.flags + 1) >>> 0}`)),
          `flags example for ${item.key.toString()}:\n${report.examples.join('\n')}`,
        );
      }
    });
  });

  test('a key rewritten in the target later, with a fresh longer TTL, is newer in target, not different', BOUNDED, async () => {
    await withCluster({ a: 2, b: 2 }, async (cluster) => {
      const now = nowSeconds();
      const items = sampleItems({ count: 1_000, valueBytes: 64, nowSeconds: now });
      await load(cluster.topology, 'a', items);
      await load(cluster.topology, 'b', items);
      const expiring = items.filter((i) => i.exptime !== 0);
      // sampleItems' TTLs are at most a day and 500 s: a week is later by far more than the tolerance.
      const later = now + 7 * 86_400;
      const rewritten = [
        ...expiring.slice(0, 3).map((i) => ({ ...i, value: Buffer.from('a later write'), exptime: later })),
        ...expiring.slice(3, 6).map((i) => ({ ...i, exptime: later })),
      ];
      // Not "later": a copy that never expires where the source's does is different.
      const neverExpires = { ...(expiring[6] as WritableItem), exptime: 0 };
      await setInReplica(cluster, 'b', [...rewritten, neverExpires]);
      await settle(cluster.servers['a'] ?? []);

      const report = await verify(cluster);

      assert.deepEqual(counts(report), {
        checked: items.length,
        identical: items.length - rewritten.length - 1,
        missing: 0,
        different: 1,
        newerInTarget: rewritten.length,
        expired: 0,
        goneFromSource: 0,
      });
      assert.deepEqual(report.examples, [
        `different: key ${neverExpires.key.toString()} on ${ownerId(cluster, 'b', neverExpires.key)} (source ${ownerId(cluster, 'a', neverExpires.key)}): expiry ${(expiring[6] as WritableItem).exptime} vs none`,
      ]);
    });
  });

  test('live traffic during the check: a source changed between its two reads is newer in target; deleted or expiring items are not blamed on the target', BOUNDED, async () => {
    await withCluster({ a: 2, b: 3 }, async (cluster) => {
      const now = nowSeconds();
      const items = sampleItems({ count: 1_000, valueBytes: 64, nowSeconds: now });
      await load(cluster.topology, 'a', items);
      await load(cluster.topology, 'b', items);
      const [rewritten, deletedAfterTargetRead, deletedBeforeRead] = items.slice(100, 103) as [WritableItem, WritableItem, WritableItem];
      // A client's write reached the target first, and reaches the source while the check runs.
      const written = { ...rewritten, value: Buffer.from('written by a client') };
      await setInReplica(cluster, 'b', [written]);
      // A client deleted it from the target first, and from the source while the check runs.
      await deleteInReplica(cluster, 'b', [deletedAfterTargetRead.key]);
      // Items that expire within the tolerance: not comparable.
      const soon = sampleItems({ count: 4, valueBytes: 8, nowSeconds: now, seed: 'soon' }).map((i) => ({ ...i, exptime: now + 30 }));
      await load(cluster.topology, 'a', soon);
      await load(cluster.topology, 'b', soon);
      await settle(cluster.servers['a'] ?? []);

      // The live traffic is made to land at a set point: just before the source's first read
      // of the key, or just after the target's read of it (before the source is read again).
      const readOf = (item: WritableItem): Buffer => Buffer.from(`mg ${item.key.toString()} v`);
      const connect: Connect = async (endpoint, signal) => {
        const conn = await connectDirect(endpoint, signal);
        const isSource = endpoint.label?.startsWith('a/') === true;
        const send = conn.send.bind(conn);
        conn.send = (async <T>(request: Buffer, reply: Reply<T>): Promise<T> => {
          if (isSource && request.includes(readOf(deletedBeforeRead))) await deleteInReplica(cluster, 'a', [deletedBeforeRead.key]);
          const answer = await send(request, reply);
          if (!isSource && request.includes(readOf(rewritten))) await setInReplica(cluster, 'a', [written]);
          if (!isSource && request.includes(readOf(deletedAfterTargetRead))) await deleteInReplica(cluster, 'a', [deletedAfterTargetRead.key]);
          return answer;
        }) as typeof conn.send;
        return conn;
      };

      // A sample larger than the data: every key, and the crawl ends before the first read.
      const report = await verify(cluster, { sample: 10_000, connect, toleranceSeconds: 60 });

      const total = items.length + soon.length;
      assert.deepEqual(counts(report), {
        checked: total - 2,
        identical: total - 2 - 1 - soon.length,
        missing: 0,
        different: 0,
        newerInTarget: 1,
        expired: soon.length,
        goneFromSource: 2,
      });
      assert.equal(report.ok, true);
      assert.equal(report.sampled, false);
    });
  });

  test('a sample checks at most sample × target nodes keys, never more than exist', BOUNDED, async () => {
    await withCluster({ a: 3, b: 4 }, async (cluster) => {
      const items = sampleItems({ count: 4_000, valueBytes: 32, nowSeconds: nowSeconds() });
      await load(cluster.topology, 'a', items);
      await load(cluster.topology, 'b', items);
      await settle(cluster.servers['a'] ?? []);
      const share = shareOf(cluster, items.map((i) => i.key));
      assert.ok([...share.values()].every((n) => n > 50), 'every target node holds more than the sample');

      const sampled = await verify(cluster, { sample: 50 });

      assert.equal(sampled.sampled, true);
      assert.equal(sampled.listed, items.length);
      assert.deepEqual(counts(sampled), { checked: 200, identical: 200, missing: 0, different: 0, newerInTarget: 0, expired: 0, goneFromSource: 0 });
      assert.deepEqual(sampled.perNode.map((p) => p.checked), [50, 50, 50, 50]);
      assert.match(verifyReportText(sampled), /\(a sample of up to 50 keys per target node\): OK/);

      const larger = await verify(cluster, { sample: 5_000 });

      assert.equal(larger.sampled, false);
      assert.equal(larger.checked, items.length);
      assert.deepEqual(larger.perNode.map((p) => p.checked), nodesOf(cluster.topology, 'b').map((n) => share.get(n.id) ?? 0));
    });
  });

  test('with a node, only the keys the target ring places on that node are checked', BOUNDED, async () => {
    await withCluster({ a: 2, b: 3 }, async (cluster) => {
      const items = sampleItems({ count: 3_000, valueBytes: 32, nowSeconds: nowSeconds() });
      await load(cluster.topology, 'a', items);
      await load(cluster.topology, 'b', items);
      const node = nodesOf(cluster.topology, 'b')[1] as NodeSpec;
      const owned = items.filter((i) => ownerOf(cluster, 'b', i.key).address === node.address);
      const elsewhere = items.filter((i) => ownerOf(cluster, 'b', i.key).address !== node.address);
      await deleteInReplica(cluster, 'b', [...owned.slice(0, 2), ...elsewhere.slice(0, 5)].map((i) => i.key));
      await settle(cluster.servers['a'] ?? []);

      const report = await verify(cluster, { node });

      assert.equal(report.node, node.id);
      assert.deepEqual(counts(report), { checked: owned.length, identical: owned.length - 2, missing: 2, different: 0, newerInTarget: 0, expired: 0, goneFromSource: 0 });
      assert.deepEqual(report.perNode.map((p) => p.node), [node.id]);
      assert.equal(report.listed, owned.length);
      assert.match(verifyReportText(report), new RegExp(`^verify a -> ${node.id.replace(/\./g, '\\.')} \\(every key\\): NOT OK$`, 'm'));

      const sourceNode = nodesOf(cluster.topology, 'a')[0] as NodeSpec;
      await assert.rejects(verify(cluster, { node: sourceNode }), (error: unknown) => {
        assert.ok(error instanceof CachewarmError);
        assert.equal(error.code, 'INVALID_ARGUMENT');
        assert.ok(error.message.includes(sourceNode.id), error.message);
        return true;
      });
    });
  });

  test("the check leaves both replicas' LRUs as they were: no item is marked fetched", BOUNDED, async () => {
    await withCluster({ a: 2, b: 2 }, async (cluster) => {
      const now = nowSeconds();
      const items = [...sampleItems({ count: 1_000, valueBytes: 32, nowSeconds: now }), ...awkwardItems(now)];
      await load(cluster.topology, 'a', items);
      await load(cluster.topology, 'b', items);
      await setInReplica(cluster, 'b', [{ ...(items[0] as WritableItem), value: Buffer.from('differs: read twice from the source') }]);
      await settle(cluster.servers['a'] ?? []);

      const report = await verify(cluster, { reverse: true });
      assert.equal(report.checked, items.length);
      assert.equal(report.different, 1);

      // memcached marks an item fetched (`fetch=yes` in metadump; the `h` flag of mg) on a read
      // that bumps it; `mg ... u` does not, nor does the crawl. `la=` would not show it: an
      // item's last access only moves on a bump when it is over a minute old.
      const servers = [...(cluster.servers['a'] ?? []), ...(cluster.servers['b'] ?? [])];
      for (const server of servers) {
        const lines = await metadump(server);
        assert.ok(lines.length > 0);
        const fetched = lines.filter((line) => !/ fetch=no /.test(line));
        assert.deepEqual(fetched, [], `items marked fetched on ${server.address}`);
      }
      const dumped = (await Promise.all((cluster.servers['a'] ?? []).map(metadump))).flat();
      assert.equal(dumped.length, items.length);

      // The observation can fail: a client's read without `u` does mark the item.
      const probe = items[1] as WritableItem;
      const owner = ownerOf(cluster, 'a', probe.key);
      const conn = await MemcachedConnection.connect(owner);
      try {
        assert.equal(await conn.send(Buffer.from(`mg ${probe.key.toString()}\r\n`), new OneLine()), 'HD');
      } finally {
        conn.close();
      }
      const after = await metadump(owner);
      assert.ok(after.some((line) => line.startsWith(`key=${encodeURIComponent(probe.key.toString())} `) && / fetch=yes /.test(line)));
    });
  });

  test('an unreachable target node fails the check with NODE_UNREACHABLE naming it', BOUNDED, async () => {
    await withCluster({ a: 2, b: 3 }, async (cluster) => {
      const items = sampleItems({ count: 500, valueBytes: 32, nowSeconds: nowSeconds() });
      await load(cluster.topology, 'a', items);
      await load(cluster.topology, 'b', items);
      const down = nodesOf(cluster.topology, 'b')[2] as NodeSpec;
      await cluster.servers['b']?.[2]?.stop();

      for (const sample of ['all', 100] as const) {
        await assert.rejects(verify(cluster, { sample }), (error: unknown) => {
          assert.ok(error instanceof CachewarmError, String(error));
          assert.equal(error.code, 'NODE_UNREACHABLE');
          assert.ok(error.message.includes(down.id), error.message);
          return true;
        });
      }
    });
  });

  test('stopped by its signal mid-check, it rejects with the reason and closes every connection it opened', BOUNDED, async () => {
    await withCluster({ a: 2, b: 2 }, async (cluster) => {
      const items = sampleItems({ count: 3_000, valueBytes: 32, nowSeconds: nowSeconds() });
      await load(cluster.topology, 'a', items);
      await load(cluster.topology, 'b', items);
      const stop = new AbortController();
      const reason = new CachewarmError('ABORTED', 'stopped by the test');
      const opened: MemcachedConnection[] = [];
      const connect: Connect = async (endpoint, signal) => {
        const conn = await connectDirect(endpoint, signal);
        opened.push(conn);
        if (endpoint.label?.startsWith('b/') === true) {
          const send = conn.send.bind(conn);
          conn.send = (async <T>(request: Buffer, reply: Reply<T>): Promise<T> => {
            const answer = await send(request, reply);
            stop.abort(reason);
            return answer;
          }) as typeof conn.send;
        }
        return conn;
      };

      await assert.rejects(verify(cluster, { connect, signal: stop.signal }), (error: unknown) => error === reason);

      assert.ok(opened.length >= 4);
      assert.deepEqual(opened.filter((conn) => !conn.closed).map((conn) => conn.label), []);
    });
  });

  test('the command refuses a bad --sample, and --sample with --all', BOUNDED, async () => {
    const program = new Command().exitOverride().configureOutput({ writeErr: () => undefined, writeOut: () => undefined });
    registerVerifyCommand(program);
    const run = (...args: string[]) => program.parseAsync(['verify', '--topology', 'none.json', '--source', 'a', '--target', 'b', ...args], { from: 'user' });
    const commanderError = (code: string) => (error: unknown) => (error as { code?: unknown }).code === code;
    await assert.rejects(run('--sample', '0'), commanderError('commander.invalidArgument'));
    await assert.rejects(run('--max-ops', 'fast'), commanderError('commander.invalidArgument'));
    await assert.rejects(run('--sample', '5', '--all'), commanderError('commander.conflictingOption'));
  });

  test('an unknown replica, the same replica twice, or a bad sample is refused before any node is reached', BOUNDED, async () => {
    const topology = parseTopology({ replicas: { a: { nodes: [{ address: '127.0.0.1:1' }] }, b: { nodes: [{ address: '127.0.0.1:2' }] } } }, 'test-topology');
    const connect: Connect = () => Promise.reject(new Error('no node may be reached'));
    const options = { topology, source: 'a', target: 'b', sample: 'all' as const, connect, clock: systemClock };
    const refused = (code: string, words: string) => (error: unknown) => {
      assert.ok(error instanceof CachewarmError, String(error));
      assert.equal(error.code, code);
      assert.ok(error.message.includes(words), error.message);
      return true;
    };
    await assert.rejects(verifyReplicas({ ...options, target: 'zone-z' }), refused('TOPOLOGY_INVALID', 'zone-z'));
    await assert.rejects(verifyReplicas({ ...options, source: 'zone-y' }), refused('TOPOLOGY_INVALID', 'zone-y'));
    await assert.rejects(verifyReplicas({ ...options, source: 'b' }), refused('INVALID_ARGUMENT', 'b'));
    await assert.rejects(verifyReplicas({ ...options, sample: 0 }), refused('INVALID_ARGUMENT', 'sample'));
  });
});

function ownerId(cluster: Cluster, replica: string, key: Buffer): string {
  return `${replica}/${ownerOf(cluster, replica, key).address}`;
}
