/**
 * One run per job id on the S3+SQS transport, where the job's record is in S3 and its runs
 * may start on different hosts (a CronJob's retry, an operator's CLI, the controller
 * service). The lock is an object beside the manifest, created with S3's conditional write
 * (`If-None-Match: *`): of two runs, exactly one creates it. Its holder rewrites it every
 * `renewEveryMs` with `If-Match` on the ETag it last wrote; a lock not renewed for
 * `staleAfterMs` (or whose holder is a dead process on this host) is taken over the same
 * way, so only one of several runs taking over wins. A holder that finds its lock taken
 * (it was presumed dead, e.g. paused for a minute) learns it through `lost` and must stop.
 *
 * Needs a store that honours conditional writes: AWS S3 does since August 2024.
 */
import type { Clock } from '../shared/clock.js';
import { CachewarmError } from '../shared/errors.js';
import type { S3Store } from '../shared/store/s3-store.js';
import { type JobLockOptions, type LockHolder, describeHolder, holderIsDead, lockedError, parseHolder, raceLostError, thisProcess } from './job-lock.js';

interface LockRecord extends LockHolder {
  /** ISO 8601: when the holder last renewed it. */
  readonly renewedAt: string;
}

export const lockName = (jobId: string): string => `${jobId}/lock.json`;

export class S3JobLock {
  private readonly lostController = new AbortController();
  private readonly timer: NodeJS.Timeout;
  private released = false;
  private renewing: Promise<void> = Promise.resolve();

  private constructor(
    private readonly store: S3Store,
    private readonly jobId: string,
    private readonly holder: LockHolder,
    private etag: string,
    clock: Clock,
    renewEveryMs: number,
  ) {
    this.timer = setInterval(() => {
      this.renewing = this.renew(clock);
    }, renewEveryMs);
    this.timer.unref();
  }

  /** Aborted, with a JOB_LOCKED error, when another run has taken the job over. */
  get lost(): AbortSignal {
    return this.lostController.signal;
  }

  /** Takes the job's lock, or fails with JOB_LOCKED naming the run that holds it. */
  static async acquire(store: S3Store, jobId: string, options: JobLockOptions & { readonly clock: Clock; readonly signal?: AbortSignal | undefined }): Promise<S3JobLock> {
    const { clock, signal, renewEveryMs = 10_000, staleAfterMs = 60_000 } = options;
    const holder = thisProcess();
    const body = (): Buffer => record(holder, clock);
    const name = lockName(jobId);
    let etag = await store.putIf(name, body(), 'absent', signal);
    if (etag === undefined) {
      const existing = await store.getTagged(name, signal);
      const current = existing && parseRecord(existing.body.toString('utf8'));
      const renewedAt = current ? Date.parse(current.renewedAt) : Number.NaN;
      const stale = holderIsDead(current) || !(clock.now() - renewedAt <= staleAfterMs);
      if (!stale) throw lockedError(jobId, current);
      // Gone between the two reads: the holder released it; take it as new.
      etag = await store.putIf(name, body(), existing ? { etag: existing.etag } : 'absent', signal);
      if (etag === undefined) throw raceLostError(jobId);
    }
    return new S3JobLock(store, jobId, holder, etag, clock, renewEveryMs);
  }

  /** Idempotent. A lock another run has taken is left to it. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    clearInterval(this.timer);
    await this.renewing;
    if (!this.lost.aborted) await this.store.delete(lockName(this.jobId)).catch(() => undefined);
  }

  private async renew(clock: Clock): Promise<void> {
    if (this.released || this.lost.aborted) return;
    try {
      const etag = await this.store.putIf(lockName(this.jobId), record(this.holder, clock), { etag: this.etag });
      if (etag !== undefined) {
        this.etag = etag;
        return;
      }
      const taker = parseRecord((await this.store.getTagged(lockName(this.jobId)))?.body.toString('utf8') ?? '');
      const message = `job ${this.jobId} was taken over by another run (${describeHolder(taker)}) that found this one silent: this run stops`;
      this.lostController.abort(new CachewarmError('JOB_LOCKED', message, { job: this.jobId, host: taker?.host, pid: taker?.pid }));
    } catch {
      // S3 unreachable for a moment: the next renewal tries again, well within staleAfterMs.
    }
  }
}

function record(holder: LockHolder, clock: Clock): Buffer {
  const value: LockRecord = { ...holder, renewedAt: new Date(clock.now()).toISOString() };
  return Buffer.from(`${JSON.stringify(value)}\n`);
}

function parseRecord(text: string): LockRecord | undefined {
  const holder = parseHolder(text);
  if (!holder) return undefined;
  const renewedAt = (JSON.parse(text) as { renewedAt?: unknown }).renewedAt;
  return { ...holder, renewedAt: typeof renewedAt === 'string' ? renewedAt : holder.since };
}
