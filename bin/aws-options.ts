import type { S3Client } from '@aws-sdk/client-s3';
import type { SQSClient } from '@aws-sdk/client-sqs';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { fileURLToPath } from 'node:url';
import type { DistributedWarmOptions } from '../controller/warm-distributed.js';
import { localPopulators } from '../controller/populator-fleet.js';
import { CachewarmError } from '../shared/errors.js';
import { type Log, childEntry } from '../shared/log.js';
import type { S3Encryption } from '../shared/store/s3-store.js';
import { BOUNDS, byteSize, concurrency, readTokenFile } from './cli-support.js';

export interface AwsConnectionOptions {
  region?: string;
  endpoint?: string;
}

/** `--region` and `--endpoint`: every command that talks to S3 or SQS takes them. */
export function addAwsConnectionOptions(command: Command): Command {
  return command
    .option('--region <region>', 'AWS region (default: the SDK\'s own resolution: AWS_REGION, profile, instance metadata)')
    .option('--endpoint <url>', 'an S3/SQS-compatible service to use instead of AWS (S3 then uses path-style URLs)');
}

/**
 * The SDK clients, built once at the entry and passed down. Credentials come from the
 * standard chain (environment, profile, instance or task role). The SDK is loaded here, not
 * at start-up: it costs a few hundred milliseconds that the embedded transport never needs.
 */
