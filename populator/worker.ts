import type { S3Client } from '@aws-sdk/client-s3';
import type { SQSClient } from '@aws-sdk/client-sqs';
import { connectDirect } from '../shared/memcached/connect.js';
import { BufferPool } from '../shared/buffer-pool.js';
import type { ChunkMessage } from '../shared/chunk-message.js';
import type { ChunkQueue, Delivery } from '../shared/chunk-queue.js';
import type { ChunkStore } from '../shared/chunk-store.js';
import type { Clock } from '../shared/clock.js';
import { type WriteCounters, WriteTally, addInto } from '../shared/counters.js';
import { CachewarmError } from '../shared/errors.js';
import { type JobQueueInfo, type QueueBacklog, backlogIsEmpty, queueBacklog, readJobQueue } from '../shared/job-queues.js';
import {
  type JobManifest,
  dumpProgress,
  getJson,
  manifestName,
  populatorReportName,
  putJson,
  refusedName,
  summaryName,
} from '../shared/job-layout.js';
import { ChunkBuilder } from '../shared/chunk-format.js';
import { SqsQueue, isQueueGone } from '../shared/queue/sqs-queue.js';
import { S3Store } from '../shared/store/s3-store.js';
import { type AcknowledgedBatch, ReportedAcknowledgements } from './acknowledgements.js';
import { MetaNodeWriter } from './meta-node-writer.js';
import { PinnedTargets } from './pinned-targets.js';
import { DeleteReconciler } from './delete-reconciler.js';
import { VERSION } from '../shared/version.js';
import type { NodeWriter } from './node-writer.js';
import type { Refusal } from '../shared/memcached/meta-add.js';
import { runPopulator } from './populate.js';
import type { Log, LogEntry } from '../shared/log.js';

/** One structured log record: `event` says what happened, the rest where and how much. */
/** What every populator worker takes, on a job's own queue or a standing one. */
export interface WorkerBaseOptions {
  /** Built once by the caller (region, credentials, endpoint). */
  readonly s3: S3Client;
  readonly sqs: SQSClient;
  readonly queueUrl: string;
  /** Names this worker's reports; unique per process (e.g. hostname-pid). */
  readonly workerId: string;
  /** Chunks written at once. Memory: about concurrency × chunk size. Default 4. */
  readonly concurrency?: number;
  /** Keep polling after the job is complete (the queue is empty); end only when the signal aborts. */
  readonly follow?: boolean;
  readonly clock: Clock;
  /** Abort (SIGTERM from an autoscaler): stop receiving, hand held chunks back, report, return. */
  readonly signal?: AbortSignal | undefined;
  readonly log?: Log | undefined;
  /** Long-poll wait of one receive, 1 to 20 s. Default 20. */
  readonly waitTimeSeconds?: number;
  readonly progressIntervalMs?: number;
  readonly reportIntervalMs?: number;
}

/** `queueUrl`: the job queue, whose tags name the job, the bucket, the prefix and the dead-letter queue. */
export interface PopulatorWorkerOptions extends WorkerBaseOptions {
  /** Pause between the two completion checks (SQS counts are approximate). Default: one long poll. */
  readonly pollIntervalMs?: number;
  /** How items reach the target nodes; default meta commands over direct connections. Closed by its owner. */
  readonly writer?: NodeWriter;
}

export interface WorkerResult {
  readonly jobId: string;
  readonly workerId: string;
  /** Chunks this worker wrote whole and acknowledged. */
  readonly chunks: number;
  /** Messages this worker set aside on the dead-letter queue (malformed, out of scope, corrupt, retries used up). */
  readonly parked: number;
  readonly counters: WriteCounters;
  readonly byNode: Readonly<Record<string, WriteCounters>>;
  /**
   * `complete`: every source node finished and the queue is empty, or the controller deleted
   * the queue after writing the job's summary. `aborted`: stopped by the signal.
   */
  readonly outcome: 'complete' | 'aborted';
  /** Messages on the job's dead-letter queue when the worker ended, parked by any worker; undefined when unreadable. */
  readonly deadLettered: number | undefined;
}

