import assert from 'node:assert/strict';
import os from 'node:os';
import { after, before, describe, test } from 'node:test';
import { S3JobLock, lockName } from '../controller/s3-job-lock.js';
import { systemClock } from '../shared/clock.js';
import { CachewarmError } from '../shared/errors.js';
import { S3Store } from '../shared/store/s3-store.js';
import { type AwsClients, type Fauxqs, awsClients, createBucket, startFauxqs } from './support/fauxqs.js';
import { waitFor } from './support/wait.js';

const isLocked = (pattern: RegExp) => (error: unknown): boolean => {
  assert.ok(error instanceof CachewarmError, String(error));
  assert.equal(error.code, 'JOB_LOCKED');
  assert.match(error.message, pattern);
  return true;
};

describe("a job's lock in S3 (conditional writes, through the real S3 client)", () => {
  let fauxqs: Fauxqs;
  let aws: AwsClients;
  let store: S3Store;

  before(async () => {
    fauxqs = await startFauxqs();
    aws = awsClients(fauxqs.endpoint);
    store = new S3Store({ client: aws.s3, bucket: await createBucket(aws.s3, 'locks'), prefix: 'warms' });
  });
  after(async () => {
    aws.destroy();
    await fauxqs.stop();
  });

  test('of runs taking it at once, exactly one gets it; the others are told who holds it', async () => {
    const tries = await Promise.allSettled(Array.from({ length: 5 }, () => S3JobLock.acquire(store, 'at-once', { clock: systemClock })));
    const held = tries.filter((t) => t.status === 'fulfilled');
    assert.equal(held.length, 1);
    for (const t of tries) if (t.status === 'rejected') assert.ok(isLocked(/job at-once is already running|took its lock at the same moment/)(t.reason));
    await (held[0] as PromiseFulfilledResult<S3JobLock>).value.release();
  });

  test('a second run is refused naming the holder; once released, the job can be taken again', async () => {
    const first = await S3JobLock.acquire(store, 'twice', { clock: systemClock });
    await assert.rejects(S3JobLock.acquire(store, 'twice', { clock: systemClock }), isLocked(new RegExp(`already running \\(${os.hostname()} pid ${process.pid} since `)));
    await first.release();
    await first.release();
    const again = await S3JobLock.acquire(store, 'twice', { clock: systemClock });
    await again.release();
    assert.deepEqual(await store.list('twice'), [], 'a released lock leaves nothing behind');
  });

  test('a lock whose holder died on this host is free at once', async () => {
    const dead = { host: os.hostname(), pid: 2 ** 22 + 1, since: new Date().toISOString(), renewedAt: new Date().toISOString() };
    await store.put(lockName('orphaned'), Buffer.from(JSON.stringify(dead)));
    const lock = await S3JobLock.acquire(store, 'orphaned', { clock: systemClock });
    await lock.release();
  });

  test('a holder silent past staleAfterMs is taken over, and learns through `lost` that it must stop', async () => {
    // The first holder renews rarely (as a paused process would); the second finds it stale.
    const silent = await S3JobLock.acquire(store, 'silent', { clock: systemClock, renewEveryMs: 1_500 });
    await new Promise((resolve) => setTimeout(resolve, 300));
    const taker = await S3JobLock.acquire(store, 'silent', { clock: systemClock, staleAfterMs: 100 });
    await waitFor(() => silent.lost.aborted, { what: 'the silent holder to learn it lost the lock' });
    assert.ok(isLocked(/job silent was taken over by another run .* that found this one silent/)(silent.lost.reason));
    await silent.release();
    assert.equal((await store.list('silent')).length, 1, "the loser's release leaves the taker's lock alone");
    assert.equal(taker.lost.aborted, false);
    await taker.release();
  });
});
