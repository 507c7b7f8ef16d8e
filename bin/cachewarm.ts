#!/usr/bin/env node
import { Command, Option } from 'commander';
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { runDemo } from '../controller/demo.js';
import { groupText, planText, summaryText } from '../controller/report.js';
import { warmReplicas } from '../controller/warm-replicas.js';
import { planWarm } from '../controller/warm-dry-run.js';
import { DEFAULT_VERIFY_SAMPLE } from '../controller/warm-summary.js';
import { DEFAULT_ALREADY_WARM_RATIO, parseAlreadyWarmRatio } from '../controller/already-warm.js';
import { type WarmProgress, type WarmReplicaOptions, type WarmSummary, warmReplica } from '../controller/warm-replica.js';
import { MemjsNodeWriter } from '../populator/memjs-node-writer.js';
import type { NodeWriter } from '../populator/node-writer.js';
import { systemClock } from '../shared/clock.js';
import { routeProcessWarnings } from '../shared/process-warnings.js';
import type { ProtectSource } from '../dumper/read-pace.js';
import type { Log } from '../shared/log.js';
import { VERSION } from '../shared/version.js';
import { CachewarmError } from '../shared/errors.js';
import { type NodeSpec, type Topology, findNode, loadTopology } from '../shared/topology.js';
import {
  BOUNDS,
  CachewarmCommand,
  EXIT,
  JsonOutcome,
  asArgument,
  byteSize,
  checkWorkDir,
  chunkSize,
  commandOf,
  concurrency,
  exitOnError,
  handleCrashes,
  helpForSubcommands,
  interruptSignal,
  jsonRequested,
  progressPrinter,
  protectSourceOption,
  reconcileDeletesOption,
  verbosityOf,
  routeCommanderErrors,
  wholeNumber,
} from './cli-support.js';
import { addLoggingOptions, cliLogging } from './cli-log.js';
import { type TransportOptions, addTransportOptions, distributedSettings } from './aws-options.js';
import { registerControllerCommand } from './controller-command.js';
import { registerVerifyCommand } from './verify-command.js';
import { registerDumperCommand } from './dumper-command.js';
import { registerPopulatorCommand } from './populator-command.js';

const defaultWorkDir = path.join(os.tmpdir(), 'cachewarm');

/**
 * The target writer `--writer` asks for: undefined for meta (the controller's default), a
 * MemjsNodeWriter for memjs, with SASL credentials when given. The password is read from a
 * file so it stays out of the process list.
 */
async function targetWriter(
  opts: { writer: 'meta' | 'memjs'; saslUser?: string; saslPasswordFile?: string },
  topology: Topology,
): Promise<NodeWriter | undefined> {
  const sasl = opts.saslUser !== undefined || opts.saslPasswordFile !== undefined;
  if (opts.writer === 'meta') {
    if (sasl) throw new CachewarmError('INVALID_ARGUMENT', '--sasl-user and --sasl-password-file need --writer memjs');
    return undefined;
  }
  let password: string | undefined;
  if (sasl) {
    if (opts.saslUser === undefined || opts.saslPasswordFile === undefined) {
      throw new CachewarmError('INVALID_ARGUMENT', '--sasl-user and --sasl-password-file go together');
    }
    try {
      password = (await readFile(opts.saslPasswordFile, 'utf8')).replace(/\r?\n$/, '');
    } catch (error) {
      throw new CachewarmError('INVALID_ARGUMENT', `cannot read --sasl-password-file ${opts.saslPasswordFile}: ${(error as Error).message}`);
    }
    if (password === '') throw new CachewarmError('INVALID_ARGUMENT', `--sasl-password-file ${opts.saslPasswordFile} is empty`);
  }
  // A node's address belongs to one replica, so every node's id can label it, whatever is warmed.
  const labels = new Map([...topology.replicas.values()].flatMap((r) => r.nodes.map((n) => [n.address, n.id] as const)));
  return new MemjsNodeWriter({
    clock: systemClock,
    username: opts.saslUser,
    password,
    labelOf: (address) => labels.get(address) ?? address,
  });
}

