/**
 * What a live client of a source node would see while the node is being dumped: a small
 * closed-loop probe on connections of its own, timing each round trip with the monotonic
 * high-resolution clock. The source guard (source-guard.ts) compares its p99 with a baseline
 * taken before the dump and paces the dump to keep them close.
 *
 * The request is `mg <absent key>` without flags (the reply is `EN`). It travels the path a
 * live `get` travels: parsed on the connection's worker thread, the key hashed, the item lock
 * of its bucket taken, the hash chain walked. `mn` would be answered by the parser alone and
 * miss the item-lock contention the LRU crawler adds (its hash walk and its trylocks hold
 * those locks); its one advantage is that it does not count in the node's `get_misses`. The
 * probe adds about 100 misses a second per connection at the default interval; `command: 'mn'`
 * is there for a node whose hit-rate dashboards must not move. The probe's keys are random
 * and spread over several lock stripes.
 *
 * memcached hands each new connection to the next worker thread in turn, and a connection is
 * served by that one thread only: one probe connection sees one thread. By default the probe
 * opens one connection per worker thread (`stats` threads, at most 8), each its own closed
 * loop, so it sees the thread the dump's readers landed on — as the node's live clients,
 * spread over every thread, do. (The round robin is shared with every other client that
 * connects meanwhile, so this is likely, not certain.)
 *
 * In-process or in a worker thread: a round trip measured on the dumper's own event loop also
 * counts every moment that loop was busy before it read the reply (parsing a 1,000-value
 * batch, building chunks), and at full speed those moments are far longer than a memcached
 * round trip. `LatencyProbe.start` measures in-process (tests, injected clock and dialer);
 * `startWorkerLatencyProbe` runs the same probe on a worker thread of its own, which is what a
 * dump should use.
 */
import { randomBytes } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { systemClock, type Clock } from '../shared/clock.js';
import { CachewarmError, type ErrorCode, abortReason, isCachewarmError } from '../shared/errors.js';
import { stats } from '../shared/memcached/commands.js';
import { type Connect, connectDirect } from '../shared/memcached/connect.js';
import { type Endpoint, MemcachedConnection, Reply, lineEnd, lineText, protocolError } from '../shared/memcached/connection.js';

/** Latency over a stretch of probing. All times in microseconds; 0 when there are no samples. */
export interface LatencyReading {
  /** Round trips completed, plus requests still unanswered (counted at their age so far). */
  readonly samples: number;
  /** Of `samples`, requests still waiting for their reply: a stalled server shows here first. */
  readonly pending: number;
  readonly p50Micros: number;
  readonly p99Micros: number;
  readonly maxMicros: number;
}

/** Anything that reports probe latency: a probe, or a window a test fills by hand. */
export interface LatencySource {
  /** A mark of "now" in the stream of samples: pass it to `read` to see only later ones. */
  mark(): number;
  /** The round trips recorded since `mark` (at most the window's capacity, the newest), with the requests still unanswered. */
  read(mark: number): LatencyReading;
}

/** Nearest-rank percentile (0 < p ≤ 1) of ascending `sorted`; 0 for none. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return 0;
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil(p * sorted.length)));
  return sorted[rank - 1] as number;
}

/** p50, p99 and max of `values` (microseconds), `pending` of which are unanswered requests. */
export function summarize(values: Float64Array, pending = 0): LatencyReading {
  if (values.length === 0) return { samples: 0, pending: 0, p50Micros: 0, p99Micros: 0, maxMicros: 0 };
  const sorted = values.slice().sort();
  return {
    samples: sorted.length,
    pending,
    p50Micros: percentile(sorted, 0.5),
    p99Micros: percentile(sorted, 0.99),
    maxMicros: sorted[sorted.length - 1] as number,
  };
}

/** The last `capacity` round-trip times, in a fixed ring: memory does not grow with a long dump. */
export class LatencyWindow implements LatencySource {
  private readonly ring: Float64Array;
  private count = 0;

  constructor(readonly capacity = 4096) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new CachewarmError('INVALID_ARGUMENT', `latency window capacity must be a positive integer, got ${capacity}`);
    }
    this.ring = new Float64Array(capacity);
  }

  add(micros: number): void {
    this.ring[this.count % this.capacity] = micros;
    this.count++;
  }

  mark(): number {
    return this.count;
  }

  /** The samples added since `mark`, oldest first (only the newest `capacity` of them survive). */
  since(mark: number): Float64Array {
    const from = Math.max(mark, this.count - this.capacity, 0);
    const out = new Float64Array(Math.max(0, this.count - from));
    for (let i = 0; i < out.length; i++) out[i] = this.ring[(from + i) % this.capacity] as number;
    return out;
  }

  read(mark: number, pendingMicros: readonly number[] = []): LatencyReading {
    const done = this.since(mark);
    if (pendingMicros.length === 0) return summarize(done);
    const all = new Float64Array(done.length + pendingMicros.length);
    all.set(done);
    all.set(pendingMicros, done.length);
    return summarize(all, pendingMicros.length);
  }
}

