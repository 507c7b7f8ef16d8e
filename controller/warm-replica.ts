import { dumpNode } from '../dumper/dump-node.js';
import { type Connect, connectDirect } from '../shared/memcached/connect.js';
import { runPopulator } from '../populator/populate.js';
import { MetaNodeWriter } from '../populator/meta-node-writer.js';
import type { NodeWriter } from '../populator/node-writer.js';
import { BufferPool } from '../shared/buffer-pool.js';
import type { Clock } from '../shared/clock.js';
import { type DumpCounters, type WriteCounters, WriteTally, addInto, newDumpCounters, newWriteCounters } from '../shared/counters.js';
import { CachewarmError, abortReason, isCachewarmError } from '../shared/errors.js';
import { MemoryQueue } from '../shared/queue/memory-queue.js';
import { LocalDirStore } from '../shared/store/local-dir-store.js';
import { nodeDirectory } from '../shared/job-layout.js';
import { TokenBucket, unlimited } from '../shared/token-bucket.js';
import type { NodeSpec, Topology } from '../shared/topology.js';
import { DEFAULT_ALREADY_WARM_RATIO, type WarmthCheck, checkAlreadyWarmRatio } from './already-warm.js';
import { type JobKind, type WarmScope, alreadyWarm, checkRequestedSource, checkWarmth, identity, newJobId, processUsage, scopeOf } from './warm-plan.js';
import { JobJournal, type JobRecord } from './job-journal.js';
import { endpointOf } from './node-stats.js';
import { type ReplicaStats, selectSource } from './select-source.js';

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
  readonly signal?: AbortSignal | undefined;
  readonly onProgress?: (progress: WarmProgress) => void;
  readonly progressIntervalMs?: number;
  /**
   * Warm one node of the target replica only (an instance warm): its id, `replica/address`.
   * Only the source keys that hash to it on the target's ring are dumped, only it is written.
   */
  readonly only?: { readonly node: string } | undefined;
  /** Copy even when the target already looks warm (see alreadyWarmRatio). */
  readonly force?: boolean | undefined;
  /**
   * The target counts as already warm, and nothing is copied, when it holds at least this
   * fraction of the items expected (default 0.95).
   */
  readonly alreadyWarmRatio?: number | undefined;
}

export interface WarmProgress {
  readonly elapsedMs: number;
  /** Items the source held when the warm started: the denominator of the ETA. */
  readonly expectedItems: number;
  readonly dumped: DumpCounters;
  readonly written: WriteCounters;
  readonly queueDepth: number;
}

export interface WarmSummary {
  readonly jobId: string;
  readonly source: string;
  readonly target: string;
  readonly durationMs: number;
  readonly sourceNodes: readonly ({ node: string } & DumpCounters)[];
  readonly targetNodes: readonly ({ node: string } & WriteCounters)[];
  readonly parked: readonly { chunk: string; reason: string }[];
  /** True when every listed item was written, already present, expired or gone: none failed, parked or unsupported. */
  readonly complete: boolean;
  /** The process's peak resident memory: what the warm's bounds are checked against. */
  readonly peakRssBytes: number;
  /** CPU time this process spent, user + system. */
  readonly cpuMs: number;
  /** Page faults this process took: on a VM, the hidden cost of touching fresh memory. */
  readonly minorPageFaults: number;
  // Optional: the S3+SQS transport builds summaries too, and leaves out what it does not do.
  readonly kind?: JobKind | undefined;
  /** An instance warm's node (`replica/address`); `target` is its replica. */
  readonly node?: string | undefined;
  /** This run went on with a job an earlier run had started (same job id and work dir). */
  readonly resumed?: boolean | undefined;
  /**
   * Why nothing was copied: the target already held what the warm would copy, or the job
   * had completed in an earlier run (its summary is the one returned).
   */
  readonly skipped?: 'already-warm' | 'already-complete' | undefined;
  /** The already-warm check, when it was made (not with force, nor on a resumed job). */
  readonly warmth?: WarmthCheck | undefined;
}

/**
 * A replica warm on one machine (the embedded default): chunks in a local directory, handed
 * over through a bounded in-process queue. Every source node's dumper and the populators run
 * at once; populators start on the first chunk, not after the dump. With `only`, an instance
 * warm: one node of the target, filled with its share of the source.
 *
 * Safe to run again: with the same job id and work directory a run resumes the job (each
 * source node's dump goes on from what the work directory holds, and a finished node is not
 * dumped again); a job that completed is reported as such, not redone. A new job whose
 * target already holds what it would copy copies nothing (unless `force`).
 */
export async function warmReplica(options: WarmReplicaOptions): Promise<WarmSummary> {
  const { topology, clock, connect = connectDirect, signal } = options;
  const started = clock.now();
  const scope = scopeOf(topology, options.target, options.only);
  checkRequestedSource(scope, options.source);
  checkAlreadyWarmRatio(options.alreadyWarmRatio ?? DEFAULT_ALREADY_WARM_RATIO);
  const jobId = options.jobId ?? newJobId(scope.kind, nodeDirectory(scope.label), started);
  const earlier = options.jobId === undefined ? undefined : await JobJournal.read(options.workDir, jobId);
  if (earlier) checkSameJob(earlier, scope, options.source);
  if (earlier?.status === 'completed') return alreadyComplete(earlier);

  // A resumed job keeps its source: its dumps so far are of that replica's nodes.
  const requested = earlier?.source ?? options.source;
  const { source } = await selectSource(topology, scope.replica.name, { connect, requested, signal });
  // A resumed job was judged when it started; judged now, its partial copy could pass for warm.
  const warmth = earlier || options.force ? undefined : await checkWarmth(topology, scope, source, options);
  if (warmth?.alreadyWarm) return alreadyWarm({ jobId, scope, source, warmth, durationMs: clock.now() - started });
  return runWarm(options, { scope, source, jobId, started, resumed: earlier !== undefined, warmth });
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
  readonly resumed: boolean;
  readonly warmth: WarmthCheck | undefined;
}

