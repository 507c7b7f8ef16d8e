import { CachewarmError, abortReason } from '../shared/errors.js';
import {
  DUMP_STATES,
  type DumpStatus,
  type HealthStatus,
  SIDECAR_PATHS,
  type StartDumpRequest,
  dumpPath,
  parseStartDumpRequest,
} from './sidecar-api.js';
import { isRecord } from '../shared/json-values.js';

export interface SidecarClientOptions {
  /** e.g. `http://10.0.0.1:11299` (a path after the host is kept: a proxy may mount the API under one). */
  readonly baseUrl: string;
  readonly token: string;
  /** How long one request may take, connection to last byte. Default 10 s. */
  readonly timeoutMs?: number | undefined;
  /** For tests; the global fetch otherwise. */
  readonly fetch?: typeof fetch | undefined;
}

export interface StartDumpResult {
  /** True: this request started the dump (202). False: it was already running or finished (200). */
  readonly started: boolean;
  readonly status: DumpStatus;
}

interface Answer {
  readonly status: number;
  readonly body: unknown;
  readonly url: string;
}

/** The server's own words from an ErrorBody, else the HTTP status. */
function serverMessage(answer: Answer): { message: string; code: string | undefined } {
  const error = isRecord(answer.body) ? answer.body['error'] : undefined;
  if (isRecord(error) && typeof error['message'] === 'string') {
    return { message: error['message'], code: typeof error['code'] === 'string' ? error['code'] : undefined };
  }
  return { message: `HTTP ${answer.status}`, code: undefined };
}

/**
 * The controller's side of the dumper sidecar's API (dumper/sidecar-api.ts). Every failure
 * is a CachewarmError naming the sidecar's URL and carrying the server's message:
 * 401 → INVALID_ARGUMENT "token refused", 409 → NODE_BUSY, 400/413 → INVALID_ARGUMENT, no
 * answer (refused, reset, timed out) or 503 → NODE_UNREACHABLE, anything else → TRANSPORT_FAILED.
 * The caller's signal aborting rejects with its reason.
 */
export class SidecarClient {
  readonly baseUrl: string;
  private readonly token: string;
  private readonly timeoutMs: number;
  private readonly fetchFn: typeof fetch;