// Bound late: the options given choose the log's format and level.
routeProcessWarnings((entry) => cliLogging().log(entry));

const program = new CachewarmCommand()
  .name('cachewarm')
  .description('Warms memcached replicas: copies live items into a new or emptied replica, add-only.')
  .version(VERSION, '-V, --version', 'print the version')
  .showHelpAfterError('(run with --help for usage)');
addLoggingOptions(program);

/** Under `--json`, a warm's one JSON object on stdout: its summary, or its failure. */
const jsonOutcome = new JsonOutcome();

const warm = program.command('warm').description('start a warm');

/** The options every `warm` command takes, after its own (what it warms). */
interface WarmCommandOptions extends TransportOptions {
  topology: string;
  source: string;
  workDir: string;
  jobId?: string;
  chunkSize: number;
  maxOps?: number;
  protectSource: ProtectSource;
  reconcileDeletes: 'on' | 'off';
  fetchConcurrency: number;
  populateConcurrency: number;
  keepChunks?: boolean;
  json?: boolean;
  writer: 'meta' | 'memjs';
  saslUser?: string;
  saslPasswordFile?: string;
  force?: boolean;
  alreadyWarmRatio: number;
  acceptEvictions?: boolean;
  skipTooLarge?: boolean;
  retryParked?: boolean;
  verifySample: number;
  dryRun?: boolean;
  quiet?: boolean;
  verbose?: boolean;
}

function addWarmOptions(command: Command): Command {
  return addTransportOptions(
    command
      .requiredOption('--topology <file>', 'topology file (JSON or YAML)')
      .option('--source <replica>', "the replica to copy from, or 'auto' for the fullest reachable other replica", 'auto')
      .option('--work-dir <dir>', 'where chunks and the job record are kept', defaultWorkDir)
      .option('--job-id <id>', 'name the job (default: generated); the same id and work dir resume it')
      // 4 MiB measured faster than 16 MiB on the embedded default (the chunks being written
      // stay in cache) and keeps the warm's memory near 300 MiB.
      .addOption(new Option('--chunk-size <size>', 'data chunk size, 64KiB to 1GiB, e.g. 16MiB').argParser(chunkSize).default(4 << 20, '4MiB'))
      .addOption(
        new Option('--max-ops <n>', 'items per second read from each source node, a cap over --protect-source (default: unlimited)').argParser(
          wholeNumber(BOUNDS.maxOps),
        ),
      )
      .addOption(protectSourceOption())
      .addOption(reconcileDeletesOption())
      .addOption(new Option('--fetch-concurrency <n>', 'key chunks read at once per source node, 1 to 64').argParser(concurrency).default(2))
      .addOption(new Option('--populate-concurrency <n>', 'chunks written at once, 1 to 64').argParser(concurrency).default(4))
      .option('--keep-chunks', 'keep chunks in the work directory after they are written')
      .option('--json', 'print the summary as one JSON object')
      .addOption(new Option('--quiet', 'say nothing on stderr but a failure (no progress, no job events)').conflicts('verbose'))
      .option('--verbose', 'a progress line every second, not every 10 s, when stderr is not a terminal')
      .option('--dry-run', "show the plan (source and why, what each target node would receive against its memory, a read-time estimate from a sample) and copy nothing")
      .option('--force', 'copy even when the target already looks warm')
      .option('--accept-evictions', 'start even when the target looks too small for what it would receive (its evictions still leave the job incomplete)')
      .addOption(
        new Option('--verify-sample <n>', 'keys per target node read back from source and target at the end; the warm completes only if they match (0: no check)')
          .argParser(wholeNumber(BOUNDS.warmVerifySample))
          .default(DEFAULT_VERIFY_SAMPLE),
      )
      .option('--skip-too-large', "leave out, and count, items larger than a target node's item size limit instead of holding them against the job")
      .addOption(
        new Option('--already-warm-ratio <r>', 'the target counts as warm, and nothing is copied, from this fraction of the expected items')
          .argParser(asArgument(parseAlreadyWarmRatio))
          .default(DEFAULT_ALREADY_WARM_RATIO),
      )
      .addOption(
        new Option('--writer <kind>', 'how items are written to the target: meta commands, or memjs (binary protocol, SASL)')
          .choices(['meta', 'memjs'])
          .default('meta'),
      )
      .option('--sasl-user <name>', 'SASL user for the target nodes (needs --writer memjs)')
      .option('--sasl-password-file <file>', "file holding that user's password (a trailing newline is ignored)"),
  );
}

