import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { within } from './wait.js';

export const CLI = fileURLToPath(new URL('../../bin/cachewarm.js', import.meta.url));

/** Dummy credentials and a region: the emulator checks neither, the SDK wants both. */
export const AWS_TEST_ENV = { AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test', AWS_REGION: 'us-east-1' };

export interface CliProcess {
  readonly child: ChildProcess;
  /** stderr lines, JSON ones parsed (others as `{event: 'text', line}`). */
  readonly lines: Record<string, unknown>[];
  readonly stdout: () => string;
  /**
   * The first log line with this `event`; rejects if the process exits first, and fails the
   * test if it is not logged within `timeoutMs` (default 60 s) rather than hang.
   */
  event(name: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** Exit code (null when killed by a signal). */
  readonly exited: Promise<number | null>;
  /** `exited`, failing the test if the process is still running after `timeoutMs` (default 60 s). */
  exit(timeoutMs?: number): Promise<number | null>;
  kill(signal?: NodeJS.Signals): void;
}

/** Runs `cachewarm <args>` as its own process, as an operator or a scheduler would. */
export function startCli(args: readonly string[], env: Record<string, string> = {}): CliProcess {
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...AWS_TEST_ENV, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: Record<string, unknown>[] = [];
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (text: string) => (out += text));
  const waiting: { name: string; resolve: (e: Record<string, unknown>) => void }[] = [];
  createInterface({ input: child.stderr as NodeJS.ReadableStream }).on('line', (line) => {
    let event: Record<string, unknown>;
    try {
      event = JSON.parse(line) as Record<string, unknown>;
    } catch {
      event = { event: 'text', line };
    }
    lines.push(event);
    for (const w of waiting.filter((w) => w.name === event['event'])) w.resolve(event);
  });
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  return {
    child,
    lines,
    stdout: () => out,
    exited,
    event: (name, timeoutMs = 60_000) => {
      const seen = lines.find((e) => e['event'] === name);
      if (seen) return Promise.resolve(seen);
      const logged = new Promise<Record<string, unknown>>((resolve, reject) => {
        waiting.push({ name, resolve });
        void exited.then(() => reject(new Error(`cachewarm ${args.join(' ')} exited before logging ${name}: ${JSON.stringify(lines)}`)));
      });
      return within(logged, { timeoutMs, what: `${name} log line from cachewarm ${args.join(' ')}`, detail: () => lines.slice(-5) });
    },
    exit: (timeoutMs = 60_000) =>
      within(exited, { timeoutMs, what: `exit of cachewarm ${args.join(' ')}`, detail: () => lines.slice(-5) }),
    kill: (signal = 'SIGTERM') => void (child.exitCode === null && child.kill(signal)),
  };
}
