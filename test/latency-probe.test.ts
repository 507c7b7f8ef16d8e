import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { setImmediate as nextTurn, setTimeout as delay } from 'node:timers/promises';
import { MemcachedConnection } from '../shared/memcached/connection.js';
import { stats } from '../shared/memcached/commands.js';
import {
  LatencyProbe,
  LatencyWindow,
  WorkerLatencyProbe,
  percentile,
  startWorkerLatencyProbe,
  type LatencyReading,
} from '../dumper/latency-probe.js';
import { FakeClock } from './support/fake-clock.js';
import { startMemcached, type MemcachedProcess } from './support/memcached.js';
import { waitFor } from './support/wait.js';

// No assertion here compares a measured time with a fixed threshold, except where causality
// sets a floor: a request sent to a stopped server cannot be answered before it is continued,
// and a reply cannot be read while the event loop that reads it is blocked.

describe('LatencyWindow', () => {
  test('reports nearest-rank p50 and p99, and the max', () => {
    const window = new LatencyWindow();
    for (let micros = 1; micros <= 200; micros++) window.add(micros);
    const reading = window.read(0);
    assert.deepEqual(reading, { samples: 200, pending: 0, p50Micros: 100, p99Micros: 198, maxMicros: 200 });
    assert.equal(percentile([], 0.99), 0);
    assert.deepEqual(new LatencyWindow().read(0), { samples: 0, pending: 0, p50Micros: 0, p99Micros: 0, maxMicros: 0 });
  });

  test('a mark selects only the samples added after it', () => {
    const window = new LatencyWindow();
    window.add(5_000);
    const mark = window.mark();
    window.add(10);
    window.add(20);
    assert.equal(window.read(mark).maxMicros, 20);
    assert.equal(window.read(mark).samples, 2);
    assert.equal(window.read(window.mark()).samples, 0);
  });

  test('keeps a fixed number of the newest samples', () => {
    const window = new LatencyWindow(4);
    for (const micros of [900, 800, 1, 2, 3, 4]) window.add(micros);
    assert.deepEqual([...window.since(0)], [1, 2, 3, 4]);
    assert.equal(window.read(0).maxMicros, 4);
  });

  test('counts requests still unanswered at their age so far', () => {
    const window = new LatencyWindow();
    for (let i = 0; i < 10; i++) window.add(100);
    const reading = window.read(0, [250_000]);
    assert.equal(reading.samples, 11);
    assert.equal(reading.pending, 1);
    assert.equal(reading.maxMicros, 250_000);
    assert.equal(reading.p99Micros, 250_000);
  });
});

type Kind = 'in-process' | 'worker';
type AnyProbe = LatencyProbe | WorkerLatencyProbe;

/** The probe's latency over the next `ms`: what a guard takes as its baseline. */
async function measure(probe: AnyProbe, ms: number): Promise<LatencyReading> {
  const mark = probe.mark();
  await delay(ms);
  return probe.read(mark);
}

/** True once every thread of `pid` is stopped (Linux /proc). */
function stopped(pid: number): boolean {
  return readdirSync(`/proc/${pid}/task`).every((tid) => {
    const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'latin1');
    const state = stat[stat.lastIndexOf(')') + 2];
    return state === 'T' || state === 't';
  });
}

/** Blocks this thread's event loop for `ms`, measured on the monotonic clock. */
function busyWait(ms: number): void {
  const until = process.hrtime.bigint() + BigInt(ms) * 1_000_000n;
  while (process.hrtime.bigint() < until) {
    // spin
  }
}

async function holdFor(ms: number): Promise<void> {
  const until = process.hrtime.bigint() + BigInt(ms) * 1_000_000n;
  while (process.hrtime.bigint() < until) await delay(5);
}

