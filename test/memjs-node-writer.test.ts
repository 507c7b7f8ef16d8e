import assert from 'node:assert/strict';
import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import memjs from 'memjs';
import { MemjsNodeWriter } from '../populator/memjs-node-writer.js';
import type { RetryPolicy } from '../populator/retry-policy.js';
import { type Clock, systemClock } from '../shared/clock.js';
import { CachewarmError } from '../shared/errors.js';
import { type AddOutcome, type WritableItem, newAddOutcome } from '../shared/memcached/meta-add.js';
import { sampleItems } from '../shared/sample-items.js';
import { itemCount, load, nowSeconds, readFrom, startCluster } from './support/cluster.js';
import { type MemcachedProcess, freePort, startMemcached } from './support/memcached.js';
import { assertExactCopy } from './support/read-back.js';
import { within } from './support/wait.js';
import { cuttingProxy } from './support/cutting-proxy.js';

const QUICK_RETRY: RetryPolicy = { attempts: 3, baseDelayMs: 5, maxDelayMs: 10 };

/** systemClock, counting the backoff sleeps the writer asks for. */
function countingClock(): Clock & { sleeps: number[] } {
  const sleeps: number[] = [];
  return {
    sleeps,
    now: () => systemClock.now(),
    sleep: (ms, signal) => {
      sleeps.push(ms);
      return systemClock.sleep(ms, signal);
    },
  };
}

interface Written {
  total: AddOutcome;
  batches: number;
  valueBytes: number;
}

async function write(writer: MemjsNodeWriter, address: string, items: readonly WritableItem[], signal?: AbortSignal): Promise<Written> {
  const total: AddOutcome = newAddOutcome();
  let batches = 0;
  let valueBytes = 0;
  await writer.addItems(
    address,
    items,
    (outcome, bytes) => {
      batches++;
      valueBytes += bytes;
      total.stored += outcome.stored;
      total.existed += outcome.existed;
      total.refused.push(...outcome.refused);
    },
    signal,
  );
  return { total, batches, valueBytes };
}

/** Sends one text command and returns the reply once it ends with `until`. */
async function textCommand(server: { host: string; port: number }, command: Buffer | string, until: string): Promise<string> {
  const socket = connect({ host: server.host, port: server.port });
  await once(socket, 'connect');
  socket.write(command);
  let reply = '';
  for await (const chunk of socket) {
    reply += (chunk as Buffer).toString('latin1');
    if (reply.endsWith(until)) break;
  }
  socket.destroy();
  return reply;
}

/** The one node as a ring of its own, for the read-back checker. */
const ringOf = (server: { address: string }) => ({
  replica: 'one',
  hashing: 'spymemcached' as const,
  nodes: [{ address: server.address, ringName: server.address }],
});

const item = (key: Buffer | string, value: Buffer | string, flags: number, exptime: number): WritableItem => ({
  key: typeof key === 'string' ? Buffer.from(key) : key,
  value: typeof value === 'string' ? Buffer.from(value) : value,
  flags,
  exptime,
});

