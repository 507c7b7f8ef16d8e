/**
 * What a warm reports, for both transports, and the one rule that says whether it is
 * complete: every item the source held at its crawl, live, is in the target node its ring
 * names, or the summary says why not — and then the job is not complete.
 */
import { type DumpCounters, type WriteCounters, newWriteCounters } from '../shared/counters.js';
import { peakRssBytes } from '../shared/peak-memory.js';
import type { WarmthCheck } from './already-warm.js';
import type { WatchedNode } from './node-watch.js';
import { endpointOf } from './node-stats.js';
import type { Connect } from '../shared/memcached/connect.js';
import { statsAt } from '../shared/memcached/commands.js';
import type { NodeSpec } from '../shared/topology.js';
import type { VerifyReport } from './verify-replicas.js';
import type { JobRecord } from './job-journal.js';
import type { SourceGuardStatus } from '../dumper/source-guard.js';

export type JobKind = JobRecord['kind'];

export interface WarmProgress {
  readonly elapsedMs: number;
  /** Items the source held when the warm started: the denominator of the ETA. */
  readonly expectedItems: number;
  readonly dumped: DumpCounters;
  readonly written: WriteCounters;
  readonly queueDepth: number;
  /** Each protected source node's guard, while it is dumped (see dumper/read-pace.ts). */
  readonly sourceGuards?: readonly SourceGuardReport[] | undefined;
}

export interface SourceGuardReport extends SourceGuardStatus {
  readonly node: string;
}

/** The guards of the source nodes being dumped with protection on. */
export function guardReports(paces: ReadonlyMap<string, { status(): SourceGuardStatus | undefined }>): SourceGuardReport[] {
  return [...paces].flatMap(([node, pace]) => {
    const status = pace.status();
    return status ? [{ node, ...status }] : [];
  });
}

/** What became of one target node over the job, as its writers and its `stats` tell it. */
export interface TargetNodeReport extends WriteCounters {
  readonly node: string;
  /** Times another process took the node's place during the job (each lost what was written before). */
  readonly restarts?: number | undefined;
  /** Items the node evicted during the job. */
  readonly evictions?: number | undefined;
  /** The node's memory for items (`limit_maxbytes`) and what it held at the end (`bytes`). */
  readonly limitMaxBytes?: number | undefined;
  readonly bytes?: number | undefined;
  /** The node's item size limit (`item_size_max`), given when it refused items as too large. */
  readonly itemSizeMaxBytes?: number | undefined;
}

export interface SourceNodeReport extends DumpCounters {
  readonly node: string;
  /** The node restarted while it was dumped: keys its crawl listed were gone when read. */
  readonly restarted?: boolean | undefined;
  /** A restarted node's share was taken from this other replica instead. */
  readonly coveredBy?: string | undefined;
}

/** A pass of the job beyond its first copy: a restarted node refilled, refused items retried. */
export interface RepairReport {
  readonly pass: string;
  /** Target node ids the pass wrote (all of the job's when undefined). */
  readonly nodes?: readonly string[] | undefined;
  readonly reason: string;
}

export interface WarmSummary {
  readonly jobId: string;
  readonly source: string;
  readonly target: string;
  readonly durationMs: number;
  readonly sourceNodes: readonly SourceNodeReport[];
  readonly targetNodes: readonly TargetNodeReport[];
  readonly parked: readonly { chunk: string; reason: string }[];
  /** True exactly when `problems` is empty. */
  readonly complete: boolean;
  /** Every reason the job is not complete, each a sentence naming the node and the count. */
  readonly problems?: readonly string[] | undefined;
  /** The process's peak resident memory: what the warm's bounds are checked against. */
  readonly peakRssBytes: number;
  /** CPU time this process spent, user + system. */
  readonly cpuMs: number;
  /** Page faults this process took: on a VM, the hidden cost of touching fresh memory. */
  readonly minorPageFaults: number;
  readonly kind?: JobKind | undefined;
  /** An instance warm's node (`replica/address`); `target` is its replica. */
  readonly node?: string | undefined;
  /** This run went on with a job an earlier run had started (same job id and work dir). */
  readonly resumed?: boolean | undefined;
  /** Passes beyond the first copy, in the order they ran (this run's). */
  readonly repairs?: readonly RepairReport[] | undefined;
  /** Items too large for the target, left out because the user accepted it (`--skip-too-large`). */
  readonly skippedTooLarge?: number | undefined;
  /** The smallest of those (key + value bytes): the read-back expects items from this size on to be missing. */
  readonly smallestSkippedBytes?: number | undefined;
  /** The read-back of a sample of keys, source against target, when the copy was done. */
  readonly verification?: VerificationSummary | undefined;
  /**
   * Why nothing was copied: the target already held what the warm would copy, or the job
   * had completed in an earlier run (its summary is the one returned).
   */
  readonly skipped?: 'already-warm' | 'already-complete' | undefined;
  /** The already-warm check, when it was made (not with force, nor on a resumed job). */
  readonly warmth?: WarmthCheck | undefined;
}

/** Keys per target node a warm reads back at its end, by default. */
export const DEFAULT_VERIFY_SAMPLE = 2_000;

/** The end-of-warm check, as a summary carries it (the full report is `cachewarm verify`'s). */
export type VerificationSummary = Pick<
  VerifyReport,
  'sample' | 'checked' | 'identical' | 'missing' | 'different' | 'newerInTarget' | 'expired' | 'goneFromSource' | 'tooLarge' | 'ok' | 'examples' | 'durationMs'
