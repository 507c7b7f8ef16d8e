import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { once } from 'node:events';
import { mkdir, mkdtemp, readFile, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { checkWorkDir, failureOf } from '../bin/cli-support.js';
import { CachewarmError } from '../shared/errors.js';
import { sampleItems } from '../shared/sample-items.js';
import { bin, cachewarm, topologyFile, topologyFileOf } from './support/cli.js';
import { onlyJsonObject, runWithin, type TimedRun } from './support/cli-deadline.js';
import { startCli } from './support/cli-process.js';
import { load, nowSeconds, serverCounters, startCluster } from './support/cluster.js';

describe('the cachewarm command', () => {
  test('warm replica copies a replica and prints the summary as JSON with --json (naming the build), exiting 0', async () => {
    const cluster = await startCluster({ a: 2, b: 3 });
    try {
      await load(cluster.topology, 'a', sampleItems({ count: 5_000, valueBytes: 100, nowSeconds: nowSeconds() }));
      const file = await topologyFileOf(cluster.topology);
      const run = await cachewarm('warm', 'replica', '--topology', file, '--target', 'b', '--json', '--work-dir', path.dirname(file));
      assert.equal(run.code, 0, run.stderr);
      const summary = onlyJsonObject(run.stdout) as unknown as { complete: boolean; source: string; targetNodes: { stored: number }[]; version: string };
      assert.equal(summary.complete, true);
      const pkg = JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
      assert.equal(summary.version, pkg.version);
      assert.equal(summary.source, 'a');
      assert.equal(summary.targetNodes.reduce((s, n) => s + n.stored, 0), 5_000);
    } finally {
      await cluster.stop();
    }
  });

  test('a topology mistake exits 2 with a message naming the file and the field', async () => {
    const file = await topologyFile({ replicas: { a: { nodes: [{ address: '127.0.0.1:1', weight: 2 }] }, b: { nodes: [{ address: '127.0.0.1:2' }] } } });
    const run = await cachewarm('warm', 'replica', '--topology', file, '--target', 'b');
    assert.equal(run.code, 2);
    assert.ok(run.stderr.includes(file), run.stderr);
    assert.match(run.stderr, /replicas\["a"\]\.nodes\[0\]\.weight/);
    assert.match(run.stderr, /TOPOLOGY_INVALID/);
  });

  test('an unknown target replica exits 2 and lists the replicas there are', async () => {
    const file = await topologyFile({ replicas: { a: { nodes: [{ address: '127.0.0.1:1' }] } } });
    const run = await cachewarm('warm', 'replica', '--topology', file, '--target', 'zone-z');
    assert.equal(run.code, 2);
    assert.match(run.stderr, /zone-z/);
    assert.match(run.stderr, /"a"|\ba\b/);
  });

  test('a bad option value is refused before anything starts', async () => {
    const run = await cachewarm('warm', 'replica', '--topology', 'x.json', '--target', 'b', '--chunk-size', 'lots');
    assert.equal(run.code, 2);
    assert.match(run.stderr, /^cachewarm: .*--chunk-size/);
    assert.match(run.stderr, /lots/);
  });

  test('an unreachable source exits 1 naming the node', async () => {
    const file = await topologyFile({ replicas: { a: { nodes: [{ address: '127.0.0.1:1' }] }, b: { nodes: [{ address: '127.0.0.1:2' }] } } });
    const run = await cachewarm('warm', 'replica', '--topology', file, '--target', 'b', '--source', 'a');
    assert.equal(run.code, 1);
    assert.match(run.stderr, /cannot connect to a\/127\.0\.0\.1:1/);
  });

  test('SIGINT stops a warm: exit 130, and the job record says it failed and why', async () => {
    const cluster = await startCluster({ a: 1, b: 1 });
    try {
      await load(cluster.topology, 'a', sampleItems({ count: 5_000, valueBytes: 10, nowSeconds: nowSeconds() }));
      const file = await topologyFileOf(cluster.topology);
      const dir = path.dirname(file);
      const child = spawn(process.execPath, [bin, 'warm', 'replica', '--topology', file, '--target', 'b', '--max-ops', '500', '--job-id', 'stopped', '--work-dir', dir]);
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => {
        stderr += chunk.toString();
      });
      // Interrupt once the job is under way (its record exists).
      for (let i = 0; i < 100 && !existsSync(path.join(dir, 'stopped', 'job.json')); i++) await new Promise((r) => setTimeout(r, 50));
      child.kill('SIGINT');
      const [code] = (await once(child, 'exit')) as [number | null];
      assert.equal(code, 130, stderr);
      assert.match(stderr, /SIGINT/);
      const record = JSON.parse(await readFile(path.join(dir, 'stopped', 'job.json'), 'utf8')) as { status: string; error: string };
      assert.equal(record.status, 'failed');
      assert.match(record.error, /interrupted by SIGINT/);
    } finally {
      await cluster.stop();
    }
  });

  test('demo runs the main job on a local cluster and verifies every item', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'cachewarm-demo-'));
    const run = await cachewarm('demo', '--items', '3000', '--work-dir', dir);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /verify: 3,000 of 3,000 items identical/);
    assert.match(run.stdout, /demo-a -> demo-b completed/);
  });
});

