/**
 * Items a target refused, kept so that a rerun of the job retries exactly them. They are
 * written as key chunks (key, absolute expiry, size) in a later pass's directory, with that
 * pass's crawl marked done: the rerun's dumper reads those keys from the source again, as it
 * reads any key chunk, and never lists the node. Disk, not memory, holds them: at most one
 * key chunk per source node is being filled at a time.
 */
import { ChunkBuilder, chunkHeader } from '../shared/chunk-format.js';
import type { ChunkStore } from '../shared/chunk-store.js';
import { LAYOUT_VERSION, crawlDoneName, nodePrefix, putJson } from '../shared/job-layout.js';
import type { WritableItem } from '../shared/memcached/meta-add.js';

const KEYS_PER_CHUNK = 20_000;

export class RefusedLog {
  private readonly builders = new Map<string, { builder: ChunkBuilder; seq: number }>();
  private readonly writes: Promise<void>[] = [];
  private count = 0;

  /** @param passJobId the dump job id of the pass that will retry them (`<job>/<pass>`). */
  constructor(
    private readonly store: ChunkStore,
    private readonly passJobId: string,
  ) {}

  get items(): number {
    return this.count;
  }

  add(sourceNode: string, item: WritableItem): void {
    const entry = this.entryOf(sourceNode);
    entry.builder.addKey(item.key, item.exptime, item.value.length);
    this.count++;
    if (entry.builder.itemCount >= KEYS_PER_CHUNK) this.flush(sourceNode);
  }

  /**
   * Stores what is left and marks every node's crawl of the retry pass done (nodes that
   * refused nothing too: their dumpers then read nothing rather than listing the node).
   */
  async close(sourceNodes: readonly string[], signal?: AbortSignal): Promise<void> {
    for (const node of this.builders.keys()) this.flush(node);
    await Promise.all(this.writes);
    for (const node of sourceNodes) {
      const keyChunks = this.builders.get(node)?.seq ?? 0;
      await putJson(this.store, crawlDoneName(this.passJobId, node), { version: LAYOUT_VERSION, keyChunks }, signal);
    }
  }

  /** A whole key chunk of one source node's keys (as populators record refusals), kept as it is. */
  addKeyChunk(sourceNode: string, chunk: Buffer): void {
    this.flush(sourceNode);
    this.count += chunkHeader(chunk).items;
    this.write(sourceNode, this.entryOf(sourceNode), chunk);
  }

  private entryOf(sourceNode: string): { builder: ChunkBuilder; seq: number } {
    let entry = this.builders.get(sourceNode);
    if (!entry) {
      entry = { builder: new ChunkBuilder('keys', KEYS_PER_CHUNK * 64), seq: 0 };
      this.builders.set(sourceNode, entry);
    }
    return entry;
  }

  private flush(sourceNode: string): void {
    const entry = this.builders.get(sourceNode);
    if (!entry || entry.builder.itemCount === 0) return;
    this.write(sourceNode, entry, entry.builder.seal());
  }

  private write(sourceNode: string, entry: { seq: number }, chunk: Buffer): void {
    const name = `${nodePrefix(this.passJobId, sourceNode)}/keys-${String(entry.seq++).padStart(6, '0')}.chunk`;
    const write = this.store.put(name, chunk);
    // Awaited by close(), which reports a failure; until then it must not count as unhandled.
    write.catch(() => undefined);
    this.writes.push(write);
  }
}
