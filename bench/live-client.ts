/**
 * A live client of a source node, for the bench: one connection, a closed loop of `mg <key>`
 * (a hit answers `HD`, one line, after the same lookup and item lock a get takes) over keys
 * the node holds, one request a millisecond, each round trip timed: what the source's own
 * clients see while it is dumped.
 */
import { MemcachedConnection } from '../shared/memcached/connection.js';
import type { Endpoint } from '../shared/memcached/connection.js';
import { OneLine } from '../shared/memcached/commands.js';

export interface LatencySummary {
  readonly samples: number;
  readonly p50Micros: number;
  readonly p99Micros: number;
  readonly p999Micros: number;
}

export interface LiveClient {
  /** Round trips from now on count toward the next `take()`. */
  take(): LatencySummary;
  stop(): Promise<void>;
}

export async function startLiveClient(node: Endpoint, keys: readonly Buffer[]): Promise<LiveClient> {
  const conn = await MemcachedConnection.connect(node);
  let micros: number[] = [];
  let running = true;
  const loop = (async () => {
    for (let i = 0; running; i++) {
      const key = keys[i % keys.length] as Buffer;
      const started = process.hrtime.bigint();
      await conn.send(Buffer.concat([Buffer.from('mg '), key, Buffer.from('\r\n')]), new OneLine());
      micros.push(Number(process.hrtime.bigint() - started) / 1000);
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  })();
  return {
    take() {
      const sorted = Float64Array.from(micros).sort();
      micros = [];
      const at = (p: number): number => sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)] ?? 0;
      return { samples: sorted.length, p50Micros: at(0.5), p99Micros: at(0.99), p999Micros: at(0.999) };
    },
    async stop() {
      running = false;
      await loop;
      conn.close();
    },
  };
}