/** What every refused command line must look like: exit 2, `cachewarm: …` first, no stack. */
function assertUsageError(run: TimedRun, pattern: RegExp): void {
  assert.equal(run.code, 2, `exit ${run.code}; stderr: ${run.stderr}`);
  assert.match(run.stderr, /^cachewarm: /, run.stderr);
  assert.match(run.stderr.split('\n')[0]!, pattern);
  assert.doesNotMatch(run.stderr, /^\s+at /m, 'no stack trace');
  assert.doesNotMatch(run.stderr, /^error: /m, "commander's own prefix is not shown");
}

describe('usage errors: exit 2, one `cachewarm:` line, the process exits', () => {
  const replica = ['warm', 'replica', '--topology', 'nowhere.json', '--target', 'b'];
  const instance = ['warm', 'instance', '--topology', 'nowhere.json', '--node', 'b/127.0.0.1:2'];
  const controller = ['controller', 'serve', '--topology', 'nowhere.json', '--token-file', 'nowhere'];
  const dumper = ['dumper', 'serve', '--token-file', 'nowhere'];
  const populator = ['populator', '--queue-url', 'http://127.0.0.1:1/q'];
  const cases: ReadonlyArray<[string, string[], RegExp]> = [
    // what commander's parser finds
    ['an unknown option', [...replica, '--bogus'], /unknown option '--bogus'/],
    ['a missing required option', ['warm', 'replica', '--target', 'b'], /required option '--topology <file>' not specified/],
    ['a missing option argument', ['warm', 'replica', '--target', 'b', '--topology'], /--topology <file>' argument missing/],
    ['an unknown command', ['warp'], /unknown command 'warp'/],
    ['an unknown subcommand', ['warm', 'replca'], /unknown command 'replca'/],
    ['no command at all', [], /a command is needed: warm, demo/],
    ['a command that needs a subcommand', ['warm'], /'warm' needs a command: replica, instance/],
    ['a value not among the choices', [...replica, '--writer', 'fast'], /--writer <kind>' argument 'fast' is invalid/],
    ['populator without its required option', ['populator'], /required option '--queue-url <url>'/],
    // range checks, warm replica
    ['--chunk-size 0', [...replica, '--chunk-size', '0'], /--chunk-size.*'0' is invalid.*from 64 KiB to 1 GiB/],
    ['--chunk-size 100GiB', [...replica, '--chunk-size', '100GiB'], /--chunk-size.*'100GiB' is invalid.*from 64 KiB to 1 GiB/],
    ['--chunk-size 1KiB', [...replica, '--chunk-size', '1KiB'], /--chunk-size.*from 64 KiB/],
    ['--chunk-size 4XB', [...replica, '--chunk-size', '4XB'], /--chunk-size.*invalid byte size "4XB"/],
    ['--max-ops -5', [...replica, '--max-ops', '-5'], /--max-ops.*'-5' is invalid.*whole number from 1/],
    ['--max-ops 0', [...replica, '--max-ops', '0'], /--max-ops.*whole number from 1/],
    ['--max-ops 1.5', [...replica, '--max-ops', '1.5'], /--max-ops.*whole number from 1/],
    ['--max-ops 4XB', [...replica, '--max-ops', '4XB'], /--max-ops.*whole number from 1/],
    ['--fetch-concurrency 0', [...replica, '--fetch-concurrency', '0'], /--fetch-concurrency.*from 1 to 64/],
    ['--fetch-concurrency 1000', [...replica, '--fetch-concurrency', '1000'], /--fetch-concurrency.*from 1 to 64/],
    ['--populate-concurrency 0', [...replica, '--populate-concurrency', '0'], /--populate-concurrency.*from 1 to 64/],
    ['--already-warm-ratio 0', [...replica, '--already-warm-ratio', '0'], /--already-warm-ratio/],
    ['--already-warm-ratio 2', [...replica, '--already-warm-ratio', '2'], /--already-warm-ratio/],
    ['--max-bytes 4XB', [...replica, '--transport', 'aws', '--max-bytes', '4XB'], /--max-bytes.*invalid byte size "4XB"/],
    ['--max-bytes 0', [...replica, '--transport', 'aws', '--max-bytes', '0'], /--max-bytes.*from 1 KiB/],
    ['--populator-concurrency 65', [...replica, '--populator-concurrency', '65'], /--populator-concurrency.*from 1 to 64/],
    ['--populators 100', [...replica, '--populators', '100'], /--populators.*from 0 to 64/],
    ['--populators -1', [...replica, '--populators', '-1'], /--populators/],
    ['--populators auto:5-2', [...replica, '--populators', 'auto:5-2'], /lower bound is above the upper/],
    ['--populators auto:0-0', [...replica, '--populators', 'auto:0-0'], /upper bound must be from 1 to 64/],
    // warm instance
    ['warm instance --chunk-size 0', [...instance, '--chunk-size', '0'], /--chunk-size.*from 64 KiB/],
    ['warm instance --populate-concurrency 65', [...instance, '--populate-concurrency', '65'], /--populate-concurrency.*from 1 to 64/],
    // demo
    ['demo --items 0', ['demo', '--items', '0'], /--items.*whole number from 1/],
    ['demo --value-size 2MiB', ['demo', '--value-size', '2MiB'], /--value-size.*to 1000 KiB/],
    ['demo --source-nodes 0', ['demo', '--source-nodes', '0'], /--source-nodes.*from 1 to 32/],
    ['demo --target-nodes 100', ['demo', '--target-nodes', '100'], /--target-nodes.*from 1 to 32/],
    ['demo --chunk-size 0', ['demo', '--chunk-size', '0'], /--chunk-size.*from 64 KiB/],
    // controller serve
    ['controller serve --min-share 2', [...controller, '--min-share', '2'], /--min-share.*from 0 to 1/],
    ['controller serve --chunk-size 100GiB', [...controller, '--chunk-size', '100GiB'], /--chunk-size.*to 1 GiB/],
    ['controller serve --max-ops -5', [...controller, '--max-ops', '-5'], /--max-ops.*whole number from 1/],
    ['controller serve --topology-poll-ms 0', [...controller, '--topology-poll-ms', '0'], /--topology-poll-ms.*from 10/],
    ['controller serve --populators 100', [...controller, '--populators', '100'], /--populators.*from 0 to 64/],
    // dumper serve
    ['dumper serve without --token-file', ['dumper', 'serve'], /required option '--token-file <file>'/],
    ['dumper serve --fetch-concurrency 0', [...dumper, '--fetch-concurrency', '0'], /--fetch-concurrency.*from 1 to 64/],
    ['dumper serve --max-chunk-size 100GiB', [...dumper, '--max-chunk-size', '100GiB'], /--max-chunk-size.*to 1 GiB/],
    ['dumper serve --listen :99999', [...dumper, '--listen', '127.0.0.1:99999'], /--listen.*99999/],
    // populator
    ['populator --concurrency 0', [...populator, '--concurrency', '0'], /--concurrency.*from 1 to 64/],
    ['populator --wait-seconds 30', [...populator, '--wait-seconds', '30'], /--wait-seconds.*from 1 to 20/],
  ];
  for (const [what, args, pattern] of cases) {
    test(`${what} is refused`, async () => {
      const run = await runWithin(args);
      assertUsageError(run, pattern);
      assert.equal(run.stdout, '', 'nothing on stdout without --json');
    });
  }

  test('--help and --version print and exit 0', async () => {
    const help = await runWithin(['warm', 'replica', '--help']);
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, /--chunk-size <size>/);
    const version = await runWithin(['--version']);
    assert.equal(version.code, 0, version.stderr);
    const pkg = JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    assert.equal(version.stdout.trim(), pkg.version);
    const helpCommand = await runWithin(['help', 'warm']);
    assert.equal(helpCommand.code, 0, helpCommand.stderr);
  });

  test('--work-dir naming a file: one line naming it, exit 2, and the process exits (with the target reachable)', async () => {
    // A reachable cluster: before the work directory was checked up front, the warm connected
    // to it, failed on the directory with a stack trace, and hung on the open connection.
    const cluster = await startCluster({ a: 1, b: 1 });
    try {
      await load(cluster.topology, 'a', sampleItems({ count: 200, valueBytes: 10, nowSeconds: nowSeconds() }));
      const file = await topologyFileOf(cluster.topology);
      const notADir = path.join(path.dirname(file), 'not-a-dir');
      await writeFile(notADir, 'a file\n');
      const run = await runWithin(['warm', 'replica', '--topology', file, '--target', 'b', '--work-dir', notADir], { deadlineMs: 15_000 });
      assertUsageError(run, /--work-dir .*not-a-dir: not a directory/);
      assert.ok(run.stderr.includes(notADir), run.stderr);
      assert.equal(run.stderr.trim().split('\n').length, 1, `one line: ${run.stderr}`);

      const json = await runWithin(['warm', 'instance', '--topology', file, '--node', cluster.topology.replicas.get('b')!.nodes[0]!.id, '--work-dir', path.join(notADir, 'sub'), '--json'], {
        deadlineMs: 15_000,
      });
      assertUsageError(json, /--work-dir .*not-a-dir\/sub: cannot create it: .*not-a-dir is a file, not a directory/);
      const outcome = onlyJsonObject(json.stdout);
      assert.equal(outcome['complete'], false);
      assert.deepEqual(outcome['error'], {
        code: 'INVALID_ARGUMENT',
        message: `--work-dir ${path.join(notADir, 'sub')}: cannot create it: ${notADir} is a file, not a directory`,
      });
    } finally {
      await cluster.stop();
    }
  });
});

describe('--json: one JSON object on stdout for every run of a warm, failed ones too', () => {
  test('an unreachable target node: exit 1, {complete: false, error: {code, message}}', async () => {
    const cluster = await startCluster({ a: 1 });
    try {
      await load(cluster.topology, 'a', sampleItems({ count: 200, valueBytes: 10, nowSeconds: nowSeconds() }));
      const source = cluster.topology.replicas.get('a')!.nodes[0]!.address;
      const file = await topologyFile({ replicas: { a: { nodes: [{ address: source }] }, b: { nodes: [{ address: '127.0.0.1:1' }] } } });
      const run = await runWithin(['warm', 'replica', '--topology', file, '--target', 'b', '--json', '--job-id', 'unreachable', '--work-dir', path.dirname(file)]);
      assert.equal(run.code, 1, run.stderr);
      const outcome = onlyJsonObject(run.stdout);
      assert.equal(outcome['complete'], false);
      const error = outcome['error'] as { code?: unknown; message?: unknown } | undefined;
      assert.equal(typeof error?.code, 'string', run.stdout);
      assert.match(String(error?.message), /127\.0\.0\.1:1/);
      assert.match(run.stderr, /^cachewarm: .*127\.0\.0\.1:1/m);
      assert.doesNotMatch(run.stderr, /^\s+at /m);
    } finally {
      await cluster.stop();
    }
  });

  test('an unreachable source: exit 1 and the failure as JSON', async () => {
    const file = await topologyFile({ replicas: { a: { nodes: [{ address: '127.0.0.1:1' }] }, b: { nodes: [{ address: '127.0.0.1:2' }] } } });
    const run = await runWithin(['warm', 'replica', '--topology', file, '--target', 'b', '--source', 'a', '--json', '--work-dir', path.dirname(file)]);
    assert.equal(run.code, 1, run.stderr);
    const outcome = onlyJsonObject(run.stdout);
    assert.equal(outcome['complete'], false);
    assert.equal(outcome['exitCode'], 1);
    assert.equal((outcome['error'] as { code: string }).code, 'NODE_UNREACHABLE');
  });

  const refused: ReadonlyArray<[string, (file: string) => string[], string]> = [
    ['an option value out of range', (file) => ['warm', 'replica', '--topology', file, '--target', 'b', '--json', '--chunk-size', '0'], 'INVALID_ARGUMENT'],
    ['an out-of-range value before --json', (file) => ['warm', 'replica', '--topology', file, '--target', 'b', '--max-ops', '-5', '--json'], 'INVALID_ARGUMENT'],
    ['a missing required option', (file) => ['warm', 'replica', '--topology', file, '--json'], 'INVALID_ARGUMENT'],
    ['an unknown option', (file) => ['warm', 'instance', '--topology', file, '--node', 'b/127.0.0.1:2', '--json', '--bogus'], 'INVALID_ARGUMENT'],
    ['an unknown target', (file) => ['warm', 'replica', '--topology', file, '--target', 'zone-z', '--json'], 'TOPOLOGY_INVALID'],
    ['an unknown node', (file) => ['warm', 'instance', '--topology', file, '--node', 'b/10.9.9.9:11211', '--json'], 'TOPOLOGY_INVALID'],
  ];
  for (const [what, args, code] of refused) {
    test(`${what}: exit 2 and the refusal as JSON`, async () => {
      const file = await topologyFile({ replicas: { a: { nodes: [{ address: '127.0.0.1:1' }] }, b: { nodes: [{ address: '127.0.0.1:2' }] } } });
      const run = await runWithin(args(file));
      assert.equal(run.code, 2, run.stderr);
      assert.match(run.stderr, /^cachewarm: /);
      const outcome = onlyJsonObject(run.stdout);
      assert.equal(outcome['complete'], false);
      assert.equal(outcome['exitCode'], 2);
      assert.equal((outcome['error'] as { code: string }).code, code);
      assert.equal(typeof (outcome['error'] as { message: unknown }).message, 'string');
    });
  }

  test('--help under --json is not a failure: exit 0, no JSON', async () => {
    const run = await runWithin(['warm', 'replica', '--json', '--help']);
    assert.equal(run.code, 0, run.stderr);
    assert.doesNotMatch(run.stdout, /^\{/);
  });

  test('SIGINT under --json: exit 130 and one object with error.code ABORTED', async () => {
    const cluster = await startCluster({ a: 1, b: 1 });
    try {
      await load(cluster.topology, 'a', sampleItems({ count: 5_000, valueBytes: 10, nowSeconds: nowSeconds() }));
      const file = await topologyFileOf(cluster.topology);
      const dir = path.dirname(file);
      const child = spawn(process.execPath, [bin, 'warm', 'replica', '--topology', file, '--target', 'b', '--max-ops', '500', '--job-id', 'stopped-json', '--work-dir', dir, '--json']);
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      for (let i = 0; i < 100 && !existsSync(path.join(dir, 'stopped-json', 'job.json')); i++) await new Promise((r) => setTimeout(r, 50));
      child.kill('SIGINT');
      const deadline = setTimeout(() => child.kill('SIGKILL'), 20_000);
      const [code] = (await once(child, 'close')) as [number | null];
      clearTimeout(deadline);
      assert.equal(code, 130, stderr);
      const outcome = onlyJsonObject(stdout);
      assert.equal(outcome['complete'], false);
      assert.equal(outcome['jobId'], 'stopped-json');
      assert.deepEqual(outcome['error'], { code: 'ABORTED', message: 'interrupted by SIGINT' });
    } finally {
      await cluster.stop();
    }
  });
});

describe('failureOf: the exit code and message of whatever a command threw', () => {
  test('an unexpected error is exit 1 with its message, never its stack', () => {
    const failure = failureOf(new TypeError("Cannot read properties of undefined (reading 'x')"));
    assert.deepEqual(failure, { exitCode: 1, code: 'UNEXPECTED', message: "Cannot read properties of undefined (reading 'x')" });
  });

  test('a system error keeps its code', () => {
    const error = Object.assign(new Error('EACCES: permission denied'), { code: 'EACCES' });
    assert.deepEqual(failureOf(error), { exitCode: 1, code: 'EACCES', message: 'EACCES: permission denied' });
  });

  test('usage and topology errors are 2, an interruption 130, other failures 1', () => {
    assert.equal(failureOf(new CachewarmError('INVALID_ARGUMENT', 'x')).exitCode, 2);
    assert.equal(failureOf(new CachewarmError('TOPOLOGY_INVALID', 'x')).exitCode, 2);
    assert.equal(failureOf(new CachewarmError('ABORTED', 'x')).exitCode, 130);
    assert.equal(failureOf(Object.assign(new Error('interrupted by SIGTERM'), { code: 'ABORTED' })).exitCode, 130);
    assert.equal(failureOf(new CachewarmError('NODE_UNREACHABLE', 'x')).exitCode, 1);
    assert.equal(failureOf('a string').exitCode, 1);
  });
});

describe('checkWorkDir', () => {
  test('an existing directory passes; a missing one is created', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'cachewarm-workdir-'));
    await checkWorkDir(dir);
    const fresh = path.join(dir, 'a', 'b');
    await checkWorkDir(fresh);
    assert.ok((await stat(fresh)).isDirectory());
  });

  test('a file, or a path through a file, is refused naming it', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'cachewarm-workdir-'));
    const file = path.join(dir, 'file');
    await writeFile(file, '');
    await assert.rejects(checkWorkDir(file), (e: unknown) => e instanceof CachewarmError && e.code === 'INVALID_ARGUMENT' && e.message === `--work-dir ${file}: not a directory`);
    const through = path.join(file, 'x', 'y');
    await assert.rejects(checkWorkDir(through), (e: unknown) => e instanceof CachewarmError && e.message === `--work-dir ${through}: cannot create it: ${file} is a file, not a directory`);
  });

  test('a path where no directory can be made is refused, and the check returns', { skip: existsSync('/proc/self') ? false : 'no /proc here' }, async () => {
    // mkdir -p of /proc/x never returns on Linux (Node's recursive mkdir retries ENOENT).
    await assert.rejects(checkWorkDir('/proc/cachewarm-work-dir'), (e: unknown) => e instanceof CachewarmError && e.message.startsWith('--work-dir /proc/cachewarm-work-dir: cannot create it: '));
  });

  test('a directory this process cannot write in is refused', { skip: process.getuid?.() === 0 ? 'root may write anywhere' : false }, async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'cachewarm-workdir-'));
    const locked = path.join(dir, 'locked');
    await mkdir(locked, { mode: 0o500 });
    await assert.rejects(checkWorkDir(locked), (e: unknown) => e instanceof CachewarmError && e.message === `--work-dir ${locked}: not writable`);
  });
});

