import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { targetRingOf } from '../controller/warm-plan.js';
import { ringOfTarget } from '../populator/write-to-ring.js';
import { OneLine } from '../shared/memcached/commands.js';
import { MemcachedConnection } from '../shared/memcached/connection.js';
import type { WritableItem } from '../shared/memcached/meta-add.js';
import { sampleItems } from '../shared/sample-items.js';
import { parseAddress } from '../shared/topology.js';
import { allByteValues } from './support/bytes.js';
import { type Cluster, load, loadNode, nowSeconds, startCluster, withCluster } from './support/cluster.js';
import { assertExactCopy, keyText, readBack } from './support/read-back.js';

/** One text command to one node; its one-line answer. */
async function command(address: string, text: Buffer): Promise<string> {
  const conn = await MemcachedConnection.connect({ ...parseAddress(address), label: address });
  try {
    return await conn.send(text, new OneLine());
  } finally {
    conn.close();
  }
}

/** `set` (not add-only): replaces whatever the node holds under the key. */
async function set(address: string, item: WritableItem): Promise<void> {
  const head = Buffer.from(`set ${item.key.toString('latin1')} ${item.flags >>> 0} ${item.exptime} ${item.value.length}\r\n`, 'latin1');
  assert.equal(await command(address, Buffer.concat([head, item.value, Buffer.from('\r\n')])), 'STORED');
}

function flipByte(value: Buffer, at: number): Buffer {
  const copy = Buffer.from(value);
  copy[at] = (copy[at] as number) ^ 0xff;
  return copy;
}

async function remove(address: string, key: Buffer): Promise<void> {
  assert.equal(await command(address, Buffer.from(`delete ${key.toString('latin1')}\r\n`, 'latin1')), 'DELETED');
}

