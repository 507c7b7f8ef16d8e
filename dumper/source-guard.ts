/**
 * Protects a source node from its own dump (issue 12): paces the dump's reads so that what a
 * live client of the node sees — the p99 of a small latency probe (latency-probe.ts) — stays
 * within `factor` × the p99 the probe saw before the dump started.
 *
 * How it is meant to be wired (not done here):
 *
 * - One guard per source node and dump, created by whoever calls `dumpNode` (the CLI's warm,
 *   the sidecar's dump handler) when protection is on:
 *
 *       const probe = await startWorkerLatencyProbe(node, { signal });
 *       const guard = new SourceGuard({ latency: probe, factor, maxItemsPerSecond: maxOps ?? Infinity, clock, signal });
 *       await guard.start();                       // the baseline: the node without the dump
 *       try { await dumpNode({ ...options, rateLimiter: guard }); }
 *       finally { guard.close(); await probe.close(); }
 *
 *   `start()` resolves once the baseline is measured (`baselineMs`, default 2 s), before the
 *   crawl and the reads begin, so the baseline holds no dump traffic; a resumed dump measures
 *   it again. `take()` calls made before that wait for it.
 * - The guard takes the place of the `--max-ops` TokenBucket: `maxItemsPerSecond` is that hard
 *   cap (Infinity for none), and the guard never paces above it. Stacking both would also work
 *   but adds the bucket's burst rules for nothing.
 * - `--protect-source off` (a source that serves no traffic): no probe, no guard; the
 *   rateLimiter is the `--max-ops` TokenBucket or `unlimited`, as before issue 12. The
 *   status and metrics then say protection is off.
 * - The pace is in items a second, what `fetchValues` already asks the limiter for, shared by
 *   all of the node's reader connections. `batchKeys` is the advised size of one pipelined
 *   `mg` batch at the current pace (fetchValues would read it before each batch instead of its
 *   fixed 1,000); the requests in flight per connection can stay 2, since a paced reader
 *   rarely has two batches' worth of items granted at once.
 * - `status()` is the state for the progress line (`describeSourceGuard`), the sidecar's
 *   status and /metrics: baseline, current p99, pace, state, backoffs.
 * - The crawl (`lru_crawler metadump`) is one command the guard cannot pace; its cost to
 *   the node (item and LRU locks taken by the crawler thread) shows in the probe and slows the
 *   reads instead, until the crawl, which runs ahead of the reads, is over.
 *
 * The control law (PaceController, pure and clock-free): every `controlIntervalMs` (1 s) the
 * probe's p99 over that interval is compared with the limit, max(factor × baseline p99,
 * baseline p99 + minHeadroomMicros):
 * - above: multiplicative decrease (× `decrease`, 0.5) of the pace actually achieved, never
 *   below `minItemsPerSecond`, so the dump always progresses;
 * - at or below: while no breach has been seen yet, the pace doubles (slow start); after one,
 *   it grows by `increaseFraction` (5 %) of the pace at which the last breach began, up to the
 *   cap. It only grows while the dump uses at least half of it (a store-bound dump does not
 *   inflate a pace it cannot use, which it would then take many halvings to come down from).
 * - too few samples to judge (a stalled probe): a backoff if a request still unanswered is
 *   already older than the limit, else no change.
 */
import { systemClock, type Clock } from '../shared/clock.js';
import { CachewarmError, abortReason } from '../shared/errors.js';
import { type RateLimiter, checkAmount } from '../shared/token-bucket.js';
import type { LatencyReading, LatencySource } from './latency-probe.js';

export type GuardState =
  /** Taking the baseline: the dump waits. */
  | 'measuring'
  /** Below the limit, no breach seen yet: the pace doubles each interval. */
  | 'ramping'
  /** Below the limit: the pace grows gradually, or holds at the cap. */
  | 'steady'
  /** The last interval was above the limit: the pace was cut. */
  | 'backing-off';

