/**
 * Delivers the sidecar's restart signals to the controller. A restart the controller never
 * hears of is a node left empty, so a signal is retried (capped exponential backoff with
 * jitter) until the controller acknowledges it with a 2xx. Only a refusal (a 4xx other than
 * 408 and 429: a bad token, a node not in the controller's topology) stops the retries, since
 * sending the same request again would be refused again; it is reported instead. A
 * `Retry-After` (in seconds) from the controller lengthens the wait before the next attempt.
 *
 * Signals are kept per node: a newer signal for a node replaces one not yet delivered (the
 * controller needs the latest state of the server, not its history).
 */
import { type Backoff, backoffMs } from '../shared/backoff.js';
import { type Clock, systemClock } from '../shared/clock.js';
import { CachewarmError } from '../shared/errors.js';
import type { RestartSignal } from './restart-watcher.js';

export const RESTART_SIGNAL_PATH = '/v1/signals/restart';

export interface RestartNotifierOptions {
  /** e.g. `http://controller.internal:8080`; the signal goes to `<url>/v1/signals/restart` */
  readonly controllerUrl: string;
  /** sent as `Authorization: Bearer <token>` */
  readonly token: string;
  readonly fetch?: typeof fetch | undefined;
  /** sleeps between retries */
  readonly clock?: Clock | undefined;
  readonly requestTimeoutMs?: number | undefined;
  readonly initialBackoffMs?: number | undefined;
  readonly maxBackoffMs?: number | undefined;
  /** 0 ≤ random() < 1, for the jitter */
  readonly random?: (() => number) | undefined;
  /** the controller refused a signal for good; it will not be sent again */
  readonly onRefused?: ((signal: RestartSignal, error: CachewarmError) => void) | undefined;
  /** an attempt failed and will be retried after `delayMs` (for the log) */
  readonly onRetry?:
    | ((signal: RestartSignal, error: CachewarmError, attempt: number, delayMs: number) => void)
    | undefined;
}

export type NotifyOutcome =
  | { readonly status: 'acknowledged'; readonly attempts: number }
  | { readonly status: 'refused'; readonly error: CachewarmError }
  /** a newer signal for the same node replaced this one before the controller acknowledged it */
  | { readonly status: 'superseded'; readonly by: RestartSignal }
  /** the notifier was closed before the controller acknowledged it */
  | { readonly status: 'closed' };

export const DEFAULT_REQUEST_TIMEOUT_MS = 5_000;
export const DEFAULT_INITIAL_BACKOFF_MS = 500;
export const DEFAULT_MAX_BACKOFF_MS = 30_000;
const ERROR_BODY_CHARS = 200;
/** the newest undelivered signal of a node, and whoever waits on it */
interface Pending {
  readonly signal: RestartSignal;
  readonly settle: (outcome: NotifyOutcome) => void;
}

/**
 * `attempt` paces the backoff, and keeps growing when a newer signal replaces one that failed
 * (the controller is no more reachable for it); `tries` counts the attempts of one signal.
 */
interface Pacing {
  attempt: number;
  tries: number;
  previous: Pending | undefined;
}

/** The outcome of one POST: acknowledged, worth retrying, or refused for good. */
type Attempt =
  | { readonly kind: 'ack' }
  | { readonly kind: 'retry' | 'refused'; readonly error: CachewarmError; readonly retryAfterMs?: number };

export class RestartNotifier {
  private readonly url: string;
  private readonly fetch: typeof fetch;
  private readonly clock: Clock;
  private readonly closing = new AbortController();
  /** node → its newest undelivered signal */
  private readonly pending = new Map<string, Pending>();
  /** nodes whose delivery loop runs */
  private readonly delivering = new Set<string>();
  /** the running delivery loops, for close() to wait on */
  private readonly loops = new Set<Promise<void>>();
  private closed: Promise<void> | undefined;

