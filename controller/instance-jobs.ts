/**
 * The controller service's instance warms: one job per node at a time. A restart signal (or a
 * person) asks for a node to be warmed; the job first decides whether the node holds too
 * little of its share, then warms it from another replica. The warm and the decision are
 * injected, so the manager knows nothing of transports and is tested with fakes.
 *
 * A job goes `deciding` → `skipped` (the node holds its share), or → `queued` (waiting for a
 * warm slot) → `running` → `completed` | `failed` | `cancelled`. A failure anywhere ends it
 * `failed` with the error; an abort (a newer restart, shutdown) ends it `cancelled`.
 *
 * Signals for a node with a job under way collapse into that job (the sidecar's notifier
 * retries, and a scheduler may ask twice), unless they tell of a newer process than the one
 * the job was started for: that node restarted again during its warm, so what was copied so
 * far is gone, and the job is cancelled and a fresh one started. The fresh one starts once the
 * old one has stopped (its warm ended, and what it left behind was removed: see AbandonWarm),
 * and warms whatever the node holds if the old one had begun writing (see `overruled`).
 */
import type { RestartSignal } from '../dumper/restart-watcher.js';
import type { Clock } from '../shared/clock.js';
import { type DumpCounters, type WriteCounters, addInto, newDumpCounters, newWriteCounters } from '../shared/counters.js';
import { CachewarmError, abortReason } from '../shared/errors.js';
import { describeError } from '../shared/http-api.js';
import { type Log, safeLog } from '../shared/log.js';
import { nodeDirectory } from '../shared/job-layout.js';
import type { NodeSpec, Topology } from '../shared/topology.js';
import type { WarmDecision } from './expected-share.js';
import type { WarmProgress, WarmSummary } from './warm-summary.js';
import { newJobId } from './warm-plan.js';

export type JobState = 'queued' | 'deciding' | 'skipped' | 'running' | 'completed' | 'failed' | 'cancelled';
export const JOB_STATES: readonly JobState[] = ['queued', 'deciding', 'skipped', 'running', 'completed', 'failed', 'cancelled'];
/** The states of a job under way; the others are final. */
export const ACTIVE_STATES: ReadonlySet<JobState> = new Set(['queued', 'deciding', 'running']);

export interface WarmContext {
  readonly jobId: string;
  readonly signal: AbortSignal;
  readonly onProgress: (progress: WarmProgress) => void;
}

/** Warms one node from another replica (embedded or S3+SQS); rejects on failure or abort. */
export type RunWarm = (node: NodeSpec, topology: Topology, context: WarmContext) => Promise<WarmSummary>;

/** Whether the node holds too little of its share (decideInstanceWarm, or a fake). */
export type DecideWarm = (node: NodeSpec, topology: Topology, signal: AbortSignal) => Promise<WarmDecision>;

/**
 * Removes what the warm of a superseded job left behind (on S3+SQS: it stops the job's dumps,
 * deletes its queues and chunks). Called once that warm has stopped and before the job that
 * replaces it starts; resolves with one line saying what was removed. `signal` aborts on shutdown.
 */
export type AbandonWarm = (
  node: NodeSpec,
  topology: Topology,
  context: { readonly jobId: string; readonly supersededBy: string; readonly signal: AbortSignal },
) => Promise<string>;

/** What became of a superseded job's leftovers. */
export interface JobCleanup {
  /** True once they were removed. */
  readonly done: boolean;
  /** What was removed, or why it could not be (they are then left for a person). */
  readonly detail: string;
}

/** What asked for the job. A manual job warms whatever the decision says (a person asked for it). */
export type JobTrigger = { readonly kind: 'restart'; readonly restart: RestartSignal } | { readonly kind: 'manual' };

export interface JobCounters {
  /** The items the warm expects to copy, from its progress (0 before it reports). */
  readonly expectedItems: number;
  /** Summed over the source nodes' dumps. */
  readonly dumped: DumpCounters;
  /** What was written to the node. */
  readonly written: WriteCounters;
}

