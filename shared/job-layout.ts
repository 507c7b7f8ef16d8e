import type { ChunkStore } from './chunk-store.js';
import type { TargetRing } from './chunk-message.js';
import type { DumpCounters } from './counters.js';
import { CachewarmError } from './errors.js';

/**
 * Where a job's objects live in its store, and the two small records beside the chunks that
 * make a job's state readable by any process: the manifest (what the job is, written by the
 * controller) and each source node's end-of-dump marker (written by its dumper last).
 *
 *   <job>/manifest.json
 *   <job>/summary.json                      the job completed (kept when its chunks are removed)
 *   <job>/<node>/keys-000000.chunk          key chunks still to be read
 *   <job>/<node>/keys-done.json             the crawl finished: no key chunk will be added
 *   <job>/<node>/data-000000-<run>-000.chunk
 *   <job>/<node>/end.json                   the dump finished: every data chunk is announced
 *   <job>/processes.json                    which target and source processes the job works with
 *   <job>/populators/<worker>.json          a populator's write counters, on its exit
 *   <job>/refused/<node>/<chunk>@<target>.chunk   keys a target node refused (a key chunk),
 *                                           recorded by the populator; the controller retries them
 */
export const LAYOUT_VERSION = 1;

/** `zone-a/127.0.0.1:11211` → `zone-a_127.0.0.1_11211`: a path segment and an S3 key part. */
export function nodeDirectory(nodeId: string): string {
  return nodeId.replace(/[^A-Za-z0-9._-]+/g, '_');
}

export const nodePrefix = (jobId: string, nodeId: string): string => `${jobId}/${nodeDirectory(nodeId)}`;
export const manifestName = (jobId: string): string => `${jobId}/manifest.json`;
/** Written by the controller when the job completed: a rerun of the job id reports it. */
export const summaryName = (jobId: string): string => `${jobId}/summary.json`;
/** Left beside a superseded job's manifest: the job that replaced it, and when. */
export const supersededName = (jobId: string): string => `${jobId}/superseded.json`;
export const endMarkerName = (jobId: string, nodeId: string): string => `${nodePrefix(jobId, nodeId)}/end.json`;
export const crawlDoneName = (jobId: string, nodeId: string): string => `${nodePrefix(jobId, nodeId)}/keys-done.json`;
/**
 * Whether `name` is a data chunk of that source node (`<job>/<node>/data-….chunk`, as its
 * dumper names them): the only objects a populator of the job may be sent to read.
 */
export function isDataChunkOf(jobId: string, nodeId: string, name: string): boolean {
  const directory = `${nodePrefix(jobId, nodeId)}/`;
  return name.startsWith(directory) && /^data-[^/]+\.chunk$/.test(name.slice(directory.length));
}

/**
 * On a standing queue, which many jobs share, a job's completion cannot be read off the
 * queue's depth: a populator marks each data chunk it wrote whole (before the message's
 * delete), or parked, under the job, and the controller compares them with the chunks its
 * dumpers stored. `<job>/done/<node>/<chunk file>.json`, `<job>/parked/<node>/<chunk file>.json`.
 */
export const chunkDoneName = (jobId: string, sourceNode: string, chunkName: string): string =>
  `${jobId}/done/${nodeDirectory(sourceNode)}/${chunkName.slice(chunkName.lastIndexOf('/') + 1)}.json`;
export const chunkParkedName = (jobId: string, sourceNode: string, chunkName: string): string =>
  `${jobId}/parked/${nodeDirectory(sourceNode)}/${chunkName.slice(chunkName.lastIndexOf('/') + 1)}.json`;

/** The file names (`data-….chunk`) of a source node's chunks that populators marked done or parked. */
export async function markedChunks(store: ChunkStore, jobId: string, sourceNode: string, signal?: AbortSignal): Promise<Set<string>> {
  const marked = new Set<string>();
  for (const kind of ['done', 'parked']) {
    const prefix = `${jobId}/${kind}/${nodeDirectory(sourceNode)}/`;
    for (const name of await store.list(prefix, signal)) marked.add(name.slice(prefix.length, -'.json'.length));
  }
  return marked;
}

/**
 * Of a source node's stored data chunks, those the populators of some of `jobIds` (every
 * target a dump fills) have not marked done or parked: for dumpNode's unmarkedOf.
 */
export function unmarkedChunksOf(store: ChunkStore, jobIds: readonly string[], sourceNode: string) {
  return async (stored: readonly string[], signal?: AbortSignal): Promise<readonly string[]> => {
    const marks = await Promise.all(jobIds.map((jobId) => markedChunks(store, jobId, sourceNode, signal)));
    return stored.filter((name) => {
      const file = name.slice(name.lastIndexOf('/') + 1);
      return marks.some((marked) => !marked.has(file));
    });
  };
}

