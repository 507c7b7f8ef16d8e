import assert from 'node:assert/strict';
import { targetRingOf } from '../../controller/warm-plan.js';
import { ringOfTarget } from '../../populator/write-to-ring.js';
import { OneLine } from '../../shared/memcached/commands.js';
import { connectDirect } from '../../shared/memcached/connect.js';
import type { MemcachedConnection } from '../../shared/memcached/connection.js';
import { type Topology, parseAddress } from '../../shared/topology.js';

/** An application writing to its replicas during a warm: plain text-protocol deletes and sets, to the node each replica's ring names. */
export class Application {
  private readonly conns = new Map<string, Promise<MemcachedConnection>>();

  constructor(private readonly topology: Topology) {}

  async delete(replica: string, key: Buffer): Promise<void> {
    const line = await this.send(replica, key, Buffer.from(`delete ${key.toString()}\r\n`));
    assert.ok(line === 'DELETED' || line === 'NOT_FOUND', line);
  }

  async set(replica: string, key: Buffer, value: Buffer): Promise<void> {
    const command = Buffer.concat([Buffer.from(`set ${key.toString()} 0 0 ${value.length}\r\n`), value, Buffer.from('\r\n')]);
    assert.equal(await this.send(replica, key, command), 'STORED');
  }

  private async send(replica: string, key: Buffer, command: Buffer): Promise<string> {
    const address = ringOfTarget(targetRingOf(this.topology, replica)).nodeFor(key).address;
    let conn = this.conns.get(address);
    if (!conn) {
      conn = connectDirect({ ...parseAddress(address), label: address });
      this.conns.set(address, conn);
    }
    return (await conn).send(command, new OneLine());
  }

  async close(): Promise<void> {
    for (const conn of this.conns.values()) (await conn).close();
  }
}

