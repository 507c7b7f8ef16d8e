/**
 * Starts real memcached processes on free loopback ports: for the demo, the benchmark and the
 * tests. Every process started is killed when this process exits.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { connect, createServer, Socket, type AddressInfo } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';

export interface MemcachedProcess {
  readonly host: string;
  readonly port: number;
  readonly address: string;
  readonly pid: number;
  /** SIGTERM and wait for the exit; safe to call more than once. */
  stop(): Promise<void>;
  /** SIGKILL and wait for the exit. */
  kill(): Promise<void>;
}

export interface StartMemcachedOptions {
  port?: number;
  memoryMb?: number;
  threads?: number;
  extraArgs?: string[];
}

const HOST = '127.0.0.1';
const START_TIMEOUT_MS = 5_000;
const STOP_TIMEOUT_MS = 5_000;
const PORT_ATTEMPTS = 5;

const running = new Set<ChildProcess>();
let exitHookInstalled = false;

// A test that crashes or forgets stop() must not leave servers behind.
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of running) child.kill('SIGKILL');
  });
}

export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, HOST);
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  server.close();
  await once(server, 'close');
  return port;
}

export async function startMemcached(opts: StartMemcachedOptions = {}): Promise<MemcachedProcess> {
  const failures: string[] = [];
  for (let attempt = 1; attempt <= PORT_ATTEMPTS; attempt++) {
    const port = opts.port ?? (await freePort());
    const outcome = await tryStart(port, opts);
    if (outcome.kind === 'started') return outcome.process;
    // Between freePort() closing the port and memcached binding it, someone else may take it.
    if (outcome.kind === 'port-taken' && opts.port === undefined) {
      failures.push(outcome.message);
      continue;
    }
    throw new Error(outcome.message);
  }
  throw new Error(`memcached could not get a free port after ${PORT_ATTEMPTS} attempts:\n${failures.join('\n')}`);
}

export async function startMemcachedCluster(
  count: number,
  opts: StartMemcachedOptions = {},
): Promise<MemcachedProcess[]> {
  if (opts.port !== undefined && count > 1) {
    throw new Error('startMemcachedCluster: a fixed port cannot be shared by several servers');
  }
  const results = await Promise.allSettled(Array.from({ length: count }, () => startMemcached(opts)));
  const started = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    await Promise.all(started.map((m) => m.kill()));
    throw failed.reason;
  }
  return started;
}

type StartOutcome =
  | { kind: 'started'; process: MemcachedProcess }
  | { kind: 'port-taken'; message: string }
  | { kind: 'failed'; message: string };

async function tryStart(port: number, opts: StartMemcachedOptions): Promise<StartOutcome> {
  const bin = process.env['MEMCACHED_BIN'] || 'memcached';
  const args = ['-l', HOST, '-p', String(port), '-U', '0'];
  args.push('-m', String(opts.memoryMb ?? 64), '-t', String(opts.threads ?? 2));
  // memcached refuses to start as root unless told which user to run as.
  if (process.getuid?.() === 0) args.push('-u', 'root');
  args.push(...(opts.extraArgs ?? []));
  const command = `${bin} ${args.join(' ')}`;

  const child = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    if (stderr.length < 16_384) stderr += chunk;
  });
  let spawnError: Error | undefined;
  child.on('error', (error) => {
    spawnError = error;
    running.delete(child);
  });
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  running.add(child);
  installExitHook();
  void exited.then(() => running.delete(child));

  const describe = (what: string): string =>
    `${what} (${command})${stderr.trim() ? `; memcached stderr: ${stderr.trim()}` : ''}`;

  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (spawnError) {
      const missing = (spawnError as NodeJS.ErrnoException).code === 'ENOENT';
      const hint = missing ? '; install it (scripts/ensure-memcached.sh) or set MEMCACHED_BIN' : '';
      return { kind: 'failed', message: `could not run ${bin}: ${spawnError.message}${hint}` };
    }
    if (child.exitCode !== null || child.signalCode !== null) {
      await exited;
      const message = describe(`memcached exited with ${child.exitCode ?? child.signalCode} before serving`);
      return /address already in use|failed to listen/i.test(stderr)
        ? { kind: 'port-taken', message }
        : { kind: 'failed', message };
    }
    const probe = await probeServer(port);
    if (probe && probe.pid === child.pid) break;
    if (probe) {
      // Something else answered on this port: ours lost the race for it.
      await killAndWait(child, exited);
      const message = describe(`port ${port} is served by another memcached (pid ${probe.pid})`);
      return { kind: 'port-taken', message };
    }
    if (Date.now() >= deadline) {
      await killAndWait(child, exited);
      const message = describe(`memcached did not answer on ${HOST}:${port} within ${START_TIMEOUT_MS} ms`);
      return { kind: 'failed', message };
    }
    await delay(25);
  }

  // A forgotten server must not keep the test process alive; the exit hook reaps it.
  child.unref();
  if (child.stderr instanceof Socket) child.stderr.unref();

  const pid = child.pid!;
  return {
    kind: 'started',
    process: {
      host: HOST,
      port,
      address: `${HOST}:${port}`,
      pid,
      async stop() {
        if (isRunning(child)) {
          child.kill('SIGTERM');
          const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
          await waitFor(child, exited);
          clearTimeout(timer);
        }
      },
      async kill() {
        await killAndWait(child, exited);
      },
    },
  };
}

function isRunning(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

async function killAndWait(child: ChildProcess, exited: Promise<void>): Promise<void> {
  if (isRunning(child)) child.kill('SIGKILL');
  await waitFor(child, exited);
}

// The child is unref'd once started; hold the event loop open until its exit is seen.
async function waitFor(child: ChildProcess, exited: Promise<void>): Promise<void> {
  child.ref();
  try {
    await exited;
  } finally {
    child.unref();
  }
}

/** Asks for `version` and the server's pid; undefined while nothing answers on the port. */
async function probeServer(port: number): Promise<{ version: string; pid: number } | undefined> {
  return new Promise((resolve) => {
    const socket = connect({ host: HOST, port });
    let reply = '';
    const finish = (result: { version: string; pid: number } | undefined): void => {
      socket.destroy();
      resolve(result);
    };
    socket.setTimeout(1_000, () => finish(undefined));
    socket.on('error', () => finish(undefined));
    socket.on('close', () => finish(undefined));
    socket.on('connect', () => socket.write('version\r\nstats\r\n'));
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      reply += chunk;
      if (!reply.includes('END\r\n')) return;
      const version = /^VERSION (\S+)\r\n/.exec(reply)?.[1];
      const pid = /\r\nSTAT pid (\d+)\r\n/.exec(reply)?.[1];
      finish(version && pid ? { version, pid: Number(pid) } : undefined);
    });
  });
}
