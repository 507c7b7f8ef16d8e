import type { S3Client } from '@aws-sdk/client-s3';
import type { SQSClient } from '@aws-sdk/client-sqs';
import { type Connect, connectDirect } from '../shared/memcached/connect.js';
import { type DumpStatus, type KeyFilterSpec, MAX_SAMPLE_KEYS, type StartDumpRequest, sampleOfStatus } from '../dumper/sidecar-api.js';
import { type NodeSample, type SampledKey, mergeSamples } from '../shared/key-sample.js';
import type { ProtectSource } from '../dumper/read-pace.js';
import { SidecarClient } from '../dumper/sidecar-client.js';
import type { PopulatorReport } from '../populator/worker.js';
import type { Clock } from '../shared/clock.js';
import { type DumpCounters, type WriteCounters, addInto, newDumpCounters, newWriteCounters, writeCountersOf } from '../shared/counters.js';
import { CachewarmError, abortReason, isCachewarmError } from '../shared/errors.js';
import { type JobManifest, LAYOUT_VERSION, type ProcessesRecord, endMarkerName, getJson, manifestName, nodeDirectory, processesName, putJson, refusedPrefix, summaryName } from '../shared/job-layout.js';
import { decodeKeyChunk } from '../shared/chunk-format.js';
import {
  type JobQueues,
  type QueueBacklog,
  backlogIsEmpty,
  createJobQueues,
  deleteJobQueues,
  parkedMessages,
  queueBacklog,
  readStandingQueue,
  retryParked,
} from '../shared/job-queues.js';
import { SettledChunks } from './settled-chunks.js';
import { type S3Encryption, S3Store } from '../shared/store/s3-store.js';
import { type Log, silentLog, withFields } from '../shared/log.js';
import type { NodeSpec, Topology } from '../shared/topology.js';
import { PopulatorFleet, type PopulatorFleetOptions, type StartPopulator } from './populator-fleet.js';
import { S3JobLock, lockName } from './s3-job-lock.js';
import { selectSource } from './select-source.js';
import { DEFAULT_VERIFY_SAMPLE, type RepairReport, type WarmProgress, type WarmSummary, itemSizeLimits, problemsOf, processUsage, targetNodeReport } from './warm-summary.js';
import { type NodeWatch, identities, replacedSince } from './node-watch.js';
import { type WarmReplicaOptions, warmReplica } from './warm-replica.js';
import type { ReplicaStats } from './select-source.js';
import os from 'node:os';
import path from 'node:path';
import { type WarmScope, alreadyWarm, alternateSource, checkCapacity, fallbackReplica, checkRequestedSource, checkWarmth, listedSampleKeys, newJobId, planIdentity, readBackSample, scopeOf, watchJob } from './warm-plan.js';

export interface DistributedWarmOptions {
  readonly topology: Topology;
  readonly target: string;
  /** A replica name, or 'auto' (default): the fullest reachable replica other than the target. */
  readonly source?: string | undefined;
  /** Only this node of the target is written, and only its keys are dumped (an instance warm). */
  readonly onlyNode?: NodeSpec | undefined;
  /** Copy even when the target already looks warm (see alreadyWarmRatio). */
  readonly force?: boolean | undefined;
  /** The target counts as already warm, and nothing is copied, from this fraction of the expected items (default 0.95). */
  readonly alreadyWarmRatio?: number | undefined;
  /** Reusing a job id resumes that job: same queues, same objects, the sidecars pick up where they were. */
  readonly jobId?: string | undefined;
  readonly chunkSizeBytes: number;
  readonly maxOpsPerNode?: number | undefined;
  readonly maxBytesPerNode?: number | undefined;
  /** Each sidecar's source guard (see dumper/read-pace.ts). @default DEFAULT_PROTECT_SOURCE (1.2) */
  readonly protectSource?: ProtectSource | undefined;
  /** See WarmReplicaOptions.reconcileDeletes: recorded in the manifest, which the populators follow. @default true */
  readonly reconcileDeletes?: boolean | undefined;
  /** Built once at the CLI entry. */
  readonly s3: S3Client;
  readonly sqs: SQSClient;
  readonly bucket: string;
  readonly prefix: string;
  readonly sse?: S3Encryption | undefined;
  /** The bearer token every sidecar expects. */
  readonly sidecarToken: string;
  readonly startPopulator: StartPopulator;
  readonly populators: PopulatorFleetOptions['size'];
  /**
   * A standing queue the installation owns (its RedrivePolicy naming its dead-letter queue),
   * shared by every job: the job creates and deletes no queue, and its completion is read
   * from the populators' per-chunk marks rather than the queue's depth. Absent: the job makes
   * its own queues (`cachewarm-<job>`) and removes them when complete.
   */
  readonly queueUrl?: string | undefined;
  readonly keepChunks?: boolean | undefined;
  readonly clock: Clock;
  readonly connect?: Connect | undefined;
  readonly signal?: AbortSignal | undefined;
  readonly onProgress?: ((progress: WarmProgress) => void) | undefined;
  readonly progressIntervalMs?: number | undefined;
  /** Start even when the target looks too small (its evictions still leave the job incomplete). */
  readonly acceptEvictions?: boolean | undefined;
  /** Items too large for a target node are counted and left out, not held against the job. */
  readonly skipTooLarge?: boolean | undefined;
  /**
   * Move the job's parked messages back to its queue before it goes on: for a rerun after
   * whatever parked them (a missing or corrupt chunk, a refusing target) was fixed.
   */
  readonly retryParked?: boolean | undefined;
  /** Keys per target node read back at the end; 0 turns it off. @default 2000 */
  readonly verifySamplePerNode?: number | undefined;
  /** How often every source and target node's `stats` is read during the job. @default 1000 */
  readonly watchIntervalMs?: number | undefined;
  /**
   * One dump this job shares with other targets' (see warmDistributedMany): the sidecars are
   * asked for it, announcing on this job's queue among the others'; the job's manifest names
   * it, so that its populators take its chunks.
   */
  readonly sharedDump?: SharedDump | undefined;
  /** How long a sidecar may stay unreachable before the job fails naming it. Default 60 s. */
  readonly sidecarGraceMs?: number | undefined;
  readonly log?: Log | undefined;
}

