import { InvalidArgumentError } from 'commander';
import { readFile } from 'node:fs/promises';
import type { WarmProgress } from '../controller/warm-replica.js';
import { progressLine } from '../controller/report.js';
import { CachewarmError, isCachewarmError } from '../shared/errors.js';
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
 * `everyMs` otherwise (cron, CI, a pipe), so logs stay readable. Both stdout and stderr must
 * be terminals: a scheduler that captures only stdout still runs the command unattended.
 */
export function progressPrinter(): { onProgress: (p: WarmProgress) => void; done: () => void } {
  const tty = process.stdout.isTTY === true && process.stderr.isTTY === true;
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

/**
 * The token from its file: one trailing newline ignored. It goes in an HTTP header, so it is
 * refused unless it is printable ASCII without spaces (what `openssl rand -hex 32` writes).
 */
export async function readTokenFile(file: string, option = '--token-file'): Promise<string> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new CachewarmError('INVALID_ARGUMENT', `cannot read ${option} ${file}: ${(error as Error).message}`, { file });
  }
  const token = text.replace(/\r?\n$/, '');
  if (token === '') throw new CachewarmError('INVALID_ARGUMENT', `${option} ${file} is empty`, { file });
  if (!/^[\x21-\x7e]+$/.test(token)) {
    throw new CachewarmError('INVALID_ARGUMENT', `${option} ${file}: the token must be one line of printable ASCII without spaces`, { file });
  }
  return token;
}


/** One JSON object per line on stderr, each stamped with the time: the services' log format. */
export function logLine(event: Record<string, unknown>): void {
  process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), ...event })}\n`);
}

/** Resolves with the signal's name on the first SIGTERM or SIGINT: how a service is told to stop. */
export function stopSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (name: NodeJS.Signals): void => {
      process.off('SIGTERM', on);
      process.off('SIGINT', on);
      resolve(name);
    };
    process.on('SIGTERM', on);
    process.on('SIGINT', on);
  });
}
