import os from 'node:os';
import path from 'node:path';
import { type Command, Option } from 'commander';
import { createControllerServer } from '../controller/controller-server.js';
import { instanceWarmDecider } from '../controller/decide-instance-warm.js';
import { DEFAULT_MIN_SHARE } from '../controller/expected-share.js';
import { ACTIVE_STATES, type AbandonWarm, InstanceJobManager, type RunWarm } from '../controller/instance-jobs.js';
import { TopologyWatch } from '../controller/topology-watch.js';
import { warmInstance } from '../controller/warm-instance.js';
import { connectDirect } from '../shared/memcached/connect.js';
import { systemClock } from '../shared/clock.js';
import type { ProtectSource } from '../dumper/read-pace.js';
import { parseListenAddress } from '../shared/http-api.js';
import { type Log, withFields } from '../shared/log.js';
import { parseFractionInRange } from '../shared/units.js';
import { type TransportOptions, addTransportOptions, distributedSettings } from './aws-options.js';
import { cliLogging } from './cli-log.js';
import { BOUNDS, EXIT, asArgument, checkWorkDir, chunkSize, listenAll, metricsListenOption, protectSourceOption, readTokenFile, reconcileDeletesOption, stopSignal, wholeNumber } from './cli-support.js';

interface ServeOptions extends TransportOptions {
  topology: string;
  listen: { host: string; port: number };
  metricsListen?: { host: string; port: number };
  tokenFile: string;
  minShare: number;
  workDir: string;
  chunkSize: number;
  maxOps?: number;
  protectSource: ProtectSource;
  reconcileDeletes: 'on' | 'off';
  topologyPollMs: number;
}

const minShare = asArgument((text) => parseFractionInRange(text, { min: 0, max: 1 }));

/**
 * The warm each job runs: in this process (embedded), or through the sidecars, S3 and SQS; and
 * on S3+SQS, the removal of what a superseded job left there.
 */
async function warmRunner(opts: ServeOptions, log: Log): Promise<{ runWarm: RunWarm; abandonWarm?: AbandonWarm; close: () => void }> {
  const common = { chunkSizeBytes: opts.chunkSize, maxOpsPerNode: opts.maxOps, protectSource: opts.protectSource, reconcileDeletes: opts.reconcileDeletes === 'on', clock: systemClock };
  if (opts.transport === 'aws') {
    // Built once: the SDK clients and the sidecars' token serve every job. Loaded here only:
    // the SDK costs a few hundred milliseconds the embedded transport never needs.
    const settings = await distributedSettings(opts, log);
    const [{ warmDistributed }, { abandonJob }] = await Promise.all([import('../controller/warm-distributed.js'), import('../controller/abandon-job.js')]);
    return {
      runWarm: (node, topology, { jobId, signal, onProgress }) =>
        warmDistributed({
          ...common,
          ...settings,
          topology,
          target: node.replica,
          onlyNode: node,
          // Decided already, with --min-share (see the embedded runner below).
          force: true,
          jobId,
          signal,
          onProgress,
          log: withFields(log, { jobId }),
        }),
      abandonWarm: async (_node, topology, { jobId, supersededBy, signal }) => {
        const { queuesRemoved, objectsRemoved, record } = await abandonJob({ ...settings, clock: systemClock, topology, jobId, supersededBy, signal });
        return `${queuesRemoved} queues and ${objectsRemoved} objects removed${record ? `; the manifest kept, with ${record}` : ''}`;
      },
      close: () => {
        settings.s3.destroy();
        settings.sqs.destroy();
      },
    };
  }
  return {
    runWarm: (node, topology, { jobId, signal, onProgress }) =>
      warmInstance({
        ...common,
        topology,
        node: node.id,
        workDir: opts.workDir,
        jobId,
        signal,
        onProgress,
        // The controller has decided already, with its own --min-share: the warm's own
        // already-warm check would second-guess it with another threshold.
        force: true,
      }),
    close: () => undefined,
  };
}

async function serve(opts: ServeOptions): Promise<void> {
  const { log } = cliLogging();
  const token = await readTokenFile(opts.tokenFile);
  if (opts.transport !== 'aws') await checkWorkDir(opts.workDir);
  const stopped = stopSignal();
  const watch = await TopologyWatch.open({ file: opts.topology, clock: systemClock, intervalMs: opts.topologyPollMs, log });
  const { runWarm, abandonWarm, close: closeRunner } = await warmRunner(opts, log);
  // Bound late: a peer with a job of its own holds less than its share, and must not count
  // as healthy when its neighbour is judged.
  let jobs: InstanceJobManager | undefined;
  const decide = instanceWarmDecider({
    connect: connectDirect,
    minShare: opts.minShare,
    excludePeer: (peer) => jobs?.activeJob(peer.id) !== undefined,
  });
  jobs = new InstanceJobManager({ runWarm, abandonWarm, decide, clock: systemClock, log });
  const server = createControllerServer({ token, jobs, topology: () => watch.current, topologyFile: opts.topology, log });
  try {
    const nodes = [...watch.current.replicas.values()].reduce((sum, r) => sum + r.nodes.length, 0);
    log({ event: 'starting', topology: opts.topology, replicas: watch.current.replicas.size, nodes, transport: opts.transport, minShare: opts.minShare });
    await listenAll(server, opts.listen, opts.metricsListen);
    const signal = await stopped;
    // Cancelled warms leave nodes partly filled: the sidecars signal again after the
    // controller's restart only if the nodes restart, so a person re-triggers them (POST /v1/jobs).
    log({ event: 'stopping', signal, cancelling: jobs.list().filter((j) => ACTIVE_STATES.has(j.state)).map((j) => j.id) });
    process.exitCode = EXIT.ok;
  } finally {
    await server.close();
    await jobs.close();
    await watch.close();
    closeRunner();
    log({ event: 'stopped' });
  }
}

export function registerControllerCommand(program: Command): void {
  const controller = program.command('controller').description('the controller as a service');
  addTransportOptions(
    controller
      .command('serve')
      .description('take restart signals from the sidecars and warm restarted nodes that lost their share, from another replica')
      .requiredOption('--topology <file>', 'topology file (JSON or YAML); re-read when it changes')
      .addOption(
        new Option('--listen <host:port>', 'where the HTTP API listens (port 0: any free port)')
          .argParser(asArgument(parseListenAddress))
          .default(parseListenAddress('0.0.0.0:11300'), '0.0.0.0:11300'),
      )
      .addOption(metricsListenOption())
      .requiredOption('--token-file <file>', 'file holding the bearer token clients must send (a trailing newline is ignored)')
      .addOption(
        new Option('--min-share <fraction>', 'warm a node holding less than this fraction of its expected items')
          .argParser(minShare)
          .default(DEFAULT_MIN_SHARE),
      )
      .option('--work-dir <dir>', 'where chunks and job records are kept (embedded transport)', path.join(os.tmpdir(), 'cachewarm', 'controller'))
      .addOption(new Option('--chunk-size <size>', 'data chunk size, 64KiB to 1GiB').argParser(chunkSize).default(4 << 20, '4MiB'))
      .addOption(
        new Option('--max-ops <n>', 'items per second read from each source node (default: unlimited)').argParser(wholeNumber(BOUNDS.maxOps)),
      )
      .addOption(protectSourceOption())
      .addOption(reconcileDeletesOption())
      .addOption(
        new Option('--topology-poll-ms <ms>', 'how often the topology file is checked for changes')
          .argParser(wholeNumber(BOUNDS.topologyPollMs))
          .default(3_000)
          .hideHelp(),
      ),
  ).action(serve);
}