/**
 * The record each worker keeps in the store, so the controller can sum every worker's
 * counters. It counts chunks written whole, and is written before their messages are
 * deleted: a worker that dies loses no count (its unfinished chunks are delivered again and
 * counted by the worker that finishes them).
 */
export interface PopulatorReport {
  readonly workerId: string;
  readonly jobId: string;
  readonly chunks: number;
  readonly parked: number;
  readonly byNode: Readonly<Record<string, WriteCounters>>;
  /** false while the worker runs (a periodic report, or one before deleting messages), true from its last one. */
  readonly final: boolean;
  readonly updatedAt: string;
}

/** What one worker has done so far. */
export class WorkerStats {
  chunks = 0;
  parked = 0;
  items = 0;
  /** Deliveries received and not yet written whole, handed back or parked. */
  held = 0;
  /** Every write, those of chunks not (yet) written whole included: for the progress log. */
  readonly tally = new WriteTally();
  /** Writes of chunks written whole: what the reports and the result count. */
  readonly written = new WriteTally();
  /** The last `waiting` line logged, so it is logged once per change rather than every poll. */
  lastWaiting = '';

  byNode(): Record<string, WriteCounters> {
    return Object.fromEntries([...this.written.byNode].map(([address, counters]) => [address, { ...counters }]));
  }
}

export const DEFAULT_PROGRESS_INTERVAL_MS = 10_000;
export const DEFAULT_REPORT_INTERVAL_MS = 30_000;
/** Time given to one report (the last one too, once the worker was told to stop), and to one batch of deletes. */
export const FINAL_REPORT_TIMEOUT_MS = 15_000;
/** Acknowledged messages wait at most about this long for the report that precedes their delete. */
export const ACK_INTERVAL_MS = 1_000;

/**
 * The job's delete reconcile (DeleteReconciler), unless its warm turned it off: lookups go
 * only to the source (and fallback) processes the controller recorded for the job.
 */
export function jobReconciler(store: ChunkStore, jobId: string, manifest: JobManifest, clock: Clock, log: Log): DeleteReconciler | undefined {
  if (manifest.reconcileDeletes === false) return undefined;
  return new DeleteReconciler({
    connect: connectDirect,
    clock,
    labelOf: (address) => `${manifest.source.replica}/${address}`,
    checkSource: PinnedTargets.recordedIn(store, jobId, 'sources', manifest.fallback?.processes).check,
    fallback: manifest.fallback,
    onUnchecked: (source, items, error) =>
      log({ event: 'reconcile-unchecked', level: 'warn', jobId, source, items, reason: error.message }),
  });
}

/**
 * A stateless populator: everything it needs comes from the job queue's tags and the job's
 * manifest. It drains the queue (long poll, download, verify, add-only writes by the
 * manifest's ring, delete only when every item was handled and the report counting them is
 * written), and ends when the job is complete — every source node's end marker written and
 * nothing left on the queue, or the queue deleted after the job's summary was written — or,
 * with `follow`, only when its signal aborts. A message whose ring, source node or chunk
 * the manifest does not name is parked unread. Chunks are never deleted here: SQS may
 * deliver a message twice, and the controller removes the job's objects at the end.
 */
