/**
 * fauxqs (S3 and SQS over HTTP) as a process of its own for the bench's S3+SQS warm: its CPU
 * is then read from /proc like every other part's, and its garbage collector does not walk the
 * bench's heap (a million prepared items), which in the bench process more than doubled it.
 * Prints the endpoint on its first stdout line; exits on SIGTERM.
 */
import { buildApp } from 'fauxqs';

const app = buildApp({ logger: false });
const endpoint = await app.listen({ port: 0, host: '127.0.0.1' });
process.stdout.write(`${endpoint}\n`);
process.once('SIGTERM', () => {
  void app.close().then(() => process.exit(0));
});