describe('the read-back checker (test/support/read-back.ts), against real memcached', () => {
  let cluster: Cluster;
  before(async () => {
    cluster = await startCluster({ b: 3 });
  });
  after(async () => {
    await cluster?.stop();
  });

  /** Items of a data set of their own (keys differ from one test to the next), on `b` through its ring. */
  async function loaded(seed: string): Promise<WritableItem[]> {
    const now = nowSeconds();
    const items = [
      ...sampleItems({ count: 1_200, valueBytes: 64, nowSeconds: now, seed }),
      { key: Buffer.from(`${seed}:every-byte`), value: allByteValues(), flags: 0xffffffff, exptime: now + 7_200 },
      { key: Buffer.from(`${seed}:empty`), value: Buffer.alloc(0), flags: 0x80000000, exptime: 0 },
    ];
    await load(cluster.topology, 'b', items);
    return items;
  }

  const b = (): { topology: Cluster['topology']; replica: string } => ({ topology: cluster.topology, replica: 'b' });
  const nodeOf = (key: Buffer): string => ringOfTarget(targetRingOf(cluster.topology, 'b')).nodeFor(key).address;

  test('passes an exact copy: every item identical, value, all 32 flag bits and the absolute expiry', async () => {
    const items = await loaded('exact');
    const report = await readBack(b(), items);
    assert.deepEqual(report, { checked: items.length, identical: items.length, missing: [], different: [] });
    const addresses = cluster.topology.replicas.get('b')!.nodes.map((n) => n.address);
    assert.deepEqual(await assertExactCopy(b(), items, { nothingElseOn: addresses }), report);
    // A ring given as a TargetRing reads the same.
    assert.deepEqual(await readBack(targetRingOf(cluster.topology, 'b'), items), report);
  });

  test('reports a missing item, an item on the wrong node, and wrong values, flags and expiries, each by key', async () => {
    const items = await loaded('wrong');
    const [gone, onWrongNode, value, flags, later, expiring, forever] = items.filter((i) => i.exptime !== 0).slice(0, 7) as WritableItem[];
    const [endless] = items.filter((i) => i.exptime === 0) as WritableItem[];
    assert.ok(gone && onWrongNode && value && flags && later && expiring && forever && endless);

    await remove(nodeOf(gone.key), gone.key);
    await remove(nodeOf(onWrongNode.key), onWrongNode.key);
    const elsewhere = cluster.servers['b']!.find((s) => s.address !== nodeOf(onWrongNode.key))!;
    await loadNode(elsewhere, [onWrongNode]);
    await set(nodeOf(value.key), { ...value, value: flipByte(value.value, 10) });
    await set(nodeOf(flags.key), { ...flags, flags: (flags.flags ^ 0x80000000) >>> 0 });
    await set(nodeOf(later.key), { ...later, exptime: later.exptime + 1 });
    await set(nodeOf(endless.key), { ...endless, exptime: nowSeconds() + 3_600 });
    await set(nodeOf(forever.key), { ...forever, exptime: 0 });
    // Not wrong on the node: wrong in what is expected of it.
    const expected = items.map((item) => (item === expiring ? { ...item, exptime: item.exptime - 1 } : item));

    const report = await readBack(b(), expected);
    assert.equal(report.checked, items.length);
    assert.equal(report.identical, items.length - 8);
    assert.deepEqual(new Set(report.missing), new Set([keyText(gone.key), keyText(onWrongNode.key)]));
    const why = new Map(report.different.map((d) => [d.key, d.why]));
    assert.deepEqual(new Set(why.keys()), new Set([value, flags, later, expiring, forever, endless].map((i) => keyText(i.key))));
    assert.match(why.get(keyText(value.key)) ?? '', /^on 127\.0\.0\.1:\d+: value differs \(64 bytes, expected 64; first difference at byte 10\)$/);
    assert.equal(why.get(keyText(flags.key))?.replace(/^on \S+: /, ''), `flags ${(flags.flags ^ 0x80000000) >>> 0}, expected ${flags.flags}`);
    assert.equal(why.get(keyText(later.key))?.replace(/^on \S+: /, ''), `exptime ${later.exptime + 1}, expected exptime ${later.exptime} (+1 s)`);
    assert.equal(why.get(keyText(expiring.key))?.replace(/^on \S+: /, ''), `exptime ${expiring.exptime}, expected exptime ${expiring.exptime - 1} (+1 s)`);
    assert.equal(why.get(keyText(forever.key))?.replace(/^on \S+: /, ''), `no expiry, expected exptime ${forever.exptime}`);
    assert.match(why.get(keyText(endless.key))?.replace(/^on \S+: /, '') ?? '', /^exptime \d+, expected no expiry$/);

    await assert.rejects(assertExactCopy(b(), expected, { what: 'the copy' }), (error: unknown) => {
      assert.ok(error instanceof assert.AssertionError);
      assert.match(error.message, new RegExp(`^the copy: ${items.length - 8} of ${items.length} identical; 2 missing: .*; 6 different: `));
      assert.ok(error.message.includes(keyText(gone.key)), error.message);
      return true;
    });
  });

  test('with nothingElseOn, fails on an item nobody expected on a node', async () => {
    await withCluster({ c: 2 }, async (own) => {
      const items = sampleItems({ count: 300, valueBytes: 16, nowSeconds: nowSeconds(), seed: 'extra' });
      await load(own.topology, 'c', items);
      const target = { topology: own.topology, replica: 'c' };
      const addresses = own.servers['c']!.map((s) => s.address);
      await assertExactCopy(target, items, { nothingElseOn: addresses });

      const node = own.servers['c']![0]!;
      const placed = items.filter((i) => ringOfTarget(targetRingOf(own.topology, 'c')).nodeFor(i.key).address === node.address).length;
      await loadNode(node, [{ key: Buffer.from('extra:stray'), value: Buffer.from('x'), flags: 0, exptime: 0 }]);
      await assert.rejects(
        assertExactCopy(target, items, { nothingElseOn: addresses }),
        (error: Error) => {
          assert.equal(error.message, `the 300 expected items: 300 of 300 identical; ${node.address} holds ${placed + 1} items, expected exactly ${placed}`);
          return true;
        },
      );
    });
  });
});