/** What a `warm` command fills: a replica, or one node of it. */
interface WarmTarget {
  readonly replica: string;
  readonly node?: NodeSpec;
}

/**
 * Runs a warm on the transport asked for, prints the summary to stdout and sets the exit code:
 * 0 when the warm completed, or had nothing to do (already warm, job already complete). Under
 * `--json` a failure prints its JSON object too (the program's catch does, see below).
 */
async function runWarmCommand(opts: WarmCommandOptions, targetsIn: (topology: Topology) => readonly [WarmTarget, ...WarmTarget[]]): Promise<void> {
  if (opts.json) jsonOutcome.want(opts.jobId === undefined ? {} : { jobId: opts.jobId });
  // Checked before anything is opened: a bad work directory found mid-warm left connections open.
  if (opts.transport !== 'aws') await checkWorkDir(opts.workDir);
  const topology = await loadTopology(opts.topology);
  const targets = targetsIn(topology);
  const [target] = targets;
  const logging = cliLogging();
  const signal = interruptSignal(logging.log);
  if (opts.dryRun) {
    const plans = [];
    for (const { replica, node } of targets) {
      plans.push(
        await planWarm({
          topology,
          target: replica,
          only: node,
          otherTargets: targets.filter((t) => t.replica !== replica).map((t) => t.replica),
          source: opts.source,
          alreadyWarmRatio: opts.alreadyWarmRatio,
          maxOpsPerNode: opts.maxOps,
          fetchConcurrency: opts.fetchConcurrency,
          clock: systemClock,
          signal,
        }),
      );
    }
    // One JSON object: the plan, or with several targets `{ plans }`.
    if (opts.json) jsonOutcome.result(plans.length === 1 ? (plans[0] as object) : { plans });
    else process.stdout.write(`${plans.map(planText).join('\n\n')}\n`);
    return;
  }
  const printer = progressPrinter(logging, verbosityOf(opts));
  const common: CommonWarmOptions = {
    topology,
    source: opts.source,
    jobId: opts.jobId,
    chunkSizeBytes: opts.chunkSize,
    maxOpsPerNode: opts.maxOps,
    protectSource: opts.protectSource,
    reconcileDeletes: opts.reconcileDeletes === 'on',
    keepChunks: opts.keepChunks === true,
    clock: systemClock,
    signal,
    onProgress: opts.json ? undefined : printer.onProgress,
  };
  if (targets.length > 1) {
    const many = { targets: targets.map((t) => t.replica), onProgress: common.onProgress && ((t: string, p: WarmProgress) => printer.onProgress(p, t)) };
    const group = await (
      opts.transport === 'aws'
        ? (async () => {
            const { warmDistributedMany } = await import('../controller/warm-distributed-many.js');
            return warmDistributedMany({ ...(await awsOptions(opts, common, logging.log)), ...many });
          })()
        : warmReplicas({ ...(await embeddedOptions(opts, common)), ...many })
    ).finally(printer.done);
    if (opts.json) jsonOutcome.result(group);
    else process.stdout.write(`${groupText(group)}\n`);
    process.exitCode = group.complete ? EXIT.ok : EXIT.incomplete;
    return;
  }
  const summary = await (opts.transport === 'aws' ? warmOverAws(opts, target, common, logging.log) : warmEmbedded(opts, target, common)).finally(
    printer.done,
  );
  if (opts.json) jsonOutcome.result(summary);
  else process.stdout.write(`${summaryText(summary)}\n`);
  process.exitCode = summary.complete ? EXIT.ok : EXIT.incomplete;
}

