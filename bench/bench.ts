/**
 * `npm run bench`: how fast a replica warm runs on this machine, next to memcached's own
 * ceiling measured in the same run. Figures, not assertions.
 *
 *   ceiling  the fastest pipelined write of the same items into one empty node from one
 *            process: every `ms` command built before the clock starts, then streamed on
 *            several connections (the best of 1 and 4 is kept)
 *   warm     `cachewarm warm replica` end to end, as a separate process (so its peak RSS is
 *            its own), from a 3-node source replica to an empty 4-node target
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { targetRingOf } from '../controller/warm-replica.js';
import { connectDirect } from '../dumper/dump-node.js';
import { writeAll } from '../populator/write-to-ring.js';
import { systemClock } from '../shared/clock.js';
import { type MemcachedProcess, startMemcached, startMemcachedCluster } from '../shared/local-memcached.js';
import { MemcachedConnection } from '../shared/memcached/connection.js';
import { stats, version } from '../shared/memcached/commands.js';
import { type WritableItem, MetaAddReplies, buildMetaAdds } from '../shared/memcached/meta-add.js';
import { sampleItems } from '../shared/sample-items.js';
import { parseTopology } from '../shared/topology.js';
import { formatBytes, formatDuration, formatRate } from '../shared/units.js';

const { values: args } = parseArgs({
  options: {
    items: { type: 'string', default: '1000000' },
    'value-size': { type: 'string', default: '1024' },
    'chunk-size': { type: 'string', default: '4MiB' },
    /** Writes a V8 CPU profile of the warm process into this directory. */
    'cpu-prof-dir': { type: 'string' },
    'fleet-threads': { type: 'string', default: '2' },
    /** Extra options for the warm, e.g. "--fetch-concurrency 1". */
    'warm-args': { type: 'string', default: '' },
  },
});
const ITEMS = Number(args.items);
const FLEET_THREADS = Number(args['fleet-threads']);
const VALUE_BYTES = Number(args['value-size']);
// Room for every item on any one node (the ceiling's node takes them all); memcached only
// allocates what it uses.
const MEMORY_MB = Math.ceil((ITEMS * (VALUE_BYTES + 200) * 1.25) / 2 ** 20) + 64;

const bin = fileURLToPath(new URL('../bin/cachewarm.js', import.meta.url));
const log = (line: string): void => void process.stderr.write(`${line}\n`);

interface Rate {
  readonly seconds: number;
  readonly itemsPerSecond: number;
  readonly bytesPerSecond: number;
}

function rate(seconds: number, items: number, bytes: number): Rate {
  return { seconds, itemsPerSecond: items / seconds, bytesPerSecond: bytes / seconds };
}

const show = (r: Rate): string =>
  `${formatRate(r.itemsPerSecond)} items, ${formatBytes(r.bytesPerSecond)}/s (${formatDuration(r.seconds * 1000)})`;

async function flush(server: MemcachedProcess): Promise<void> {
  const conn = await MemcachedConnection.connect(server);
  try {
    const { OneLine } = await import('../shared/memcached/commands.js');
    await conn.send(Buffer.from('flush_all\r\n'), new OneLine());
  } finally {
    conn.close();
  }
}

/** memcached's ceiling: prebuilt pipelined adds streamed into one empty node. */
async function ceiling(server: MemcachedProcess, items: readonly WritableItem[], connections: number): Promise<Rate> {
  const batches: { request: Buffer; count: number }[] = [];
  for (let i = 0; i < items.length; i += 256) {
    const batch = items.slice(i, i + 256);
    batches.push({ request: buildMetaAdds(batch), count: batch.length });
  }
  const conns = await Promise.all(Array.from({ length: connections }, () => MemcachedConnection.connect(server)));
  const started = performance.now();
  await Promise.all(
    conns.map(async (conn, c) => {
      const replies: Promise<unknown>[] = [];
      for (let b = c; b < batches.length; b += connections) {
        const { request, count } = batches[b] as { request: Buffer; count: number };
        const reply = new MetaAddReplies(count, conn.label);
        await conn.enqueue(request, reply);
        replies.push(reply.promise);
        // Bound what is in flight the way any real writer must.
        if (replies.length >= 64) await replies.shift();
      }
      await Promise.all(replies);
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  for (const conn of conns) conn.close();
  const s = await statsOf(server);
  if (Number(s.get('curr_items')) !== items.length) throw new Error(`ceiling run stored ${s.get('curr_items')} of ${items.length}`);
  return rate(seconds, items.length, items.length * VALUE_BYTES);
}

async function statsOf(server: MemcachedProcess): Promise<Map<string, string>> {
  const conn = await MemcachedConnection.connect(server);
  try {
    return await stats(conn);
  } finally {
    conn.close();
  }
}

/** CPU seconds (user + system) a process has used, from /proc. */
async function cpuSeconds(pid: number): Promise<number> {
  const { readFile } = await import('node:fs/promises');
  const fields = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]?.split(' ') ?? [];
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

async function memcachedCpu(servers: readonly MemcachedProcess[]): Promise<number> {
  let total = 0;
  for (const s of servers) total += await cpuSeconds(s.pid);
  return total;
}

function run(warmArgs: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const profile = args['cpu-prof-dir'] ? ['--cpu-prof', `--cpu-prof-dir=${args['cpu-prof-dir']}`] : [];
    execFile(process.execPath, [...profile, bin, ...warmArgs], { maxBuffer: 64 << 20 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`cachewarm ${warmArgs.join(' ')} failed: ${stderr}`));
      else resolve(stdout);
    });
  });
}