describe('MemjsNodeWriter against plain memcached', () => {
  let server: MemcachedProcess;
  before(async () => {
    server = await startMemcached({ memoryMb: 64 });
  });
  after(async () => {
    await server.stop();
  });

  test('adds items with the exact value, all 32 bits of flags and the absolute expiry', async () => {
    const now = nowSeconds();
    const items = [
      item('exact:zero-flags', 'v0', 0, 0),
      item('exact:all-flags', 'v1', 0xffffffff, now + 3_600),
      item('exact:high-bit', Buffer.from([0, 1, 2, 0xff, 0x0d, 0x0a]), 0x80000001, now + 40 * 86_400),
      item('exact:empty', '', 0x12345678, now + 600),
    ];
    const writer = new MemjsNodeWriter({ clock: systemClock });
    try {
      const { total } = await write(writer, server.address, items);
      assert.deepEqual(total, { stored: 4, existed: 0, refused: [] });
    } finally {
      await writer.close();
    }
    // Value, flags and the absolute expiry, exactly (by memcached's own clock: see read-back.ts).
    await assertExactCopy(ringOf(server), items);
  });

  test('pipelines thousands of adds, reporting outcomes in bounded batches', async () => {
    const items = sampleItems({ count: 5_000, valueBytes: 300, nowSeconds: nowSeconds(), seed: 'memjs-many' });
    const before = await itemCount(server);
    const writer = new MemjsNodeWriter({ clock: systemClock, maxInFlight: 64 });
    let largest = 0;
    try {
      const total: AddOutcome = newAddOutcome();
      let bytes = 0;
      await writer.addItems(server.address, items, (outcome, valueBytes) => {
        largest = Math.max(largest, outcome.stored + outcome.existed + outcome.refused.length);
        total.stored += outcome.stored;
        bytes += valueBytes;
      });
      assert.equal(total.stored, items.length);
      assert.equal(bytes, items.length * 300);
    } finally {
      await writer.close();
    }
    assert.ok(largest > 0 && largest <= 256, `outcome batch of ${largest} items`);
    assert.equal((await itemCount(server)) - before, items.length);
    await assertExactCopy(ringOf(server), items);
  });

  test('never overwrites a key the node already holds: it is counted as existed', async () => {
    await textCommand(server, 'set keep:me 5 0 3\r\nold\r\n', 'STORED\r\n');
    const writer = new MemjsNodeWriter({ clock: systemClock });
    try {
      const { total } = await write(writer, server.address, [item('keep:me', 'new value', 9, 0), item('keep:fresh', 'fresh', 1, 0)]);
      assert.deepEqual(total, { stored: 1, existed: 1, refused: [] });
      // Again: both present now.
      const again = await write(writer, server.address, [item('keep:me', 'newer', 10, 0), item('keep:fresh', 'other', 2, 0)]);
      assert.deepEqual(again.total, { stored: 0, existed: 2, refused: [] });
    } finally {
      await writer.close();
    }
    const [kept, fresh] = await readFrom(server, [Buffer.from('keep:me'), Buffer.from('keep:fresh')]);
    assert.equal(kept?.value.toString(), 'old');
    assert.equal(kept?.flags, 5);
    assert.equal(fresh?.value.toString(), 'fresh');
    assert.equal(fresh?.flags, 1);
  });

  test('a value over the item size limit fails alone, with the reason; the rest store', async () => {
    const items = [
      item('size:before', 'a', 1, 0),
      item('size:huge', Buffer.alloc(2 << 20, 0x61), 2, 0), // memcached's default limit is 1 MiB
      item('size:after', 'b', 3, 0),
    ];
    const writer = new MemjsNodeWriter({ clock: systemClock });
    let written: Written;
    try {
      written = await write(writer, server.address, items);
    } finally {
      await writer.close();
    }
    assert.equal(written.total.stored, 2);
    assert.equal(written.total.existed, 0);
    assert.deepEqual(written.total.refused.map((r) => r.reason), ['tooLarge']);
    assert.match(written.total.refused[0]?.message ?? '', /0x0003.*too large/i);
    assert.equal(written.valueBytes, 2 + (2 << 20));
    const back = await readFrom(server, items.map((i) => i.key));
    assert.equal(back[0]?.value.toString(), 'a');
    assert.equal(back[1], undefined);
    assert.equal(back[2]?.value.toString(), 'b');
  });

  test('keys that are not UTF-8 (or hold spaces and control bytes) round-trip byte for byte', async () => {
    const keys = [
      Buffer.from([0xc3, 0x28, 0xff, 0xfe, 0x80]), // invalid UTF-8, otherwise text-safe
      Buffer.from([0x6b, 0x20, 0x00, 0x0d, 0x0a, 0xa0]), // space, NUL, CR LF
      Buffer.from('k\u00e9y-\u2603', 'utf8'),
    ];
    const items = keys.map((key, i) => item(key, `value ${i}`, i + 100, 0));
    const writer = new MemjsNodeWriter({ clock: systemClock });
    try {
      const { total } = await write(writer, server.address, items);
      assert.deepEqual(total, { stored: 3, existed: 0, refused: [] });
    } finally {
      await writer.close();
    }
    const back = await readFrom(server, keys);
    for (const [i, got] of back.entries()) {
      assert.equal(got?.value.toString(), `value ${i}`, `key ${keys[i]?.toString('hex')}`);
      assert.equal(got?.flags, i + 100);
    }
    // A lossy UTF-8 conversion would have stored U+FFFD instead: that key must not exist.
    const lossy = Buffer.from(keys[0]?.toString('utf8') ?? '', 'utf8');
    assert.deepEqual(await readFrom(server, [lossy]), [undefined]);
  });

  test('a node that is down fails with NODE_UNREACHABLE naming it, after the retries', async () => {
    const down = await startMemcached();
    await down.stop();
    const clock = countingClock();
    const writer = new MemjsNodeWriter({ clock, retry: QUICK_RETRY, timeoutSeconds: 1 });
    try {
      await assert.rejects(write(writer, down.address, [item('x', 'y', 0, 0)]), (error: unknown) => {
        assert.ok(error instanceof CachewarmError);
        assert.equal(error.code, 'NODE_UNREACHABLE');
        assert.equal(error.context['node'], down.address);
        assert.match(error.message, new RegExp(`target node ${down.address} still failing after 3 attempts: .*ECONNREFUSED`));
        return true;
      });
    } finally {
      await writer.close();
    }
    assert.deepEqual(clock.sleeps, [5, 10]);
  });

  test('a dropped connection: the unanswered adds are sent again and every item lands once', async () => {
    // A proxy that cuts the first connection after relaying 100 replies; later ones pass.
    const proxy = await cuttingProxy(server.port, 100 * 24);
    const items = sampleItems({ count: 3_000, valueBytes: 200, nowSeconds: nowSeconds(), seed: 'memjs-cut' });
    const clock = countingClock();
    const writer = new MemjsNodeWriter({ clock, retry: QUICK_RETRY, timeoutSeconds: 1 });
    let written: Written;
    try {
      written = await write(writer, `127.0.0.1:${proxy.port}`, items);
    } finally {
      await writer.close();
      await proxy.close();
    }
    assert.ok(proxy.connections() >= 2, `the proxy saw ${proxy.connections()} connection(s)`);
    assert.ok(clock.sleeps.length >= 1, 'the writer backed off before retrying');
    // An add the server stored but whose reply was cut off is found present on the retry.
    assert.equal(written.total.stored + written.total.existed, items.length);
    assert.deepEqual(written.total.refused, []);
    assert.ok(written.total.stored >= 100);
    assert.equal(written.valueBytes, items.length * 200, 'each item reported exactly once');
    const back = await readFrom(server, items.map((i) => i.key));
    assert.equal(back.filter((b) => b === undefined).length, 0);
  });

  test('a connection closed after every add was written: the unanswered ones time out and are sent again', async () => {
    // 40 adds fit in one window, so all are written before the cut: no later write fails,
    // and memjs alone would wait for their replies forever.
    const proxy = await cuttingProxy(server.port, 10 * 24);
    const items = sampleItems({ count: 40, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'memjs-silent' });
    const clock = countingClock();
    const writer = new MemjsNodeWriter({ clock, retry: QUICK_RETRY, timeoutSeconds: 1 });
    let written: Written;
    try {
      written = await within(write(writer, `127.0.0.1:${proxy.port}`, items), { timeoutMs: 30_000, what: 'end of the write: the adds left unanswered were never failed' });
    } finally {
      await writer.close();
      await proxy.close();
    }
    // The cut connection's adds timed out and went again on a new connection, after a backoff.
    // (How many attempts that took is the machine's business: a loaded one may time out again.)
    assert.ok(proxy.connections() >= 2, `the proxy saw ${proxy.connections()} connection(s)`);
    assert.equal(clock.sleeps.length, proxy.connections() - 1, 'one backoff before each new connection');
    assert.deepEqual(clock.sleeps, [5, 10].slice(0, clock.sleeps.length), 'the policy\'s backoffs, in order');
    assert.equal(written.total.stored + written.total.existed, items.length);
    assert.ok(written.total.existed >= 30, `the adds stored before the cut are found present (${written.total.existed})`);
    assert.equal(written.valueBytes, items.length * 100);
    assert.equal((await readFrom(server, items.map((i) => i.key))).filter((b) => b === undefined).length, 0);
  });

  test('an aborted write rejects with the reason; close is idempotent and final', async () => {
    const writer = new MemjsNodeWriter({ clock: systemClock });
    const controller = new AbortController();
    controller.abort(new Error('stop now'));
    await assert.rejects(write(writer, server.address, [item('abort:x', 'y', 0, 0)], controller.signal), /stop now/);
    assert.deepEqual(await readFrom(server, [Buffer.from('abort:x')]), [undefined]);
    await writer.close();
    await writer.close();
    await assert.rejects(write(writer, server.address, [item('abort:y', 'y', 0, 0)]), /closed/);
  });
});

