import { rmdir } from 'node:fs/promises';
import { dumpNode } from '../dumper/dump-node.js';
import { ringFilter } from '../dumper/ring-filter.js';
import { runPopulator } from '../populator/populate.js';
import { MetaNodeWriter } from '../populator/meta-node-writer.js';
import { DeleteReconciler } from '../populator/delete-reconciler.js';
import { PinnedTargets } from '../populator/pinned-targets.js';
import type { NodeWriter } from '../populator/node-writer.js';
import { BufferPool } from '../shared/buffer-pool.js';
import type { Clock } from '../shared/clock.js';
import { type DumpCounters, WriteTally, addInto, newDumpCounters } from '../shared/counters.js';
import { CachewarmError, abortReason, isCachewarmError } from '../shared/errors.js';
import { nodeDirectory } from '../shared/job-layout.js';
import { type Connect, connectDirect } from '../shared/memcached/connect.js';
import type { ChunkMessage } from '../shared/chunk-message.js';
import { MemoryQueue } from '../shared/queue/memory-queue.js';
import { HandOffStore } from '../shared/store/hand-off-store.js';
import { LocalDirStore } from '../shared/store/local-dir-store.js';
import { type ProtectSource, type ReadPace, listedUntilClosed, startReadPace } from '../dumper/read-pace.js';
import { type NodeSpec, type Topology, replicaOf } from '../shared/topology.js';
import { DEFAULT_ALREADY_WARM_RATIO, type WarmthCheck, checkAlreadyWarmRatio } from './already-warm.js';
import { JobJournal, type JobRecord, type PassRecord, type SourceShare } from './job-journal.js';
import { JobLock } from './job-lock.js';
import { type WatchedNode, identities, replacedSince } from './node-watch.js';
import { endpointOf } from './node-stats.js';
import { RefusedLog } from './refused-log.js';
import type { SharedCopy } from './shared-copy.js';
import { Listing } from '../shared/key-sample.js';
import { type ReplicaStats, selectSource } from './select-source.js';
import { type WarmScope, alreadyWarm, alternateSource, checkCapacity, fallbackReplica, checkRequestedSource, checkWarmth, listedSampleKeys, newJobId, planIdentity, readBackSample, scopeOf, targetRingOf, watchJob } from './warm-plan.js';
import { DEFAULT_VERIFY_SAMPLE, type RepairReport, type VerificationSummary, type WarmProgress, type WarmSummary, guardReports, itemSizeLimits, problemsOf, processUsage, targetNodeReport } from './warm-summary.js';

