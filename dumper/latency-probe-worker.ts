/**
 * The worker-thread side of `WorkerLatencyProbe` (latency-probe.ts): runs a LatencyProbe on
 * this thread's own event loop and hands its round-trip times to the parent in small batches,
 * with the send times of the requests still in flight.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { isCachewarmError } from '../shared/errors.js';
import { LatencyProbe, type ProbeWorkerData, type ProbeWorkerMessage } from './latency-probe.js';

const data = workerData as ProbeWorkerData;
const parent = parentPort;
if (!parent) throw new Error('latency-probe-worker.js runs as a worker thread only');

const post = (message: ProbeWorkerMessage, transfer?: ArrayBuffer[]): void => parent.postMessage(message, transfer);

let batch: number[] = [];
let lastPending = '';
let lastErrors = 0;

try {
  const probe = await LatencyProbe.start(
    { host: data.host, port: data.port, label: data.label },
    {
      intervalMs: data.intervalMs,
      connections: data.connections,
      command: data.command,
      onSample: (micros) => batch.push(micros),
    },
  );
  post({ type: 'ready', connections: probe.connections });
  setInterval(() => {
    const pendingSince = probe.pendingSince();
    const pending = pendingSince.join(',');
    const { errors } = probe.counters;
    if (batch.length === 0 && pending === lastPending && errors === lastErrors) return;
    const micros = Float64Array.from(batch);
    batch = [];
    lastPending = pending;
    lastErrors = errors;
    post({ type: 'samples', micros, pendingSince, errors }, [micros.buffer as ArrayBuffer]);
  }, data.reportEveryMs);
} catch (error) {
  post({
    type: 'failed',
    code: isCachewarmError(error) ? error.code : undefined,
    message: error instanceof Error ? error.message : String(error),
  });
}
