import type http from 'node:http';
import type { S3Client } from '@aws-sdk/client-s3';
import type { SQSClient } from '@aws-sdk/client-sqs';
import { Counter, Gauge, Registry } from 'prom-client';
import type { Clock } from '../shared/clock.js';
import { type DumpCounters, newDumpCounters } from '../shared/counters.js';
import { CachewarmError, abortReason, isCachewarmError } from '../shared/errors.js';
import {
  BearerAuth,
  HttpError,
  type Reply,
  allow,
  createJsonApiServer,
  createMetricsServer,
  describeError,
  idInPath,
  listenHttp,
  metricsReply,
  readJsonBody,
} from '../shared/http-api.js';
import { endMarkerName, getJson, unmarkedChunksOf } from '../shared/job-layout.js';
import { version } from '../shared/memcached/commands.js';
import type { Endpoint, MemcachedConnection } from '../shared/memcached/connection.js';
import { withProcessMetrics } from '../shared/prometheus.js';
import { type ReadPace, startReadPace } from './read-pace.js';
import { type SourceGuardStatus, describeSourceGuard } from './source-guard.js';
import { VERSION } from '../shared/version.js';
import { SqsQueue } from '../shared/queue/sqs-queue.js';
import { FanOutQueue } from '../shared/queue/fan-out-queue.js';
import type { ChunkQueue } from '../shared/chunk-queue.js';
import { S3Store } from '../shared/store/s3-store.js';
import { TokenBucket } from '../shared/token-bucket.js';
import { dumpNode } from './dump-node.js';
import { type Connect, connectDirect } from '../shared/memcached/connect.js';
import { ringFilter } from './ring-filter.js';
import {
  type DumpState,
  type DumpStatus,
  type HealthStatus,
  MAX_REQUEST_BODY_BYTES,
  SIDECAR_PATHS,
  type StartDumpRequest,
  listedSampleJson,
  parseStartDumpRequest,
} from './sidecar-api.js';
import { Listing } from '../shared/key-sample.js';
import { type Log, safeLog } from '../shared/log.js';

export interface SidecarOptions {
  /** The memcached node this sidecar dumps (the one on its machine). */
  readonly memcached: Endpoint;
  /** The bearer token every request but the health check must carry. */
  readonly token: string;
  /** Built once by the caller (region, credentials, endpoint); each dump builds its store and queue over them. */
  readonly s3: S3Client;
  readonly sqs: SQSClient;
  readonly clock: Clock;
  readonly connect?: Connect | undefined;
  /** Key chunks read at once, each on its own connection (dumpNode's fetchConcurrency). Default 2. */
  readonly fetchConcurrency?: number | undefined;
  /** Largest chunkSizeBytes a request may ask for: with fetchConcurrency, sets the memory ceiling. Default 64 MiB. */
  readonly maxChunkSizeBytes?: number | undefined;
  /** Settled dumps whose status is kept for GET and /metrics (the oldest go first). Default 100. */
  readonly keepFinishedDumps?: number | undefined;
  /** How long a health check waits for memcached's `version`. Default 2 s. */
  readonly healthTimeoutMs?: number | undefined;
  /** How long a DELETE waits for the dump to stop before answering with it still stopping. Default 10 s. */
  readonly cancelWaitMs?: number | undefined;
  /** One structured event per call (JSON lines on stderr, from the CLI). Never sees the token. */
  readonly log?: Log | undefined;
}

export interface Sidecar {
  /** Starts listening; port 0 picks a free one. Resolves with the base URL, e.g. `http://127.0.0.1:11299`. */
  listen(host: string, port: number): Promise<{ url: string }>;
  /** Serves `/metrics` without the token on a listener of its own (see createMetricsServer). */
  listenMetrics(host: string, port: number): Promise<{ url: string }>;
  /** Stops taking requests, cancels a running dump (its progress stays in the store) and waits for it. Idempotent. */
  close(): Promise<void>;
}

