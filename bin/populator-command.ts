import os from 'node:os';
import { type Command, InvalidArgumentError, Option } from 'commander';
import type { WorkerResult } from '../populator/worker.js';
import { parseAllowedLocation } from '../shared/allowed-locations.js';
import type { ChunkLocation } from '../shared/chunk-message.js';
import { systemClock } from '../shared/clock.js';
import { CachewarmError } from '../shared/errors.js';
import { type Log, withFields } from '../shared/log.js';
import { addAwsConnectionOptions, awsClientsFrom } from './aws-options.js';
import { cliLogging } from './cli-log.js';
import { BOUNDS, EXIT, concurrency, wholeNumber } from './cli-support.js';

interface PopulatorCommandOptions {
  queueUrl: string;
  allowLocation?: ChunkLocation[];
  concurrency: number;
  follow?: boolean;
  workerId?: string;
  region?: string;
  endpoint?: string;
  waitSeconds: number;
}

/**
 * `cachewarm populator --queue-url URL`: one stateless populator worker, as many as the
 * autoscaler likes. Logs are JSON lines on stderr; the result is one JSON line on stdout.
 * Errors thrown here go to the program's exitOnError (2 for usage and "not a job queue").
 */
export function registerPopulatorCommand(program: Command): void {
  const command = program
    .command('populator')
    .description("a stateless populator worker: writes the chunks announced on a job's SQS queue into the target replica, add-only")
    .requiredOption('--queue-url <url>', "the job queue (made by the controller; its tags name the job, bucket and prefix), or with --allow-location the installation's standing queue")
    .option(
      '--allow-location <s3-url>',
      'serve a standing queue: every job whose chunks are under s3://BUCKET/PREFIX (repeatable); messages naming anything else go to the dead-letter queue',
      (value: string, previous: ChunkLocation[] = []) => [...previous, commanderArgument(() => parseAllowedLocation(value))],
    )
    .addOption(new Option('--concurrency <n>', 'chunks written at once, 1 to 64').argParser(concurrency).default(4))
    .option('--follow', 'keep polling after the job is complete, until SIGTERM')
    .option('--worker-id <id>', "names this worker's report in the store (default: hostname-pid)")
    .addOption(new Option('--wait-seconds <n>', 'long-poll wait of each receive, 1 to 20').argParser(wholeNumber(BOUNDS.waitSeconds)).default(20));
  addAwsConnectionOptions(command).action(async (opts: PopulatorCommandOptions) => {
      process.exitCode = await populate(opts);
    });
}

async function populate(opts: PopulatorCommandOptions): Promise<number> {
  const workerId = opts.workerId ?? `${os.hostname()}-${process.pid}`;
  const { s3, sqs } = await awsClientsFrom(opts);
  const log = withFields(cliLogging().log, { worker: workerId });
  const signal = terminationSignal(log);
  const worker = {
    s3,
    sqs,
    queueUrl: opts.queueUrl,
    workerId,
    concurrency: opts.concurrency,
    follow: opts.follow === true,
    waitTimeSeconds: opts.waitSeconds,
    clock: systemClock,
    signal,
    log,
  };
  try {
    if (opts.allowLocation) {
      const { runStandingWorker } = await import('../populator/standing-worker.js');
      const result = await runStandingWorker({ ...worker, allowed: opts.allowLocation });
      process.stdout.write(`${JSON.stringify(result)}\n`);
      const failed = Object.values(result.jobs).some((job) => job.counters.failed > 0);
      return result.parked > 0 || failed ? EXIT.incomplete : EXIT.ok;
    }
    const { runPopulatorWorker } = await import('../populator/worker.js');
    const result = await runPopulatorWorker(worker);
    process.stdout.write(`${JSON.stringify(result)}\n`);
    return exitCodeOf(result);
  } catch (error) {
    // Stopped while starting (nothing held yet): as clean an end as a stop mid-job.
    if (signal.aborted) return EXIT.ok;
    throw error;
  } finally {
    s3.destroy();
    sqs.destroy();
  }
}

/**
 * 0: the job completed and nothing is parked, or the worker was stopped (scaled in) after
 * handing its chunks back. 1: something was parked or an item was refused.
 */
export function exitCodeOf(result: WorkerResult): number {
  if (result.parked > 0 || result.counters.failed > 0) return EXIT.incomplete;
  if (result.outcome === 'complete' && (result.deadLettered ?? 0) > 0) return EXIT.incomplete;
  return EXIT.ok;
}

/**
 * Aborts on the first SIGTERM or SIGINT (the worker stops receiving, hands its chunks back
 * and reports); a second one ends the process at once, the default action.
 */
function terminationSignal(log: Log): AbortSignal {
  const controller = new AbortController();
  const stop = (name: string): void => {
    log({ event: 'stopping', signal: name });
    controller.abort(new CachewarmError('ABORTED', `interrupted by ${name}`));
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
  return controller.signal;
}

/** A parser's CachewarmError as commander's own, so that it reports it as it does every bad option value. */
function commanderArgument<T>(parse: () => T): T {
  try {
    return parse();
  } catch (error) {
    throw new InvalidArgumentError((error as Error).message);
  }
}