describe('options from the environment, help for every command', () => {
  test('every option can come from CACHEWARM_*: a flag wins over it, and a bad value is a usage error naming the option', async () => {
    const fromEnvironment = await runWithin(['warm', 'replica', '--target', 'b'], { env: { CACHEWARM_TOPOLOGY: 'nowhere.json' } });
    assert.equal(fromEnvironment.code, 2);
    assert.match(fromEnvironment.stderr, /nowhere\.json: topology file not found/);
    const flagWins = await runWithin(['warm', 'replica', '--target', 'b', '--topology', 'elsewhere.json'], { env: { CACHEWARM_TOPOLOGY: 'nowhere.json' } });
    assert.match(flagWins.stderr, /elsewhere\.json: topology file not found/);
    const bad = await runWithin(['warm', 'replica', '--target', 'b', '--topology', 'x.json'], { env: { CACHEWARM_CHUNK_SIZE: '4XB' } });
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--chunk-size/);
  });

  test('`cachewarm help warm replica` shows that command, with examples and the variables of its options', async () => {
    const help = await runWithin(['help', 'warm', 'replica']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /^Usage: cachewarm warm replica \[options\]/);
    assert.match(help.stdout, /Examples:\n {2}\$ cachewarm warm replica --topology cluster\.json --target zone-c\n/);
    assert.match(help.stdout, /\(env: CACHEWARM_TARGET\)/);
    const unknown = await runWithin(['help', 'warm', 'nothing']);
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /^cachewarm: unknown command 'warm nothing'/);
  });
});

