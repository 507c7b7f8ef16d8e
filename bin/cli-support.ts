import { InvalidArgumentError } from 'commander';
import type { WarmProgress } from '../controller/warm-replica.js';
import { progressLine } from '../controller/report.js';
import { isCachewarmError } from '../shared/errors.js';
import { parseByteSize, parsePositiveInt } from '../shared/units.js';

/** Exit codes, documented in the README. */
export const EXIT = { ok: 0, incomplete: 1, usage: 2, interrupted: 130 } as const;

export function asArgument<T>(parse: (text: string) => T): (text: string) => T {
  return (text) => {
    try {
      return parse(text);
    } catch (error) {
      throw new InvalidArgumentError((error as Error).message);
    }
  };
}

export const byteSize = asArgument(parseByteSize);
export const positiveInt = asArgument((text) => parsePositiveInt(text, 'value'));

/**
 * Progress on stderr: one line rewritten in place on a terminal, a log line every
 * `everyMs` otherwise (cron, CI, a pipe), so logs stay readable.
 */
export function progressPrinter(): { onProgress: (p: WarmProgress) => void; done: () => void } {
  const tty = process.stderr.isTTY === true;
  let last = 0;
  return {
    onProgress: (p) => {
      if (tty) {
        process.stderr.write(`\r\x1b[2K${progressLine(p)}`);
      } else if (p.elapsedMs - last >= 10_000) {
        last = p.elapsedMs;
        process.stderr.write(`${new Date().toISOString()} ${progressLine(p)}\n`);
      }
    },
    done: () => {
      if (tty) process.stderr.write('\n');
    },
  };
}

export function interruptSignal(): AbortSignal {
  const controller = new AbortController();
  const onSignal = (name: string): void => {
    process.stderr.write(`\n${name}: stopping; the job's record stays in the work directory\n`);
    controller.abort(Object.assign(new Error(`interrupted by ${name}`), { code: 'ABORTED' }));
  };
  process.once('SIGINT', () => onSignal('SIGINT'));
  process.once('SIGTERM', () => onSignal('SIGTERM'));
  return controller.signal;
}

/** The exit code and the one line a person reads, for whatever a command threw. */
export function exitOnError(error: unknown): void {
  if (isCachewarmError(error)) {
    process.stderr.write(`cachewarm: ${error.message} [${error.code}]\n`);
    const usage = error.code === 'TOPOLOGY_INVALID' || error.code === 'INVALID_ARGUMENT';
    process.exitCode = usage ? EXIT.usage : error.code === 'ABORTED' ? EXIT.interrupted : EXIT.incomplete;
  } else if ((error as { code?: string }).code === 'ABORTED') {
    process.stderr.write(`cachewarm: ${(error as Error).message}\n`);
    process.exitCode = EXIT.interrupted;
  } else {
    process.stderr.write(`cachewarm: ${(error as Error)?.stack ?? String(error)}\n`);
    process.exitCode = EXIT.incomplete;
  }
}
