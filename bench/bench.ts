/**
 * `npm run bench`: how fast a replica warm runs on this machine, next to memcached's own
 * ceiling measured in the same run. Figures, not assertions.
 *
 *   ceiling  the fastest pipelined write of the same items into one empty node from one
 *            process: every `ms` command built before the clock starts, then streamed on
 *            several connections (the best of 1 and 4 is kept)
 *   warm     `cachewarm warm replica` end to end, as a separate process (so its peak RSS is
 *            its own), from a 3-node source replica to an empty 4-node target, unprotected,
 *            with nothing else running (as the ceilings)
 *   harm     a live client's latencies on a source node, idle and during a warm with and
 *            without --protect-source
 *   crawl    the live client during a key listing alone, under each crawler setting
 *   deletes  an application deleting keys midway through a warm: how many come back to life
 *            in the target, with the delete reconcile and without (resurrection.ts)
 *   two      one dump filling two target replicas (`--target target,target2`): the source's
 *            reads per item, counted by the source nodes themselves (`get_hits`)
 *   aws      the S3+SQS transport, with the CPU each part spent: sidecars, controller,
 *            populators and the S3/SQS emulator
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { targetRingOf } from '../controller/warm-plan.js';
import { connectDirect } from '../shared/memcached/connect.js';
import { writeAll } from '../populator/write-to-ring.js';
import { systemClock } from '../shared/clock.js';
import { type MemcachedProcess, startMemcached, startMemcachedCluster } from '../shared/local-memcached.js';
import { MemcachedConnection } from '../shared/memcached/connection.js';
import { OneLine, statsAt, version } from '../shared/memcached/commands.js';
import { type WritableItem, MetaAddReplies, buildMetaAdds } from '../shared/memcached/meta-add.js';
import { sampleItems } from '../shared/sample-items.js';
import { ringOfTarget } from '../populator/write-to-ring.js';
import { type LatencySummary, type LiveClient, startLiveClient } from './live-client.js';
import { crawlHarm } from './crawl-harm.js';
import { resurrection } from './resurrection.js';
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
    /** Also run the S3+SQS transport (sidecars, fauxqs, populator processes); "false" to skip. */
    aws: { type: 'string', default: 'true' },
    /** Populator processes of the S3+SQS warm. */
    populators: { type: 'string', default: '2' },
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
    await conn.send(Buffer.from('flush_all\r\n'), new OneLine());
  } finally {
    conn.close();
  }
}

/**
 * Waits (at most a minute) until a freshly loaded node is quiet: its hash table no longer
 * growing and its LRU maintainer done moving items out of HOT and WARM.
 */