/** What every target's job asks the sidecars alike: one dump, announced on every target's queue. */
export type SharedDump = Pick<StartDumpRequest, 'jobId' | 'queueUrl' | 'target' | 'alsoTo' | 'sampleKeys' | 'targetJobId'>;

/** A populator that dies this many times over fails the job: something is wrong with all of them. */
const MAX_POPULATOR_CRASHES = 10;

/**
 * A replica (or instance) warm at fleet scale: chunks in S3, one SQS message per chunk. The
 * controller writes the job's manifest, creates its queue and dead-letter queue, asks every
 * source node's sidecar to dump, runs populator workers, and follows the sidecars' counters,
 * the queue and the workers' reports until every dump finished and the queue drained. Then
 * it removes the queues and (unless kept) the chunks, and sums up.
 *
 * Everything the job needs to go on is in S3, SQS and the sidecars, not in this process: a
 * controller killed and run again with the same job id finds the manifest and the queues,
 * and its start requests find the dumps running, finished, or resumable from their chunks.
 */
export async function warmDistributed(options: DistributedWarmOptions): Promise<WarmSummary> {
  const { topology, clock, s3 } = options;
  const started = clock.now();
  const scope = scopeOf(topology, options.target, options.onlyNode);
  checkRequestedSource(scope, options.source);
  const jobId = options.jobId ?? newJobId(scope.kind, nodeDirectory(scope.label), started);
  const store = new S3Store({ client: s3, bucket: options.bucket, prefix: options.prefix, sse: options.sse });
  // One run per job id: a second would dump the whole source again and claim the first's work.
  const lock = await S3JobLock.acquire(store, jobId, { clock, signal: options.signal });
  try {
    const signal = options.signal ? AbortSignal.any([options.signal, lock.lost]) : lock.lost;
    return await warmLocked({ ...options, signal }, { scope, jobId, store, started });
  } finally {
    await lock.release();
  }
}

async function warmLocked(
  options: DistributedWarmOptions,
  { scope, jobId, store, started }: Pick<DistributedJob, 'scope' | 'jobId' | 'store' | 'started'>,
): Promise<WarmSummary> {
  const { topology, clock, signal } = options;
  const connect = options.connect ?? connectDirect;
  const log = withFields(options.log ?? silentLog, { jobId });
  const finished = await getJson<WarmSummary>(store, summaryName(jobId), signal);
  if (finished) return { ...finished, skipped: 'already-complete' };
  const earlier = await getJson<JobManifest>(store, manifestName(jobId), signal);
  // A resumed job keeps its source, and is not judged warm by its own partial copy.
  const { source } = await selectSource(topology, scope.replica.name, { connect, requested: earlier?.source.replica ?? options.source, signal });
  // A source node without a sidecar is a topology mistake: said before anything else.
  const sidecars = new Map(source.replica.nodes.map((node) => [node.id, sidecarOf(node, options.sidecarToken)]));
  if (!earlier && !options.force) {
    const warmth = await checkWarmth(topology, scope, source, { connect, alreadyWarmRatio: options.alreadyWarmRatio, signal });
    if (warmth.alreadyWarm) return alreadyWarm({ jobId, scope, source, warmth, durationMs: clock.now() - started });
  }
  const watch = await watchJob(scope, source, { connect, clock, intervalMs: options.watchIntervalMs }, signal);
  try {
    if (!earlier && !options.acceptEvictions) checkCapacity(topology, scope, source, watch.targets.nodes);
    return await runJob(options, { scope, source, jobId, store, earlier, sidecars, targets: watch.targets, sources: watch.sources, started, connect, log });
  } finally {
    await watch.stop();
  }
}

interface DistributedJob {
  readonly scope: WarmScope;
  readonly source: ReplicaStats;
  readonly jobId: string;
  readonly store: S3Store;
  readonly earlier: JobManifest | undefined;
  readonly sidecars: Map<string, SidecarClient>;
  readonly targets: NodeWatch;
  readonly sources: NodeWatch;
  readonly started: number;
  readonly connect: Connect;
  readonly log: Log;
}