export const populatorReportName = (jobId: string, worker: string): string => `${jobId}/populators/${nodeDirectory(worker)}.json`;
/** Which process served a node: its pid and start time (`time - uptime`). */
export interface ProcessIdentity {
  readonly pid: number;
  readonly startedAtSeconds: number;
}

/** Per node address, the process the job's work goes into. */
export type ProcessIdentities = Record<string, ProcessIdentity>;

/**
 * Written by the controller (only): the processes the job works with. A rerun that finds
 * others knows what was lost; a populator writes into no other target process.
 */
export interface ProcessesRecord {
  readonly targets: ProcessIdentities;
  readonly sources: ProcessIdentities;
  /** Target node addresses whose share the next run copies again (they evicted items). */
  readonly refill?: readonly string[] | undefined;
}

export const processesName = (jobId: string): string => `${jobId}/processes.json`;
export const refusedPrefix = (jobId: string): string => `${jobId}/refused`;
/** One name per data chunk and target node: a redelivered chunk's refusals replace the record, not add to it. */
export function refusedName(jobId: string, sourceNode: string, chunkName: string, targetAddress: string): string {
  const chunk = chunkName.slice(chunkName.lastIndexOf('/') + 1).replace(/\.chunk$/, '');
  return `${refusedPrefix(jobId)}/${nodeDirectory(sourceNode)}/${chunk}@${nodeDirectory(targetAddress)}.chunk`;
}

export interface JobManifest {
  readonly version: typeof LAYOUT_VERSION;
  readonly jobId: string;
  readonly kind: 'replica' | 'instance';
  /** The source replica's name and the ids of the nodes that dump. */
  readonly source: { readonly replica: string; readonly nodes: readonly string[] };
  readonly target: TargetRing;
  /**
   * The dump whose chunks and messages the job takes when one dump fills several targets
   * (each target a job of its own); absent: the job's own dumps.
   */
  readonly dumpJobId?: string | undefined;
  /** false: the warm's populators take back nothing the source deleted (`--reconcile-deletes off`); absent: they do. */
  readonly reconcileDeletes?: false | undefined;
  /**
   * Another full replica (`--source auto` only): the delete reconcile asks it about the keys of
   * a source node that cannot be asked (restarted, or unreachable), and the controller copies
   * a restarted node's share from it (DeleteReconcilerOptions.fallback).
   */
  readonly fallback?: FallbackReplica | undefined;
  readonly createdAt: string;
}

/** A replica's ring with the processes its nodes ran when the job chose it: only those are asked. */
export interface FallbackReplica extends TargetRing {
  readonly processes: ProcessIdentities;
}

export interface EndMarker {
  readonly version: typeof LAYOUT_VERSION;
  readonly jobId: string;
  readonly source: string;
  /** Data chunks announced by the run that finished (earlier, interrupted runs not included). */
  readonly dataChunks: number;
  readonly counters: DumpCounters;
  readonly finishedAt: string;
}

export async function putJson(store: ChunkStore, name: string, value: unknown, signal?: AbortSignal): Promise<void> {
  await store.put(name, Buffer.from(`${JSON.stringify(value)}\n`), signal);
}

/** A JSON record from the store; undefined when there is none. */
export async function getJson<T>(store: ChunkStore, name: string, signal?: AbortSignal): Promise<T | undefined> {
  let body: Buffer;
  try {
    body = await store.get(name, { signal });
  } catch (error) {
    if (error instanceof CachewarmError && error.code === 'CHUNK_MISSING') return undefined;
    throw error;
  }
  try {
    return JSON.parse(body.toString('utf8')) as T;
  } catch (error) {
    throw new CachewarmError('CHUNK_CORRUPT', `${store.describe(name)} is not JSON: ${(error as Error).message}`, { chunk: name });
  }
}

export interface DumpProgress {
  /** Source nodes whose end marker is present, with it. */
  readonly finished: ReadonlyMap<string, EndMarker>;
  /** Source nodes still dumping (or not started). */
  readonly pending: readonly string[];
}

/** Which of a job's source nodes have finished their dump, from the end markers in the store. */
export async function dumpProgress(store: ChunkStore, manifest: JobManifest, signal?: AbortSignal): Promise<DumpProgress> {
  const finished = new Map<string, EndMarker>();
  const pending: string[] = [];
  for (const node of manifest.source.nodes) {
    const marker = await getJson<EndMarker>(store, endMarkerName(manifest.jobId, node), signal);
    if (marker) finished.set(node, marker);
    else pending.push(node);
  }
  return { finished, pending };
}