/** What both transports take alike. */
type CommonWarmOptions = Pick<
  WarmReplicaOptions,
  'topology' | 'source' | 'jobId' | 'chunkSizeBytes' | 'maxOpsPerNode' | 'protectSource' | 'reconcileDeletes' | 'keepChunks' | 'clock' | 'signal' | 'onProgress'
>;

/** The embedded transport's options, whatever it fills. */
async function embeddedOptions(opts: WarmCommandOptions, common: CommonWarmOptions) {
  return {
    ...common,
    workDir: opts.workDir,
    fetchConcurrency: opts.fetchConcurrency,
    populateConcurrency: opts.populateConcurrency,
    writer: await targetWriter(opts, common.topology),
    force: opts.force === true,
    alreadyWarmRatio: opts.alreadyWarmRatio,
    acceptEvictions: opts.acceptEvictions === true,
    skipTooLarge: opts.skipTooLarge === true,
    verifySamplePerNode: opts.verifySample,
  };
}

async function warmEmbedded(opts: WarmCommandOptions, target: WarmTarget, common: CommonWarmOptions): Promise<WarmSummary> {
  return warmReplica({ ...(await embeddedOptions(opts, common)), target: target.replica, only: target.node });
}

async function warmOverAws(opts: WarmCommandOptions, target: WarmTarget, common: CommonWarmOptions, log: Log): Promise<WarmSummary> {
  // Loaded here: the AWS SDK costs a few hundred milliseconds the embedded transport never needs.
  const { warmDistributed } = await import('../controller/warm-distributed.js');
  return warmDistributed({ ...(await awsOptions(opts, common, log)), target: target.replica, onlyNode: target.node });
}

/** The S3+SQS transport's options, whatever it fills. */
async function awsOptions(opts: WarmCommandOptions, common: CommonWarmOptions, log: Log) {
  if (opts.writer !== 'meta') throw new CachewarmError('INVALID_ARGUMENT', '--writer memjs is for the embedded transport only');
  return {
    ...common,
    force: opts.force === true,
    alreadyWarmRatio: opts.alreadyWarmRatio,
    acceptEvictions: opts.acceptEvictions === true,
    skipTooLarge: opts.skipTooLarge === true,
    verifySamplePerNode: opts.verifySample,
    retryParked: opts.retryParked === true,
    log,
    ...(await distributedSettings(opts, log)),
  };
}

addWarmOptions(
  warm
    .command('replica')
    .description('fill a replica with every live item of another replica')
    .requiredOption('--target <replica[,replica...]>', 'the replica to fill; several, comma-separated, are filled from one dump of the source'),
).action((opts: WarmCommandOptions & { target: string }) =>
  runWarmCommand(opts, () => {
    const [first, ...more] = opts.target.split(',').map((name) => ({ replica: name.trim() }));
    return [first as WarmTarget, ...more];
  }),
);

addWarmOptions(
  warm
    .command('instance')
    .description("fill a restarted node with its share of another replica's items, writing to that node only")
    .requiredOption('--node <replica/host:port>', 'the node to fill, e.g. zone-b/10.0.1.7:11211'),
).action((opts: WarmCommandOptions & { node: string }) =>
  runWarmCommand(opts, (topology) => {
    // Resolved once, here: both transports take the node itself.
    const node = findNode(topology, opts.node);
    return [{ replica: node.replica, node }];
  }),
);