async function runJob(options: DistributedWarmOptions, job: DistributedJob): Promise<WarmSummary> {
  const { topology, clock, sqs, signal } = options;
  const { scope, source, jobId, store, earlier, sidecars, targets, sources, started, connect, log } = job;
  const recorded = await getJson<ProcessesRecord>(store, processesName(jobId), signal);
  // A target node restarted since the last run lost what that run wrote to it; a source node
  // restarted since lost what its crawl listed.
  const replaced = replacedSince(recorded?.targets, targets);
  const owed = scope.nodes.filter((n) => recorded?.refill?.includes(n.address));
  const restartedSources = new Set(replacedSince(recorded?.sources, sources).map((n) => n.id));
  if (!recorded) await putJson(store, processesName(jobId), { targets: identities(targets), sources: identities(sources) }, signal);
  const ring = scope.ring;
  // Chosen now, so that populators can ask it about a source node that restarts mid-warm. (A
  // rerun keeps the manifest it finds, and with it the fallback its first run chose.)
  const fallback = earlier || options.reconcileDeletes === false ? undefined : await fallbackReplica(job, { ...options, connect });
  const keyFilter: KeyFilterSpec | undefined = scope.node && { nodes: ring.nodes, hashing: ring.hashing, keep: [scope.node.address] };
  const manifest = await openManifest(store, earlier, {
    version: LAYOUT_VERSION,
    jobId,
    kind: scope.kind,
    source: { replica: source.replica.name, nodes: source.replica.nodes.map((n) => n.id) },
    target: ring,
    ...(options.sharedDump && { dumpJobId: options.sharedDump.jobId }),
    ...(options.reconcileDeletes === false && { reconcileDeletes: false as const }),
    ...(fallback && { fallback }),
    createdAt: new Date(started).toISOString(),
  }, signal);
  const standing = options.queueUrl === undefined ? undefined : await readStandingQueue(sqs, options.queueUrl, signal);
  const queues: JobQueues = standing ?? (await createJobQueues(sqs, { jobId, bucket: options.bucket, prefix: store.prefix }, signal));
  log({ event: 'job-queued', msg: `${manifest.source.replica} -> ${scope.label}, queue ${queues.queueUrl}`, source: manifest.source.replica, target: scope.label, queueUrl: queues.queueUrl });
  if (options.retryParked) {
    // The standing queue's dead-letter queue holds every job's: only this job's go back, and its
    // parked marks go first (a message not moved back is then found on the dead-letter queue).
    if (standing) await store.deleteAll(`${jobId}/parked`, undefined, signal);
    const moved = await retryParked(sqs, queues, signal, standing && ((entry) => entry.jobId === jobId));
    log({ event: 'parked-retried', level: 'info', msg: `${moved} parked messages moved back to the queue`, messages: moved });
  }

  // A shared dump is one request, the same from every target's job: a sidecar re-attaches to it.
  const samplePerNode = options.verifySamplePerNode ?? DEFAULT_VERIFY_SAMPLE;
  const dump = options.sharedDump ?? { jobId, queueUrl: queues.queueUrl, target: ring, sampleKeys: dumpSampleKeys(samplePerNode, scope.nodes.length) };
  const request = (node: string): StartDumpRequest => ({
    ...dump,
    node,
    bucket: options.bucket,
    prefix: store.prefix,
    chunkSizeBytes: options.chunkSizeBytes,
    maxItemsPerSecond: options.maxOpsPerNode,
    maxBytesPerSecond: options.maxBytesPerNode,
    protectSource: options.protectSource,
    sse: options.sse,
    keyFilter,
    ...(standing && { standingQueue: true }),
  });
  const sourceRestarted = async (node: string): Promise<boolean> => {
    await sources.look(signal).catch(() => undefined);
    return sources.restarted().some((n) => n.id === node);
  };
  const dumps = new Map<string, DumpTracker>();
  for (const [node, client] of sidecars) {
    let { started, status } = await client.start(request(node), signal);
    // This run wrote the job's manifest, yet the sidecar was already dumping the job: for a
    // store that has lost the job since (its chunks and messages with it). Started again, the
    // dump resumes from what the store holds now.
    if (!earlier && !options.sharedDump && !started && status.state === 'running') {
      log({ event: 'dump-redone', level: 'warn', node, msg: `${node} was dumping the job before its manifest was written (the store lost it): dumping it again` });
      await stopDump(client, node, { jobId: dump.jobId, clock, signal });
      ({ status } = await client.start(request(node), signal));
    }
    dumps.set(node, { status, unreachableSince: undefined });
  }

  // On a standing queue the workers started here follow it, serving the job's location, until told to stop.
  const fleet = new PopulatorFleet({
    start: options.startPopulator,
    queueUrl: queues.queueUrl,
    size: options.populators,
    allowLocation: standing && { bucket: options.bucket, prefix: store.prefix },
  });
  const settled =
    standing &&
    new SettledChunks({
      store,
      jobId,
      dumpJobId: dump.jobId,
      sourceNodes: manifest.source.nodes,
      readDeadLetters: (readSignal) => parkedMessages(sqs, standing.deadLetterQueueUrl, readSignal),
      clock,
    });
  let written: { byNode: Map<string, WriteCounters> } = { byNode: new Map() };
  let backlog: QueueBacklog = { visible: 0, inFlight: 0, delayed: 0 };
  const progress = (): WarmProgress => ({
    elapsedMs: clock.now() - started,
    // As on the embedded transport: the source's whole count, the keys an instance warm's
    // filter leaves out being counted (`filtered`) and subtracted by the ETA.
    expectedItems: source.items,
    dumped: sumDumped(dumps),
    written: [...written.byNode.values()].reduce(addInto, newWriteCounters()),
    queueDepth: backlog.visible + backlog.inFlight,
    sourceGuards: [...dumps].flatMap(([node, { status }]) => (status.state === 'running' && status.sourceGuard ? [{ node, ...status.sourceGuard }] : [])),
  });

  try {
    let drainedChecks = 0;
    for (;;) {
      await followDumps(dumps, { sidecars, request, clock, graceMs: options.sidecarGraceMs ?? 60_000, restarted: sourceRestarted, log, signal });
      backlog = await queueBacklog(sqs, queues.queueUrl, signal);
      const dumped = [...dumps.values()].every((d) => d.status.state === 'finished' || d.lost) && (await endMarkersStored(dumps, sidecars, request, { ...job, jobId: dump.jobId }, signal));
      // SQS counts are approximate: the queue counts as drained after two empty looks in a row.
      // A standing queue's count is every job's: there, every chunk stored must be marked.
      const drained = settled ? dumped && (await settled.all(signal)) : backlogIsEmpty(backlog);
      drainedChecks = dumped && drained ? drainedChecks + 1 : 0;
      if (drainedChecks >= 2) break;
      if (fleet.crashes >= MAX_POPULATOR_CRASHES) {
        throw new CachewarmError('JOB_FAILED', `populators of job ${jobId} keep failing (${fleet.crashes} exits): see their log lines above`, {
          job: jobId,
        });
      }
      fleet.scale(backlog);
      written = await populatorReports(store, jobId, signal);
      options.onProgress?.(progress());
      await clock.sleep(options.progressIntervalMs ?? 1_000, signal);
    }
    // The job is done: the workers are told so rather than left to find out after their long
    // polls; they write their final reports (what the summary sums) on the way out.
    fleet.stopAll();
    await fleet.settled();
    written = await populatorReports(store, jobId, signal);
    const parked = settled ? await settled.parked(signal) : await parkedOn(sqs, queues.deadLetterQueueUrl, signal);
    await Promise.all([targets.look(signal), sources.look(signal)]);
    for (const node of sources.restarted()) restartedSources.add(node.id);
    const restarted = [...replaced, ...targets.restarted()];
    const repaired = await repairRestartedTargets(options, job, [...restarted, ...owed]);
    const covered = await coverRestartedSources(options, job, restartedSources, manifest.fallback?.replica);
    repaired.repairs.push(...covered.repairs);
    repaired.lost.push(...covered.lost);
    const retried = await retryRefused(options, job);
    repaired.repairs.push(...retried.repairs);
    repaired.lost.push(...retried.lost);
    // A covered node's share is done with; an uncovered one is said again by every rerun.
    sources.rebase(source.replica.nodes.filter((n) => covered.by.has(n.id)));
    // Which items a node evicted is not known: a rerun copies its whole share again.
    const refill = targets.nodes.filter((w) => w.evictions > 0).map((w) => w.node.address);
    await putJson(store, processesName(jobId), { targets: identities(targets), sources: identities(sources), refill }, signal);
    const sourceNodes = source.replica.nodes.map((n) => ({
      node: n.id,
      ...(dumps.get(n.id)?.status.counters ?? newDumpCounters()),
      restarted: restartedSources.has(n.id) || undefined,
      coveredBy: covered.by.get(n.id),
    }));
    const watched = new Map(targets.nodes.map((w) => [w.node.address, w]));
    const counters = new Map(scope.nodes.map((n) => [n.id, afterRetry(written.byNode.get(n.address), retried.byNode.get(n.id))]));
    const limits = await itemSizeLimits(scope.nodes, (n) => counters.get(n.id)?.tooLarge ?? 0, connect, signal);
    const targetNodes = scope.nodes.map((n) => ({
      ...targetNodeReport(n.id, counters.get(n.id), watched.get(n.address), restarted.filter((r) => r.id === n.id).length),
      itemSizeMaxBytes: limits.get(n.id),
    }));
    const unhandled = itemsNeverHandled(dumps, targetNodes);
    if (unhandled && parked.length === 0) repaired.lost.push(unhandled);
    const completion = { sourceNodes, targetNodes, parked, lost: repaired.lost, skipTooLarge: options.skipTooLarge };
    const unverified = problemsOf(completion);
    const verification =
      unverified.length === 0
        ? await readBackSample(
            { topology, scope, source },
            {
              samplePerNode,
              maxOpsPerNode: options.maxOpsPerNode,
              connect,
              clock,
              tooLargeFromBytes: retried.smallestSkippedBytes,
              // A source node that restarted no longer holds what its dump listed.
              listedSample: restartedSources.size === 0 ? listedSampleOf(dumps, listedSampleKeys(samplePerNode, scope.nodes.length)) : undefined,
              signal,
            },
          )
        : undefined;
    const problems = problemsOf({ ...completion, verification });
    const summary: WarmSummary = {
      ...planIdentity({ scope, source, jobId }),
      durationMs: clock.now() - started,
      sourceNodes,
      targetNodes,
      parked,
      complete: problems.length === 0,
      problems,
      ...processUsage(),
      resumed: earlier !== undefined,
      repairs: repaired.repairs,
      skippedTooLarge: retried.skippedTooLarge,
      smallestSkippedBytes: retried.smallestSkippedBytes,
      verification,
    };
    await cleanUp(summary, { store, sqs, queues: standing ? undefined : queues, keepChunks: options.keepChunks === true, log, signal });
    return summary;
  } catch (error) {
    fleet.stopAll();
    // Interrupted: the dumps stop too; a rerun with the same job id resumes them from S3.
    // (Not when another run took the job over: they are its dumps now.)
    if (signal?.aborted && !isCachewarmError(abortReason(signal), 'JOB_LOCKED')) await Promise.allSettled([...sidecars.values()].map((client) => client.cancel(dump.jobId)));
    await fleet.settled();
    throw error;
  }
}