export interface WarmReplicaOptions {
  readonly topology: Topology;
  readonly target: string;
  /** A replica name, or 'auto' (default): the fullest reachable replica other than the target. */
  readonly source?: string | undefined;
  readonly workDir: string;
  readonly jobId?: string | undefined;
  readonly chunkSizeBytes: number;
  /** Items per second read from each source node; undefined: no limit. */
  readonly maxOpsPerNode?: number | undefined;
  /**
   * How far a live client's p99 on a source node may rise while it is dumped, as a factor of
   * its baseline (see dumper/read-pace.ts), or 'off'. @default DEFAULT_PROTECT_SOURCE (1.2)
   */
  readonly protectSource?: ProtectSource | undefined;
  /** Key chunks read at once per source node. */
  readonly fetchConcurrency?: number;
  /** Chunks written at once. */
  readonly populateConcurrency?: number;
  /** Chunks waiting between the dumpers and the populators before the dumpers wait. */
  readonly queueCapacity?: number;
  readonly keepChunks?: boolean;
  readonly clock: Clock;
  readonly connect?: Connect;
  /**
   * Writes items to the target's nodes; default: a MetaNodeWriter over `connect`. Closed by
   * warmReplica when the warm ends, like the default one.
   */
  readonly writer?: NodeWriter | undefined;
  /**
   * Take back what a source deletes during the warm (DeleteReconciler): each key written is
   * then looked up at its source once. false for a cache whose application never deletes.
   * @default true
   */
  readonly reconcileDeletes?: boolean | undefined;
  readonly signal?: AbortSignal | undefined;
  readonly onProgress?: (progress: WarmProgress) => void;
  readonly progressIntervalMs?: number;
  /**
   * Warm one node of the target replica only (an instance warm), as the topology names it.
   * Only the source keys that hash to it on the target's ring are dumped, only it is written.
   */
  readonly only?: NodeSpec | undefined;
  /** Copy even when the target already looks warm (see alreadyWarmRatio). */
  readonly force?: boolean | undefined;
  /**
   * The target counts as already warm, and nothing is copied, when it holds at least this
   * fraction of the items expected (default 0.95).
   */
  readonly alreadyWarmRatio?: number | undefined;
  /**
   * Start even when the target looks too small for what it would receive. Its evictions are
   * still reported, and still leave the job incomplete: the target does not hold the source.
   */
  readonly acceptEvictions?: boolean | undefined;
  /** Items too large for a target node are counted and left out, not held against the job. */
  readonly skipTooLarge?: boolean | undefined;
  /**
   * Keys per target node read back from source and target when the copy is done (see
   * verifyReplicas); the job completes only if none is missing or different. 0 turns it off.
   * @default 2000
   */
  readonly verifySamplePerNode?: number | undefined;
  /**
   * Copy only the keys that this replica's ring gives these node addresses: the share of
   * source nodes that restarted, taken from another replica (the S3+SQS controller does so).
   */
  readonly shareOf?: SourceShare | undefined;
  /** How often every source and target node's `stats` is read during the job. @default 1000 */
  readonly watchIntervalMs?: number | undefined;
  /**
   * Copy only these keys, not the source's listing: key chunks per source node id, read from
   * that node and written as any pass writes. How the S3+SQS controller retries the items
   * its populators recorded as refused.
   */
  readonly keyChunks?: ReadonlyMap<string, AsyncIterable<Buffer>> | undefined;
  /**
   * A dump of the source this warm shares with other targets' (see warmReplicas): its copy
   * pass takes the shared dump's chunks instead of reading the source itself. It joins, or
   * leaves as soon as it knows it will not (resumed past its copy); the caller has it leave
   * however the warm ends (already warm, failed before its copy, done).
   */
  readonly sharedCopy?: SharedCopy | undefined;
}

export type { WarmProgress, WarmSummary } from './warm-summary.js';

/**
 * A replica warm on one machine (the embedded default): chunks in a local directory, handed
 * over through a bounded in-process queue. Every source node's dumper and the populators run
 * at once; populators start on the first chunk, not after the dump. With `only`, an instance
 * warm: one node of the target, filled with its share of the source.
 *
 * The job is a list of passes. The first copies the scope; every source and target node is
 * watched while it runs. A target node that restarted lost what was written to it, so its
 * share is copied again in a repair pass (a dump filtered to that node, as an instance warm
 * does). Items a target refused, a source node that restarted, chunks that were parked and
 * target nodes that evicted leave the job incomplete, with a pass recorded for the rerun.
 *
 * Safe to run again: with the same job id and work directory a run resumes the job. It
 * redoes exactly what is not done (unfinished passes, refused items, the share of a target
 * node that restarted or evicted since); a job that completed is reported as such, not redone.
 * A new job whose target already holds what it would copy copies nothing (unless `force`).
 * One run per job id: a second run is refused, naming the first.
 */
export async function warmReplica(options: WarmReplicaOptions): Promise<WarmSummary> {
  const { topology, clock, connect = connectDirect, signal } = options;
  const started = clock.now();
  const scope = scopeOf(topology, options.target, options.only);
  checkRequestedSource(scope, options.source);
  checkAlreadyWarmRatio(options.alreadyWarmRatio ?? DEFAULT_ALREADY_WARM_RATIO);
  const jobId = options.jobId ?? newJobId(scope.kind, nodeDirectory(scope.label), started);
  const directory = await JobJournal.directoryOf(options.workDir, jobId);
  const lock = await JobLock.acquire(directory, jobId);
  try {
    const earlier = options.jobId === undefined ? undefined : await JobJournal.read(options.workDir, jobId);
    if (earlier) checkSameJob(earlier, scope, options.source);
    if (earlier?.status === 'completed') return alreadyComplete(earlier);

    // A resumed job keeps its source: its dumps so far are of that replica's nodes.
    const requested = earlier?.source ?? options.source;
    const { source } = await selectSource(topology, scope.replica.name, { connect, requested, signal });
    // A resumed job was judged when it started; judged now, its partial copy could pass for warm.
    const warmth = earlier || options.force ? undefined : await checkWarmth(topology, scope, source, options);
    if (warmth?.alreadyWarm) return alreadyWarm({ jobId, scope, source, warmth, durationMs: clock.now() - started });
    return await runWarm(options, { scope, source, jobId, started, earlier, warmth });
  } finally {
    await lock.release();
    // A job that found nothing to do leaves no directory behind.
    await rmdir(directory).catch(() => undefined);
  }
}

