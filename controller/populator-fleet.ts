import { spawn } from 'node:child_process';
import type { ChunkLocation } from '../shared/chunk-message.js';
import type { QueueBacklog } from '../shared/job-queues.js';

/** One populator worker the controller started. */
export interface PopulatorProcess {
  readonly id: string;
  /** Settles with the exit code, or null when killed by a signal. */
  readonly exited: Promise<number | null>;
  /** Asks it to stop (SIGTERM): it hands its chunks back and writes its report. */
  stop(): void;
}

/** Starts a worker on a job's queue, or on a standing queue serving `allowLocation` (and following it until stopped). */
export type StartPopulator = (queueUrl: string, allowLocation?: ChunkLocation) => PopulatorProcess;

export interface LocalPopulatorOptions {
  /** The cachewarm CLI's entry script (dist/bin/cachewarm.js). */
  readonly cliPath: string;
  readonly concurrency?: number | undefined;
  readonly endpoint?: string | undefined;
  readonly region?: string | undefined;
  /** Each worker's log lines (JSON) and anything else it prints on stderr. */
  readonly onLog?: ((id: string, line: string) => void) | undefined;
}

/**
 * Starts populators as local worker processes (`cachewarm populator`), the same command an
 * autoscaled fleet runs on other machines: AWS settings come from the environment and the
 * options, the job from the queue's tags.
 */
export function localPopulators(options: LocalPopulatorOptions): StartPopulator {
  let started = 0;
  return (queueUrl, allowLocation) => {
    const id = `local-${process.pid}-${++started}`;
    // JSON logs, whatever this process's: onLog reads them.
    const args = [options.cliPath, 'populator', '--queue-url', queueUrl, '--worker-id', id, '--log-format', 'json'];
    if (allowLocation) args.push('--allow-location', `s3://${allowLocation.bucket}/${allowLocation.prefix}`, '--follow');
    if (options.concurrency) args.push('--concurrency', String(options.concurrency));
    if (options.endpoint) args.push('--endpoint', options.endpoint);
    if (options.region) args.push('--region', options.region);
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let pending = '';
    child.stderr.setEncoding('utf8').on('data', (text: string) => {
      const lines = (pending + text).split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) if (line) options.onLog?.(id, line);
    });
    const exited = new Promise<number | null>((resolve) => {
      child.once('error', () => resolve(null));
      child.once('exit', (code) => resolve(code));
    });
    return { id, exited, stop: () => void child.kill('SIGTERM') };
  };
}

export interface PopulatorFleetOptions {
  readonly start: StartPopulator;
  readonly queueUrl: string;
  /** A fixed number, or bounds the count follows the backlog within. */
  readonly size: { readonly fixed: number } | { readonly min: number; readonly max: number; readonly chunksPerPopulator: number };
  /** The queue is a standing one: workers serve this location (see StartPopulator). */
  readonly allowLocation?: ChunkLocation | undefined;
}

/**
 * The populators of one job. `scale` is called on every progress tick with the queue's
 * backlog: it starts workers up to the wanted count (fixed, or one per `chunksPerPopulator`
 * messages waiting, within bounds) and replaces a worker that died while work remained, so
 * a crashed populator costs a redelivery, never the job. Workers end on their own once the
 * job is complete; the fleet never kills one mid-chunk to scale down.
 */
export class PopulatorFleet {
  private readonly running = new Map<string, PopulatorProcess>();
  private exitedCleanly = 0;
  private crashed = 0;

  constructor(private readonly options: PopulatorFleetOptions) {}

  get size(): number {
    return this.running.size;
  }

  /** Workers that ended with an error or a signal (each was replaced while work remained). */
  get crashes(): number {
    return this.crashed;
  }

  scale(backlog: QueueBacklog): void {
    // A worker that exited 0 saw the job complete: nothing to replace.
    if (this.exitedCleanly > 0) return;
    const { size } = this.options;
    const wanted =
      'fixed' in size
        ? size.fixed
        : Math.min(size.max, Math.max(size.min, Math.ceil((backlog.visible + backlog.inFlight) / size.chunksPerPopulator)));
    while (this.running.size < wanted) this.launch();
  }

  /** Waits for every worker to end. */
  async settled(): Promise<void> {
    while (this.running.size > 0) await Promise.race([...this.running.values()].map((p) => p.exited));
  }

  stopAll(): void {
    for (const worker of this.running.values()) worker.stop();
  }

  private launch(): void {
    const worker = this.options.start(this.options.queueUrl, this.options.allowLocation);
    this.running.set(worker.id, worker);
    void worker.exited.then((code) => {
      this.running.delete(worker.id);
      // 1 means it finished with parked chunks: the job is over for it too.
      if (code === 0 || code === 1) this.exitedCleanly++;
      else this.crashed++;
    });
  }
}