export interface PaceSettings {
  /** The probe's p99 may reach factor × its baseline. At least 1; default 1.2. */
  readonly factor: number;
  /** Floor of the pace, items/s, so that a dump always progresses. Default 1,000 (or the cap, if lower). */
  readonly minItemsPerSecond: number;
  /** Hard cap (`--max-ops`), items/s; Infinity for none. */
  readonly maxItemsPerSecond: number;
  /** Pace once the baseline is known. Default 10,000 (within floor and cap). */
  readonly initialItemsPerSecond: number;
  /** Multiplier applied on a breach, in (0, 1). Default 0.5. */
  readonly decrease: number;
  /** Additive step after a breach, as a fraction of the pace at which that breach began. Default 0.05. */
  readonly increaseFraction: number;
  /**
   * The limit is at least baseline + this. A p99 estimated from a few hundred round trips
   * moves by tens of microseconds on its own; without slack a 1.2 factor on a 100 µs
   * baseline would read noise as harm. Default 100 µs; 0 for the bare factor.
   */
  readonly minHeadroomMicros: number;
  /** Round trips needed to judge an interval (and the baseline). Default 20. */
  readonly minSamples: number;
}

export const DEFAULT_PACE_SETTINGS: PaceSettings = {
  factor: 1.2,
  minItemsPerSecond: 1_000,
  maxItemsPerSecond: Number.POSITIVE_INFINITY,
  initialItemsPerSecond: 10_000,
  decrease: 0.5,
  increaseFraction: 0.05,
  minHeadroomMicros: 100,
  minSamples: 20,
};

/** One interval's evidence. */
export interface PaceInput {
  /** The probe over the interval, unanswered requests included. */
  readonly reading: LatencyReading;
  /** Items the dump was granted in the interval. */
  readonly takenItems: number;
  readonly elapsedMs: number;
}

/** The guard's state for progress lines, the sidecar's status and /metrics. */
export interface SourceGuardStatus {
  readonly state: GuardState;
  readonly factor: number;
  readonly baselineP50Micros: number | undefined;
  readonly baselineP99Micros: number | undefined;
  /** The p99 the probe may reach: max(factor × baseline, baseline + minHeadroomMicros). */
  readonly limitP99Micros: number | undefined;
  /** The probe over the last control interval. */
  readonly currentP50Micros: number | undefined;
  readonly currentP99Micros: number | undefined;
  readonly currentSamples: number;
  /** Items/s the dump may read now; 0 while measuring. */
  readonly paceItemsPerSecond: number;
  readonly minItemsPerSecond: number;
  /** The hard cap; undefined for none. */
  readonly maxItemsPerSecond: number | undefined;
  /** Advised keys per pipelined `mg` batch at this pace. */
  readonly batchKeys: number;
  /** Intervals that ended above the limit. */
  readonly backoffs: number;
  readonly decisions: number;
}

/** memcached's default `-R`: requests a worker serves from one connection before it turns to the next. */
export const REQS_PER_EVENT = 20;
export const MAX_BATCH_KEYS = 1_000;
/** A batch is about this much of the pace, so a paced dump sends small batches often, not big ones seldom. */
const BATCH_PERIOD_MS = 10;
/** The dump must use at least this share of the pace for it to grow. */
const BINDING_SHARE = 0.5;

/**
 * Keys per pipelined `mg` batch at `pace` items/s: ~10 ms worth, between memcached's
 * per-event request budget (a batch that small is served in one turn of its worker) and the
 * dumper's 1,000. Items/s is the guard's lever; the batch size only keeps a slow pace from
 * arriving in bursts of 1,000 requests, during which a live request on the same worker
 * thread waits behind up to 20 of them per turn.
 */
export function batchKeysFor(pace: number): number {
  if (!(pace > 0)) return REQS_PER_EVENT;
  return Math.max(REQS_PER_EVENT, Math.min(MAX_BATCH_KEYS, Math.round((pace * BATCH_PERIOD_MS) / 1000)));
}

function invalid(what: string, value: number): CachewarmError {
  return new CachewarmError('INVALID_ARGUMENT', `source guard: ${what}, got ${value}`, { [what.split(' ')[0] as string]: value });
}

