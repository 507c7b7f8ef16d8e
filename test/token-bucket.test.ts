import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { isCachewarmError } from '../shared/errors.js';
import { systemClock } from '../shared/clock.js';
import { TokenBucket, unlimited } from '../shared/token-bucket.js';
import { FakeClock, settle } from './support/fake-clock.js';

type State = 'pending' | 'resolved' | 'rejected';

/** Watches a promise so a test can ask whether it has settled yet without awaiting it. */
function track(promise: Promise<void>): { readonly state: State; readonly error: unknown; readonly promise: Promise<void> } {
  const tracked = { state: 'pending' as State, error: undefined as unknown, promise };
  promise.then(
    () => {
      tracked.state = 'resolved';
    },
    (error: unknown) => {
      tracked.state = 'rejected';
      tracked.error = error;
    },
  );
  return tracked;
}

async function drained(bucket: TokenBucket): Promise<void> {
  await bucket.take(bucket.burst);
}

describe('TokenBucket', () => {
  test('rejects a rate or burst that is not a positive number', () => {
    for (const ratePerSecond of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
      assert.throws(() => new TokenBucket({ ratePerSecond }), (e) => isCachewarmError(e, 'INVALID_ARGUMENT'));
    }
    for (const burst of [0, -5, Number.NaN]) {
      assert.throws(() => new TokenBucket({ ratePerSecond: 10, burst }), (e) => isCachewarmError(e, 'INVALID_ARGUMENT'));
    }
  });

  test('burst defaults to a tenth of the rate, and at least 1', () => {
    assert.equal(new TokenBucket({ ratePerSecond: 1000 }).burst, 100);
    assert.equal(new TokenBucket({ ratePerSecond: 5 }).burst, 1);
    assert.equal(new TokenBucket({ ratePerSecond: 5, burst: 3 }).burst, 3);
  });

  test('starts full: takes within the burst resolve without time passing', async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket({ ratePerSecond: 100, clock });
    for (let i = 0; i < 10; i++) await bucket.take(1);
    const next = track(bucket.take(1));
    await settle();
    assert.equal(next.state, 'pending');
    assert.equal(clock.pendingSleeps, 1);
  });

  test('refills at the configured rate', async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket({ ratePerSecond: 100, burst: 10, clock });
    await drained(bucket);
    const take = track(bucket.take(5));
    await clock.advance(49);
    assert.equal(take.state, 'pending');
    await clock.advance(1);
    assert.equal(take.state, 'resolved');
  });

  test('does not accumulate more than the burst while idle', async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket({ ratePerSecond: 100, burst: 10, clock });
    await drained(bucket);
    await clock.advance(60_000);
    await bucket.take(10);
    const over = track(bucket.take(1));
    await settle();
    assert.equal(over.state, 'pending');
    await clock.advance(10);
    assert.equal(over.state, 'resolved');
  });

  test('a request larger than the burst is taken as debt instead of waiting forever', async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket({ ratePerSecond: 10, burst: 2, clock });
    // 2 tokens on hand, 5 owed: half a second at 10/s.
    const big = track(bucket.take(7));
    await clock.advance(499);
    assert.equal(big.state, 'pending');
    await clock.advance(1);
    assert.equal(big.state, 'resolved');
    // The debt leaves the bucket empty, so the next unit costs a full tenth of a second.
    const small = track(bucket.take(1));
    await clock.advance(99);
    assert.equal(small.state, 'pending');
    await clock.advance(1);
    assert.equal(small.state, 'resolved');
  });

  test('a request larger than the burst from an empty bucket waits for all of it', async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket({ ratePerSecond: 10, burst: 1, clock });
    await drained(bucket);
    const big = track(bucket.take(50));
    await clock.advance(4_999);
    assert.equal(big.state, 'pending');
    await clock.advance(1);
    assert.equal(big.state, 'resolved');
  });

  test('serves waiters in arrival order: a small request does not overtake a large one', async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket({ ratePerSecond: 10, burst: 10, clock });
    await drained(bucket);
    const order: string[] = [];
    const big = bucket.take(5).then(() => order.push('big'));
    const small = bucket.take(1).then(() => order.push('small'));
    // One token would be there after 100 ms, but the small request is queued behind the big one.
    await clock.advance(100);
    assert.deepEqual(order, []);
    await clock.advance(400);
    assert.deepEqual(order, ['big']);
    await clock.advance(100);
    assert.deepEqual(order, ['big', 'small']);
    await Promise.all([big, small]);
  });

  test('a new request queues behind existing waiters even when tokens are available for it', async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket({ ratePerSecond: 10, burst: 10, clock });
    await drained(bucket);
    const first = track(bucket.take(3));
    await clock.advance(200);
    const second = track(bucket.take(1));
    await settle();
    assert.equal(first.state, 'pending');
    assert.equal(second.state, 'pending');
    await clock.advance(100);
    assert.equal(first.state, 'resolved');
    assert.equal(second.state, 'pending');
    await clock.advance(100);
    assert.equal(second.state, 'resolved');
  });

  test('keeps the long-run rate over many small takes', async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket({ ratePerSecond: 10, burst: 1, clock });
    const start = clock.now();
    let done = false;
    const consumer = (async () => {
      for (let i = 0; i < 100; i++) await bucket.take(1);
      done = true;
    })();
    // Bounded in clock time: a consumer that stalled fails the test instead of looping forever.
    for (let step = 0; !done; step++) {
      assert.ok(step < 2_000, `the 100 takes were not done after ${step * 10} ms of clock time`);
      await clock.advance(10);
    }
    await consumer;
    // The first unit is in the bucket; the other 99 arrive at 10 per second.
    assert.equal(clock.now() - start, 9_900);
  });

  test('an abort rejects with the signal reason and takes nothing', async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket({ ratePerSecond: 10, burst: 10, clock });
    await drained(bucket);
    const controller = new AbortController();
    const waiting = track(bucket.take(5, controller.signal));
    await clock.advance(300);
    const reason = new Error('shutting down');
    controller.abort(reason);
    await settle();
    assert.equal(waiting.state, 'rejected');
    assert.equal(waiting.error, reason);
    // The 3 tokens refilled while it waited are still there.
    await bucket.take(3);
    const more = track(bucket.take(1));
    await settle();
    assert.equal(more.state, 'pending');
  });

  test('an aborted head lets the waiter behind it go as soon as tokens allow', async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket({ ratePerSecond: 10, burst: 10, clock });
    await drained(bucket);
    const controller = new AbortController();
    const head = track(bucket.take(8, controller.signal));
    const behind = track(bucket.take(2));
    await clock.advance(200);
    assert.equal(behind.state, 'pending');
    controller.abort();
    await settle();
    assert.equal(head.state, 'rejected');
    assert.ok(head.error instanceof Error && head.error.name === 'AbortError');
    assert.equal(behind.state, 'resolved');
    assert.equal(clock.pendingSleeps, 0);
  });

  test('an aborted request larger than the burst leaves at most a full bucket', async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket({ ratePerSecond: 10, burst: 2, clock });
    await drained(bucket);
    const controller = new AbortController();
    const big = track(bucket.take(20, controller.signal));
    await clock.advance(1_500);
    controller.abort();
    await settle();
    assert.equal(big.state, 'rejected');
    await bucket.take(2);
    const more = track(bucket.take(1));
    await settle();
    assert.equal(more.state, 'pending');
  });

  test('aborting a waiter in the middle of the queue leaves the others in order', async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket({ ratePerSecond: 10, burst: 10, clock });
    await drained(bucket);
    const controller = new AbortController();
    const order: string[] = [];
    const a = bucket.take(1).then(() => order.push('a'));
    const b = track(bucket.take(1, controller.signal));
    const c = bucket.take(1).then(() => order.push('c'));
    controller.abort();
    await clock.advance(200);
    assert.equal(b.state, 'rejected');
    assert.deepEqual(order, ['a', 'c']);
    await Promise.all([a, c]);
  });

  test('an already aborted signal rejects at once without taking', async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket({ ratePerSecond: 10, burst: 10, clock });
    const reason = new Error('gone');
    await assert.rejects(bucket.take(4, AbortSignal.abort(reason)), (e) => e === reason);
    await bucket.take(10);
  });

  test('zero is free and invalid amounts are rejected', async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket({ ratePerSecond: 10, burst: 1, clock });
    await drained(bucket);
    await bucket.take(0);
    for (const amount of [-1, Number.NaN, Number.POSITIVE_INFINITY]) {
      await assert.rejects(bucket.take(amount), (e) => isCachewarmError(e, 'INVALID_ARGUMENT'));
    }
  });

  test('a clock stepping backwards does not drain the bucket', async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket({ ratePerSecond: 10, burst: 10, clock });
    await bucket.take(5);
    clock.set(clock.now() - 60_000);
    await bucket.take(5);
  });
});

describe('unlimited', () => {
  test('never waits', async () => {
    await unlimited.take(1e12);
  });

  test('still honours an aborted signal', async () => {
    const reason = new Error('stop');
    await assert.rejects(unlimited.take(1, AbortSignal.abort(reason)), (e) => e === reason);
  });
});

describe('systemClock', () => {
  test('now() is wall-clock time in milliseconds', () => {
    const before = Date.now();
    const now = systemClock.now();
    assert.ok(now >= before && now <= Date.now());
  });

  test('sleep rejects with the signal reason when aborted', async () => {
    const controller = new AbortController();
    const reason = new Error('cancelled');
    const sleeping = systemClock.sleep(60_000, controller.signal);
    controller.abort(reason);
    await assert.rejects(sleeping, (e) => e === reason);
    await assert.rejects(systemClock.sleep(60_000, AbortSignal.abort(reason)), (e) => e === reason);
  });

  test('sleep resolves', async () => {
    await systemClock.sleep(1);
  });
});