/** A job id reused for another warm would mix two jobs' chunks: refused, naming the job's own. */
function checkSameJob(earlier: JobRecord, scope: WarmScope, requested: string | undefined): void {
  if (earlier.kind !== scope.kind || earlier.target !== scope.label) {
    throw new CachewarmError(
      'INVALID_ARGUMENT',
      `job ${earlier.id} is the ${earlier.kind} warm of ${earlier.target}, not the ${scope.kind} warm of ${scope.label}: choose another --job-id`,
      { job: earlier.id, target: earlier.target },
    );
  }
  if (requested !== undefined && requested !== 'auto' && requested !== earlier.source) {
    throw new CachewarmError(
      'INVALID_ARGUMENT',
      `job ${earlier.id} copies from ${earlier.source}: resume it with --source ${earlier.source} (or auto), or choose another --job-id`,
      { job: earlier.id, source: earlier.source },
    );
  }
}

interface JobPlan {
  readonly scope: WarmScope;
  readonly source: ReplicaStats;
  readonly jobId: string;
  readonly started: number;
  readonly earlier: JobRecord | undefined;
  readonly warmth: WarmthCheck | undefined;
}

/** What the job's passes share: where chunks go, who writes, what is counted. */
interface PassContext {
  readonly options: WarmReplicaOptions;
  readonly plan: JobPlan;
  readonly store: LocalDirStore;
  readonly writer: NodeWriter;
  readonly reconciler: DeleteReconciler | undefined;
  readonly pool: BufferPool;
  readonly tally: WriteTally;
  readonly journal: JobJournal;
  /** Each pass's dump counters per source node id, summed for reports. */
  readonly dumped: ReadonlyMap<string, DumpCounters>[];
  /** Where this run's refused items go, for the rerun's retry pass; made on the first refusal. */
  refused: { log: RefusedLog; pass: PassRecord } | undefined;
  readonly parked: { chunk: string; reason: string }[];
  /** The smallest item (key + value bytes) a target refused as too large and the job skipped (--skip-too-large). */
  smallestTooLargeBytes: number | undefined;
  queueDepth: () => number;
  /** The read pace of each source node being dumped now. */
  readonly paces: Map<string, ReadPace>;
  /** What this run's copy pass listed, sampled for the read-back (its own, or the shared copy's). */
  listing: Listing | undefined;
}

/** A look that failed after source nodes were lost mid-dump: the dump's error names the node. */
const rethrowFirst =
  (lost: ReadonlyMap<string, Error>) =>
  (error: unknown): never => {
    throw lost.values().next().value ?? error;
  };

/** Repair passes one run adds for restarted target nodes before it leaves the rest to a rerun. */
const MAX_REFILLS_PER_RUN = 3;