const DEFAULT_FETCH_CONCURRENCY = 2;
const DEFAULT_MAX_CHUNK_SIZE_BYTES = 64 << 20;
/** dumpNode's pipelined value reads per connection: 2 × its default fetchBatchBytes (1 MiB). */
const PIPELINED_READ_BYTES = 2 << 20;
/** One key chunk in memory: dumpNode's default 20,000 keys of at most 250 bytes, each a Buffer (~100 bytes more). */
const KEY_CHUNK_BYTES = 20_000 * 350;
/** The crawl's table of keys already listed (SeenKeys, capped): only with `metadump all` (memcached < 1.6.19). */
const SEEN_KEYS_BYTES = 64 << 20;
/** Open connections at once: each may hold a request body of up to MAX_REQUEST_BODY_BYTES. */
const MAX_CONNECTIONS = 32;

/**
 * The sidecar's memory ceiling beyond Node's own baseline (~50 MiB), set by its configuration
 * and never by the node's data: one dump at a time, and that dump holds about
 *
 *   fetchConcurrency × (maxChunkSizeBytes × 2 + 2 MiB)    per reader: its chunk buffer (a
 *                                                          power-of-two size class, so up to
 *                                                          twice the chunk size) and its
 *                                                          pipelined reads
 * + 2 × fetchConcurrency key chunks                        20,000 keys each, ≤ 250 bytes a key
 * + the table of keys already listed, ≤ 64 MiB             only with `metadump all` (memcached
 *                                                          before 1.6.19)
 *
 * plus at most 32 connections × 1 MiB of request bodies, and a bounded number of kept
 * statuses. E.g. the defaults (2 readers, 64 MiB chunks) come to about 380 MiB; 4 MiB chunks
 * to about 140 MiB.
 */
export function sidecarMemoryCeilingBytes(options: Pick<SidecarOptions, 'fetchConcurrency' | 'maxChunkSizeBytes'>): number {
  const fetchConcurrency = options.fetchConcurrency ?? DEFAULT_FETCH_CONCURRENCY;
  const chunkBytes = options.maxChunkSizeBytes ?? DEFAULT_MAX_CHUNK_SIZE_BYTES;
  const perReader = chunkBytes * 2 + PIPELINED_READ_BYTES + 2 * KEY_CHUNK_BYTES;
  return fetchConcurrency * perReader + SEEN_KEYS_BYTES + MAX_CONNECTIONS * MAX_REQUEST_BODY_BYTES;
}

// ---------------------------------------------------------------------------------------
// Dumps

/** One dump this process ran or runs. Its counters are dumpNode's own object: live. */
class DumpRun {
  readonly counters: DumpCounters = newDumpCounters();
  readonly abort = new AbortController();
  readonly startedAtMs: number;
  state: DumpState = 'running';
  finishedAtMs: number | undefined;
  error: { code: string; message: string } | undefined;
  /** Resolves (never rejects) once dumpNode has returned or thrown. */
  settled: Promise<void> = Promise.resolve();
  /** The source guard's state: read from the running dump's pace, kept as it was once it ends. */
  guard: () => SourceGuardStatus | undefined = () => undefined;
  /** The keys this run's crawl listed, sampled for the controller's read-back (see StartDumpRequest.sampleKeys). */
  readonly listing: Listing | undefined;

  constructor(
    readonly request: StartDumpRequest,
    clock: Clock,
  ) {
    this.startedAtMs = clock.now();
    this.listing = request.sampleKeys ? new Listing(request.sampleKeys, [request.node]) : undefined;
  }

  get stopping(): boolean {
    return this.state === 'running' && this.abort.signal.aborted;
  }

