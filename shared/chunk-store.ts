import type { BufferPool } from './buffer-pool.js';

/**
 * Where chunks live between the dumper and the populator: a local directory for the
 * embedded default, S3 at fleet scale. Names are `/`-separated paths relative to the store.
 */
export interface ChunkStore {
  /** Writes a chunk whole: a reader never sees part of one. Overwrites (a redone chunk is the same chunk). */
  put(name: string, body: Buffer, signal?: AbortSignal): Promise<void>;
  /**
   * Reads a chunk whole, into a buffer from `into` when given (the caller releases it).
   * Throws CachewarmError CHUNK_MISSING when there is no such chunk.
   */
  get(name: string, options?: { signal?: AbortSignal | undefined; into?: BufferPool | undefined }): Promise<Buffer>;
  /**
   * The bytes of a chunk this store holds in memory (see HandOffStore), lent without a copy:
   * the borrower reads them until it gives them back, and never releases them into a pool.
   */
  lend?(name: string): ChunkLoan | undefined;
  /** Removing a chunk that is not there is not an error. */
  delete(name: string, signal?: AbortSignal): Promise<void>;
  /** Names under a prefix, sorted. */
  list(prefix: string, signal?: AbortSignal): Promise<string[]>;
  /** Where a chunk is, for messages a person reads (a path, an s3:// URL). */
  describe(name: string): string;
}

export interface ChunkLoan {
  readonly bytes: Buffer;
  /** The borrower no longer reads the bytes. Once. */
  giveBack(): void;
}