/** A job as the API shows it: a snapshot, plain JSON. */
export interface InstanceJobView {
  readonly id: string;
  /** `replica/address` */
  readonly node: string;
  readonly replica: string;
  readonly trigger: 'restart' | 'manual';
  /** The restart the job was started for (restart-triggered jobs). */
  readonly restart?: RestartSignal | undefined;
  readonly state: JobState;
  /** Why it is in its state: the decision's reason, what cancelled it, the error. */
  readonly reason?: string | undefined;
  readonly decision?: WarmDecision | undefined;
  /** The replica copied from (once the warm reported it). */
  readonly source?: string | undefined;
  readonly counters: JobCounters;
  /** True when every listed item was written or accounted for (completed jobs). */
  readonly complete?: boolean | undefined;
  readonly error?: { readonly code: string; readonly message: string } | undefined;
  /** Further requests for the node that collapsed into this job. */
  readonly duplicates: number;
  /** The job that replaced this one (a newer restart of its node). */
  readonly supersededBy?: string | undefined;
  /** A superseded job's leftovers, once its warm stopped. */
  readonly cleanup?: JobCleanup | undefined;
  /** ISO 8601 */
  readonly createdAt: string;
  readonly startedAt?: string | undefined;
  readonly finishedAt?: string | undefined;
  readonly summary?: WarmSummary | undefined;
}

export type SubmitOutcome = 'created' | 'collapsed' | 'superseded';

export interface SubmitResult {
  readonly outcome: SubmitOutcome;
  readonly job: InstanceJobView;
}

export interface InstanceJobManagerOptions {
  readonly runWarm: RunWarm;
  readonly decide: DecideWarm;
  /** Nothing is removed of a superseded job without it (the embedded transport keeps its work directory). */
  readonly abandonWarm?: AbandonWarm | undefined;
  readonly clock: Clock;
  /**
   * Warms running at once; default 1. Every instance warm crawls every node of its source
   * replica, and memcached runs one LRU crawl per node at a time: two warms from one source
   * would refuse each other.
   */
  readonly maxConcurrentWarms?: number | undefined;
  /** Finished jobs kept for GET /v1/jobs (the oldest go first). Default 100. */
  readonly keepFinishedJobs?: number | undefined;
  readonly log?: Log | undefined;
  /** Names new jobs; default `instance-<node>-<time>-<random>`. */
  readonly newJobId?: ((node: NodeSpec, nowMs: number) => string) | undefined;
}

/** `time` and `uptime` are whole seconds and the watcher polls: starts this close are one process. */
const PROCESS_START_SLACK_SECONDS = 2;

/**
 * How a restart signal relates to the one a job was started for: the same process (a
 * retried or repeated signal), a newer one (the node restarted again), or an older one (a
 * late delivery of a signal already acted on). A process's start is `detectedAt − uptime`,
 * both from the node's own sidecar, so comparable with each other.
 */
export function compareRestarts(current: RestartSignal, incoming: RestartSignal): 'same' | 'newer' | 'older' {
  const delta = processStartSeconds(incoming) - processStartSeconds(current);
  if (incoming.pid === current.pid && Math.abs(delta) <= PROCESS_START_SLACK_SECONDS) return 'same';
  if (delta < -PROCESS_START_SLACK_SECONDS) return 'older';
  // Started later, or another pid started within the same seconds: either way not the process warmed.
  return 'newer';
}

function processStartSeconds(restart: RestartSignal): number {
  return Date.parse(restart.detectedAt) / 1000 - restart.uptimeSeconds;
}

/**
 * The decision, unless the node restarted again while an earlier job was writing into it.
 * That job's writers reconnect to whatever answers on the node's port, so until it was
 * stopped it wrote into the new process too, and a count cannot tell such a partial copy from
 * a full share (seen: a node holding 0.93 of it, 2,515 items short, left alone). The earlier job had not
 * finished, so the share was whole in no process: the replacement warms whatever the count
 * says. Discounting the earlier job's writes instead would be a guess (its counters do not say
 * how many went into which process), and a warm is add-only: warming a node that did hold its
 * share costs the source a crawl, never an item.
 */