  constructor(private readonly options: RestartNotifierOptions) {
    this.url = signalUrl(options.controllerUrl);
    checkToken(options.token);
    for (const name of ['requestTimeoutMs', 'initialBackoffMs', 'maxBackoffMs'] as const) {
      const value = options[name];
      if (value !== undefined && !(Number.isFinite(value) && value > 0)) {
        throw new CachewarmError('INVALID_ARGUMENT', `${name} must be a positive number, got ${value}`, { [name]: value });
      }
    }
    this.fetch = options.fetch ?? globalThis.fetch;
    this.clock = options.clock ?? systemClock;
  }

  /**
   * Sends `signal` until acknowledged, refused, superseded by a newer signal for the same
   * node, or the notifier is closed; resolves with which. Never rejects.
   */
  notify(signal: RestartSignal): Promise<NotifyOutcome> {
    if (this.closed !== undefined) return Promise.resolve({ status: 'closed' });
    return new Promise<NotifyOutcome>((settle) => {
      this.pending.get(signal.node)?.settle({ status: 'superseded', by: signal });
      this.pending.set(signal.node, { signal, settle });
      if (!this.delivering.has(signal.node)) {
        this.delivering.add(signal.node);
        const loop = this.deliver(signal.node).finally(() => this.loops.delete(loop));
        this.loops.add(loop);
      }
    });
  }

  /** Stops all retries; undelivered signals resolve as `closed`. Safe to call more than once. */
  close(): Promise<void> {
    if (this.closed === undefined) {
      this.closing.abort(new CachewarmError('ABORTED', 'restart notifier closed'));
      for (const { settle } of this.pending.values()) settle({ status: 'closed' });
      this.pending.clear();
      this.closed = Promise.all(this.loops).then(() => undefined);
    }
    return this.closed;
  }

  /** Sends a node's newest signal until none is left undelivered, or the notifier closes. */
  private async deliver(node: string): Promise<void> {
    const pacing: Pacing = { attempt: 0, tries: 0, previous: undefined };
    try {
      let sending: Pending | undefined;
      while ((sending = this.pending.get(node)) !== undefined && !this.closing.signal.aborted) {
        await this.sendOnce(node, sending, pacing);
      }
    } finally {
      // Released in the same step that found nothing left (no await in between): a notify()
      // after it starts a loop of its own instead of counting on this one, which is ending.
      this.delivering.delete(node);
    }
  }

  /** One attempt at a node's newest signal, and the wait before the next if it failed. */
  private async sendOnce(node: string, sending: Pending, pacing: Pacing): Promise<void> {
    pacing.attempt++;
    pacing.tries = sending === pacing.previous ? pacing.tries + 1 : 1;
    pacing.previous = sending;
    const result = await this.post(sending.signal);
    if (this.closing.signal.aborted) return;
    if (result.kind === 'retry') {
      // Retry-After can only lengthen the wait: a controller answering "0" must not get a hot loop.
      const delayMs = Math.max(backoffMs(this.backoff(), pacing.attempt), result.retryAfterMs ?? 0);
      report(() => this.options.onRetry?.(sending.signal, result.error, pacing.attempt, delayMs));
      await this.clock.sleep(delayMs, this.closing.signal).catch(() => undefined);
      return;
    }
    // A newer signal that arrived during the request is still to be sent, from attempt 1.
    if (this.pending.get(node) === sending) this.pending.delete(node);
    pacing.attempt = 0;
    if (result.kind === 'ack') {
      sending.settle({ status: 'acknowledged', attempts: pacing.tries });
    } else {
      sending.settle({ status: 'refused', error: result.error });
      report(() => this.options.onRefused?.(sending.signal, result.error));
    }
  }

  private backoff(): Backoff {
    return {
      baseDelayMs: this.options.initialBackoffMs ?? DEFAULT_INITIAL_BACKOFF_MS,
      maxDelayMs: this.options.maxBackoffMs ?? DEFAULT_MAX_BACKOFF_MS,
      random: this.options.random ?? Math.random,
    };
  }

