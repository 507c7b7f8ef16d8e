import type { WarmPlanReport } from './warm-dry-run.js';
import { formatBytes, formatDuration, formatRate } from '../shared/units.js';
import type { SourceGuardReport, WarmProgress, WarmSummary } from './warm-summary.js';
import type { WarmReplicasSummary } from './warm-replicas.js';
import { describeSourceGuard } from '../dumper/source-guard.js';

/** One progress line: what was dumped and written so far, the rate, and the ETA. */
export function progressLine(p: WarmProgress): string {
  const seconds = Math.max(p.elapsedMs / 1000, 0.001);
  const handled = p.written.stored + p.written.existed + p.written.expired + p.written.failed;
  const rate = handled / seconds;
  const remaining = Math.max(0, p.expectedItems - handled - p.dumped.expired - p.dumped.gone - p.dumped.filtered);
  const eta = rate > 0 && p.expectedItems > 0 ? formatDuration((remaining / rate) * 1000) : '?';
  return [
    `dumped ${p.dumped.read.toLocaleString('en-US')} items (${formatBytes(p.dumped.bytesRead)})`,
    `stored ${p.written.stored.toLocaleString('en-US')} (+${p.written.existed.toLocaleString('en-US')} existed)`,
    `${formatRate(rate)} items, ${formatBytes(p.written.bytesWritten / seconds)}/s`,
    `queue ${p.queueDepth}`,
    `elapsed ${formatDuration(p.elapsedMs)}`,
    `eta ${eta}`,
    ...guardText(p.sourceGuards),
  ].join(' | ');
}

/** The most held-back source node's guard: the one a person watching the warm needs. */
function guardText(guards: readonly SourceGuardReport[] | undefined): string[] {
  if (!guards || guards.length === 0) return [];
  const slowest = guards.reduce((a, b) => (b.paceItemsPerSecond < a.paceItemsPerSecond ? b : a));
  const others = guards.length > 1 ? ` (slowest of ${guards.length})` : '';
  return [`${slowest.node}${others}: ${describeSourceGuard(slowest)}`];
}

function table(header: string[], rows: (string | number)[][]): string {
  const cells = [header, ...rows.map((r) => r.map((c) => (typeof c === 'number' ? c.toLocaleString('en-US') : c)))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] as string).length)));
  return cells
    .map((r) => r.map((c, i) => (i === 0 ? (c as string).padEnd(widths[i] as number) : (c as string).padStart(widths[i] as number))).join('  '))
    .join('\n');
}

/** The end-of-warm summary a person reads: per node, what happened to every item. */
export function summaryText(s: WarmSummary): string {
  if (s.skipped === 'already-warm') return alreadyWarmText(s);
  const seconds = Math.max(s.durationMs / 1000, 0.001);
  const stored = s.targetNodes.reduce((sum, n) => sum + n.stored, 0);
  const bytes = s.targetNodes.reduce((sum, n) => sum + n.bytesWritten, 0);
  const lines = [
    ...(s.skipped === 'already-complete' ? [`job ${s.jobId} was already complete: nothing redone. Its summary:`, ''] : []),
    `job ${s.jobId}: ${s.source} -> ${s.node ?? s.target} ${s.complete ? 'completed' : 'INCOMPLETE'} in ${formatDuration(s.durationMs)}` +
      ` (${formatRate(stored / seconds)} items, ${formatBytes(bytes / seconds)}/s written, peak RSS ${formatBytes(s.peakRssBytes)})` +
      (s.resumed ? ', resumed from an earlier run' : ''),
    '',
    'source nodes',
    table(
      ['node', 'listed', 'caughtUp', 'read', 'expired', 'gone', 'filtered', 'unsupported', 'bytesRead', 'dataChunks'],
      s.sourceNodes.map((n) => [n.node, n.listed, n.caughtUp, n.read, n.expired, n.gone, n.filtered, n.unsupported, formatBytes(n.bytesRead), n.dataChunks]),
    ),
    '',
    'target nodes',
    table(
      ['node', 'stored', 'existed', 'expired', 'tooLarge', 'outOfMemory', 'serverError', 'replaced', 'evictions', 'restarts', 'bytesWritten'],
      s.targetNodes.map((n) => [
        n.node,
        n.stored,
        n.existed,
        n.expired,
        n.tooLarge,
        n.outOfMemory,
        n.serverError,
        n.replaced ?? 0,
        n.evictions ?? '?',
        n.restarts ?? '?',
        formatBytes(n.bytesWritten),
      ]),
    ),
  ];
  const reconcile = reconcileLine(s);
  if (reconcile) lines.push(reconcile);
  for (const r of s.repairs ?? []) lines.push(`${r.pass}: ${r.reason}${r.nodes ? ` (wrote ${r.nodes.join(', ')})` : ''}`);
  if (s.skippedTooLarge) lines.push(`${s.skippedTooLarge.toLocaleString('en-US')} items too large for the target were left out (--skip-too-large)`);
  for (const p of s.parked) lines.push(`parked chunk ${p.chunk}: ${p.reason}`);
  const v = s.verification;
  if (v) {
    const n = (value: number): string => value.toLocaleString('en-US');
    lines.push(
      `read-back of up to ${n(v.sample === 'all' ? v.checked : v.sample)} keys per node: ${n(v.identical)} identical, ${n(v.missing)} missing, ${n(v.different)} different, ` +
        `${n(v.newerInTarget)} newer in the target, ${n(v.expired)} expiring, ${n(v.goneFromSource)} gone from the source${v.tooLarge ? `, ${n(v.tooLarge)} too large for the target (skipped)` : ''} (${formatDuration(v.durationMs)})`,
      ...v.examples.map((e) => `  ${e}`),
    );
  }
  if (s.problems && s.problems.length > 0) lines.push('', 'incomplete because:', ...s.problems.map((p) => `  - ${p}`));
  return lines.join('\n');
}