function overruled(job: Job, decision: WarmDecision): WarmDecision {
  if (job.interrupted === undefined || decision.warm) return decision;
  const why = `it restarted while job ${job.interrupted} was warming it, and what it holds may be that job's partial copy`;
  return { ...decision, warm: true, reason: `${decision.reason}; overruled: ${why}: warm` };
}

/** One job; mutated only by the manager. */
class Job {
  state: JobState = 'deciding';
  reason: string | undefined;
  decision: WarmDecision | undefined;
  source: string | undefined;
  expectedItems = 0;
  dumped: DumpCounters = newDumpCounters();
  written: WriteCounters = newWriteCounters();
  complete: boolean | undefined;
  error: { code: string; message: string } | undefined;
  duplicates = 0;
  supersededBy: string | undefined;
  cleanup: JobCleanup | undefined;
  /**
   * The job this one replaced that had begun writing into the node (or that replaced such a
   * job itself): what the node holds may be that job's writes. See `overruled`.
   */
  interrupted: string | undefined;
  startedAtMs: number | undefined;
  finishedAtMs: number | undefined;
  summary: WarmSummary | undefined;
  readonly abort = new AbortController();
  /** Resolves (never rejects) once the job has reached its final state. */
  settled: Promise<void> = Promise.resolve();

  constructor(
    readonly id: string,
    readonly node: NodeSpec,
    /** The topology when the job was asked for: a reload does not change a job under way. */
    readonly topology: Topology,
    readonly trigger: JobTrigger,
    readonly createdAtMs: number,
  ) {}

  get active(): boolean {
    return ACTIVE_STATES.has(this.state);
  }

  view(): InstanceJobView {
    const iso = (ms: number | undefined): string | undefined => (ms === undefined ? undefined : new Date(ms).toISOString());
    return {
      id: this.id,
      node: this.node.id,
      replica: this.node.replica,
      trigger: this.trigger.kind,
      restart: this.trigger.kind === 'restart' ? this.trigger.restart : undefined,
      state: this.state,
      reason: this.reason,
      decision: this.decision,
      source: this.source,
      counters: { expectedItems: this.expectedItems, dumped: { ...this.dumped }, written: { ...this.written } },
      complete: this.complete,
      error: this.error,
      duplicates: this.duplicates,
      supersededBy: this.supersededBy,
      cleanup: this.cleanup,
      createdAt: iso(this.createdAtMs) as string,
      startedAt: iso(this.startedAtMs),
      finishedAt: iso(this.finishedAtMs),
      summary: this.summary,
    };
  }
}

/** A FIFO counting semaphore whose waits an AbortSignal can give up. */
class Slots {
  private free: number;
  private readonly waiting: { grant: () => void }[] = [];

  constructor(count: number) {
    this.free = count;
  }

  async acquire(signal: AbortSignal): Promise<() => void> {
    if (signal.aborted) throw abortReason(signal);
    if (this.free > 0) {
      this.free--;
      return this.releaser();
    }
    await new Promise<void>((resolve, reject) => {
      const waiter = {
        grant: () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        },
      };
      const onAbort = (): void => {
        this.waiting.splice(this.waiting.indexOf(waiter), 1);
        reject(abortReason(signal));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(waiter);
    });
    return this.releaser();
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      // Handed straight to the next waiter: `free` only grows when nobody waits.
      const next = this.waiting.shift();
      if (next) next.grant();
      else this.free++;
    };
  }
}

export class InstanceJobManager {
  private readonly log: Log;
  private readonly slots: Slots;
  private readonly keepFinished: number;
  /** Every job kept, active or finished, by id. */
  private readonly jobs = new Map<string, Job>();
  /** node id → its job under way */
  private readonly activeByNode = new Map<string, Job>();
  /** Finished jobs, oldest first, for eviction. */
  private readonly finished: Job[] = [];
  /** node id → the last decision made for it, and when */
  private readonly decisions = new Map<string, { decision: WarmDecision; atMs: number; jobId: string }>();
  /** Jobs that ended in each state, since the start (not bounded by the history). */
  private readonly endedTotal = new Map<JobState, number>();
  /** node id → what finished jobs wrote there; running jobs add their live counts on top. */
  private readonly writtenByFinished = new Map<string, WriteCounters>();
  /** Aborted by close(): cuts short the removal of a superseded job's leftovers. */
  private readonly shutdown = new AbortController();
  private closing: Promise<void> | undefined;