export async function runPopulatorWorker(options: PopulatorWorkerOptions): Promise<WorkerResult> {
  const { sqs, clock, signal, workerId } = options;
  const log = options.log ?? ((): void => undefined);
  const waitTimeSeconds = options.waitTimeSeconds ?? 20;
  // At least 1 s: an empty drain is what paces the completion checks.
  if (!Number.isInteger(waitTimeSeconds) || waitTimeSeconds < 1 || waitTimeSeconds > 20) {
    throw new CachewarmError('INVALID_ARGUMENT', `the long-poll wait must be 1 to 20 whole seconds, got ${waitTimeSeconds}`);
  }
  const job = await readJobQueue(sqs, options.queueUrl, signal);
  const store = new S3Store({ client: options.s3, bucket: job.bucket, prefix: job.prefix });
  const manifest = await loadManifest(store, job.jobId, signal);
  const stats = new WorkerStats();
  log({
    event: 'worker-started',
    version: VERSION,
    jobId: job.jobId,
    worker: workerId,
    queue: job.queueUrl,
    store: store.describe(job.jobId),
    target: manifest.target.replica,
    sourceNodes: manifest.source.nodes.length,
    concurrency: options.concurrency ?? 4,
    follow: options.follow === true,
    visibilityTimeoutSeconds: job.visibilityTimeoutSeconds,
    maxReceives: job.maxReceives,
  });

  const queue = new SqsQueue({
    client: sqs,
    queueUrl: job.queueUrl,
    deadLetterQueueUrl: job.deadLetterQueueUrl,
    waitTimeSeconds,
    visibilityTimeoutSeconds: job.visibilityTimeoutSeconds,
    stopWhenEmpty: true,
    maxReceives: job.maxReceives,
    onMalformed: (reason, messageId) => {
      stats.parked++;
      log({ event: 'message-parked', jobId: job.jobId, messageId, reason });
    },
    clock,
  });
  const labels = new Map(manifest.target.nodes.map((node) => [node.address, `${manifest.target.replica}/${node.address}`]));
  const pinned = PinnedTargets.recordedIn(store, job.jobId);
  const writer =
    options.writer ?? new MetaNodeWriter({ connect: connectDirect, clock, labelOf: (address) => labels.get(address) ?? address, checkConnection: pinned.check });
  const report = reporter(store, populatorReportName(job.jobId, workerId), (final) => reportOf(job.jobId, workerId, stats, final, clock));
  const acks = new ReportedAcknowledgements({
    report: () => report(false),
    deleteAll: (deliveries) => queue.ackAll(deliveries, AbortSignal.timeout(FINAL_REPORT_TIMEOUT_MS)),
    handBack: (delivery, reason) => retryLogged(delivery, reason, job, stats, log),
    onSettled: (batch) => logAcknowledged(log, job.jobId, batch),
  });

  // On abort, chunks stuck on a node that does not answer would hold the worker until the
  // reply timeout: closing our connections fails their writes at once, and each is handed back.
  const reconciler = jobReconciler(store, job.jobId, manifest, clock, log);
  const closeOnAbort = (): void => {
    if (!options.writer) void writer.close();
    void reconciler?.close();
  };
  signal?.addEventListener('abort', closeOnAbort, { once: true });
  const background = new AbortController();
  const timers = Promise.all([
    every(clock, options.progressIntervalMs ?? DEFAULT_PROGRESS_INTERVAL_MS, background.signal, () => log(progressEntry(job.jobId, stats))),
    // Not cut short by the stop: one still being written must land before the final one.
    every(clock, options.reportIntervalMs ?? DEFAULT_REPORT_INTERVAL_MS, background.signal, () =>
      report(false).catch((error: unknown) => logReportFailure(log, job.jobId, error)),
    ),
    every(clock, ACK_INTERVAL_MS, background.signal, () => acks.flush()),
  ]);
  let outcome: WorkerResult['outcome'];
  const context: DrainContext = {
    ...options,
    job,
    store,
    manifest,
    stats,
    log,
    writer,
    reconciler,
    acks,
    queue: observed(queue, acks, job, stats, log),
    pollIntervalMs: options.pollIntervalMs ?? waitTimeSeconds * 1000,
  };
  try {
    outcome = await drainUntilDone(context).catch((error: unknown) => completeIfSummarized(error, context));
  } finally {
    background.abort();
    await timers;
    // What was acknowledged during the stop goes too, after its report.
    await acks.flush();
    signal?.removeEventListener('abort', closeOnAbort);
    if (!options.writer) await writer.close();
    await reconciler?.close();
    // After an abort too: the controller sums what every worker did, stopped ones included.
    await report(true).catch((error: unknown) => logReportFailure(log, job.jobId, error));
  }
  const deadLettered = await deadLetterCount(sqs, job.deadLetterQueueUrl);
  const result: WorkerResult = {
    jobId: job.jobId,
    workerId,
    chunks: stats.chunks,
    parked: stats.parked,
    counters: stats.written.total(),
    byNode: stats.byNode(),
    outcome,
    deadLettered,
  };
  log({ event: 'worker-finished', jobId: job.jobId, worker: workerId, outcome, chunks: stats.chunks, parked: stats.parked, deadLettered, ...result.counters });
  return result;
}

