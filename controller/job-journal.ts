import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';

export type JobStatus = 'running' | 'completed' | 'failed';

export interface JobRecord {
  readonly id: string;
  readonly kind: 'replica' | 'instance';
  readonly source: string;
  readonly target: string;
  readonly createdAt: string;
  status: JobStatus;
  updatedAt: string;
  error?: string | undefined;
  summary?: unknown;
}

/**
 * A job's record in the work directory: `job.json` (rewritten whole, atomically, on each
 * change of state) and `chunks.log` (one line per chunk produced, consumed or parked,
 * appended), which together say what is done and what is still owed.
 */
export class JobJournal {
  private closed = false;

  private constructor(
    readonly directory: string,
    readonly record: JobRecord,
    private readonly log: WriteStream,
  ) {}

  static async open(workDir: string, record: Omit<JobRecord, 'createdAt' | 'updatedAt' | 'status'>): Promise<JobJournal> {
    const directory = path.join(workDir, record.id);
    await mkdir(directory, { recursive: true });
    const now = new Date().toISOString();
    const journal = new JobJournal(
      directory,
      { ...record, createdAt: now, updatedAt: now, status: 'running' },
      createWriteStream(path.join(directory, 'chunks.log'), { flags: 'a' }),
    );
    await journal.save();
    return journal;
  }

  chunk(event: 'produced' | 'consumed' | 'retry' | 'parked', name: string, detail = ''): void {
    if (!this.closed) this.log.write(`${new Date().toISOString()} ${event} ${name}${detail ? ` ${detail}` : ''}\n`);
  }

  async finish(status: JobStatus, summary: unknown, error?: string): Promise<void> {
    Object.assign(this.record, { status, summary, error });
    await this.save();
    await this.close();
  }

  /** Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await new Promise<void>((resolve) => this.log.end(resolve));
  }

  private async save(): Promise<void> {
    this.record.updatedAt = new Date().toISOString();
    const file = path.join(this.directory, 'job.json');
    await writeFile(`${file}.partial`, `${JSON.stringify(this.record, null, 2)}\n`);
    await rename(`${file}.partial`, file);
  }
}
