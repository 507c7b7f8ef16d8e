import { readFile } from 'node:fs/promises';
import { S3Client } from '@aws-sdk/client-s3';
import { SQSClient } from '@aws-sdk/client-sqs';
import { type Command, Option } from 'commander';
import { createSidecar, sidecarMemoryCeilingBytes } from '../dumper/sidecar-server.js';
import { systemClock } from '../shared/clock.js';
import { CachewarmError } from '../shared/errors.js';
import { parseAddress } from '../shared/topology.js';
import { EXIT, asArgument, byteSize, positiveInt } from './cli-support.js';

interface ServeOptions {
  memcached: { host: string; port: number };
  listen: { host: string; port: number };
  tokenFile: string;
  region?: string;
  endpoint?: string;
  fetchConcurrency: number;
  maxChunkSize: number;
}

/** `host:port`; port 0 asks for a free port (the `listening` log line names it). */
function listenAddress(text: string): { host: string; port: number } {
  if (text.endsWith(':0')) return { host: parseAddress(`${text.slice(0, -2)}:1`).host, port: 0 };
  return parseAddress(text);
}

/**
 * The token from its file: one trailing newline ignored. It goes in an HTTP header, so it is
 * refused unless it is printable ASCII without spaces (what `openssl rand -hex 32` writes).
 */
export async function readTokenFile(file: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new CachewarmError('INVALID_ARGUMENT', `cannot read --token-file ${file}: ${(error as Error).message}`, { file });
  }
  const token = text.replace(/\r?\n$/, '');
  if (token === '') throw new CachewarmError('INVALID_ARGUMENT', `--token-file ${file} is empty`, { file });
  if (!/^[\x21-\x7e]+$/.test(token)) {
    throw new CachewarmError('INVALID_ARGUMENT', `--token-file ${file}: the token must be one line of printable ASCII without spaces`, { file });
  }
  return token;
}

/** One JSON object per line on stderr, each stamped with the time. */
function logLine(event: Record<string, unknown>): void {
  process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), ...event })}\n`);
}

/** Resolves with the signal's name on the first SIGTERM or SIGINT. */
function stopSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (name: NodeJS.Signals): void => {
      process.off('SIGTERM', on);
      process.off('SIGINT', on);
      resolve(name);
    };
    process.on('SIGTERM', on);
    process.on('SIGINT', on);
  });
}

async function serve(opts: ServeOptions): Promise<void> {
  const token = await readTokenFile(opts.tokenFile);
  // Built once for the process: the SDK resolves credentials (env, profile, instance role)
  // and, without --region, the region the standard way.
  const common = { ...(opts.region && { region: opts.region }), ...(opts.endpoint && { endpoint: opts.endpoint }) };
  // A compatible service at an explicit endpoint seldom has per-bucket DNS names.
  const s3 = new S3Client({ ...common, ...(opts.endpoint && { forcePathStyle: true }) });
  const sqs = new SQSClient(common);
  const stopped = stopSignal();
  const sidecar = createSidecar({
    memcached: { ...opts.memcached, label: `${opts.memcached.host}:${opts.memcached.port}` },
    token,
    s3,
    sqs,
    clock: systemClock,
    fetchConcurrency: opts.fetchConcurrency,
    maxChunkSizeBytes: opts.maxChunkSize,
    log: logLine,
  });
  try {
    logLine({
      event: 'starting',
      memcached: `${opts.memcached.host}:${opts.memcached.port}`,
      fetchConcurrency: opts.fetchConcurrency,
      maxChunkSizeBytes: opts.maxChunkSize,
      memoryCeilingBytes: sidecarMemoryCeilingBytes({ fetchConcurrency: opts.fetchConcurrency, maxChunkSizeBytes: opts.maxChunkSize }),
    });
    try {
      await sidecar.listen(opts.listen.host, opts.listen.port);
    } catch (error) {
      throw new CachewarmError('INVALID_ARGUMENT', `cannot listen on ${opts.listen.host}:${opts.listen.port}: ${(error as Error).message}`);
    }
    const signal = await stopped;
    // The running dump's progress is in the store: a start request after the restart resumes it.
    logLine({ event: 'stopping', signal });
    await sidecar.close();
    process.exitCode = EXIT.ok;
  } finally {
    await sidecar.close();
    s3.destroy();
    sqs.destroy();
  }
}

export function registerDumperCommand(program: Command): void {
  const dumper = program.command('dumper').description("a source node's dumper");
  dumper
    .command('serve')
    .description('run the dumper sidecar: an authenticated HTTP API that dumps the local memcached node to S3 and SQS on request')
    .addOption(
      new Option('--memcached <host:port>', 'the memcached node to dump')
        .argParser(asArgument(parseAddress))
        .default(parseAddress('127.0.0.1:11211'), '127.0.0.1:11211'),
    )
    .addOption(
      new Option('--listen <host:port>', 'where the HTTP API listens (port 0: any free port)')
        .argParser(asArgument(listenAddress))
        .default(parseAddress('0.0.0.0:11299'), '0.0.0.0:11299'),
    )
    .requiredOption('--token-file <file>', 'file holding the bearer token clients must send (a trailing newline is ignored)')
    .option('--region <region>', 'AWS region (default: the SDK\'s, e.g. AWS_REGION)')
    .option('--endpoint <url>', 'S3 and SQS endpoint, for compatible services (S3 then uses path-style URLs)')
    .addOption(new Option('--fetch-concurrency <n>', 'key chunks read at once (a connection each)').argParser(positiveInt).default(2))
    .addOption(
      new Option('--max-chunk-size <size>', 'largest chunk size a start request may ask for: bounds the memory')
        .argParser(byteSize)
        .default(64 << 20, '64MiB'),
    )
    .action(serve);
}
