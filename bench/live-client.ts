/**
 * A live client of a source node, for the bench: one connection, a closed loop of `mg <key>`
 * (a hit answers `HD`, one line, after the same lookup and item lock a get takes) over keys
 * the node holds, one request a millisecond, each round trip timed: what the source's own
 * clients see while it is dumped. It runs on a worker thread, so that the bench's own heap
 * (a million sample items) and its collections do not pass for the node's latency.
 */
import { once } from 'node:events';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { OneLine } from '../shared/memcached/commands.js';
import { type Endpoint, MemcachedConnection } from '../shared/memcached/connection.js';

export interface LatencySummary {
  readonly samples: number;
  readonly p50Micros: number;
  readonly p99Micros: number;
  readonly p999Micros: number;
}

export interface LiveClient {
  /** The round trips since the last take. */
  take(): Promise<LatencySummary>;
  stop(): Promise<void>;
}

interface ClientData {
  readonly host: string;
  readonly port: number;
  readonly keys: readonly string[];
}

export async function startLiveClient(node: Endpoint, keys: readonly Buffer[]): Promise<LiveClient> {
  const data: ClientData = { host: node.host, port: node.port, keys: keys.map((k) => k.toString('latin1')) };
  const worker = new Worker(new URL(import.meta.url), { workerData: data });
  await once(worker, 'message');
  return {
    async take() {
      worker.postMessage('take');
      const [summary] = (await once(worker, 'message')) as [LatencySummary];
      return summary;
    },
    async stop() {
      await worker.terminate();
    },
  };
}

async function runClient({ host, port, keys }: ClientData): Promise<void> {
  const conn = await MemcachedConnection.connect({ host, port });
  let micros: number[] = [];
  parentPort?.on('message', () => {
    const sorted = Float64Array.from(micros).sort();
    micros = [];
    const at = (p: number): number => sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)] ?? 0;
    parentPort?.postMessage({ samples: sorted.length, p50Micros: at(0.5), p99Micros: at(0.99), p999Micros: at(0.999) } satisfies LatencySummary);
  });
  parentPort?.postMessage('ready');
  for (let i = 0; ; i++) {
    const command = Buffer.from(`mg ${keys[i % keys.length] as string}\r\n`, 'latin1');
    const started = process.hrtime.bigint();
    await conn.send(command, new OneLine());
    micros.push(Number(process.hrtime.bigint() - started) / 1000);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

if (!isMainThread) await runClient(workerData as ClientData);