  private async post(signal: RestartSignal): Promise<Attempt> {
    const timeoutMs = this.options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    const context = { node: signal.node, url: this.url };
    let response: Response;
    let body: string;
    try {
      response = await this.fetch(this.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${this.options.token}` },
        body: JSON.stringify(signal),
        // A redirected POST would arrive as a GET somewhere else; treat it as a wrong URL.
        redirect: 'manual',
        signal: AbortSignal.any([this.closing.signal, AbortSignal.timeout(timeoutMs)]),
      });
      body = await response.text();
    } catch (error) {
      const why = isTimeout(error) ? `no answer within ${timeoutMs} ms` : errorText(error);
      const message = `restart signal for ${signal.node}: ${this.url}: ${why}`;
      return { kind: 'retry', error: new CachewarmError('TRANSPORT_FAILED', message, context, { cause: error }) };
    }
    return classify(response, body, signal, this.url, this.backoff().maxDelayMs);
  }
}

/**
 * Runs a caller's callback. One that throws must not end the delivery of the node's signals
 * (its loop has no caller to reject), so the error becomes a process warning instead.
 */
function report(callback: () => void): void {
  try {
    callback();
  } catch (error) {
    process.emitWarning(error instanceof Error ? error : String(error), { code: 'CACHEWARM_CALLBACK_FAILED' });
  }
}

function classify(response: Response, body: string, signal: RestartSignal, url: string, maxBackoffMs: number): Attempt {
  const { status } = response;
  if (status >= 200 && status < 300) return { kind: 'ack' };
  const excerpt = body.trim().slice(0, ERROR_BODY_CHARS);
  const transient = status === 408 || status === 429 || status >= 500;
  const message =
    `restart signal for ${signal.node}: ${url} answered ${status}${excerpt ? ` ${JSON.stringify(excerpt)}` : ''}` +
    (transient ? '' : ': refused, not retried');
  const error = new CachewarmError('TRANSPORT_FAILED', message, { node: signal.node, url, status, refused: !transient });
  if (!transient) return { kind: 'refused', error };
  const retryAfterMs = retryAfter(response.headers.get('retry-after'), maxBackoffMs);
  return retryAfterMs === undefined ? { kind: 'retry', error } : { kind: 'retry', error, retryAfterMs };
}

/** `Retry-After` in seconds (the form controllers send), capped; undefined when absent or a date. */
function retryAfter(header: string | null, maxMs: number): number | undefined {
  if (header === null || !/^\d+$/.test(header.trim())) return undefined;
  return Math.min(Number(header.trim()) * 1000, maxMs);
}

function signalUrl(controllerUrl: string): string {
  let url: URL | undefined;
  try {
    url = new URL(controllerUrl);
  } catch {
    url = undefined;
  }
  if (url === undefined || (url.protocol !== 'http:' && url.protocol !== 'https:')) {
    const got = JSON.stringify(controllerUrl);
    throw new CachewarmError('INVALID_ARGUMENT', `controller URL: expected http(s)://host[:port], got ${got}`, { controllerUrl });
  }
  // Appended, not resolved: a controller behind a path prefix keeps its prefix.
  return `${url.origin}${url.pathname.replace(/\/+$/, '')}${RESTART_SIGNAL_PATH}`;
}

function checkToken(token: string): void {
  // fetch throws on a header with a newline, which would look like a network error and be
  // retried forever; a token read from a file often ends in one.
  if (typeof token !== 'string' || !/^[\x21-\x7e]+$/.test(token)) {
    throw new CachewarmError(
      'INVALID_ARGUMENT',
      'controller token: expected printable ASCII without spaces or newlines (trim a token read from a file)',
      { length: typeof token === 'string' ? token.length : 0 },
    );
  }
}

function isTimeout(error: unknown): boolean {
  return error instanceof Error && error.name === 'TimeoutError';
}

function errorText(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  // undici puts the useful part (ECONNREFUSED…) in the cause of "fetch failed".
  const cause = error.cause instanceof Error ? `: ${error.cause.message}` : '';
  return `${error.message}${cause}`;
}
