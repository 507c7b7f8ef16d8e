// Runs the built `cachewarm` command with a deadline: a run that does not exit in time fails
// the test (and is killed) instead of hanging the suite.
import { spawn } from 'node:child_process';
import { TEXT_LOGS, bin } from './cli.js';

export interface TimedRun {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly ms: number;
}

/** Default deadline: generous for a loaded 2-core machine, short next to a hang. */
export const EXIT_DEADLINE_MS = 20_000;

/**
 * `cachewarm <args>` as its own process, logging text (see TEXT_LOGS). Resolves when it
 * exits; rejects (after killing it) if it is still running `deadlineMs` after it started, with
 * what it printed so far.
 */
export function runWithin(args: readonly string[], options: { deadlineMs?: number; env?: Record<string, string> } = {}): Promise<TimedRun> {
  const deadlineMs = options.deadlineMs ?? EXIT_DEADLINE_MS;
  const started = Date.now();
  const child = spawn(process.execPath, [bin, ...args], { env: { ...process.env, ...TEXT_LOGS, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (text: string) => (stdout += text));
  child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`cachewarm ${args.join(' ')} did not exit within ${deadlineMs} ms; stderr: ${stderr}; stdout: ${stdout}`));
    }, deadlineMs);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: Date.now() - started });
    });
  });
}

/** The one JSON object a `--json` run prints on stdout: fails unless stdout is exactly one JSON line. */
export function onlyJsonObject(stdout: string): Record<string, unknown> {
  const lines = stdout.split('\n').filter((line) => line !== '');
  if (lines.length !== 1) throw new Error(`expected exactly one JSON line on stdout, got ${lines.length}: ${JSON.stringify(stdout)}`);
  const value: unknown = JSON.parse(lines[0]!);
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error(`expected a JSON object on stdout, got ${lines[0]}`);
  return value as Record<string, unknown>;
}