export async function loadManifest(store: ChunkStore, jobId: string, signal: AbortSignal | undefined): Promise<JobManifest> {
  const name = manifestName(jobId);
  const manifest = await getJson<JobManifest>(store, name, signal);
  if (!manifest) {
    throw new CachewarmError('CHUNK_MISSING', `job ${jobId} has no manifest at ${store.describe(name)} (the controller writes it before the job starts)`, {
      chunk: name,
    });
  }
  const dump = manifest.dumpJobId;
  if (manifest.jobId !== jobId || !Array.isArray(manifest.source?.nodes) || !Array.isArray(manifest.target?.nodes) || (dump !== undefined && typeof dump !== 'string')) {
    throw new CachewarmError('CHUNK_CORRUPT', `${store.describe(name)} is not the manifest of job ${jobId}`, { chunk: name });
  }
  return manifest;
}

interface DrainContext extends PopulatorWorkerOptions {
  readonly job: JobQueueInfo;
  readonly store: ChunkStore;
  readonly manifest: JobManifest;
  readonly stats: WorkerStats;
  readonly log: Log;
  readonly writer: NodeWriter;
  readonly reconciler: DeleteReconciler | undefined;
  readonly acks: ReportedAcknowledgements;
  readonly queue: ChunkQueue;
  readonly pollIntervalMs: number;
}

/**
 * The controller deletes a job's queues once the job is complete and its summary written; a
 * worker that then finds its queue gone (one of an external fleet, which may not see the job
 * complete on its own: a source node covered from another replica leaves no end marker) has
 * nothing left to do. Without the summary, the queue went before the job was done: an error
 * that says so.
 */
async function completeIfSummarized(error: unknown, context: DrainContext): Promise<WorkerResult['outcome']> {
  if (!isQueueGone(error)) throw error;
  const { job, store, stats, log } = context;
  const name = summaryName(job.jobId);
  const summary = await getJson<unknown>(store, name, AbortSignal.timeout(FINAL_REPORT_TIMEOUT_MS));
  if (summary === undefined) {
    throw new CachewarmError(
      'JOB_FAILED',
      `queue ${job.queueUrl} of job ${job.jobId} was deleted before the job completed (no summary at ${store.describe(name)}): ` +
        'the messages still on it are gone with it, and no worker can receive them',
      { jobId: job.jobId, queue: job.queueUrl },
      { cause: error },
    );
  }
  log({ ...progressEntry(job.jobId, stats), event: 'job-complete', queueDeleted: true, summary: store.describe(name) });
  return 'complete';
}

/**
 * Drains until the queue is empty once, then asks whether the job is complete; if not
 * (dumpers still running, chunks held by other workers), drains again. Without `follow`
 * it returns once the job is complete; with it, only on abort.
 */
async function drainUntilDone(context: DrainContext): Promise<WorkerResult['outcome']> {
  const { job, store, manifest, stats, clock, signal, log } = context;
  const pool = new BufferPool();
  let announced = false;
  for (;;) {
    if (signal?.aborted) return 'aborted';
    await runPopulator({
      queue: context.queue,
      store,
      writer: context.writer,
      reconciler: context.reconciler,
      clock,
      tally: stats.tally,
      concurrency: context.concurrency ?? 4,
      // Never: SQS may deliver a message again, and its chunk must still be there.
      deleteConsumed: false,
      pool,
      scope: {
        jobId: job.jobId,
        store: { bucket: job.bucket, prefix: job.prefix },
        // The manifest, not the message, says where the job writes and whose chunks it takes.
        manifest: { where: store.describe(manifestName(job.jobId)), target: manifest.target, sourceNodes: manifest.source.nodes, dumpJobId: manifest.dumpJobId },
      },
      onRefused: (message, address, refusals) => recordRefusals({ store, jobId: job.jobId, log, signal }, message, address, refusals),
      // Counted before the acknowledgement: the report that precedes the message's delete counts it.
      onChunkWritten: (message, written) => {
        for (const [address, counters] of written.byNode) addInto(stats.written.for(address), counters);
        stats.chunks++;
        stats.items += message.chunk.items;
      },
      onChunkDone: (message) => log({ event: 'chunk-done', level: 'debug', jobId: job.jobId, chunk: message.chunk.name, items: message.chunk.items }),
      signal,
    });
    // Before judging the job: messages waiting for their report still count as in flight.
    await context.acks.flush();
    if (signal?.aborted) return 'aborted';
    if (!(await jobComplete(context).catch(abortedIsIncomplete(signal)))) continue;
    if (!context.follow) return 'complete';
    if (!announced) {
      announced = true;
      log({ ...progressEntry(job.jobId, stats), event: 'job-complete', following: true });
    }
  }
}