/**
 * A warm of part of the job's target run by the controller itself, straight from memcached
 * to memcached (chunks in a local directory): how it refills a share the sidecars' dumps
 * cannot. Always copies (the target may hold part of it); the job's own read-back, after
 * these, covers what they wrote.
 */
function warmHere(
  options: DistributedWarmOptions,
  job: DistributedJob,
  what: Pick<WarmReplicaOptions, 'only' | 'source' | 'shareOf' | 'keyChunks' | 'skipTooLarge'> & { readonly jobId: string },
): Promise<WarmSummary> {
  return warmReplica({
    ...what,
    topology: options.topology,
    target: job.scope.replica.name,
    workDir: path.join(os.tmpdir(), 'cachewarm-repairs'),
    chunkSizeBytes: options.chunkSizeBytes,
    maxOpsPerNode: options.maxOpsPerNode,
    protectSource: options.protectSource,
    reconcileDeletes: options.reconcileDeletes,
    clock: options.clock,
    connect: job.connect,
    force: true,
    verifySamplePerNode: 0,
    signal: options.signal,
  });
}

/**
 * Source nodes that restarted lost what their crawl had listed: their share is taken from
 * another full replica when one exists (`--source auto`), by this process, straight from
 * that replica's nodes to the target, as an instance warm does for a target node.
 */
