import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { describe, test } from 'node:test';
import { type NotifyOutcome, RestartNotifier } from '../dumper/restart-notifier.js';
import { backoffMs } from '../shared/backoff.js';
import { type RestartSignal, watchForRestarts } from '../dumper/restart-watcher.js';
import { systemClock } from '../shared/clock.js';
import { type CachewarmError, isCachewarmError } from '../shared/errors.js';
import { FakeClock } from './support/fake-clock.js';
import { freePort, startMemcached } from './support/memcached.js';
import { waitFor, within } from './support/wait.js';

const INTERVAL_MS = 5_000;
const NODE = 'a/127.0.0.1:11211';

/** Waits, in real time, for something the code under test does on its own I/O; fails the test if it does not. */
async function until(condition: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
  await waitFor(condition, { what, timeoutMs, intervalMs: 5 });
}

/**
 * A watch driven by a FakeClock: the watcher polls at once, then sleeps `INTERVAL_MS` on the
 * clock; a poll is over when it sleeps again. `nextPoll` moves time to the next poll and waits
 * for it (real I/O) to finish.
 */
function watch(port: number, overrides: { freshUptimeSeconds?: number; pollTimeoutMs?: number; onRestart?: (s: RestartSignal) => void } = {}) {
  const clock = new FakeClock();
  const stop = new AbortController();
  const signals: RestartSignal[] = [];
  const errors: Error[] = [];
  const done = watchForRestarts({
    memcached: { host: '127.0.0.1', port, label: NODE },
    node: NODE,
    replica: 'a',
    clock,
    intervalMs: INTERVAL_MS,
    ...(overrides.freshUptimeSeconds === undefined ? {} : { freshUptimeSeconds: overrides.freshUptimeSeconds }),
    ...(overrides.pollTimeoutMs === undefined ? {} : { pollTimeoutMs: overrides.pollTimeoutMs }),
    onRestart: overrides.onRestart ?? ((s) => signals.push(s)),
    onError: (e) => errors.push(e),
    signal: stop.signal,
  });
  const polled = (): Promise<void> => until(() => clock.pendingSleeps === 1, 'a poll to finish');
  return {
    clock,
    signals,
    errors,
    firstPoll: polled,
    async nextPoll(): Promise<void> {
      await clock.advance(INTERVAL_MS);
      await polled();
    },
    async stop(): Promise<void> {
      stop.abort();
      await within(done, { what: 'the watch to settle after its abort' });
    },
  };
}

interface StatsState {
  pid: number;
  uptime: number;
  time: number;
  items: number;
}

/**
 * A stand-in memcached that answers `stats` with scripted values, for what a real server
 * cannot be made to do on cue: keep its pid across a restart (memcached is pid 1 in a
 * container), report an old uptime, or stop answering and come back unchanged.
 */
async function scriptedServer(state: StatsState, port?: number) {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.setEncoding('latin1');
    socket.on('data', (text: string) => {
      if (!text.includes('stats\r\n')) return;
      const lines = Object.entries({ pid: state.pid, uptime: state.uptime, time: state.time, curr_items: state.items });
      socket.write(`${lines.map(([name, value]) => `STAT ${name} ${value}\r\n`).join('')}END\r\n`);
    });
  });
  server.listen(port ?? 0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as AddressInfo).port,
    async close(): Promise<void> {
      for (const socket of sockets) socket.destroy();
      server.close();
      await once(server, 'close');
    },
  };
}

