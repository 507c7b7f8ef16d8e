import { getJson, isDataChunkOf, nodeDirectory, nodePrefix } from '../shared/job-layout.js';
import type { ChunkStore } from '../shared/chunk-store.js';

/** What a populator writes when it sets a chunk aside (see chunkParkedName). */
interface ParkedMark {
  readonly chunk?: unknown;
  readonly reason?: unknown;
}

/**
 * A job's completion on a standing queue, whose depth counts every job's messages: each data
 * chunk its dumpers stored must be marked done (written whole) or parked by a populator
 * (chunkDoneName, chunkParkedName). Asked once the dumps have finished, when no new chunk
 * appears; a node found settled is not listed again.
 *
 * Cost: a listing of each unsettled node's directory and of its marks per look, 1,000 names
 * per request: about 2 × chunks ÷ 1,000 LIST requests per look while the last chunks drain.
 */
export class SettledChunks {
  private readonly settled = new Set<string>();

  constructor(
    private readonly store: ChunkStore,
    private readonly jobId: string,
    private readonly sourceNodes: readonly string[],
  ) {}

  /** Whether every data chunk of every source node is marked done or parked. */
  async all(signal?: AbortSignal): Promise<boolean> {
    for (const node of this.sourceNodes) {
      if (this.settled.has(node)) continue;
      if (!(await this.nodeSettled(node, signal))) return false;
      this.settled.add(node);
    }
    return true;
  }

  /** The chunks parked, with the populators' reasons. */
  async parked(signal?: AbortSignal): Promise<{ chunk: string; reason: string }[]> {
    const parked: { chunk: string; reason: string }[] = [];
    for (const name of await this.store.list(`${this.jobId}/parked/`, signal)) {
      const mark = await getJson<ParkedMark>(this.store, name, signal);
      parked.push({
        chunk: typeof mark?.chunk === 'string' ? mark.chunk : name,
        reason: typeof mark?.reason === 'string' ? mark.reason : 'parked (no reason recorded)',
      });
    }
    return parked;
  }

  private async nodeSettled(node: string, signal?: AbortSignal): Promise<boolean> {
    const directory = `${nodePrefix(this.jobId, node)}/`;
    const chunks = (await this.store.list(directory, signal)).filter((name) => isDataChunkOf(this.jobId, node, name));
    if (chunks.length === 0) return true;
    const marked = new Set<string>();
    for (const kind of ['done', 'parked']) {
      const prefix = `${this.jobId}/${kind}/${nodeDirectory(node)}/`;
      for (const name of await this.store.list(prefix, signal)) marked.add(name.slice(prefix.length, -'.json'.length));
    }
    return chunks.every((name) => marked.has(name.slice(directory.length)));
  }
}