function resolveSettings(partial: Partial<PaceSettings>): PaceSettings {
  const s = { ...DEFAULT_PACE_SETTINGS, ...stripUndefined(partial) };
  if (!Number.isFinite(s.factor) || s.factor < 1) throw invalid('factor must be a number of at least 1', s.factor);
  if (!(s.maxItemsPerSecond > 0)) throw invalid('maxItemsPerSecond must be positive', s.maxItemsPerSecond);
  if (!Number.isFinite(s.minItemsPerSecond) || s.minItemsPerSecond <= 0) {
    throw invalid('minItemsPerSecond must be a positive number', s.minItemsPerSecond);
  }
  if (!(s.decrease > 0 && s.decrease < 1)) throw invalid('decrease must be between 0 and 1', s.decrease);
  if (!(s.increaseFraction > 0) || !Number.isFinite(s.increaseFraction)) {
    throw invalid('increaseFraction must be a positive number', s.increaseFraction);
  }
  if (!(s.minHeadroomMicros >= 0) || !Number.isFinite(s.minHeadroomMicros)) {
    throw invalid('minHeadroomMicros must be a non-negative number', s.minHeadroomMicros);
  }
  if (!Number.isInteger(s.minSamples) || s.minSamples < 1) throw invalid('minSamples must be a positive integer', s.minSamples);
  if (!(s.initialItemsPerSecond > 0)) throw invalid('initialItemsPerSecond must be positive', s.initialItemsPerSecond);
  // A cap below the floor wins: --max-ops is a promise to the operator.
  const minItemsPerSecond = Math.min(s.minItemsPerSecond, s.maxItemsPerSecond);
  const initialItemsPerSecond = Math.min(s.maxItemsPerSecond, Math.max(minItemsPerSecond, s.initialItemsPerSecond));
  return { ...s, minItemsPerSecond, initialItemsPerSecond };
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** The control law, without clocks or I/O: fed one interval at a time. */
export class PaceController {
  readonly settings: PaceSettings;
  private current: GuardState = 'measuring';
  private pace = 0;
  private baseline: LatencyReading | undefined;
  private last: LatencyReading | undefined;
  private slowStart = true;
  /** The pace at which the latest run of breaches began: what the additive step is a share of. */
  private breachPace: number | undefined;
  private inBreach = false;
  private backoffs = 0;
  private decisions = 0;

  constructor(settings: Partial<PaceSettings> = {}) {
    this.settings = resolveSettings(settings);
  }

  get state(): GuardState {
    return this.current;
  }

  /** Items/s the dump may read now; 0 while measuring. */
  get paceItemsPerSecond(): number {
    return this.current === 'measuring' ? 0 : this.pace;
  }

  get limitMicros(): number | undefined {
    if (!this.baseline) return undefined;
    const { factor, minHeadroomMicros } = this.settings;
    return Math.max(this.baseline.p99Micros * factor, this.baseline.p99Micros + minHeadroomMicros);
  }

  /** A new baseline is being taken (the dump waits); the pace is kept for when it is known. */
  beginMeasuring(): void {
    this.current = 'measuring';
  }

  /**
   * The baseline, from the probe with no dump running. The first one starts the pace at
   * `initialItemsPerSecond`; a later one (a re-measure) keeps the pace it interrupted.
   */
  setBaseline(reading: LatencyReading): void {
    if (reading.samples - reading.pending < this.settings.minSamples) {
      throw new CachewarmError(
        'NODE_UNREACHABLE',
        `source guard: the latency probe got ${reading.samples - reading.pending} replies while measuring the baseline, ` +
          `fewer than the ${this.settings.minSamples} needed`,
        { samples: reading.samples, pending: reading.pending },
      );
    }
    const first = this.baseline === undefined;
    this.baseline = reading;
    this.last = undefined;
    if (first) {
      this.pace = this.settings.initialItemsPerSecond;
      this.current = this.pace >= this.settings.maxItemsPerSecond ? 'steady' : 'ramping';
    } else {
      this.current = this.slowStart ? 'ramping' : 'steady';
    }
  }

  /** Judges one interval and sets the pace for the next; returns the new state. */
  decide(input: PaceInput): GuardState {
    const limit = this.limitMicros;
    if (this.current === 'measuring' || limit === undefined) return this.current;
    const { reading } = input;
    const { minItemsPerSecond: floor, maxItemsPerSecond: cap, decrease, increaseFraction, minSamples } = this.settings;
    this.decisions++;
    this.last = reading;
    const elapsedMs = input.elapsedMs > 0 ? input.elapsedMs : 1;
    const used = (input.takenItems * 1000) / elapsedMs;

    let breach: boolean;
    if (reading.samples >= minSamples) breach = reading.p99Micros > limit;
    else if (reading.pending > 0 && reading.maxMicros > limit) breach = true;
    else return this.current; // too little to judge either way

    if (breach) {
      // Cut from what the dump actually read, not from a pace it was not using.
      const from = Math.min(this.pace, Math.max(used, floor));
      if (!this.inBreach) this.breachPace = from;
      this.inBreach = true;
      this.slowStart = false;
      this.pace = Math.max(floor, from * decrease);
      this.backoffs++;
      this.current = 'backing-off';
      return this.current;
    }

    this.inBreach = false;
    if (this.pace >= cap) {
      this.pace = cap;
      this.current = 'steady';
      return this.current;
    }
    if (used < this.pace * BINDING_SHARE) {
      this.current = this.slowStart ? 'ramping' : 'steady';
      return this.current;
    }
    if (this.slowStart) {
      this.pace = Math.min(cap, this.pace * 2);
      this.current = this.pace >= cap ? 'steady' : 'ramping';
    } else {
      const step = increaseFraction * Math.max(this.breachPace ?? this.pace, floor);
      this.pace = Math.min(cap, this.pace + step);
      this.current = 'steady';
    }
    return this.current;
  }

  status(): SourceGuardStatus {
    const { factor, minItemsPerSecond, maxItemsPerSecond } = this.settings;
    const pace = this.paceItemsPerSecond;
    return {
      state: this.current,
      factor,
      baselineP50Micros: this.baseline?.p50Micros,
      baselineP99Micros: this.baseline?.p99Micros,
      limitP99Micros: this.limitMicros,
      currentP50Micros: this.last?.p50Micros,
      currentP99Micros: this.last?.p99Micros,
      currentSamples: this.last?.samples ?? 0,
      paceItemsPerSecond: pace,
      minItemsPerSecond,
      maxItemsPerSecond: Number.isFinite(maxItemsPerSecond) ? maxItemsPerSecond : undefined,
      batchKeys: batchKeysFor(pace),
      backoffs: this.backoffs,
      decisions: this.decisions,
    };
  }
}

// ---------------------------------------------------------------------------------------------
// Pacing the takes
// ---------------------------------------------------------------------------------------------

interface Waiter {
  readonly amount: number;
  readonly grant: () => void;
  readonly fail: (error: unknown) => void;
}

const EPSILON = 1e-9;

/**
 * Grants takes in arrival order at a rate that may change at any time. A take is granted
 * whenever the bucket is not in debt and then charged in full (so a batch larger than the
 * burst is never refused, and the next take waits for it to be paid off). The debt is counted
 * in items, so a new rate applies at once to what is still owed.
 */
class Pacer {
  private rate = 0;
  private tokens = 0;
  private lastRefill: number;
  private readonly queue: Waiter[] = [];
  private pumping = false;
  private wake: AbortController | undefined;
  private held = true;
  private failure: Error | undefined;
  private granted = 0;

  constructor(private readonly clock: Clock) {
    this.lastRefill = clock.now();
  }

  setRate(rate: number): void {
    this.refill();
    this.rate = rate;
    this.tokens = Math.min(this.tokens, this.burst());
    this.kick();
  }

  /** Grants nothing (and accrues nothing) until `release`. */
  hold(): void {
    this.refill();
    this.held = true;
  }

  release(): void {
    this.refill();
    this.held = false;
    this.kick();
  }

  /** Items granted since the last call. */
  drainGranted(): number {
    const granted = this.granted;
    this.granted = 0;
    return granted;
  }

  /** Fails every queued take, and every later one, with `error`. */
  fail(error: Error): void {
    this.failure ??= error;
    for (const waiter of this.queue.splice(0)) waiter.fail(this.failure);
    this.wake?.abort();
  }

  take(amount: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    const invalid = checkAmount(amount);
    if (invalid) return Promise.reject(invalid);
    if (this.failure) return Promise.reject(this.failure);
    if (this.queue.length === 0 && !this.held) {
      this.refill();
      if (this.tokens + EPSILON >= 0) {
        this.charge(amount);
        return Promise.resolve();
      }
    }
    return new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        const index = this.queue.indexOf(waiter);
        if (index === -1) return;
        // Nothing was charged for a waiting take: dropping it is all there is to undo.
        this.queue.splice(index, 1);
        reject(abortReason(signal as AbortSignal));
      };
      const waiter: Waiter = {
        amount,
        grant: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
        fail: (error: unknown) => {
          signal?.removeEventListener('abort', onAbort);
          reject(error);
        },
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.queue.push(waiter);
      this.kick();
    });
  }

  private burst(): number {
    return Math.max(1, this.rate / 10);
  }

  private charge(amount: number): void {
    this.tokens -= amount;
    this.granted += amount;
  }

  private refill(): void {
    const now = this.clock.now();
    // A wall clock stepping backwards must not drain the bucket.
    const elapsed = Math.max(0, now - this.lastRefill);
    this.lastRefill = now;
    if (this.held || this.rate <= 0) return;
    this.tokens = Math.min(this.burst(), this.tokens + (elapsed * this.rate) / 1000);
  }

  /** Makes the pump look again: wakes it if it sleeps, starts it if it is not running. */
  private kick(): void {
    if (this.wake) this.wake.abort();
    else if (!this.pumping && !this.held && this.queue.length > 0) void this.pump();
  }

  private async pump(): Promise<void> {
    this.pumping = true;
    try {
      for (let head = this.queue[0]; head && !this.held && !this.failure; head = this.queue[0]) {
        this.refill();
        if (this.rate > 0 && this.tokens + EPSILON >= 0) {
          this.queue.shift();
          this.charge(head.amount);
          head.grant();
          continue;
        }
        const waitMs = this.rate > 0 ? Math.max(1, Math.ceil((-this.tokens / this.rate) * 1000)) : 1_000;
        const wake = new AbortController();
        this.wake = wake;
        try {
          await this.clock.sleep(waitMs, wake.signal);
        } catch (error) {
          // Woken for a new rate, a release or a failure is expected; anything else is the clock failing.
          if (!wake.signal.aborted) throw error;
        } finally {
          this.wake = undefined;
        }
      }
    } catch (error) {
      this.fail(error instanceof Error ? error : new Error(String(error)));
    } finally {
      this.pumping = false;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The guard
// ---------------------------------------------------------------------------------------------

export interface SourceGuardOptions extends Partial<PaceSettings> {
  /** The probe of the source node (a WorkerLatencyProbe in a dump). */
  readonly latency: LatencySource;
  readonly clock?: Clock;
  /** How often the pace is adjusted. Default 1,000 ms. */
  readonly controlIntervalMs?: number;
  /** How long the baseline is measured. Default 2,000 ms. */
  readonly baselineMs?: number;
  /** Closes the guard: waiting takes fail with the signal's reason. */
  readonly signal?: AbortSignal | undefined;
}

/**
 * A RateLimiter whose pace follows the source node's health: see the top of this file. Items
 * are granted only once the baseline is measured (`start()`).
 */
export class SourceGuard implements RateLimiter {
  readonly controller: PaceController;
  private readonly latency: LatencySource;
  private readonly clock: Clock;
  private readonly controlIntervalMs: number;
  private readonly baselineMs: number;
  private readonly pacer: Pacer;
  private readonly stop = new AbortController();
  private started: Promise<SourceGuardStatus> | undefined;
  private measuring: Promise<SourceGuardStatus> | undefined;
  private mark = 0;
  private lastDecisionAt = 0;

  constructor(options: SourceGuardOptions) {
    const { latency, clock = systemClock, controlIntervalMs = 1_000, baselineMs = 2_000, signal, ...settings } = options;
    if (!Number.isFinite(controlIntervalMs) || controlIntervalMs <= 0) throw invalid('controlIntervalMs must be positive', controlIntervalMs);
    if (!Number.isFinite(baselineMs) || baselineMs <= 0) throw invalid('baselineMs must be positive', baselineMs);
    this.controller = new PaceController(settings);
    this.latency = latency;
    this.clock = clock;
    this.controlIntervalMs = controlIntervalMs;
    this.baselineMs = baselineMs;
    this.pacer = new Pacer(clock);
    if (signal?.aborted) this.close(abortReason(signal));
    else signal?.addEventListener('abort', () => this.close(abortReason(signal)), { once: true });
  }

  /**
   * Measures the baseline, then starts adjusting the pace every control interval until
   * closed. Resolves with the status once the baseline is known (the dump may start); rejects
   * if it cannot be measured, and then every take fails with the same error. Idempotent.
   */
  start(): Promise<SourceGuardStatus> {
    this.started ??= this.measure().then((status) => {
      void this.control();
      return status;
    });
    return this.started;
  }

  take(amount: number, signal?: AbortSignal): Promise<void> {
    return this.pacer.take(amount, signal);
  }

  status(): SourceGuardStatus {
    return this.controller.status();
  }

  /** Advised keys per pipelined `mg` batch now. */
  get batchKeys(): number {
    return batchKeysFor(this.controller.paceItemsPerSecond);
  }

  /** Stops adjusting; waiting and later takes fail (ABORTED unless `reason` says otherwise). Idempotent. */
  close(reason?: Error): void {
    const error = reason ?? new CachewarmError('ABORTED', 'source guard closed');
    if (!this.stop.signal.aborted) this.stop.abort(error);
    this.pacer.fail(error);
  }

  private measure(): Promise<SourceGuardStatus> {
    this.measuring ??= (async () => {
      this.pacer.hold();
      this.controller.beginMeasuring();
      const mark = this.latency.mark();
      await this.clock.sleep(this.baselineMs, this.stop.signal);
      this.controller.setBaseline(this.latency.read(mark));
      this.mark = this.latency.mark();
      this.lastDecisionAt = this.clock.now();
      this.pacer.drainGranted();
      this.pacer.setRate(this.controller.paceItemsPerSecond);
      this.pacer.release();
      return this.status();
    })()
      .catch((error: unknown) => {
        const failure = error instanceof Error ? error : new Error(String(error));
        this.close(failure);
        throw failure;
      })
      .finally(() => {
        this.measuring = undefined;
      });
    return this.measuring;
  }

  private async control(): Promise<void> {
    const stop = this.stop.signal;
    try {
      while (!stop.aborted) {
        await this.clock.sleep(this.controlIntervalMs, stop);
        if (this.measuring) continue;
        const now = this.clock.now();
        const reading = this.latency.read(this.mark);
        this.mark = this.latency.mark();
        this.controller.decide({ reading, takenItems: this.pacer.drainGranted(), elapsedMs: now - this.lastDecisionAt });
        this.lastDecisionAt = now;
        this.pacer.setRate(this.controller.paceItemsPerSecond);
      }
    } catch (error) {
      // Closing ends the loop through its sleep; anything else is the clock failing.
      if (!stop.aborted) this.close(error instanceof Error ? error : new Error(String(error)));
    }
  }
}

/** The guard in a few words, for the progress line. */
export function describeSourceGuard(status: SourceGuardStatus): string {
  const us = (micros: number | undefined): string =>
    micros === undefined ? '?' : micros >= 1000 ? `${(micros / 1000).toFixed(1)} ms` : `${Math.round(micros)} µs`;
  if (status.state === 'measuring' && status.baselineP99Micros === undefined) return 'source guard: measuring the baseline';
  const pace = status.paceItemsPerSecond >= 1000 ? `${(status.paceItemsPerSecond / 1000).toFixed(1)}k` : `${Math.round(status.paceItemsPerSecond)}`;
  return (
    `source p99 ${us(status.currentP99Micros)} (baseline ${us(status.baselineP99Micros)}, limit ${us(status.limitP99Micros)}), ` +
    `pace ${pace} items/s, ${status.state}`
  );
}