export async function awsClientsFrom(opts: AwsConnectionOptions): Promise<{ s3: S3Client; sqs: SQSClient }> {
  const [{ S3Client }, { SQSClient }] = await Promise.all([import('@aws-sdk/client-s3'), import('@aws-sdk/client-sqs')]);
  const common = { ...(opts.region && { region: opts.region }), ...(opts.endpoint && { endpoint: opts.endpoint }) };
  // A chunk carries its own CRC-32, checked against its message before any item is used: the
  // SDK's checksum of every body, both ways, would be a second one. (Operations that require
  // a checksum, such as DeleteObjects, still get one.)
  const checksums = { requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' } as const;
  // A compatible service at an explicit endpoint seldom has per-bucket DNS names.
  return { s3: new S3Client({ ...common, ...checksums, ...(opts.endpoint && { forcePathStyle: true }) }), sqs: new SQSClient(common) };
}

export interface TransportOptions extends AwsConnectionOptions {
  transport: 'embedded' | 'aws';
  bucket?: string;
  prefix: string;
  populators: DistributedWarmOptions['populators'];
  populatorConcurrency?: number;
  sse?: 'AES256' | 'aws:kms';
  kmsKeyId?: string;
  sidecarTokenFile?: string;
  maxBytes?: number;
  queueUrl?: string;
}

/** `--populators`: N (0 to 64), `auto` (1 to 8), or `auto:MIN-MAX` (0 ≤ MIN ≤ MAX, 1 ≤ MAX ≤ 64). */
function populatorCount(text: string): DistributedWarmOptions['populators'] {
  const { min: least, max: most } = BOUNDS.populators;
  const auto = /^auto(?::(\d+)-(\d+))?$/.exec(text.trim());
  if (auto) {
    const min = Number(auto[1] ?? 1);
    const max = Number(auto[2] ?? 8);
    if (min > max) throw new InvalidArgumentError(`auto:${min}-${max}: the lower bound is above the upper`);
    if (max < 1 || max > most) throw new InvalidArgumentError(`auto:${min}-${max}: the upper bound must be from 1 to ${most} (0 populators: give 0)`);
    return { min, max, chunksPerPopulator: 16 };
  }
  const fixed = /^\d+$/.test(text.trim()) ? Number(text.trim()) : Number.NaN;
  if (!(fixed >= least && fixed <= most)) {
    throw new InvalidArgumentError(`expected a number from ${least} to ${most}, 'auto' or 'auto:MIN-MAX', got ${JSON.stringify(text)}`);
  }
  return { fixed };
}

/** The options of the S3+SQS transport, on `warm replica` and `warm instance`. */
export function addTransportOptions(command: Command): Command {
  addAwsConnectionOptions(
    command
      .addOption(new Option('--transport <kind>', 'embedded (local directory, in-process queue) or aws (sidecars, S3, SQS)').choices(['embedded', 'aws']).default('embedded'))
      .option('--bucket <name>', 'S3 bucket for the chunks (aws transport)')
      .option('--prefix <prefix>', 'key prefix in the bucket', 'cachewarm')
      .addOption(
        new Option('--populators <n|auto>', "populator processes started here: a number (0: an external fleet drains the queue), or auto[:MIN-MAX] to follow the queue's backlog")
          .argParser(populatorCount)
          .default({ min: 1, max: 8, chunksPerPopulator: 16 }, 'auto:1-8'),
      )
      .addOption(new Option('--populator-concurrency <n>', 'chunks each populator writes at once, 1 to 64').argParser(concurrency))
      .addOption(new Option('--sse <kind>', 'server-side encryption of the chunks').choices(['AES256', 'aws:kms']))
      .option('--kms-key-id <id>', 'KMS key for --sse aws:kms (default: the account\'s aws/s3 key)')
      .option('--sidecar-token-file <file>', 'file holding the bearer token of the dumper sidecars')
      .option(
        '--queue-url <url>',
        "a standing SQS queue the installation owns (its RedrivePolicy names its dead-letter queue), shared by every job: no queue is created or deleted (aws transport)",
      )
      .option('--retry-parked', "on a rerun, move the job's parked messages back to its queue first, after fixing what parked them (aws transport; the embedded one always offers parked chunks again on a rerun)")
      .addOption(new Option('--max-bytes <size>', 'bytes per second each sidecar uploads, 1KiB to 1TiB (default: unlimited)').argParser(byteSize(BOUNDS.maxBytes))),
  );
  return command;
}

/** What `warmDistributed` needs from the command line, checked; the clients are built here, once. */
export async function distributedSettings(
  opts: TransportOptions,
  log: Log,
): Promise<Pick<DistributedWarmOptions, 's3' | 'sqs' | 'bucket' | 'prefix' | 'sse' | 'sidecarToken' | 'startPopulator' | 'populators' | 'maxBytesPerNode' | 'queueUrl'>> {
  if (!opts.bucket) throw new CachewarmError('INVALID_ARGUMENT', '--transport aws needs --bucket');
  if (!opts.sidecarTokenFile) throw new CachewarmError('INVALID_ARGUMENT', '--transport aws needs --sidecar-token-file');
  if (opts.kmsKeyId && opts.sse !== 'aws:kms') throw new CachewarmError('INVALID_ARGUMENT', '--kms-key-id needs --sse aws:kms');
  const sse: S3Encryption | undefined =
    opts.sse === 'aws:kms' ? { type: 'aws:kms', kmsKeyId: opts.kmsKeyId } : opts.sse === 'AES256' ? { type: 'AES256' } : undefined;
  const { s3, sqs } = await awsClientsFrom(opts);
  return {
    s3,
    sqs,
    bucket: opts.bucket,
    prefix: opts.prefix,
    sse,
    sidecarToken: await readTokenFile(opts.sidecarTokenFile),
    populators: opts.populators,
    maxBytesPerNode: opts.maxBytes,
    queueUrl: opts.queueUrl,
    startPopulator: localPopulators({
      cliPath: fileURLToPath(new URL('./cachewarm.js', import.meta.url)),
      concurrency: opts.populatorConcurrency,
      endpoint: opts.endpoint,
      region: opts.region,
      // A worker's warnings and failures are the controller's; its routine lines are debug here.
      onLog: (id, line) => {
        const entry = childEntry(line);
        log({ ...entry, populator: id, level: entry.level === 'warn' || entry.level === 'error' ? entry.level : 'debug' });
      },
    }),
  };
}
