import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { BufferPool } from '../shared/buffer-pool.js';
import { CachewarmError } from '../shared/errors.js';
import { LocalDirStore } from '../shared/store/local-dir-store.js';

const root = (): Promise<string> => mkdtemp(path.join(os.tmpdir(), 'cachewarm-store-'));

describe('the local directory store', () => {
  test('keeps chunks under their names: put, get (also into a pooled buffer), list, delete', async () => {
    const store = new LocalDirStore(await root());
    const body = Buffer.from(Array.from({ length: 300_000 }, (_, i) => i & 0xff));
    await store.put('job/a/data-1.chunk', body);
    await store.put('job/b/data-2.chunk', Buffer.from('two'));
    assert.deepEqual(await store.get('job/a/data-1.chunk'), body);
    const pool = new BufferPool();
    const pooled = await store.get('job/a/data-1.chunk', { into: pool });
    assert.deepEqual(pooled, body);
    assert.ok(pooled.buffer.byteLength >= body.length);
    assert.deepEqual(await store.list('job'), ['job/a/data-1.chunk', 'job/b/data-2.chunk']);
    await store.delete('job/a/data-1.chunk');
    await store.delete('job/a/data-1.chunk'); // gone already: not an error
    assert.deepEqual(await store.list('job'), ['job/b/data-2.chunk']);
  });

  test('a missing chunk is CHUNK_MISSING, naming it', async () => {
    const store = new LocalDirStore(await root());
    await assert.rejects(store.get('job/none.chunk'), (error: unknown) => {
      assert.ok(error instanceof CachewarmError);
      assert.equal(error.code, 'CHUNK_MISSING');
      assert.match(error.message, /job\/none\.chunk/);
      return true;
    });
  });

  test('refuses a name that points outside the store', async () => {
    const store = new LocalDirStore(await root());
    await assert.rejects(store.put('../escape.chunk', Buffer.from('x')), /points outside the store/);
  });

  test('never shows a partly written chunk, and remakes a directory removed between writes', async () => {
    const dir = await root();
    const store = new LocalDirStore(dir);
    await store.put('job/a/one.chunk', Buffer.from('1'));
    await writeFile(path.join(dir, 'job', 'a', 'two.chunk.1234.partial'), 'half');
    assert.deepEqual(await store.list('job'), ['job/a/one.chunk']);
    await rm(path.join(dir, 'job'), { recursive: true });
    await store.put('job/a/three.chunk', Buffer.from('3'));
    assert.deepEqual(await readdir(path.join(dir, 'job', 'a')), ['three.chunk']);
  });
});
