import { allowedLocationOf, describeAllowed } from '../shared/allowed-locations.js';
import { BufferPool } from '../shared/buffer-pool.js';
import type { ChunkLocation, ChunkMessage, MessageScope } from '../shared/chunk-message.js';
import type { ChunkQueue, Delivery } from '../shared/chunk-queue.js';
import { type WriteCounters, addInto } from '../shared/counters.js';
import { CachewarmError } from '../shared/errors.js';
import { chunkDoneName, chunkParkedName, manifestName, getJson, populatorReportName, putJson, summaryName, supersededName } from '../shared/job-layout.js';
import { type StandingQueue, readStandingQueue } from '../shared/job-queues.js';
import { normalizePrefix } from '../shared/json-values.js';
import { connectDirect } from '../shared/memcached/connect.js';
import { SqsQueue } from '../shared/queue/sqs-queue.js';
import { S3Store } from '../shared/store/s3-store.js';
import { VERSION } from '../shared/version.js';
import { ReportedAcknowledgements } from './acknowledgements.js';
import { MetaNodeWriter } from './meta-node-writer.js';
import { PinnedTargets } from './pinned-targets.js';
import type { DeleteReconciler } from './delete-reconciler.js';
import { type MessageRoute, runPopulator } from './populate.js';
import {
  ACK_INTERVAL_MS,
  DEFAULT_PROGRESS_INTERVAL_MS,
  DEFAULT_REPORT_INTERVAL_MS,
  FINAL_REPORT_TIMEOUT_MS,
  type WorkerBaseOptions,
  WorkerStats,
  deadLetterCount,
  every,
  jobReconciler,
  loadManifest,
  recordRefusals,
  logAcknowledged,
  logReportFailure,
  loggedParked,
  progressEntry,
  reportOf,
  reporter,
  retryLogged,
} from './worker.js';

/** `queueUrl`: the installation's standing queue, whose RedrivePolicy names the dead-letter queue. */
export interface StandingWorkerOptions extends WorkerBaseOptions {
  /** Where the jobs served may keep their chunks; a message naming anything else is parked unread. */
  readonly allowed: readonly ChunkLocation[];
  /** A job with nothing in flight for this long is let go (see LANE_IDLE_MS). @default 300000 */
  readonly laneIdleMs?: number;
}

export interface StandingJobResult {
  readonly chunks: number;
  readonly parked: number;
  readonly counters: WriteCounters;
}

export interface StandingWorkerResult {
  readonly workerId: string;
  readonly queueUrl: string;
  /** What the worker did for each job it served, by job id. */
  readonly jobs: Readonly<Record<string, StandingJobResult>>;
  /** Messages set aside that belong to no job it could serve: malformed, or naming a location not allowed. */
  readonly refused: number;
  /** Messages set aside in all: refused ones and the jobs' parked chunks. */
  readonly parked: number;
  /** `drained`: the queue was empty (without `follow`); `aborted`: stopped by the signal. */
  readonly outcome: 'drained' | 'aborted';
  /** Messages on the dead-letter queue when the worker ended, set aside by any worker; undefined when unreadable. */
  readonly deadLettered: number | undefined;
}

/** The job's summary (written when it completed) or its superseded record is in its store. */
async function jobEnded(store: S3Store, jobId: string, signal: AbortSignal | undefined): Promise<boolean> {
  const [summary, superseded] = await Promise.all([summaryName(jobId), supersededName(jobId)].map((name) => getJson<unknown>(store, name, signal).catch(() => undefined)));
  return summary !== undefined || superseded !== undefined;
}

/** One job this worker serves: its manifest, store, writes and counts. */
/** Closes a lane's connections, to targets and sources. */
async function closeLane(lane: JobLane): Promise<void> {
  await Promise.all([lane.writer.close(), lane.reconciler?.close()]);
}

interface JobLane {
  readonly key: string;
  readonly jobId: string;
  readonly store: S3Store;
  readonly route: MessageRoute;
  readonly stats: WorkerStats;
  readonly writer: MetaNodeWriter;
  readonly reconciler: DeleteReconciler | undefined;
  readonly report: (final: boolean) => Promise<void>;
  /** Deliveries routed to it and not yet settled. */
  inFlight: number;
  lastActiveMs: number;
  /** Its counts changed since its last report. */
  dirty: boolean;
}

/**
 * A job's lane with nothing in flight for this long is closed (its connections, its periodic
 * report): a follower serves jobs for weeks, and a finished job's report must not be written
 * again after its controller removed it. A later message of the job opens it again, with its counts.
 */
const LANE_IDLE_MS = 5 * 60_000;

