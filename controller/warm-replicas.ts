import { rm } from 'node:fs/promises';
import path from 'node:path';
import { startReadPace } from '../dumper/read-pace.js';
import { BufferPool } from '../shared/buffer-pool.js';
import { CachewarmError } from '../shared/errors.js';
import { connectDirect } from '../shared/memcached/connect.js';
import { LocalDirStore } from '../shared/store/local-dir-store.js';
import { checkJobId, JobJournal } from './job-journal.js';
import { endpointOf } from './node-stats.js';
import { selectSource } from './select-source.js';
import { SharedCopy } from './shared-copy.js';
import { listedSampleKeys, newJobId } from './warm-plan.js';
import { DEFAULT_VERIFY_SAMPLE } from './warm-summary.js';
import { replicaOf } from '../shared/topology.js';
import { type WarmProgress, type WarmReplicaOptions, type WarmSummary, warmReplica } from './warm-replica.js';

export interface WarmReplicasOptions extends Omit<WarmReplicaOptions, 'target' | 'only' | 'shareOf' | 'keyChunks' | 'sharedCopy' | 'onProgress'> {
  /** Two or more replicas to fill from one dump of the source. */
  readonly targets: readonly string[];
  /**
   * Names the group; each target's job is `<jobId>.<target>`, and the same id and work
   * directory resume every one of them. @default generated
   */
  readonly jobId?: string | undefined;
  readonly onProgress?: ((target: string, progress: WarmProgress) => void) | undefined;
}

/** How one target's warm ended: its summary, or the error that stopped it. */
export type TargetOutcome =
  | { readonly target: string; readonly summary: WarmSummary }
  | { readonly target: string; readonly jobId: string; readonly error: { readonly code: string; readonly message: string } };

export interface WarmReplicasSummary {
  readonly jobId: string;
  readonly source: string;
  readonly targets: readonly string[];
  /** Every target completed (or had nothing to do). */
  readonly complete: boolean;
  /** The targets that completed. */
  readonly completed: readonly string[];
  readonly outcomes: readonly TargetOutcome[];
  readonly durationMs: number;
}

/**
 * Dump once, fill many: warms several replicas from one dump of the source. The source is
 * chosen once (never one of the targets), crawled and read once; each target is a job of its
 * own (`<group>.<target>`) with its ring, counters, repairs, completion and verification, as
 * `warmReplica` runs it. One target failing does not stop the others: the summary says which
 * completed. What a target needs beyond the shared copy (a repair of a node that restarted,
 * a retry of refused items) it reads on its own.
 */
export async function warmReplicas(options: WarmReplicasOptions): Promise<WarmReplicasSummary> {
  const { topology, clock, connect = connectDirect, targets, signal } = options;
  checkTargets(targets);
  const started = clock.now();
  const groupId = options.jobId ?? newJobId('replicas', targets.join('-'), started);
  const jobIds = groupJobIds(groupId, targets);
  // A resumed group keeps the source its jobs copy from.
  const earlier = (await Promise.all([...jobIds.values()].map((id) => JobJournal.read(options.workDir, id)))).find((r) => r !== undefined);
  const requested = earlier?.source ?? options.source;
  const { source } = await selectSource(topology, targets, { connect, requested, signal });

  const shared = new SharedCopy({
    source: source.replica,
    jobId: `${groupId}/copy`,
    targets: targets.length,
    store: new LocalDirStore(options.workDir),
    chunkSizeBytes: options.chunkSizeBytes,
    fetchConcurrency: options.fetchConcurrency ?? 2,
    deleteConsumed: !options.keepChunks,
    readPace: (node, paceSignal) =>
      startReadPace(endpointOf(node), { protectSource: options.protectSource, maxItemsPerSecond: options.maxOpsPerNode, clock, signal: paceSignal }),
    clock,
    connect,
    pool: new BufferPool(),
    // Enough for the largest target's read-back: every target draws from the one sample.
    sampleKeys: Math.max(...targets.map((t) => listedSampleKeys(options.verifySamplePerNode ?? DEFAULT_VERIFY_SAMPLE, replicaOf(topology, t).nodes.length))),
  });
  const outcomes = await eachTarget(targets, jobIds, signal, (target, jobId) =>
    warmReplica({
      ...options,
      target,
      source: source.replica.name,
      jobId,
      sharedCopy: shared,
      onProgress: options.onProgress && ((p) => options.onProgress?.(target, p)),
    }).finally(() => shared.leave(target)),
  );
  const summary = groupSummary(groupId, source.replica.name, outcomes, clock.now() - started);
  // Kept while any target may resume: its rerun reads what the shared dump left.
  if (summary.complete && !options.keepChunks) await rm(path.join(options.workDir, groupId), { recursive: true, force: true });
  return summary;
}

/** The target names of a group as given, checked: two or more, each once. */
export function checkTargets(targets: readonly string[]): void {
  if (targets.length < 2 || new Set(targets).size !== targets.length) {
    throw new CachewarmError('INVALID_ARGUMENT', `--target ${targets.join(',')}: name two or more different replicas (or one, for a single warm)`, {
      targets: targets.join(','),
    });
  }
}

/** Each target's job id in a group: `<group>.<target>`. */
export function groupJobIds(groupId: string, targets: readonly string[]): Map<string, string> {
  const jobIds = new Map(targets.map((t) => [t, `${groupId}.${t}`]));
  for (const id of jobIds.values()) checkJobId(id);
  return jobIds;
}

/**
 * Runs every target's warm at once and waits for all: a target's error is its outcome, not the
 * group's; only an interrupt, which stops every target alike, is thrown.
 */
export async function eachTarget(
  targets: readonly string[],
  jobIds: ReadonlyMap<string, string>,
  signal: AbortSignal | undefined,
  warm: (target: string, jobId: string) => Promise<WarmSummary>,
): Promise<TargetOutcome[]> {
  const settled = await Promise.allSettled(
    targets.map(async (target): Promise<TargetOutcome> => {
      const jobId = jobIds.get(target) as string;
      try {
        return { target, summary: await warm(target, jobId) };
      } catch (error) {
        if (signal?.aborted) throw error;
        const code = (error as { code?: unknown }).code;
        return { target, jobId, error: { code: typeof code === 'string' ? code : 'UNEXPECTED', message: (error as Error).message } };
      }
    }),
  );
  const interrupted = settled.find((s) => s.status === 'rejected');
  if (interrupted) throw interrupted.reason;
  return settled.map((s) => (s as PromiseFulfilledResult<TargetOutcome>).value);
}

export function groupSummary(jobId: string, source: string, outcomes: readonly TargetOutcome[], durationMs: number): WarmReplicasSummary {
  const completed = outcomes.filter((o) => 'summary' in o && o.summary.complete).map((o) => o.target);
  return { jobId, source, targets: outcomes.map((o) => o.target), complete: completed.length === outcomes.length, completed, outcomes, durationMs };
}