  status(): DumpStatus {
    const guard = this.guard();
    return {
      jobId: this.request.jobId,
      node: this.request.node,
      state: this.state,
      counters: { ...this.counters },
      startedAt: new Date(this.startedAtMs).toISOString(),
      ...(this.finishedAtMs !== undefined && { finishedAt: new Date(this.finishedAtMs).toISOString() }),
      ...(this.error && { error: this.error }),
      ...(guard && { sourceGuard: guard }),
      ...(this.state === 'finished' && this.listing?.whole && { listedSample: listedSampleJson(this.listing.sample) }),
    };
  }
}

/** The fields that place a job's output: a repeated start must name the same ones. */
const PLACEMENT_FIELDS = ['node', 'bucket', 'prefix', 'queueUrl'] as const;

/**
 * The dumps of this process: at most one running (memcached allows one LRU crawl at a time),
 * and a bounded number of settled ones kept for their status.
 */
class DumpRegistry {
  private readonly runs = new Map<string, DumpRun>();
  /** Dumps that ended since the sidecar started, by how: counters present (at 0) from start-up. */
  readonly ended: Record<'finished' | 'failed' | 'cancelled', number> = { finished: 0, failed: 0, cancelled: 0 };
  private active: DumpRun | undefined;
  private last: DumpRun | undefined;

  constructor(
    private readonly options: SidecarOptions,
    private readonly log: Log,
  ) {}

  get(jobId: string): DumpRun | undefined {
    return this.runs.get(jobId);
  }

  all(): DumpRun[] {
    return [...this.runs.values()];
  }

  get running(): DumpRun | undefined {
    return this.active;
  }

  get lastState(): DumpState | null {
    return (this.active ?? this.last)?.state ?? null;
  }

  /**
   * Starts a dump, or answers with the one already running or finished for the job (a
   * controller re-sends its start after its own restart). A failed or cancelled job starts
   * again: dumpNode resumes from what the store holds. So does a finished one whose end
   * marker is no longer in the store: what it stored is gone (the store lost its state, or
   * someone removed the job's objects), and only the store says what is done.
   */
  async start(request: StartDumpRequest): Promise<{ started: boolean; run: DumpRun }> {
    const finished = this.runs.get(request.jobId);
    if (finished?.state === 'finished' && !(await getJson(this.storeOf(request), endMarkerName(request.jobId, request.node)))) {
      this.log({ event: 'dump-redone', jobId: request.jobId, node: request.node, reason: 'its end marker is no longer in the store' });
      this.runs.delete(request.jobId);
    }
    const known = this.runs.get(request.jobId);
    if (known) checkSamePlacement(known.request, request);
    if (known?.stopping) throw busy(`job ${known.request.jobId} is being cancelled on this node; start it again once it has stopped`);
    if (known && (known.state === 'running' || known.state === 'finished')) return { started: false, run: known };
    if (this.active) {
      const what = this.active.stopping ? 'still stopping' : 'running';
      const { jobId, node } = this.active.request;
      throw busy(`job ${jobId} is ${what} on this node (node ${node}); memcached allows one crawl at a time`);
    }
    const maxChunk = this.options.maxChunkSizeBytes ?? DEFAULT_MAX_CHUNK_SIZE_BYTES;
    if (request.chunkSizeBytes > maxChunk) {
      const why = `${request.chunkSizeBytes} is over this sidecar's limit of ${maxChunk} bytes (its memory budget)`;
      throw new HttpError(400, 'INVALID_ARGUMENT', `start request: chunkSizeBytes: ${why}`, {}, 'chunkSizeBytes');
    }
    const run = new DumpRun(request, this.options.clock);
    const keyFilter = request.keyFilter && ringFilter(request.keyFilter.nodes, request.keyFilter.keep);
    this.runs.delete(request.jobId); // re-inserted last: the eviction order is by start
    this.runs.set(request.jobId, run);
    this.active = run;
    run.settled = this.execute(run, keyFilter);
    this.evictSettled();
    return { started: true, run };
  }

