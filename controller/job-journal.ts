import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { CachewarmError } from '../shared/errors.js';

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

// A job id names a directory under the work directory: "../x" must not escape it.
const JOB_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/;

/** Throws INVALID_ARGUMENT unless `id` can name a job directory. */
export function checkJobId(id: string): void {
  if (!JOB_ID.test(id)) {
    throw new CachewarmError(
      'INVALID_ARGUMENT',
      `--job-id ${JSON.stringify(id)}: expected letters, digits, ".", "_" or "-" (at most 200, starting with a letter or digit)`,
      { jobId: id },
    );
  }
}

/**
 * A job's record in the work directory: `job.json` (rewritten whole, atomically, on each
 * change of state) and `chunks.log` (one line per chunk produced, consumed or parked,
 * appended), which together say what is done and what is still owed. Opening a job that
 * already has a record resumes it: the record keeps its creation time and the log grows.
 */
export class JobJournal {
  private closed = false;

  private constructor(
    readonly directory: string,
    readonly record: JobRecord,
    private readonly log: WriteStream,
  ) {}

  static async open(workDir: string, record: Omit<JobRecord, 'createdAt' | 'updatedAt' | 'status'>): Promise<JobJournal> {
    checkJobId(record.id);
    const directory = path.join(workDir, record.id);
    await mkdir(directory, { recursive: true });
    const earlier = await JobJournal.read(workDir, record.id);
    const now = new Date().toISOString();
    const journal = new JobJournal(
      directory,
      { ...record, createdAt: earlier?.createdAt ?? now, updatedAt: now, status: 'running' },
      createWriteStream(path.join(directory, 'chunks.log'), { flags: 'a' }),
    );
    await journal.save();
    return journal;
  }

  /** The record of job `id` in `workDir`; undefined when the job has none (it never started). */
  static async read(workDir: string, id: string): Promise<JobRecord | undefined> {
    checkJobId(id);
    const file = path.join(workDir, id, 'job.json');
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw error;
    }
    return parseJobRecord(text, file);
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

const STATUSES: readonly JobStatus[] = ['running', 'completed', 'failed'];

/** A job.json read back: checked, since resuming on a misread record could redo or skip work. */
function parseJobRecord(text: string, file: string): JobRecord {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new CachewarmError('JOB_FAILED', `${file} is not JSON: ${(error as Error).message}`, { file });
  }
  const record = value as Partial<Record<keyof JobRecord, unknown>> | null;
  const strings = ['id', 'source', 'target', 'createdAt', 'updatedAt'] as const;
  const valid =
    typeof record === 'object' &&
    record !== null &&
    strings.every((key) => typeof record[key] === 'string') &&
    (record.kind === 'replica' || record.kind === 'instance') &&
    STATUSES.includes(record.status as JobStatus);
  if (!valid) {
    throw new CachewarmError('JOB_FAILED', `${file} is not a job record (id, kind, source, target, status, createdAt expected)`, { file });
  }
  return record as JobRecord;
}
