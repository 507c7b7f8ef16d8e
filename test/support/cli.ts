// Runs the built `cachewarm` command as a user would: a separate process, stdout and stderr piped.
import { execFile } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Topology } from '../../shared/topology.js';

export const bin = fileURLToPath(new URL('../../bin/cachewarm.js', import.meta.url));

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** A run still going after this long is killed and fails the test, rather than hang the suite. */
export const CACHEWARM_DEADLINE_MS = 300_000;

/**
 * Logs as text, as a person at a terminal reads them (stderr is a pipe here, where the default
 * is JSON lines: see test/logging.test.ts).
 */
export const TEXT_LOGS = { CACHEWARM_LOG_FORMAT: 'text' } as const;

export function cachewarm(...args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const options = { maxBuffer: 16 << 20, timeout: CACHEWARM_DEADLINE_MS, killSignal: 'SIGKILL' as const, env: { ...process.env, ...TEXT_LOGS } };
    execFile(process.execPath, [bin, ...args], options, (error, stdout, stderr) => {
      if (error?.killed && error.signal === 'SIGKILL') {
        reject(new Error(`cachewarm ${args.join(' ')} was killed: still running after ${CACHEWARM_DEADLINE_MS} ms (or over 16 MiB of output); stderr: ${stderr.slice(-2000)}`));
        return;
      }
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** A topology file in a directory of its own (which a test may use as the work directory too). */
export async function topologyFile(document: unknown): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'cachewarm-cli-'));
  const file = path.join(dir, 'cluster.json');
  await writeFile(file, JSON.stringify(document));
  return file;
}

/** The topology file a user would write for a test cluster. */
export function topologyFileOf(topology: Topology): Promise<string> {
  const replicas = [...topology.replicas.values()].map((r) => [r.name, { nodes: r.nodes.map((n) => ({ address: n.address })) }]);
  return topologyFile({ replicas: Object.fromEntries(replicas) });
}
