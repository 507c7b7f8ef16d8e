/**
 * The clients that read a warmed replica in production, run as programs of their own: pylibmc
 * (libmemcached's ketama, through Debian's python) and spymemcached (its KetamaConnectionFactory,
 * EVCache's base). Each reads hex keys on stdin and prints a line a key (see clients/), which
 * `assertReadAsExpected` compares with the items.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { WritableItem } from '../../shared/memcached/meta-add.js';
import { within } from './wait.js';

/** The project root: compiled tests run from dist/test, the client sources stay in test/support/clients. */
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const CLIENTS = path.join(ROOT, 'test', 'support', 'clients');
/** Debian's python, which Debian's python3-pylibmc is for (a pyenv python on PATH would not see it). */
export const PYTHON = '/usr/bin/python3';
export const SPYMEMCACHED_JAR = '/usr/share/java/spymemcached.jar';
const INSTALL = 'scripts/ensure-memcached.sh installs it';

/** Why pylibmc cannot run here, or undefined when it can. */
export function pylibmcMissing(): string | undefined {
  if (!existsSync(PYTHON)) return `${PYTHON} is not there`;
  const probe = spawnSync(PYTHON, ['-c', 'import pylibmc'], { encoding: 'utf8' });
  return probe.status === 0 ? undefined : `${PYTHON} cannot import pylibmc (Debian package python3-pylibmc; ${INSTALL}): ${probe.stderr.trim().split('\n').pop()}`;
}

/** Why spymemcached cannot run here, or undefined when it can. */
export function spymemcachedMissing(): string | undefined {
  if (!existsSync(SPYMEMCACHED_JAR)) return `${SPYMEMCACHED_JAR} is not there (Debian package libspymemcached-java; ${INSTALL})`;
  for (const tool of ['javac', 'java']) {
    if (spawnSync(tool, ['-version'], { encoding: 'utf8' }).error) return `${tool} is not on PATH (a JDK, 11 or later)`;
  }
  return undefined;
}

export interface Ran {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Feeds `input` to a child started with a piped stdin and collects what it prints; fails the
 * test (and kills it) if it has not exited within `timeoutMs`.
 */
export function collect(child: ChildProcess, input: string, what: string, timeoutMs = 120_000): Promise<Ran> {
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (text: string) => (stdout += text));
  child.stderr?.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  child.stdin?.on('error', () => undefined); // a client that dies early: its exit says why
  child.stdin?.end(input);
  const exited = new Promise<Ran>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
  return within(exited, { timeoutMs, what: `exit of ${what}`, detail: () => stderr.slice(-2000) }).finally(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
}

/** Runs a program here with `input` on stdin. */
export function run(command: string, args: readonly string[], input: string, timeoutMs?: number): Promise<Ran> {
  return collect(spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] }), input, `${command} ${args.join(' ')}`, timeoutMs);
}

/** SpyRead compiled against Debian's spymemcached into a temporary directory: its classpath, and a way to remove it. */
export async function compileSpyRead(): Promise<{ readonly classpath: string; remove(): Promise<void> }> {
  const classes = await mkdtemp(path.join(os.tmpdir(), 'cachewarm-spyread-'));
  const remove = (): Promise<void> => rm(classes, { recursive: true, force: true });
  const javac = await run('javac', ['-cp', SPYMEMCACHED_JAR, '-d', classes, path.join(CLIENTS, 'SpyRead.java')], '');
  if (javac.code !== 0) {
    await remove();
    assert.fail(`javac failed: ${javac.stderr}`);
  }
  return { classpath: `${SPYMEMCACHED_JAR}${path.delimiter}${classes}`, remove };
}

/** A client's stdin: the keys, hex, a line each. */
export const keysInput = (items: readonly WritableItem[]): string => items.map((item) => `${item.key.toString('hex')}\n`).join('');

/** What a client prints for an item found as expected: key, SHA-1 of the value, flags, length. */
const lineFor = (item: WritableItem): string =>
  `${item.key.toString('hex')}\t${createHash('sha1').update(item.value).digest('hex')}\t${item.flags >>> 0}\t${item.value.length}`;

/** Compares what the client read with the items, line for line; fails with the counts and the first few problems. */
export function assertReadAsExpected(client: string, ran: Ran, items: readonly WritableItem[]): void {
  assert.equal(ran.code, 0, `${client} failed: ${ran.stderr.slice(-3000)}`);
  const got = ran.stdout.split('\n').filter((line) => line !== '');
  assert.equal(got.length, items.length, `${client} answered for ${got.length} of ${items.length} keys`);
  const missing: string[] = [];
  const different: string[] = [];
  items.forEach((item, i) => {
    const want = lineFor(item);
    const line = got[i] as string;
    if (line === want) return;
    if (line.endsWith('\tMISS')) missing.push(item.key.toString());
    else different.push(`${item.key.toString()}: got ${line.split('\t').slice(1).join(' ')}, expected ${want.split('\t').slice(1).join(' ')}`);
  });
  const found = items.length - missing.length - different.length;
  assert.ok(
    missing.length === 0 && different.length === 0,
    `${client} read ${found} of ${items.length} items as written; ${missing.length} missing (${missing.slice(0, 5).join(', ')}), ` +
      `${different.length} different (${different.slice(0, 5).join('; ')})`,
  );
}
