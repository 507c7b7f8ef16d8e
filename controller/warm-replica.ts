import { randomBytes } from 'node:crypto';
import { type Connect, connectDirect, dumpNode } from '../dumper/dump-node.js';
import { runPopulator } from '../populator/populate.js';
import { MetaNodeWriter } from '../populator/meta-node-writer.js';
import type { NodeWriter } from '../populator/node-writer.js';
import { BufferPool } from '../shared/buffer-pool.js';
import type { TargetRing } from '../shared/chunk-message.js';
import type { Clock } from '../shared/clock.js';
import { type DumpCounters, type WriteCounters, WriteTally, addInto, newDumpCounters, newWriteCounters } from '../shared/counters.js';
import { abortReason, isCachewarmError } from '../shared/errors.js';
import { peakRssBytes } from '../shared/peak-memory.js';
import { MemoryQueue } from '../shared/queue/memory-queue.js';
import { LocalDirStore } from '../shared/store/local-dir-store.js';
import { TokenBucket, unlimited } from '../shared/token-bucket.js';
import { type NodeSpec, type Topology, replicaOf } from '../shared/topology.js';
import { JobJournal } from './job-journal.js';
import { endpointOf } from './node-stats.js';
import { selectSource } from './select-source.js';

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
}

export function targetRingOf(topology: Topology, replica: string, writeOnly?: readonly string[]): TargetRing {
  return {
    replica,
    hashing: topology.hashing,
    nodes: replicaOf(topology, replica).nodes.map((n) => ({ address: n.address, ringName: n.ringName })),
    writeOnly,
  };
}

export function newJobId(kind: string, target: string, now: number): string {
  const stamp = new Date(now).toISOString().replace(/[-:]/g, '').replace(/\..*/, '');
  return `${kind}-${target}-${stamp}-${randomBytes(3).toString('hex')}`;
}

/**
 * A replica warm on one machine (the embedded default): chunks in a local directory, handed
 * over through a bounded in-process queue. Every source node's dumper and the populators run
 * at once; populators start on the first chunk, not after the dump.
 */
export async function warmReplica(options: WarmReplicaOptions): Promise<WarmSummary> {
  const { topology, target, clock, connect = connectDirect } = options;
  const started = clock.now();
  const targetReplica = replicaOf(topology, target, '--target');
  const { source } = await selectSource(topology, target, { connect, requested: options.source, signal: options.signal });
  const labels = new Map(targetReplica.nodes.map((n) => [n.address, n.id]));
  const pool = new BufferPool();
  const writer: NodeWriter =
    options.writer ?? new MetaNodeWriter({ connect, clock, pool, labelOf: (address) => labels.get(address) ?? address });
  try {
    // Fail fast, naming the node, when a target node does not answer before any work starts.
    await Promise.all(targetReplica.nodes.map((node) => writer.probe(node.address, options.signal)));
  } catch (error) {
    await writer.close();
    throw error;
  }

  const jobId = options.jobId ?? newJobId('replica', target, started);
  const journal = await JobJournal.open(options.workDir, {
    id: jobId,
    kind: 'replica',
    source: source.replica.name,
    target,
  });
  const store = new LocalDirStore(options.workDir);
  const queue = new MemoryQueue({ capacity: options.queueCapacity ?? 8 });
  const ring = targetRingOf(topology, target);
  const tally = new WriteTally();
  const dumpCounters = new Map(source.replica.nodes.map((n) => [n.id, newDumpCounters()]));

  // One failure stops the whole job: a warm with a hole in it must not look complete.
  const stop = new AbortController();
  const onOuterAbort = (): void => stop.abort(abortReason(options.signal as AbortSignal));
  options.signal?.addEventListener('abort', onOuterAbort, { once: true });
  // The job's error is its first failure (or the interrupt): what fails after it, because it
  // was aborted, is only a consequence.
  const fail = (error: unknown): never => {
    if (!stop.signal.aborted) stop.abort(error);
    throw abortReason(stop.signal);
  };

  const dumped = (): DumpCounters => [...dumpCounters.values()].reduce(addInto, newDumpCounters());
  const progress = (): WarmProgress => ({
    elapsedMs: clock.now() - started,
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
          target: ring,
          clock,
          connect,
          chunkSizeBytes: options.chunkSizeBytes,
          fetchConcurrency: options.fetchConcurrency ?? 2,
          rateLimiter: options.maxOpsPerNode ? new TokenBucket({ ratePerSecond: options.maxOpsPerNode, clock }) : unlimited,
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
      jobId,
      source: source.replica.name,
      target,
      durationMs: clock.now() - started,
      sourceNodes: source.replica.nodes.map((n) => ({ node: n.id, ...(dumpCounters.get(n.id) as DumpCounters) })),
      targetNodes: targetReplica.nodes.map((n) => ({ node: n.id, ...(tally.byNode.get(n.address) ?? newWriteCounters()) })),
      parked: queue.parked.map((p) => ({ chunk: p.message.chunk.name, reason: p.reason })),
      complete: queue.parked.length === 0 && tally.total().failed === 0 && dumped().unsupported === 0,
      peakRssBytes: peakRssBytes(),
      cpuMs: cpuMs(process.cpuUsage()),
      minorPageFaults: process.resourceUsage().minorPageFault,
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

const cpuMs = (usage: NodeJS.CpuUsage): number => (usage.user + usage.system) / 1000;

function endpointAndId(node: NodeSpec): { id: string; host: string; port: number; label: string } {
  return { id: node.id, ...endpointOf(node) };
}

