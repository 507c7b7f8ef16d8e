import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { WarmDecision } from '../controller/expected-share.js';
import { type AbandonWarm, type DecideWarm, type InstanceJobView, InstanceJobManager, type RunWarm, type WarmContext, compareRestarts } from '../controller/instance-jobs.js';
import type { WarmSummary } from '../controller/warm-summary.js';
import type { RestartSignal } from '../dumper/restart-watcher.js';
import { newDumpCounters, newWriteCounters } from '../shared/counters.js';
import { CachewarmError, abortReason } from '../shared/errors.js';
import { type NodeSpec, findNode, parseTopology } from '../shared/topology.js';
import { FakeClock, settle } from './support/fake-clock.js';
import { within } from './support/wait.js';

const topology = parseTopology(
  {
    replicas: {
      a: { nodes: [{ address: '10.0.0.1:11211' }, { address: '10.0.0.2:11211' }, { address: '10.0.0.3:11211' }] },
      b: { nodes: [{ address: '10.0.1.1:11211' }, { address: '10.0.1.2:11211' }, { address: '10.0.1.3:11211' }] },
    },
  },
  'jobs-test',
);
const B1 = findNode(topology, 'b/10.0.1.1:11211');
const B2 = findNode(topology, 'b/10.0.1.2:11211');

const WARM: WarmDecision = { warm: true, expectedItems: 1000, actualItems: 3, ratio: 0.003, reason: 'holds 3 of ~1,000 expected items (0.00 < 0.5): warm' };
const FULL: WarmDecision = { warm: false, expectedItems: 1000, actualItems: 990, ratio: 0.99, reason: 'holds 990 of ~1,000 expected items (0.99 >= 0.5): leave alone' };

function restart(node: NodeSpec, pid: number, uptimeSeconds: number, detectedAt = '2026-01-01T00:00:10.000Z'): RestartSignal {
  return { node: node.id, replica: node.replica, pid, uptimeSeconds, items: 0, detectedAt };
}

function summary(node: NodeSpec, jobId: string, stored: number, complete = true): WarmSummary {
  return {
    jobId,
    source: 'a',
    target: node.replica,
    durationMs: 5,
    sourceNodes: topology.replicas.get('a')!.nodes.map((n) => ({ node: n.id, ...newDumpCounters(), listed: stored, read: stored })),
    targetNodes: [{ node: node.id, ...newWriteCounters(), stored: stored * 3, failed: complete ? 0 : 1 }],
    parked: [],
    complete,
    peakRssBytes: 0,
    cpuMs: 0,
    minorPageFaults: 0,
  };
}

/** A warm the test finishes by hand; it rejects with the abort reason when its job is cancelled. */
interface PendingWarm {
  readonly node: NodeSpec;
  readonly context: WarmContext;
  finish(result: WarmSummary | Error): void;
  /** Resolves once the warm has seen its abort and rejected. */
  readonly aborted: Promise<void>;
}

function harness(options: { decide?: DecideWarm; abandonWarm?: AbandonWarm; keepFinishedJobs?: number; maxConcurrentWarms?: number } = {}) {
  const clock = new FakeClock(Date.parse('2026-01-01T00:01:00.000Z'));
  const warms: PendingWarm[] = [];
  const events: Record<string, unknown>[] = [];
  const decided: string[] = [];
  const runWarm: RunWarm = (node, _topology, context) =>
    new Promise<WarmSummary>((resolve, reject) => {
      let onAborted: () => void = () => undefined;
      const aborted = new Promise<void>((r) => (onAborted = r));
      context.signal.addEventListener('abort', () => {
        reject(abortReason(context.signal));
        onAborted();
      }, { once: true });
      warms.push({ node, context, aborted, finish: (result) => (result instanceof Error ? reject(result) : resolve(result)) });
    });
  const decide: DecideWarm =
    options.decide ??
    (async (node) => {
      decided.push(node.id);
      return WARM;
    });
  let ids = 0;
  const jobs = new InstanceJobManager({
    runWarm,
    decide,
    abandonWarm: options.abandonWarm,
    clock,
    log: (event) => events.push(event),
    keepFinishedJobs: options.keepFinishedJobs,
    maxConcurrentWarms: options.maxConcurrentWarms,
    newJobId: (node) => `job-${++ids}-${node.port}`,
  });
  return { clock, warms, events, decided, jobs };
}