// --- SASL: memcached -S (binary protocol only, SASL PLAIN against a sasldb) ---

interface SaslMemcached {
  readonly address: string;
  stop(): Promise<void>;
}

const SASL_USER = 'warmer';
const SASL_PASSWORD = 'correct horse';

/** saslpasswd2 from PATH, else from /usr/sbin (not on a normal user's PATH on Debian). */
function saslpasswd2(): string {
  const onPath = (process.env['PATH'] ?? '').split(path.delimiter).some((dir) => dir !== '' && existsSync(path.join(dir, 'saslpasswd2')));
  return onPath || !existsSync('/usr/sbin/saslpasswd2') ? 'saslpasswd2' : '/usr/sbin/saslpasswd2';
}

/** Starts memcached -S with a sasldb holding one user. Needs saslpasswd2 (sasl2-bin; see scripts/ensure-memcached.sh). */
async function startSaslMemcached(): Promise<SaslMemcached> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'cachewarm-sasl-'));
  const db = path.join(dir, 'sasldb');
  await writeFile(path.join(dir, 'memcached.conf'), `mech_list: plain\nsasldb_path: ${db}\n`);
  try {
    execFileSync(saslpasswd2(), ['-a', 'memcached', '-c', '-p', '-f', db, SASL_USER], { input: SASL_PASSWORD, stdio: ['pipe', 'ignore', 'pipe'] });
  } catch (error) {
    throw new Error(`could not create the SASL user with saslpasswd2 (install sasl2-bin: scripts/ensure-memcached.sh): ${(error as Error).message}`);
  }
  const bin = process.env['MEMCACHED_BIN'] || 'memcached';
  const port = await freePort();
  const args = ['-l', '127.0.0.1', '-p', String(port), '-U', '0', '-m', '16', '-S'];
  if (process.getuid?.() === 0) args.push('-u', 'root');
  const child: ChildProcess = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, SASL_CONF_PATH: dir } });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  const killOnExit = (): void => {
    child.kill('SIGKILL');
  };
  process.on('exit', killOnExit);
  const exited = once(child, 'close');
  const stop = async (): Promise<void> => {
    process.off('exit', killOnExit);
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
  };
  // The text protocol is off with -S (a probe gets no answer at all): wait for the port to accept.
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null) {
      await stop();
      throw new Error(`memcached -S exited with ${child.exitCode}: ${stderr.trim()}`);
    }
    const accepted = await new Promise<boolean>((resolve) => {
      const probe = connect({ host: '127.0.0.1', port }, () => {
        probe.destroy();
        resolve(true);
      });
      probe.on('error', () => resolve(false));
    });
    if (accepted) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`memcached -S did not listen on port ${port} within 15 s: ${stderr.trim()}`);
    }
    await delay(25);
  }
  return { address: `127.0.0.1:${port}`, stop };
}