async function coverRestartedSources(
  options: DistributedWarmOptions,
  job: DistributedJob,
  restartedSources: ReadonlySet<string>,
  fallback: string | undefined,
): Promise<{ repairs: RepairReport[]; lost: string[]; by: Map<string, string> }> {
  const by = new Map<string, string>();
  if (restartedSources.size === 0) return { repairs: [], lost: [], by };
  // The replica the populators' delete reconcile asked in the restarted node's place, if it still can.
  const alternate = await alternateSource(job, { ...options, connect: job.connect }, fallback);
  if (!alternate) return { repairs: [], lost: [], by };
  const nodes = job.source.replica.nodes.filter((n) => restartedSources.has(n.id));
  const ids = nodes.map((n) => n.id).join(', ');
  job.log({ event: 'source-restarted', level: 'warn', nodes: nodes.map((n) => n.id), from: alternate, msg: `${ids} restarted: taking its share from ${alternate}` });
  const cover = await warmHere(options, job, {
    only: job.scope.node,
    source: alternate,
    shareOf: { replica: job.source.replica.name, nodes: nodes.map((n) => n.address) },
    jobId: `${job.jobId}-share-${job.started}`,
  });
  if (!cover.complete) return { repairs: [], lost: [`${ids} restarted, and taking its share from ${alternate} is incomplete: ${(cover.problems ?? []).join('; ')}`], by };
  for (const n of nodes) by.set(n.id, alternate);
  return { repairs: [{ pass: cover.jobId, reason: `${ids} restarted: its share taken from ${alternate}` }], lost: [], by };
}

/**
 * Refills the share of target nodes that restarted during the job (or since its last run):
 * each is warmed like an instance, straight from the source nodes to the node, by this
 * process. Its chunks stay in a local directory: a share is one node's, not the replica's.
 */
async function repairRestartedTargets(
  options: DistributedWarmOptions,
  job: DistributedJob,
  restarted: readonly NodeSpec[],
): Promise<{ repairs: RepairReport[]; lost: string[] }> {
  const repairs: RepairReport[] = [];
  const lost: string[] = [];
  const unique = [...new Map(restarted.map((n) => [n.id, n])).values()];
  job.targets.rebase(unique);
  for (const node of unique) {
    job.log({ event: 'target-restarted', level: 'warn', node: node.id, from: job.source.replica.name, msg: `${node.id} restarted: refilling its share from ${job.source.replica.name}` });
    const repair = await warmHere(options, job, {
      only: node,
      source: job.source.replica.name,
      jobId: `${job.jobId}-repair-${nodeDirectory(node.id)}-${job.started}`,
    });
    repairs.push({ pass: repair.jobId, nodes: [node.id], reason: `${node.id} restarted or evicted: its share copied again` });
    if (!repair.complete) lost.push(`${node.id} restarted, and its refill is incomplete: ${(repair.problems ?? []).join('; ')}`);
  }
  return { repairs, lost };
}

