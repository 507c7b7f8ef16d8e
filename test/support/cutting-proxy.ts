import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type Server as NetServer, type Socket, connect, createServer } from 'node:net';

export interface CuttingProxy {
  readonly port: number;
  connections(): number;
  close(): Promise<void>;
}

/** Relays to memcached; the first connection is cut (both ways) once `cutAfter` reply bytes went back. */
export async function cuttingProxy(targetPort: number, cutAfter: number): Promise<CuttingProxy> {
  let count = 0;
  const sockets = new Set<Socket>();
  const proxy: NetServer = createServer((client) => {
    const first = count++ === 0;
    const upstream = connect({ host: '127.0.0.1', port: targetPort });
    sockets.add(client).add(upstream);
    client.on('close', () => sockets.delete(client));
    upstream.on('close', () => sockets.delete(upstream));
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    client.pipe(upstream);
    let relayed = 0;
    upstream.on('data', (chunk: Buffer) => {
      if (!first) {
        client.write(chunk);
        return;
      }
      if (relayed >= cutAfter) return;
      const part = chunk.subarray(0, Math.max(0, cutAfter - relayed));
      relayed += part.length;
      client.write(part);
      if (relayed >= cutAfter) {
        client.end();
        upstream.destroy();
      }
    });
  });
  proxy.listen(0, '127.0.0.1');
  await once(proxy, 'listening');
  const address = proxy.address();
  assert.ok(address && typeof address === 'object');
  return {
    port: address.port,
    connections: () => count,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      proxy.close();
      await once(proxy, 'close');
    },
  };
}