  /** Asks the job's dump to stop; resolves once it has, or after `waitMs` when one is given. */
  async cancel(run: DumpRun, why: string, waitMs?: number): Promise<void> {
    if (run.state !== 'running') return;
    if (!run.abort.signal.aborted) {
      this.log({ event: 'dump-cancelling', jobId: run.request.jobId, node: run.request.node, reason: why });
      run.abort.abort(new CachewarmError('ABORTED', `dump of job ${run.request.jobId} cancelled ${why}`, { job: run.request.jobId }));
    }
    if (waitMs === undefined) return run.settled;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([run.settled, new Promise<void>((resolve) => (timer = setTimeout(resolve, waitMs)))]);
    clearTimeout(timer);
  }

  private async execute(run: DumpRun, keyFilter: ((key: Buffer) => boolean) | undefined): Promise<void> {
    const { request } = run;
    const { clock, memcached } = this.options;
    const { keyFilter: filterSpec, target: _target, sse: _sse, alsoTo, ...settings } = request;
    this.log({ event: 'dump-started', ...settings, keyFilter: filterSpec !== undefined, ...(alsoTo && { alsoTo: alsoTo.map((d) => d.queueUrl) }) });
    const readPace = async (): Promise<ReadPace> => {
      const pace = await startReadPace(memcached, { protectSource: request.protectSource, maxItemsPerSecond: request.maxItemsPerSecond, clock, signal: run.abort.signal });
      run.guard = pace.status;
      const guard = pace.status();
      if (guard) {
        const { baselineP99Micros, limitP99Micros } = guard;
        this.log({ event: 'source-baseline', jobId: request.jobId, node: request.node, baselineP99Micros, limitP99Micros, msg: describeSourceGuard(guard) });
      }
      return pace;
    };
    try {
      await dumpNode({
        node: { id: request.node, host: memcached.host, port: memcached.port, label: request.node },
        jobId: request.jobId,
        store: this.storeOf(request),
        queue: this.queueOf(request),
        durableQueue: true,
        ...(request.standingQueue && { unmarkedOf: unmarkedChunksOf(this.storeOf(request), markingJobs(request), request.node) }),
        location: { bucket: request.bucket, prefix: request.prefix },
        target: request.target,
        clock,
        connect: this.options.connect ?? connectDirect,
        chunkSizeBytes: request.chunkSizeBytes,
        fetchConcurrency: this.options.fetchConcurrency ?? DEFAULT_FETCH_CONCURRENCY,
        readPace,
        // Bytes/s uploaded: the node's network is shared with live traffic too.
        ...(request.maxBytesPerSecond !== undefined && { uploadLimiter: new TokenBucket({ ratePerSecond: request.maxBytesPerSecond, clock }) }),
        keyFilter,
        counters: run.counters,
        ...run.listing?.of(request.node),
        signal: run.abort.signal,
      });
      run.state = 'finished';
    } catch (error) {
      // Cancelled: whatever dumpNode threw on the way out is the abort, not a failure.
      run.state = run.abort.signal.aborted ? 'cancelled' : 'failed';
      run.error = describeError(run.abort.signal.aborted ? run.abort.signal.reason : error);
    } finally {
      const last = run.guard();
      run.guard = () => last;
      this.ended[run.state === 'running' ? 'failed' : run.state]++;
      run.finishedAtMs = clock.now();
      if (this.active === run) this.active = undefined;
      this.last = run;
      this.log({
        event: `dump-${run.state}`,
        jobId: request.jobId,
        node: request.node,
        durationMs: run.finishedAtMs - run.startedAtMs,
        counters: { ...run.counters },
        ...(run.error && { error: run.error }),
      });
    }
  }

