/**
 * A job's watch on the nodes it reads from or writes to. A target node that restarted lost
 * what the job wrote to it before; a target node that evicted lost items the job counted as
 * written; a source node that restarted lost keys its crawl had listed. None of that shows
 * in what the writers were told, so the job reads each node's `stats` for as long as it
 * runs, and once more at the end, and judges from that.
 */
import { DEFAULT_RETRY } from '../populator/retry-policy.js';
import { backoffMs } from '../shared/backoff.js';
import type { Clock } from '../shared/clock.js';
import type { Connect } from '../shared/memcached/connect.js';
import { statsAt } from '../shared/memcached/commands.js';
import type { NodeSpec } from '../shared/topology.js';
import { type ServerObservation, isAnotherProcess, isRestart, observation } from '../dumper/restart-watcher.js';
import type { ProcessIdentities } from '../shared/job-layout.js';
import { endpointOf } from './node-stats.js';

/** One answered `stats`: the process, and the figures a warm is judged by. */
export interface NodeState extends ServerObservation {
  readonly evictions: number;
  /** Bytes of items held (`bytes`). */
  readonly bytes: number;
  /** The memory memcached may use for items (`limit_maxbytes`, `-m`). */
  readonly limitMaxBytes: number;
}

/** How a node's `stats` is read: by default on a short-lived text-protocol connection. */
export type ReadStats = (node: NodeSpec, signal?: AbortSignal) => Promise<ReadonlyMap<string, string>>;

export async function readNodeState(node: NodeSpec, readStats: ReadStats, signal?: AbortSignal): Promise<NodeState> {
  const reply = await readStats(node, signal);
  const seen = observation(node.id, reply);
  if (seen instanceof Error) throw seen;
  const num = (name: string): number => Number(reply.get(name) ?? 0);
  return { ...seen, evictions: num('evictions'), bytes: num('bytes'), limitMaxBytes: num('limit_maxbytes') };
}

/** What the watch saw of one node over the job. */
export interface WatchedNode {
  readonly node: NodeSpec;
  /** The process the job's work went into since it was last rebased. */
  readonly identity: NodeState;
  /** The latest answer. */
  readonly latest: NodeState;
  /** Processes seen to replace the identity's (a restart); 0 when it is the same process. */
  readonly restarts: number;
  /** Evictions by the processes the job wrote into, since the watch began (or the process started). */
  readonly evictions: number;
}

export interface NodeWatchOptions {
  readonly connect: Connect;
  /** Reads a node's `stats` another way (a SASL-only target answers only its writer's protocol). */
  readonly readStats?: ReadStats | undefined;
  readonly clock: Clock;
  /** How often every node is read while the job runs. */
  readonly intervalMs?: number | undefined;
}

interface Entry {
  node: NodeSpec;
  identity: NodeState;
  latest: NodeState;
  restarts: number;
  /** The `evictions` of the current process when the job started watching it (0 for a new one). */
  evictionBase: number;
}

export class NodeWatch {
  private readonly entries = new Map<string, Entry>();
  private readonly stopped = new AbortController();
  private loop: Promise<void> | undefined;

  private readonly readStats: ReadStats;

  private constructor(private readonly options: NodeWatchOptions) {
    this.readStats = options.readStats ?? ((node, signal) => statsAt(endpointOf(node), options.connect, signal));
  }

  /** Reads every node once (one that does not answer fails, naming it), then keeps watching. */
  static async start(nodes: readonly NodeSpec[], options: NodeWatchOptions, signal?: AbortSignal): Promise<NodeWatch> {
    const watch = new NodeWatch(options);
    const states = await Promise.all(nodes.map((node) => readNodeState(node, watch.readStats, signal)));
    nodes.forEach((node, i) => {
      const state = states[i] as NodeState;
      watch.entries.set(node.address, { node, identity: state, latest: state, restarts: 0, evictionBase: state.evictions });
    });
    watch.loop = watch.run();
    return watch;
  }

  /**
   * One more look at every node now. A node that does not answer is given the writers' grace
   * (it may be restarting at this very moment), then fails the look, naming it.
   */
  async look(signal?: AbortSignal): Promise<void> {
    await Promise.all(
      [...this.entries.values()].map(async (entry) => {
        for (let retry = 1; ; retry++) {
          try {
            this.observe(entry, await readNodeState(entry.node, this.readStats, signal));
            return;
          } catch (error) {
            if (signal?.aborted || retry >= DEFAULT_RETRY.attempts) throw error;
            await this.options.clock.sleep(backoffMs(DEFAULT_RETRY, retry), signal);
          }
        }
      }),
    );
  }

  get nodes(): WatchedNode[] {
    return [...this.entries.values()].map((e) => ({
      node: e.node,
      identity: e.identity,
      latest: e.latest,
      restarts: e.restarts,
      evictions: Math.max(0, e.latest.evictions - e.evictionBase),
    }));
  }

  /** Nodes now served by another process than the one the job's work went into. */
  restarted(): NodeSpec[] {
    return [...this.entries.values()].filter((e) => e.restarts > 0).map((e) => e.node);
  }

  /** The job starts over on these nodes: their current process becomes the one its work goes into. */
  rebase(nodes: readonly NodeSpec[]): void {
    for (const node of nodes) {
      const entry = this.entries.get(node.address);
      if (entry) Object.assign(entry, { identity: entry.latest, restarts: 0 });
    }
  }

  /** Idempotent. */
  async stop(): Promise<void> {
    this.stopped.abort();
    await this.loop;
  }

  private observe(entry: Entry, state: NodeState): void {
    if (isRestart(entry.latest, state, 0)) {
      entry.restarts++;
      // A new process starts counting evictions from 0, and whatever it evicts the job wrote.
      entry.evictionBase = 0;
    }
    entry.latest = state;
  }

  /** One polling loop per node: a node that hangs holds up its own loop only. */
  private async run(): Promise<void> {
    await Promise.all([...this.entries.values()].map((entry) => this.poll(entry)));
  }

  private async poll(entry: Entry): Promise<void> {
    const { clock, intervalMs = 1_000 } = this.options;
    const signal = this.stopped.signal;
    while (!signal.aborted) {
      try {
        await clock.sleep(intervalMs, signal);
      } catch {
        return;
      }
      // A node that does not answer is only down: the writers fail on it, naming it, if it
      // stays down; if it comes back, the next answer says whether it is a new process.
      await readNodeState(entry.node, this.readStats, signal).then(
        (state) => this.observe(entry, state),
        () => undefined,
      );
    }
  }
}

/** Per node address, the process the job's work went into: what a job records for its reruns. */
export type NodeIdentities = ProcessIdentities;

export function identities(watch: NodeWatch): NodeIdentities {
  return Object.fromEntries(watch.nodes.map((w) => [w.node.address, { pid: w.identity.pid, startedAtSeconds: w.identity.startedAtSeconds }]));
}

/** Nodes served now by another process than the one recorded (a restart between two runs). */
export function replacedSince(recorded: NodeIdentities | undefined, watch: NodeWatch): NodeSpec[] {
  return watch.nodes.filter((w) => isAnotherProcess(recorded?.[w.node.address], w.latest)).map((w) => w.node);
}
