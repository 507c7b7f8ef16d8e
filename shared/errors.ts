/**
 * Every failure cachewarm reports on purpose is a CachewarmError: a stable `code` that
 * scripts and tests can match, a message a person can act on, and the context (node,
 * chunk, field) that says where.
 */
export type ErrorCode =
  | 'TOPOLOGY_INVALID'
  | 'NODE_UNREACHABLE'
  /** The node already runs another job's crawl (memcached allows one at a time). */
  | 'NODE_BUSY'
  | 'NODE_PROTOCOL'
  | 'CHUNK_CORRUPT'
  | 'CHUNK_MISSING'
  | 'MESSAGE_MALFORMED'
  | 'SOURCE_UNAVAILABLE'
  | 'JOB_FAILED'
  /** Another run holds the job: one run per job id. */
  | 'JOB_LOCKED'
  /** The target cannot hold what the warm would copy into it. */
  | 'TARGET_TOO_SMALL'
  /** A target node is another process than the one the job was planned for: not written. */
  | 'TARGET_REPLACED'
  /** A source node is another process than the one the job dumped: its keys are not checked for deletes. */
  | 'SOURCE_REPLACED'
  | 'TRANSPORT_FAILED'
  | 'ABORTED'
  | 'INVALID_ARGUMENT';

export type ErrorContext = Readonly<Record<string, string | number | boolean | undefined>>;

export class CachewarmError extends Error {
  override readonly name = 'CachewarmError';

  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly context: ErrorContext = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export function isCachewarmError(error: unknown, code?: ErrorCode): error is CachewarmError {
  return error instanceof CachewarmError && (code === undefined || error.code === code);
}

/**
 * Codes no retry can cure: the input, the data or the server's answer is wrong, not the
 * moment. (An unreachable node, a busy crawler, a failed AWS call may go through later.)
 */
const PERMANENT: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'TOPOLOGY_INVALID',
  'INVALID_ARGUMENT',
  'CHUNK_CORRUPT',
  'CHUNK_MISSING',
  'MESSAGE_MALFORMED',
  'NODE_PROTOCOL',
  'TARGET_TOO_SMALL',
  'TARGET_REPLACED',
  'SOURCE_REPLACED',
  'JOB_LOCKED',
  'ABORTED',
]);

/** The project's one answer to "may trying again succeed?": any error but a CachewarmError with a permanent code. */
export function isRetryable(error: unknown): boolean {
  return !(error instanceof CachewarmError && PERMANENT.has(error.code));
}

/** The reason an AbortSignal carries, as a CachewarmError unless it already is one. */
export function abortReason(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  if (reason instanceof Error) return reason;
  return new CachewarmError('ABORTED', 'operation aborted');
}