describe('LatencyProbe against a real memcached', () => {
  let server: MemcachedProcess;
  const endpoint = (): { host: string; port: number } => ({ host: server.host, port: server.port });

  before(async () => {
    server = await startMemcached({ threads: 2 });
  });
  after(async () => {
    process.kill(server.pid, 'SIGCONT');
    await server.stop();
  });

  const start = (kind: Kind, options: { intervalMs?: number; connections?: number } = {}): Promise<AnyProbe> =>
    kind === 'in-process' ? LatencyProbe.start(endpoint(), options) : startWorkerLatencyProbe(endpoint(), options);

  for (const kind of ['in-process', 'worker'] as const) {
    test(`${kind}: measures round trips with sane percentiles, one connection per worker thread`, async () => {
      const probe = await start(kind, { intervalMs: 2 });
      try {
        assert.equal(probe.connections, 2, 'memcached runs 2 worker threads');
        const baseline = await measure(probe, 300);
        assert.ok(baseline.samples - baseline.pending > 0, JSON.stringify(baseline));
        assert.ok(baseline.p50Micros > 0);
        assert.ok(baseline.p50Micros <= baseline.p99Micros);
        assert.ok(baseline.p99Micros <= baseline.maxMicros);
      } finally {
        await probe.close();
      }
    });

    test(`${kind}: shows a higher p99 while the server is stopped than in its baseline`, async () => {
      const STALL_MS = 200;
      const probe = await start(kind, { intervalMs: 2 });
      try {
        const baseline = await measure(probe, 300);
        const mark = probe.mark();
        process.kill(server.pid, 'SIGSTOP');
        try {
          await waitFor(() => stopped(server.pid), { what: 'memcached stopped' });
          // Any reply the server wrote before it stopped has long been read by now: a request
          // still unanswered after this is one it will only answer once continued.
          await holdFor(50);
          await waitFor(() => probe.pendingSince().length > 0, { what: 'a probe waiting on the stopped server' });
          await holdFor(STALL_MS);
        } finally {
          process.kill(server.pid, 'SIGCONT');
        }
        const reading: LatencyReading = await waitFor(
          () => {
            const r = probe.read(mark);
            return r.maxMicros >= STALL_MS * 1000 && r.pending === 0 ? r : undefined;
          },
          { what: 'the stalled probe answered', detail: () => probe.read(mark) },
        );
        assert.ok(reading.p99Micros > baseline.p99Micros, `stalled ${JSON.stringify(reading)} vs baseline ${JSON.stringify(baseline)}`);
      } finally {
        await probe.close();
      }
    });
  }

  test('an in-process probe counts its own event loop stalls; the worker probe does not', async () => {
    const BLOCK_MS = 200;
    const inProcess = await LatencyProbe.start(endpoint(), { intervalMs: 0, connections: 1 });
    const worker = await startWorkerLatencyProbe(endpoint(), { intervalMs: 2, connections: 1 });
    try {
      await waitFor(() => inProcess.counters.answered > 10 && worker.read(0).samples > 10, { what: 'both probes running' });
      const inMark = inProcess.mark();
      const workerMark = worker.mark();
      while (inProcess.pendingSince().length === 0) await nextTurn();
      busyWait(BLOCK_MS); // the dumper parsing a huge batch, say
      const inReading = await waitFor(() => {
        const r = inProcess.read(inMark);
        return r.samples > r.pending ? r : undefined;
      }, { what: 'the in-process probe answered' });
      await delay(50); // the worker's reports of the blocked period arrive
      const workerReading = worker.read(workerMark);
      assert.ok(inReading.maxMicros >= BLOCK_MS * 1000, JSON.stringify(inReading));
      // The worker kept probing while this thread was blocked: most of its round trips are short.
      assert.ok(workerReading.samples > 2, JSON.stringify(workerReading));
      assert.ok(workerReading.p50Micros < inReading.maxMicros, `worker ${JSON.stringify(workerReading)}`);
    } finally {
      await inProcess.close();
      await worker.close();
    }
  });

  test('paces itself on the injected clock', async () => {
    const clock = new FakeClock();
    const probe = await LatencyProbe.start(endpoint(), { clock, connections: 1, intervalMs: 10 });
    try {
      await waitFor(() => probe.counters.answered === 1 && clock.pendingSleeps === 1, { what: 'the first probe answered' });
      await delay(50);
      assert.equal(probe.counters.answered, 1, 'no new probe while the clock stands still');
      await clock.advance(10);
      await waitFor(() => probe.counters.answered === 2, { what: 'the second probe' });
    } finally {
      await probe.close();
    }
  });

  test('mg probes count as get misses on the node, mn probes do not', async () => {
    const conn = await MemcachedConnection.connect(endpoint());
    const misses = async (): Promise<number> => Number((await stats(conn)).get('get_misses'));
    try {
      for (const command of ['mg', 'mn'] as const) {
        const probe = await LatencyProbe.start(endpoint(), { command, connections: 1, intervalMs: 1 });
        const before = await misses();
        await waitFor(() => probe.counters.answered >= 10, { what: `${command} probes` });
        await probe.close();
        const grew = (await misses()) - before;
        if (command === 'mg') assert.ok(grew >= 10, `mg: ${grew} misses`);
        else assert.equal(grew, 0, 'mn');
      }
    } finally {
      conn.close();
    }
  });

  test('close() is idempotent, aborting the signal closes the probe, and an aborted signal refuses to start', async () => {
    for (const kind of ['in-process', 'worker'] as const) {
      const controller = new AbortController();
      const probe =
        kind === 'in-process'
          ? await LatencyProbe.start(endpoint(), { connections: 2, intervalMs: 1, signal: controller.signal })
          : await startWorkerLatencyProbe(endpoint(), { connections: 2, intervalMs: 1, signal: controller.signal });
      controller.abort();
      await probe.close();
      await probe.close();
      assert.equal(probe.closed, true, kind);
      const samples = probe.read(0).samples;
      await delay(30);
      assert.equal(probe.read(0).samples, samples, `${kind}: no probing after close`);
    }
    const aborted = AbortSignal.abort(new Error('warm cancelled'));
    await assert.rejects(LatencyProbe.start(endpoint(), { signal: aborted }), (e) => e === aborted.reason);
    await assert.rejects(startWorkerLatencyProbe(endpoint(), { signal: aborted }), (e) => e === aborted.reason);
  });
});