/** A promise the test resolves or rejects by hand. */
function deferred<T>(): { promise: Promise<T>; resolve: (value: T) => void; reject: (error: Error) => void } {
  let resolve: (value: T) => void = () => undefined;
  let reject: (error: Error) => void = () => undefined;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** An AbandonWarm that records its calls and ends each as the test says. */
function abandoner(): { abandonWarm: AbandonWarm; calls: { jobId: string; supersededBy: string; node: string; done: ReturnType<typeof deferred<string>> }[] } {
  const calls: { jobId: string; supersededBy: string; node: string; done: ReturnType<typeof deferred<string>> }[] = [];
  const abandonWarm: AbandonWarm = (node, _topology, { jobId, supersededBy }) => {
    const done = deferred<string>();
    calls.push({ jobId, supersededBy, node: node.id, done });
    return done.promise;
  };
  return { abandonWarm, calls };
}

/** The job once it has ended; fails the test (instead of hanging it) if it does not. */
async function settled(jobs: InstanceJobManager, id: string): Promise<InstanceJobView> {
  const view = await within(jobs.whenSettled(id), { timeoutMs: 10_000, what: `end of job ${id}` });
  assert.ok(view, `job ${id} is kept`);
  return view;
}

describe('the instance job manager', () => {
  test('duplicate signals, a retried one and a manual request collapse into the one job under way', async () => {
    const { jobs, warms, decided } = harness();
    const first = jobs.submit(B1, topology, { kind: 'restart', restart: restart(B1, 4242, 3) });
    assert.equal(first.outcome, 'created');
    const again = jobs.submit(B1, topology, { kind: 'restart', restart: restart(B1, 4242, 3) });
    // The same process seen by a later poll: its uptime grew as much as the time did.
    const later = jobs.submit(B1, topology, { kind: 'restart', restart: restart(B1, 4242, 13, '2026-01-01T00:00:20.000Z') });
    const manual = jobs.submit(B1, topology, { kind: 'manual' });
    assert.deepEqual([again.outcome, later.outcome, manual.outcome], ['collapsed', 'collapsed', 'collapsed']);
    assert.deepEqual(new Set([first.job.id, again.job.id, later.job.id, manual.job.id]).size, 1);
    await settle();
    assert.equal(warms.length, 1, 'one warm');
    assert.deepEqual(decided, [B1.id], 'one decision');
    assert.equal(jobs.get(first.job.id)?.duplicates, 3);
    assert.equal(jobs.get(first.job.id)?.state, 'running');

    warms[0]!.context.onProgress({ elapsedMs: 1, expectedItems: 500, dumped: { ...newDumpCounters(), listed: 40 }, written: { ...newWriteCounters(), stored: 30 }, queueDepth: 0 });
    const live = jobs.get(first.job.id);
    assert.equal(live?.counters.expectedItems, 500);
    assert.equal(live?.counters.written.stored, 30, 'counters follow the progress');
    assert.equal(jobs.metrics().writtenByNode.get(B1.id)?.stored, 30);

    warms[0]!.finish(summary(B1, first.job.id, 100));
    const done = await settled(jobs, first.job.id);
    assert.equal(done.state, 'completed');
    assert.equal(done.source, 'a');
    assert.equal(done.counters.dumped.listed, 300, 'summed over the source nodes');
    assert.equal(done.counters.written.stored, 300);
    assert.equal(done.complete, true);
    assert.equal(jobs.metrics().writtenByNode.get(B1.id)?.stored, 300);

    const next = jobs.submit(B1, topology, { kind: 'restart', restart: restart(B1, 4242, 3) });
    assert.equal(next.outcome, 'created', 'once finished, a signal makes a new job');
  });

  test('a signal of an older process is stale and collapses; compareRestarts tells same, newer and older apart', () => {
    const seen = restart(B1, 100, 60, '2026-01-01T00:10:00.000Z');
    assert.equal(compareRestarts(seen, restart(B1, 100, 61, '2026-01-01T00:10:01.400Z')), 'same');
    assert.equal(compareRestarts(seen, restart(B1, 101, 5, '2026-01-01T00:10:30.000Z')), 'newer');
    assert.equal(compareRestarts(seen, restart(B1, 100, 5, '2026-01-01T00:10:30.000Z')), 'newer', 'same pid, later start: a container restart');
    assert.equal(compareRestarts(seen, restart(B1, 99, 600, '2026-01-01T00:10:00.000Z')), 'older');

    const { jobs } = harness();
    const first = jobs.submit(B1, topology, { kind: 'restart', restart: seen });
    const stale = jobs.submit(B1, topology, { kind: 'restart', restart: restart(B1, 99, 600, '2026-01-01T00:10:00.000Z') });
    assert.equal(stale.outcome, 'collapsed');
    assert.equal(stale.job.id, first.job.id);
  });

  test('a newer restart during a running warm cancels it and starts a fresh job once the old one has stopped', async () => {
    const { jobs, warms, events } = harness();
    const first = jobs.submit(B1, topology, { kind: 'restart', restart: restart(B1, 100, 2) });
    await settle();
    assert.equal(jobs.get(first.job.id)?.state, 'running');

    const second = jobs.submit(B1, topology, { kind: 'restart', restart: restart(B1, 200, 1, '2026-01-01T00:00:40.000Z') });
    assert.equal(second.outcome, 'superseded');
    assert.notEqual(second.job.id, first.job.id);
    assert.equal(jobs.activeJob(B1.id)?.id, second.job.id, 'the node has one job under way: the new one');

    await within(warms[0]!.aborted, { timeoutMs: 10_000, what: 'the superseded warm to see its abort' });
    const old = await settled(jobs, first.job.id);
    assert.equal(old.state, 'cancelled');
    assert.equal(old.supersededBy, second.job.id);
    assert.match(old.reason ?? '', new RegExp(`superseded by job ${second.job.id}: b/10\\.0\\.1\\.1:11211 restarted again \\(pid 200`));

    await settle();
    assert.equal(warms.length, 2, 'the fresh warm started');
    assert.equal(warms[1]!.context.jobId, second.job.id);
    warms[1]!.finish(summary(B1, second.job.id, 10));
    assert.equal((await settled(jobs, second.job.id)).state, 'completed');
    assert.deepEqual(
      events.filter((e) => e['node'] === B1.id && String(e['event']).startsWith('job-')).map((e) => `${e['event']} ${e['jobId']}`),
      [
        `job-created ${first.job.id}`,
        `job-started ${first.job.id}`,
        `job-created ${second.job.id}`,
        `job-superseded ${first.job.id}`,
        `job-finished ${first.job.id}`,
        `job-started ${second.job.id}`,
        `job-finished ${second.job.id}`,
      ],
    );
  });

  test('a node that holds its share is skipped with the reason, and no warm starts', async () => {
    const { jobs, warms, events } = harness({ decide: async () => FULL });
    const { job } = jobs.submit(B2, topology, { kind: 'restart', restart: restart(B2, 7, 1) });
    const done = await settled(jobs, job.id);
    assert.equal(done.state, 'skipped');
    assert.equal(done.reason, FULL.reason);
    assert.deepEqual(done.decision, FULL);
    assert.equal(warms.length, 0);
    assert.deepEqual(jobs.metrics().lastDecisions.get(B2.id)?.decision, FULL);
    assert.ok(events.some((e) => e['event'] === 'decision' && e['reason'] === FULL.reason && e['warm'] === false), 'the decision is logged');

    // By hand, the same node is warmed whatever the decision.
    const manual = jobs.submit(B2, topology, { kind: 'manual' });
    await settle();
    assert.equal(warms.length, 1);
    assert.equal(jobs.get(manual.job.id)?.state, 'running');
    assert.match(jobs.get(manual.job.id)?.reason ?? '', /^asked for by hand \(.*leave alone\)$/);
    warms[0]!.finish(summary(B2, manual.job.id, 1));
    assert.equal((await settled(jobs, manual.job.id)).state, 'completed');
  });

  test('failures are recorded with their error: the warm failing, the decision failing, an incomplete warm', async () => {
    let decideFails = false;
    const { jobs, warms, events } = harness({
      decide: async (node) => {
        if (decideFails) throw new CachewarmError('NODE_UNREACHABLE', `cannot judge ${node.id}: its stats cannot be read`, { node: node.id });
        return WARM;
      },
    });
    const a = jobs.submit(B1, topology, { kind: 'restart', restart: restart(B1, 1, 1) });
    await settle();
    warms[0]!.finish(new CachewarmError('SOURCE_UNAVAILABLE', 'no replica can serve as the source for b'));
    const failed = await settled(jobs, a.job.id);
    assert.equal(failed.state, 'failed');
    assert.deepEqual(failed.error, { code: 'SOURCE_UNAVAILABLE', message: 'no replica can serve as the source for b' });
    assert.ok(events.some((e) => e['event'] === 'job-failed' && e['jobId'] === a.job.id));

    const b = jobs.submit(B1, topology, { kind: 'restart', restart: restart(B1, 2, 1, '2026-01-01T00:00:30.000Z') });
    await settle();
    warms[1]!.finish(summary(B1, b.job.id, 5, false));
    const incomplete = await settled(jobs, b.job.id);
    assert.equal(incomplete.state, 'failed');
    assert.equal(incomplete.error?.code, 'JOB_FAILED');
    assert.match(incomplete.reason ?? '', /^incomplete: 1 items failed/);

    decideFails = true;
    const c = jobs.submit(B1, topology, { kind: 'restart', restart: restart(B1, 3, 1, '2026-01-01T00:00:50.000Z') });
    const undecided = await settled(jobs, c.job.id);
    assert.equal(undecided.state, 'failed');
    assert.equal(undecided.error?.code, 'NODE_UNREACHABLE');
    assert.equal(warms.length, 2, 'no warm without a decision');
    assert.equal(jobs.metrics().endedTotal.get('failed'), 3);
  });

  test('one warm at a time by default: the next node waits queued; close cancels both and refuses new jobs', async () => {
    const { jobs, warms } = harness();
    const one = jobs.submit(B1, topology, { kind: 'restart', restart: restart(B1, 1, 1) });
    const two = jobs.submit(B2, topology, { kind: 'restart', restart: restart(B2, 1, 1) });
    await settle();
    assert.equal(jobs.get(one.job.id)?.state, 'running');
    assert.equal(jobs.get(two.job.id)?.state, 'queued', 'decided to warm, waiting for the slot');
    assert.equal(warms.length, 1);
    assert.deepEqual(jobs.list().map((j) => j.id), [two.job.id, one.job.id], 'newest first');

    await within(Promise.all([jobs.close(), jobs.close()]), { timeoutMs: 10_000, what: 'close to finish' });
    assert.equal(jobs.get(one.job.id)?.state, 'cancelled');
    assert.equal(jobs.get(two.job.id)?.state, 'cancelled');
    assert.equal(jobs.get(one.job.id)?.reason, 'the controller is shutting down');
    assert.equal(warms.length, 1, 'the queued job never started');
    assert.throws(() => jobs.submit(B1, topology, { kind: 'manual' }), (error: unknown) => error instanceof CachewarmError && error.code === 'ABORTED');
  });

  test('finished jobs are kept up to the bound, oldest forgotten first', async () => {
    const { jobs } = harness({ decide: async () => FULL, keepFinishedJobs: 2 });
    const ids: string[] = [];
    for (let pid = 1; pid <= 3; pid++) {
      const { job } = jobs.submit(B1, topology, { kind: 'restart', restart: restart(B1, pid, 1, `2026-01-01T00:0${pid}:00.000Z`) });
      ids.push(job.id);
      await settled(jobs, job.id);
    }
    assert.equal(jobs.get(ids[0]!), undefined);
    assert.deepEqual(jobs.list().map((j) => j.id), [ids[2], ids[1]]);
    assert.equal(jobs.metrics().endedTotal.get('skipped'), 3, 'the totals are not bounded by the history');
  });

  test('a job superseded while it writes is stopped and its leftovers removed before its replacement decides; the replacement warms whatever the node holds', async () => {
    const { abandonWarm, calls } = abandoner();
    const { jobs, warms, decided, events } = harness({
      abandonWarm,
      // The node now holds its share: the superseded job's writes into the new process.
      decide: async (node) => {
        decided.push(node.id);
        return decided.length === 1 ? WARM : FULL;
      },
    });
    const first = jobs.submit(B1, topology, { kind: 'restart', restart: restart(B1, 100, 2) });
    await settle();
    assert.equal(jobs.get(first.job.id)?.state, 'running');
    const second = jobs.submit(B1, topology, { kind: 'restart', restart: restart(B1, 200, 1, '2026-01-01T00:00:40.000Z') });
    assert.equal(second.outcome, 'superseded');

    await within(warms[0]!.aborted, { timeoutMs: 10_000, what: 'the superseded warm to see its abort' });
    await settle();
    assert.deepEqual(calls.map((c) => [c.node, c.jobId, c.supersededBy]), [[B1.id, first.job.id, second.job.id]], 'its leftovers, once its warm stopped');
    assert.equal(jobs.get(first.job.id)?.state, 'running', 'not ended while its leftovers are being removed');
    assert.equal(decided.length, 1, 'the replacement waits for the removal');

    calls[0]!.done.resolve('2 queues and 14 objects removed');
    const old = await settled(jobs, first.job.id);
    assert.equal(old.state, 'cancelled');
    assert.deepEqual(old.cleanup, { done: true, detail: '2 queues and 14 objects removed' });
    assert.ok(events.some((e) => e['event'] === 'job-abandoned' && e['jobId'] === first.job.id && e['by'] === second.job.id));

    await settle();
    const fresh = jobs.get(second.job.id);
    assert.equal(fresh?.state, 'running', 'warmed, though the count says it holds its share');
    assert.equal(fresh?.decision?.warm, true);
    assert.equal(fresh?.decision?.actualItems, FULL.actualItems);
    assert.equal(fresh?.decision?.reason, `${FULL.reason}; overruled: it restarted while job ${first.job.id} was warming it, and what it holds may be that job's partial copy: warm`);
    warms[1]!.finish(summary(B1, second.job.id, 10));
    assert.equal((await settled(jobs, second.job.id)).state, 'completed');
  });

  test('a job superseded before its warm began leaves nothing to remove, and its replacement decides as usual', async () => {
    const { abandonWarm, calls } = abandoner();
    let b1Decisions = 0;
    const { jobs } = harness({ abandonWarm, decide: async (node) => (node.id === B1.id && ++b1Decisions > 1 ? FULL : WARM) });
    // B2's warm holds the one slot: B1's job waits queued, having written nothing.
    jobs.submit(B2, topology, { kind: 'restart', restart: restart(B2, 1, 1) });
    await settle();
    const first = jobs.submit(B1, topology, { kind: 'restart', restart: restart(B1, 100, 2) });
    await settle();
    assert.equal(jobs.get(first.job.id)?.state, 'queued');

    const second = jobs.submit(B1, topology, { kind: 'restart', restart: restart(B1, 200, 1, '2026-01-01T00:00:40.000Z') });
    assert.equal(second.outcome, 'superseded');
    const old = await settled(jobs, first.job.id);
    assert.equal(old.state, 'cancelled');
    assert.equal(old.cleanup, undefined);
    const fresh = await settled(jobs, second.job.id);
    assert.equal(fresh.state, 'skipped', 'the count is the node\'s own: nothing of ours is in it');
    assert.deepEqual(fresh.decision, FULL);
    assert.equal(calls.length, 0);
    await jobs.close();
    assert.equal(calls.length, 0, 'a job cancelled by the shutdown keeps what it made (it resumes)');
  });

  test('a replacement superseded in turn passes the overruling on; a failed removal is recorded and the warm goes on', async () => {
    const { abandonWarm, calls } = abandoner();
    const { jobs, warms, events } = harness({ abandonWarm, decide: async () => (warms.length === 0 ? WARM : FULL) });
    const first = jobs.submit(B1, topology, { kind: 'restart', restart: restart(B1, 100, 2) });
    await settle();
    const second = jobs.submit(B1, topology, { kind: 'restart', restart: restart(B1, 200, 1, '2026-01-01T00:00:40.000Z') });
    await within(warms[0]!.aborted, { timeoutMs: 10_000, what: 'the first warm to see its abort' });
    await settle();
    // The second job still waits for the first to let go when the node restarts once more.
    const third = jobs.submit(B1, topology, { kind: 'restart', restart: restart(B1, 300, 1, '2026-01-01T00:00:50.000Z') });
    assert.equal(third.outcome, 'superseded');
    calls[0]!.done.reject(new CachewarmError('NODE_BUSY', 'the dump of job x on a/10.0.0.1:11211 has not stopped 60 s after it was cancelled'));

    const old = await settled(jobs, first.job.id);
    assert.equal(old.state, 'cancelled');
    assert.deepEqual(old.cleanup, { done: false, detail: 'the dump of job x on a/10.0.0.1:11211 has not stopped 60 s after it was cancelled [NODE_BUSY]' });
    assert.ok(events.some((e) => e['event'] === 'job-abandon-failed' && e['jobId'] === first.job.id));
    const middle = await settled(jobs, second.job.id);
    assert.equal(middle.state, 'cancelled');
    assert.equal(middle.supersededBy, third.job.id);
    assert.equal(calls.length, 1, 'the second job never warmed: nothing of it to remove');

    await settle();
    const last = jobs.get(third.job.id);
    assert.equal(last?.state, 'running');
    assert.match(last?.decision?.reason ?? '', new RegExp(`overruled: it restarted while job ${first.job.id} was warming it`));
    warms[1]!.finish(summary(B1, third.job.id, 10));
    assert.equal((await settled(jobs, third.job.id)).state, 'completed');
  });
});
