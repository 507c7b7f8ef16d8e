import type { Connect } from '../shared/memcached/connect.js';
import { statsAt } from '../shared/memcached/commands.js';
import type { NodeSpec } from '../shared/topology.js';

export interface NodeStats {
  readonly node: NodeSpec;
  readonly items: number;
  readonly bytes: number;
  readonly pid: number;
  readonly uptimeSeconds: number;
  /** unix seconds the process started (`time - uptime`): with the pid, which process it is. */
  readonly startedAtSeconds: number;
  readonly version: string;
}

export function endpointOf(node: NodeSpec): { host: string; port: number; label: string } {
  return { host: node.host, port: node.port, label: node.id };
}

/** One `stats` round trip on a short-lived connection. */
export async function nodeStats(node: NodeSpec, connect: Connect, signal?: AbortSignal): Promise<NodeStats> {
  const s = await statsAt(endpointOf(node), connect, signal);
  const num = (name: string): number => Number(s.get(name) ?? 0);
  return {
    node,
    items: num('curr_items'),
    bytes: num('bytes'),
    pid: num('pid'),
    uptimeSeconds: num('uptime'),
    startedAtSeconds: num('time') - num('uptime'),
    version: s.get('version') ?? 'unknown',
  };
}
