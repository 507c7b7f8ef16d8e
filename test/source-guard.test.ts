import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { isCachewarmError } from '../shared/errors.js';
import { LatencyProbe, LatencyWindow } from '../dumper/latency-probe.js';
import {
  PaceController,
  SourceGuard,
  batchKeysFor,
  describeSourceGuard,
  type SourceGuardOptions,
} from '../dumper/source-guard.js';
import { FakeClock, settle } from './support/fake-clock.js';
import { startMemcached, type MemcachedProcess } from './support/memcached.js';
import { waitFor } from './support/wait.js';

// The guard is driven by a clock that moves only when told to and by latencies the test puts
// into the probe's window by hand: every assertion is about what the guard does with them.

const BASELINE_MS = 2_000;
const INTERVAL_MS = 1_000;
const CALM = 100; // µs: the node without the dump
const HURT = 1_000; // µs: well above the limit (max(1.2 × 100, 100 + 100) = 200 µs)

type State = 'pending' | 'resolved' | 'rejected';
function track(promise: Promise<void>): { readonly state: State; readonly error: unknown } {
  const tracked = { state: 'pending' as State, error: undefined as unknown };
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

/** A guard on a fake clock and a window the test fills, with a dump that reads as fast as it is let. */
class Rig {
  readonly clock = new FakeClock();
  readonly window = new LatencyWindow();
  /** Ages (µs) of probe requests still unanswered, as the probe would report them. */
  pending: number[] = [];
  readonly guard: SourceGuard;
  granted = 0;
  private reading = false;
  private readonly stopReading = new AbortController();

  constructor(options: Partial<SourceGuardOptions> = {}) {
    this.guard = new SourceGuard({
      latency: { mark: () => this.window.mark(), read: (mark) => this.window.read(mark, this.pending) },
      clock: this.clock,
      baselineMs: BASELINE_MS,
      controlIntervalMs: INTERVAL_MS,
      ...options,
    });
  }

  /** Round trips the probe saw, all of `micros`. */
  probe(micros: number, count = 50): void {
    for (let i = 0; i < count; i++) this.window.add(micros);
  }

  /** Starts the guard and lets the baseline be measured on calm latencies. */
  async started(): Promise<void> {
    const started = this.guard.start();
    this.probe(CALM, 100);
    await this.clock.advance(BASELINE_MS);
    await started;
  }

  /** A reader that takes `batch` items at a time for as long as the test runs. */
  readGreedily(batch = 50): void {
    if (this.reading) return;
    this.reading = true;
    void (async () => {
      try {
        for (;;) {
          await this.guard.take(batch, this.stopReading.signal);
          this.granted += batch;
        }
      } catch {
        // stopped
      }
    })();
  }

  /** One control interval in which the probe saw `micros`; returns the pace set for the next. */
  async interval(micros: number): Promise<number> {
    this.probe(micros);
    await this.clock.advance(INTERVAL_MS);
    return this.guard.status().paceItemsPerSecond;
  }

  close(): void {
    this.stopReading.abort();
    this.guard.close();
  }
}

describe('SourceGuard', () => {
  test('holds every take until the baseline is measured, then reports it', async () => {
    const rig = new Rig();
    const started = rig.guard.start();
    const early = track(rig.guard.take(10));
    assert.equal(rig.guard.status().state, 'measuring');
    assert.equal(rig.guard.status().paceItemsPerSecond, 0);
    assert.match(describeSourceGuard(rig.guard.status()), /measuring/);

    rig.probe(80, 60);
    rig.probe(300, 1); // one slow round trip in 61: the p99
    await rig.clock.advance(BASELINE_MS - 1);
    assert.equal(early.state, 'pending');
    await rig.clock.advance(1);
    const status = await started;
    await settle();
    assert.equal(early.state, 'resolved');
    assert.equal(status.baselineP99Micros, 300);
    assert.equal(status.baselineP50Micros, 80);
    assert.equal(status.limitP99Micros, 400, 'max(1.2 × 300, 300 + 100 µs of headroom)');
    assert.equal(status.state, 'ramping');
    assert.equal(status.paceItemsPerSecond, 10_000);
    rig.close();
  });

  test('refuses to start without enough round trips for a baseline, and fails the takes', async () => {
    const rig = new Rig();
    const started = rig.guard.start();
    started.catch(() => undefined); // asserted below
    const waiting = rig.guard.take(1);
    waiting.catch(() => undefined);
    rig.probe(CALM, 5);
    await rig.clock.advance(BASELINE_MS);
    await assert.rejects(started, (e) => isCachewarmError(e, 'NODE_UNREACHABLE'));
    await assert.rejects(waiting, (e) => isCachewarmError(e, 'NODE_UNREACHABLE'));
    await assert.rejects(rig.guard.take(1), (e) => isCachewarmError(e, 'NODE_UNREACHABLE'));
  });

  test('ramps up while the probe stays calm and the dump uses the pace', async () => {
    const rig = new Rig();
    await rig.started();
    rig.readGreedily();
    const paces = [rig.guard.status().paceItemsPerSecond];
    for (let i = 0; i < 4; i++) paces.push(await rig.interval(CALM));
    assert.deepEqual(paces, [10_000, 20_000, 40_000, 80_000, 160_000]);
    assert.equal(rig.guard.status().state, 'ramping');
    assert.equal(rig.guard.status().backoffs, 0);
    rig.close();
  });

  test('does not raise a pace the dump is not using', async () => {
    const rig = new Rig();
    await rig.started();
    // No reader: the dump is busy elsewhere (a slow store), the source is calm.
    for (let i = 0; i < 3; i++) assert.equal(await rig.interval(CALM), 10_000);
    rig.close();
  });

  test('slows down when the probe latency rises above the limit, and again while it stays there', async () => {
    const rig = new Rig();
    await rig.started();
    rig.readGreedily();
    await rig.interval(CALM);
    await rig.interval(CALM);
    const before = rig.guard.status().paceItemsPerSecond; // 40k
    const first = await rig.interval(HURT);
    const second = await rig.interval(HURT);
    assert.ok(first < before, `${first} < ${before}`);
    assert.ok(second < first, `${second} < ${first}`);
    // Halved from what the dump actually read (the pace, give or take a batch).
    assert.ok(first <= before / 2 && first >= before / 2 - 100, `${first} vs ${before}`);
    const status = rig.guard.status();
    assert.equal(status.state, 'backing-off');
    assert.equal(status.currentP99Micros, HURT);
    assert.equal(status.backoffs, 2);
    assert.match(describeSourceGuard(status), /backing-off/);
    rig.close();
  });

  test('a probe stuck on an unanswered request counts as a breach', async () => {
    const rig = new Rig();
    await rig.started();
    rig.readGreedily();
    const before = rig.guard.status().paceItemsPerSecond;
    // No round trip completes in the interval; the request in flight is already 5 ms old.
    rig.pending = [5_000];
    await rig.clock.advance(INTERVAL_MS);
    assert.ok(rig.guard.status().paceItemsPerSecond < before);
    assert.equal(rig.guard.status().state, 'backing-off');
    rig.close();
  });

  test('too few round trips to judge and nothing stuck: no change either way', async () => {
    const rig = new Rig();
    await rig.started();
    rig.readGreedily();
    const before = rig.guard.status().paceItemsPerSecond;
    rig.probe(HURT, 3); // fewer than the 20 needed to judge an interval
    await rig.clock.advance(INTERVAL_MS);
    assert.equal(rig.guard.status().paceItemsPerSecond, before);
    assert.equal(rig.guard.status().backoffs, 0);
    rig.close();
  });

  test('recovers gradually once the latency falls, up to the cap', async () => {
    const rig = new Rig({ maxItemsPerSecond: 30_000 });
    await rig.started();
    rig.readGreedily();
    await rig.interval(CALM); // 20k
    await rig.interval(CALM); // 40k, held to the 30k cap
    assert.equal(rig.guard.status().paceItemsPerSecond, 30_000);
    assert.equal(rig.guard.status().state, 'steady');
    const cut = await rig.interval(HURT);
    // Halved from what the dump actually read in the interval (30k, give or take a batch).
    assert.ok(cut <= 15_000 && cut >= 14_900, `cut to ${cut}`);
    const recovery: number[] = [];
    for (let i = 0; i < 25; i++) recovery.push(await rig.interval(CALM));
    for (let i = 1; i < recovery.length; i++) assert.ok((recovery[i] as number) >= (recovery[i - 1] as number), `${recovery}`);
    // Additive: 5 % of the pace at which the trouble began (~30k) per interval, not doubling.
    const step = (recovery[1] as number) - (recovery[0] as number);
    assert.ok(step >= 1_450 && step <= 1_500, `step ${step}`);
    assert.equal(recovery.at(-1), 30_000);
    assert.equal(rig.guard.status().state, 'steady');
    rig.close();
  });

  test('never paces below the floor, and the dump still progresses at it', async () => {
    const rig = new Rig({ minItemsPerSecond: 500 });
    await rig.started();
    rig.readGreedily(10);
    for (let i = 0; i < 12; i++) assert.ok((await rig.interval(HURT)) >= 500);
    assert.equal(rig.guard.status().paceItemsPerSecond, 500);
    const from = rig.granted;
    for (let i = 0; i < 10; i++) await rig.interval(HURT);
    const read = rig.granted - from;
    // 10 s at 500 items/s, give or take a batch and the bucket's burst (a tenth of the rate).
    assert.ok(read >= 5_000 - 10 && read <= 5_000 + 10 + 50, `read ${read} items in 10 s at 500/s`);
    rig.close();
  });

  test('never paces above the cap, and the dump never reads faster than it', async () => {
    const rig = new Rig({ maxItemsPerSecond: 2_000, initialItemsPerSecond: 50_000 });
    await rig.started();
    assert.equal(rig.guard.status().paceItemsPerSecond, 2_000);
    assert.equal(rig.guard.status().maxItemsPerSecond, 2_000);
    rig.readGreedily(10);
    const from = rig.granted;
    for (let i = 0; i < 10; i++) assert.ok((await rig.interval(CALM)) <= 2_000);
    const read = rig.granted - from;
    assert.ok(read <= 20_000 + 10 + 200, `read ${read} items in 10 s at a 2,000/s cap`);
    assert.ok(read >= 20_000 - 10, `read ${read} items in 10 s at a 2,000/s cap`);
    rig.close();
  });

  test('a cap below the floor wins over the floor', () => {
    const controller = new PaceController({ maxItemsPerSecond: 200, minItemsPerSecond: 1_000 });
    assert.equal(controller.settings.minItemsPerSecond, 200);
    assert.equal(controller.settings.initialItemsPerSecond, 200);
  });

  test('rejects settings that make no sense', () => {
    for (const bad of [{ factor: 0.9 }, { factor: Number.NaN }, { minItemsPerSecond: 0 }, { maxItemsPerSecond: 0 }, { decrease: 1 }, { minSamples: 0 }]) {
      assert.throws(() => new PaceController(bad), (e) => isCachewarmError(e, 'INVALID_ARGUMENT'), JSON.stringify(bad));
    }
  });

  test('take() rejects at once, taking nothing, when the signal is already aborted', async () => {
    const rig = new Rig();
    await rig.started();
    const controller = new AbortController();
    const reason = new Error('stop');
    controller.abort(reason);
    await assert.rejects(rig.guard.take(1, controller.signal), (e) => e === reason);
    rig.close();
  });

  test('an aborted waiting take fails with the signal reason and the queue moves on', async () => {
    const rig = new Rig({ initialItemsPerSecond: 1_000, minItemsPerSecond: 1_000 });
    await rig.started();
    await rig.guard.take(1_000); // granted at once; the next waits a second for it to be paid
    const controller = new AbortController();
    const aborted = track(rig.guard.take(100, controller.signal));
    const next = track(rig.guard.take(100));
    await rig.clock.advance(500);
    assert.equal(aborted.state, 'pending');
    const reason = new Error('dump cancelled');
    controller.abort(reason);
    await settle();
    assert.equal(aborted.state, 'rejected');
    assert.equal(aborted.error, reason);
    assert.equal(next.state, 'pending');
    await rig.clock.advance(500);
    assert.equal(next.state, 'resolved', 'the next take is granted when the debt is paid, not later');
    rig.close();
  });

  test('a new pace applies at once to a take already waiting', async () => {
    const rig = new Rig({ initialItemsPerSecond: 1_000, minItemsPerSecond: 100, controlIntervalMs: 500 });
    await rig.started();
    await rig.guard.take(1_000); // charged in full: the next take waits until those items are paid for
    const waiting = track(rig.guard.take(1));
    rig.probe(HURT);
    await rig.clock.advance(500); // the pace halves with 500 items still owed: they now take 1 s
    assert.equal(rig.guard.status().paceItemsPerSecond, 500);
    await rig.clock.advance(999);
    assert.equal(waiting.state, 'pending');
    await rig.clock.advance(1);
    assert.equal(waiting.state, 'resolved');
    rig.close();
  });

  test('close() fails waiting and later takes and is idempotent; so does the signal', async () => {
    const rig = new Rig();
    const started = rig.guard.start();
    started.catch(() => undefined);
    const waiting = rig.guard.take(1);
    rig.guard.close();
    rig.guard.close();
    await assert.rejects(waiting, (e) => isCachewarmError(e, 'ABORTED'));
    await assert.rejects(rig.guard.take(1), (e) => isCachewarmError(e, 'ABORTED'));

    const controller = new AbortController();
    const clock = new FakeClock();
    const guard = new SourceGuard({ latency: new LatencyWindow(), clock, signal: controller.signal });
    const pending = guard.take(1);
    const reason = new Error('sidecar shutting down');
    controller.abort(reason);
    await assert.rejects(pending, (e) => e === reason);
    assert.equal(clock.pendingSleeps, 0);
  });

  test('advises small mg batches at a slow pace and 1,000-key batches at a fast one', () => {
    assert.equal(batchKeysFor(0), 20);
    assert.equal(batchKeysFor(1_000), 20);
    assert.equal(batchKeysFor(10_000), 100);
    assert.equal(batchKeysFor(100_000), 1_000);
    assert.equal(batchKeysFor(Number.POSITIVE_INFINITY), 1_000);
  });
});

describe('SourceGuard over a real probe', () => {
  let server: MemcachedProcess;
  before(async () => {
    server = await startMemcached({ threads: 1 });
  });
  after(async () => {
    process.kill(server.pid, 'SIGCONT');
    await server.stop();
  });

  test('backs off while the source is stopped, and stops backing off once it answers again', async () => {
    const probe = await LatencyProbe.start({ host: server.host, port: server.port }, { intervalMs: 2 });
    const guard = new SourceGuard({ latency: probe, baselineMs: 300, controlIntervalMs: 100 });
    try {
      const baseline = await guard.start();
      assert.equal(baseline.backoffs, 0);
      process.kill(server.pid, 'SIGSTOP');
      try {
        await waitFor(() => guard.status().state === 'backing-off', { what: 'a backoff', detail: () => guard.status() });
      } finally {
        process.kill(server.pid, 'SIGCONT');
      }
      assert.ok(guard.status().paceItemsPerSecond < baseline.paceItemsPerSecond, JSON.stringify(guard.status()));
      await waitFor(() => guard.status().state !== 'backing-off', { what: 'a calm interval', detail: () => guard.status() });
    } finally {
      guard.close();
      await probe.close();
    }
  });
});
