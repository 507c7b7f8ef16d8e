import { type Connect, connectDirect } from '../shared/memcached/connect.js';
import type { ChunkDestination } from '../dumper/sidecar-api.js';
import { type JobManifest, getJson, manifestName, summaryName } from '../shared/job-layout.js';
import { createJobQueues, readStandingQueue } from '../shared/job-queues.js';
import { S3Store } from '../shared/store/s3-store.js';
import type { WarmProgress, WarmSummary } from './warm-summary.js';
import { selectSource } from './select-source.js';
import { checkWarmth, newJobId, scopeOf } from './warm-plan.js';
import { type DistributedWarmOptions, type SharedDump, dumpSampleKeys, warmDistributed } from './warm-distributed.js';
import { DEFAULT_VERIFY_SAMPLE } from './warm-summary.js';
import { type WarmReplicasSummary, checkTargets, eachTarget, groupJobIds, groupSummary } from './warm-replicas.js';

export interface DistributedWarmManyOptions extends Omit<DistributedWarmOptions, 'target' | 'onlyNode' | 'sharedDump' | 'onProgress'> {
  /** Two or more replicas to fill from one dump of the source. */
  readonly targets: readonly string[];
  readonly onProgress?: ((target: string, progress: WarmProgress) => void) | undefined;
}

/**
 * Dump once, fill many, at fleet scale: each target is an S3+SQS job of its own
 * (`<group>.<target>`: its manifest, queues, populators, counters, repairs and read-back),
 * and the sidecars are asked for one dump (job `<group>`) that announces every chunk on every
 * target's queue, each message naming that target's ring. Targets that already hold the
 * source, or whose job completed, take no part; with one left, it dumps on its own.
 */
export async function warmDistributedMany(options: DistributedWarmManyOptions): Promise<WarmReplicasSummary> {
  const { topology, clock, targets, signal } = options;
  const connect: Connect = options.connect ?? connectDirect;
  checkTargets(targets);
  const started = clock.now();
  const groupId = options.jobId ?? newJobId('replicas', targets.join('-'), started);
  const jobIds = groupJobIds(groupId, targets);
  const store = new S3Store({ client: options.s3, bucket: options.bucket, prefix: options.prefix, sse: options.sse });
  const records = await Promise.all(
    targets.map(async (target) => {
      const jobId = jobIds.get(target) as string;
      const [finished, manifest] = await Promise.all([getJson<WarmSummary>(store, summaryName(jobId), signal), getJson<JobManifest>(store, manifestName(jobId), signal)]);
      return { target, finished: finished !== undefined, manifest };
    }),
  );
  // A resumed group keeps the source its jobs copy from.
  const requested = records.find((r) => r.manifest)?.manifest?.source.replica ?? options.source;
  const { source } = await selectSource(topology, targets, { connect, requested, signal });

  // Who takes the shared dump is settled before it starts: every queue it announces on is in its request.
  const joining: string[] = [];
  for (const { target, finished, manifest } of records) {
    if (finished) continue;
    if (manifest || options.force) joining.push(target);
    else if (!(await checkWarmth(topology, scopeOf(topology, target, undefined), source, { connect, alreadyWarmRatio: options.alreadyWarmRatio, signal })).alreadyWarm) joining.push(target);
  }
  const dump = joining.length >= 2 ? await sharedDump(options, { groupId, jobIds, joining }) : undefined;

  const outcomes = await eachTarget(targets, jobIds, signal, (target, jobId) =>
    warmDistributed({
      ...options,
      target,
      source: source.replica.name,
      jobId,
      ...(dump && joining.includes(target) && { sharedDump: dump, force: true }),
      onProgress: options.onProgress && ((p) => options.onProgress?.(target, p)),
    }),
  );
  const summary = groupSummary(groupId, source.replica.name, outcomes, clock.now() - started);
  // The shared dump's chunks outlive a target's job (the others may still need them): removed with the last.
  if (dump && summary.complete && !options.keepChunks) await store.deleteAll(dump.jobId, () => true, signal);
  return summary;
}

/** The one dump request every joining target's job sends: its queue first, the others' in `alsoTo`. */
async function sharedDump(
  options: DistributedWarmManyOptions,
  group: { readonly groupId: string; readonly jobIds: ReadonlyMap<string, string>; readonly joining: readonly string[] },
): Promise<SharedDump> {
  const { sqs, bucket, prefix, topology, signal } = options;
  const destinations: ChunkDestination[] = [];
  // On a standing queue every target's messages go to it, each naming its target's job.
  const standing = options.queueUrl === undefined ? undefined : await readStandingQueue(sqs, options.queueUrl, signal);
  for (const target of group.joining) {
    const jobId = group.jobIds.get(target) as string;
    const ring = scopeOf(topology, target, undefined).ring;
    if (standing) {
      destinations.push({ queueUrl: standing.queueUrl, target: ring, jobId });
      continue;
    }
    // Made here, before any job starts, as each job would make them (it finds them made).
    const queues = await createJobQueues(sqs, { jobId, bucket, prefix }, signal);
    destinations.push({ queueUrl: queues.queueUrl, target: ring });
  }
  const [{ jobId: targetJobId, ...first }, ...alsoTo] = destinations as [ChunkDestination, ...ChunkDestination[]];
  // Enough keys for the largest target's read-back: the request is one for every target.
  const samplePerNode = options.verifySamplePerNode ?? DEFAULT_VERIFY_SAMPLE;
  const sampleKeys = Math.max(...destinations.map((d) => dumpSampleKeys(samplePerNode, d.target.nodes.length)));
  return { jobId: group.groupId, ...first, alsoTo, sampleKeys, ...(targetJobId !== undefined && { targetJobId }) };
}
