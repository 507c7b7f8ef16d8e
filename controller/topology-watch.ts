/**
 * The controller's topology, kept current while it runs: nodes are added and replaced
 * without restarting the service. The file is polled (its size, mtime and inode) rather than
 * watched: fs.watch misses changes on network and some container filesystems, and loses
 * track of a file replaced by rename, which is how config managers write files atomically.
 *
 * A new version that does not parse is logged and the last good topology kept: a typo in
 * the file must not take down the warms of a running fleet.
 */
import { stat } from 'node:fs/promises';
import type { Clock } from '../shared/clock.js';
import { CachewarmError } from '../shared/errors.js';
import { describeError } from '../shared/http-api.js';
import { type Log, safeLog } from '../shared/log.js';
import { type Topology, loadTopology } from '../shared/topology.js';

export interface TopologyWatchOptions {
  readonly file: string;
  readonly clock: Clock;
  /** How often the file's metadata is looked at. Default 3 s. */
  readonly intervalMs?: number | undefined;
  readonly log?: Log | undefined;
  /** Told of each new good topology. */
  readonly onChange?: ((topology: Topology) => void) | undefined;
  /** For tests; loadTopology otherwise. */
  readonly load?: ((file: string) => Promise<Topology>) | undefined;
}

export const DEFAULT_TOPOLOGY_POLL_MS = 3_000;

/** What identifies one version of the file without reading it. */
type Version = string;

export class TopologyWatch {
  private currentTopology: Topology;
  /** The version last read, good or bad: a bad one is reported once, not at every poll. */
  private seen: Version;
  private readonly stop = new AbortController();
  private readonly loop: Promise<void>;
  private closed: Promise<void> | undefined;
  private readonly log: Log;

  private constructor(
    private readonly options: TopologyWatchOptions,
    initial: Topology,
    version: Version,
  ) {
    this.currentTopology = initial;
    this.seen = version;
    this.log = safeLog(options.log);
    this.loop = this.poll();
  }

  /** Reads the file (which must be good: there is nothing to fall back on yet) and starts polling. */
  static async open(options: TopologyWatchOptions): Promise<TopologyWatch> {
    const intervalMs = options.intervalMs ?? DEFAULT_TOPOLOGY_POLL_MS;
    if (!(Number.isFinite(intervalMs) && intervalMs > 0)) {
      throw new CachewarmError('INVALID_ARGUMENT', `topology poll interval must be a positive number of milliseconds, got ${intervalMs}`, {
        intervalMs,
      });
    }
    // The version is taken before the read: a change during the read is seen at the next poll.
    const version = await versionOf(options.file);
    const topology = await (options.load ?? loadTopology)(options.file);
    return new TopologyWatch(options, topology, version ?? 'missing');
  }

  /** The last good topology. */
  get current(): Topology {
    return this.currentTopology;
  }

  /**
   * Looks at the file now and reloads it if it changed; true when a new topology was taken.
   * The poll calls it; tests and a SIGHUP handler may too.
   */
  async check(): Promise<boolean> {
    const version = await versionOf(this.options.file).catch(() => undefined);
    // A file briefly missing (replaced by delete and create) is no change: keep the last good.
    if (version === undefined || version === this.seen) return false;
    this.seen = version;
    let next: Topology;
    try {
      next = await (this.options.load ?? loadTopology)(this.options.file);
    } catch (error) {
      this.log({ event: 'topology-invalid', file: this.options.file, error: describeError(error), keeping: 'the last good topology' });
      return false;
    }
    const before = nodeIds(this.currentTopology);
    const after = nodeIds(next);
    this.currentTopology = next;
    this.log({
      event: 'topology-reloaded',
      file: this.options.file,
      replicas: next.replicas.size,
      nodes: after.size,
      added: [...after].filter((id) => !before.has(id)),
      removed: [...before].filter((id) => !after.has(id)),
    });
    this.options.onChange?.(next);
    return true;
  }

  /** Stops polling. Idempotent. */
  close(): Promise<void> {
    if (!this.closed) {
      this.stop.abort();
      this.closed = this.loop;
    }
    return this.closed;
  }

  private async poll(): Promise<void> {
    const intervalMs = this.options.intervalMs ?? DEFAULT_TOPOLOGY_POLL_MS;
    for (;;) {
      try {
        await this.options.clock.sleep(intervalMs, this.stop.signal);
      } catch {
        return; // closed
      }
      await this.check().catch((error: unknown) => this.log({ event: 'topology-check-failed', file: this.options.file, error: describeError(error) }));
    }
  }
}

/**
 * Size, mtime and inode: a rewrite changes the mtime (and usually the size), a rename
 * over the file changes the inode. Undefined when the file cannot be looked at.
 */
async function versionOf(file: string): Promise<Version | undefined> {
  try {
    const s = await stat(file, { bigint: true });
    return `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
  } catch {
    return undefined;
  }
}

function nodeIds(topology: Topology): Set<string> {
  return new Set([...topology.replicas.values()].flatMap((r) => r.nodes.map((n) => n.id)));
}