/** Reads a key back over the binary protocol, authenticated: value and the 32-bit flags. */
async function memjsGet(address: string, key: Buffer): Promise<{ value: Buffer; flags: number } | undefined> {
  const client = memjs.Client.create(address, { username: SASL_USER, password: SASL_PASSWORD, retries: 1, logger: { log: () => undefined } });
  try {
    const { value, flags } = await client.get(key as unknown as string);
    return value ? { value, flags: (flags as Buffer).readUInt32BE(0) } : undefined;
  } finally {
    client.close();
  }
}

describe('MemjsNodeWriter against memcached with SASL (-S)', () => {
  let sasl: SaslMemcached;
  before(async () => {
    sasl = await startSaslMemcached();
  });
  after(async () => {
    await sasl?.stop();
  });

  test('with the right credentials, adds items (flags and all) add-only', async () => {
    const items = [item('sasl:a', 'alpha', 0xffffffff, nowSeconds() + 3_600), item(Buffer.from([0xff, 0x00, 0x20]), 'beta', 7, 0)];
    const writer = new MemjsNodeWriter({ clock: systemClock, username: SASL_USER, password: SASL_PASSWORD });
    try {
      assert.deepEqual((await write(writer, sasl.address, items)).total, { stored: 2, existed: 0, refused: [] });
      const again = await write(writer, sasl.address, [item('sasl:a', 'other', 1, 0)]);
      assert.deepEqual(again.total, { stored: 0, existed: 1, refused: [] });
    } finally {
      await writer.close();
    }
    assert.deepEqual(await memjsGet(sasl.address, Buffer.from('sasl:a')), { value: Buffer.from('alpha'), flags: 0xffffffff });
    assert.deepEqual(await memjsGet(sasl.address, Buffer.from([0xff, 0x00, 0x20])), { value: Buffer.from('beta'), flags: 7 });
  });

  test('wrong or missing credentials fail at once, naming the node and the user', async () => {
    for (const credentials of [{ username: SASL_USER, password: 'wrong' }, {}]) {
      const clock = countingClock();
      const writer = new MemjsNodeWriter({ clock, retry: QUICK_RETRY, ...credentials });
      try {
        await assert.rejects(write(writer, sasl.address, [item('sasl:denied', 'x', 0, 0)]), (error: unknown) => {
          assert.ok(error instanceof CachewarmError);
          assert.equal(error.code, 'NODE_UNREACHABLE');
          assert.equal(error.context['node'], sasl.address);
          const who = 'username' in credentials ? `as user "${SASL_USER}"` : 'without credentials';
          assert.ok(error.message.startsWith(`target node ${sasl.address} refused SASL authentication ${who}`), error.message);
          return true;
        });
      } finally {
        await writer.close();
      }
      assert.deepEqual(clock.sleeps, [], 'a refused login is not retried');
    }
    assert.equal(await memjsGet(sasl.address, Buffer.from('sasl:denied')), undefined);
  });

  test('cachewarm warm replica --writer memjs warms a SASL-only target replica end to end', async () => {
    const cluster = await startCluster({ a: 1 });
    try {
      const items = sampleItems({ count: 2_000, valueBytes: 50, nowSeconds: nowSeconds(), seed: 'sasl-warm' });
      await load(cluster.topology, 'a', items);
      const dir = await mkdtemp(path.join(os.tmpdir(), 'cachewarm-sasl-cli-'));
      const topology = path.join(dir, 'cluster.json');
      const source = cluster.topology.replicas.get('a')?.nodes[0]?.address;
      await writeFile(topology, JSON.stringify({ replicas: { a: { nodes: [{ address: source }] }, b: { nodes: [{ address: sasl.address }] } } }));
      const passwordFile = path.join(dir, 'password');
      await writeFile(passwordFile, `${SASL_PASSWORD}\n`);
      const bin = fileURLToPath(new URL('../bin/cachewarm.js', import.meta.url));
      const args = ['warm', 'replica', '--topology', topology, '--target', 'b', '--writer', 'memjs', '--sasl-user', SASL_USER,
        '--sasl-password-file', passwordFile, '--work-dir', dir, '--json'];
      const run = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
        execFile(process.execPath, [bin, ...args], (error, stdout, stderr) => resolve({ code: error ? Number(error.code ?? 1) : 0, stdout, stderr }));
      });
      assert.equal(run.code, 0, run.stderr);
      const summary = JSON.parse(run.stdout) as { complete: boolean; targetNodes: { stored: number }[] };
      assert.equal(summary.complete, true);
      assert.equal(summary.targetNodes[0]?.stored, items.length);
      const sample = items[1234] as WritableItem;
      assert.deepEqual(await memjsGet(sasl.address, sample.key), { value: sample.value, flags: sample.flags });
    } finally {
      await cluster.stop();
    }
  });
});