async function settled(node: MemcachedProcess): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const [general, items] = await Promise.all([statsAt(node), statsAt(node, undefined, undefined, 'items')]);
    const moving = [...items].some(([name, value]) => /^items:\d+:number_(hot|warm)$/.test(name) && value !== '0');
    if (!moving && general.get('hash_is_expanding') === '0') return;
    if (Date.now() > deadline) {
      log(`${node.address}: still settling after a minute; measuring anyway`);
      return;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** memcached's ceiling: prebuilt pipelined adds streamed into one empty node. */
async function ceiling(server: MemcachedProcess, items: readonly WritableItem[], connections: number): Promise<Rate> {
  const batches: { request: Buffer; batch: readonly WritableItem[] }[] = [];
  for (let i = 0; i < items.length; i += 256) {
    const batch = items.slice(i, i + 256);
    batches.push({ request: buildMetaAdds(batch), batch });
  }
  const conns = await Promise.all(Array.from({ length: connections }, () => MemcachedConnection.connect(server)));
  const started = performance.now();
  await Promise.all(
    conns.map(async (conn, c) => {
      const replies: Promise<unknown>[] = [];
      for (let b = c; b < batches.length; b += connections) {
        const { request, batch } = batches[b] as { request: Buffer; batch: readonly WritableItem[] };
        const reply = new MetaAddReplies(batch, conn.label);
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
  const s = await statsAt(server);
  if (Number(s.get('curr_items')) !== items.length) throw new Error(`ceiling run stored ${s.get('curr_items')} of ${items.length}`);
  return rate(seconds, items.length, items.length * VALUE_BYTES);
}

/** CPU seconds (user + system) a process has used, from /proc. */
async function cpuSeconds(pid: number): Promise<number> {
  const fields = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]?.split(' ') ?? [];
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

/** CPU seconds of this process's children that have exited and been waited for (cutime + cstime). */
async function reapedChildrenCpuSeconds(): Promise<number> {
  const fields = (await readFile('/proc/self/stat', 'utf8')).split(') ')[1]?.split(' ') ?? [];
  return (Number(fields[13]) + Number(fields[14])) / 100;
}

const sum = async (values: readonly Promise<number>[]): Promise<number> => (await Promise.all(values)).reduce((a, b) => a + b, 0);

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

interface WarmRun {
  readonly rate: Rate;
  readonly summary: WarmSummaryJson;
  readonly sourceCpu: number;
  readonly targetCpu: number;
  /** Requests the source nodes answered (`cmd_get`: the dump's reads, the reconcile's lookups, the read-back's). */
  readonly sourceRequests: number;
}

interface WarmSummaryJson {
  readonly complete: boolean;
  readonly durationMs: number;
  readonly peakRssBytes: number;
  readonly cpuMs: number;
  readonly minorPageFaults: number;
  readonly targetNodes: readonly { stored: number; existed: number; reconcileChecked: number }[];
  readonly sourceNodes: readonly { read: number; expired: number; gone: number }[];
  readonly problems?: readonly string[];
}

/**
 * `cachewarm warm replica` source → target.
 * `--force`: a flushed target still reports its old item count, and would pass for warm.
 */
function warmArgs(topologyFile: string, workDir: string, extra: readonly string[]): string[] {
  return ['warm', 'replica', '--topology', topologyFile, '--target', 'target', '--source', 'source',
    '--work-dir', workDir, '--chunk-size', String(args['chunk-size']), '--json', '--force', ...String(args['warm-args']).split(' ').filter(Boolean), ...extra];
}

/**
 * `cachewarm warm replica` source → target as a separate process, timed from start to exit.
 */
async function warmOnce(topologyFile: string, workDir: string, fleet: readonly MemcachedProcess[], extra: readonly string[] = []): Promise<WarmRun> {
  const sourceBefore = await memcachedCpu(fleet.slice(0, 3));
  const targetBefore = await memcachedCpu(fleet.slice(3, 7));
  const requestsBefore = await sourceGets(fleet.slice(0, 3));
  const started = performance.now();
  const out = await run(warmArgs(topologyFile, workDir, extra));
  const result = rate((performance.now() - started) / 1000, ITEMS, ITEMS * VALUE_BYTES);
  const summary = JSON.parse(out) as WarmSummaryJson;
  const stored = summary.targetNodes.reduce((sum, n) => sum + n.stored, 0);
  if (!summary.complete || stored !== ITEMS) {
    const total = (rows: readonly Record<string, number>[], field: string): number => rows.reduce((sum, r) => sum + (r[field] ?? 0), 0);
    throw new Error(
      `warm stored ${stored} of ${ITEMS} (complete ${summary.complete}; existed ${total(summary.targetNodes, 'existed')}, ` +
        `source read ${total(summary.sourceNodes, 'read')}, expired ${total(summary.sourceNodes, 'expired')}, gone ${total(summary.sourceNodes, 'gone')}; ${(summary.problems ?? []).join('; ')})`,
    );
  }
  return {
    rate: result,
    summary,
    sourceCpu: (await memcachedCpu(fleet.slice(0, 3))) - sourceBefore,
    targetCpu: (await memcachedCpu(fleet.slice(3, 7))) - targetBefore,
    sourceRequests: (await sourceGets(fleet.slice(0, 3))) - requestsBefore,
  };
}

/** Get requests (`mg` included) the nodes answered, summed. */
async function sourceGets(servers: readonly MemcachedProcess[]): Promise<number> {
  let total = 0;
  for (const s of servers) total += Number((await statsAt(s)).get('cmd_get'));
  return total;
}

/** The best ceiling of 1 and 4 connections, each into a node in the given state. */
async function bestCeiling(items: readonly WritableItem[], fresh: boolean): Promise<{ best: Rate; connections: number; cpu: number }> {
  let result: { best: Rate; connections: number; cpu: number } | undefined;
  for (const connections of [1, 4]) {
    const node = await startMemcached({ memoryMb: MEMORY_MB, threads: 4 });
    try {
      if (!fresh) {
        await ceiling(node, items, 4); // touch the memory the measured run will reuse
        await flush(node);
      }
      const before = await cpuSeconds(node.pid);
      const r = await ceiling(node, items, connections);
      const cpu = (await cpuSeconds(node.pid)) - before;
      if (!result || r.itemsPerSecond > result.best.itemsPerSecond) result = { best: r, connections, cpu };
    } finally {
      await node.stop();
    }
  }
  return result as { best: Rate; connections: number; cpu: number };
}

async function main(): Promise<void> {
  // The replicas' 7 nodes, all on this one machine, get FLEET_THREADS worker threads each
  // (one node per machine in a real fleet); a ceiling's node gets 4, for 4 connections.
  // Nodes 0–2: the source; 3–6: the target; 7–10: the second target of the two-target warm.
  const fleet = [...(await startMemcachedCluster(11, { memoryMb: MEMORY_MB, threads: FLEET_THREADS }))];
  const workDir = await mkdtemp(path.join(os.tmpdir(), 'cachewarm-bench-'));
  let client: LiveClient | undefined;
  try {
    const document = {
      replicas: {
        source: { nodes: fleet.slice(0, 3).map((s) => ({ address: s.address })) },
        target: { nodes: fleet.slice(3, 7).map((s) => ({ address: s.address })) },
        target2: { nodes: fleet.slice(7).map((s) => ({ address: s.address })) },
      },
    };
    const topologyFile = path.join(workDir, 'bench-topology.json');
    await writeFile(topologyFile, JSON.stringify(document));
    const topology = parseTopology(document, topologyFile);

    const conn = await MemcachedConnection.connect(fleet[0] as MemcachedProcess);
    const serverVersion = await version(conn);
    conn.close();
    log(`cachewarm bench: ${ITEMS.toLocaleString('en-US')} items of ${VALUE_BYTES} B, memcached ${serverVersion}, node ${process.version}, ${os.cpus().length} cores`);

    // Expiries an hour further out than the sample's own (the shortest is 10 minutes): none
    // expires during the bench, so every warm must store every item, and its rate counts them all.
    const items = sampleItems({ count: ITEMS, valueBytes: VALUE_BYTES, nowSeconds: Math.floor(Date.now() / 1000) + 3_600 });
    // On this VM the first touch of a page costs a fault the hypervisor backs, and memcached
    // touches its slab memory as it fills: a freshly started node ingests far slower than a
    // flushed one. So each ceiling is measured in both states, and the warm is run into both.
    log('measuring the ceiling: freshly started node, 1 and 4 connections');
    const freshCeiling = await bestCeiling(items, true);
    log('measuring the ceiling: flushed node (memory already touched), 1 and 4 connections');
    const touchedCeiling = await bestCeiling(items, false);

    const sourceRing = ringOfTarget(targetRingOf(topology, 'source'));
    log('loading the source replica (3 nodes)');
    const loaded = await writeAll(items, targetRingOf(topology, 'source'), { connect: connectDirect, clock: systemClock });
    if (loaded.stored !== ITEMS) throw new Error(`loaded ${loaded.stored} of ${ITEMS}`);
    // Let the LRU maintainer settle freshly written items, as on a source that has been serving:
    // until it moves them, the idle latencies would be those of a node still busy.
    await Promise.all(fleet.slice(0, 3).map((node) => settled(node)));
    // The speed figures are with the source unprotected and nothing else running, as the
    // ceilings are: the most a warm can do here. What protection costs and what it spares the
    // source's clients is measured next, apart.
    const unprotected = ['--protect-source', 'off'];
    log('replica warm 3 → 4 nodes into freshly started target nodes (embedded default, --protect-source off, separate process)');
    const intoFresh = await warmOnce(topologyFile, workDir, fleet, unprotected);
    for (const node of fleet.slice(3, 7)) await flush(node);
    log('replica warm again into the same target nodes, flushed (memory already touched)');
    const intoTouched = await warmOnce(topologyFile, workDir, fleet, unprotected);
    for (const node of fleet.slice(3, 7)) await flush(node);
    log('replica warm again into the same target nodes, flushed, --reconcile-deletes off');
    const unreconciled = await warmOnce(topologyFile, workDir, fleet, [...unprotected, '--reconcile-deletes', 'off']);
    log('resurrection: every 20th key deleted from source and target midway through a warm into the flushed target, with the delete reconcile and without');
    const resurrected = await resurrection(
      items,
      { source: { nodes: fleet.slice(0, 3), ring: sourceRing }, target: { nodes: fleet.slice(3, 7), ring: ringOfTarget(targetRingOf(topology, 'target')) } },
      async (extra) => {
        for (const node of fleet.slice(3, 7)) await flush(node);
        await run(warmArgs(topologyFile, workDir, [...unprotected, ...extra]));
      },
      async (victims) => void (await writeAll(victims, targetRingOf(topology, 'source'), { connect: connectDirect, clock: systemClock })),
    );

    const liveKeys = items.filter((item) => sourceRing.nodeFor(item.key) === sourceRing.nodeFor((items[0] as WritableItem).key)).slice(0, 10_000).map((i) => i.key);
    log('live client on source node 1: 10 s with nothing else running');
    client = await startLiveClient(fleet[0] as MemcachedProcess, liveKeys);
    const idle = await idleLatency(client);

    const harm = await sourceHarm(topologyFile, workDir, fleet, client, idle);
    log('crawler settings: every key of source node 1 listed under each, the live client timing meanwhile');
    const crawls = await crawlHarm(fleet[0] as MemcachedProcess, client);
    // Before the instance warm restarts that node under it.
    await client.stop();

    log('verify --all: every key of the source read back from source and target');
    const verified = await verifyAll(topologyFile);

    const two = await twoTargetWarm(topologyFile, workDir, fleet);
    const viaAws = args.aws === 'false' ? undefined : await awsWarm(document, workDir, fleet);
    log('instance warm: source node 1 of 3 restarted empty, warmed from the (full) target replica');
    const instance = await instanceWarm(topologyFile, workDir, fleet);

    const ratio = (warm: Rate, base: Rate): string => (warm.itemsPerSecond / base.itemsPerSecond).toFixed(2);
    const cpuLine = (w: WarmRun): string =>
      `cachewarm ${(w.summary.cpuMs / 1000).toFixed(1)} s = ${perItem(w.summary.cpuMs / 1000)}/item (${w.summary.minorPageFaults.toLocaleString('en-US')} page faults), ` +
      `memcached source ${w.sourceCpu.toFixed(1)} s + target ${w.targetCpu.toFixed(1)} s = ${perItem(w.sourceCpu + w.targetCpu)}/item; ` +
      `cachewarm ${((w.summary.cpuMs / 1000) / (w.sourceCpu + w.targetCpu)).toFixed(2)}× memcached's`;
    const lines = [
      '',
      `ceiling into a fresh node       ${show(freshCeiling.best)}   best of 1 and 4 connections: ${freshCeiling.connections}; memcached ${freshCeiling.cpu.toFixed(1)} CPU-s`,
      `ceiling into a flushed node     ${show(touchedCeiling.best)}   best of 1 and 4 connections: ${touchedCeiling.connections}; memcached ${touchedCeiling.cpu.toFixed(1)} CPU-s`,
      `warm into fresh nodes           ${show(intoFresh.rate)}   ${ratio(intoFresh.rate, freshCeiling.best)} of the fresh-node ceiling`,
      `warm into flushed nodes         ${show(intoTouched.rate)}   ${ratio(intoTouched.rate, touchedCeiling.best)} of the flushed-node ceiling`,
      `  without the delete reconcile  ${show(unreconciled.rate)}   ${ratio(unreconciled.rate, touchedCeiling.best)} of the flushed-node ceiling; the reconcile costs ` +
        `${((1 - intoTouched.rate.itemsPerSecond / unreconciled.rate.itemsPerSecond) * 100).toFixed(0)} % of the rate, ` +
        `source requests/item ${(intoTouched.sourceRequests / ITEMS).toFixed(2)} with it, ${(unreconciled.sourceRequests / ITEMS).toFixed(2)} without; ` +
        `cachewarm ${perItem(intoTouched.summary.cpuMs / 1000)}/item with it, ${perItem(unreconciled.summary.cpuMs / 1000)} without`,
      ...resurrected.map(
        (r) =>
          `  deleted keys back in the target ${r.reconcile ? 'with the reconcile   ' : 'without it           '} ${r.resurrected.toLocaleString('en-US')} of ${r.deleted.toLocaleString('en-US')}` +
          ` deleted from source and target ${r.duringWarm ? 'midway through the warm' : 'after the warm (it ended before half its items were in)'}`,
      ),
      `two targets from one dump      ${show(two.rate)} per target (one flushed, one fresh), ${ratio(two.rate, intoFresh.rate)} of the one-target warm into fresh nodes;` +
        ` source reads per item copied ${two.copyReadsPerItem.toFixed(3)} (get_hits ${two.sourceHits.toLocaleString('en-US')}, ${two.readBack.toLocaleString('en-US')} of them the read-backs', ${two.lookups.toLocaleString('en-US')} the delete reconcile's lookups); cachewarm ${perItem(two.cpuSeconds)}/item`,
      ...(viaAws
        ? [
            `warm via S3+SQS, flushed nodes  ${show(viaAws.warm.rate)}   ${ratio(viaAws.warm.rate, touchedCeiling.best)} of the flushed-node ceiling, ${ratio(viaAws.warm.rate, intoTouched.rate)} of the embedded warm` +
              ` (3 sidecars, ${args.populators} populators, fauxqs; controller peak RSS ${formatBytes(viaAws.warm.summary.peakRssBytes)})`,
            `S3+SQS CPU per item             sidecars ${perItem(viaAws.cpu.sidecars)}, controller ${perItem(viaAws.warm.summary.cpuMs / 1000)}, populators ${perItem(viaAws.cpu.populators)},` +
              ` emulator ${perItem(viaAws.cpu.emulator)}; memcached source ${perItem(viaAws.warm.sourceCpu)}, target ${perItem(viaAws.warm.targetCpu)}`,
          ]
        : []),
      `instance warm, 1 node of 3      ${show(instance.rate)}   ${instance.items.toLocaleString('en-US')} items into a restarted node;` +
        ` ${ratio(instance.rate, intoFresh.rate)} of the replica warm's rate into fresh nodes`,
      `verify --all                    ${Math.round(verified.keysPerSecond).toLocaleString('en-US')} keys/s: ${verified.checked.toLocaleString('en-US')} checked in ${(verified.durationMs / 1000).toFixed(1)} s,` +
        ` ${verified.identical.toLocaleString('en-US')} identical, ${verified.missing} missing, ${verified.different} different`,
      `warm peak RSS                   ${formatBytes(Math.max(intoFresh.summary.peakRssBytes, intoTouched.summary.peakRssBytes))} (chunk size ${args['chunk-size']})`,
      `warm CPU, fresh targets         ${cpuLine(intoFresh)}`,
      `warm CPU, flushed targets       ${cpuLine(intoTouched)}`,
      `live client on a source node    p50 / p99 / p99.9, one mg a millisecond on its own connection:`,
      ...harm.map(
        (h) =>
          `  ${h.label.padEnd(29)} ${latencies(h.latency)}${h.before ? `   p99 ${(h.latency.p99Micros / h.before.p99Micros).toFixed(1)}× the idle one` : ''}` +
          `${h.warm ? `   warm ${show(h.warm.rate)}, ${ratio(h.warm.rate, touchedCeiling.best)} of the flushed-node ceiling` : ''}`,
      ),
      `live client during a key listing of source node 1 alone (no reads), by crawler setting:`,
      ...crawls.map(
        (c) =>
          `  ${c.setting.label.padEnd(38)} ${latencies(c.latency)}   p99 ${(c.latency.p99Micros / idle.p99Micros).toFixed(1)}× the idle one;` +
          ` ${formatRate(c.keysPerSecond)} keys listed (${c.listings} listings)`,
      ),
      `(warm rates are end to end: the cachewarm process's start to its exit; ${os.cpus().length} cores shared by everything)`,
    ];
    process.stdout.write(`${lines.join('\n')}\n`);
  } finally {
    await client?.stop();
    await Promise.allSettled(fleet.map((s) => s.stop()));
    await rm(workDir, { recursive: true, force: true });
  }
}

/** CPU seconds spent on the run's items, per item. */
const perItem = (cpuSeconds: number): string => `${((cpuSeconds / ITEMS) * 1e6).toFixed(1)} µs`;

const latencies = (l: LatencySummary): string =>
  [l.p50Micros, l.p99Micros, l.p999Micros].map((us) => (us >= 1000 ? `${(us / 1000).toFixed(2)} ms` : `${Math.round(us)} µs`)).join(' / ');

interface HarmRow {
  readonly label: string;
  readonly latency: LatencySummary;
  readonly before?: LatencySummary;
  readonly warm?: WarmRun;
}

/** The live client's latencies with nothing else running: 10 s, once the source has settled. */
async function idleLatency(client: LiveClient): Promise<LatencySummary> {
  await client.take();
  await new Promise((r) => setTimeout(r, 10_000));
  return client.take();
}

/**
 * What a warm does to a live client of a source node: its latencies during a warm into the
 * flushed target with the default protection, then during one with `--protect-source off`,
 * next to those it saw with nothing else running.
 */
async function sourceHarm(topologyFile: string, workDir: string, fleet: readonly MemcachedProcess[], client: LiveClient, idle: LatencySummary): Promise<HarmRow[]> {
  const rows: HarmRow[] = [{ label: 'nothing else running', latency: idle }];
  for (const [label, extra] of [
    ['during a warm, protected 1.2', []],
    ['during a warm, unprotected', ['--protect-source', 'off']],
  ] as const) {
    for (const node of fleet.slice(3, 7)) await flush(node);
    // Settled: the flush and the last warm's aftermath are not the warm's doing.
    await new Promise((r) => setTimeout(r, 3_000));
    log(`replica warm into the flushed target with a live client on source node 1: ${label}`);
    await client.take();
    const warm = await warmOnce(topologyFile, workDir, fleet, extra);
    rows.push({ label, latency: await client.take(), before: idle, warm });
  }
  return rows;
}

/** Reads that found their item, summed over the nodes. */
async function getHits(servers: readonly MemcachedProcess[]): Promise<number> {
  let total = 0;
  for (const s of servers) total += Number((await statsAt(s)).get('get_hits'));
  return total;
}

/**
 * One dump filling two replicas, `target` (flushed) and `target2` (fresh), unprotected. The
 * source nodes count the reads (`get_hits`): the copy should read each item once, not once
 * per target; the read-back at the end of each target's job reads its sample again.
 */
async function twoTargetWarm(
  topologyFile: string,
  workDir: string,
  fleet: readonly MemcachedProcess[],
): Promise<{ rate: Rate; copyReadsPerItem: number; sourceHits: number; readBack: number; lookups: number; cpuSeconds: number }> {
  for (const node of fleet.slice(3, 7)) await flush(node);
  log('one dump filling two replicas: target (flushed) and target2 (fresh), --protect-source off');
  const hitsBefore = await getHits(fleet.slice(0, 3));
  const started = performance.now();
  const out = await run(['warm', 'replica', '--topology', topologyFile, '--target', 'target,target2', '--source', 'source', '--work-dir', workDir,
    '--chunk-size', String(args['chunk-size']), '--json', '--force', '--protect-source', 'off', ...String(args['warm-args']).split(' ').filter(Boolean)]);
  const seconds = (performance.now() - started) / 1000;
  type Outcome = { target: string; summary?: WarmSummaryJson & { verification?: { checked: number } } };
  const group = JSON.parse(out) as { complete: boolean; outcomes: Outcome[] };
  for (const o of group.outcomes) {
    const stored = o.summary?.targetNodes.reduce((sum, n) => sum + n.stored, 0);
    if (!o.summary?.complete || stored !== ITEMS) throw new Error(`the two-target warm stored ${stored} of ${ITEMS} in ${o.target}`);
  }
  const sourceHits = (await getHits(fleet.slice(0, 3))) - hitsBefore;
  const readBack = group.outcomes.reduce((sum, o) => sum + (o.summary?.verification?.checked ?? 0), 0);
  // Each target's delete reconcile looks up (mg u, a hit) every item it wrote.
  const lookups = group.outcomes.reduce((sum, o) => sum + (o.summary?.targetNodes ?? []).reduce((s, n) => s + n.reconcileChecked, 0), 0);
  return {
    rate: rate(seconds, ITEMS, ITEMS * VALUE_BYTES),
    copyReadsPerItem: (sourceHits - readBack - lookups) / ITEMS,
    sourceHits,
    readBack,
    lookups,
    // Each summary has the process's CPU when that target's job ended: the last is the whole.
    cpuSeconds: Math.max(...group.outcomes.map((o) => (o.summary?.cpuMs ?? 0) / 1000)),
  };
}

/** `cachewarm verify --all` of the warmed target against its source, as a separate process. */
async function verifyAll(topologyFile: string): Promise<{ keysPerSecond: number; checked: number; identical: number; missing: number; different: number; durationMs: number }> {
  const out = await run(['verify', '--topology', topologyFile, '--source', 'source', '--target', 'target', '--all', '--json']);
  return JSON.parse(out) as { keysPerSecond: number; checked: number; identical: number; missing: number; different: number; durationMs: number };
}

/**
 * An instance warm: the first source node is stopped and started again empty on its port (a
 * restarted node), then `cachewarm warm instance` fills it from the other replica, timed from
 * start to exit. Its rate counts the items written into that one node.
 */
async function instanceWarm(topologyFile: string, workDir: string, fleet: MemcachedProcess[]): Promise<{ rate: Rate; items: number }> {
  const node = fleet[0] as MemcachedProcess;
  await node.stop();
  fleet[0] = await startMemcached({ port: node.port, memoryMb: MEMORY_MB, threads: FLEET_THREADS });
  const started = performance.now();
  const out = await run(['warm', 'instance', '--topology', topologyFile, '--node', `source/${node.address}`, '--source', 'target',
    '--work-dir', workDir, '--chunk-size', String(args['chunk-size']), '--json', '--protect-source', 'off']);
  const seconds = (performance.now() - started) / 1000;
  const summary = JSON.parse(out) as WarmSummaryJson;
  const items = summary.targetNodes.reduce((sum, n) => sum + n.stored, 0);
  if (!summary.complete || items < ITEMS / 4) throw new Error(`the instance warm stored ${items} items`);
  return { rate: rate(seconds, items, items * VALUE_BYTES), items };
}

/**
 * The S3+SQS transport on this one machine: fauxqs (S3 and SQS over HTTP) in a process of its own, a
 * dumper sidecar process per source node, and the controller process with its populator
 * processes, into the flushed target nodes.
 */
async function awsWarm(
  document: { replicas: { source: { nodes: { address: string }[] }; target: { nodes: { address: string }[] } } },
  workDir: string,
  fleet: readonly MemcachedProcess[],
): Promise<{ warm: WarmRun; cpu: { sidecars: number; populators: number; emulator: number } }> {
  for (const node of fleet.slice(3, 7)) await flush(node);
  log(`replica warm again into the flushed target nodes through S3+SQS (fauxqs, 3 sidecars, ${args.populators} populators)`);
  const emulator = spawn(process.execPath, [fileURLToPath(new URL('./emulator.js', import.meta.url))], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    const endpoint = await firstLine(emulator);
    const { S3Client, CreateBucketCommand } = await import('@aws-sdk/client-s3');
    const env = { ...process.env, AWS_ACCESS_KEY_ID: 'bench', AWS_SECRET_ACCESS_KEY: 'bench', AWS_REGION: 'us-east-1' };
    const s3 = new S3Client({ endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: 'bench', secretAccessKey: 'bench' } });
    await s3.send(new CreateBucketCommand({ Bucket: 'bench' }));
    s3.destroy();
    const tokenFile = path.join(workDir, 'token');
    await writeFile(tokenFile, 'bench-token\n', { mode: 0o600 });
    const sidecars = document.replicas.source.nodes.map((node) =>
      spawn(process.execPath, [bin, 'dumper', 'serve', '--memcached', node.address, '--listen', '127.0.0.1:0', '--token-file', tokenFile, '--endpoint', endpoint], {
        env,
        stdio: ['ignore', 'ignore', 'pipe'],
      }),
    );
    try {
      const urls = await Promise.all(sidecars.map(listeningUrl));
      const withSidecars = {
        replicas: {
          source: { nodes: document.replicas.source.nodes.map((n, i) => ({ ...n, sidecar: urls[i] })) },
          target: document.replicas.target,
        },
      };
      const topologyFile = path.join(workDir, 'bench-topology-aws.json');
      await writeFile(topologyFile, JSON.stringify(withSidecars));
      process.env['AWS_ACCESS_KEY_ID'] = 'bench';
      process.env['AWS_SECRET_ACCESS_KEY'] = 'bench';
      process.env['AWS_REGION'] = 'us-east-1';
      // The populators are the controller's children: their CPU reaches this process's
      // children's account (with the controller's) once reaped.
      const sidecarsBefore = await sum(sidecars.map((c) => cpuSeconds(c.pid as number)));
      const emulatorBefore = await cpuSeconds(emulator.pid as number);
      const childrenBefore = await reapedChildrenCpuSeconds();
      const warm = await warmOnce(topologyFile, workDir, fleet, [
        '--transport', 'aws', '--bucket', 'bench', '--endpoint', endpoint, '--sidecar-token-file', tokenFile, '--populators', String(args.populators),
        '--protect-source', 'off',
      ]);
      return {
        warm,
        cpu: {
          sidecars: (await sum(sidecars.map((c) => cpuSeconds(c.pid as number)))) - sidecarsBefore,
          populators: (await reapedChildrenCpuSeconds()) - childrenBefore - warm.summary.cpuMs / 1000,
          emulator: (await cpuSeconds(emulator.pid as number)) - emulatorBefore,
        },
      };
    } finally {
      for (const sidecar of sidecars) sidecar.kill('SIGTERM');
      await Promise.all(sidecars.map((s) => (s.exitCode === null ? once(s, 'exit') : undefined)));
    }
  } finally {
    emulator.kill('SIGTERM');
    if (emulator.exitCode === null) await once(emulator, 'exit');
  }
}

/** The emulator's endpoint, the first line it prints. */
function firstLine(child: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).once('line', resolve);
    child.once('exit', (code) => reject(new Error(`the S3/SQS emulator exited (${code}) before listening`)));
  });
}

/** The URL a sidecar logs once it listens (`{"event":"listening","url":…}`). */
function listeningUrl(child: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    createInterface({ input: child.stderr as NodeJS.ReadableStream }).on('line', (line) => {
      if (line.includes('"listening"')) resolve(String((JSON.parse(line) as { url: string }).url));
    });
    child.once('exit', (code) => reject(new Error(`a sidecar exited (${code}) before listening`)));
  });
}

await main();