describe('--dry-run', () => {
  test('shows the plan (source and why, each target node against its memory, a read estimate) and writes nothing', async () => {
    const cluster = await startCluster({ a: 1, b: 2 });
    try {
      await load(cluster.topology, 'a', sampleItems({ count: 5_000, valueBytes: 100, nowSeconds: nowSeconds() }));
      const file = await topologyFileOf(cluster.topology);
      const run = await cachewarm('warm', 'replica', '--topology', file, '--target', 'b', '--dry-run', '--json', '--work-dir', path.dirname(file));
      assert.equal(run.code, 0, run.stderr);
      const plan = onlyJsonObject(run.stdout) as unknown as {
        dryRun: boolean;
        source: string;
        considered: { replica: string; rejected?: string }[];
        targetNodes: { expectedItems: number; fits: boolean; share: number }[];
        estimate: { sampledKeys: number; readSeconds: number };
      };
      assert.equal(plan.dryRun, true);
      assert.equal(plan.source, 'a');
      assert.deepEqual(plan.considered.find((c) => c.replica === 'b'), { replica: 'b', rejected: 'it is the target' });
      assert.ok(Math.abs(plan.targetNodes.reduce((sum, n) => sum + n.expectedItems, 0) - 5_000) <= 2, JSON.stringify(plan.targetNodes));
      assert.ok(plan.targetNodes.every((n) => n.fits));
      assert.equal(plan.estimate.sampledKeys, 2_000);
      for (const server of cluster.servers['b'] ?? []) assert.equal((await serverCounters(server)).cmdSet, 0, 'nothing written');
      assert.equal(existsSync(path.join(path.dirname(file), 'b')), false, 'no job started');
    } finally {
      await cluster.stop();
    }
  });
});

