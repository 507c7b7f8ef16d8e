import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { BufferPool } from '../shared/buffer-pool.js';
import { CachewarmError } from '../shared/errors.js';
import { S3Store } from '../shared/store/s3-store.js';
import { allByteValues } from './support/bytes.js';
import { type AwsClients, type Fauxqs, awsClients, createBucket, startFauxqs } from './support/fauxqs.js';

describe('the S3 chunk store (against fauxqs, through the real S3 client)', () => {
  let fauxqs: Fauxqs;
  let aws: AwsClients;
  let bucket: string;

  before(async () => {
    fauxqs = await startFauxqs();
    aws = awsClients(fauxqs.endpoint);
    bucket = await createBucket(aws.s3, 'chunks');
  });
  after(async () => {
    aws.destroy();
    await fauxqs.stop();
  });

  test('puts, gets, lists and deletes a chunk; a 5 MiB binary chunk comes back byte for byte', async () => {
    const store = new S3Store({ client: aws.s3, bucket, prefix: 'roundtrip' });
    const big = randomBytes(5 << 20);
    const small = allByteValues();
    await store.put('job/a/data-000000.chunk', big);
    await store.put('job/a/data-000001.chunk', small);

    const back = await store.get('job/a/data-000000.chunk');
    assert.equal(back.length, big.length);
    assert.ok(back.equals(big), 'the 5 MiB chunk is byte-exact');
    assert.ok((await store.get('job/a/data-000001.chunk')).equals(small), 'every byte value survives');
    assert.deepEqual(await store.list('job'), ['job/a/data-000000.chunk', 'job/a/data-000001.chunk']);

    // The object is where describe says, under the prefix.
    assert.equal(store.describe('job/a/data-000000.chunk'), `s3://${bucket}/roundtrip/job/a/data-000000.chunk`);
    const head = await aws.s3.send(new HeadObjectCommand({ Bucket: bucket, Key: 'roundtrip/job/a/data-000000.chunk' }));
    assert.equal(head.ContentLength, big.length);

    await store.delete('job/a/data-000000.chunk');
    assert.deepEqual(await store.list('job'), ['job/a/data-000001.chunk']);
    await store.delete('job/a/data-000000.chunk'); // gone already: not an error
    await store.delete('job/never-was.chunk');
  });

  test('a chunk above the multipart threshold goes up in parts and comes back byte for byte', async () => {
    const store = new S3Store({ client: aws.s3, bucket, prefix: 'multipart', multipartThresholdBytes: 6 << 20, multipartPartBytes: 5 << 20 });
    const big = randomBytes(12 << 20); // three parts: 5 + 5 + 2 MiB
    await store.put('job/a/data-000000.chunk', big);
    const head = await aws.s3.send(new HeadObjectCommand({ Bucket: bucket, Key: 'multipart/job/a/data-000000.chunk' }));
    assert.match(head.ETag ?? '', /-3"?$/, `a multipart object's ETag counts its parts: ${head.ETag}`);
    assert.ok((await store.get('job/a/data-000000.chunk')).equals(big));
  });

  test('an aborted multipart put rejects with the abort reason', async () => {
    const store = new S3Store({ client: aws.s3, bucket, prefix: 'multipart', multipartThresholdBytes: 6 << 20, multipartPartBytes: 5 << 20 });
    const stop = new AbortController();
    stop.abort(new Error('stopped by the test'));
    await assert.rejects(store.put('job/a/aborted.chunk', randomBytes(12 << 20), stop.signal), /stopped by the test/);
    assert.ok(!(await store.list('job/a')).includes('job/a/aborted.chunk'), 'no object was made');
  });

  test('a put overwrites: a redone chunk replaces the old one', async () => {
    const store = new S3Store({ client: aws.s3, bucket, prefix: 'overwrite' });
    await store.put('c', Buffer.from('first version, longer'));
    await store.put('c', Buffer.from('second'));
    assert.equal((await store.get('c')).toString(), 'second');
  });

  test('gets into a buffer from the pool, sized from the object length', async () => {
    const store = new S3Store({ client: aws.s3, bucket, prefix: 'pooled' });
    const pool = new BufferPool();
    const body = randomBytes(300_000);
    await store.put('p', body);

    const first = await store.get('p', { into: pool });
    assert.ok(first.equals(body));
    assert.equal(first.length, body.length);
    assert.equal(first.buffer.byteLength, 512 << 10, "the view is of a pool buffer (its size class), not a fresh allocation");
    const firstBacking = first.buffer;
    pool.release(first);

    const second = await store.get('p', { into: pool });
    assert.ok(second.equals(body));
    assert.equal(second.buffer, firstBacking, 'the released buffer is reused');
  });

  test('a missing chunk is CHUNK_MISSING, naming its s3:// URL', async () => {
    const store = new S3Store({ client: aws.s3, bucket, prefix: 'missing' });
    await assert.rejects(store.get('job/nope.chunk'), (error: unknown) => {
      assert.ok(error instanceof CachewarmError);
      assert.equal(error.code, 'CHUNK_MISSING');
      assert.match(error.message, new RegExp(`s3://${bucket}/missing/job/nope\\.chunk`));
      assert.match(error.message, /NoSuchKey/);
      return true;
    });
  });

  test('any other AWS failure is a CachewarmError naming the bucket, the key and the AWS error', async () => {
    const store = new S3Store({ client: aws.s3, bucket: 'no-such-bucket' });
    await assert.rejects(store.put('x/y.chunk', Buffer.from('z')), (error: unknown) => {
      assert.ok(error instanceof CachewarmError);
      assert.notEqual(error.code, 'CHUNK_MISSING');
      assert.match(error.message, /S3 PutObject s3:\/\/no-such-bucket\/x\/y\.chunk failed: NoSuchBucket/);
      return true;
    });
    await assert.rejects(store.get('x/y.chunk'), (error: unknown) => {
      assert.ok(error instanceof CachewarmError);
      assert.notEqual(error.code, 'CHUNK_MISSING', 'a missing bucket is not a missing chunk: parking every chunk would hide it');
      assert.match(error.message, /NoSuchBucket/);
      return true;
    });
  });

  test('asks for server-side encryption on put when configured, and not otherwise', async () => {
    // fauxqs accepts the headers without echoing them back, so the request headers are read
    // on their way out of a second, observed client.
    const observed = awsClients(fauxqs.endpoint);
    const sent: Record<string, string>[] = [];
    observed.s3.middlewareStack.add(
      (next) => async (args) => {
        const request = args.request as { headers?: Record<string, string> };
        if (request.headers) sent.push({ ...request.headers });
        return next(args);
      },
      { step: 'finalizeRequest', name: 'observeHeaders' },
    );
    try {
      const cases = [
        { sse: undefined, expect: [undefined, undefined] },
        { sse: { type: 'AES256' } as const, expect: ['AES256', undefined] },
        { sse: { type: 'aws:kms', kmsKeyId: 'alias/cachewarm' } as const, expect: ['aws:kms', 'alias/cachewarm'] },
      ];
      for (const { sse, expect } of cases) {
        sent.length = 0;
        const store = new S3Store({ client: observed.s3, bucket, prefix: `sse-${sse?.type ?? 'none'}`, sse });
        await store.put('c', Buffer.from('secret'));
        assert.equal(sent.length, 1);
        const headers = sent[0] ?? {};
        assert.deepEqual(
          [headers['x-amz-server-side-encryption'], headers['x-amz-server-side-encryption-aws-kms-key-id']],
          expect,
          `headers for ${sse?.type ?? 'no encryption'}`,
        );
        assert.equal((await store.get('c')).toString(), 'secret');
      }
    } finally {
      observed.destroy();
    }
  });

  test('lists across pages, sorted, relative to the store prefix', async () => {
    const store = new S3Store({ client: aws.s3, bucket, prefix: 'paged', listPageSize: 7 });
    const names = Array.from({ length: 50 }, (_, i) => `job/n/${String(49 - i).padStart(3, '0')}.chunk`);
    await Promise.all(names.map((name) => store.put(name, Buffer.from(name))));

    // The listing really comes in pages of 7: more than one ListObjectsV2 call is needed.
    const firstPage = await aws.s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: 'paged/', MaxKeys: 7 }));
    assert.equal(firstPage.IsTruncated, true);

    const listed = await store.list('job/n');
    assert.equal(listed.length, 50);
    assert.deepEqual(listed, [...names].sort());
    assert.deepEqual(await store.list('job/n/'), listed, 'a trailing slash lists the same directory');
    assert.deepEqual(await store.list(''), listed, 'an empty prefix lists the whole store');
  });

  test('stores under different prefixes do not see each other', async () => {
    const blue = new S3Store({ client: aws.s3, bucket, prefix: 'iso/blue' });
    const green = new S3Store({ client: aws.s3, bucket, prefix: '/iso/green/' });
    await blue.put('j/c', Buffer.from('blue'));
    await green.put('j/c', Buffer.from('green'));
    await green.put('j/only-green', Buffer.from('g'));

    assert.equal((await blue.get('j/c')).toString(), 'blue');
    assert.equal((await green.get('j/c')).toString(), 'green');
    assert.deepEqual(await blue.list(''), ['j/c']);
    assert.deepEqual(await green.list('j'), ['j/c', 'j/only-green']);
    await assert.rejects(blue.get('j/only-green'), (error: unknown) => error instanceof CachewarmError && error.code === 'CHUNK_MISSING');
    await blue.delete('j/c');
    assert.equal((await green.get('j/c')).toString(), 'green', "deleting in one prefix leaves the other's chunk");

    // A directory-like list does not pick up a sibling whose name merely starts the same.
    await blue.put('jx/c', Buffer.from('x'));
    assert.deepEqual(await blue.list('j'), []);
  });

  test('refuses a chunk name that would escape the prefix', async () => {
    const store = new S3Store({ client: aws.s3, bucket, prefix: 'safe' });
    for (const name of ['../other/c', '/abs', 'a//b', 'a/./b']) {
      await assert.rejects(store.put(name, Buffer.from('x')), (error: unknown) => error instanceof CachewarmError && error.code === 'INVALID_ARGUMENT', name);
    }
  });

  test('an aborted get rejects with the abort reason', async () => {
    const store = new S3Store({ client: aws.s3, bucket, prefix: 'abort' });
    await store.put('c', randomBytes(1 << 20));
    const controller = new AbortController();
    const reason = new Error('stop now');
    controller.abort(reason);
    await assert.rejects(store.get('c', { signal: controller.signal }), (error: unknown) => error === reason);
  });

  test('reads objects written by any S3 client (the store adds no framing of its own)', async () => {
    await aws.s3.send(new PutObjectCommand({ Bucket: bucket, Key: 'foreign/x/c', Body: Buffer.from('plain object') }));
    const store = new S3Store({ client: aws.s3, bucket, prefix: 'foreign' });
    assert.equal((await store.get('x/c')).toString(), 'plain object');
    await store.put('x/d', Buffer.from('from the store'));
    const raw = await aws.s3.send(new GetObjectCommand({ Bucket: bucket, Key: 'foreign/x/d' }));
    assert.equal(await raw.Body?.transformToString(), 'from the store');
  });
});