export type ProbeCommand = 'mg' | 'mn';

export interface LatencyProbeOptions {
  /** How to dial the node (SASL, proxies). In-process probes only. */
  readonly connect?: Connect;
  /** Paces the probes (the wait between a reply and the next request). Round trips are timed with `process.hrtime`. */
  readonly clock?: Clock;
  /** Wait between a reply and the next request on the same connection. Default 10 ms. */
  readonly intervalMs?: number;
  /** Probe connections, each its own closed loop. Default: one per worker thread of the node, at most 8. */
  readonly connections?: number;
  /** Round trips remembered. Default 4096. */
  readonly windowSize?: number;
  /** `mg` of an absent key (default) or `mn`: see the top of this file. */
  readonly command?: ProbeCommand;
  /** Called with each round trip's time, in microseconds (the worker thread forwards them with this). */
  readonly onSample?: (micros: number) => void;
  /** Closes the probe. */
  readonly signal?: AbortSignal | undefined;
}

export const DEFAULT_PROBE_INTERVAL_MS = 10;
const MAX_DEFAULT_CONNECTIONS = 8;
/** Distinct probe keys, so the probes hash to several item-lock stripes, not one. */
const PROBE_KEYS = 16;
const RECONNECT_DELAY_MS = 1_000;

/** Reads the one-line answer to a probe: `EN` (miss), `HD` (someone stored the key) or `MN`. */
class ProbeReply extends Reply<void> {
  constructor(private readonly label: string) {
    super();
  }

  read(buf: Buffer, pos: number): number {
    const end = lineEnd(buf, pos);
    if (end < 0) return pos;
    const line = lineText(buf, pos, end);
    if (line !== 'EN' && line !== 'HD' && line !== 'MN') throw protocolError(this.label, 'unexpected reply to the latency probe', line);
    this.finish();
    return end;
  }
}

function probeRequests(command: ProbeCommand): Buffer[] {
  if (command === 'mn') return [Buffer.from('mn\r\n')];
  const tag = randomBytes(6).toString('hex');
  return Array.from({ length: PROBE_KEYS }, (_, i) => Buffer.from(`mg cachewarm:probe:${tag}:${i}\r\n`));
}

interface Slot {
  conn: MemcachedConnection | undefined;
  /** `process.hrtime.bigint()` when the request now in flight was sent. */
  sentAt: bigint | undefined;
}

export interface ProbeCounters {
  readonly answered: number;
  /** Probe connections lost (each is dialled again after a pause). */
  readonly errors: number;
  readonly lastError: Error | undefined;
}

/** A probe on the caller's own event loop: see the top of this file for when that is enough. */
export class LatencyProbe implements LatencySource {
  private readonly window: LatencyWindow;
  private readonly slots: Slot[];
  private readonly requests: Buffer[];
  private readonly stop = new AbortController();
  private readonly loops: Promise<void>[] = [];
  private closing: Promise<void> | undefined;
  private answered = 0;
  private errors = 0;
  private lastError: Error | undefined;
  private next = 0;

  private constructor(
    readonly endpoint: Endpoint,
    private readonly connect: Connect,
    private readonly clock: Clock,
    private readonly intervalMs: number,
    private readonly options: LatencyProbeOptions,
    first: MemcachedConnection[],
  ) {
    this.window = new LatencyWindow(options.windowSize);
    this.requests = probeRequests(options.command ?? 'mg');
    this.slots = first.map((conn) => ({ conn, sentAt: undefined }));
  }

  /** Connects and starts probing. */
  static async start(endpoint: Endpoint, options: LatencyProbeOptions = {}): Promise<LatencyProbe> {
    const { connect = connectDirect, clock = systemClock, intervalMs = DEFAULT_PROBE_INTERVAL_MS, signal } = options;
    if (!Number.isFinite(intervalMs) || intervalMs < 0) {
      throw new CachewarmError('INVALID_ARGUMENT', `probe interval must be a non-negative number of ms, got ${intervalMs}`);
    }
    if (options.connections !== undefined && (!Number.isInteger(options.connections) || options.connections < 1)) {
      throw new CachewarmError('INVALID_ARGUMENT', `probe connections must be a positive integer, got ${options.connections}`);
    }
    if (signal?.aborted) throw abortReason(signal);
    const opened: MemcachedConnection[] = [];
    try {
      opened.push(await connect(endpoint, signal));
      let count = options.connections;
      if (count === undefined) {
        const threads = Number((await stats(opened[0] as MemcachedConnection)).get('threads'));
        count = Number.isInteger(threads) && threads > 0 ? Math.min(threads, MAX_DEFAULT_CONNECTIONS) : 1;
      }
      while (opened.length < count) opened.push(await connect(endpoint, signal));
    } catch (error) {
      for (const conn of opened) conn.close();
      throw error;
    }
    const probe = new LatencyProbe(endpoint, connect, clock, intervalMs, options, opened);
    probe.run();
    return probe;
  }