async function runWarm(options: WarmReplicaOptions, plan: JobPlan): Promise<WarmSummary> {
  const { clock, connect = connectDirect, topology } = options;
  const { scope, source, jobId, started, earlier } = plan;
  // Chosen now, so that the reconcile can ask it about a source node that restarts mid-warm.
  const fallback = options.reconcileDeletes === false ? undefined : await fallbackReplica(plan, options);
  // Every node is read before anything is opened that would need closing. (A SASL-only
  // target answers `stats` only through its writer's protocol.)
  const writerStats = options.writer?.stats?.bind(options.writer);
  const readTargetStats = writerStats && ((node: NodeSpec, signal?: AbortSignal) => writerStats(node.address, signal));
  const watch = await watchJob(scope, source, { connect, clock, intervalMs: options.watchIntervalMs, readTargetStats }, options.signal);
  const { targets, sources } = watch;
  const pool = new BufferPool();
  let writer: NodeWriter;
  try {
    // (A copy of given keys is a few items, not a share of the source.)
    if (!earlier && !options.acceptEvictions && !options.keyChunks) checkCapacity(topology, scope, source, targets.nodes);
    writer = await openWriter(options, scope, pool);
  } catch (error) {
    await watch.stop();
    throw error;
  }
  const journal = await JobJournal.open(options.workDir, { id: jobId, kind: scope.kind, source: source.replica.name, target: scope.label });
  // Lookups go only to the source (and fallback) processes this run started with.
  const dumpedProcesses = { ...fallback?.processes, ...identities(sources) };
  const reconciler =
    options.reconcileDeletes === false
      ? undefined
      : new DeleteReconciler({
          connect,
          clock,
          labelOf: (address) => `${source.replica.name}/${address}`,
          checkSource: new PinnedTargets(async () => dumpedProcesses, jobId, 'sources').check,
          fallback,
        });
  const ctx: PassContext = {
    options,
    plan,
    store: new LocalDirStore(options.workDir),
    writer,
    reconciler,
    pool,
    tally: new WriteTally(),
    journal,
    dumped: [],
    refused: undefined,
    parked: [],
    smallestTooLargeBytes: undefined,
    queueDepth: () => 0,
    paces: new Map(),
    listing: undefined,
  };
  const progress = (): WarmProgress => ({
    elapsedMs: clock.now() - started,
    // The source's whole count even for an instance warm: the keys left out by its filter
    // are counted too (`filtered`), and the ETA subtracts them.
    expectedItems: source.items,
    dumped: ctx.dumped.flatMap((pass) => [...pass.values()]).reduce(addInto, newDumpCounters()),
    written: ctx.tally.total(),
    queueDepth: ctx.queueDepth(),
    sourceGuards: guardReports(new Map([...ctx.paces, ...(options.sharedCopy?.paces ?? [])])),
  });
  const ticker = options.onProgress ? setInterval(() => options.onProgress?.(progress()), options.progressIntervalMs ?? 1_000) : undefined;

  try {
    // Target nodes another process serves since the last run, and restarts seen in this one.
    const replaced = replacedSince(earlier?.targets, targets);
    const restarts = new Map(replaced.map((n) => [n.id, 1]));
    const passes = options.keyChunks && !earlier ? [await seedKeys(ctx, options.keyChunks)] : pendingPasses(earlier, replaced, scope);
    // A source node restarted since the last run: what its crawl listed then is gone now.
    const restartedSources = new Set(replacedSince(earlier?.sources, sources).map((n) => n.id));
    /** Restarted source nodes whose share another replica gave, by that replica's name. */
    const covered = new Map<string, string>();
    if (!passes.some((p) => !p.done && sharesCopy(ctx, p))) options.sharedCopy?.leave(options.target);
    // From here a rerun knows which processes were read and written, and what is owed.
    await journal.save({ passes, targets: identities(targets), sources: identities(sources) });
    const repairs: RepairReport[] = [];
    const lost: string[] = [];
    let refills = 0;
    for (let i = 0; i < passes.length; i++) {
      const pass = passes[i] as PassRecord;
      if (pass.done) continue;
      if (pass.kind !== 'copy') repairs.push({ pass: pass.id, nodes: pass.nodes?.map((a) => idOf(scope, a)), reason: pass.reason });
      const parkedBefore = ctx.parked.length;
      const lostSources = await runPass(ctx, pass);
      await Promise.all([targets.look(options.signal), sources.look(options.signal).catch(rethrowFirst(lostSources))]);
      const sourceRestarts = new Set(sources.restarted().map((n) => n.id));
      // A source node that was lost but is the same process was only down: that fails the job.
      for (const [node, error] of lostSources) if (!sourceRestarts.has(node)) throw error;
      for (const node of sourceRestarts) restartedSources.add(node);
      sources.rebase(sources.restarted());
      pass.done = ctx.parked.length === parkedBefore;
      const uncovered = [...restartedSources].filter((id) => !covered.has(id));
      if (uncovered.length > 0) {
        const alternate = await alternateSource(plan, options, fallback?.replica);
        if (alternate) {
          for (const id of uncovered) covered.set(id, alternate);
          const share = { replica: source.replica.name, nodes: source.replica.nodes.filter((n) => uncovered.includes(n.id)).map((n) => n.address) };
          passes.push({ ...newPass(passes, 'alternate', `${uncovered.join(', ')} restarted: its share taken from ${alternate}`, undefined), from: alternate, sourceShare: share });
        }
      }
      // A target node that restarted lost what this job wrote to it: its share is copied again.
      const restarted = targets.restarted();
      for (const node of restarted) restarts.set(node.id, (restarts.get(node.id) ?? 0) + 1);
      if (restarted.length > 0) {
        targets.rebase(restarted);
        const why = `${restarted.map((n) => n.id).join(', ')} restarted during ${pass.id}`;
        if (refills++ < MAX_REFILLS_PER_RUN) passes.push(newPass(passes, 'repair', why, restarted));
        else lost.push(`${why}, and ${MAX_REFILLS_PER_RUN} refills in one run were not enough: rerun the job to refill ${restarted.length === 1 ? 'it' : 'them'}`);
      }
      await journal.save({ targets: identities(targets), sources: identities(sources) });
    }
    const uncovered = [...restartedSources].filter((id) => !covered.has(id));
    if (uncovered.length > 0) {
      // What the source lost is gone, and no other replica has it: the rerun copies its share
      // again from what it holds then.
      passes.push({ ...newPass(passes, 'source', `source ${uncovered.join(', ')} restarted during its dump`, undefined), sourceNodes: uncovered });
    }
    if (ctx.refused) {
      await ctx.refused.log.close(source.replica.nodes.map((n) => n.id), options.signal);
      passes.push(ctx.refused.pass);
    }
    const watched = new Map(targets.nodes.map((w) => [w.node.address, w]));
    const evicted = scope.nodes.filter((n) => (watched.get(n.address)?.evictions ?? 0) > 0);
    // Evicted items are unknown: the rerun refills the share of every node that evicted.
    if (evicted.length > 0) passes.push(newPass(passes, 'repair', `${evicted.map((n) => n.id).join(', ')} evicted items`, evicted));
    const limits = await itemSizeLimits(scope.nodes, (n) => ctx.tally.byNode.get(n.address)?.tooLarge ?? 0, connect, options.signal);
    const seen = { restartedSources, covered, restarts, repairs, lost, watched, limits };
    const unverified = summarize(ctx, { ...seen, verification: undefined });
    // Verified only when nothing else is wrong: the check costs the source a crawl and reads.
    // The read-back speaks the text protocol, which a SASL-only target does not answer.
    const verification = unverified.complete
      ? await readBackSample(
          { topology, scope, source },
          {
            samplePerNode: readTargetStats ? 0 : (options.verifySamplePerNode ?? DEFAULT_VERIFY_SAMPLE),
            maxOpsPerNode: options.maxOpsPerNode,
            connect,
            clock,
            tooLargeFromBytes: ctx.smallestTooLargeBytes,
            listedSample: ctx.listing?.whole,
            signal: options.signal,
          },
        )
      : undefined;
    const summary = verification ? summarize(ctx, { ...seen, verification }) : unverified;
    await journal.finish(summary.complete ? 'completed' : 'failed', summary);
    return summary;
  } catch (error) {
    await journal.finish('failed', progress(), error instanceof Error ? error.message : String(error));
    throw error;
  } finally {
    if (ticker) clearInterval(ticker);
    await Promise.all([watch.stop(), writer.close(), reconciler?.close(), journal.close()]);
  }
}

