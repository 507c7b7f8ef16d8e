import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { BufferPool } from '../shared/buffer-pool.js';
import { HandOffStore } from '../shared/store/hand-off-store.js';
import { LocalDirStore } from '../shared/store/local-dir-store.js';

async function handOff(): Promise<{ store: HandOffStore; disk: LocalDirStore; pool: BufferPool }> {
  const disk = new LocalDirStore(await mkdtemp(path.join(os.tmpdir(), 'cachewarm-hand-off-')));
  const pool = new BufferPool();
  return { store: new HandOffStore(disk, pool), disk, pool };
}

/** A pooled buffer holding `text`, as a dumper's sealed chunk is. */
function chunkOf(pool: BufferPool, text: string): Buffer {
  const buf = pool.acquire(text.length).subarray(0, text.length);
  buf.write(text);
  return buf;
}

describe('the hand-off store', () => {
  test('lends a held chunk without a copy, gives a copy to get, and never writes it to disk', async () => {
    const { store, disk, pool } = await handOff();
    const chunk = chunkOf(pool, 'held bytes');
    store.hold('job/n/data-1.chunk', chunk);
    const loan = store.lend('job/n/data-1.chunk');
    assert.equal(loan?.bytes, chunk, 'the very buffer');
    const got = await store.get('job/n/data-1.chunk');
    assert.notEqual(got, chunk);
    assert.equal(got.toString(), 'held bytes');
    loan?.giveBack();
    assert.deepEqual(await disk.list('job'), []);
    assert.match(store.describe('job/n/data-1.chunk'), /in memory/);
    await store.delete('job/n/data-1.chunk');
    assert.equal(store.lend('job/n/data-1.chunk'), undefined);
  });

  test('settles a chunk when it is deleted or persisted; a persisted one is on disk', async () => {
    const { store, disk, pool } = await handOff();
    store.hold('job/n/data-1.chunk', chunkOf(pool, 'one'));
    store.hold('job/n/data-2.chunk', chunkOf(pool, 'two'));
    let settled = false;
    const settling = store.settled(['job/n/data-1.chunk', 'job/n/data-2.chunk']).then(() => (settled = true));
    await store.delete('job/n/data-1.chunk');
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(settled, false, 'one of the two is still only in memory');
    await store.persist('job/n/data-2.chunk');
    await settling;
    assert.equal((await disk.get('job/n/data-2.chunk')).toString(), 'two');
    assert.equal((await store.get('job/n/data-2.chunk')).toString(), 'two', 'read from disk once persisted');
  });

  test('a chunk deleted while lent is reused only once the loan is given back', async () => {
    const { store, pool } = await handOff();
    const chunk = chunkOf(pool, 'shared');
    store.hold('job/n/data-1.chunk', chunk);
    const loan = store.lend('job/n/data-1.chunk');
    await store.delete('job/n/data-1.chunk'); // another target finished with it; this one still writes
    assert.notEqual(pool.acquire(chunk.length).buffer, chunk.buffer, 'not handed out while lent');
    loan?.giveBack();
    loan?.giveBack(); // once only
    assert.equal(pool.acquire(chunk.length).buffer, chunk.buffer, 'back in the pool');
    assert.notEqual(pool.acquire(chunk.length).buffer, chunk.buffer, 'and in it once');
  });

  test('waiting for chunks to settle stops with the signal', async () => {
    const { store, pool } = await handOff();
    store.hold('job/n/data-1.chunk', chunkOf(pool, 'never written'));
    const stop = new AbortController();
    const waiting = store.settled(['job/n/data-1.chunk'], stop.signal);
    stop.abort(new Error('pass failed'));
    await assert.rejects(waiting, /pass failed/);
  });
});