/**
 * Items target nodes refused are written again, straight from the source, by this process:
 * a node given memory, or an item size limit raised, since, takes them now. Populators record
 * each refusal (the keys, per data chunk and target node) before they acknowledge the chunk,
 * so the records are every refusal not yet retried. They are removed once a retry leaves
 * nothing refused; until then every run retries them again.
 *
 * The refusals a summary reports are this retry's: what the target still refuses now, not
 * what it refused once.
 */
async function retryRefused(
  options: DistributedWarmOptions,
  job: DistributedJob,
): Promise<{ repairs: RepairReport[]; lost: string[]; byNode: Map<string, WriteCounters> } & Pick<WarmSummary, 'skippedTooLarge' | 'smallestSkippedBytes'>> {
  const { store } = job;
  const { signal } = options;
  const byNode = new Map<string, WriteCounters>();
  const records = (await store.list(refusedPrefix(job.jobId), signal)).filter((name) => name.endsWith('.chunk'));
  if (records.length === 0) return { repairs: [], lost: [], byNode };
  const nodeOf = new Map(job.source.replica.nodes.map((n) => [nodeDirectory(n.id), n.id]));
  const lost: string[] = [];
  const keyChunks = new Map<string, string[]>();
  for (const name of records) {
    const node = nodeOf.get(name.split('/').at(-2) ?? '');
    if (node) keyChunks.set(node, [...(keyChunks.get(node) ?? []), name]);
    else lost.push(`${store.describe(name)} records refused items of no source node of the job: not retried`);
  }
  async function* read(names: readonly string[]): AsyncIterable<Buffer> {
    for (const name of names) {
      const chunk = await store.get(name, { signal });
      decodeKeyChunk(chunk, store.describe(name));
      yield chunk;
    }
  }
  job.log({ event: 'refused-retry', level: 'warn', records: records.length, msg: `retrying the items target nodes refused (${records.length} records)` });
  const retry = await warmHere(options, job, {
    only: job.scope.node,
    source: job.source.replica.name,
    jobId: `${job.jobId}-refused-${job.started}`,
    keyChunks: new Map([...keyChunks].map(([node, names]) => [node, read(names)])),
    skipTooLarge: options.skipTooLarge,
  });
  for (const n of retry.targetNodes) byNode.set(n.node, writeCountersOf(n));
  const sum = (field: keyof WriteCounters): number => retry.targetNodes.reduce((total, n) => total + n[field], 0);
  const refusedAgain = sum('failed') - (options.skipTooLarge ? sum('tooLarge') : 0);
  if (retry.complete) await Promise.all(records.map((name) => store.delete(name, signal)));
  else if (refusedAgain === 0) lost.push(`retrying the refused items is incomplete: ${(retry.problems ?? []).join('; ')}`);
  const reason = `items target nodes refused, retried: ${sum('stored')} stored, ${sum('existed')} already there, ${refusedAgain} refused again`;
  return { repairs: [{ pass: retry.jobId, reason }], lost, byNode, skippedTooLarge: retry.skippedTooLarge, smallestSkippedBytes: retry.smallestSkippedBytes };
}

/**
 * The populators' counters of a node, with the refusals replaced by what the retry of them
 * found, and the rest of what the retry did (stored, its delete reconcile's lookups) added.
 */
function afterRetry(written: WriteCounters | undefined, retried: WriteCounters | undefined): WriteCounters {
  const counters = { ...newWriteCounters(), ...written };
  if (!retried) return { ...counters, failed: 0, tooLarge: 0, outOfMemory: 0, serverError: 0 };
  const { failed, tooLarge, outOfMemory, serverError } = retried;
  return { ...addInto(counters, retried), failed, tooLarge, outOfMemory, serverError };
}

interface DumpTracker {
  status: DumpStatus;
  unreachableSince: number | undefined;
  /** The dump failed because its node restarted: its share is lost (or taken from elsewhere). */
  lost?: boolean | undefined;
  /** It failed once in this run and was started again. */
  restarted?: boolean | undefined;
}

/** What a dump's sidecar is asked to sample of the keys it lists (see StartDumpRequest.sampleKeys). */
export function dumpSampleKeys(samplePerNode: number, targetNodes: number): number {
  return Math.min(MAX_SAMPLE_KEYS, listedSampleKeys(samplePerNode, targetNodes));
}

/**
 * The keys the dumps listed, sampled, when every source node's dump finished having listed
 * its whole node itself; else undefined, and the read-back lists the source's keys again.
 */
