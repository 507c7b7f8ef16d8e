import type { ChunkStore } from '../shared/chunk-store.js';
import { isAnotherProcess, observation } from '../dumper/restart-watcher.js';
import { CachewarmError } from '../shared/errors.js';
import { type ProcessIdentities, type ProcessesRecord, getJson, processesName } from '../shared/job-layout.js';
import { stats } from '../shared/memcached/commands.js';
import type { MemcachedConnection } from '../shared/memcached/connection.js';

/**
 * Writes go only into the target processes the job works with (`processes.json`, the
 * controller's). A node that restarted is another process: what the job wrote into the old
 * one is gone, and the controller refills the node's whole share itself once it sees the
 * restart. A populator that went on writing into the new process would be a job writing into
 * a process started after it was planned — the writers of an instance job its node's newer
 * restart superseded, say, filling the node with a partial copy its replacement then takes
 * for a warm node.
 *
 * A restarted node is reachable only over a new connection, so each new connection is
 * checked once, with one `stats`. A mismatch reads the record again first: the controller
 * records a node's new process once it has refilled it.
 */
export class PinnedTargets {
  private recorded: Promise<ProcessIdentities | undefined> | undefined;

  /**
   * `side` 'sources': the source processes instead, for the delete reconcile's lookups. A
   * source that restarted is empty: its missing keys say nothing of the application's deletes.
   */
  constructor(
    private readonly read: (signal?: AbortSignal) => Promise<ProcessIdentities | undefined>,
    private readonly jobId: string,
    private readonly side: 'targets' | 'sources' = 'targets',
  ) {}

  /**
   * Pinned to the job's `processes.json` in the store, read again on a mismatch; `also`: pins
   * recorded elsewhere (the fallback replica's, in the manifest).
   */
  static recordedIn(store: ChunkStore, jobId: string, side: 'targets' | 'sources' = 'targets', also?: ProcessIdentities): PinnedTargets {
    const read = async (signal?: AbortSignal): Promise<ProcessIdentities | undefined> => {
      const recorded = (await getJson<ProcessesRecord>(store, processesName(jobId), signal))?.[side];
      return recorded || also ? { ...also, ...recorded } : undefined;
    };
    return new PinnedTargets(read, jobId, side);
  }

  /** For a connection's check: throws TARGET_REPLACED (or SOURCE_REPLACED) for another process. */
  readonly check = async (address: string, conn: MemcachedConnection, signal?: AbortSignal): Promise<void> => {
    const now = observation(conn.label, await stats(conn));
    if (now instanceof Error) throw now;
    if (!isAnotherProcess((await this.targets(false, signal))?.[address], now)) return;
    const expected = (await this.targets(true, signal))?.[address];
    if (!expected || !isAnotherProcess(expected, now)) return;
    const when = (seconds: number): string => new Date(seconds * 1000).toISOString();
    if (this.side === 'sources') {
      throw new CachewarmError(
        'SOURCE_REPLACED',
        `source node ${conn.label} is another process (pid ${now.pid}, started ${when(now.startedAtSeconds)}) than the one job ${this.jobId} planned with ` +
          `(pid ${expected.pid}, started ${when(expected.startedAtSeconds)}): what it lacks says nothing of deletes, so no key is checked there`,
        { job: this.jobId, node: address, pid: now.pid },
      );
    }
    throw new CachewarmError(
      'TARGET_REPLACED',
      `target node ${conn.label} is another process (pid ${now.pid}, started ${when(now.startedAtSeconds)}) than the one job ${this.jobId} works with ` +
        `(pid ${expected.pid}, started ${when(expected.startedAtSeconds)}): nothing is written to it; the job refills its share`,
      { job: this.jobId, node: address, pid: now.pid },
    );
  };

  private targets(fresh: boolean, signal: AbortSignal | undefined): Promise<ProcessIdentities | undefined> {
    if (fresh || !this.recorded) {
      this.recorded = this.read(signal);
      // A failed read is not kept: the next connection reads again.
      this.recorded.catch(() => (this.recorded = undefined));
    }
    return this.recorded;
  }
}