program
  .command('demo')
  .description('start a local demo cluster (two replicas on loopback), load it, warm one replica from the other, verify, stop')
  .addOption(new Option('--items <n>', 'items loaded into the source replica').argParser(wholeNumber(BOUNDS.demoItems)).default(100_000))
  .addOption(new Option('--value-size <size>', 'bytes per value').argParser(byteSize(BOUNDS.demoValueSize)).default(512, '512B'))
  .addOption(new Option('--source-nodes <n>', 'nodes in the source replica, 1 to 32').argParser(wholeNumber(BOUNDS.demoNodes)).default(3))
  .addOption(new Option('--target-nodes <n>', 'nodes in the target replica, 1 to 32').argParser(wholeNumber(BOUNDS.demoNodes)).default(4))
  .addOption(new Option('--chunk-size <size>', 'data chunk size, 64KiB to 1GiB').argParser(chunkSize).default(4 << 20, '4MiB'))
  .option('--work-dir <dir>', 'where chunks and the job record are kept', path.join(defaultWorkDir, 'demo'))
  .action(async (opts: { items: number; valueSize: number; sourceNodes: number; targetNodes: number; chunkSize: number; workDir: string }) => {
    await checkWorkDir(opts.workDir);
    const logging = cliLogging();
    const printer = progressPrinter(logging);
    const { summary, verify } = await runDemo({
      items: opts.items,
      valueBytes: opts.valueSize,
      sourceNodes: opts.sourceNodes,
      targetNodes: opts.targetNodes,
      chunkSizeBytes: opts.chunkSize,
      workDir: opts.workDir,
      clock: systemClock,
      log: logging.log,
      onProgress: printer.onProgress,
      signal: interruptSignal(logging.log),
    }).finally(printer.done);
    process.stdout.write(`${summaryText(summary)}\n\n`);
    process.stdout.write(
      `verify: ${verify.matched.toLocaleString('en-US')} of ${verify.checked.toLocaleString('en-US')} items identical on the node the target ring names` +
        ` (value, flags, expiry); missing ${verify.missing}, different ${verify.mismatched}\n`,
    );
    for (const example of verify.examples) process.stdout.write(`  ${example}\n`);
    const ok = summary.complete && verify.matched === verify.checked;
    process.exitCode = ok ? EXIT.ok : EXIT.incomplete;
  });

registerPopulatorCommand(program);

registerDumperCommand(program);

registerControllerCommand(program);

registerVerifyCommand(program);

helpForSubcommands(program);
addExamples(program);
// Set on every command, once all are registered: commander's errors exit 2 as `cachewarm: …`.
routeCommanderErrors(program);
handleCrashes(jsonOutcome);

/** A line or two of use in each command's help, as an operator would type it. */
function addExamples(root: Command): void {
  const examples: Record<string, string[]> = {
    'warm replica': [
      'cachewarm warm replica --topology cluster.json --target zone-c',
      'cachewarm warm replica --topology cluster.json --target zone-c --source zone-a --max-ops 20000 --job-id scale-up-1 --json',
      'CACHEWARM_TOPOLOGY=/etc/cachewarm/cluster.json cachewarm warm replica --target zone-c --transport aws --bucket B',
    ],
    'warm instance': ['cachewarm warm instance --topology cluster.json --node zone-b/10.0.1.7:11211'],
    verify: ['cachewarm verify --topology cluster.json --source zone-a --target zone-c --sample 5000'],
    'controller serve': ['cachewarm controller serve --topology cluster.json --listen 0.0.0.0:11300 --token-file /etc/cachewarm/controller-token'],
    'dumper serve': ['cachewarm dumper serve --memcached 127.0.0.1:11211 --listen 0.0.0.0:11299 --token-file /etc/cachewarm/token'],
    populator: ['cachewarm populator --queue-url https://sqs.us-east-1.amazonaws.com/123456789012/cachewarm-JOB'],
    demo: ['cachewarm demo --items 200000'],
  };
  for (const [path, lines] of Object.entries(examples)) {
    let command: Command | undefined = root;
    for (const name of path.split(' ')) command = command?.commands.find((c) => c.name() === name);
    command?.addHelpText('after', `\nExamples:\n${lines.map((line) => `  $ ${line}`).join('\n')}\n\nEvery option can also be set as CACHEWARM_<OPTION> (e.g. CACHEWARM_CHUNK_SIZE).`);
  }
}

program.parseAsync(process.argv).catch((error: unknown) => {
  // A warm refused while its options were parsed: under --json it still prints its one object.
  const command = commandOf(error);
  if (!jsonOutcome.wanted && command?.parent?.name() === 'warm' && jsonRequested(command)) jsonOutcome.want();
  jsonOutcome.failure(error);
  exitOnError(error);
});