/**
 * The passes this run owes: the first run's copy; a rerun's unfinished passes, plus a repair
 * of every target node that is no longer the process the job wrote into.
 */
function pendingPasses(earlier: JobRecord | undefined, replaced: readonly NodeSpec[], scope: WarmScope): PassRecord[] {
  if (!earlier?.passes) return [{ id: 'copy', kind: 'copy', reason: `copy ${scope.label}`, done: false }];
  const passes = earlier.passes.map((p) => ({ ...p }));
  if (replaced.length > 0) passes.push(newPass(passes, 'repair', `${replaced.map((n) => n.id).join(', ')} restarted since the last run`, replaced));
  // An incomplete job with nothing left to redo (its record predates passes, or what failed
  // is not tracked) copies everything again: add-only makes that safe.
  if (passes.every((p) => p.done)) passes.push(newPass(passes, 'rerun', 'the last run was incomplete', undefined));
  return passes;
}

function newPass(passes: readonly PassRecord[], kind: PassRecord['kind'], reason: string, nodes: readonly NodeSpec[] | undefined): PassRecord {
  return { id: `${kind}-${passes.length}`, kind, reason, nodes: nodes?.map((n) => n.address), done: false };
}

const idOf = (scope: WarmScope, address: string): string => scope.nodes.find((n) => n.address === address)?.id ?? address;

