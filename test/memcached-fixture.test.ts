import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer } from 'node:net';
import { once } from 'node:events';
import { freePort, startMemcached, startMemcachedCluster, type MemcachedProcess } from './support/memcached.js';

/** Sends one command over a fresh socket and returns the reply up to `terminator`. */
async function ask(port: number, command: string, terminator = '\r\n'): Promise<string> {
  const socket = connect({ host: '127.0.0.1', port });
  socket.setEncoding('utf8');
  socket.setTimeout(3_000, () => socket.destroy(new Error(`no reply to ${JSON.stringify(command)}`)));
  try {
    await once(socket, 'connect');
    socket.write(command);
    let reply = '';
    for await (const chunk of socket) {
      reply += String(chunk);
      if (reply.endsWith(terminator)) return reply;
    }
    throw new Error(`connection closed after ${JSON.stringify(reply)}`);
  } finally {
    socket.destroy();
  }
}

/** Resolves with the connection error code, or undefined when something accepted the connection. */
async function connectError(port: number): Promise<string | undefined> {
  const socket = connect({ host: '127.0.0.1', port });
  try {
    await once(socket, 'connect');
    return undefined;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code;
  } finally {
    socket.destroy();
  }
}

describe('memcached fixture', () => {
  const started: MemcachedProcess[] = [];
  after(async () => {
    await Promise.all(started.map((m) => m.stop()));
  });

  test('a started memcached answers version with 1.6.x on its loopback address', async () => {
    const server = await startMemcached();
    started.push(server);
    assert.equal(server.host, '127.0.0.1');
    assert.equal(server.address, `127.0.0.1:${server.port}`);
    assert.ok(server.pid > 0);
    const reply = await ask(server.port, 'version\r\n');
    assert.match(reply, /^VERSION 1\.6\.\d+\r\n$/);
  });

  test('it stores and returns items', async () => {
    const server = await startMemcached({ memoryMb: 16, threads: 1 });
    started.push(server);
    assert.equal(await ask(server.port, 'set k 5 0 2\r\nhi\r\n'), 'STORED\r\n');
    assert.equal(await ask(server.port, 'get k\r\n', 'END\r\n'), 'VALUE k 5 2\r\nhi\r\nEND\r\n');
  });

  test('servers started at once get different ports', async () => {
    const cluster = await startMemcachedCluster(3);
    started.push(...cluster);
    assert.equal(new Set(cluster.map((m) => m.port)).size, 3);
    assert.equal(new Set(cluster.map((m) => m.pid)).size, 3);
    for (const m of cluster) assert.match(await ask(m.port, 'version\r\n'), /^VERSION 1\.6\./);
  });

  test('stop() makes the port refuse connections and can be called again', async () => {
    const server = await startMemcached();
    assert.equal(await connectError(server.port), undefined);
    await server.stop();
    assert.equal(await connectError(server.port), 'ECONNREFUSED');
    await server.stop();
  });

  test('kill() ends the server at once', async () => {
    const server = await startMemcached();
    await server.kill();
    assert.equal(await connectError(server.port), 'ECONNREFUSED');
    await server.stop();
  });

  test('a fixed port that is already taken fails with memcached\'s own error', async () => {
    const blocker = createServer();
    blocker.listen(0, '127.0.0.1');
    await once(blocker, 'listening');
    const address = blocker.address();
    assert.ok(address && typeof address === 'object');
    try {
      await assert.rejects(startMemcached({ port: address.port }), /Address already in use/);
    } finally {
      blocker.close();
    }
  });

  test('freePort() returns a port nothing listens on', async () => {
    const port = await freePort();
    assert.ok(port > 0 && port < 65_536);
    assert.equal(await connectError(port), 'ECONNREFUSED');
  });
});