>;

export function verificationSummary(r: VerifyReport): VerificationSummary {
  const { sample, checked, identical, missing, different, newerInTarget, expired, goneFromSource, tooLarge, ok, examples, durationMs } = r;
  return { sample, checked, identical, missing, different, newerInTarget, expired, goneFromSource, tooLarge, ok, examples, durationMs };
}

/** What the completion rule looks at. */
export interface CompletionInput {
  readonly sourceNodes: readonly SourceNodeReport[];
  readonly targetNodes: readonly TargetNodeReport[];
  readonly parked: readonly unknown[];
  /** Items too large for the target were accepted as skipped (`--skip-too-large`). */
  readonly skipTooLarge?: boolean | undefined;
  /** Target nodes whose share is known lost and was not refilled, with why. */
  readonly lost?: readonly string[] | undefined;
  /** The read-back at the end, when it was made. */
  readonly verification?: VerificationSummary | undefined;
}

/** Every reason the job is not complete; none means complete. */
export function problemsOf(input: CompletionInput): string[] {
  const problems: string[] = [];
  for (const n of input.sourceNodes) {
    if (n.restarted && !n.coveredBy) {
      const gone = n.gone > 0 ? ` (${count(n.gone)} keys of its crawl found gone)` : '';
      problems.push(`source node ${n.node} restarted during its dump: what its crawl listed and the copy had not read yet is lost${gone}, and no other full replica has it`);
    }
    if (n.unsupported > 0) problems.push(`source node ${n.node}: ${count(n.unsupported)} keys the text protocol cannot name were not copied`);
  }
  for (const n of input.targetNodes) {
    if (n.tooLarge > 0 && !input.skipTooLarge) {
      const limit = n.itemSizeMaxBytes ? `its item size limit is ${mib(n.itemSizeMaxBytes)} MiB; ` : '';
      problems.push(`target node ${n.node} refused ${count(n.tooLarge)} items as too large for it (${limit}--skip-too-large accepts that)`);
    }
    if (n.reconcileUnchecked > 0) {
      problems.push(
        `target node ${n.node}: ${count(n.reconcileUnchecked)} items written were never checked against their source for deletes ` +
          '(a source unreachable, restarted, or a writer without conditional deletes; --reconcile-deletes off skips the check)',
      );
    }
    if (n.outOfMemory > 0) problems.push(`target node ${n.node} refused ${count(n.outOfMemory)} items for want of memory`);
    if (n.serverError > 0) problems.push(`target node ${n.node} refused ${count(n.serverError)} items with a server error`);
    if ((n.evictions ?? 0) > 0) {
      const memory = n.limitMaxBytes ? ` (it holds ${mib(n.bytes ?? 0)} of ${mib(n.limitMaxBytes)} MiB)` : '';
      problems.push(`target node ${n.node} evicted ${count(n.evictions ?? 0)} items during the warm${memory}`);
    }
  }
  if (input.parked.length > 0) problems.push(`${count(input.parked.length)} chunks parked (see parked)`);
  problems.push(...(input.lost ?? []));
  const v = input.verification;
  if (v && !v.ok) {
    problems.push(`the read-back of ${count(v.checked)} sampled keys found ${count(v.missing)} missing and ${count(v.different)} different in the target`);
  }
  return problems;
}

/** A target node's write counters, with what its watch saw of it (when it was watched). */
export function targetNodeReport(node: string, counters: WriteCounters | undefined, watched?: WatchedNode, restarts?: number): TargetNodeReport {
  return {
    node,
    ...(counters ?? newWriteCounters()),
    ...(watched && { restarts, evictions: watched.evictions, limitMaxBytes: watched.latest.limitMaxBytes, bytes: watched.latest.bytes }),
  };
}

/**
 * The item size limit of every target node that refused items as too large, read from its
 * `stats settings` (`item_size_max`): what a person needs beside the count. A node that does
 * not answer (or answers only a SASL writer) is left without it.
 */
export async function itemSizeLimits(
  nodes: readonly NodeSpec[],
  tooLarge: (node: NodeSpec) => number,
  connect: Connect,
  signal?: AbortSignal,
): Promise<Map<string, number>> {
  const limits = new Map<string, number>();
  for (const node of nodes.filter((n) => tooLarge(n) > 0)) {
    const settings = await statsAt(endpointOf(node), connect, signal, 'settings').catch(() => undefined);
    const limit = Number(settings?.get('item_size_max'));
    if (limit > 0) limits.set(node.id, limit);
  }
  return limits;
}

/** The fields that say which warm a summary is of. */
export function identity(plan: { readonly kind: JobKind; readonly jobId: string; readonly source: string; readonly target: string; readonly node?: string | undefined }): Pick<WarmSummary, 'jobId' | 'source' | 'target' | 'kind' | 'node'> {
  return { jobId: plan.jobId, source: plan.source, target: plan.target, kind: plan.kind, node: plan.node };
}

/** This process's peak memory, CPU and page faults, for a summary. */
export function processUsage(): Pick<WarmSummary, 'peakRssBytes' | 'cpuMs' | 'minorPageFaults'> {
  const cpu = process.cpuUsage();
  return { peakRssBytes: peakRssBytes(), cpuMs: (cpu.user + cpu.system) / 1000, minorPageFaults: process.resourceUsage().minorPageFault };
}

const count = (value: number): string => value.toLocaleString('en-US');
const mib = (bytes: number): string => (bytes / 2 ** 20).toFixed(1);
