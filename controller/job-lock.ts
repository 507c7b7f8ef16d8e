/**
 * One run per job id. Two runs of one job would both crawl and read the whole source (twice
 * the load on it) and each claim the other's work; the second is refused at once, naming the
 * holder. The lock is a file beside the job's record, created exclusively; it names its
 * holder and is touched while the job runs, so a holder that died does not keep it: on the
 * same host a dead pid frees it at once, from another host (a shared work directory) it
 * lapses when it has not been touched for `staleAfterMs`.
 */
import { open, readFile, rename, stat, unlink, utimes } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { CachewarmError } from '../shared/errors.js';

export interface LockHolder {
  readonly host: string;
  readonly pid: number;
  /** ISO 8601 */
  readonly since: string;
}

export interface JobLockOptions {
  /** How often the holder touches the lock. @default 10_000 */
  readonly renewEveryMs?: number;
  /** A lock untouched this long is taken over (its holder is gone). @default 60_000 */
  readonly staleAfterMs?: number;
}

const LOCK_FILE = 'lock.json';

export class JobLock {
  private released = false;

  private constructor(
    private readonly file: string,
    private readonly timer: NodeJS.Timeout,
  ) {}

  /** Takes the lock of the job whose record lives in `directory`, or fails naming its holder. */
  static async acquire(directory: string, jobId: string, options: JobLockOptions = {}): Promise<JobLock> {
    const { renewEveryMs = 10_000, staleAfterMs = 60_000 } = options;
    const file = path.join(directory, LOCK_FILE);
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const handle = await open(file, 'wx');
        await handle.writeFile(`${JSON.stringify(thisProcess())}\n`);
        await handle.close();
        const timer = setInterval(() => {
          const now = new Date();
          utimes(file, now, now).catch(() => undefined);
        }, renewEveryMs);
        timer.unref();
        return new JobLock(file, timer);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      }
      const holder = await readHolder(file);
      if (!(await isStale(file, holder, staleAfterMs))) throw lockedError(jobId, holder);
      // Moved aside rather than removed: of two runs taking over at once, only one rename
      // succeeds, and neither removes the lock the other has just made.
      await rename(file, `${file}.stale-${randomBytes(4).toString('hex')}`).catch(() => undefined);
    }
    throw raceLostError(jobId);
  }

  /** Idempotent. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    clearInterval(this.timer);
    await unlink(this.file).catch(() => undefined);
  }
}

async function readHolder(file: string): Promise<LockHolder | undefined> {
  return parseHolder(await readFile(file, 'utf8').catch(() => ''));
}

async function isStale(file: string, holder: LockHolder | undefined, staleAfterMs: number): Promise<boolean> {
  if (holderIsDead(holder)) return true;
  const touched = await stat(file).then((s) => s.mtimeMs, () => undefined);
  return touched === undefined || Date.now() - touched > staleAfterMs;
}

/** This process, as a lock names its holder. */
export function thisProcess(): LockHolder {
  return { host: os.hostname(), pid: process.pid, since: new Date().toISOString() };
}

export function parseHolder(text: string): LockHolder | undefined {
  try {
    const value = JSON.parse(text) as Partial<LockHolder>;
    return typeof value.host === 'string' && typeof value.pid === 'number' && typeof value.since === 'string'
      ? { host: value.host, pid: value.pid, since: value.since }
      : undefined;
  } catch {
    return undefined;
  }
}

/** A holder on this host whose process is gone: its lock is free at once. */
export function holderIsDead(holder: LockHolder | undefined): boolean {
  return holder !== undefined && holder.host === os.hostname() && !isAlive(holder.pid);
}

export function describeHolder(holder: LockHolder | undefined): string {
  return holder ? `${holder.host} pid ${holder.pid} since ${holder.since}` : 'a run that has not yet said who it is';
}

export function lockedError(jobId: string, holder: LockHolder | undefined): CachewarmError {
  return new CachewarmError('JOB_LOCKED', `job ${jobId} is already running (${describeHolder(holder)}): wait for it, or stop it first`, {
    job: jobId,
    host: holder?.host,
    pid: holder?.pid,
  });
}

export function raceLostError(jobId: string): CachewarmError {
  return new CachewarmError('JOB_LOCKED', `job ${jobId}: another run took its lock at the same moment`, { job: jobId });
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists, it is only not ours to signal.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
