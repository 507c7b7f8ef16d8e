import { pino, stdTimeFunctions, type DestinationStream, type Logger } from 'pino';
import prettyStream from 'pino-pretty';

/**
 * One thing that happened, as every cachewarm component reports it: `event` names it (a stable
 * kebab-case word a log query can match), the other fields are what a person needs to act on
 * it. `msg` is the human sentence; without one it is the event's name in words.
 */
export interface LogEntry {
  readonly event: string;
  readonly level?: LogLevel | undefined;
  readonly msg?: string | undefined;
  readonly [field: string]: unknown;
}

/** Where components send their log entries: passed in, so a test can collect them. */
export type Log = (entry: LogEntry) => void;

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export const LOG_FORMATS = ['text', 'json'] as const;
/** `text` for a person at a terminal, `json` (one object per line) for a log collector. */
export type LogFormat = (typeof LOG_FORMATS)[number];

export const silentLog: Log = () => undefined;

/** A log sink that cannot throw: a broken sink must not break a request or a job. */
export function safeLog(log: Log | undefined): Log {
  return (entry) => {
    try {
      log?.(entry);
    } catch {
      // nothing to tell it to
    }
  };
}

/** A log whose entries all carry `fields` (a worker's id, a job's id). */
export function withFields(log: Log, fields: Readonly<Record<string, unknown>>): Log {
  return (entry) => log({ ...fields, ...entry });
}

export interface LoggerOptions {
  readonly format: LogFormat;
  /** Entries below this level are dropped. Default `info`. */
  readonly level?: LogLevel | undefined;
  /** Where lines go. Default: stderr (fd 2), written synchronously so a crash loses nothing. */
  readonly destination?: DestinationStream | undefined;
  /** Colours in text lines (a terminal). Default false. */
  readonly colorize?: boolean | undefined;
}

/**
 * The one logger of a process, built at the CLI entry. JSON lines carry `time` (ISO 8601),
 * `level` (its name, not pino's number: readable without a mapping), `pid`, `hostname`, the
 * entry's fields and `msg`; text lines are `HH:MM:ss.mmm LEVEL: msg {fields}`, one per entry.
 */
export function createLogger(options: LoggerOptions): Logger {
  const settings = {
    level: options.level ?? 'info',
    timestamp: stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
  };
  const destination =
    options.destination ??
    (options.format === 'json'
      ? pino.destination({ dest: 2, sync: true })
      : prettyStream({
          destination: 2,
          sync: true,
          colorize: options.colorize === true,
          singleLine: true,
          translateTime: 'SYS:HH:MM:ss.l',
          ignore: 'pid,hostname,event',
          // An entry's `error` field is a {code, message} of ours, not a stack to spread over lines.
          errorLikeObjectKeys: [],
        }));
  return pino(settings, destination);
}

/** Entries to `logger`, at their level (or the one their event implies). */
export function logTo(logger: Logger): Log {
  return (entry) => {
    const { level, msg, ...fields } = entry;
    logger[level ?? levelOf(entry)](fields, msg ?? entry.event.replace(/-/g, ' '));
  };
}

/**
 * An entry's level when its source gave none, from what happened: a failure is an error, a
 * setback the job survives a warning.
 */
export function levelOf(entry: LogEntry): LogLevel {
  if (/failed$/.test(entry.event) || entry['error'] !== undefined) return 'error';
  if (/parked|retried|refused|warning/.test(entry.event)) return 'warn';
  return 'info';
}

/**
 * A line a child process logged (JSON, see createLogger), as an entry of this process's log:
 * its time, pid and host dropped for this process's own. A line that is not JSON (a crash's
 * trace) is kept whole, as an error.
 */
export function childEntry(line: string): LogEntry {
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch {
    parsed = undefined;
  }
  if (typeof parsed !== 'object' || parsed === null || typeof (parsed as { event?: unknown }).event !== 'string') {
    return { event: 'child-output', level: 'error', msg: line };
  }
  const { time: _time, pid: _pid, hostname: _hostname, level, ...entry } = parsed as LogEntry & { time?: unknown; pid?: unknown; hostname?: unknown };
  return { ...entry, level: LOG_LEVELS.includes(level as LogLevel) ? level : 'info' };
}
