import { type Command, Option } from 'commander';
import { RestartNotifier } from '../dumper/restart-notifier.js';
import { watchForRestarts } from '../dumper/restart-watcher.js';
import { systemClock } from '../shared/clock.js';
import { CachewarmError } from '../shared/errors.js';
import type { Log } from '../shared/log.js';
import { parseListenAddress } from '../shared/http-api.js';
import { parseAddress } from '../shared/topology.js';
import { addAwsConnectionOptions, awsClientsFrom } from './aws-options.js';
import { cliLogging } from './cli-log.js';
import { EXIT, asArgument, chunkSize, concurrency, listenAll, metricsListenOption, readTokenFile, stopSignal } from './cli-support.js';

interface ServeOptions {
  memcached: { host: string; port: number };
  listen: { host: string; port: number };
  metricsListen?: { host: string; port: number };
  tokenFile: string;
  region?: string;
  endpoint?: string;
  fetchConcurrency: number;
  maxChunkSize: number;
  node?: string;
  controller?: string;
  controllerTokenFile?: string;
}

async function serve(opts: ServeOptions): Promise<void> {
  const { log } = cliLogging();
  const token = await readTokenFile(opts.tokenFile);
  const watch = await restartWatchSettings(opts, log);
  const { s3, sqs } = await awsClientsFrom(opts);
  const { createSidecar, sidecarMemoryCeilingBytes } = await import('../dumper/sidecar-server.js');
  const stopped = stopSignal();
  const sidecar = createSidecar({
    memcached: { ...opts.memcached, label: `${opts.memcached.host}:${opts.memcached.port}` },
    token,
    s3,
    sqs,
    clock: systemClock,
    fetchConcurrency: opts.fetchConcurrency,
    maxChunkSizeBytes: opts.maxChunkSize,
    log,
  });
  try {
    log({
      event: 'starting',
      memcached: `${opts.memcached.host}:${opts.memcached.port}`,
      fetchConcurrency: opts.fetchConcurrency,
      maxChunkSizeBytes: opts.maxChunkSize,
      memoryCeilingBytes: sidecarMemoryCeilingBytes({ fetchConcurrency: opts.fetchConcurrency, maxChunkSizeBytes: opts.maxChunkSize }),
    });
    await listenAll(sidecar, opts.listen, opts.metricsListen);
    const watching = new AbortController();
    const watcher = watch && watchRestarts(opts.memcached, watch, log, watching.signal);
    const signal = await stopped;
    // The running dump's progress is in the store: a start request after the restart resumes it.
    log({ event: 'stopping', signal });
    watching.abort();
    await watcher;
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
  const serveCommand = dumper
    .command('serve')
    .description('run the dumper sidecar: an authenticated HTTP API that dumps the local memcached node to S3 and SQS on request')
    .addOption(
      new Option('--memcached <host:port>', 'the memcached node to dump')
        .argParser(asArgument(parseAddress))
        .default(parseAddress('127.0.0.1:11211'), '127.0.0.1:11211'),
    )
    .addOption(
      new Option('--listen <host:port>', 'where the HTTP API listens (port 0: any free port)')
        .argParser(asArgument(parseListenAddress))
        .default(parseAddress('0.0.0.0:11299'), '0.0.0.0:11299'),
    )
      .addOption(metricsListenOption())
    .requiredOption('--token-file <file>', 'file holding the bearer token clients must send (a trailing newline is ignored)')
    .option('--node <id>', "this node's id in the topology (`replica/host:port`): named in its restart signals")
    .option('--controller <url>', 'the controller service to send restart signals to (needs --node and --controller-token-file)')
    .option('--controller-token-file <file>', "file holding the controller's bearer token")
    .addOption(new Option('--fetch-concurrency <n>', 'key chunks read at once (a connection each), 1 to 64').argParser(concurrency).default(2))
    .addOption(
      new Option('--max-chunk-size <size>', 'largest chunk size a start request may ask for, 64KiB to 1GiB: bounds the memory')
        .argParser(chunkSize)
        .default(64 << 20, '64MiB'),
    );
  addAwsConnectionOptions(serveCommand).action(serve);
}

interface RestartWatchSettings {
  readonly node: string;
  readonly replica: string;
  readonly notifier: RestartNotifier;
}

/** `--controller`, `--node` and `--controller-token-file` go together: all or none. */
async function restartWatchSettings(opts: ServeOptions, log: Log): Promise<RestartWatchSettings | undefined> {
  const given = [opts.controller, opts.node, opts.controllerTokenFile].filter((v) => v !== undefined).length;
  if (given === 0) return undefined;
  if (given !== 3 || !opts.controller || !opts.node || !opts.controllerTokenFile) {
    throw new CachewarmError('INVALID_ARGUMENT', '--controller, --node and --controller-token-file go together');
  }
  const replica = opts.node.slice(0, opts.node.indexOf('/'));
  if (!replica) throw new CachewarmError('INVALID_ARGUMENT', `--node ${opts.node}: expected replica/host:port, as in the topology`);
  const token = await readTokenFile(opts.controllerTokenFile, '--controller-token-file');
  const notifier = new RestartNotifier({
    controllerUrl: opts.controller,
    token,
    onRetry: (signal, error, attempt, delayMs) => log({ event: 'restart-signal-retry', node: signal.node, attempt, delayMs, reason: error.message }),
    onRefused: (signal, error) => log({ event: 'restart-signal-refused', level: 'error', node: signal.node, reason: error.message }),
  });
  return { node: opts.node, replica, notifier };
}

/**
 * Watches the local memcached and tells the controller when it restarted (it came back
 * empty, so the controller may warm it). Runs until `signal` aborts.
 */
async function watchRestarts(memcached: { host: string; port: number }, watch: RestartWatchSettings, log: Log, signal: AbortSignal): Promise<void> {
  log({ event: 'watching-restarts', node: watch.node });
  try {
    await watchForRestarts({
      memcached: { ...memcached, label: watch.node },
      node: watch.node,
      replica: watch.replica,
      clock: systemClock,
      signal,
      onRestart: (restart) => {
        log({ event: 'memcached-restarted', ...restart });
        void watch.notifier.notify(restart).then((outcome) => log({ event: 'restart-signal', node: restart.node, outcome: outcome.status }));
      },
      onError: (error) => log({ event: 'memcached-watch', level: 'warn', reason: error.message }),
    });
  } finally {
    await watch.notifier.close();
  }
}
