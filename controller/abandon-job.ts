/**
 * What a superseded job leaves behind is removed: the controller service replaces an
 * instance job when its node restarts again, and the old job's queues and chunks must not linger.
 */
import type { SidecarClient } from '../dumper/sidecar-client.js';
import { CachewarmError } from '../shared/errors.js';
import { type JobManifest, getJson, manifestName, supersededName } from '../shared/job-layout.js';
import { deleteJobQueuesOf } from '../shared/job-queues.js';
import { S3Store } from '../shared/store/s3-store.js';
import type { Topology } from '../shared/topology.js';
import { S3JobLock, lockName } from './s3-job-lock.js';
import { type DistributedWarmOptions, sidecarOf, stopDump } from './warm-distributed.js';

export interface AbandonJobOptions extends Pick<DistributedWarmOptions, 's3' | 'sqs' | 'bucket' | 'prefix' | 'sse' | 'sidecarToken' | 'clock' | 'signal'> {
  readonly jobId: string;
  /** The job that replaces it, named in the record left beside its manifest. */
  readonly supersededBy: string;
  /** The topology the job ran with: where its source nodes' sidecars are. */
  readonly topology: Topology;
  /** How long a cancelled dump may take to stop; after that the job's leftovers are left alone. Default 60 s. */
  readonly dumpStopWaitMs?: number | undefined;
}

export interface AbandonedJob {
  readonly queuesRemoved: number;
  readonly objectsRemoved: number;
  /** `superseded.json`, beside the manifest; undefined when the job had not written its manifest yet. */
  readonly record: string | undefined;
}

/**
 * Removes what a job superseded by a newer one left behind, once its run has stopped: its
 * queues, and its objects but the manifest, beside which `superseded.json` says which job
 * replaced it. First the job's lock is taken, so no run of it is still at work (the
 * superseded one let go of it on its way out), and every source node's dump of the job is
 * cancelled and waited for: a dump still running would store chunks after their removal and
 * hold its node's one crawl against the replacement's. The run stops the populators it
 * started before it returns; an external worker finds the queue gone and ends. Idempotent.
 */
export async function abandonJob(options: AbandonJobOptions): Promise<AbandonedJob> {
  const { jobId, clock, signal } = options;
  const store = new S3Store({ client: options.s3, bucket: options.bucket, prefix: options.prefix, sse: options.sse });
  const lock = await S3JobLock.acquire(store, jobId, { clock, signal });
  try {
    const manifest = await getJson<JobManifest>(store, manifestName(jobId), signal);
    if (manifest) {
      await Promise.all(sidecarsOfJob(options.topology, manifest, options.sidecarToken).map(([node, client]) => stopDump(client, node, { ...options, waitMs: options.dumpStopWaitMs })));
      // Written first, so that a removal cut short leaves the reason; kept as first written when done again.
      const record = { jobId, supersededBy: options.supersededBy, at: new Date(clock.now()).toISOString() };
      await store.putIf(supersededName(jobId), Buffer.from(`${JSON.stringify(record)}\n`), 'absent', signal);
    }
    const queuesRemoved = await deleteJobQueuesOf(options.sqs, jobId, signal);
    const kept = new Set([manifestName(jobId), supersededName(jobId), lockName(jobId)]);
    const objectsRemoved = await store.deleteAll(jobId, (name) => !kept.has(name), signal);
    return { queuesRemoved, objectsRemoved, record: manifest && store.describe(supersededName(jobId)) };
  } finally {
    await lock.release();
  }
}

/** The sidecar of every source node the job's manifest names, from the topology the job ran with. */
function sidecarsOfJob(topology: Topology, manifest: JobManifest, token: string): [string, SidecarClient][] {
  const replica = topology.replicas.get(manifest.source.replica);
  return manifest.source.nodes.map((id) => {
    const node = replica?.nodes.find((n) => n.id === id);
    if (!node) {
      throw new CachewarmError('TOPOLOGY_INVALID', `job ${manifest.jobId} dumps ${id}, which the topology does not have: its dump cannot be stopped`, {
        job: manifest.jobId,
        node: id,
      });
    }
    return [id, sidecarOf(node, token)];
  });
}

