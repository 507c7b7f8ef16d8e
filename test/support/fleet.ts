import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { type Topology, parseTopology } from '../../shared/topology.js';
import { type CliProcess, startCli } from './cli-process.js';
import { type Cluster, startCluster } from './cluster.js';
import { type AwsClients, type Fauxqs, awsClients, startFauxqs } from './fauxqs.js';
import { type StartMemcachedOptions } from './memcached.js';
import { within } from './wait.js';

export const TOKEN = 'distributed-test-token-0123456789';

/** Memcached replicas, a sidecar process beside each node of replica `a`, and fauxqs: a fleet on loopback. */
export interface Fleet {
  readonly fauxqs: Fauxqs;
  readonly aws: AwsClients;
  readonly cluster: Cluster;
  readonly sidecars: CliProcess[];
  readonly topology: Topology;
  readonly topologyFile: string;
  readonly tokenFile: string;
  readonly dir: string;
  stop(): Promise<void>;
}

export async function startFleet(sizes: Record<string, number>, options: StartMemcachedOptions = {}): Promise<Fleet> {
  const fauxqs = await startFauxqs();
  const aws = awsClients(fauxqs.endpoint);
  const cluster = await startCluster(sizes, options);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'cachewarm-distributed-'));
  const tokenFile = path.join(dir, 'token');
  await writeFile(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
  const sourceNodes = cluster.topology.replicas.get('a')?.nodes ?? [];
  const sidecars = sourceNodes.map((node) =>
    startCli(['dumper', 'serve', '--memcached', node.address, '--listen', '127.0.0.1:0', '--token-file', tokenFile, '--endpoint', fauxqs.endpoint]),
  );
  const urls = await Promise.all(sidecars.map(async (s) => String((await s.event('listening'))['url'])));
  const replicas: Record<string, { nodes: { address: string; sidecar?: string }[] }> = {};
  for (const name of Object.keys(sizes)) {
    const nodes = cluster.topology.replicas.get(name)?.nodes ?? [];
    replicas[name] = { nodes: nodes.map((n, i) => (name === 'a' ? { address: n.address, sidecar: urls[i] as string } : { address: n.address })) };
  }
  const document = { replicas };
  const topologyFile = path.join(dir, 'cluster.json');
  await writeFile(topologyFile, JSON.stringify(document));
  return {
    fauxqs,
    aws,
    cluster,
    sidecars,
    topology: parseTopology(document, topologyFile),
    topologyFile,
    tokenFile,
    dir,
    stop: async () => {
      for (const s of sidecars) s.kill();
      await Promise.all(sidecars.map((s) => within(s.exited, { what: 'a sidecar to exit' })));
      await cluster.stop();
      aws.destroy();
      await fauxqs.stop();
    },
  };
}