/**
 * One pass: every source node (or those named) dumped through the filter, written by the
 * populators. Resolves with the source nodes whose connections were lost mid-dump: whether
 * that was a restart (their share is then copied otherwise) or an outage is the caller's to tell.
 */
async function runPass(ctx: PassContext, pass: PassRecord): Promise<Map<string, Error>> {
  const { options, plan, store, writer, pool, tally, journal } = ctx;
  const { clock, connect = connectDirect, topology } = options;
  const { scope, source } = plan;
  const passJob = `${plan.jobId}/${pass.id}`;
  const shared = sharesCopy(ctx, pass) ? options.sharedCopy : undefined;
  // Data chunks go from the dumpers to the populators in memory; only a parked one is stored.
  const handOff = shared || options.keepChunks ? undefined : new HandOffStore(store, pool);
  const chunks = shared?.store ?? handOff ?? store;
  const queue = new MemoryQueue({
    capacity: options.queueCapacity ?? 8,
    onPark: ({ message }) => {
      const name = message.chunk.name;
      if (shared) shared.parked(options.target, name);
      // The dumper waits for its handed-off chunks to be written or stored: failing to store one fails the pass.
      else handOff?.persist(name).catch((error: unknown) => stop.abort(error));
    },
  });
  ctx.queueDepth = () => queue.depth;
  const nodes = pass.nodes ? scope.nodes.filter((n) => pass.nodes?.includes(n.address)) : undefined;
  const ring = nodes ? targetRingOf(topology, scope.replica.name, nodes.map((n) => n.address)) : scope.ring;
  const targetFilter = pass.kind === 'retry' ? undefined : nodes ? ringFilter(ring.nodes, nodes.map((n) => n.address)) : scope.keyFilter;
  // An alternate replica stands in for some source nodes: only the keys the source's ring gives them.
  const share = pass.sourceShare ?? options.shareOf;
  const shareFilter = share && ringFilter(replicaOf(topology, share.replica).nodes, share.nodes);
  const keyFilter = shareFilter && targetFilter ? (key: Buffer) => shareFilter(key) && targetFilter(key) : (shareFilter ?? targetFilter);
  const dumpers = (pass.from ? replicaOf(topology, pass.from) : source.replica).nodes.filter((n) => !pass.sourceNodes || pass.sourceNodes.includes(n.id));
  const lostSources = new Map<string, Error>();
  const counters = new Map(dumpers.map((n) => [n.id, newDumpCounters()]));
  ctx.dumped.push(shared?.counters ?? counters);
  const samplePerNode = options.verifySamplePerNode ?? DEFAULT_VERIFY_SAMPLE;
  const listing = pass.kind === 'copy' && !shared && samplePerNode > 0 ? new Listing(listedSampleKeys(samplePerNode, scope.nodes.length), dumpers.map((n) => n.id)) : undefined;
  if (pass.kind === 'copy') ctx.listing = shared ? shared.listing : listing;

  const onDataChunk = (message: ChunkMessage): void => journal.chunk('produced', message.chunk.name);

  // One failure stops the whole pass: a warm with a hole in it must not look complete.
  const stop = new AbortController();
  const onOuterAbort = (): void => stop.abort(abortReason(options.signal as AbortSignal));
  if (options.signal?.aborted) onOuterAbort();
  else options.signal?.addEventListener('abort', onOuterAbort, { once: true });
  // The job's error is its first failure (or the interrupt): what fails after it, because it
  // was aborted, is only a consequence.
  const fail = (error: unknown): never => {
    if (!stop.signal.aborted) stop.abort(error);
    throw abortReason(stop.signal);
  };
  try {
    const populating = runPopulator({
      queue,
      store: chunks,
      writer,
      reconciler: ctx.reconciler,
      clock,
      tally,
      concurrency: options.populateConcurrency ?? 4,
      // A shared chunk is removed once every target has written it.
      deleteConsumed: !options.keepChunks && !shared,
      pool,
      signal: stop.signal,
      onRefused: (message, _address, refusals) => {
        for (const { reason, item } of refusals) {
          if (reason === 'tooLarge' && options.skipTooLarge) {
            ctx.smallestTooLargeBytes = Math.min(ctx.smallestTooLargeBytes ?? Infinity, item.key.length + item.value.length);
          } else {
            refusedLog(ctx).add(message.source, item);
          }
        }
      },
      onChunkDone: (message) => {
        journal.chunk('consumed', message.chunk.name);
        shared?.written(options.target, message.chunk.name);
      },
      onChunkFailed: (message, error, parked) => {
        journal.chunk(parked ? 'parked' : 'retry', message.chunk.name, error.message);
        // The writer already retried with backoff: a target node still down fails the job
        // now, naming the node, rather than after every chunk has failed the same way.
        if (isCachewarmError(error, 'NODE_UNREACHABLE')) stop.abort(error);
      },
    }).catch(fail);
    const dumped = shared
      ? shared.join({ target: options.target, ring, queue, signal: stop.signal, onDataChunk }).then((lost) => {
          for (const [node, error] of lost) lostSources.set(node, error);
        })
      : dumpPass();
    const dumping = dumped.catch(fail).finally(() => queue.close());
    await Promise.all([dumping, populating]);
    if (stop.signal.aborted) throw abortReason(stop.signal);
    return lostSources;
  } finally {
    ctx.parked.push(...queue.parked.map((p) => ({ chunk: p.message.chunk.name, reason: p.reason })));
    options.signal?.removeEventListener('abort', onOuterAbort);
  }

  async function dumpPass(): Promise<void> {
    await Promise.all(
      dumpers.map((node) =>
        dumpNode({
          node: { id: node.id, ...endpointOf(node) },
          jobId: passJob,
          store,
          handOff,
          queue,
          target: ring,
          clock,
          connect,
          chunkSizeBytes: options.chunkSizeBytes,
          fetchConcurrency: options.fetchConcurrency ?? 2,
          readPace: () => trackedPace(ctx, node, stop.signal),
          keyFilter,
          counters: counters.get(node.id) as DumpCounters,
          pool,
          onDataChunk,
          ...listing?.of(node.id),
          signal: stop.signal,
        }).catch((error: unknown) => {
          // A source node lost mid-dump may have restarted: the other nodes' dumps go on.
          if (!stop.signal.aborted && isCachewarmError(error, 'NODE_UNREACHABLE') && error.message.includes(node.id)) lostSources.set(node.id, error);
          else throw error;
        }),
      ),
    );
  }
}