  constructor(options: SidecarClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, '');
    this.token = options.token;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.fetchFn = options.fetch ?? fetch;
    try {
      const url = new URL(this.baseUrl);
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`protocol ${url.protocol}`);
    } catch (error) {
      const why = (error as Error).message;
      throw new CachewarmError('INVALID_ARGUMENT', `sidecar URL ${JSON.stringify(options.baseUrl)} is not an http(s) URL: ${why}`);
    }
    if (!this.token) throw new CachewarmError('INVALID_ARGUMENT', `no token for sidecar ${this.baseUrl}`);
  }

  /** Starts the job's dump on the sidecar's node; re-sending it for a running or finished job is harmless. */
  async start(request: StartDumpRequest, signal?: AbortSignal): Promise<StartDumpResult> {
    // Refused here, the mistake is reported without a round trip and without the server's wording.
    const checked = parseStartDumpRequest(request);
    const answer = await this.call('POST', SIDECAR_PATHS.dumps, signal, checked);
    if (answer.status !== 200 && answer.status !== 202) throw this.refusal(answer);
    return { started: answer.status === 202, status: this.dumpStatus(answer) };
  }

  /** The job's dump status; undefined when the sidecar has no such job (never started, or it restarted). */
  async status(jobId: string, signal?: AbortSignal): Promise<DumpStatus | undefined> {
    const answer = await this.call('GET', dumpPath(jobId), signal);
    if (answer.status === 404) return undefined;
    if (answer.status !== 200) throw this.refusal(answer);
    return this.dumpStatus(answer);
  }

  /**
   * Cancels the job's dump; its progress stays in the store. Resolves with the status: state
   * `cancelled` once stopped, still `running` if it had not stopped within the sidecar's wait.
   * Undefined when the sidecar has no such job.
   */
  async cancel(jobId: string, signal?: AbortSignal): Promise<DumpStatus | undefined> {
    const answer = await this.call('DELETE', dumpPath(jobId), signal);
    if (answer.status === 404) return undefined;
    if (answer.status !== 200 && answer.status !== 202) throw this.refusal(answer);
    return this.dumpStatus(answer);
  }

  /** Health needs no token. A 503 (memcached down) is an answer, not an error: `ok` is false. */
  async health(signal?: AbortSignal): Promise<HealthStatus> {
    const answer = await this.call('GET', SIDECAR_PATHS.health, signal);
    if (answer.status !== 200 && answer.status !== 503) throw this.refusal(answer);
    const body = answer.body;
    if (!isRecord(body) || typeof body['ok'] !== 'boolean' || (body['memcached'] !== 'up' && body['memcached'] !== 'down')) {
      throw this.unexpected(answer, 'not a health status');
    }
    return body as unknown as HealthStatus;
  }

  private async call(method: string, path: string, signal: AbortSignal | undefined, body?: unknown): Promise<Answer> {
    const url = `${this.baseUrl}${path}`;
    const timeout = AbortSignal.timeout(this.timeoutMs);
    const combined = signal ? AbortSignal.any([signal, timeout]) : timeout;
    try {
      const response = await this.fetchFn(url, {
        method,
        headers: {
          authorization: `Bearer ${this.token}`,
          accept: 'application/json',
          ...(body !== undefined && { 'content-type': 'application/json' }),
        },
        ...(body !== undefined && { body: JSON.stringify(body) }),
        signal: combined,
      });
      const text = await response.text();
      let parsed: unknown = text;
      try {
        parsed = JSON.parse(text);
      } catch {
        // Not JSON (a proxy's error page, say): kept as text for the error message.
      }
      return { status: response.status, body: parsed, url };
    } catch (error) {
      if (signal?.aborted) throw abortReason(signal);
      const why = timeout.aborted ? `no answer within ${this.timeoutMs} ms` : causeOf(error);
      throw new CachewarmError('NODE_UNREACHABLE', `sidecar ${url} unreachable: ${why}`, { url, method }, { cause: error });
    }
  }

  private dumpStatus(answer: Answer): DumpStatus {
    const body = answer.body;
    if (
      !isRecord(body) ||
      typeof body['jobId'] !== 'string' ||
      typeof body['node'] !== 'string' ||
      !DUMP_STATES.includes(body['state'] as DumpStatus['state']) ||
      !isRecord(body['counters'])
    ) {
      throw this.unexpected(answer, 'not a dump status');
    }
    return body as unknown as DumpStatus;
  }

  private refusal(answer: Answer): CachewarmError {
    const { message, code } = serverMessage(answer);
    const context = { url: answer.url, httpStatus: answer.status, serverCode: code };
    switch (answer.status) {
      case 401:
        return new CachewarmError('INVALID_ARGUMENT', `sidecar ${answer.url}: token refused (${message})`, context);
      case 409:
        return new CachewarmError('NODE_BUSY', `sidecar ${answer.url}: ${message}`, context);
      case 400:
      case 413:
        return new CachewarmError('INVALID_ARGUMENT', `sidecar ${answer.url} refused the request: ${message}`, context);
      case 503:
        return new CachewarmError('NODE_UNREACHABLE', `sidecar ${answer.url} unavailable: ${message}`, context);
      default:
        return new CachewarmError('TRANSPORT_FAILED', `sidecar ${answer.url} answered HTTP ${answer.status}: ${message}`, context);
    }
  }

  private unexpected(answer: Answer, what: string): CachewarmError {
    const text = typeof answer.body === 'string' ? answer.body : JSON.stringify(answer.body);
    return new CachewarmError(
      'TRANSPORT_FAILED',
      `sidecar ${answer.url} answered HTTP ${answer.status} with ${what}: ${text.slice(0, 200)}`,
      { url: answer.url, httpStatus: answer.status },
    );
  }
}

/** fetch's network errors are `TypeError: fetch failed` with the real reason (ECONNREFUSED, …) as the cause. */
function causeOf(error: unknown): string {
  const cause = (error as { cause?: unknown } | undefined)?.cause;
  const inner = cause instanceof Error ? `${(cause as { code?: string }).code ?? cause.name}: ${cause.message}` : undefined;
  return inner ?? (error instanceof Error ? error.message : String(error));
}
