#!/usr/bin/env node
import { Command, Option } from 'commander';
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { runDemo } from '../controller/demo.js';
import { summaryText } from '../controller/report.js';
import { warmDistributed } from '../controller/warm-distributed.js';
import { warmReplica } from '../controller/warm-replica.js';
import { MemjsNodeWriter } from '../populator/memjs-node-writer.js';
import type { NodeWriter } from '../populator/node-writer.js';
import { systemClock } from '../shared/clock.js';
import { CachewarmError } from '../shared/errors.js';
import { type Topology, loadTopology } from '../shared/topology.js';
import { EXIT, byteSize, exitOnError, interruptSignal, positiveInt, progressPrinter } from './cli-support.js';
import { type TransportOptions, addTransportOptions, distributedSettings } from './aws-options.js';
import { registerDumperCommand } from './dumper-command.js';
import { registerPopulatorCommand } from './populator-command.js';

const defaultWorkDir = path.join(os.tmpdir(), 'cachewarm');

/**
 * The target writer `--writer` asks for: undefined for meta (the controller's default), a
 * MemjsNodeWriter for memjs, with SASL credentials when given. The password is read from a
 * file so it stays out of the process list.
 */
async function targetWriter(
  opts: { writer: 'meta' | 'memjs'; saslUser?: string; saslPasswordFile?: string; target: string },
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
  const labels = new Map((topology.replicas.get(opts.target)?.nodes ?? []).map((n) => [n.address, n.id]));
  return new MemjsNodeWriter({
    clock: systemClock,
    username: opts.saslUser,
    password,
    labelOf: (address) => labels.get(address) ?? address,
  });
}

const program = new Command()
  .name('cachewarm')
  .description('Warms memcached replicas: copies live items into a new or emptied replica, add-only.')
  .showHelpAfterError('(run with --help for usage)');

const warm = program.command('warm').description('start a warm');

addTransportOptions(warm
  .command('replica')
  .description('fill a replica with every live item of another replica')
  .requiredOption('--topology <file>', 'topology file (JSON or YAML)')
  .requiredOption('--target <replica>', 'the replica to fill')
  .option('--source <replica>', "the replica to copy from, or 'auto' for the fullest reachable one", 'auto')
  .option('--work-dir <dir>', 'where chunks and the job record are kept', defaultWorkDir)
  .option('--job-id <id>', 'name the job (default: generated)')
  // 4 MiB measured faster than 16 MiB on the embedded default (the chunks being written
  // stay in cache) and keeps the warm's memory near 300 MiB.
  .addOption(new Option('--chunk-size <size>', 'data chunk size, e.g. 16MiB').argParser(byteSize).default(4 << 20, '4MiB'))
  .addOption(new Option('--max-ops <n>', 'items per second read from each source node (default: unlimited)').argParser(positiveInt))
  .addOption(new Option('--fetch-concurrency <n>', 'key chunks read at once per source node').argParser(positiveInt).default(2))
  .addOption(new Option('--populate-concurrency <n>', 'chunks written at once').argParser(positiveInt).default(4))
  .option('--keep-chunks', 'keep chunks in the work directory after they are written')
  .option('--json', 'print the summary as one JSON object')
  .addOption(
    new Option('--writer <kind>', 'how items are written to the target: meta commands, or memjs (binary protocol, SASL)')
      .choices(['meta', 'memjs'])
      .default('meta'),
  )
  .option('--sasl-user <name>', 'SASL user for the target nodes (needs --writer memjs)')
  .option('--sasl-password-file <file>', "file holding that user's password (a trailing newline is ignored)"))
  .action(async (opts: TransportOptions & {
    topology: string;
    target: string;
    source: string;
    workDir: string;
    jobId?: string;
    chunkSize: number;
    maxOps?: number;
    fetchConcurrency: number;
    populateConcurrency: number;
    keepChunks?: boolean;
    json?: boolean;
    writer: 'meta' | 'memjs';
    saslUser?: string;
    saslPasswordFile?: string;
  }) => {
    const topology = await loadTopology(opts.topology);
    const printer = progressPrinter();
    const signal = interruptSignal();
    if (opts.transport === 'aws') {
      if (opts.writer !== 'meta') throw new CachewarmError('INVALID_ARGUMENT', '--writer memjs is for the embedded transport only');
      const summary = await warmDistributed({
        topology,
        target: opts.target,
        source: opts.source,
        jobId: opts.jobId,
        chunkSizeBytes: opts.chunkSize,
        maxOpsPerNode: opts.maxOps,
        keepChunks: opts.keepChunks === true,
        clock: systemClock,
        signal,
        onProgress: opts.json ? undefined : printer.onProgress,
        log: (line) => process.stderr.write(`${line}\n`),
        ...(await distributedSettings(opts)),
      }).finally(printer.done);
      process.stdout.write(opts.json ? `${JSON.stringify(summary)}\n` : `${summaryText(summary)}\n`);
      process.exitCode = summary.complete ? EXIT.ok : EXIT.incomplete;
      return;
    }
    const writer = await targetWriter(opts, topology);
    const summary = await warmReplica({
      topology,
      target: opts.target,
      source: opts.source,
      workDir: opts.workDir,
      jobId: opts.jobId,
      chunkSizeBytes: opts.chunkSize,
      maxOpsPerNode: opts.maxOps,
      fetchConcurrency: opts.fetchConcurrency,
      populateConcurrency: opts.populateConcurrency,
      keepChunks: opts.keepChunks === true,
      clock: systemClock,
      writer,
      signal,
      onProgress: opts.json ? undefined : printer.onProgress,
    }).finally(printer.done);
    process.stdout.write(opts.json ? `${JSON.stringify(summary)}\n` : `${summaryText(summary)}\n`);
    process.exitCode = summary.complete ? EXIT.ok : EXIT.incomplete;
  });

program
  .command('demo')
  .description('start a local demo cluster (two replicas on loopback), load it, warm one replica from the other, verify, stop')
  .addOption(new Option('--items <n>', 'items loaded into the source replica').argParser(positiveInt).default(100_000))
  .addOption(new Option('--value-size <size>', 'bytes per value').argParser(byteSize).default(512, '512B'))
  .addOption(new Option('--source-nodes <n>', 'nodes in the source replica').argParser(positiveInt).default(3))
  .addOption(new Option('--target-nodes <n>', 'nodes in the target replica').argParser(positiveInt).default(4))
  .addOption(new Option('--chunk-size <size>', 'data chunk size').argParser(byteSize).default(4 << 20, '4MiB'))
  .option('--work-dir <dir>', 'where chunks and the job record are kept', path.join(defaultWorkDir, 'demo'))
  .action(async (opts: { items: number; valueSize: number; sourceNodes: number; targetNodes: number; chunkSize: number; workDir: string }) => {
    const printer = progressPrinter();
    const { summary, verify } = await runDemo({
      items: opts.items,
      valueBytes: opts.valueSize,
      sourceNodes: opts.sourceNodes,
      targetNodes: opts.targetNodes,
      chunkSizeBytes: opts.chunkSize,
      workDir: opts.workDir,
      clock: systemClock,
      log: (line) => process.stderr.write(`${line}\n`),
      onProgress: printer.onProgress,
      signal: interruptSignal(),
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

program.parseAsync(process.argv).catch(exitOnError);