  constructor(private readonly options: InstanceJobManagerOptions) {
    const concurrency = options.maxConcurrentWarms ?? 1;
    const keep = options.keepFinishedJobs ?? 100;
    if (!(Number.isSafeInteger(concurrency) && concurrency >= 1)) {
      throw new CachewarmError('INVALID_ARGUMENT', `maxConcurrentWarms must be a whole number from 1, got ${concurrency}`);
    }
    if (!(Number.isSafeInteger(keep) && keep >= 0)) {
      throw new CachewarmError('INVALID_ARGUMENT', `keepFinishedJobs must be a whole number from 0, got ${keep}`);
    }
    this.slots = new Slots(concurrency);
    this.keepFinished = keep;
    this.log = safeLog(options.log);
  }

  /**
   * Asks for `node` to be warmed: a new job, the node's job under way (collapsed), or a new
   * job replacing it (a newer restart). Resolves at once; the job runs in the background.
   * Throws ABORTED once the manager is closing.
   */
  submit(node: NodeSpec, topology: Topology, trigger: JobTrigger): SubmitResult {
    if (this.closing) throw new CachewarmError('ABORTED', 'the controller is shutting down: no new jobs', { node: node.id });
    const current = this.activeByNode.get(node.id);
    if (current) {
      const relation = this.relation(current, trigger);
      if (relation !== 'newer') {
        current.duplicates++;
        this.log({ event: 'job-collapsed', jobId: current.id, node: node.id, trigger: trigger.kind, relation, state: current.state });
        return { outcome: 'collapsed', job: current.view() };
      }
    }
    const job = new Job(this.nextId(node), node, topology, trigger, this.options.clock.now());
    this.jobs.set(job.id, job);
    this.activeByNode.set(node.id, job);
    this.log({ event: 'job-created', jobId: job.id, node: node.id, trigger: trigger.kind, ...(trigger.kind === 'restart' && { restart: trigger.restart }) });
    let previous: Promise<void> = Promise.resolve();
    if (current) {
      current.supersededBy = job.id;
      job.interrupted = current.startedAtMs !== undefined ? current.id : current.interrupted;
      const why = trigger.kind === 'restart' ? `pid ${trigger.restart.pid}, up ${trigger.restart.uptimeSeconds} s` : 'by hand';
      this.log({ event: 'job-superseded', jobId: current.id, node: node.id, by: job.id, state: current.state });
      current.abort.abort(
        new CachewarmError('ABORTED', `superseded by job ${job.id}: ${node.id} restarted again (${why})`, { job: current.id, by: job.id }),
      );
      // The new job starts once the old one has let go: its writes stopped (a job never writes
      // alongside its replacement), and two warms of one node would crawl the same source
      // nodes at once, which memcached refuses (one crawl per node).
      previous = current.settled;
    }
    job.settled = this.execute(job, previous);
    return { outcome: current ? 'superseded' : 'created', job: job.view() };
  }

  get(id: string): InstanceJobView | undefined {
    return this.jobs.get(id)?.view();
  }

  /** Jobs under way, then finished ones, newest first within each. */
  list(): InstanceJobView[] {
    const all = [...this.jobs.values()].reverse();
    return [...all.filter((j) => j.active), ...all.filter((j) => !j.active)].map((j) => j.view());
  }

  /** The node's job under way, if any. */
  activeJob(nodeId: string): InstanceJobView | undefined {
    return this.activeByNode.get(nodeId)?.view();
  }

  /** Resolves with the job's final view; undefined for a job not kept. */
  async whenSettled(id: string): Promise<InstanceJobView | undefined> {
    const job = this.jobs.get(id);
    if (!job) return undefined;
    await job.settled;
    return job.view();
  }