/** Whether the pass is a whole copy of the source the warm shares with other targets. */
function sharesCopy(ctx: PassContext, pass: PassRecord): boolean {
  const { sharedCopy, shareOf, only } = ctx.options;
  const whole = pass.kind === 'copy' && !pass.nodes && !pass.sourceShare && !pass.from && !pass.sourceNodes;
  return whole && !shareOf && !only && sharedCopy?.source === ctx.plan.source.replica.name;
}

/** A source node's read pace (protected by default: see dumper/read-pace.ts), in the progress while its dump reads. */
async function trackedPace(ctx: PassContext, node: NodeSpec, signal: AbortSignal): Promise<ReadPace> {
  const { options } = ctx;
  const pace = await startReadPace(endpointOf(node), { protectSource: options.protectSource, maxItemsPerSecond: options.maxOpsPerNode, clock: options.clock, signal });
  return listedUntilClosed(ctx.paces, node.id, pace);
}

/** The pass that copies exactly the given keys: their key chunks stored as its own, its crawl done. */
async function seedKeys(ctx: PassContext, keyChunks: ReadonlyMap<string, AsyncIterable<Buffer>>): Promise<PassRecord> {
  const pass: PassRecord = { id: 'keys', kind: 'retry', reason: 'the keys given', done: false };
  const log = new RefusedLog(ctx.store, `${ctx.plan.jobId}/${pass.id}`);
  for (const [node, chunks] of keyChunks) for await (const chunk of chunks) log.addKeyChunk(node, chunk);
  await log.close(ctx.plan.source.replica.nodes.map((n) => n.id), ctx.options.signal);
  return pass;
}