/**
 * A populator on a standing queue that every job of an installation shares (one queue a
 * KEDA scaler can watch): each message names its job and the S3 location of the job's
 * chunks; if that location is allowed, the job's manifest (which only its controller writes)
 * says the ring to write and the source nodes whose chunks belong to it, as on a job's own
 * queue. A message naming a location not allowed, or a job with no manifest there, is set
 * aside on the dead-letter queue with the reason.
 *
 * The queue's depth says nothing of one job, so each chunk written whole is marked done in
 * its job's store before its message is deleted (and each parked one marked parked): what the
 * controller compares with the chunks its dumpers stored. The worker also keeps, per job, the
 * report a job's own queue would get, which the controller sums into the job's counters.
 */
export async function runStandingWorker(options: StandingWorkerOptions): Promise<StandingWorkerResult> {
  const { s3, sqs, clock, signal, workerId, allowed } = options;
  const log = options.log ?? ((): void => undefined);
  const waitTimeSeconds = options.waitTimeSeconds ?? 20;
  if (!Number.isInteger(waitTimeSeconds) || waitTimeSeconds < 1 || waitTimeSeconds > 20) {
    throw new CachewarmError('INVALID_ARGUMENT', `the long-poll wait must be 1 to 20 whole seconds, got ${waitTimeSeconds}`);
  }
  if (allowed.length === 0) throw new CachewarmError('INVALID_ARGUMENT', 'a populator on a standing queue needs at least one allowed location (s3://BUCKET/PREFIX)');
  const standing: StandingQueue = await readStandingQueue(sqs, options.queueUrl, signal);
  let refused = 0;
  const queue = new SqsQueue({
    client: sqs,
    queueUrl: standing.queueUrl,
    deadLetterQueueUrl: standing.deadLetterQueueUrl,
    waitTimeSeconds,
    visibilityTimeoutSeconds: standing.visibilityTimeoutSeconds,
    stopWhenEmpty: options.follow !== true,
    maxReceives: standing.maxReceives,
    onMalformed: (reason, messageId) => {
      refused++;
      log({ event: 'message-parked', messageId, reason });
    },
    clock,
  });
  log({
    event: 'worker-started',
    version: VERSION,
    worker: workerId,
    queue: standing.queueUrl,
    deadLetterQueue: standing.deadLetterQueueUrl,
    allowed: describeAllowed(allowed),
    concurrency: options.concurrency ?? 4,
    follow: options.follow === true,
    visibilityTimeoutSeconds: standing.visibilityTimeoutSeconds,
    maxReceives: standing.maxReceives,
  });

  const lanes = new Map<string, Promise<JobLane>>();
  /** Lanes whose manifest was read. */
  const opened = new Map<string, JobLane>();
  /** The lane each routed message is counted in, closed or not. */
  const routed = new WeakMap<ChunkMessage, JobLane>();
  /** A closed lane's counts, taken up again if its job sends more: a worker's report of a job only grows. */
  const closedStats = new Map<string, WorkerStats>();
  // One dump filling several targets names each target's job apart from the dump's.
  const jobOf = (message: ChunkMessage): string => message.targetJobId ?? message.jobId;
  const keyOf = (message: ChunkMessage): string => JSON.stringify([message.store?.bucket, normalizePrefix(message.store?.prefix), jobOf(message)]);

  async function openLane(message: ChunkMessage, location: ChunkLocation): Promise<JobLane> {
    const jobId = jobOf(message);
    const store = new S3Store({ client: s3, bucket: location.bucket, prefix: normalizePrefix(location.prefix) });
    const manifest = await loadManifest(store, jobId, signal);
    const labels = new Map(manifest.target.nodes.map((node) => [node.address, `${manifest.target.replica}/${node.address}`]));
    const pinned = PinnedTargets.recordedIn(store, jobId);
    const writer = new MetaNodeWriter({ connect: connectDirect, clock, labelOf: (address) => labels.get(address) ?? address, checkConnection: pinned.check });
    const key = keyOf(message);
    const stats = closedStats.get(key) ?? new WorkerStats();
    closedStats.delete(key);
    const scope: MessageScope = {
      jobId,
      store: { bucket: location.bucket, prefix: normalizePrefix(location.prefix) },
      manifest: { where: store.describe(manifestName(jobId)), target: manifest.target, sourceNodes: manifest.source.nodes, dumpJobId: manifest.dumpJobId },
    };
    const reconciler = jobReconciler(store, jobId, manifest, clock, log);
    const lane: JobLane = {
      key,
      jobId,
      store,
      stats,
      writer,
      reconciler,
      route: { store, writer, scope, reconciler },
      report: reporter(store, populatorReportName(jobId, workerId), (final) => reportOf(jobId, workerId, stats, final, clock)),
      inFlight: 0,
      lastActiveMs: clock.now(),
      dirty: false,
    };
    log({ event: 'job-joined', jobId, store: store.describe(jobId), target: manifest.target.replica, sourceNodes: manifest.source.nodes.length });
    return lane;
  }

  async function routeOf(message: ChunkMessage): Promise<MessageRoute> {
    const where = `message for chunk ${message.chunk.name} of job ${jobOf(message)}`;
    if (!message.store) throw new CachewarmError('MESSAGE_MALFORMED', `${where} names no S3 location: a standing queue serves jobs whose chunks are in S3`);
    const location = allowedLocationOf(message.store, allowed);
    if (!location) {
      throw new CachewarmError(
        'MESSAGE_MALFORMED',
        `${where} points at s3://${message.store.bucket}/${normalizePrefix(message.store.prefix)}, outside the locations this populator serves (${describeAllowed(allowed)}): nothing read`,
      );
    }
    const key = keyOf(message);
    let lane = lanes.get(key);
    if (!lane) {
      lane = openLane(message, message.store);
      lanes.set(key, lane);
      // A failed read is not kept: the manifest may be there for the next message.
      lane.then((opening) => opened.set(key, opening)).catch(() => lanes.delete(key));
    }
    const open = await lane;
    open.inFlight++;
    open.lastActiveMs = clock.now();
    routed.set(message, open);
    return open.route;
  }

  const laneOf = (message: ChunkMessage): JobLane | undefined => routed.get(message);
  /** A delivery of the lane settled (acknowledged, handed back or parked). */
  const settled = (message: ChunkMessage): void => {
    const lane = routed.get(message);
    if (!lane) return;
    lane.inFlight--;
    lane.lastActiveMs = clock.now();
  };
  const reportLane = async (lane: JobLane, final: boolean): Promise<void> => {
    if (!lane.dirty && !final) return;
    lane.dirty = false;
    await lane.report(final).catch((error: unknown) => {
      lane.dirty = true;
      logReportFailure(log, lane.jobId, error);
    });
  };
  const reportAll = async (final: boolean): Promise<void> => {
    await Promise.all([...opened.values()].map((lane) => reportLane(lane, final)));
  };
  async function closeIdleLanes(): Promise<void> {
    for (const lane of [...opened.values()]) {
      if (lane.inFlight > 0 || clock.now() - lane.lastActiveMs < (options.laneIdleMs ?? LANE_IDLE_MS)) continue;
      opened.delete(lane.key);
      lanes.delete(lane.key);
      closedStats.set(lane.key, lane.stats);
      if (lane.dirty) await reportLane(lane, false);
      await closeLane(lane);
      log({ event: 'job-left', jobId: lane.jobId, idleMs: clock.now() - lane.lastActiveMs, chunks: lane.stats.chunks });
    }
  }
  const acks = new ReportedAcknowledgements({
    // Done marks first, then the reports counting the chunks: both before the deletes.
    report: async (batch) => {
      await Promise.all(
        batch.map((delivery) => {
          const lane = laneOf(delivery.message);
          const { message } = delivery;
          return lane && putJson(lane.store, chunkDoneName(lane.jobId, message.source, message.chunk.name), { chunk: message.chunk.name, worker: workerId, at: new Date(clock.now()).toISOString() }, AbortSignal.timeout(FINAL_REPORT_TIMEOUT_MS));
        }),
      );
      const jobs = new Set(batch.map((delivery) => laneOf(delivery.message)));
      await Promise.all([...jobs].map((lane) => lane && lane.report(false)));
    },
    deleteAll: (deliveries) => queue.ackAll(deliveries, AbortSignal.timeout(FINAL_REPORT_TIMEOUT_MS)),
    handBack: (delivery, reason) => retryLogged(delivery, reason, retryScopeOf(delivery), statsOf(delivery), log),
    onSettled: (batch) => logAcknowledged(log, 'standing', batch),
  });
  const unattributed = new WorkerStats();
  const statsOf = (delivery: Delivery): WorkerStats => laneOf(delivery.message)?.stats ?? unattributed;
  const retryScopeOf = (delivery: Delivery): { jobId: string; maxReceives: number } => ({ jobId: jobOf(delivery.message), maxReceives: standing.maxReceives });

  const observedQueue: ChunkQueue = {
    send: (message, sendSignal) => queue.send(message, sendSignal),
    receive: async (receiveSignal) => {
      const delivery = await queue.receive(receiveSignal);
      if (!delivery) return undefined;
      return {
        message: delivery.message,
        receiveCount: delivery.receiveCount,
        ack: async () => {
          settled(delivery.message);
          acks.add(delivery);
        },
        retry: (reason) => {
          settled(delivery.message);
          return retryLogged(delivery, reason, retryScopeOf(delivery), statsOf(delivery), log);
        },
        park: async (reason) => {
          settled(delivery.message);
          const lane = laneOf(delivery.message);
          const { message } = delivery;
          // A job that completed or was superseded removed its chunks: what is left of its messages (a
          // duplicate delivery, a superseded dump's last ones) has nothing to do, and is no fault.
          if (lane && (await jobEnded(lane.store, lane.jobId, signal))) {
            await queue.ackAll([delivery], AbortSignal.timeout(FINAL_REPORT_TIMEOUT_MS));
            log({ event: 'stale-message-dropped', jobId: lane.jobId, chunk: message.chunk.name, reason });
            return;
          }
          // The mark lets the job's controller stop waiting for the chunk; the dead-letter copy keeps it.
          if (lane) {
            await putJson(lane.store, chunkParkedName(lane.jobId, message.source, message.chunk.name), { chunk: message.chunk.name, reason, worker: workerId }, signal).catch(
              (error: unknown) => logReportFailure(log, lane.jobId, error),
            );
          }
          await delivery.park(reason);
          if (lane) lane.dirty = true;
          loggedParked(delivery, reason, retryScopeOf(delivery), statsOf(delivery), log);
        },
      };
    },
  };

  const background = new AbortController();
  const timers = Promise.all([
    every(clock, options.progressIntervalMs ?? DEFAULT_PROGRESS_INTERVAL_MS, background.signal, async () => {
      for (const lane of opened.values()) if (lane.inFlight > 0) log(progressEntry(lane.jobId, lane.stats));
      await closeIdleLanes();
    }),
    every(clock, options.reportIntervalMs ?? DEFAULT_REPORT_INTERVAL_MS, background.signal, () => reportAll(false)),
    every(clock, ACK_INTERVAL_MS, background.signal, () => acks.flush()),
  ]);
  const closeAll = (): void => {
    for (const lane of opened.values()) void closeLane(lane);
  };
  signal?.addEventListener('abort', closeAll, { once: true });
  const tally = unattributed.tally;
  try {
    await runPopulator({
      queue: observedQueue,
      routeOf,
      clock,
      tally,
      concurrency: options.concurrency ?? 4,
      // Never: SQS may deliver a message again, and its chunk must still be there.
      deleteConsumed: false,
      pool: new BufferPool(),
      onRefused: (message, address, refusals) => {
        const lane = laneOf(message);
        return lane && recordRefusals({ store: lane.store, jobId: lane.jobId, log, signal }, message, address, refusals);
      },
      onChunkWritten: (message, written) => {
        const lane = laneOf(message);
        if (!lane) return;
        for (const [address, counters] of written.byNode) {
          addInto(lane.stats.written.for(address), counters);
          addInto(lane.stats.tally.for(address), counters);
        }
        lane.stats.chunks++;
        lane.stats.items += message.chunk.items;
        lane.dirty = true;
      },
      onChunkDone: (message) => log({ event: 'chunk-done', level: 'debug', jobId: message.jobId, chunk: message.chunk.name, items: message.chunk.items }),
      signal,
    });
  } finally {
    background.abort();
    await timers;
    await acks.flush();
    signal?.removeEventListener('abort', closeAll);
    await Promise.all([...opened.values()].map(closeLane));
    await reportAll(true);
  }
  const served = [...[...opened.values()].map((lane): [string, WorkerStats] => [lane.jobId, lane.stats]), ...[...closedStats].map(([key, stats]): [string, WorkerStats] => [(JSON.parse(key) as string[])[2] as string, stats])];
  const jobs = Object.fromEntries(served.map(([jobId, stats]) => [jobId, { chunks: stats.chunks, parked: stats.parked, counters: stats.written.total() }]));
  // Refused: malformed, or parked before a job was found for it (a location not allowed, no manifest).
  refused += unattributed.parked;
  const parked = refused + served.reduce((sum, [, stats]) => sum + stats.parked, 0);
  const result: StandingWorkerResult = {
    workerId,
    queueUrl: standing.queueUrl,
    jobs,
    refused,
    parked,
    outcome: signal?.aborted ? 'aborted' : 'drained',
    deadLettered: await deadLetterCount(sqs, standing.deadLetterQueueUrl),
  };
  log({ event: 'worker-finished', worker: workerId, outcome: result.outcome, jobs: Object.keys(jobs).length, refused, parked, deadLettered: result.deadLettered });
  return result;
}
