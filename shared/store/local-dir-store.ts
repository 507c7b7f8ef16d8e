import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { BufferPool } from '../buffer-pool.js';
import type { ChunkStore } from '../chunk-store.js';
import { CachewarmError } from '../errors.js';

/** Chunks as files under a directory: the embedded default's store. */
export class LocalDirStore implements ChunkStore {
  private readonly directories = new Set<string>();

  constructor(readonly root: string) {}

  describe(name: string): string {
    return this.pathOf(name);
  }

  async put(name: string, body: Buffer, signal?: AbortSignal): Promise<void> {
    const file = this.pathOf(name);
    const directory = path.dirname(file);
    // Write then rename: a crash mid-write leaves a stray temp file, never a short chunk.
    const temp = `${file}.${randomBytes(4).toString('hex')}.partial`;
    // A recursive mkdir stats every level of the path: once per directory is enough, unless
    // the directory has gone since (then it is made again).
    if (!this.directories.has(directory)) await this.makeDirectory(directory);
    try {
      await writeFile(temp, body, { signal });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      await this.makeDirectory(directory);
      await writeFile(temp, body, { signal });
    }
    await rename(temp, file);
  }

  async get(name: string, options: { signal?: AbortSignal | undefined; into?: BufferPool | undefined } = {}): Promise<Buffer> {
    try {
      options.signal?.throwIfAborted();
      const file = await open(this.pathOf(name), 'r');
      try {
        const { size } = await file.stat();
        const buf = options.into ? options.into.acquire(size) : Buffer.allocUnsafe(size);
        let read = 0;
        while (read < size) {
          const { bytesRead } = await file.read(buf, read, size - read, read);
          if (bytesRead === 0) break;
          read += bytesRead;
        }
        return buf.subarray(0, read);
      } finally {
        await file.close();
      }
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new CachewarmError('CHUNK_MISSING', `chunk ${name} is not in ${this.root}`, { chunk: name }, { cause: error });
      }
      throw error;
    }
  }

  async delete(name: string): Promise<void> {
    await rm(this.pathOf(name), { force: true });
  }

  async list(prefix: string): Promise<string[]> {
    const dir = prefix.replace(/\/+$/, '');
    const base = this.pathOf(dir);
    try {
      const entries = await readdir(base, { recursive: true, withFileTypes: true });
      return entries
        .filter((entry) => entry.isFile() && !entry.name.endsWith('.partial'))
        .map((entry) => {
          const relative = path.relative(base, path.join(entry.parentPath ?? entry.path, entry.name));
          return path.posix.join(dir, ...relative.split(path.sep));
        })
        .sort();
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw error;
    }
  }

  private async makeDirectory(directory: string): Promise<void> {
    await mkdir(directory, { recursive: true });
    this.directories.add(directory);
  }

  private pathOf(name: string): string {
    const normalized = path.posix.normalize(name);
    if (normalized.startsWith('..') || path.posix.isAbsolute(normalized)) {
      throw new CachewarmError('INVALID_ARGUMENT', `chunk name ${JSON.stringify(name)} points outside the store`, { chunk: name });
    }
    return path.join(this.root, ...normalized.split('/'));
  }
}
