/**
 * The tests' S3/SQS emulator (support/fauxqs.ts: fauxqs with S3's conditional writes added) as
 * a host of its own, for the multi-host test:
 *
 *   ip netns exec <netns> node netns-fauxqs.js <address> <port>
 *
 * listens on <address>:<port>, writes `{"endpoint": "http://<address>:<port>"}` as one line on
 * stdout once it does, and stops on SIGTERM.
 *
 * startFauxqs listens on 127.0.0.1, which the test hosts do not have: in this process, whose
 * only server is the emulator, a listen on 127.0.0.1 is made on the host's address instead.
 * The endpoint is checked to be that address.
 */
import net from 'node:net';
import { startFauxqs } from './fauxqs.js';

const [address, port] = process.argv.slice(2);
if (!address || !port || !/^\d+$/.test(port)) {
  process.stderr.write('usage: netns-fauxqs.js <address> <port>\n');
  process.exit(2);
}

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (this: net.Server, ...args: unknown[]) {
  const [options] = args;
  if (typeof options === 'object' && options !== null && (options as net.ListenOptions).host === '127.0.0.1') {
    args[0] = { ...(options as net.ListenOptions), host: address };
  }
  return (listen as (...a: unknown[]) => net.Server).apply(this, args);
} as typeof net.Server.prototype.listen;

const fauxqs = await startFauxqs({ port: Number(port) });
const expected = `http://${address}:${port}`;
if (fauxqs.endpoint !== expected) {
  process.stderr.write(`fauxqs listens at ${fauxqs.endpoint}, not ${expected}\n`);
  await fauxqs.stop();
  process.exit(1);
}
process.stdout.write(`${JSON.stringify({ endpoint: fauxqs.endpoint })}\n`);
process.once('SIGTERM', () => void fauxqs.stop().then(() => process.exit(0)));