  /** Probe connections (each a closed loop). */
  get connections(): number {
    return this.slots.length;
  }

  get closed(): boolean {
    return this.closing !== undefined;
  }

  get counters(): ProbeCounters {
    return { answered: this.answered, errors: this.errors, lastError: this.lastError };
  }

  mark(): number {
    return this.window.mark();
  }

  read(mark: number): LatencyReading {
    return this.window.read(mark, this.pendingMicros());
  }

  /** When each request still in flight was sent (`process.hrtime.bigint()`). */
  pendingSince(): bigint[] {
    return this.slots.flatMap((slot) => (slot.sentAt === undefined ? [] : [slot.sentAt]));
  }


  /** Stops probing and closes the connections; resolves once every loop has ended. Safe to call more than once. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.stop.abort(new CachewarmError('ABORTED', `latency probe of ${this.label} closed`));
      this.options.signal?.removeEventListener('abort', this.onAbort);
      for (const slot of this.slots) slot.conn?.close();
      await Promise.all(this.loops);
    })();
    return this.closing;
  }

  private get label(): string {
    return this.endpoint.label ?? `${this.endpoint.host}:${this.endpoint.port}`;
  }

  private readonly onAbort = (): void => void this.close();

  private pendingMicros(): number[] {
    const now = process.hrtime.bigint();
    return this.pendingSince().map((sentAt) => Number(now - sentAt) / 1000);
  }

  private run(): void {
    const { signal } = this.options;
    if (signal?.aborted) {
      void this.close();
      return;
    }
    signal?.addEventListener('abort', this.onAbort, { once: true });
    for (const slot of this.slots) this.loops.push(this.loop(slot));
  }

  private async loop(slot: Slot): Promise<void> {
    const stop = this.stop.signal;
    while (!stop.aborted) {
      const conn = slot.conn ?? (await this.redial(slot));
      if (!conn) return;
      const request = this.requests[this.next++ % this.requests.length] as Buffer;
      const sentAt = process.hrtime.bigint();
      slot.sentAt = sentAt;
      try {
        await conn.send(request, new ProbeReply(conn.label));
      } catch (error) {
        slot.sentAt = undefined;
        if (stop.aborted) return;
        this.errors++;
        this.lastError = error instanceof Error ? error : new Error(String(error));
        conn.close();
        slot.conn = undefined;
        // A node that does not speak the meta protocol will not start to: stop this loop.
        if (isCachewarmError(error, 'NODE_PROTOCOL')) return;
        if (!(await this.pause(RECONNECT_DELAY_MS))) return;
        continue;
      }
      const micros = Number(process.hrtime.bigint() - sentAt) / 1000;
      slot.sentAt = undefined;
      this.window.add(micros);
      this.answered++;
      this.options.onSample?.(micros);
      if (!(await this.pause(this.intervalMs))) return;
    }
  }

  /** Waits on the clock; false once the probe is closing. */
  private async pause(ms: number): Promise<boolean> {
    try {
      await this.clock.sleep(ms, this.stop.signal);
      return true;
    } catch {
      return false;
    }
  }