function refusedLog(ctx: PassContext): RefusedLog {
  if (!ctx.refused) {
    // Named by the run, not by its place in the list: passes of this run are added after it is made.
    const pass: PassRecord = { id: `retry-run${ctx.journal.record.runs ?? 1}`, kind: 'retry', reason: 'items the target refused', done: false };
    ctx.refused = { log: new RefusedLog(ctx.store, `${ctx.plan.jobId}/${pass.id}`), pass };
  }
  return ctx.refused.log;
}

function summarize(
  ctx: PassContext,
  seen: {
    restartedSources: ReadonlySet<string>;
    covered: ReadonlyMap<string, string>;
    /** Per target node id, the restarts seen (since the last run, and during this one). */
    restarts: ReadonlyMap<string, number>;
    repairs: RepairReport[];
    lost: string[];
    watched: Map<string, WatchedNode>;
    /** Item size limits of the nodes that refused items as too large, by node id. */
    limits: ReadonlyMap<string, number>;
    verification: VerificationSummary | undefined;
  },
): WarmSummary {
  const { options, plan, tally } = ctx;
  const { scope, source } = plan;
  const sourceNodes = source.replica.nodes.map((n) => ({
    node: n.id,
    ...ctx.dumped.map((pass) => pass.get(n.id) ?? newDumpCounters()).reduce(addInto, newDumpCounters()),
    restarted: seen.restartedSources.has(n.id) || undefined,
    coveredBy: seen.covered.get(n.id),
  }));
  const targetNodes = scope.nodes.map((n) => ({
    ...targetNodeReport(n.id, tally.byNode.get(n.address), seen.watched.get(n.address), seen.restarts.get(n.id) ?? 0),
    itemSizeMaxBytes: seen.limits.get(n.id),
  }));
  const problems = problemsOf({
    sourceNodes,
    targetNodes,
    parked: ctx.parked,
    skipTooLarge: options.skipTooLarge,
    lost: seen.lost,
    verification: seen.verification,
  });
  const tooLarge = targetNodes.reduce((sum, n) => sum + n.tooLarge, 0);
  return {
    ...planIdentity(plan),
    durationMs: options.clock.now() - plan.started,
    sourceNodes,
    targetNodes,
    parked: ctx.parked,
    complete: problems.length === 0,
    problems,
    ...processUsage(),
    resumed: plan.earlier !== undefined,
    repairs: seen.repairs,
    skippedTooLarge: options.skipTooLarge && tooLarge > 0 ? tooLarge : undefined,
    smallestSkippedBytes: ctx.smallestTooLargeBytes,
    verification: seen.verification,
    warmth: plan.warmth,
  };
}

/** The writer to the target nodes, each probed: fail fast, naming the node, before any work starts. */
async function openWriter(options: WarmReplicaOptions, scope: WarmScope, pool: BufferPool): Promise<NodeWriter> {
  const { clock, connect = connectDirect } = options;
  const labels = new Map(scope.replica.nodes.map((n) => [n.address, n.id]));
  const writer: NodeWriter =
    options.writer ?? new MetaNodeWriter({ connect, clock, pool, labelOf: (address) => labels.get(address) ?? address });
  try {
    await Promise.all(scope.nodes.map((node) => writer.probe(node.address, options.signal)));
  } catch (error) {
    await writer.close();
    throw error;
  }
  return writer;
}

/** A completed job run again: its recorded summary, marked as not redone. */
function alreadyComplete(record: JobRecord): WarmSummary {
  const recorded = isWarmSummary(record.summary)
    ? record.summary
    : {
        // A record written without a summary still says the job completed.
        jobId: record.id,
        source: record.source,
        target: record.target,
        durationMs: 0,
        sourceNodes: [],
        targetNodes: [],
        parked: [],
        complete: true,
        kind: record.kind,
        ...processUsage(),
      };
  return { ...recorded, skipped: 'already-complete' };
}

function isWarmSummary(value: unknown): value is WarmSummary {
  const s = value as Partial<Record<keyof WarmSummary, unknown>> | null | undefined;
  return (
    typeof s === 'object' &&
    s !== null &&
    typeof s.jobId === 'string' &&
    typeof s.complete === 'boolean' &&
    Array.isArray(s.sourceNodes) &&
    Array.isArray(s.targetNodes) &&
    Array.isArray(s.parked)
  );
}
