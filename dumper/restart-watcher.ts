/**
 * The dumper sidecar's watch on its local memcached: notices when the server restarted (it
 * came back empty, or a replaced machine came up with an empty one) so the controller can
 * decide whether to warm it from another replica.
 *
 * It polls `stats`. A restart shows as a new process: a different `pid`, an `uptime` lower
 * than last seen, or a different start time (`time - uptime`, constant for one process;
 * it catches a restart under the same pid, as in a container where memcached is always
 * pid 1, even when polls are far enough apart for the new uptime to have caught up). A
 * server that does not answer is only "down": nothing is signalled until it answers again,
 * and then only if it is a new process, so a network blip or a sidecar restart is no signal.
 */
import { type Clock } from '../shared/clock.js';
import { CachewarmError, isCachewarmError } from '../shared/errors.js';
import { stats } from '../shared/memcached/commands.js';
import { type Endpoint, MemcachedConnection } from '../shared/memcached/connection.js';
import type { Connect } from '../shared/memcached/connect.js';

export interface RestartSignal {
  /** `replica/address`, as NodeSpec.id */
  readonly node: string;
  readonly replica: string;
  readonly pid: number;
  readonly uptimeSeconds: number;
  /** the server's `curr_items` when the restart was seen */
  readonly items: number;
  /** ISO 8601, from the watcher's clock */
  readonly detectedAt: string;
}

export interface WatchForRestartsOptions {
  readonly memcached: Endpoint;
  readonly node: string;
  readonly replica: string;
  readonly connect?: Connect | undefined;
  readonly clock: Clock;
  readonly intervalMs?: number | undefined;
  /**
   * At the first observation (the sidecar just started) the server counts as restarted only
   * if it is younger than this: the sidecar and memcached started together on a replaced
   * machine. An older server was there before the sidecar and has its data.
   */
  readonly freshUptimeSeconds?: number | undefined;
  /** A `stats` that gets no reply within this long counts as the server being down. */
  readonly pollTimeoutMs?: number | undefined;
  readonly onRestart: (signal: RestartSignal) => void;
  /**
   * Told when the server stops answering (once per outage, not at every poll), when its
   * `stats` cannot be read, and when onRestart throws.
   */
  readonly onError?: ((error: Error) => void) | undefined;
  readonly signal: AbortSignal;
}

export const DEFAULT_RESTART_POLL_INTERVAL_MS = 5_000;
export const DEFAULT_FRESH_UPTIME_SECONDS = 300;
const DEFAULT_POLL_TIMEOUT_MS = 2_000;
/** `time` and `uptime` are whole seconds; allow for reading them across a tick */
const START_TIME_SLACK_SECONDS = 1;

/** One answered `stats`: what identifies the running process, and how much it holds. */
export interface ServerObservation {
  readonly pid: number;
  readonly uptimeSeconds: number;
  /** unix seconds the process started (`time - uptime`) */
  readonly startedAtSeconds: number;
  readonly items: number;
}

/** Polls until `signal` aborts; resolves then (an abort is how it is stopped, not a failure). */
export async function watchForRestarts(options: WatchForRestartsOptions): Promise<void> {
  const intervalMs = options.intervalMs ?? DEFAULT_RESTART_POLL_INTERVAL_MS;
  const freshUptimeSeconds = options.freshUptimeSeconds ?? DEFAULT_FRESH_UPTIME_SECONDS;
  checkPositive(intervalMs, 'intervalMs');
  checkPositive(options.pollTimeoutMs ?? DEFAULT_POLL_TIMEOUT_MS, 'pollTimeoutMs');
  if (!(freshUptimeSeconds >= 0)) {
    throw new CachewarmError('INVALID_ARGUMENT', `freshUptimeSeconds must be 0 or more, got ${freshUptimeSeconds}`);
  }
  const { signal, clock } = options;
  let last: ServerObservation | undefined;
  let down = false;
  while (!signal.aborted) {
    const polled = await poll(options);
    if (signal.aborted) break;
    if (polled instanceof Error) {
      // A protocol error is worth hearing every time; an outage only when it starts.
      if (!down || !isCachewarmError(polled, 'NODE_UNREACHABLE')) options.onError?.(polled);
      down = isCachewarmError(polled, 'NODE_UNREACHABLE');
    } else {
      down = false;
      if (isRestart(last, polled, freshUptimeSeconds)) emit(options, polled);
      last = polled;
    }
    try {
      await clock.sleep(intervalMs, signal);
    } catch {
      break;
    }
  }
}

/**
 * Whether `now` is a different process than `before` (or, at the first observation, a
 * process young enough to have started with the sidecar).
 */
export function isRestart(
  before: ServerObservation | undefined,
  now: ServerObservation,
  freshUptimeSeconds: number,
): boolean {
  if (before === undefined) return now.uptimeSeconds < freshUptimeSeconds;
  return (
    now.pid !== before.pid ||
    now.uptimeSeconds < before.uptimeSeconds ||
    Math.abs(now.startedAtSeconds - before.startedAtSeconds) > START_TIME_SLACK_SECONDS
  );
}