  /** The dump's queue, and with `alsoTo` every other target's: each chunk announced on all. */
  private queueOf(request: StartDumpRequest): ChunkQueue {
    const { sqs, clock } = this.options;
    const own = new SqsQueue({ client: sqs, queueUrl: request.queueUrl, clock });
    if (!request.alsoTo) return own;
    return new FanOutQueue([
      { queue: own, targetJobId: request.targetJobId },
      ...request.alsoTo.map((d) => ({ queue: new SqsQueue({ client: sqs, queueUrl: d.queueUrl, clock }), target: d.target, targetJobId: d.jobId })),
    ]);
  }

  private storeOf(request: StartDumpRequest): S3Store {
    return new S3Store({ client: this.options.s3, bucket: request.bucket, prefix: request.prefix, sse: request.sse });
  }

  private evictSettled(): void {
    const keep = this.options.keepFinishedDumps ?? 100;
    const settled = [...this.runs.values()].filter((r) => r.state !== 'running');
    for (const run of settled.slice(0, Math.max(0, settled.length - keep))) this.runs.delete(run.request.jobId);
  }
}

/** The jobs whose populators mark the dump's chunks: each target's when it names them, else the dump's own. */
function markingJobs(request: StartDumpRequest): string[] {
  return [request.targetJobId ?? request.jobId, ...(request.alsoTo ?? []).map((d) => d.jobId ?? request.jobId)];
}

function busy(message: string): HttpError {
  return new HttpError(409, 'NODE_BUSY', message);
}

function checkSamePlacement(known: StartDumpRequest, request: StartDumpRequest): void {
  const queuesOf = (r: StartDumpRequest): string[] => (r.alsoTo ?? []).map((d) => d.queueUrl);
  if (JSON.stringify(queuesOf(known)) !== JSON.stringify(queuesOf(request))) {
    throw new HttpError(
      400,
      'INVALID_ARGUMENT',
      `start request: alsoTo: job ${known.jobId} already dumps here announcing also on ${JSON.stringify(queuesOf(known))}, not ${JSON.stringify(queuesOf(request))}`,
      {},
      'alsoTo',
    );
  }
  for (const field of PLACEMENT_FIELDS) {
    if (known[field] !== request[field]) {
      throw new HttpError(
        400,
        'INVALID_ARGUMENT',
        `start request: ${field}: job ${known.jobId} already dumps here with ${field} ` +
          `${JSON.stringify(known[field])}, not ${JSON.stringify(request[field])}`,
        {},
        field,
      );
    }
  }
}

// ---------------------------------------------------------------------------------------
// Metrics

const COUNTER_METRICS: readonly { name: string; help: string; field: keyof DumpCounters }[] = [
  { name: 'cachewarm_dump_keys_listed_total', help: 'Keys the LRU crawler listed (a live walk may list a key twice).', field: 'listed' },
  { name: 'cachewarm_dump_keys_caught_up_total', help: 'Keys only a catch-up crawl pass found.', field: 'caughtUp' },
  { name: 'cachewarm_dump_items_read_total', help: 'Items read with their value into data chunks.', field: 'read' },
  { name: 'cachewarm_dump_bytes_read_total', help: 'Value bytes read into data chunks.', field: 'bytesRead' },
  { name: 'cachewarm_dump_data_chunks_total', help: 'Data chunks stored and announced on the queue.', field: 'dataChunks' },
  { name: 'cachewarm_dump_items_expired_total', help: 'Items already expired when listed or read: not copied.', field: 'expired' },
  { name: 'cachewarm_dump_items_gone_total', help: 'Items deleted or evicted between the crawl and the read.', field: 'gone' },
  { name: 'cachewarm_dump_items_filtered_total', help: 'Keys left out by the key filter.', field: 'filtered' },
  { name: 'cachewarm_dump_items_unsupported_total', help: 'Keys the text protocol cannot name: not copied.', field: 'unsupported' },
];

/**
 * The sidecar's metrics registry. Every value is read from the dumps' state when scraped (the
 * `collect` hooks): each kept dump's counters, labelled job_id and node, and the dumps ended
 * by state (present, at 0, from start-up).
 */
