import type { BufferPool } from '../buffer-pool.js';
import type { ChunkLoan, ChunkStore } from '../chunk-store.js';
import { StateChange } from '../state-change.js';

/**
 * Data chunks handed from dumpers to populators in the same process without the disk round
 * trip (the embedded default): `hold` keeps a chunk's bytes in memory, populators borrow them
 * with `lend`, and `delete` ends them once written. A held chunk is not durable, so a dumper
 * keeps the key chunk it came from until `settled` says every such data chunk was written
 * (deleted) or `persist`ed: a crash then redoes the reads, and loses nothing.
 *
 * A chunk that must outlive the hand-off (parked: kept for whoever looks into why) is
 * `persist`ed to the inner store. Everything else goes straight to the inner store.
 *
 * Memory: the chunks held are those sent and not yet written, bounded by the queues' capacity
 * plus the populators' concurrency, each about the chunk size.
 */
export class HandOffStore implements ChunkStore {
  private readonly held = new Map<string, Buffer>();
  /** Loans not given back, per buffer: a deleted chunk's buffer is reused only after the last. */
  private readonly loans = new Map<Buffer, number>();
  private readonly persisting = new Map<string, Promise<void>>();
  private readonly changed = new StateChange();

  constructor(
    readonly inner: ChunkStore,
    /** Where a held chunk's buffer goes back once it is deleted or persisted. */
    private readonly pool: BufferPool,
  ) {}

  /** Takes the chunk (its buffer is the store's from now on) in place of storing it. */
  hold(name: string, chunk: Buffer): void {
    this.held.set(name, chunk);
  }

  /** Resolves once none of the chunks is held: each was written and deleted, or persisted. */
  async settled(names: readonly string[], signal?: AbortSignal): Promise<void> {
    await this.changed.until(() => names.every((name) => !this.held.has(name)), signal);
  }

  lend(name: string): ChunkLoan | undefined {
    const bytes = this.held.get(name);
    if (!bytes) return undefined;
    this.loans.set(bytes, (this.loans.get(bytes) ?? 0) + 1);
    let given = false;
    return {
      bytes,
      giveBack: () => {
        if (given) return;
        given = true;
        const left = (this.loans.get(bytes) ?? 1) - 1;
        if (left > 0) this.loans.set(bytes, left);
        else {
          this.loans.delete(bytes);
          // Deleted while lent (a target that left the shared copy mid-write): reusable now.
          if (this.held.get(name) !== bytes) this.pool.release(bytes);
        }
      },
    };
  }

  /** Writes a held chunk to the inner store, where it stays. */
  async persist(name: string, signal?: AbortSignal): Promise<void> {
    const chunk = this.held.get(name);
    if (!chunk) return;
    let persisting = this.persisting.get(name);
    if (!persisting) {
      persisting = this.inner.put(name, chunk, signal).then(() => this.end(name, chunk));
      this.persisting.set(name, persisting);
      void persisting.finally(() => this.persisting.delete(name)).catch(() => undefined);
    }
    await persisting;
  }

  async put(name: string, body: Buffer, signal?: AbortSignal): Promise<void> {
    await this.inner.put(name, body, signal);
  }

  async get(name: string, options?: Parameters<ChunkStore['get']>[1]): Promise<Buffer> {
    const chunk = this.held.get(name);
    if (!chunk) return await this.inner.get(name, options);
    // Got, not lent: the caller owns what it gets.
    const copy = options?.into ? options.into.acquire(chunk.length).subarray(0, chunk.length) : Buffer.allocUnsafe(chunk.length);
    chunk.copy(copy);
    return copy;
  }

  async delete(name: string, signal?: AbortSignal): Promise<void> {
    // Its buffer is being written: released once it is, then the file goes.
    await this.persisting.get(name)?.catch(() => undefined);
    const chunk = this.held.get(name);
    if (chunk) this.end(name, chunk);
    else await this.inner.delete(name, signal);
  }

  async list(prefix: string, signal?: AbortSignal): Promise<string[]> {
    return await this.inner.list(prefix, signal);
  }

  describe(name: string): string {
    return this.held.has(name) ? `${this.inner.describe(name)} (in memory)` : this.inner.describe(name);
  }

  private end(name: string, chunk: Buffer): void {
    if (this.held.get(name) !== chunk) return;
    this.held.delete(name);
    if (!this.loans.has(chunk)) this.pool.release(chunk);
    this.changed.notify();
  }
}