/**
 * Keeps the keys a target node refused, under the job (`refused/…`), for the controller's
 * retry of them; resolves once stored, before the message may be acknowledged.
 */
export function recordRefusals(
  job: { readonly store: ChunkStore; readonly jobId: string; readonly log: Log; readonly signal?: AbortSignal | undefined },
  message: ChunkMessage,
  address: string,
  refusals: readonly Refusal[],
): Promise<void> {
  const keys = new ChunkBuilder('keys', refusals.length * 64);
  for (const { item } of refusals) keys.addKey(item.key, item.exptime, item.value.length);
  const name = refusedName(job.jobId, message.source, message.chunk.name, address);
  job.log({ event: 'items-refused', jobId: job.jobId, chunk: message.chunk.name, node: address, items: refusals.length, record: job.store.describe(name) });
  return job.store.put(name, keys.seal(), job.signal);
}

/** A check cut short by the abort answers "not complete"; the loop then sees the signal. */
const abortedIsIncomplete =
  (signal: AbortSignal | undefined) =>
  (error: unknown): false => {
    if (signal?.aborted) return false;
    throw error;
  };

/**
 * Complete: every source node's end marker is in the store and the queue holds nothing,
 * seen twice a poll apart, since SQS's counts are approximate and a message can be in
 * transit between a dumper's send and the count.
 */
async function jobComplete(context: DrainContext): Promise<boolean> {
  const first = await jobState(context);
  if (!first.complete) return false;
  try {
    await context.clock.sleep(context.pollIntervalMs, context.signal);
  } catch {
    return false; // aborted: the caller sees the signal
  }
  return (await jobState(context)).complete;
}

async function jobState(context: DrainContext): Promise<{ complete: boolean }> {
  const { job, store, manifest, sqs, signal } = context;
  const [progress, backlog] = await Promise.all([dumpProgress(store, manifest, signal), queueBacklog(sqs, job.queueUrl, signal)]);
  const complete = progress.pending.length === 0 && backlogIsEmpty(backlog);
  if (!complete) logWaiting(context, progress.pending, backlog);
  else context.stats.lastWaiting = '';
  return { complete };
}

/** Says what the worker waits for, once per change (not every poll). */
function logWaiting(context: DrainContext, pending: readonly string[], backlog: QueueBacklog): void {
  const entry = { event: 'waiting', jobId: context.job.jobId, dumpingNodes: pending, ...backlog };
  const line = JSON.stringify(entry);
  if (line === context.stats.lastWaiting) return;
  context.stats.lastWaiting = line;
  context.log(entry);
}

/**
 * The queue as runPopulator sees it, telling the worker's stats and log what happens to each
 * delivery. An acknowledged delivery is not deleted at once: it waits, still hidden, for the
 * report that counts it (see ReportedAcknowledgements).
 */
function observed(queue: SqsQueue, acks: ReportedAcknowledgements, job: JobQueueInfo, stats: WorkerStats, log: Log): ChunkQueue {
  return {
    send: (message: ChunkMessage, signal?: AbortSignal) => queue.send(message, signal),
    receive: async (signal?: AbortSignal) => {
      const delivery = await queue.receive(signal);
      if (!delivery) return undefined;
      stats.held++;
      log({ event: 'chunk-received', level: 'debug', jobId: job.jobId, chunk: delivery.message.chunk.name, receiveCount: delivery.receiveCount });
      const settled = async (settle: () => Promise<void>): Promise<void> => {
        try {
          await settle();
        } finally {
          stats.held--;
        }
      };
      return {
        message: delivery.message,
        receiveCount: delivery.receiveCount,
        ack: () => settled(async () => acks.add(delivery)),
        retry: (reason: string) => settled(() => retryLogged(delivery, reason, job, stats, log)),
        park: (reason: string) =>
          settled(async () => {
            await delivery.park(reason);
            loggedParked(delivery, reason, job, stats, log);
          }),
      };
    },
  };
}

