import { getJson, isDataChunkOf, markedChunks, nodePrefix } from '../shared/job-layout.js';
import type { ChunkStore } from '../shared/chunk-store.js';
import type { Clock } from '../shared/clock.js';
import type { ParkedEntry } from '../shared/job-queues.js';

const DEAD_LETTER_READ_INTERVAL_MS = 30_000;

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
export interface SettledChunksOptions {
  readonly store: ChunkStore;
  /** The job whose marks count (the populators write them under it). */
  readonly jobId: string;
  /** The dump whose chunks the job takes, when it shares one with other targets; absent: the job's own. */
  readonly dumpJobId?: string | undefined;
  readonly sourceNodes: readonly string[];
  /**
   * What the queue's dead-letter queue holds: SQS moves a message there by itself once its
   * holders crashed `maxReceiveCount` times, and no populator marks it then. Read at most once
   * per DEAD_LETTER_READ_INTERVAL_MS while chunks are unmarked (the read hides the messages
   * from other readers for a while).
   */
  readonly readDeadLetters: (signal?: AbortSignal) => Promise<readonly ParkedEntry[]>;
  readonly clock: Clock;
}

export class SettledChunks {
  private readonly settled = new Set<string>();
  /** The job's chunks found on the dead-letter queue without a mark, with their reasons. */
  private readonly deadLettered = new Map<string, string>();
  private deadLetterReadAtMs: number | undefined;

  private readonly store: ChunkStore;
  private readonly jobId: string;
  private readonly dumpJobId: string;
  private readonly sourceNodes: readonly string[];
  private readonly readDeadLetters: SettledChunksOptions['readDeadLetters'];
  private readonly clock: Clock;

  constructor(options: SettledChunksOptions) {
    ({ store: this.store, jobId: this.jobId, sourceNodes: this.sourceNodes, readDeadLetters: this.readDeadLetters, clock: this.clock } = options);
    this.dumpJobId = options.dumpJobId ?? options.jobId;
  }

  /** Whether every data chunk of every source node is marked done or parked. */
  async all(signal?: AbortSignal): Promise<boolean> {
    for (const node of this.sourceNodes) {
      if (this.settled.has(node)) continue;
      if (!(await this.nodeSettled(node, signal))) {
        const now = this.clock.now();
        if (this.deadLetterReadAtMs !== undefined && now - this.deadLetterReadAtMs < DEAD_LETTER_READ_INTERVAL_MS) return false;
        this.deadLetterReadAtMs = now;
        for (const entry of await this.readDeadLetters(signal)) {
          if (entry.chunk && entry.jobId === this.jobId) this.deadLettered.set(entry.chunk, entry.reason);
        }
        if (!(await this.nodeSettled(node, signal))) return false;
      }
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
    const marked = new Set(parked.map((p) => p.chunk));
    for (const [chunk, reason] of this.deadLettered) if (!marked.has(chunk)) parked.push({ chunk, reason });
    return parked;
  }

  private async nodeSettled(node: string, signal?: AbortSignal): Promise<boolean> {
    const directory = `${nodePrefix(this.dumpJobId, node)}/`;
    const chunks = (await this.store.list(directory, signal)).filter((name) => isDataChunkOf(this.dumpJobId, node, name));
    if (chunks.length === 0) return true;
    const marked = await markedChunks(this.store, this.jobId, node, signal);
    return chunks.every((name) => marked.has(name.slice(directory.length)) || this.deadLettered.has(name));
  }
}
