import { type Command, Option } from 'commander';
import { LOG_FORMATS, LOG_LEVELS, type Log, type LogFormat, type LogLevel, createLogger, logTo } from '../shared/log.js';

/**
 * The process's one log, every command's: `--log-format` text (a terminal's default) or json
 * (one object per line: the default when stderr is not a terminal, where a collector or a
 * scheduler reads it), `--log-level`. Built once, before a command's action runs, and passed
 * down from there.
 */
export interface CliLogging {
  readonly format: LogFormat;
  readonly log: Log;
}

let current: CliLogging | undefined;

export function addLoggingOptions(program: Command): void {
  program
    .addOption(
      new Option('--log-format <format>', 'log lines on stderr: text, or json (one object per line) (default: text on a terminal, json otherwise)').choices(
        LOG_FORMATS,
      ),
    )
    .addOption(new Option('--log-level <level>', 'the least severe log lines shown').choices(LOG_LEVELS).default('info'));
  program.hook('preAction', (_program, action) => {
    const opts = action.optsWithGlobals<{ logFormat?: LogFormat; logLevel: LogLevel; quiet?: boolean }>();
    // `--quiet` on a warm: nothing on stderr but a failure.
    current = logging(opts.logFormat ?? requestedLogFormat(), opts.quiet ? 'error' : opts.logLevel);
  });
}

/** The process's log: as the options set it, or, before they are parsed, as the environment does. */
export function cliLogging(): CliLogging {
  current ??= logging(requestedLogFormat(), 'info');
  return current;
}

function logging(format: LogFormat, level: LogLevel): CliLogging {
  return { format, log: logTo(createLogger({ format, level, colorize: format === 'text' && process.stderr.isTTY === true })) };
}

/**
 * The log format asked for, read before commander parses anything (so that a usage error is
 * logged in the format asked for too): `--log-format` among the arguments, else
 * CACHEWARM_LOG_FORMAT, else text on a terminal and JSON otherwise.
 */
export function requestedLogFormat(argv: readonly string[] = process.argv.slice(2), env: NodeJS.ProcessEnv = process.env): LogFormat {
  const end = argv.indexOf('--');
  const args = end === -1 ? argv : argv.slice(0, end);
  const at = args.findLastIndex((arg) => arg === '--log-format' || arg.startsWith('--log-format='));
  const given = at === -1 ? env['CACHEWARM_LOG_FORMAT'] : args[at]!.includes('=') ? args[at]!.split('=')[1] : args[at + 1];
  if (given === 'text' || given === 'json') return given;
  return process.stderr.isTTY === true ? 'text' : 'json';
}