/** What the delete reconcile found, when it ran (unchecked items are among the problems). */
function reconcileLine(s: WarmSummary): string | undefined {
  const sum = (field: 'reconcileChecked' | 'reconcileRemoved' | 'reconcileKept' | 'reconcileGone'): number => s.targetNodes.reduce((total, n) => total + n[field], 0);
  const n = (value: number): string => value.toLocaleString('en-US');
  const checked = sum('reconcileChecked');
  if (checked === 0) return undefined;
  return (
    `deletes reconciled: ${n(checked)} items written looked up at the source; ${n(sum('reconcileRemoved'))} removed (deleted there meanwhile), ` +
    `${n(sum('reconcileKept'))} kept (changed in the target since written), ${n(sum('reconcileGone'))} already gone`
  );
}

/** Several targets filled from one dump: each target's summary (or failure), then which completed. */
export function groupText(g: WarmReplicasSummary): string {
  const parts = g.outcomes.map((o) => ('summary' in o ? summaryText(o.summary) : `job ${o.jobId}: ${g.source} -> ${o.target} FAILED: ${o.error.message} [${o.error.code}]`));
  const each = g.outcomes.map((o) => `${o.target} ${'summary' in o && o.summary.complete ? 'completed' : 'summary' in o ? 'INCOMPLETE' : 'FAILED'}`);
  return [...parts, `job ${g.jobId}: ${g.source} -> ${g.targets.join(', ')} from one dump in ${formatDuration(g.durationMs)}: ${each.join(', ')}`].join('\n\n');
}

/** A warm that found nothing to do: what was compared, and how to copy anyway. */
function alreadyWarmText(s: WarmSummary): string {
  const why = s.warmth?.reason ?? `${s.node ?? s.target} already holds what ${s.source} would copy`;
  return `${s.node ?? s.target} is already warm, nothing copied: ${why}. (--force copies anyway.)`;
}

/** A dry run's plan, as a person reads it. */
export function planText(plan: WarmPlanReport): string {
  const n = (value: number): string => value.toLocaleString('en-US');
  const others = plan.considered.filter((c) => c.replica !== plan.source && c.rejected).map((c) => `${c.replica}: ${c.rejected}`);
  const lines = [
    `dry run: ${plan.kind} warm of ${plan.target} from ${plan.source} (${n(plan.sourceItems)} items, ${formatBytes(plan.sourceBytes)})${others.length ? `; not ${others.join('; ')}` : ''}`,
    plan.warmth.alreadyWarm ? `${plan.warmth.subject} is already warm: a warm would copy nothing (--force copies anyway)` : `${plan.warmth.subject} is not warm: it holds ${n(plan.warmth.targetItems)} items`,
    '',
    table(
      ['target node', 'share', 'expected items', 'expected bytes', 'memory (-m)', 'holds now', 'fits'],
      plan.targetNodes.map((t) => [t.node, `${(t.share * 100).toFixed(1)} %`, t.expectedItems, formatBytes(t.expectedBytes), formatBytes(t.limitMaxBytes), formatBytes(t.bytes), t.fits ? 'yes' : 'NO']),
    ),
    '',
    `reading the source: ~${formatDuration(plan.estimate.readSeconds * 1000)} at ${n(plan.estimate.itemsPerSecondPerConnection)} items/s per connection ` +
      `(${n(plan.estimate.sampledKeys)} keys sampled); the writes and this machine's CPU may take longer`,
    'nothing was copied',
  ];
  return lines.join('\n');
}
