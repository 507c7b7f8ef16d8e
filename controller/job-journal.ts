import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { CachewarmError } from '../shared/errors.js';
import type { NodeIdentities } from './node-watch.js';

export type JobStatus = 'running' | 'completed' | 'failed';

/**
 * One pass of a job over its source: the first copy, or what a later one redoes. A pass
 * dumps under `<job>/<pass id>/`, so an unfinished one resumes from its own chunks.
 */
export interface PassRecord {
  readonly id: string;
  /**
   * copy: the first; repair: the share of target nodes that restarted or evicted; retry: items
   * a target refused (their keys stored by the run that saw it); source: the share of source
   * nodes that restarted mid-dump, from what they hold now; alternate: that share taken from
   * another full replica instead; rerun: everything again, for a failure no pass tracks.
   */
  readonly kind: 'copy' | 'repair' | 'retry' | 'source' | 'alternate' | 'rerun';
  readonly reason: string;
  /** Target node addresses the pass writes (and whose keys it dumps); all of the job's when absent. */
  readonly nodes?: readonly string[] | undefined;
  /** Source node ids that dump in this pass; all when absent. */
  readonly sourceNodes?: readonly string[] | undefined;
  /** An alternate pass's replica, dumped in the source's place for the share of `sourceShare`. */
  readonly from?: string | undefined;
  /** The source nodes whose share (on the source replica's ring) an alternate pass copies. */
  readonly sourceShare?: SourceShare | undefined;
  done: boolean;
}

/** The keys a replica's ring gives some of its nodes (by address). */
export interface SourceShare {
  readonly replica: string;
  readonly nodes: readonly string[];
}

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
  /** Runs of this job so far, this one included. */
  runs?: number | undefined;
  passes?: PassRecord[] | undefined;
  /** Per target node address, the process the job's writes went into: a rerun that finds another one refills it. */
  targets?: NodeIdentities | undefined;
  /** The same of the source nodes (by address): a rerun that finds another one says the source lost its crawl. */
  sources?: NodeIdentities | undefined;
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

  /** The job's directory in `workDir`, made if missing; fails with a clear error when it cannot be. */
  static async directoryOf(workDir: string, id: string): Promise<string> {
    checkJobId(id);
    const directory = path.join(workDir, id);
    try {
      await mkdir(directory, { recursive: true });
    } catch (error) {
      throw new CachewarmError('INVALID_ARGUMENT', `--work-dir ${workDir}: cannot make the job's directory ${directory} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`, { workDir });
    }
    return directory;
  }

  static async open(workDir: string, record: Omit<JobRecord, 'createdAt' | 'updatedAt' | 'status'>): Promise<JobJournal> {
    const directory = await JobJournal.directoryOf(workDir, record.id);
    const earlier = await JobJournal.read(workDir, record.id);
    const now = new Date().toISOString();
    const journal = new JobJournal(
      directory,
      {
        ...record,
        createdAt: earlier?.createdAt ?? now,
        updatedAt: now,
        status: 'running',
        runs: (earlier?.runs ?? 0) + 1,
        passes: earlier?.passes,
        targets: earlier?.targets,
        sources: earlier?.sources,
      },
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

  /** Writes the record, with `changes`, whole and atomically. */
  async save(changes: Partial<JobRecord> = {}): Promise<void> {
    Object.assign(this.record, changes);
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
