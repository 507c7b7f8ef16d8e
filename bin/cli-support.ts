import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { constants as fsConstants } from 'node:fs';
import { access, mkdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import type { WarmProgress } from '../controller/warm-replica.js';
import { progressLine } from '../controller/report.js';
import { DEFAULT_PROTECT_SOURCE, parseProtectSource } from '../dumper/read-pace.js';
import { MAX_CHUNK_SIZE_BYTES, MIN_CHUNK_SIZE_BYTES } from '../dumper/sidecar-api.js';
import { CachewarmError, isCachewarmError } from '../shared/errors.js';
import { parseListenAddress } from '../shared/http-api.js';
import { type Bounds, parseByteSizeInRange, parseIntInRange } from '../shared/units.js';
import type { Log } from '../shared/log.js';
import { VERSION } from '../shared/version.js';
import { type CliLogging, cliLogging, requestedLogFormat } from './cli-log.js';

/** Exit codes, documented in the README. */
export const EXIT = { ok: 0, incomplete: 1, usage: 2, interrupted: 130 } as const;

/** The error codes that mean the command was given something it cannot use: exit 2. */
const USAGE_CODES: ReadonlySet<string> = new Set(['INVALID_ARGUMENT', 'TOPOLOGY_INVALID']);

/**
 * The bounds of every numeric option, in one place. Chunk sizes are those a dumper sidecar
 * accepts in a start request (the chunk format's own limit, a u32 body length, is 4 GiB); the
 * upper bounds of the others are far above any useful setting and below the harmful ones
 * (each unit of concurrency holds a chunk in memory and, for readers, a connection per node).
 */
export const BOUNDS = {
  chunkSize: { min: MIN_CHUNK_SIZE_BYTES, max: MAX_CHUNK_SIZE_BYTES, why: 'the chunk sizes the dumpers accept' },
  concurrency: { min: 1, max: 64 },
  maxOps: { min: 1, max: 100_000_000, why: 'items per second per source node' },
  maxBytes: { min: 1 << 10, max: 2 ** 40, why: 'bytes per second per sidecar' },
  populators: { min: 0, max: 64 },
  waitSeconds: { min: 1, max: 20, why: 'SQS long-polls at most 20 s' },
  topologyPollMs: { min: 10, max: 3_600_000 },
  demoItems: { min: 1, max: 10_000_000 },
  demoValueSize: { min: 0, max: 1000 << 10, why: "memcached's default 1 MiB item limit, less room for the key and header" },
  demoNodes: { min: 1, max: 32 },
  verifySample: { min: 1, max: 10_000_000, why: 'keys per target node (--all checks every key)' },
  warmVerifySample: { min: 0, max: 10_000_000, why: 'keys per target node read back at the end (0: none)' },
} as const satisfies Record<string, Bounds>;

/** A commander argument parser from a parse function: its error becomes commander's "argument is invalid" line. */
export function asArgument<T>(parse: (text: string) => T): (text: string) => T {
  return (text) => {
    try {
      return parse(text);
    } catch (error) {
      throw new InvalidArgumentError((error as Error).message);
    }
  };
}

/** An option's parser for a whole number within `bounds`. */
export function wholeNumber(bounds: Bounds): (text: string) => number {
  return asArgument((text) => parseIntInRange(text, bounds));
}

/** An option's parser for a byte size ("16MiB") within `bounds`. */
export function byteSize(bounds: Bounds): (text: string) => number {
  return asArgument((text) => parseByteSizeInRange(text, bounds));
}

export const chunkSize = byteSize(BOUNDS.chunkSize);
export const concurrency = wholeNumber(BOUNDS.concurrency);

/** How much a command says on stderr: `--quiet` only failures, `--verbose` progress every second. */
export type Verbosity = 'quiet' | 'normal' | 'verbose';

export function verbosityOf(opts: { readonly quiet?: boolean | undefined; readonly verbose?: boolean | undefined }): Verbosity {
  return opts.quiet ? 'quiet' : opts.verbose ? 'verbose' : 'normal';
}

/**
 * Progress on stderr: one line rewritten in place for a person at a terminal (text logs, and
 * stdout a terminal too: a scheduler that captures only stdout still runs the command
 * unattended), otherwise a `progress` log entry every 10 s (every second with `--verbose`).
 * With several targets (one dump filling many), the line in place is the target furthest
 * behind, and each target logs its own entries.
 */
export function progressPrinter(
  { format, log }: CliLogging,
  verbosity: Verbosity = 'normal',
): { onProgress: (p: WarmProgress, target?: string) => void; done: () => void } {
  const inPlace = format === 'text' && process.stdout.isTTY === true && process.stderr.isTTY === true;
  const everyMs = verbosity === 'verbose' ? 1_000 : 10_000;
  const last = new Map<string | undefined, number>();
  const latest = new Map<string, WarmProgress>();
  const labelled = (p: WarmProgress, target: string | undefined, others = ''): string =>
    target === undefined ? progressLine(p) : `${target}${others}: ${progressLine(p)}`;
  return {
    onProgress: (p, target) => {
      if (verbosity === 'quiet') return;
      if (inPlace) {
        if (target !== undefined) latest.set(target, p);
        const [behind, progress] = [...latest].reduce((a, b) => (b[1].written.stored < a[1].written.stored ? b : a), [target, p] as const);
        process.stderr.write(`\r\x1b[2K${labelled(progress, behind, latest.size > 1 ? ` (furthest behind of ${latest.size})` : '')}`);
      } else if (p.elapsedMs - (last.get(target) ?? 0) >= everyMs) {
        last.set(target, p.elapsedMs);
        log({ event: 'progress', msg: labelled(p, target), target, elapsedMs: p.elapsedMs, expectedItems: p.expectedItems, queueDepth: p.queueDepth, dumped: p.dumped, written: p.written });
      }
    },
    done: () => {
      if (inPlace && verbosity !== 'quiet') process.stderr.write('\n');
    },
  };
}

export function interruptSignal(log: Log): AbortSignal {
  const controller = new AbortController();
  const onSignal = (name: string): void => {
    if (process.stderr.isTTY) process.stderr.write('\n');
    log({ event: 'stopping', level: 'warn', signal: name, msg: `${name}: stopping; the job's record stays in the work directory` });
    controller.abort(Object.assign(new Error(`interrupted by ${name}`), { code: 'ABORTED' }));
  };
  process.once('SIGINT', () => onSignal('SIGINT'));
  process.once('SIGTERM', () => onSignal('SIGTERM'));
  return controller.signal;
}

/** What a failed run comes to: its exit code, and the code and message it is reported with. */
export interface Failure {
  readonly exitCode: number;
  readonly code: string;
  readonly message: string;
}

const commandOfError = new WeakMap<Error, Command>();

/** Every command of the program, the program first. */
function commandsOf(command: Command): Command[] {
  return [command, ...command.commands.flatMap(commandsOf)];
}

/**
 * Makes commander's own errors (unknown option or command, missing option or argument, an
 * argument its parser refuses) read like every other message, `cachewarm: <message>`, and
 * throw instead of exiting, so that exitOnError gives them exit 2 (help and version displays
 * keep 0). exitOverride and configureOutput are settings of each command, not inherited by
 * commands added before them: call this once every command is registered.
 */
export function routeCommanderErrors(program: Command): void {
  // JSON logs: commander prints nothing (its usage text is no log line); exitOnError logs the error.
  const json = requestedLogFormat() === 'json';
  for (const command of commandsOf(program)) {
    command.exitOverride((error) => {
      commandOfError.set(error, command);
      throw error;
    });
    if (json) {
      command.configureOutput({ writeErr: () => undefined, outputError: () => undefined });
      continue;
    }
    command.configureOutput({ outputError: (text, write) => write(`cachewarm: ${withoutErrorPrefix(text)}`) });
    // Given no subcommand, commander shows the usage on stderr and exits 1: the error line
    // goes first, like every other one (and exitOnError makes it exit 2).
    if (command.commands.length > 0) command.addHelpText('before', ({ error }) => (error ? `cachewarm: ${missingCommand(command)}` : ''));
  }
}

/**
 * The program and every command under it. Every option can also come from the environment,
 * `CACHEWARM_` and its name (`--chunk-size` is `CACHEWARM_CHUNK_SIZE`): what a Kubernetes pod
 * spec or a cron line sets more easily than flags. A flag given wins over the environment,
 * which wins over the default; `--help` shows each variable. (Commander reads a variable only
 * for an option that names it when it is added: hence here, not after the fact.)
 */
export class CachewarmCommand extends Command {
  override createCommand(name?: string): Command {
    return new CachewarmCommand(name);
  }

  override addOption(option: Option): this {
    if (!option.envVar && option.long) option.env(`CACHEWARM_${option.long.slice(2).replace(/-/g, '_').toUpperCase()}`);
    return super.addOption(option);
  }
}

/** `cachewarm help warm replica` shows that command's help (commander's own goes one level deep). */
export function helpForSubcommands(program: Command): void {
  program.helpCommand(false);
  program
    .command('help [command...]')
    .description('show the help of a command, e.g. `cachewarm help warm replica`')
    .action((names: string[]) => {
      let command: Command = program;
      for (const name of names) {
        const next = command.commands.find((c) => c.name() === name || c.aliases().includes(name));
        if (!next) command.error(`unknown command '${names.join(' ')}'`, { code: 'commander.unknownCommand', exitCode: EXIT.usage });
        command = next as Command;
      }
      command.help();
    });
}

function missingCommand(command: Command): string {
  const names = command.commands.map((c) => c.name()).join(', ');
  return command.parent ? `'${commandPath(command).replace(/^\S+ /, '')}' needs a command: ${names}` : `a command is needed: ${names}`;
}

/** The command whose parsing raised a commander error (undefined for any other error). */
export function commandOf(error: unknown): Command | undefined {
  return error instanceof Error ? commandOfError.get(error) : undefined;
}

function withoutErrorPrefix(text: string): string {
  return text.replace(/^error: /, '');
}

/** "cachewarm warm replica". */
export function commandPath(command: Command): string {
  const names: string[] = [];
  for (let c: Command | null = command; c; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

/** The exit code, error code and message for whatever a command threw. */
export function failureOf(error: unknown): Failure {
  if (error instanceof CommanderError) {
    const shown = error.code === 'commander.helpDisplayed' || error.code === 'commander.version' || (error.code === 'commander.help' && error.exitCode === 0);
    if (shown) return { exitCode: EXIT.ok, code: error.code, message: error.message };
    const command = commandOf(error);
    const message = error.code !== 'commander.help' ? withoutErrorPrefix(error.message) : command ? missingCommand(command) : 'a command is needed';
    return { exitCode: EXIT.usage, code: 'INVALID_ARGUMENT', message };
  }
  if (isCachewarmError(error)) {
    const exitCode = USAGE_CODES.has(error.code) ? EXIT.usage : error.code === 'ABORTED' ? EXIT.interrupted : EXIT.incomplete;
    return { exitCode, code: error.code, message: error.message };
  }
  const code = (error as { code?: unknown } | undefined)?.code;
  const message = error instanceof Error ? error.message : String(error);
  if (code === 'ABORTED') return { exitCode: EXIT.interrupted, code, message };
  return { exitCode: EXIT.incomplete, code: typeof code === 'string' && code !== '' ? code : 'UNEXPECTED', message: message || String(error) };
}

/** CACHEWARM_DEBUG=1 (or any value but 0/false): stacks are printed with the messages. */
export function debugging(): boolean {
  const value = process.env['CACHEWARM_DEBUG'];
  return value !== undefined && value !== '' && value !== '0' && value.toLowerCase() !== 'false';
}

/** How long a failed command may take to close what it opened before the process is ended. */
const EXIT_GRACE_MS = 2_000;

/**
 * The exit code and the one line a person reads, for whatever a command threw: `cachewarm:
 * <message> [CODE]`, never a stack (CACHEWARM_DEBUG=1 adds it); with JSON logs, a `failed` log
 * entry instead. Commander has printed its own errors already in text. A failed command ends
 * the process even if something it opened is still open.
 */
export function exitOnError(error: unknown): void {
  const failure = failureOf(error);
  if (failure.exitCode !== EXIT.ok) reportFailure(failure, error);
  process.exitCode = failure.exitCode;
  if (failure.exitCode !== EXIT.ok) setTimeout(() => process.exit(), EXIT_GRACE_MS).unref();
}

function reportFailure(failure: Failure, error: unknown): void {
  const { format, log } = cliLogging();
  const stack = debugging() && error instanceof Error && !(error instanceof CommanderError) ? stackOf(error) : undefined;
  const hint = failure.code === 'UNEXPECTED' && !debugging() ? ' (CACHEWARM_DEBUG=1 prints where)' : '';
  if (format === 'json') {
    log({ event: 'failed', level: 'error', msg: `${failure.message}${hint}`, code: failure.code, exitCode: failure.exitCode, ...(stack && { stack }) });
    return;
  }
  // Commander has printed its errors already (see routeCommanderErrors).
  if (!(error instanceof CommanderError)) {
    const code = isCachewarmError(error) ? ` [${error.code}]` : '';
    process.stderr.write(`cachewarm: ${failure.message}${code}${hint}\n`);
  }
  if (stack) process.stderr.write(`${stack}\n`);
}

function stackOf(error: Error): string {
  const cause = error.cause instanceof Error ? `\ncaused by: ${stackOf(error.cause)}` : '';
  return `${error.stack ?? error.message}${cause}`;
}

/**
 * The JSON outcome of a run under `--json`: exactly one object on stdout, the summary when the
 * run got one, else `{complete: false, exitCode, error: {code, message}}` (with the job id
 * when it was given), whatever ended it: a refused option, a failure, an interruption.
 */
export class JsonOutcome {
  private context: Record<string, unknown> | undefined;
  private printed = false;

  /** From now on the run's outcome is printed as JSON; `context` goes into a failure's object. */
  want(context: Record<string, unknown> = {}): void {
    this.context = context;
  }

  get wanted(): boolean {
    return this.context !== undefined;
  }

  /** Prints the summary (at most one object is ever printed). */
  result(summary: object): void {
    this.print(summary);
  }

  /** Prints the failure's object, if JSON is wanted and nothing was printed yet. */
  failure(error: unknown): void {
    if (!this.context) return;
    const failure = failureOf(error);
    if (failure.exitCode === EXIT.ok) return;
    this.print({ complete: false, ...this.context, exitCode: failure.exitCode, error: { code: failure.code, message: failure.message } });
  }

  private print(value: object): void {
    if (this.printed) return;
    this.printed = true;
    process.stdout.write(`${JSON.stringify({ ...value, version: VERSION })}\n`);
  }
}

/** Whether `--json` is among the arguments given to `command` (before a `--`). */
export function jsonRequested(command: Command, argv: readonly string[] = process.argv.slice(2)): boolean {
  if ((command.opts() as { json?: unknown }).json === true) return true;
  const end = argv.indexOf('--');
  return (end === -1 ? argv : argv.slice(0, end)).includes('--json');
}

/**
 * A bug that escapes every handler (an error event nobody listens to, a promise nobody
 * awaits) still ends in one line, exit 1, and the JSON outcome when one is wanted.
 */
export function handleCrashes(json: JsonOutcome): void {
  const crash = (error: unknown): void => {
    const message = error instanceof Error ? error.message : String(error);
    const failure = { exitCode: EXIT.incomplete, code: 'UNEXPECTED', message: `unexpected error: ${message}` };
    reportFailure(failure, error);
    json.failure(Object.assign(new Error(message), { code: 'UNEXPECTED' }));
    process.exit(EXIT.incomplete);
  };
  process.on('uncaughtException', crash);
  process.on('unhandledRejection', crash);
}

/**
 * Checks a work directory before anything is opened: it must be a directory this process can
 * write in, or a path where one can be created (it is created then). Throws INVALID_ARGUMENT
 * (exit 2) naming it otherwise.
 */
export async function checkWorkDir(dir: string, option = '--work-dir'): Promise<void> {
  const refuse = (why: string): CachewarmError => new CachewarmError('INVALID_ARGUMENT', `${option} ${dir}: ${why}`, { dir });
  const absolute = path.resolve(dir);
  // The deepest part of the path that exists must be a directory; the missing ones below it
  // are made one at a time (a recursive mkdir never returns on some paths, /proc/x for one).
  const missing: string[] = [];
  for (let at = absolute; ; ) {
    let isDirectory: boolean;
    try {
      isDirectory = (await stat(at)).isDirectory();
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      const up = path.dirname(at);
      if ((code === 'ENOENT' || code === 'ENOTDIR') && up !== at) {
        missing.unshift(at);
        at = up;
        continue;
      }
      throw refuse(`cannot use it: ${(error as Error).message}`);
    }
    if (!isDirectory) throw refuse(at === absolute ? 'not a directory' : `cannot create it: ${at} is a file, not a directory`);
    break;
  }
  for (const part of missing) {
    try {
      await mkdir(part);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw refuse(`cannot create it: ${(error as Error).message}`);
    }
  }
  try {
    await access(absolute, fsConstants.W_OK | fsConstants.X_OK);
  } catch {
    throw refuse('not writable');
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

/**
 * `--protect-source <factor|off>`: how far a live client's p99 on a source node may rise while
 * it is dumped (see dumper/read-pace.ts); on by default.
 */
export function protectSourceOption(): Option {
  return new Option(
    '--protect-source <factor|off>',
    "pace each source node's dump so that a live client's p99 there stays within this factor of its baseline; off for a source that serves no traffic",
  )
    .argParser(asArgument(parseProtectSource))
    .default(DEFAULT_PROTECT_SOURCE);
}

/**
 * `--reconcile-deletes <on|off>`: look each key written up at its source once, and take back
 * what the source deleted during the warm (populator/delete-reconciler.ts); on by default.
 */
export function reconcileDeletesOption(): Option {
  return new Option(
    '--reconcile-deletes <on|off>',
    'after writing, look each key up at its source and remove from the target what the source deleted meanwhile; off (one source request per item saved) for a cache that never deletes',
  )
    .choices(['on', 'off'])
    .default('on');
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

/**
 * `--metrics-listen`: `/metrics` on a listener of its own, without the token, for Prometheus
 * inside the cluster (the API keeps its token).
 */
export function metricsListenOption(): Option {
  return new Option('--metrics-listen <host:port>', 'also serve /metrics here, without the token (for scrapers inside the cluster)').argParser(
    asArgument(parseListenAddress),
  );
}

/** Starts a service's listeners; one that cannot listen is a usage error naming the address. */
export async function listenAll(
  server: { listen(host: string, port: number): Promise<unknown>; listenMetrics(host: string, port: number): Promise<unknown> },
  listen: { host: string; port: number },
  metricsListen: { host: string; port: number } | undefined,
): Promise<void> {
  const starts: [{ host: string; port: number }, () => Promise<unknown>][] = [[listen, () => server.listen(listen.host, listen.port)]];
  if (metricsListen) starts.push([metricsListen, () => server.listenMetrics(metricsListen.host, metricsListen.port)]);
  for (const [address, start] of starts) {
    try {
      await start();
    } catch (error) {
      throw new CachewarmError('INVALID_ARGUMENT', `cannot listen on ${address.host}:${address.port}: ${(error as Error).message}`);
    }
  }
}