describe('watchForRestarts: the sidecar notices its memcached restarted', () => {
  test('signals once after a real memcached is stopped and started again on the same port, with the new process', async () => {
    const port = await freePort();
    let server = await startMemcached({ port });
    const w = watch(port, { freshUptimeSeconds: 0 });
    try {
      await w.firstPoll();
      assert.equal(w.signals.length, 0);

      await server.stop();
      await w.nextPoll();
      await w.nextPoll();
      assert.equal(w.signals.length, 0, 'a server that does not answer is down, not restarted');
      assert.equal(w.errors.length, 1, 'an outage is reported once, not at every poll');
      assert.ok(isCachewarmError(w.errors[0], 'NODE_UNREACHABLE'));

      server = await startMemcached({ port });
      await w.nextPoll();
      assert.equal(w.signals.length, 1);
      const [signal] = w.signals;
      assert.ok(signal);
      const { uptimeSeconds, ...rest } = signal;
      assert.deepEqual(rest, { node: NODE, replica: 'a', pid: server.pid, items: 0, detectedAt: new Date(w.clock.now()).toISOString() });
      assert.ok(uptimeSeconds < 60, 'the signal carries the new process’s uptime');

      await w.nextPoll();
      assert.equal(w.signals.length, 1, 'the same restart is signalled once');
    } finally {
      await w.stop();
      await server.stop();
    }
  });

  test('signals nothing across polls of a steady server', async () => {
    const server = await startMemcached();
    // Fresh servers are signalled at first sight; 0 turns that off to watch the steady state.
    const w = watch(server.port, { freshUptimeSeconds: 0 });
    try {
      await w.firstPoll();
      for (let i = 0; i < 5; i++) await w.nextPoll();
      assert.deepEqual(w.signals, []);
      assert.deepEqual(w.errors, []);
    } finally {
      await w.stop();
      await server.stop();
    }
  });

  test('at first sight, signals a server younger than freshUptimeSeconds (started with the sidecar on a replaced machine)', async () => {
    const server = await startMemcached();
    const w = watch(server.port);
    try {
      await w.firstPoll();
      assert.equal(w.signals.length, 1);
      assert.equal(w.signals[0]?.pid, server.pid);
      await w.nextPoll();
      assert.equal(w.signals.length, 1);
    } finally {
      await w.stop();
      await server.stop();
    }
  });

  test('at first sight, does not signal a server that was up before the sidecar', async () => {
    const state = { pid: 4242, uptime: 4_000, time: 1_700_004_000, items: 90_000 };
    const server = await scriptedServer(state);
    const w = watch(server.port);
    try {
      await w.firstPoll();
      state.uptime += 5;
      state.time += 5;
      await w.nextPoll();
      assert.deepEqual(w.signals, []);
    } finally {
      await w.stop();
      await server.close();
    }
  });

  test('signals a restart that keeps the pid (memcached as pid 1 in a container): uptime went backwards', async () => {
    const state = { pid: 1, uptime: 4_000, time: 1_700_004_000, items: 90_000 };
    const server = await scriptedServer(state);
    const w = watch(server.port);
    try {
      await w.firstPoll();
      Object.assign(state, { uptime: 3, time: 1_700_004_005, items: 12 });
      await w.nextPoll();
      assert.deepEqual(
        w.signals.map((s) => ({ pid: s.pid, uptimeSeconds: s.uptimeSeconds, items: s.items })),
        [{ pid: 1, uptimeSeconds: 3, items: 12 }],
      );
    } finally {
      await w.stop();
      await server.close();
    }
  });

  test('signals a same-pid restart seen only after its uptime caught up, by the moved start time', async () => {
    const state = { pid: 1, uptime: 10, time: 1_700_000_010, items: 500 };
    const server = await scriptedServer(state);
    const w = watch(server.port, { freshUptimeSeconds: 0 });
    try {
      await w.firstPoll();
      // Restarted 30 s later and seen 20 s after that: uptime 20 > 10, but it started at +30.
      Object.assign(state, { uptime: 20, time: 1_700_000_050, items: 0 });
      await w.nextPoll();
      assert.equal(w.signals.length, 1);
    } finally {
      await w.stop();
      await server.close();
    }
  });

  test('a server unreachable for a while that answers again as the same process is no restart', async () => {
    const state = { pid: 777, uptime: 4_000, time: 1_700_004_000, items: 90_000 };
    let server = await scriptedServer(state);
    const port = server.port;
    const w = watch(port);
    try {
      await w.firstPoll();
      await server.close();
      await w.nextPoll();
      server = await scriptedServer(state, port);
      state.uptime += 10;
      state.time += 10;
      await w.nextPoll();
      assert.deepEqual(w.signals, []);
      assert.equal(w.errors.length, 1);
    } finally {
      await w.stop();
      await server.close();
    }
  });

  test('a server that accepts but does not answer is down after pollTimeoutMs, not a hung watch', async () => {
    const silent = net.createServer(() => undefined);
    silent.listen(0, '127.0.0.1');
    await once(silent, 'listening');
    const sockets: net.Socket[] = [];
    silent.on('connection', (s) => sockets.push(s));
    const w = watch((silent.address() as AddressInfo).port, { pollTimeoutMs: 100 });
    try {
      await w.firstPoll();
      assert.equal(w.errors.length, 1);
      assert.ok(isCachewarmError(w.errors[0], 'NODE_UNREACHABLE'));
      assert.match(w.errors[0]?.message ?? '', /no reply to stats within 100 ms/);
    } finally {
      await w.stop();
      for (const s of sockets) s.destroy();
      silent.close();
    }
  });

  test('a listener that throws is reported and the watch goes on', async () => {
    const state = { pid: 5, uptime: 2, time: 1_700_000_002, items: 0 };
    const server = await scriptedServer(state);
    const w = watch(server.port, {
      onRestart: () => {
        throw new Error('listener broke');
      },
    });
    try {
      await w.firstPoll();
      await w.nextPoll();
      assert.deepEqual(w.errors.map((e) => e.message), ['listener broke']);
    } finally {
      await w.stop();
      await server.close();
    }
  });

  test('settles when aborted, mid-sleep', async () => {
    const server = await startMemcached();
    const w = watch(server.port);
    try {
      await w.firstPoll();
      await w.stop();
      assert.equal(w.clock.pendingSleeps, 0);
    } finally {
      await server.stop();
    }
  });
});