async function main(): Promise<void> {
  // The ceiling's node gets 4 worker threads, enough for 4 connections; the replicas' 7 nodes,
  // all on this one machine, get FLEET_THREADS each (one node per machine in a real fleet).
  const ceilingNode = await startMemcached({ memoryMb: MEMORY_MB, threads: 4 });
  const fleet = await startMemcachedCluster(7, { memoryMb: MEMORY_MB, threads: FLEET_THREADS });
  const servers = [ceilingNode, ...fleet];
  const workDir = await mkdtemp(path.join(os.tmpdir(), 'cachewarm-bench-'));
  try {
    const rest = fleet;
    const document = {
      replicas: {
        source: { nodes: rest.slice(0, 3).map((s) => ({ address: s.address })) },
        target: { nodes: rest.slice(3).map((s) => ({ address: s.address })) },
      },
    };
    const topologyFile = path.join(workDir, 'bench-topology.json');
    await writeFile(topologyFile, JSON.stringify(document));
    const topology = parseTopology(document, topologyFile);

    const conn = await MemcachedConnection.connect(ceilingNode);
    const serverVersion = await version(conn);
    conn.close();
    log(`cachewarm bench: ${ITEMS.toLocaleString('en-US')} items of ${VALUE_BYTES} B, memcached ${serverVersion}, node ${process.version}, ${os.cpus().length} cores`);

    const items = sampleItems({ count: ITEMS, valueBytes: VALUE_BYTES, nowSeconds: Math.floor(Date.now() / 1000) });
    log('measuring the ceiling (1 and 4 connections into one empty node)');
    const oneCpuBefore = await cpuSeconds(ceilingNode.pid);
    const one = await ceiling(ceilingNode, items, 1);
    const oneCpu = (await cpuSeconds(ceilingNode.pid)) - oneCpuBefore;
    await flush(ceilingNode);
    const ceilingCpuBefore = await cpuSeconds(ceilingNode.pid);
    const four = await ceiling(ceilingNode, items, 4);
    const ceilingCpu = (await cpuSeconds(ceilingNode.pid)) - ceilingCpuBefore;
    const best = one.itemsPerSecond >= four.itemsPerSecond ? one : four;
    await flush(ceilingNode);

    log('loading the source replica (3 nodes)');
    const loaded = await writeAll(items, targetRingOf(topology, 'source'), { connect: connectDirect, clock: systemClock });
    if (loaded.stored !== ITEMS) throw new Error(`loaded ${loaded.stored} of ${ITEMS}`);
    // Let the LRU maintainer settle freshly written items, as on a source that has been serving.
    await new Promise((r) => setTimeout(r, 2_000));

    log('running the replica warm (3 → 4 nodes, embedded default, separate process)');
    const sourceCpuBefore = await memcachedCpu(rest.slice(0, 3));
    const targetCpuBefore = await memcachedCpu(rest.slice(3));
    const started = performance.now();
    const out = await run(['warm', 'replica', '--topology', topologyFile, '--target', 'target', '--source', 'source',
      '--work-dir', workDir, '--chunk-size', String(args['chunk-size']), '--json', ...String(args['warm-args']).split(' ').filter(Boolean)]);
    const warmRate = rate((performance.now() - started) / 1000, ITEMS, ITEMS * VALUE_BYTES);
    const sourceCpu = (await memcachedCpu(rest.slice(0, 3))) - sourceCpuBefore;
    const targetCpu = (await memcachedCpu(rest.slice(3))) - targetCpuBefore;
    const summary = JSON.parse(out) as {
      complete: boolean;
      durationMs: number;
      peakRssBytes: number;
      cpuMs: number;
      minorPageFaults: number;
      targetNodes: { stored: number }[];
    };
    const stored = summary.targetNodes.reduce((s, n) => s + n.stored, 0);
    if (!summary.complete || stored !== ITEMS) throw new Error(`warm stored ${stored} of ${ITEMS}`);
    const inside = rate(summary.durationMs / 1000, ITEMS, ITEMS * VALUE_BYTES);

    const lines = [
      '',
      `ceiling, 1 connection          ${show(one)}`,
      `ceiling, 4 connections         ${show(four)}`,
      `replica warm, end to end       ${show(warmRate)}   (process start to exit)`,
      `replica warm, job only         ${show(inside)}   (source selection to summary)`,
      `warm / ceiling                 ${(warmRate.itemsPerSecond / best.itemsPerSecond).toFixed(2)} end to end, ${(inside.itemsPerSecond / best.itemsPerSecond).toFixed(2)} job only`,
      `warm peak RSS                  ${formatBytes(summary.peakRssBytes)} (chunk size ${args['chunk-size']})`,
      `warm CPU                       cachewarm ${(summary.cpuMs / 1000).toFixed(1)} s (${summary.minorPageFaults.toLocaleString('en-US')} page faults), memcached: source ${sourceCpu.toFixed(1)} s, target ${targetCpu.toFixed(1)} s; ${os.cpus().length} cores`,
      `ceiling CPU                    memcached ${oneCpu.toFixed(1)} s with 1 connection, ${ceilingCpu.toFixed(1)} s with 4`,
    ];
    process.stdout.write(`${lines.join('\n')}\n`);
  } finally {
    await Promise.allSettled(servers.map((s) => s.stop()));
    await rm(workDir, { recursive: true, force: true });
  }
}

await main();
