import { connectDirect } from '../../shared/memcached/connect.js';
import { writeAll } from '../../populator/write-to-ring.js';
import { targetRingOf } from '../../controller/warm-plan.js';
import { systemClock } from '../../shared/clock.js';
import { MemcachedConnection } from '../../shared/memcached/connection.js';
import { OneLine, statsAt } from '../../shared/memcached/commands.js';
import { MetaGetReplies, buildMetaGets } from '../../shared/memcached/meta-get.js';
import type { WritableItem } from '../../shared/memcached/meta-add.js';
import { type Topology, parseTopology } from '../../shared/topology.js';
import { type MemcachedProcess, type StartMemcachedOptions, startMemcached, startMemcachedCluster } from './memcached.js';

export interface Cluster {
  readonly topology: Topology;
  readonly servers: Readonly<Record<string, MemcachedProcess[]>>;
  /**
   * Stops node `index` of `replica` and starts an empty memcached on its port: a restarted
   * node, still where the topology names it (with other options when given: a node replaced
   * by one configured otherwise), after `outage.downMs` when given. The new process replaces it in `servers`.
   */
  restartEmpty(replica: string, index: number, options?: StartMemcachedOptions, outage?: { readonly downMs: number }): Promise<MemcachedProcess>;
  stop(): Promise<void>;
}

/** Starts one memcached per node, replicas named and sized as given, e.g. { a: 3, b: 4 }. */
export async function startCluster(sizes: Record<string, number>, options: StartMemcachedOptions = {}): Promise<Cluster> {
  const total = Object.values(sizes).reduce((a, b) => a + b, 0);
  const all = await startMemcachedCluster(total, { memoryMb: 128, ...options });
  const servers: Record<string, MemcachedProcess[]> = {};
  const replicas: Record<string, { nodes: { address: string }[] }> = {};
  let at = 0;
  for (const [name, size] of Object.entries(sizes)) {
    servers[name] = all.slice(at, at + size);
    replicas[name] = { nodes: (servers[name] as MemcachedProcess[]).map((s) => ({ address: s.address })) };
    at += size;
  }
  const memoryMb = options.memoryMb ?? 128;
  return {
    topology: parseTopology({ hashing: 'spymemcached', replicas }, 'test-topology'),
    servers,
    restartEmpty: async (replica, index, other = options, outage) => {
      const old = servers[replica]?.[index];
      if (!old) throw new Error(`no node ${index} in replica ${replica}`);
      await old.stop();
      if (outage) await new Promise((resolve) => setTimeout(resolve, outage.downMs));
      const fresh = await startMemcached({ memoryMb, ...other, port: old.port });
      (servers[replica] as MemcachedProcess[])[index] = fresh;
      all[all.indexOf(old)] = fresh;
      return fresh;
    },
    stop: async () => {
      await Promise.allSettled(all.map((s) => s.stop()));
    },
  };
}

/** Runs `run` against a fresh cluster (see startCluster), stopping the cluster however `run` ends. */
export async function withCluster(sizes: Record<string, number>, run: (cluster: Cluster) => Promise<void>, options: StartMemcachedOptions = {}): Promise<void> {
  const cluster = await startCluster(sizes, options);
  try {
    await run(cluster);
  } finally {
    await cluster.stop();
  }
}

/** Writes items to one node, whatever a ring would say: to give source nodes unequal loads. */
export async function loadNode(server: { address: string }, items: readonly WritableItem[]): Promise<void> {
  const ring = { replica: 'loader', hashing: 'spymemcached' as const, nodes: [{ address: server.address, ringName: server.address }] };
  const { stored } = await writeAll(items, ring, { connect: connectDirect, clock: systemClock });
  if (stored !== items.length) throw new Error(`loaded ${stored} of ${items.length} items into ${server.address}`);
}

/** Writes items to a replica the way its clients would: each to the node the ring names. */
export async function load(topology: Topology, replica: string, items: readonly WritableItem[]): Promise<void> {
  const { stored } = await writeAll(items, targetRingOf(topology, replica), { connect: connectDirect, clock: systemClock });
  if (stored !== items.length) throw new Error(`loaded ${stored} of ${items.length} items into ${replica}`);
}

export interface ReadBack {
  readonly value: Buffer;
  readonly flags: number;
  readonly ttl: number;
}

/** Reads keys from one server (without bumping them); undefined for a miss. */
export async function readFrom(server: { host: string; port: number }, keys: readonly Buffer[]): Promise<(ReadBack | undefined)[]> {
  const conn = await MemcachedConnection.connect(server);
  const out: (ReadBack | undefined)[] = new Array(keys.length).fill(undefined);
  try {
    for (let start = 0; start < keys.length; start += 500) {
      const end = Math.min(keys.length, start + 500);
      await conn.send(
        buildMetaGets(keys, start, end),
        new MetaGetReplies(end - start, {
          hit: (i, value, flags, ttl) => {
            out[start + i] = { value: Buffer.from(value), flags, ttl };
          },
          miss: () => undefined,
        }, 'read-back'),
      );
    }
  } finally {
    conn.close();
  }
  return out;
}

export async function itemCount(server: { host: string; port: number }): Promise<number> {
  return Number((await statsAt(server)).get('curr_items'));
}

export const nowSeconds = (): number => Math.floor(Date.now() / 1000);

/** The counters that tell whether a node was read or written: `stats` cmd_get, get_hits, cmd_set, total_items, curr_items. */
export interface ServerCounters {
  readonly cmdGet: number;
  /** Reads that found their item (a source guard's probe of an absent key is not one). */
  readonly getHits: number;
  readonly cmdSet: number;
  readonly totalItems: number;
  readonly currItems: number;
}

export async function serverCounters(server: { host: string; port: number }): Promise<ServerCounters> {
  const stats = await statsAt(server);
  const num = (name: string): number => Number(stats.get(name));
  return { cmdGet: num('cmd_get'), getHits: num('get_hits'), cmdSet: num('cmd_set'), totalItems: num('total_items'), currItems: num('curr_items') };
}

export function countersOf(servers: readonly { host: string; port: number }[]): Promise<ServerCounters[]> {
  return Promise.all(servers.map(serverCounters));
}

/** LRU crawls each server started: with `-o no_lru_maintainer`, only those a client asked for. */
export function crawlsStarted(servers: readonly { host: string; port: number }[]): Promise<number[]> {
  return Promise.all(servers.map(async (s) => Number((await statsAt(s)).get('lru_crawler_starts'))));
}

/** Empties every node of a replica with `flush_all` (its curr_items still counts the dead items until they are reclaimed). */
export async function flushReplica(topology: Topology, replica: string): Promise<void> {
  for (const node of topology.replicas.get(replica)?.nodes ?? []) {
    const conn = await connectDirect(node);
    try {
      await conn.send(Buffer.from('flush_all\r\n'), new OneLine());
    } finally {
      conn.close();
    }
  }
}

/** Raises a running memcached's memory limit (`cache_memlimit`, in MiB): room without a restart. */
export async function setMemoryLimit(server: { host: string; port: number }, mib: number): Promise<void> {
  const conn = await connectDirect(server);
  try {
    const reply = await conn.send(Buffer.from(`cache_memlimit ${mib}\r\n`), new OneLine());
    if (reply !== 'OK') throw new Error(`cache_memlimit ${mib} on ${server.host}:${server.port} answered ${reply}`);
  } finally {
    conn.close();
  }
}