// ---------------------------------------------------------------------------------------

interface Received {
  readonly method: string | undefined;
  readonly url: string | undefined;
  readonly authorization: string | undefined;
  readonly contentType: string | undefined;
  readonly body: unknown;
}

/** The controller's side, as a stand-in: answers each POST with the next scripted status. */
async function standInController(statuses: number[], { last = 200, retryAfterSeconds = undefined as number | undefined } = {}) {
  const received: Received[] = [];
  const server = http.createServer((req, res) => {
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (chunk: string) => (text += chunk));
    req.on('end', () => {
      received.push({
        method: req.method,
        url: req.url,
        authorization: req.headers.authorization,
        contentType: req.headers['content-type'],
        body: JSON.parse(text) as unknown,
      });
      const status = statuses.shift() ?? last;
      const retryAfter = retryAfterSeconds === undefined || status < 400 ? {} : { 'retry-after': String(retryAfterSeconds) };
      res.writeHead(status, { 'content-type': 'text/plain', ...retryAfter });
      res.end(status === 404 ? 'node a/10.9.9.9:11211 is not in the topology' : 'ok');
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    received,
    statuses,
    async close(): Promise<void> {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}

const restart = (node: string, pid: number): RestartSignal => ({
  node,
  replica: node.split('/')[0] ?? '',
  pid,
  uptimeSeconds: 2,
  items: 0,
  detectedAt: '2024-05-01T10:00:00.000Z',
});

describe('RestartNotifier: a restart signal reaches the controller', () => {
  test('retries through 503s (and 429, 408) until a 200, sending the bearer token and the signal as JSON', async () => {
    const controller = await standInController([503, 503, 429, 408]);
    const retries: number[] = [];
    const notifier = new RestartNotifier({
      controllerUrl: controller.url,
      token: 's3cret-token',
      clock: systemClock,
      initialBackoffMs: 5,
      maxBackoffMs: 20,
      onRetry: (_signal, error, attempt) => {
        assert.ok(isCachewarmError(error, 'TRANSPORT_FAILED'));
        retries.push(attempt);
      },
    });
    try {
      const signal = restart('a/10.0.0.1:11211', 1234);
      assert.deepEqual(await within(notifier.notify(signal), { what: 'delivery through the 503s' }), { status: 'acknowledged', attempts: 5 });
      assert.deepEqual(retries, [1, 2, 3, 4]);
      assert.equal(controller.received.length, 5);
      for (const request of controller.received) {
        assert.deepEqual(request, {
          method: 'POST',
          url: '/v1/signals/restart',
          authorization: 'Bearer s3cret-token',
          contentType: 'application/json',
          body: signal,
        });
      }
    } finally {
      await notifier.close();
      await controller.close();
    }
  });

  test('stops at a 404 (a node the controller does not know) and reports it, never retrying', async () => {
    const controller = await standInController([404]);
    const refused: CachewarmError[] = [];
    const clock = new FakeClock();
    const notifier = new RestartNotifier({
      controllerUrl: controller.url,
      token: 't',
      clock,
      initialBackoffMs: 5,
      onRefused: (_signal, error) => refused.push(error),
    });
    try {
      const outcome = await within(notifier.notify(restart('a/10.9.9.9:11211', 1)), { what: 'the outcome of a refused signal' });
      assert.equal(outcome.status, 'refused');
      assert.equal(refused.length, 1);
      assert.equal(refused[0]?.context['status'], 404);
      assert.match(refused[0]?.message ?? '', /404 "node a\/10\.9\.9\.9:11211 is not in the topology": refused/);
      assert.equal(clock.pendingSleeps, 0, 'no retry is waiting');
      await clock.advance(600_000);
      assert.equal(controller.received.length, 1, 'nor sent later');
    } finally {
      await notifier.close();
      await controller.close();
    }
  });

  test('retries while the controller is not listening yet, and delivers once it is', async () => {
    const port = await freePort();
    const refusedAttempts: number[] = [];
    // A trailing slash or a path prefix in the URL is kept, not doubled or dropped.
    const notifier = new RestartNotifier({
      controllerUrl: `http://127.0.0.1:${port}/cachewarm/`,
      token: 't',
      initialBackoffMs: 10,
      maxBackoffMs: 50,
      onRetry: (_signal, error, attempt) => {
        assert.match(error.message, /ECONNREFUSED/);
        refusedAttempts.push(attempt);
      },
    });
    const paths: (string | undefined)[] = [];
    const server = http.createServer((req, res) => {
      paths.push(req.url);
      res.end();
    });
    try {
      const outcome = notifier.notify(restart('a/10.0.0.1:11211', 9));
      await until(() => refusedAttempts.length >= 1, 'an attempt refused while nothing listens');
      server.listen(port, '127.0.0.1');
      await once(server, 'listening');
      const delivered = await within(outcome, { what: 'delivery once the controller listens' });
      assert.equal(delivered.status, 'acknowledged');
      assert.ok(delivered.status === 'acknowledged' && delivered.attempts === refusedAttempts.length + 1, JSON.stringify({ delivered, refusedAttempts }));
      assert.deepEqual(paths, ['/cachewarm/v1/signals/restart']);
    } finally {
      await notifier.close();
      server.closeAllConnections();
      server.close();
    }
  });

  test('a controller that does not answer in requestTimeoutMs is retried', async () => {
    let calls = 0;
    const server = http.createServer((_req, res) => {
      calls++;
      if (calls > 1) res.end();
      // the first request is left hanging
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const errors: string[] = [];
    const notifier = new RestartNotifier({
      controllerUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
      token: 't',
      // Long enough that an answered request is never cut short on a loaded machine.
      requestTimeoutMs: 1_000,
      initialBackoffMs: 5,
      onRetry: (_s, error) => errors.push(error.message),
    });
    try {
      assert.deepEqual(await within(notifier.notify(restart('a/10.0.0.1:11211', 9)), { what: 'delivery after the timed-out attempt' }), {
        status: 'acknowledged',
        attempts: 2,
      });
      assert.equal(errors.length, 1);
      assert.match(errors[0] ?? '', /no answer within 1000 ms/);
    } finally {
      await notifier.close();
      server.closeAllConnections();
      server.close();
    }
  });

  test('a newer signal for the same node supersedes an older one not yet delivered', async () => {
    const controller = await standInController([503]);
    const clock = new FakeClock();
    const notifier = new RestartNotifier({ controllerUrl: controller.url, token: 't', clock, random: () => 0 });
    try {
      const older = restart('a/10.0.0.1:11211', 100);
      const newer = restart('a/10.0.0.1:11211', 200);
      const elsewhere = restart('a/10.0.0.2:11211', 300);
      const olderOutcome = notifier.notify(older);
      await until(() => clock.pendingSleeps === 1, 'the first attempt to fail and wait for its retry');

      const newerOutcome = notifier.notify(newer);
      assert.deepEqual(await within(olderOutcome, { what: 'the older signal superseded' }), { status: 'superseded', by: newer });
      // another node's signal is its own: it does not replace this one
      assert.deepEqual(await within(notifier.notify(elsewhere), { what: "another node's signal delivered" }), { status: 'acknowledged', attempts: 1 });

      await clock.advance(60_000);
      assert.deepEqual(await within(newerOutcome, { what: 'the newer signal delivered' }), { status: 'acknowledged', attempts: 1 });
      assert.deepEqual(
        controller.received.map((r) => (r.body as RestartSignal).pid),
        [100, 300, 200],
      );
    } finally {
      await notifier.close();
      await controller.close();
    }
  });

  test('waits at least as long as a Retry-After asks', async () => {
    const controller = await standInController([503], { retryAfterSeconds: 10 });
    const clock = new FakeClock();
    const notifier = new RestartNotifier({ controllerUrl: controller.url, token: 't', clock, initialBackoffMs: 100 });
    try {
      const outcome = notifier.notify(restart('a/10.0.0.1:11211', 1));
      await until(() => clock.pendingSleeps === 1, 'the retry to be waiting');
      await clock.advance(9_999);
      assert.equal(controller.received.length, 1);
      assert.equal(clock.pendingSleeps, 1, 'still waiting');
      await clock.advance(1);
      assert.deepEqual(await within(outcome, { what: 'the retry after the Retry-After' }), { status: 'acknowledged', attempts: 2 });
    } finally {
      await notifier.close();
      await controller.close();
    }
  });

  test('a signal notified right after the previous one was acknowledged is delivered too', async () => {
    const controller = await standInController([]);
    const notifier = new RestartNotifier({ controllerUrl: controller.url, token: 't' });
    try {
      const node = 'a/10.0.0.1:11211';
      assert.equal((await within(notifier.notify(restart(node, 1)), { what: 'the first signal delivered' })).status, 'acknowledged');
      const second = notifier.notify(restart(node, 2));
      assert.deepEqual(await within(second, { what: 'the second signal delivered' }), { status: 'acknowledged', attempts: 1 });
      assert.deepEqual(controller.received.map((r) => (r.body as RestartSignal).pid), [1, 2]);
    } finally {
      await notifier.close();
      await controller.close();
    }
  });

  test('close() aborts pending retries, resolves their signals as closed, and is idempotent', async () => {
    const controller = await standInController([], { last: 503 });
    const clock = new FakeClock();
    const notifier = new RestartNotifier({ controllerUrl: controller.url, token: 't', clock });
    try {
      const outcome = notifier.notify(restart('a/10.0.0.1:11211', 1));
      await until(() => clock.pendingSleeps === 1, 'a retry to be waiting');
      const first = notifier.close();
      assert.equal(notifier.close(), first);
      await within(first, { what: 'close to finish' });
      const closed: NotifyOutcome = { status: 'closed' };
      assert.deepEqual(await within(outcome, { what: 'the pending signal to resolve as closed' }), closed);
      assert.equal(clock.pendingSleeps, 0);
      await clock.advance(600_000);
      assert.equal(controller.received.length, 1);
      assert.deepEqual(await notifier.notify(restart('a/10.0.0.1:11211', 2)), closed);
    } finally {
      await controller.close();
    }
  });

  test('backoff doubles from the initial delay, is capped, and is jittered down by at most half', () => {
    const options = (random: number) => ({ baseDelayMs: 500, maxDelayMs: 30_000, random: () => random });
    assert.deepEqual([1, 2, 3, 4, 7, 8, 100].map((a) => backoffMs(options(0.999_999), a)), [500, 1_000, 2_000, 4_000, 30_000, 30_000, 30_000]);
    assert.deepEqual([1, 2, 3].map((a) => backoffMs(options(0), a)), [250, 500, 1_000]);
    assert.deepEqual([1, 2, 3, 7].map((a) => backoffMs({ baseDelayMs: 100, maxDelayMs: 3_000 }, a)), [100, 200, 400, 3_000], 'no jitter without random');
  });

  test('refuses a token with a newline (from a file) and a URL that is not http(s)', () => {
    assert.throws(() => new RestartNotifier({ controllerUrl: 'http://c:1', token: 'abc\n' }), (e) => isCachewarmError(e, 'INVALID_ARGUMENT'));
    assert.throws(() => new RestartNotifier({ controllerUrl: 'c:8080', token: 'abc' }), (e) => isCachewarmError(e, 'INVALID_ARGUMENT'));
  });
});