function listedSampleOf(dumps: ReadonlyMap<string, DumpTracker>, capacity: number): SampledKey[] | undefined {
  const samples: NodeSample[] = [];
  for (const [node, { status, lost }] of dumps) {
    const sample = lost || status.state !== 'finished' ? undefined : sampleOfStatus(status.listedSample, node);
    if (!sample) return undefined;
    samples.push(sample);
  }
  return mergeSamples(samples, capacity);
}

/** Cancels the job's dump on one sidecar and waits until it has stopped (a sidecar that never had it has nothing to stop). */
export async function stopDump(
  client: SidecarClient,
  node: string,
  options: { readonly jobId: string; readonly clock: Clock; readonly waitMs?: number | undefined; readonly signal?: AbortSignal | undefined },
): Promise<void> {
  const { jobId, clock, signal } = options;
  const waitMs = options.waitMs ?? 60_000;
  const since = clock.now();
  // The sidecar waits a while itself before it answers a cancel: one still running then is polled.
  let status = await client.cancel(jobId, signal);
  while (status?.state === 'running') {
    if (clock.now() - since >= waitMs) {
      throw new CachewarmError('NODE_BUSY', `the dump of job ${jobId} on ${node} has not stopped ${Math.round(waitMs / 1000)} s after it was cancelled`, {
        job: jobId,
        node,
      });
    }
    await clock.sleep(500, signal);
    status = await client.status(jobId, signal);
  }
}

export function sidecarOf(node: NodeSpec, token: string): SidecarClient {
  if (!node.sidecar) {
    throw new CachewarmError('TOPOLOGY_INVALID', `node ${node.id} has no "sidecar" URL: the S3+SQS transport needs one on every source node`, {
      node: node.id,
    });
  }
  return new SidecarClient({ baseUrl: node.sidecar, token });
}

/** The job's manifest: written on the first run, checked on a rerun (a job id names one warm). */
async function openManifest(store: S3Store, existing: JobManifest | undefined, wanted: JobManifest, signal?: AbortSignal): Promise<JobManifest> {
  if (!existing) {
    await putJson(store, manifestName(wanted.jobId), wanted, signal);
    return wanted;
  }
  const same = (m: JobManifest): string => JSON.stringify([m.kind, m.source, m.target]);
  if (same(existing) !== same(wanted)) {
    throw new CachewarmError(
      'INVALID_ARGUMENT',
      `job ${wanted.jobId} already exists in ${store.describe(manifestName(wanted.jobId))} for another warm ` +
        `(${existing.kind} ${existing.source.replica} -> ${existing.target.replica}${existing.target.writeOnly ? ` node ${existing.target.writeOnly.join(', ')}` : ''}): pick another --job-id`,
      { job: wanted.jobId },
    );
  }
  return existing;
}

/**
 * One look at every unfinished dump. A failed dump fails the job with the sidecar's error; a
 * sidecar that forgot the job (it restarted) is asked again and resumes from its chunks; one
 * that does not answer is given `graceMs` before the job fails naming it.
 */
async function followDumps(
  dumps: Map<string, DumpTracker>,
  follow: {
    readonly sidecars: Map<string, SidecarClient>;
    readonly request: (node: string) => StartDumpRequest;
    readonly clock: Clock;
    readonly graceMs: number;
    readonly restarted: (node: string) => Promise<boolean>;
    readonly log: Log;
    readonly signal: AbortSignal | undefined;
  },
): Promise<void> {
  const { sidecars, request, clock, graceMs, restarted, log, signal } = follow;
  for (const [node, tracker] of dumps) {
    if (tracker.status.state === 'finished' || tracker.lost) continue;
    const client = sidecars.get(node) as SidecarClient;
    try {
      const status = tracker.status.state === 'running' ? await client.status(tracker.status.jobId, signal) : undefined;
      tracker.status = status ?? (await client.start(request(node), signal)).status;
      tracker.unreachableSince = undefined;
    } catch (error) {
      if (signal?.aborted) throw abortReason(signal);
      if (!isCachewarmError(error, 'NODE_UNREACHABLE')) throw error;
      tracker.unreachableSince ??= clock.now();
      if (clock.now() - tracker.unreachableSince > graceMs) throw error;
      continue;
    }
    if (tracker.status.state === 'failed') {
      // A node that restarted under its dump is no failure of the job: its share is judged at the end.
      if (await restarted(node)) {
        tracker.lost = true;
        continue;
      }
      // Once per run a failed dump is started again, resuming from what the store holds: what
      // failed it may have passed (S3 or SQS lost and back, the store emptied under it).
      if (!tracker.restarted) {
        tracker.restarted = true;
        const reason = tracker.status.error?.message ?? 'no reason given';
        log({ event: 'dump-restarted', level: 'warn', node, reason, msg: `the dump of ${node} failed (${reason}): starting it again` });
        tracker.status = (await client.start(request(node), signal)).status;
        continue;
      }
      throw new CachewarmError('JOB_FAILED', `the dump of ${node} failed twice: ${tracker.status.error?.message ?? 'no reason given'}`, {
        node,
        code: tracker.status.error?.code,
      });
    }
  }
}

/**
 * A dump is done when its end marker is in the store, not when its sidecar remembers it
 * finished: a store that lost the job's objects (restarted empty, a lifecycle rule, a person)
 * lost the chunks too. A finished dump without its marker is started again; the sidecar,
 * finding no marker either, dumps the node anew.
 */