/** Whether `now` is another process than the one recorded (nothing recorded: not known to be). */
export function isAnotherProcess(recorded: { readonly pid: number; readonly startedAtSeconds: number } | undefined, now: ServerObservation): boolean {
  return recorded !== undefined && isRestart({ ...now, ...recorded, uptimeSeconds: 0 }, now, 0);
}

function emit(options: WatchForRestartsOptions, seen: ServerObservation): void {
  const restart: RestartSignal = {
    node: options.node,
    replica: options.replica,
    pid: seen.pid,
    uptimeSeconds: seen.uptimeSeconds,
    items: seen.items,
    detectedAt: new Date(options.clock.now()).toISOString(),
  };
  try {
    options.onRestart(restart);
  } catch (error) {
    // The watch must outlive a failing listener: the next restart needs seeing too.
    options.onError?.(error instanceof Error ? error : new Error(String(error)));
  }
}

/** One `stats` on a connection of its own, as an observation or the error that prevented it. */
async function poll(options: WatchForRestartsOptions): Promise<ServerObservation | Error> {
  const endpoint = options.memcached;
  const label = endpoint.label ?? `${endpoint.host}:${endpoint.port}`;
  const timeoutMs = options.pollTimeoutMs ?? DEFAULT_POLL_TIMEOUT_MS;
  const connect = options.connect ?? ((e: Endpoint, s?: AbortSignal) => MemcachedConnection.connect(e, { signal: s }));
  const deadline = linkedDeadline(options.signal, timeoutMs);
  let conn: MemcachedConnection | undefined;
  try {
    conn = await connect(endpoint, deadline.signal);
    const open = conn;
    const closeOnAbort = (): void => open.close();
    if (deadline.signal.aborted) closeOnAbort();
    deadline.signal.addEventListener('abort', closeOnAbort, { once: true });
    return observation(label, await stats(conn));
  } catch (error) {
    if (deadline.timedOut()) {
      // The connection was closed by the deadline: say so, not "connection closed".
      return new CachewarmError('NODE_UNREACHABLE', `${label}: no reply to stats within ${timeoutMs} ms`, {
        node: label,
        timeoutMs,
      });
    }
    return error instanceof Error ? error : new Error(String(error));
  } finally {
    conn?.close();
    deadline.dispose();
  }
}

/**
 * An AbortSignal that fires when `outer` does or after `timeoutMs`. Built by hand rather
 * than with AbortSignal.any: the watch's signal lives for the life of the sidecar, and
 * Node 20 keeps every signal ever combined with it alive until it is collected.
 */
function linkedDeadline(
  outer: AbortSignal,
  timeoutMs: number,
): { signal: AbortSignal; timedOut: () => boolean; dispose: () => void } {
  const controller = new AbortController();
  let timedOut = false;
  const onOuterAbort = (): void => controller.abort(outer.reason);
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort(new CachewarmError('NODE_UNREACHABLE', `no reply within ${timeoutMs} ms`));
  }, timeoutMs);
  if (outer.aborted) onOuterAbort();
  else outer.addEventListener('abort', onOuterAbort, { once: true });
  return {
    signal: controller.signal,
    timedOut: () => timedOut,
    dispose: () => {
      clearTimeout(timer);
      outer.removeEventListener('abort', onOuterAbort);
    },
  };
}

/** The fields of `stats` that identify the process; a reply without them is a protocol error. */
export function observation(label: string, reply: ReadonlyMap<string, string>): ServerObservation | CachewarmError {
  const read = (name: string): number | undefined => {
    const text = reply.get(name);
    const value = text === undefined || !/^\d+$/.test(text) ? Number.NaN : Number(text);
    return Number.isSafeInteger(value) ? value : undefined;
  };
  const pid = read('pid');
  const uptimeSeconds = read('uptime');
  const timeSeconds = read('time');
  const items = read('curr_items');
  if (pid === undefined || uptimeSeconds === undefined || timeSeconds === undefined || items === undefined) {
    const shown = ['pid', 'uptime', 'time', 'curr_items']
      .map((name) => `${name}=${reply.get(name) ?? '(missing)'}`)
      .join(' ');
    return new CachewarmError('NODE_PROTOCOL', `${label}: stats lacks what identifies the process: ${shown}`, {
      node: label,
    });
  }
  return { pid, uptimeSeconds, startedAtSeconds: timeSeconds - uptimeSeconds, items };
}

function checkPositive(value: number, name: string): void {
  if (!(Number.isFinite(value) && value > 0)) {
    throw new CachewarmError('INVALID_ARGUMENT', `${name} must be a positive number of milliseconds, got ${value}`, {
      [name]: value,
    });
  }
}