function sidecarMetrics(dumps: DumpRegistry): Registry {
  const registry = new Registry();
  const registers = [registry];
  for (const { name, help, field } of COUNTER_METRICS) {
    new Counter({
      name,
      help,
      labelNames: ['job_id', 'node'],
      registers,
      collect() {
        this.reset();
        for (const run of dumps.all()) this.inc({ job_id: run.request.jobId, node: run.request.node }, run.counters[field]);
      },
    });
  }
  new Counter({
    name: 'cachewarm_dumps_ended_total',
    help: 'Dumps that ended since the sidecar started, by how they ended.',
    labelNames: ['state'],
    registers,
    collect() {
      this.reset();
      for (const [state, value] of Object.entries(dumps.ended)) this.inc({ state }, value);
    },
  });
  // The source guard of each kept dump that ran protected: what it allows and what it sees.
  const guarded = (): { labels: { job_id: string; node: string }; guard: SourceGuardStatus }[] =>
    dumps.all().flatMap((run) => {
      const guard = run.guard();
      return guard ? [{ labels: { job_id: run.request.jobId, node: run.request.node }, guard }] : [];
    });
  new Gauge({
    name: 'cachewarm_source_guard_pace_items_per_second',
    help: 'Items per second the source guard lets the dump read now (0 while it measures the baseline).',
    labelNames: ['job_id', 'node'],
    registers,
    collect() {
      this.reset();
      for (const { labels, guard } of guarded()) this.set(labels, guard.paceItemsPerSecond);
    },
  });
  new Gauge({
    name: 'cachewarm_source_probe_p99_seconds',
    help: "The latency probe's p99 on the source node: before the dump (window baseline), over the last second (window current), and the most the guard allows (window limit).",
    labelNames: ['job_id', 'node', 'window'],
    registers,
    collect() {
      this.reset();
      for (const { labels, guard } of guarded()) {
        const windows = { baseline: guard.baselineP99Micros, current: guard.currentP99Micros, limit: guard.limitP99Micros };
        for (const [window, micros] of Object.entries(windows)) if (micros !== undefined) this.set({ ...labels, window }, micros / 1e6);
      }
    },
  });
  new Counter({
    name: 'cachewarm_source_guard_backoffs_total',
    help: "Seconds in which the probe's p99 went over the limit and the guard cut the pace.",
    labelNames: ['job_id', 'node'],
    registers,
    collect() {
      this.reset();
      for (const { labels, guard } of guarded()) this.inc(labels, guard.backoffs);
    },
  });
  new Gauge({
    name: 'cachewarm_dump_running',
    help: 'Whether a dump is running on this node (1) or not (0).',
    registers,
    collect() {
      this.set(dumps.running ? 1 : 0);
    },
  });
  return withProcessMetrics(registry);
}

// ---------------------------------------------------------------------------------------
// The server

/** The promise's outcome, or the signal's reason if it aborts first. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(abortReason(signal));
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/** Resolves true when memcached answers `version` within `timeoutMs`. */
async function memcachedAnswers(options: SidecarOptions, timeoutMs: number): Promise<boolean> {
  const signal = AbortSignal.timeout(timeoutMs);
  let conn: MemcachedConnection | undefined;
  try {
    conn = await (options.connect ?? connectDirect)(options.memcached, signal);
    await untilAborted(version(conn), signal);
    return true;
  } catch {
    return false;
  } finally {
    conn?.close();
  }
}

/**
 * The dumper sidecar: a small authenticated HTTP API beside one memcached node that runs
 * that node's dump (dumpNode over an S3 store and an SQS queue) on a controller's request.
 * See dumper/sidecar-api.ts for the routes and sidecarMemoryCeilingBytes for its memory.
 */