async function endMarkersStored(
  dumps: Map<string, DumpTracker>,
  sidecars: Map<string, SidecarClient>,
  request: (node: string) => StartDumpRequest,
  job: Pick<DistributedJob, 'store' | 'jobId' | 'log'>,
  signal: AbortSignal | undefined,
): Promise<boolean> {
  let stored = true;
  for (const [node, tracker] of dumps) {
    if (tracker.lost || (await getJson(job.store, endMarkerName(job.jobId, node), signal))) continue;
    stored = false;
    const marker = job.store.describe(endMarkerName(job.jobId, node));
    job.log({ event: 'dump-redone', level: 'warn', node, marker, msg: `${marker} is gone though ${node}'s dump finished: dumping it again` });
    tracker.status = (await (sidecars.get(node) as SidecarClient).start(request(node), signal)).status;
  }
  return stored;
}

/**
 * What the dead-letter queue holds, as its attributes count it (visible, in flight, delayed)
 * and as much of it as can be read now. A message another reader holds (an operator browsing
 * the queue) cannot be read, but it is counted: the job is not complete while it is there.
 */
async function parkedOn(sqs: SQSClient, deadLetterQueueUrl: string, signal?: AbortSignal): Promise<{ chunk: string; reason: string }[]> {
  const [read, held] = await Promise.all([parkedMessages(sqs, deadLetterQueueUrl, signal), queueBacklog(sqs, deadLetterQueueUrl, signal)]);
  const parked = read.map((p) => ({ chunk: p.chunk ?? `message ${p.messageId ?? '?'}`, reason: p.reason }));
  const unread = Math.min(held.visible + held.inFlight + held.delayed - parked.length, 1_000);
  for (let i = 0; i < unread; i++) parked.push({ chunk: 'unknown', reason: 'on the dead-letter queue, held by another reader: not readable now' });
  return parked;
}

/**
 * Every item a finished dump read went into a stored, announced chunk, and every such chunk
 * is handled by a writer at least once (twice after a redelivery), as the populators' durable
 * reports count: fewer handled than read means chunks or messages were lost between them
 * (a store or queue that lost state, a message deleted by hand).
 */
function itemsNeverHandled(dumps: Map<string, DumpTracker>, targetNodes: readonly WriteCounters[]): string | undefined {
  const read = [...dumps.values()].filter((d) => d.status.state === 'finished' && !d.lost).reduce((sum, d) => sum + d.status.counters.read, 0);
  const handled = targetNodes.reduce((sum, n) => sum + n.stored + n.existed + n.expired + n.failed + n.replaced, 0);
  if (handled >= read) return undefined;
  return `${(read - handled).toLocaleString('en-US')} of the ${read.toLocaleString('en-US')} items the dumps read never reached a writer: chunks or messages were lost between them`;
}

function sumDumped(dumps: Map<string, DumpTracker>): DumpCounters {
  return [...dumps.values()].reduce((sum, d) => addInto(sum, d.status.counters), newDumpCounters());
}

/** Every populator's latest report, summed per target node. */
async function populatorReports(store: S3Store, jobId: string, signal?: AbortSignal): Promise<{ byNode: Map<string, WriteCounters> }> {
  const byNode = new Map<string, WriteCounters>();
  for (const name of await store.list(`${jobId}/populators/`, signal)) {
    const report = await getJson<PopulatorReport>(store, name, signal);
    for (const [address, counters] of Object.entries(report?.byNode ?? {})) {
      addInto(byNode.get(address) ?? byNode.set(address, newWriteCounters()).get(address) as WriteCounters, counters);
    }
  }
  return { byNode };
}

/**
 * A complete job leaves nothing behind but its manifest and summary (the record that a rerun
 * of the job id reads as "already complete"), and its chunks when kept. An incomplete one
 * keeps its queues and chunks: the dead-letter queue and the objects it names are what a
 * person needs to see what went wrong, and a rerun needs them to go on.
 */
async function cleanUp(
  summary: WarmSummary,
  ctx: { store: S3Store; sqs: SQSClient; queues: JobQueues | undefined; keepChunks: boolean; log: Log; signal?: AbortSignal | undefined },
): Promise<void> {
  if (!summary.complete) {
    ctx.log({ event: 'job-kept', msg: `the job is incomplete: its queues and ${ctx.store.describe(summary.jobId)}/ are kept for inspection` });
    return;
  }
  await putJson(ctx.store, summaryName(summary.jobId), summary, ctx.signal);
  // A standing queue is the installation's: it stays.
  if (ctx.queues) await deleteJobQueues(ctx.sqs, ctx.queues, ctx.signal);
  if (!ctx.keepChunks) {
    const record = new Set([manifestName(summary.jobId), summaryName(summary.jobId), lockName(summary.jobId)]);
    const removed = await ctx.store.deleteAll(summary.jobId, (name) => !record.has(name), ctx.signal);
    ctx.log({ event: 'job-cleaned', objects: removed, msg: `removed its queues and ${removed} objects` });
  }
}