  /** For /metrics: jobs kept per state, jobs ended per state ever, items written per node, last decision per node. */
  metrics(): {
    readonly jobsByState: ReadonlyMap<JobState, number>;
    readonly endedTotal: ReadonlyMap<JobState, number>;
    readonly writtenByNode: ReadonlyMap<string, WriteCounters>;
    readonly lastDecisions: ReadonlyMap<string, { readonly decision: WarmDecision; readonly atMs: number; readonly jobId: string }>;
  } {
    const jobsByState = new Map<JobState, number>(JOB_STATES.map((s) => [s, 0]));
    for (const job of this.jobs.values()) jobsByState.set(job.state, (jobsByState.get(job.state) ?? 0) + 1);
    const writtenByNode = new Map([...this.writtenByFinished].map(([node, counters]) => [node, { ...counters }]));
    // Every job under way, including one superseded and still stopping.
    for (const job of this.jobs.values()) {
      if (!job.active) continue;
      writtenByNode.set(job.node.id, addInto(writtenByNode.get(job.node.id) ?? newWriteCounters(), job.written));
    }
    return { jobsByState, endedTotal: new Map(this.endedTotal), writtenByNode, lastDecisions: new Map(this.decisions) };
  }

  /** Cancels every job under way and waits for them to stop; refuses new ones. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.shutdown.abort(new CachewarmError('ABORTED', 'the controller is shutting down'));
      const active = [...this.activeByNode.values()];
      for (const job of active) job.abort.abort(new CachewarmError('ABORTED', 'the controller is shutting down', { job: job.id }));
      await Promise.all(active.map((job) => job.settled));
    })();
    return this.closing;
  }

  private relation(current: Job, trigger: JobTrigger): 'same' | 'newer' | 'older' | 'manual' {
    // Asking by hand for a node already being worked on adds nothing.
    if (trigger.kind === 'manual') return 'manual';
    if (current.trigger.kind === 'restart') return compareRestarts(current.trigger.restart, trigger.restart);
    // A manual job knows no process: a restart seen after it was asked for emptied the node
    // again; one seen before is the one the person was reacting to.
    const detectedMs = Date.parse(trigger.restart.detectedAt);
    return detectedMs > current.createdAtMs + PROCESS_START_SLACK_SECONDS * 1000 ? 'newer' : 'older';
  }

  private nextId(node: NodeSpec): string {
    const now = this.options.clock.now();
    const id = this.options.newJobId?.(node, now) ?? newJobId('instance', nodeDirectory(node.id), now);
    if (this.jobs.has(id)) throw new CachewarmError('INVALID_ARGUMENT', `job id ${id} is already taken`, { job: id });
    return id;
  }

  /** Runs the job to its final state; never rejects. */
  private async execute(job: Job, previous: Promise<void>): Promise<void> {
    const { signal } = job.abort;
    try {
      await previous;
      if (signal.aborted) throw abortReason(signal);
      const decision = overruled(job, await this.options.decide(job.node, job.topology, signal));
      if (signal.aborted) throw abortReason(signal);
      this.record(job, decision);
      if (!decision.warm && job.trigger.kind !== 'manual') {
        this.finish(job, 'skipped', decision.reason);
        return;
      }
      job.reason = job.trigger.kind === 'manual' && !decision.warm ? `asked for by hand (${decision.reason})` : decision.reason;
      job.state = 'queued';
      const release = await this.slots.acquire(signal);
      try {
        await this.warm(job);
      } finally {
        release();
      }
    } catch (error) {
      if (signal.aborted) {
        await this.abandon(job);
        this.finish(job, 'cancelled', abortReason(signal).message);
      } else {
        this.finish(job, 'failed', describeError(error).message, describeError(error));
      }
    }
  }