/** The job a delivery belongs to, and the deliveries its queue allows before a message is parked. */
export interface RetryScope {
  readonly jobId: string;
  readonly maxReceives?: number | undefined;
}

/** Hands a delivery back for another try, and logs it (parked, if that was its last allowed delivery). */
export async function retryLogged(delivery: Delivery, reason: string, job: RetryScope, stats: WorkerStats, log: Log): Promise<void> {
  await delivery.retry(reason);
  // SqsQueue parks, rather than returns, a message on its last allowed delivery.
  if (job.maxReceives !== undefined && delivery.receiveCount >= job.maxReceives) {
    loggedParked(delivery, `${reason} (delivery ${delivery.receiveCount} of ${job.maxReceives})`, job, stats, log);
    return;
  }
  log({ event: 'chunk-retried', jobId: job.jobId, chunk: delivery.message.chunk.name, receiveCount: delivery.receiveCount, reason });
}

export function loggedParked(delivery: Delivery, reason: string, job: RetryScope, stats: WorkerStats, log: Log): void {
  stats.parked++;
  log({ event: 'chunk-parked', jobId: job.jobId, chunk: delivery.message.chunk.name, receiveCount: delivery.receiveCount, reason });
}

export function logAcknowledged(log: Log, jobId: string, batch: AcknowledgedBatch): void {
  if (batch.deleted) log({ event: 'acknowledged', level: 'debug', jobId, chunks: batch.chunks });
  else log({ event: 'ack-failed', jobId, chunks: batch.chunks, handedBack: batch.handedBack, reason: batch.reason });
}

/**
 * Writes a report when asked, one at a time, each a snapshot taken when its turn comes: a
 * slow older report can never land over a newer one and take back what it counted.
 */
export function reporter(store: ChunkStore, name: string, snapshot: (final: boolean) => PopulatorReport): (final: boolean) => Promise<void> {
  let last: Promise<unknown> = Promise.resolve();
  return (final) => {
    const write = last.then(() => putJson(store, name, snapshot(final), AbortSignal.timeout(FINAL_REPORT_TIMEOUT_MS)));
    last = write.catch(() => undefined);
    return write;
  };
}

export function progressEntry(jobId: string, stats: WorkerStats): LogEntry {
  return { event: 'progress', jobId, chunks: stats.chunks, items: stats.items, held: stats.held, parked: stats.parked, ...stats.tally.total() };
}

export function reportOf(jobId: string, workerId: string, stats: WorkerStats, final: boolean, clock: Clock): PopulatorReport {
  return {
    workerId,
    jobId,
    chunks: stats.chunks,
    parked: stats.parked,
    byNode: stats.byNode(),
    final,
    updatedAt: new Date(clock.now()).toISOString(),
  };
}

export function logReportFailure(log: Log, jobId: string, error: unknown): void {
  log({ event: 'report-failed', jobId, reason: error instanceof Error ? error.message : String(error) });
}

/** The dead-letter queue's size at the end; undefined when it cannot be read (the result still stands). */
export async function deadLetterCount(sqs: SQSClient, deadLetterQueueUrl: string): Promise<number | undefined> {
  try {
    const backlog = await queueBacklog(sqs, deadLetterQueueUrl, AbortSignal.timeout(FINAL_REPORT_TIMEOUT_MS));
    return backlog.visible + backlog.inFlight + backlog.delayed;
  } catch {
    return undefined;
  }
}

/** Runs `tick` every `intervalMs` until `stop` aborts; a tick's own failure is its business. */
export async function every(clock: Clock, intervalMs: number, stop: AbortSignal, tick: () => unknown): Promise<void> {
  for (;;) {
    try {
      await clock.sleep(intervalMs, stop);
    } catch {
      return;
    }
    await tick();
  }
}