describe('--quiet and --verbose', () => {
  test('--quiet says nothing on stderr for a warm that completes; with --verbose it is a usage error', async () => {
    const cluster = await startCluster({ a: 1, b: 1 });
    try {
      await load(cluster.topology, 'a', sampleItems({ count: 2_000, valueBytes: 100, nowSeconds: nowSeconds() }));
      const file = await topologyFileOf(cluster.topology);
      const quiet = await cachewarm('warm', 'replica', '--topology', file, '--target', 'b', '--quiet', '--work-dir', path.dirname(file));
      assert.equal(quiet.code, 0, quiet.stderr);
      assert.equal(quiet.stderr, '');
      assert.match(quiet.stdout, / completed in /);
      const both = await cachewarm('warm', 'replica', '--topology', file, '--target', 'b', '--quiet', '--verbose');
      assert.equal(both.code, 2);
      assert.match(both.stderr, /^cachewarm: option '--quiet' cannot be used with option '--verbose'/);
    } finally {
      await cluster.stop();
    }
  });
});

describe('service logs', () => {
  test('every line is one JSON object with time, level, msg and its event; the start-up line names the build', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'cachewarm-logs-'));
    const tokenFile = path.join(dir, 'token');
    await writeFile(tokenFile, 'a-token-of-at-least-32-characters-long\n', { mode: 0o600 });
    const sidecar = startCli(['dumper', 'serve', '--memcached', '127.0.0.1:1', '--listen', '127.0.0.1:0', '--token-file', tokenFile, '--endpoint', 'http://127.0.0.1:1']);
    const listening = await sidecar.event('listening');
    sidecar.kill('SIGTERM');
    assert.equal(await sidecar.exited, 0);
    const pkg = JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    assert.equal(listening['version'], pkg.version);
    assert.ok(sidecar.lines.length >= 3, JSON.stringify(sidecar.lines));
    for (const line of sidecar.lines) {
      assert.ok(typeof line['time'] === 'string' && ['info', 'warn', 'error'].includes(line['level'] as string) && typeof line['msg'] === 'string', JSON.stringify(line));
    }
  });
});
