import { type Command, Option } from 'commander';
import { type VerifyReport, verifyReplicas } from '../controller/verify-replicas.js';
import { systemClock } from '../shared/clock.js';
import { connectDirect } from '../shared/memcached/connect.js';
import { findNode, loadTopology } from '../shared/topology.js';
import { formatDuration, formatRate } from '../shared/units.js';
import { DEFAULT_VERIFY_SAMPLE } from '../controller/warm-summary.js';
import { cliLogging } from './cli-log.js';
import { BOUNDS, EXIT, interruptSignal, wholeNumber } from './cli-support.js';

interface VerifyCommandOptions {
  topology: string;
  source: string;
  target: string;
  node?: string;
  sample: number;
  all?: boolean;
  maxOps?: number;
  reverse: boolean;
  json?: boolean;
}



/**
 * `cachewarm verify --topology F --source A --target B`: compares the target replica with the
 * source as clients see them (see controller/verify-replicas.ts). Prints the report, as text
 * or one JSON object; exit 0 when nothing is missing or different, 1 otherwise. Errors thrown
 * here go to the program's exitOnError (2 for an unknown replica or node, a bad option).
 */
export function registerVerifyCommand(program: Command): void {
  program
    .command('verify')
    .description('compare a target replica with its source as clients see them: value, flags and expiry of a sample of keys per target node, or of every key')
    .requiredOption('--topology <file>', 'topology file (JSON or YAML)')
    .requiredOption('--source <replica>', 'the replica the target is compared with')
    .requiredOption('--target <replica>', 'the replica checked')
    .option('--node <replica/host:port>', 'check only the keys the target ring places on this node of the target (e.g. after an instance warm)')
    .addOption(
      new Option('--sample <n>', 'keys checked per target node, a uniform random sample').argParser(wholeNumber(BOUNDS.verifySample)).default(DEFAULT_VERIFY_SAMPLE).conflicts('all'),
    )
    .option('--all', 'check every key')
    .addOption(new Option('--max-ops <n>', 'items per second read from each source node (default: unlimited)').argParser(wholeNumber(BOUNDS.maxOps)))
    .option('--no-reverse', "skip the other direction: listing the target's keys for those the source no longer holds (deleted there, resurrected here)")
    .option('--json', 'print the report as one JSON object')
    .action(async (opts: VerifyCommandOptions) => {
      const topology = await loadTopology(opts.topology);
      const report = await verifyReplicas({
        topology,
        source: opts.source,
        target: opts.target,
        node: opts.node === undefined ? undefined : findNode(topology, opts.node),
        sample: opts.all ? 'all' : opts.sample,
        maxOpsPerNode: opts.maxOps,
        reverse: opts.reverse,
        connect: connectDirect,
        clock: systemClock,
        signal: interruptSignal(cliLogging().log),
      });
      process.stdout.write(`${formatVerifyReport(report, { json: opts.json === true })}\n`);
      process.exitCode = report.ok ? EXIT.ok : EXIT.incomplete;
    });
}

/** The report as printed: one JSON object, or the text a person reads. */
export function formatVerifyReport(report: VerifyReport, options: { readonly json: boolean }): string {
  return options.json ? JSON.stringify(report) : verifyReportText(report);
}

const n = (value: number): string => value.toLocaleString('en-US');

/** The short text report: verdict, counts, rates, per target node, and examples. */
export function verifyReportText(r: VerifyReport): string {
  const scope = r.sample === 'all' ? 'every key' : `a sample of up to ${n(r.sample)} keys per target node`;
  const lines = [
    `verify ${r.source} -> ${r.node ?? r.target} (${scope}): ${r.ok ? 'OK' : 'NOT OK'}`,
    `checked ${n(r.checked)} of ${n(r.listed)} keys listed in ${formatDuration(r.durationMs)}` +
      ` (${formatRate(r.keysPerSecond)} keys checked, ${formatRate(r.listedPerSecond)} listed)${r.sampled ? ', sampled' : ''}`,
    `identical ${n(r.identical)}, missing ${n(r.missing)}, different ${n(r.different)}, newer in target ${n(r.newerInTarget)}, expired ${n(r.expired)}` +
      `; gone from source ${n(r.goneFromSource)} (not checked)`,
  ];
  if (r.reverse) {
    lines.push(
      `the other way: ${n(r.reverse.checked)} of ${n(r.reverse.listed)} keys listed in the target looked up at the source; ` +
        `${n(r.reverse.notInSource)} only in the target (deleted at the source, left here)`,
    );
  }
  if (r.strays > 0 || r.unsupported > 0) {
    lines.push(`not checked: ${n(r.strays)} keys on a source node their ring does not name, ${n(r.unsupported)} keys the text protocol cannot name`);
  }
  const header = ['node', 'checked', 'identical', 'missing', 'different', 'newer', 'expired'];
  const rows = r.perNode.map((p) => [p.node, n(p.checked), n(p.identical), n(p.missing), n(p.different), n(p.newerInTarget), n(p.expired)]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] as string).length)));
  const line = (cells: string[]): string => `  ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] as number) : c.padStart(widths[i] as number))).join('  ')}`;
  lines.push('', line(header), ...rows.map(line));
  if (r.examples.length > 0) lines.push('', 'examples:', ...r.examples.map((e) => `  ${e}`));
  return lines.join('\n');
}
