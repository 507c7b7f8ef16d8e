import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { describe, test } from 'node:test';
import { requestedLogFormat } from '../bin/cli-log.js';
import { childEntry, createLogger, logTo } from '../shared/log.js';
import { sampleItems } from '../shared/sample-items.js';
import { VERSION } from '../shared/version.js';
import { bin, topologyFile, topologyFileOf } from './support/cli.js';
import { startCli } from './support/cli-process.js';
import { load, nowSeconds, startCluster } from './support/cluster.js';
import { startMemcached } from './support/memcached.js';

/** `cachewarm <args>` with stderr a pipe (not a terminal) and no log settings in its environment. */
async function run(args: readonly string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const { CACHEWARM_LOG_FORMAT: _format, CACHEWARM_LOG_LEVEL: _level, ...inherited } = process.env;
  const child = spawn(process.execPath, [bin, ...args], { env: { ...inherited, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (text: string) => (stdout += text));
  child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  const [code] = (await once(child, 'close')) as [number | null];
  return { code, stdout, stderr };
}

/** Every stderr line, parsed: each must be one JSON object. */
function jsonLines(stderr: string): Record<string, unknown>[] {
  return stderr
    .trimEnd()
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => {
      try {
        return JSON.parse(line) as Record<string, unknown>;
      } catch {
        assert.fail(`a log line that is not JSON: ${line}`);
      }
    });
}

function assertLogShape(entry: Record<string, unknown>): void {
  assert.equal(typeof entry['event'], 'string', JSON.stringify(entry));
  assert.equal(typeof entry['msg'], 'string', JSON.stringify(entry));
  assert.ok(['debug', 'info', 'warn', 'error'].includes(String(entry['level'])), JSON.stringify(entry));
  assert.ok(!Number.isNaN(Date.parse(String(entry['time']))), `an ISO time: ${JSON.stringify(entry)}`);
}

describe('logs: text on a terminal, JSON lines otherwise', () => {
  test('with stderr not a terminal, a usage error is one JSON line: level error, the message, its code and exit code', async () => {
    const result = await run(['warm', 'replica', '--topology', 'x.json', '--target', 'b', '--chunk-size', 'lots']);
    assert.equal(result.code, 2);
    const lines = jsonLines(result.stderr);
    assert.equal(lines.length, 1, result.stderr);
    const [failed] = lines as [Record<string, unknown>];
    assertLogShape(failed);
    assert.equal(failed['event'], 'failed');
    assert.equal(failed['level'], 'error');
    assert.equal(failed['code'], 'INVALID_ARGUMENT');
    assert.equal(failed['exitCode'], 2);
    assert.match(String(failed['msg']), /--chunk-size/);
  });

  test('--log-format text (or CACHEWARM_LOG_FORMAT=text) gives the one `cachewarm:` line a person reads', async () => {
    const file = await topologyFile({ replicas: { a: { nodes: [{ address: '127.0.0.1:1' }] }, b: { nodes: [{ address: '127.0.0.1:2' }] } } });
    for (const [args, env] of [
      [['--log-format', 'text'], {}],
      [[], { CACHEWARM_LOG_FORMAT: 'text' }],
    ] as const) {
      const result = await run(['warm', 'replica', '--topology', file, '--target', 'b', '--source', 'a', ...args], env);
      assert.equal(result.code, 1, result.stderr);
      assert.match(result.stderr, /^cachewarm: .*127\.0\.0\.1:1/m);
      assert.throws(() => JSON.parse(result.stderr.trim().split('\n')[0] ?? ''), 'not JSON');
    }
  });

  test('a warm logs its progress as JSON entries with the counts as fields, its summary stays on stdout, and --log-level warn drops them', async () => {
    const cluster = await startCluster({ a: 1, b: 1, c: 1 });
    try {
      await load(cluster.topology, 'a', sampleItems({ count: 20_000, valueBytes: 100, nowSeconds: nowSeconds() }));
      const file = await topologyFileOf(cluster.topology);
      // --max-ops stretches each warm past two progress ticks of --verbose (every second).
      const warm = (target: string, ...args: string[]) =>
        run(['warm', 'replica', '--topology', file, '--target', target, '--source', 'a', '--work-dir', path.dirname(file), '--verbose', '--max-ops', '8000', ...args]);
      const result = await warm('b');
      assert.equal(result.code, 0, result.stderr);
      const lines = jsonLines(result.stderr);
      for (const entry of lines) assertLogShape(entry);
      const progress = lines.filter((e) => e['event'] === 'progress');
      assert.ok(progress.length >= 1, result.stderr);
      const last = progress.at(-1) as { msg: string; dumped: { read: number }; written: { stored: number } };
      assert.ok(last.dumped.read > 0 && last.written.stored <= 20_000, JSON.stringify(last));
      assert.match(last.msg, /^dumped [\d,]+ items/);
      assert.match(result.stdout, / completed in /);

      const quiet = await warm('c', '--log-level', 'warn');
      assert.equal(quiet.code, 0, quiet.stderr);
      assert.equal(quiet.stderr, '');
      assert.match(quiet.stdout, / completed in /);
    } finally {
      await cluster.stop();
    }
  });

  test('a service logs text lines with --log-format text', async () => {
    const memcached = await startMemcached();
    const dir = await mkdtemp(path.join(os.tmpdir(), 'cachewarm-logging-'));
    const token = path.join(dir, 'token');
    await writeFile(token, 'secret\n');
    const sidecar = startCli(['dumper', 'serve', '--memcached', memcached.address, '--listen', '127.0.0.1:0', '--token-file', token, '--endpoint', 'http://127.0.0.1:1', '--log-format', 'text']);
    try {
      const listening = await waitForLine(sidecar.lines, /INFO: listening/);
      assert.match(String(listening['line']), new RegExp(`^\\[\\d\\d:\\d\\d:\\d\\d\\.\\d{3}\\] INFO: listening .*"url":"http://127\\.0\\.0\\.1:\\d+".*"version":"${VERSION}"`));
      sidecar.kill('SIGTERM');
      assert.equal(await sidecar.exit(), 0);
    } finally {
      sidecar.kill('SIGKILL');
      await memcached.stop();
    }
  });
});

describe('the logger', () => {
  test('an entry has its event, level, msg and fields; without a msg, the event in words; without a level, the one its event implies', () => {
    const written: Record<string, unknown>[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _encoding, done) {
        written.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        done();
      },
    });
    const log = logTo(createLogger({ format: 'json', destination, level: 'debug' }));
    log({ event: 'dump-started', jobId: 'j1' });
    log({ event: 'chunk-failed', chunk: 'c' });
    log({ event: 'progress', level: 'debug', msg: 'dumped 5 items' });
    assert.deepEqual(
      written.map(({ level, event, msg, jobId, chunk }) => ({ level, event, msg, jobId, chunk })),
      [
        { level: 'info', event: 'dump-started', msg: 'dump started', jobId: 'j1', chunk: undefined },
        { level: 'error', event: 'chunk-failed', msg: 'chunk failed', jobId: undefined, chunk: 'c' },
        { level: 'debug', event: 'progress', msg: 'dumped 5 items', jobId: undefined, chunk: undefined },
      ],
    );
    assert.ok(written.every((e) => typeof e['time'] === 'string' && typeof e['pid'] === 'number'));

    written.length = 0;
    const warnings = logTo(createLogger({ format: 'json', destination, level: 'warn' }));
    warnings({ event: 'dump-started' });
    warnings({ event: 'message-parked' });
    assert.deepEqual(written.map((e) => e['event']), ['message-parked'], 'below the level: dropped');
  });

  test("a child process's line joins this process's log with its own fields, without the child's time; text is kept as an error", () => {
    const line = JSON.stringify({ level: 'warn', time: '2026-01-01T00:00:00.000Z', pid: 7, hostname: 'h', event: 'message-parked', msg: 'message parked', reason: 'r' });
    assert.deepEqual(childEntry(line), { event: 'message-parked', msg: 'message parked', reason: 'r', level: 'warn' });
    assert.deepEqual(childEntry('TypeError: boom'), { event: 'child-output', level: 'error', msg: 'TypeError: boom' });
  });

  test('the format comes from --log-format, then CACHEWARM_LOG_FORMAT, then whether stderr is a terminal', () => {
    assert.equal(requestedLogFormat(['warm', '--log-format', 'text'], {}), 'text');
    assert.equal(requestedLogFormat(['warm', '--log-format=json'], { CACHEWARM_LOG_FORMAT: 'text' }), 'json');
    assert.equal(requestedLogFormat(['warm'], { CACHEWARM_LOG_FORMAT: 'text' }), 'text');
    assert.equal(requestedLogFormat(['warm', '--', '--log-format', 'text'], {}), process.stderr.isTTY ? 'text' : 'json');
  });
});

/** The first stderr line (text lines are kept as `{line}`) matching `pattern`. */
async function waitForLine(lines: readonly Record<string, unknown>[], pattern: RegExp, timeoutMs = 30_000): Promise<Record<string, unknown>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = lines.find((l) => pattern.test(String(l['line'] ?? JSON.stringify(l))));
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`no log line matching ${pattern} within ${timeoutMs} ms: ${JSON.stringify(lines)}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