  private async redial(slot: Slot): Promise<MemcachedConnection | undefined> {
    const stop = this.stop.signal;
    while (!stop.aborted) {
      try {
        const conn = await this.connect(this.endpoint, stop);
        if (stop.aborted) {
          conn.close();
          return undefined;
        }
        slot.conn = conn;
        return conn;
      } catch (error) {
        if (stop.aborted) return undefined;
        this.errors++;
        this.lastError = error instanceof Error ? error : new Error(String(error));
        if (!(await this.pause(RECONNECT_DELAY_MS))) return undefined;
      }
    }
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// The same probe on a worker thread
// ---------------------------------------------------------------------------------------------

/** What the worker is started with. */
export interface ProbeWorkerData {
  readonly host: string;
  readonly port: number;
  readonly label: string | undefined;
  readonly intervalMs: number;
  readonly connections: number | undefined;
  readonly command: ProbeCommand;
  readonly reportEveryMs: number;
}

/** What the worker posts. */
export type ProbeWorkerMessage =
  | { readonly type: 'ready'; readonly connections: number }
  | { readonly type: 'samples'; readonly micros: Float64Array; readonly pendingSince: bigint[]; readonly errors: number }
  | { readonly type: 'failed'; readonly code: ErrorCode | undefined; readonly message: string };

export interface WorkerLatencyProbeOptions {
  readonly intervalMs?: number;
  readonly connections?: number;
  readonly windowSize?: number;
  readonly command?: ProbeCommand;
  /** How often the worker hands its samples over. Default 20 ms. */
  readonly reportEveryMs?: number;
  readonly signal?: AbortSignal | undefined;
}

/**
 * A LatencyProbe on a worker thread of its own, so that round trips are timed on an event loop
 * the dump does not block. The worker dials the node itself (`connectDirect`): a deployment
 * that needs another dialer runs the probe in-process.
 */
export class WorkerLatencyProbe implements LatencySource {
  private readonly window: LatencyWindow;
  private pending: bigint[] = [];
  private errorCount = 0;
  private failure: Error | undefined;
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly worker: Worker,
    readonly connections: number,
    windowSize: number | undefined,
    private readonly signal: AbortSignal | undefined,
  ) {
    this.window = new LatencyWindow(windowSize);
    worker.on('message', (message: ProbeWorkerMessage) => {
      if (message.type === 'samples') {
        for (const micros of message.micros) this.window.add(micros);
        this.pending = message.pendingSince;
        this.errorCount = message.errors;
      } else if (message.type === 'failed') {
        this.failure = new CachewarmError(message.code ?? 'NODE_UNREACHABLE', message.message);
      }
    });
    worker.on('error', (error) => {
      this.failure = error;
    });
    signal?.addEventListener('abort', this.onAbort, { once: true });
  }

  static async start(endpoint: Endpoint, options: WorkerLatencyProbeOptions = {}): Promise<WorkerLatencyProbe> {
    const { signal } = options;
    if (signal?.aborted) throw abortReason(signal);
    const workerData: ProbeWorkerData = {
      host: endpoint.host,
      port: endpoint.port,
      label: endpoint.label,
      intervalMs: options.intervalMs ?? DEFAULT_PROBE_INTERVAL_MS,
      connections: options.connections,
      command: options.command ?? 'mg',
      reportEveryMs: options.reportEveryMs ?? 20,
    };
    const worker = new Worker(new URL('./latency-probe-worker.js', import.meta.url), { workerData });
    try {
      const connections = await new Promise<number>((resolve, reject) => {
        const onMessage = (message: ProbeWorkerMessage): void => {
          if (message.type === 'ready') done(() => resolve(message.connections));
          else if (message.type === 'failed') {
            done(() => reject(new CachewarmError(message.code ?? 'NODE_UNREACHABLE', message.message)));
          }
        };
        const onError = (error: Error): void => done(() => reject(error));
        const onExit = (code: number): void => done(() => reject(new Error(`latency probe worker exited with ${code} before probing`)));
        const onAbort = (): void => done(() => reject(abortReason(signal as AbortSignal)));
        const done = (settle: () => void): void => {
          worker.off('message', onMessage);
          worker.off('error', onError);
          worker.off('exit', onExit);
          signal?.removeEventListener('abort', onAbort);
          settle();
        };
        worker.on('message', onMessage);
        worker.on('error', onError);
        worker.on('exit', onExit);
        signal?.addEventListener('abort', onAbort, { once: true });
      });
      return new WorkerLatencyProbe(worker, connections, options.windowSize, signal);
    } catch (error) {
      await worker.terminate();
      throw error;
    }
  }

  get closed(): boolean {
    return this.closing !== undefined;
  }

  /** Why the worker stopped probing, if it did. */
  get error(): Error | undefined {
    return this.failure;
  }

  /** Probe connections the worker lost (and dialled again). */
  get errors(): number {
    return this.errorCount;
  }

  mark(): number {
    return this.window.mark();
  }

  /** When each request in flight at the worker's last report was sent (`process.hrtime.bigint()`). */
  pendingSince(): bigint[] {
    return [...this.pending];
  }

  read(mark: number): LatencyReading {
    const now = process.hrtime.bigint();
    // process.hrtime is the same monotonic clock on every thread of the process.
    return this.window.read(mark, this.pending.map((sentAt) => Number(now - sentAt) / 1000));
  }


  /** Stops the worker. Safe to call more than once. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.signal?.removeEventListener('abort', this.onAbort);
      this.pending = [];
      await this.worker.terminate();
    })();
    return this.closing;
  }

  private readonly onAbort = (): void => void this.close();
}

/** Starts the probe on a worker thread: what a dump should use (see the top of this file). */
export function startWorkerLatencyProbe(endpoint: Endpoint, options?: WorkerLatencyProbeOptions): Promise<WorkerLatencyProbe> {
  return WorkerLatencyProbe.start(endpoint, options);
}