async function runWarm(options: WarmReplicaOptions, plan: JobPlan): Promise<WarmSummary> {
  const { clock, connect = connectDirect } = options;
  const { scope, source, jobId, started } = plan;
  const pool = new BufferPool();
  const writer = await openWriter(options, scope, pool);
  const journal = await JobJournal.open(options.workDir, {
    id: jobId,
    kind: scope.kind,
    source: source.replica.name,
    target: scope.label,
  });
  const store = new LocalDirStore(options.workDir);
  const queue = new MemoryQueue({ capacity: options.queueCapacity ?? 8 });
  const tally = new WriteTally();
  const dumpCounters = new Map(source.replica.nodes.map((n) => [n.id, newDumpCounters()]));

  // One failure stops the whole job: a warm with a hole in it must not look complete.
  const stop = new AbortController();
  const onOuterAbort = (): void => stop.abort(abortReason(options.signal as AbortSignal));
  // The signal may have fired while the source was chosen and the targets probed.
  if (options.signal?.aborted) onOuterAbort();
  else options.signal?.addEventListener('abort', onOuterAbort, { once: true });
  // The job's error is its first failure (or the interrupt): what fails after it, because it
  // was aborted, is only a consequence.
  const fail = (error: unknown): never => {
    if (!stop.signal.aborted) stop.abort(error);
    throw abortReason(stop.signal);
  };

  const dumped = (): DumpCounters => [...dumpCounters.values()].reduce(addInto, newDumpCounters());
  const progress = (): WarmProgress => ({
    elapsedMs: clock.now() - started,
    // The source's whole count even for an instance warm: the keys left out by its filter
    // are counted too (`filtered`), and the ETA subtracts them.
    expectedItems: source.items,
    dumped: dumped(),
    written: tally.total(),
    queueDepth: queue.depth,
  });
  const ticker = options.onProgress
    ? setInterval(() => options.onProgress?.(progress()), options.progressIntervalMs ?? 1_000)
    : undefined;

  try {
    const populating = runPopulator({
      queue,
      store,
      writer,
      clock,
      tally,
      concurrency: options.populateConcurrency ?? 4,
      deleteConsumed: !options.keepChunks,
      pool,
      signal: stop.signal,
      onChunkDone: (message) => journal.chunk('consumed', message.chunk.name),
      onChunkFailed: (message, error, parked) => {
        journal.chunk(parked ? 'parked' : 'retry', message.chunk.name, error.message);
        // The writer already retried with backoff: a target node still down fails the job
        // now, naming the node, rather than after every chunk has failed the same way.
        if (isCachewarmError(error, 'NODE_UNREACHABLE')) stop.abort(error);
      },
    }).catch(fail);

    const dumping = Promise.all(
      source.replica.nodes.map((node) =>
        dumpNode({
          node: endpointAndId(node),
          jobId,
          store,
          queue,
          target: scope.ring,
          clock,
          connect,
          chunkSizeBytes: options.chunkSizeBytes,
          fetchConcurrency: options.fetchConcurrency ?? 2,
          rateLimiter: options.maxOpsPerNode ? new TokenBucket({ ratePerSecond: options.maxOpsPerNode, clock }) : unlimited,
          keyFilter: scope.keyFilter,
          counters: dumpCounters.get(node.id) as DumpCounters,
          pool,
          onDataChunk: (message) => journal.chunk('produced', message.chunk.name),
          signal: stop.signal,
        }),
      ),
    )
      .catch(fail)
      .finally(() => queue.close());

    await Promise.all([dumping, populating]);
    if (stop.signal.aborted) throw abortReason(stop.signal);

    const summary: WarmSummary = {
      ...identity(plan),
      durationMs: clock.now() - started,
      sourceNodes: source.replica.nodes.map((n) => ({ node: n.id, ...(dumpCounters.get(n.id) as DumpCounters) })),
      targetNodes: scope.nodes.map((n) => ({ node: n.id, ...(tally.byNode.get(n.address) ?? newWriteCounters()) })),
      parked: queue.parked.map((p) => ({ chunk: p.message.chunk.name, reason: p.reason })),
      complete: queue.parked.length === 0 && tally.total().failed === 0 && dumped().unsupported === 0,
      ...processUsage(),
      resumed: plan.resumed,
      warmth: plan.warmth,
    };
    await journal.finish(summary.complete ? 'completed' : 'failed', summary);
    return summary;
  } catch (error) {
    await journal.finish('failed', progress(), error instanceof Error ? error.message : String(error));
    throw error;
  } finally {
    if (ticker) clearInterval(ticker);
    options.signal?.removeEventListener('abort', onOuterAbort);
    await writer.close();
    await journal.close();
  }
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

function endpointAndId(node: NodeSpec): { id: string; host: string; port: number; label: string } {
  return { id: node.id, ...endpointOf(node) };
}