export function createSidecar(options: SidecarOptions): Sidecar {
  const log = safeLog(options.log);
  if (options.token === '') throw new CachewarmError('INVALID_ARGUMENT', 'the sidecar needs a non-empty token');
  const auth = new BearerAuth(options.token, 'cachewarm-dumper');
  const registry = new DumpRegistry(options, log);
  const metrics = sidecarMetrics(registry);
  const cancelWaitMs = options.cancelWaitMs ?? 10_000;
  let closing: Promise<void> | undefined;

  function found(jobId: string): DumpRun {
    const run = registry.get(jobId);
    if (!run) throw new HttpError(404, 'NOT_FOUND', `no dump of job ${JSON.stringify(jobId)} on this sidecar`);
    return run;
  }

  async function health(): Promise<Reply> {
    const up = await memcachedAnswers(options, options.healthTimeoutMs ?? 2_000);
    const body: HealthStatus = { ok: up, memcached: up ? 'up' : 'down', dump: registry.lastState };
    return { status: up ? 200 : 503, body };
  }

  async function startDump(req: http.IncomingMessage): Promise<Reply> {
    const body = await readJsonBody(req, MAX_REQUEST_BODY_BYTES);
    if (closing) throw new HttpError(503, 'SHUTTING_DOWN', 'the sidecar is shutting down');
    let request: StartDumpRequest;
    try {
      request = parseStartDumpRequest(body);
    } catch (error) {
      if (!isCachewarmError(error, 'INVALID_ARGUMENT')) throw error;
      const field = typeof error.context['field'] === 'string' ? error.context['field'] : undefined;
      throw new HttpError(400, 'INVALID_ARGUMENT', error.message, {}, field);
    }
    const { started, run } = await registry.start(request);
    return { status: started ? 202 : 200, body: run.status() };
  }

  async function route(req: http.IncomingMessage, pathname: string): Promise<Reply> {
    if (pathname === SIDECAR_PATHS.health) {
      allow(req.method, ['GET']);
      return health();
    }
    auth.require(req.headers.authorization);
    if (pathname === SIDECAR_PATHS.metrics) {
      allow(req.method, ['GET']);
      return metricsReply(metrics);
    }
    if (pathname === SIDECAR_PATHS.dumps) {
      allow(req.method, ['POST']);
      return startDump(req);
    }
    const jobId = idInPath(pathname, SIDECAR_PATHS.dumps);
    if (jobId === undefined) throw new HttpError(404, 'NOT_FOUND', `no such path: ${pathname}`);
    allow(req.method, ['GET', 'DELETE']);
    const run = found(jobId);
    if (req.method === 'DELETE') {
      await registry.cancel(run, 'by request', cancelWaitMs);
      // 202 while it is still stopping: the caller polls the status for `cancelled`.
      return { status: run.state === 'running' ? 202 : 200, body: run.status() };
    }
    return { status: 200, body: run.status() };
  }

  // Probes, scrapes and status polls are not logged (they come every few seconds); starts,
  // cancels and refusals are.
  const server = createJsonApiServer({ route, log, maxConnections: MAX_CONNECTIONS });
  const metricsServer = createMetricsServer(metrics, log);

  return {
    async listen(host, port) {
      const url = await listenHttp(server, host, port); // rejects with EADDRINUSE and the like
      log({ event: 'listening', url, memcached: `${options.memcached.host}:${options.memcached.port}`, version: VERSION });
      return { url };
    },
    async listenMetrics(host, port) {
      const url = await listenHttp(metricsServer, host, port);
      log({ event: 'metrics-listening', url: `${url}/metrics` });
      return { url };
    },
    close() {
      closing ??= (async () => {
        if (metricsServer.listening) metricsServer.close();
        metricsServer.closeAllConnections();
        const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
        server.closeIdleConnections();
        const run = registry.running;
        if (run) await registry.cancel(run, 'because the sidecar is shutting down');
        // Requests still open (a DELETE waiting on that dump) have had their answer by now.
        server.closeAllConnections();
        await stopped;
        log({ event: 'closed' });
      })();
      return closing;
    },
  };
}