  /**
   * Removes what a superseded job's warm left behind, now that it has stopped and before its
   * replacement starts: nothing of it outlives it, and the replacement finds the source's
   * sidecars free. A failure is recorded, not fatal: the node still needs its warm, and the
   * leftovers stay for a person (as an incomplete job's do).
   */
  private async abandon(job: Job): Promise<void> {
    const { abandonWarm } = this.options;
    if (!abandonWarm || job.supersededBy === undefined || job.startedAtMs === undefined) return;
    const by = job.supersededBy;
    try {
      const removed = await abandonWarm(job.node, job.topology, { jobId: job.id, supersededBy: by, signal: this.shutdown.signal });
      job.cleanup = { done: true, detail: removed };
      this.log({ event: 'job-abandoned', jobId: job.id, node: job.node.id, by, removed });
    } catch (error) {
      const failure = describeError(error);
      job.cleanup = { done: false, detail: `${failure.message} [${failure.code}]` };
      this.log({ event: 'job-abandon-failed', level: 'error', jobId: job.id, node: job.node.id, by, error: failure });
    }
  }

  private record(job: Job, decision: WarmDecision): void {
    job.decision = decision;
    this.decisions.set(job.node.id, { decision, atMs: this.options.clock.now(), jobId: job.id });
    this.log({
      event: 'decision',
      jobId: job.id,
      node: job.node.id,
      warm: decision.warm,
      reason: decision.reason,
      expectedItems: decision.expectedItems,
      actualItems: decision.actualItems,
      ratio: decision.ratio,
      ...(job.trigger.kind === 'manual' && { trigger: 'manual' }),
    });
  }

  private async warm(job: Job): Promise<void> {
    job.state = 'running';
    job.startedAtMs = this.options.clock.now();
    this.log({ event: 'job-started', jobId: job.id, node: job.node.id, replica: job.node.replica });
    const summary = await this.options.runWarm(job.node, job.topology, {
      jobId: job.id,
      signal: job.abort.signal,
      onProgress: (progress) => {
        job.expectedItems = progress.expectedItems;
        job.dumped = { ...progress.dumped };
        job.written = { ...progress.written };
      },
    });
    job.summary = summary;
    job.source = summary.source;
    job.complete = summary.complete;
    // addInto sums the numbers only: the rows' node names are left out.
    job.dumped = summary.sourceNodes.reduce<DumpCounters>((sum, row) => addInto(sum, row), newDumpCounters());
    job.written = summary.targetNodes.reduce<WriteCounters>((sum, row) => addInto(sum, row), newWriteCounters());
    if (summary.skipped !== undefined) {
      // The warm made its own check and copied nothing.
      this.finish(job, 'skipped', summary.warmth?.reason ?? `the warm copied nothing: ${summary.skipped}`);
    } else if (summary.complete) {
      this.finish(job, 'completed', `${job.written.stored} items written from ${summary.source}`);
    } else {
      const why = `incomplete: ${job.written.failed} items failed, ${summary.parked.length} chunks parked, ${job.dumped.unsupported} keys unsupported`;
      this.finish(job, 'failed', why, { code: 'JOB_FAILED', message: `${job.node.id}: warm from ${summary.source} ${why}` });
    }
  }

  private finish(job: Job, state: JobState, reason: string, error?: { code: string; message: string }): void {
    job.state = state;
    job.reason = reason;
    job.error = error;
    job.finishedAtMs = this.options.clock.now();
    if (this.activeByNode.get(job.node.id) === job) this.activeByNode.delete(job.node.id);
    this.endedTotal.set(state, (this.endedTotal.get(state) ?? 0) + 1);
    this.writtenByFinished.set(job.node.id, addInto(this.writtenByFinished.get(job.node.id) ?? newWriteCounters(), job.written));
    const durationMs = job.finishedAtMs - job.createdAtMs;
    const base = { jobId: job.id, node: job.node.id, state, reason, durationMs };
    if (state === 'failed') this.log({ event: 'job-failed', ...base, error, counters: job.view().counters });
    else this.log({ event: 'job-finished', ...base, source: job.source, counters: job.view().counters });
    this.finished.push(job);
    while (this.finished.length > this.keepFinished) this.jobs.delete((this.finished.shift() as Job).id);
  }
}
