import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ReceiveMessageCommand, SendMessageCommand } from '@aws-sdk/client-sqs';
import { targetRingOf } from '../controller/warm-plan.js';
import { observation } from '../dumper/restart-watcher.js';
import { verifyCopy } from '../controller/verify-copy.js';
import { dumpNode } from '../dumper/dump-node.js';
import { connectDirect } from '../shared/memcached/connect.js';
import { type PopulatorReport, type WorkerResult, runPopulatorWorker } from '../populator/worker.js';
import type { LogEntry } from '../shared/log.js';
import { ringOfTarget } from '../populator/write-to-ring.js';
import { ChunkBuilder, chunkHeader, decodeDataChunk } from '../shared/chunk-format.js';
import type { ChunkMessage, TargetRing } from '../shared/chunk-message.js';
import { systemClock } from '../shared/clock.js';
import { CachewarmError } from '../shared/errors.js';
import {
  type EndMarker,
  type JobManifest,
  LAYOUT_VERSION,
  endMarkerName,
  getJson,
  manifestName,
  nodePrefix,
  type ProcessIdentities,
  type ProcessesRecord,
  processesName,
  putJson,
  summaryName,
} from '../shared/job-layout.js';
import {
  type JobQueues,
  createJobQueues,
  deleteJobQueues,
  jobQueueNames,
  parkedMessages,
  queueBacklog,
  readJobQueue,
} from '../shared/job-queues.js';
import { statsAt } from '../shared/memcached/commands.js';
import type { WritableItem } from '../shared/memcached/meta-add.js';
import { REASON_ATTRIBUTE, SqsQueue } from '../shared/queue/sqs-queue.js';
import { sampleItems } from '../shared/sample-items.js';
import { S3Store } from '../shared/store/s3-store.js';
import { type Cluster, itemCount, load, nowSeconds, readFrom, serverCounters, withCluster } from './support/cluster.js';
import { startMemcached } from './support/memcached.js';
import { type AwsClients, type Fauxqs, awsClients, createBucket, createQueue, startFauxqs } from './support/fauxqs.js';
import { waitFor, within } from './support/wait.js';

const bin = fileURLToPath(new URL('../bin/cachewarm.js', import.meta.url));
const PREFIX = 'warm/fleet';

let fauxqs: Fauxqs;
let aws: AwsClients;
const children = new Set<ChildProcess>();

before(async () => {
  fauxqs = await startFauxqs();
  aws = awsClients(fauxqs.endpoint);
});
after(async () => {
  // A failed assertion must not leave a worker polling behind.
  for (const child of children) child.kill('SIGKILL');
  aws.destroy();
  await fauxqs.stop();
});

// ---------------------------------------------------------------------------------------
// A populator as the autoscaler runs it: a separate `cachewarm populator` process.

interface Exit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

interface Populator {
  readonly name: string;
  readonly child: ChildProcess;
  /** Its JSON log lines so far. */
  readonly events: LogEntry[];
  readonly exit: Promise<Exit>;
  /** The first log line, seen or still to come, that matches. */
  waitFor(match: (entry: LogEntry) => boolean, what: string, timeoutMs?: number): Promise<LogEntry>;
}

function startPopulator(queueUrl: string, name: string, ...extra: string[]): Populator {
  // Debug: the tests follow each chunk (received, done, retried), which a worker logs at that level.
  const args = [bin, 'populator', '--queue-url', queueUrl, '--endpoint', fauxqs.endpoint, '--worker-id', name, '--wait-seconds', '1', '--log-level', 'debug', ...extra];
  const child = spawn(process.execPath, args, {
    env: { ...process.env, AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test', AWS_REGION: 'us-east-1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  const events: LogEntry[] = [];
  const waiters = new Set<{ match: (entry: LogEntry) => boolean; resolve: (entry: LogEntry) => void }>();
  let stdout = '';
  let stderr = '';
  let partial = '';
  child.stdout?.setEncoding('utf8').on('data', (text: string) => {
    stdout += text;
  });
  child.stderr?.setEncoding('utf8').on('data', (text: string) => {
    stderr += text;
    partial += text;
    for (let nl = partial.indexOf('\n'); nl >= 0; nl = partial.indexOf('\n')) {
      const line = partial.slice(0, nl);
      partial = partial.slice(nl + 1);
      let entry: LogEntry;
      try {
        entry = JSON.parse(line) as LogEntry;
      } catch {
        continue; // not a log line (an error message): kept in stderr
      }
      events.push(entry);
      for (const waiter of waiters) {
        if (waiter.match(entry)) {
          waiters.delete(waiter);
          waiter.resolve(entry);
        }
      }
    }
  });
  const exit = new Promise<Exit>((resolve) => {
    child.on('close', (code, signal) => {
      children.delete(child);
      resolve({ code, signal, stdout, stderr });
    });
  });
  return {
    name,
    child,
    events,
    exit,
    waitFor(match, what, timeoutMs = 30_000) {
      const seen = events.find(match);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${name}: no ${what} within ${timeoutMs} ms\n${stderr.slice(-3000)}`)), timeoutMs);
        const waiter = {
          match,
          resolve: (entry: LogEntry) => {
            clearTimeout(timer);
            resolve(entry);
          },
        };
        waiters.add(waiter);
        void exit.then((e) => {
          if (!waiters.delete(waiter)) return;
          clearTimeout(timer);
          reject(new Error(`${name} exited (${e.code ?? e.signal}) before ${what}\n${e.stderr.slice(-3000)}`));
        });
      });
    },
  };
}

/** Waits for a populator to end on its own; fails the test if it is still running after `timeoutMs`. */
async function finished(populator: Populator, timeoutMs = 60_000): Promise<Exit & { result: WorkerResult }> {
  const exit = await within(populator.exit, { timeoutMs, what: `exit of ${populator.name}`, detail: () => populator.events.slice(-5) });
  const line = exit.stdout.trim().split('\n').pop() ?? '';
  let result: WorkerResult;
  try {
    result = JSON.parse(line) as WorkerResult;
  } catch {
    throw new Error(`${populator.name} exited ${exit.code ?? exit.signal} without a result\n${exit.stderr.slice(-3000)}`);
  }
  return { ...exit, result };
}

const named = (event: string, chunk?: string) => (entry: LogEntry): boolean =>
  entry.event === event && (chunk === undefined || entry['chunk'] === chunk);

/** Chunks a populator received and never finished, retried or parked (by its log). */
function heldChunks(populator: Populator): Set<string> {
  const held = new Set<string>();
  for (const entry of populator.events) {
    const chunk = entry['chunk'] as string;
    if (entry.event === 'chunk-received') held.add(chunk);
    if (entry.event === 'chunk-done' || entry.event === 'chunk-retried' || entry.event === 'chunk-parked') held.delete(chunk);
  }
  return held;
}

// ---------------------------------------------------------------------------------------
// A fleet job, produced the way the controller and the dumper sidecars produce it.

interface Job {
  readonly jobId: string;
  readonly bucket: string;
  readonly queues: JobQueues;
  readonly store: S3Store;
  readonly target: TargetRing;
  readonly cluster: Cluster;
}

let jobs = 0;

/** The job's queues and manifest: source replica `a`, target replica `b`. */
async function createJob(
  cluster: Cluster,
  options: { visibilityTimeoutSeconds?: number; moreSourceNodes?: string[]; manifest?: boolean } = {},
): Promise<Job> {
  const jobId = `fleet-${++jobs}`;
  const bucket = await createBucket(aws.s3, `chunks-${jobs}`);
  const queues = await createJobQueues(aws.sqs, { jobId, bucket, prefix: PREFIX, visibilityTimeoutSeconds: options.visibilityTimeoutSeconds });
  const store = new S3Store({ client: aws.s3, bucket, prefix: PREFIX });
  const target = targetRingOf(cluster.topology, 'b');
  const manifest: JobManifest = {
    version: LAYOUT_VERSION,
    jobId,
    kind: 'replica',
    source: { replica: 'a', nodes: [...(cluster.topology.replicas.get('a')?.nodes ?? []).map((n) => n.id), ...(options.moreSourceNodes ?? [])] },
    target,
    createdAt: new Date().toISOString(),
  };
  if (options.manifest !== false) await putJson(store, manifestName(jobId), manifest);
  return { jobId, bucket, queues, store, target, cluster };
}

/** Every source node (or those of `only`) dumped over S3 + SQS, as its sidecar would; returns the data chunks announced. */
async function dumpSource(job: Job, chunkSizeBytes: number, only?: readonly string[]): Promise<number> {
  const queue = new SqsQueue({ client: aws.sqs, queueUrl: job.queues.queueUrl, clock: systemClock });
  const nodes = (job.cluster.topology.replicas.get('a')?.nodes ?? []).filter((node) => !only || only.includes(node.id));
  const counts = await Promise.all(
    nodes.map(async (node) => {
      const counters = await dumpNode({
        node: { id: node.id, host: node.host, port: node.port, label: node.id },
        jobId: job.jobId,
        store: job.store,
        queue,
        target: job.target,
        clock: systemClock,
        chunkSizeBytes,
        location: { bucket: job.bucket, prefix: PREFIX },
        durableQueue: true,
      });
      // dumpNode writes the end marker itself in newer builds; write it only when it did not.
      const marker = endMarkerName(job.jobId, node.id);
      if (!(await getJson<EndMarker>(job.store, marker))) {
        const end: EndMarker = {
          version: LAYOUT_VERSION,
          jobId: job.jobId,
          source: node.id,
          dataChunks: counters.dataChunks,
          counters,
          finishedAt: new Date().toISOString(),
        };
        await putJson(job.store, marker, end);
      }
      return counters.dataChunks;
    }),
  );
  return counts.reduce((a, b) => a + b, 0);
}

async function dataChunkNames(job: Job): Promise<string[]> {
  return (await job.store.list(job.jobId)).filter((name) => /\/data-[^/]+\.chunk$/.test(name));
}

async function reports(job: Job): Promise<PopulatorReport[]> {
  const names = await job.store.list(`${job.jobId}/populators`);
  return Promise.all(names.map(async (name) => (await getJson<PopulatorReport>(job.store, name)) as PopulatorReport));
}

const storedIn = (report: PopulatorReport): number => Object.values(report.byNode).reduce((sum, c) => sum + c.stored, 0);

/** Every item on the node the target ring names, identical, and nothing anywhere else. */
async function assertWarmed(job: Job, items: readonly WritableItem[]): Promise<void> {
  const report = await verifyCopy(items, job.target, { connect: connectDirect });
  assert.deepEqual(
    { matched: report.matched, missing: report.missing, mismatched: report.mismatched, examples: report.examples },
    { matched: items.length, missing: 0, mismatched: 0, examples: [] },
  );
  const ring = ringOfTarget(job.target);
  const share = new Map<string, number>();
  for (const item of items) {
    const address = ring.nodeFor(item.key).address;
    share.set(address, (share.get(address) ?? 0) + 1);
  }
  for (const server of job.cluster.servers['b'] ?? []) {
    assert.equal(await itemCount(server), share.get(server.address) ?? 0, `items on ${server.address}`);
  }
}

async function onTarget(job: Job, keys: readonly Buffer[]): Promise<number> {
  let found = 0;
  for (const server of job.cluster.servers['b'] ?? []) found += (await readFrom(server, keys)).filter(Boolean).length;
  return found;
}

/** Waits until the server's own clock (`stats time`) has reached ours; fails the test if it does not. */
/** Stops a memcached process (SIGSTOP): connections stay open and writes to it hang, as on a stalled node. */
function freeze(pid: number): () => void {
  process.kill(pid, 'SIGSTOP');
  let thawed = false;
  return () => {
    if (!thawed) process.kill(pid, 'SIGCONT');
    thawed = true;
  };
}

// ---------------------------------------------------------------------------------------

describe('the job queues (fauxqs, through the real SQS client)', () => {
  test('queue names are valid SQS names for any job id, stable, and distinct for distinct ids', () => {
    assert.deepEqual(jobQueueNames('job-1'), { queue: 'cachewarm-job-1', deadLetterQueue: 'cachewarm-job-1-dlq' });
    const odd = jobQueueNames(`replica zone-c/2024.05.01:${'x'.repeat(120)}`);
    for (const name of [odd.queue, odd.deadLetterQueue]) {
      assert.ok(name.length <= 80, `${name} is ${name.length} characters`);
      assert.match(name, /^[A-Za-z0-9_-]+$/);
    }
    assert.deepEqual(jobQueueNames(`replica zone-c/2024.05.01:${'x'.repeat(120)}`), odd, 'the same id gives the same names');
    assert.notEqual(jobQueueNames('a.b').queue, jobQueueNames('a:b').queue);
    assert.throws(() => jobQueueNames(''), CachewarmError);
  });

  test('createJobQueues makes a tagged job queue redriving to its dead-letter queue; a rerun gets the same queues', async () => {
    const settings = { jobId: 'queues-1', bucket: 'b1', prefix: '/p/q/', maxReceives: 3, visibilityTimeoutSeconds: 7 };
    const queues = await createJobQueues(aws.sqs, settings);
    assert.match(queues.queueUrl, /\/cachewarm-queues-1$/);
    assert.match(queues.deadLetterQueueUrl, /\/cachewarm-queues-1-dlq$/);
    assert.deepEqual(await createJobQueues(aws.sqs, settings), queues);

    assert.deepEqual(await readJobQueue(aws.sqs, queues.queueUrl), {
      jobId: 'queues-1',
      bucket: 'b1',
      prefix: 'p/q',
      ...queues,
      visibilityTimeoutSeconds: 7,
      maxReceives: 3,
    });
    await assert.rejects(readJobQueue(aws.sqs, queues.deadLetterQueueUrl), /is the dead-letter queue of cachewarm job queues-1, not its job queue/);
  });

  test('a job without a prefix reads back with the empty prefix', async () => {
    const queues = await createJobQueues(aws.sqs, { jobId: 'queues-2', bucket: 'b2', prefix: '' });
    const info = await readJobQueue(aws.sqs, queues.queueUrl);
    assert.equal(info.prefix, '');
    assert.equal(info.maxReceives, 5);
    assert.equal(info.visibilityTimeoutSeconds, 60);
  });

  test('readJobQueue refuses a queue without the tags, and a queue that does not exist, as usage errors', async () => {
    const plain = await createQueue(aws.sqs, 'plain-queue');
    await assert.rejects(readJobQueue(aws.sqs, plain), (error: unknown) => {
      assert.ok(error instanceof CachewarmError);
      assert.equal(error.code, 'INVALID_ARGUMENT');
      assert.match(error.message, /plain-queue is not a cachewarm job queue \(no cachewarm-job tag\)/);
      return true;
    });
    await assert.rejects(readJobQueue(aws.sqs, `${plain}-gone`), /plain-queue-gone does not exist/);
  });

  test('queueBacklog counts visible and in-flight messages', async () => {
    const { queueUrl } = await createJobQueues(aws.sqs, { jobId: 'queues-3', bucket: 'b3', prefix: 'p' });
    for (const body of ['1', '2', '3']) await aws.sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: body }));
    await aws.sqs.send(new ReceiveMessageCommand({ QueueUrl: queueUrl, MaxNumberOfMessages: 1, VisibilityTimeout: 30 }));
    assert.deepEqual(await queueBacklog(aws.sqs, queueUrl), { visible: 2, inFlight: 1, delayed: 0 });
  });

  test('parkedMessages lists each parked chunk with its reason, and leaves the messages on the dead-letter queue', async () => {
    const { deadLetterQueueUrl } = await createJobQueues(aws.sqs, { jobId: 'queues-4', bucket: 'b4', prefix: 'p' });
    const park = (body: string, reason?: string) =>
      aws.sqs.send(
        new SendMessageCommand({
          QueueUrl: deadLetterQueueUrl,
          MessageBody: body,
          ...(reason && { MessageAttributes: { [REASON_ATTRIBUTE]: { DataType: 'String', StringValue: reason } } }),
        }),
      );
    await park(JSON.stringify({ chunk: { name: 'queues-4/n/data-1.chunk' } }), 'checksum mismatch');
    await park('{oops', 'not JSON');
    await park(JSON.stringify({ chunk: { name: 'queues-4/n/data-2.chunk' } }));

    const expected = [
      { chunk: 'queues-4/n/data-1.chunk', reason: 'checksum mismatch' },
      { chunk: undefined, reason: 'not JSON' },
      { chunk: 'queues-4/n/data-2.chunk', reason: /no reason recorded: moved by the queue's redrive policy/ },
    ];
    for (const pass of [1, 2]) {
      const parked = await parkedMessages(aws.sqs, deadLetterQueueUrl);
      assert.equal(parked.length, 3, `pass ${pass}`);
      for (const [i, want] of expected.entries()) {
        const got = parked.find((p) => (want.chunk ? p.chunk === want.chunk : p.chunk === undefined));
        assert.ok(got, `pass ${pass}: entry ${i}`);
        if (typeof want.reason === 'string') assert.equal(got.reason, want.reason);
        else assert.match(got.reason, want.reason);
      }
    }
    assert.deepEqual(await queueBacklog(aws.sqs, deadLetterQueueUrl), { visible: 3, inFlight: 0, delayed: 0 }, 'all visible again');
  });

  test('deleteJobQueues removes both queues, and deleting them again is fine', async () => {
    const queues = await createJobQueues(aws.sqs, { jobId: 'queues-5', bucket: 'b5', prefix: 'p' });
    await deleteJobQueues(aws.sqs, queues);
    await deleteJobQueues(aws.sqs, queues);
    await assert.rejects(readJobQueue(aws.sqs, queues.queueUrl), /does not exist/);
  });

  test('an SQS failure names the operation and the queue', async () => {
    await assert.rejects(queueBacklog(aws.sqs, 'http://127.0.0.1:1/000000000000/nowhere'), (error: unknown) => {
      assert.ok(error instanceof CachewarmError);
      assert.equal(error.code, 'TRANSPORT_FAILED');
      assert.match(error.message, /SQS GetQueueAttributes on .*nowhere failed/);
      return true;
    });
  });
});

describe('cachewarm populator: stateless workers on an SQS job queue', () => {
  test('two workers drain a 2-node source into a 3-node target while it is dumped: every item on the node the ring names, both exit 0, reports sum to the items', async () => {
    await withCluster({ a: 2, b: 3 }, async (cluster) => {
      const items = sampleItems({ count: 24_000, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'two-workers' });
      await load(cluster.topology, 'a', items);
      const job = await createJob(cluster);

      // The workers start first: they wait for the dumpers, and end only once both are done.
      const workers = [startPopulator(job.queues.queueUrl, 'w1'), startPopulator(job.queues.queueUrl, 'w2')];
      await Promise.all(workers.map((w) => w.waitFor(named('worker-started'), 'start')));
      const announced = await dumpSource(job, 64 << 10);
      const ends = await Promise.all(workers.map((w) => finished(w)));

      for (const [i, end] of ends.entries()) {
        assert.equal(end.code, 0, `w${i + 1}: ${end.stderr.slice(-2000)}`);
        assert.equal(end.result.outcome, 'complete');
        assert.equal(end.result.parked, 0);
        assert.ok(end.result.chunks > 0, `w${i + 1} wrote some of the ${announced} chunks`);
      }
      assert.equal(ends[0]!.result.chunks + ends[1]!.result.chunks, announced, 'each chunk written once');
      await assertWarmed(job, items);

      const written = await reports(job);
      assert.deepEqual(written.map((r) => [r.workerId, r.jobId, r.final]).sort(), [['w1', job.jobId, true], ['w2', job.jobId, true]]);
      assert.equal(written.reduce((sum, r) => sum + storedIn(r), 0), items.length, 'the reports sum to the item count');
      assert.deepEqual(await queueBacklog(aws.sqs, job.queues.queueUrl), { visible: 0, inFlight: 0, delayed: 0 });
      assert.deepEqual(await parkedMessages(aws.sqs, job.queues.deadLetterQueueUrl), []);
      assert.equal((await dataChunkNames(job)).length, announced, 'populators never delete chunks');
    });
  });

  test('a worker SIGKILLed mid-chunk: the chunks it held come back to another worker once their visibility runs out, and no item is lost', async () => {
    await withCluster({ a: 2, b: 3 }, async (cluster) => {
      const items = sampleItems({ count: 20_000, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'killed' });
      await load(cluster.topology, 'a', items);
      const job = await createJob(cluster, { visibilityTimeoutSeconds: 3 });
      await dumpSource(job, 16 << 10);

      const doomed = startPopulator(job.queues.queueUrl, 'doomed', '--concurrency', '2');
      await doomed.waitFor((e) => e.event === 'chunk-done' && doomed.events.filter(named('chunk-done')).length >= 2, 'two chunks done');
      // A stalled target node holds the worker mid-chunk: the writes to it hang unanswered.
      const thaw = freeze(cluster.servers['b']![0]!.pid);
      try {
        const receivedBefore = doomed.events.filter(named('chunk-received')).length;
        // A chunk received after the freeze cannot be finished: every chunk has items for each node.
        await doomed.waitFor(
          () => doomed.events.filter(named('chunk-received')).length > receivedBefore && heldChunks(doomed).size > 0,
          'a chunk received while the node is stalled',
        );
        doomed.child.kill('SIGKILL');
        assert.equal((await within(doomed.exit, { what: 'exit of the SIGKILLed worker' })).signal, 'SIGKILL');
        thaw();
        // What it held when it died: received, never finished, retried or parked (by its whole log).
        const held = heldChunks(doomed);
        assert.ok(held.size > 0, 'the worker held chunks it had not finished');

        const rescuer = startPopulator(job.queues.queueUrl, 'rescuer');
        const end = await finished(rescuer);
        assert.equal(end.code, 0, end.stderr.slice(-2000));
        for (const chunk of held) {
          const received = rescuer.events.find(named('chunk-received', chunk));
          assert.ok(received, `${chunk} was delivered to the other worker`);
          assert.ok((received['receiveCount'] as number) >= 2, `${chunk} was a redelivery`);
          assert.ok(rescuer.events.some(named('chunk-done', chunk)), `${chunk} was written whole`);
        }
      } finally {
        thaw();
      }
      await assertWarmed(job, items);
      assert.deepEqual(await parkedMessages(aws.sqs, job.queues.deadLetterQueueUrl), []);
    });
  });

  test('a corrupt chunk, a malformed message and a message pointing at another bucket go to the dead-letter queue with the reason; the rest completes; exit 1', async () => {
    await withCluster({ a: 1, b: 2 }, async (cluster) => {
      const items = sampleItems({ count: 3_000, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'bad' });
      await load(cluster.topology, 'a', items);
      const job = await createJob(cluster);
      await dumpSource(job, 16 << 10);

      // 1. A chunk damaged in the store: one byte of its body flipped.
      const [, damaged] = await dataChunkNames(job);
      assert.ok(damaged);
      const body = await job.store.get(damaged);
      const lost = decodeDataChunk(Buffer.from(body), damaged).map((item) => Buffer.from(item.key));
      body[body.length - 1] = (body[body.length - 1] as number) ^ 0xff;
      await job.store.put(damaged, body);

      // 2. A body that is not a chunk message.
      await aws.sqs.send(new SendMessageCommand({ QueueUrl: job.queues.queueUrl, MessageBody: '{"version": 2, "jobId": ' }));

      // 3. A well-formed message for a real chunk, in a bucket that is not the job's.
      const elsewhere = await createBucket(aws.s3, `elsewhere-${jobs}`);
      const foreign = sampleItems({ count: 50, valueBytes: 10, nowSeconds: nowSeconds(), seed: 'foreign' });
      const builder = new ChunkBuilder('data', 1 << 16);
      for (const item of foreign) builder.addData(item.key, item.value, item.flags, item.exptime);
      const chunk = builder.seal();
      const foreignName = `${job.jobId}/a_intruder/data-000000-x-000.chunk`;
      await new S3Store({ client: aws.s3, bucket: elsewhere, prefix: PREFIX }).put(foreignName, chunk);
      const message: ChunkMessage = {
        version: 2,
        jobId: job.jobId,
        source: 'a/intruder',
        store: { bucket: elsewhere, prefix: PREFIX },
        chunk: { name: foreignName, bytes: chunk.length, ...chunkHeader(chunk) },
        target: job.target,
      };
      await aws.sqs.send(new SendMessageCommand({ QueueUrl: job.queues.queueUrl, MessageBody: JSON.stringify(message) }));

      const worker = startPopulator(job.queues.queueUrl, 'strict');
      const end = await finished(worker);
      assert.equal(end.code, 1, end.stderr.slice(-2000));
      assert.equal(end.result.outcome, 'complete');
      assert.equal(end.result.parked, 3);
      assert.equal(end.result.deadLettered, 3);

      const parked = await parkedMessages(aws.sqs, job.queues.deadLetterQueueUrl);
      const reasons = parked.map((p) => `${p.chunk ?? '(no chunk)'}: ${p.reason}`).sort();
      assert.equal(parked.length, 3, reasons.join('\n'));
      assert.match(parked.find((p) => p.chunk === damaged)?.reason ?? '', /checksum mismatch/);
      assert.match(parked.find((p) => p.chunk === undefined)?.reason ?? '', /not JSON/);
      assert.match(parked.find((p) => p.chunk === foreignName)?.reason ?? '', new RegExp(`outside the job's s3://${job.bucket}/${PREFIX}`));
      // Each reason is in the worker's log too.
      assert.ok(worker.events.some((e) => e.event === 'chunk-parked' && e['chunk'] === damaged && /checksum mismatch/.test(String(e['reason']))));
      assert.ok(worker.events.some((e) => e.event === 'message-parked' && /not JSON/.test(String(e['reason']))));
      assert.ok(worker.events.some((e) => e.event === 'chunk-parked' && e['chunk'] === foreignName && /outside the job's/.test(String(e['reason']))));

      // Nothing of the corrupt or the foreign chunk was written; everything else was.
      assert.equal(await onTarget(job, lost), 0, 'no item of the corrupt chunk');
      assert.equal(await onTarget(job, foreign.map((i) => i.key)), 0, 'no item of the foreign chunk');
      const lostSet = new Set(lost.map((k) => k.toString('hex')));
      const rest = items.filter((item) => !lostSet.has(item.key.toString('hex')));
      assert.ok(rest.length < items.length && rest.length > 0);
      const report = await verifyCopy(rest, job.target, { connect: connectDirect });
      assert.equal(report.matched, rest.length, report.examples.join('\n'));
      assert.deepEqual(await queueBacklog(aws.sqs, job.queues.queueUrl), { visible: 0, inFlight: 0, delayed: 0 });
    });
  });

  test('with --follow a worker keeps polling after the job is complete (and writes what comes later) until SIGTERM, then exits 0', async () => {
    await withCluster({ a: 1, b: 2 }, async (cluster) => {
      const items = sampleItems({ count: 2_000, valueBytes: 50, nowSeconds: nowSeconds(), seed: 'follow' });
      await load(cluster.topology, 'a', items);
      const job = await createJob(cluster);
      await dumpSource(job, 32 << 10);

      const worker = startPopulator(job.queues.queueUrl, 'follower', '--follow');
      await worker.waitFor(named('job-complete'), 'job-complete');
      assert.equal(worker.child.exitCode, null, 'still running after the job completed');
      assert.equal(worker.events.filter(named('worker-finished')).length, 0);

      // A chunk announced late is still picked up. Its items are the source's (the delete
      // reconcile takes back from the target what the source does not hold).
      const late = sampleItems({ count: 100, valueBytes: 20, nowSeconds: nowSeconds(), seed: 'late' });
      await load(cluster.topology, 'a', late);
      const builder = new ChunkBuilder('data', 1 << 16);
      for (const item of late) builder.addData(item.key, item.value, item.flags, item.exptime);
      const chunk = builder.seal();
      // From a node the manifest names, as a dump resumed late would send it.
      const source = cluster.topology.replicas.get('a')!.nodes[0]!.id;
      const name = `${nodePrefix(job.jobId, source)}/data-999999-late-000.chunk`;
      await job.store.put(name, chunk);
      await new SqsQueue({ client: aws.sqs, queueUrl: job.queues.queueUrl, clock: systemClock }).send({
        version: 2,
        jobId: job.jobId,
        source,
        store: { bucket: job.bucket, prefix: PREFIX },
        chunk: { name, bytes: chunk.length, ...chunkHeader(chunk) },
        target: job.target,
      });
      // Picked up after the job was complete: it kept polling, and keeps on after this one too.
      const lateDone = await worker.waitFor(named('chunk-done', name), 'the late chunk');
      assert.ok(worker.events.indexOf(lateDone) > worker.events.findIndex(named('job-complete')));
      assert.equal(worker.child.exitCode, null, 'still running after the late chunk');

      worker.child.kill('SIGTERM');
      // Promptly: well before another 20 s long poll (--wait-seconds 1 here) could matter.
      const end = await finished(worker, 15_000);
      assert.equal(end.code, 0, end.stderr.slice(-2000));
      assert.equal(end.result.outcome, 'aborted');
      await assertWarmed(job, [...items, ...late]);
      const [report] = await reports(job);
      assert.equal(report?.final, true);
      assert.equal(report && storedIn(report), items.length + late.length);
    });
  });

  test('SIGTERM mid-chunk hands the held chunks back at once (not after the visibility timeout), exits 0, and another worker finishes the job', async () => {
    await withCluster({ a: 1, b: 2 }, async (cluster) => {
      const items = sampleItems({ count: 5_000, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'scaled-in' });
      await load(cluster.topology, 'a', items);
      const job = await createJob(cluster, { visibilityTimeoutSeconds: 60 });
      await dumpSource(job, 16 << 10);

      const thaw = freeze(cluster.servers['b']![1]!.pid);
      try {
        const worker = startPopulator(job.queues.queueUrl, 'scaled-in', '--concurrency', '2');
        await worker.waitFor(() => worker.events.filter(named('chunk-received')).length >= 2, 'two chunks received');
        worker.child.kill('SIGTERM');
        // Well inside the 30 s reply timeout the stalled writes would otherwise wait out.
        const end = await finished(worker, 20_000);
        assert.equal(end.code, 0, end.stderr.slice(-2000));
        assert.equal(end.result.outcome, 'aborted');
        // Every chunk has items for the stalled node: none could be finished, each one received was handed back.
        const received = new Set(worker.events.filter(named('chunk-received')).map((e) => e['chunk'] as string));
        assert.ok(received.size >= 2);
        assert.deepEqual(worker.events.filter(named('chunk-done')), [], 'no chunk was finished');
        for (const chunk of received) assert.ok(worker.events.some(named('chunk-retried', chunk)), `${chunk} was handed back`);
        assert.deepEqual([...heldChunks(worker)], [], 'nothing left held');
        const backlog = await queueBacklog(aws.sqs, job.queues.queueUrl);
        assert.equal(backlog.inFlight, 0, 'nothing is left hidden for the 60 s visibility timeout');
      } finally {
        thaw();
      }
      const next = startPopulator(job.queues.queueUrl, 'next');
      const end = await finished(next);
      assert.equal(end.code, 0, end.stderr.slice(-2000));
      await assertWarmed(job, items);
    });
  });

  test('in process: while a source node is still dumping the worker keeps polling, logs progress, and keeps its report current; abort returns', async () => {
    await withCluster({ a: 1, b: 1 }, async (cluster) => {
      const items = sampleItems({ count: 2_000, valueBytes: 50, nowSeconds: nowSeconds(), seed: 'in-process' });
      await load(cluster.topology, 'a', items);
      // A second source node that has not finished (no end marker): the job is not complete.
      const job = await createJob(cluster, { moreSourceNodes: ['a/10.0.0.9:11211'] });
      const announced = await dumpSource(job, 32 << 10);

      const log: LogEntry[] = [];
      const stop = new AbortController();
      const running = runPopulatorWorker({
        s3: aws.s3,
        sqs: aws.sqs,
        queueUrl: job.queues.queueUrl,
        workerId: 'in-process',
        clock: systemClock,
        signal: stop.signal,
        log: (entry) => log.push(entry),
        waitTimeSeconds: 1,
        progressIntervalMs: 300,
        reportIntervalMs: 300,
      });
      const periodic = async (): Promise<PopulatorReport | undefined> => (await reports(job))[0];
      // Every chunk written and reported, the node still dumping said, and progress logged more than once.
      await waitFor(async () => (await periodic())?.chunks === announced && log.some(named('waiting')) && log.filter(named('progress')).length >= 2, {
        timeoutMs: 30_000,
        intervalMs: 100,
        what: `a report of all ${announced} chunks, a waiting line and two progress lines`,
        detail: () => log.slice(-5),
      });

      const waiting = log.find(named('waiting'));
      assert.deepEqual(waiting?.['dumpingNodes'], ['a/10.0.0.9:11211'], 'it says which node it waits for');
      const report = await periodic();
      assert.equal(report?.final, false, 'a report written while running');
      assert.equal(report && storedIn(report), items.length);
      assert.ok(log.filter(named('progress')).length >= 2, 'progress lines while running');
      assert.ok(!log.some(named('worker-finished')), 'still running');

      stop.abort(new CachewarmError('ABORTED', 'scaled in'));
      const result = await within(running, { what: 'the worker to return after the abort' });
      assert.equal(result.outcome, 'aborted');
      assert.equal(result.chunks, announced);
      assert.equal(result.counters.stored, items.length);
      assert.deepEqual(Object.keys(result.byNode), [cluster.servers['b']![0]!.address]);
      assert.equal((await periodic())?.final, true, 'the last report is final');
      await assertWarmed(job, items);
    });
  });

  test('a job queue whose manifest is missing: a clear error naming where it was looked for', async () => {
    await withCluster({ a: 1, b: 1 }, async (cluster) => {
      const job = await createJob(cluster, { manifest: false });
      await assert.rejects(
        runPopulatorWorker({ s3: aws.s3, sqs: aws.sqs, queueUrl: job.queues.queueUrl, workerId: 'w', clock: systemClock }),
        (error: unknown) => {
          assert.ok(error instanceof CachewarmError);
          assert.equal(error.code, 'CHUNK_MISSING');
          assert.match(error.message, new RegExp(`job ${job.jobId} has no manifest at s3://${job.bucket}/${PREFIX}/${job.jobId}/manifest\\.json`));
          return true;
        },
      );
    });
  });

  test('a queue without the cachewarm tags: exit 2, saying it is not a job queue', async () => {
    const plain = await createQueue(aws.sqs, 'not-a-job');
    const worker = startPopulator(plain, 'lost');
    const exit = await within(worker.exit, { what: 'exit of the worker on a plain queue' });
    assert.equal(exit.code, 2, exit.stderr);
    assert.match(exit.stderr, /not-a-job is not a cachewarm job queue \(no cachewarm-job tag\)/);
    assert.match(exit.stderr, /INVALID_ARGUMENT/);
  });
});

// ---------------------------------------------------------------------------------------
// The job's manifest is the only word on where a job writes; reports keep every write; the
// controller's clean-up ends external workers.

/** A data chunk of `items`, stored at `name` in the job's bucket, and a message announcing it as the job's own dumper would. */
async function storedChunk(job: Job, name: string, items: readonly WritableItem[], source: string): Promise<ChunkMessage> {
  const builder = new ChunkBuilder('data', 1 << 20);
  for (const item of items) builder.addData(item.key, item.value, item.flags, item.exptime);
  const chunk = builder.seal();
  await job.store.put(name, chunk);
  return {
    version: 2,
    jobId: job.jobId,
    source,
    store: { bucket: job.bucket, prefix: PREFIX },
    chunk: { name, bytes: chunk.length, ...chunkHeader(chunk) },
    target: job.target,
  };
}

async function announce(job: Job, message: ChunkMessage): Promise<void> {
  await aws.sqs.send(new SendMessageCommand({ QueueUrl: job.queues.queueUrl, MessageBody: JSON.stringify(message) }));
}

/** Chunks whose messages a populator deleted (each after the report counting it), by its log. */
function acknowledged(populator: Populator): Set<string> {
  return new Set(populator.events.filter(named('acknowledged')).flatMap((e) => e['chunks'] as string[]));
}

const escaped = (text: string): string => text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');

describe('populators take the target and the chunks from the manifest, keep every write in their reports, and end when the controller ends the job', () => {
  test('a message naming a foreign target ring, one from a source node the manifest does not list and one naming a chunk outside its node\'s directory are parked with the reason; the foreign memcached is never written; the job\'s own chunks land exactly', async () => {
    // A memcached in neither the topology nor the manifest: where a forged message would send the items.
    const foreign = await startMemcached({ memoryMb: 64 });
    try {
      await withCluster({ a: 1, b: 2 }, async (cluster) => {
        const items = sampleItems({ count: 3_000, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'manifest' });
        await load(cluster.topology, 'a', items);
        const job = await createJob(cluster);
        await dumpSource(job, 16 << 10);
        const sourceNode = cluster.topology.replicas.get('a')!.nodes[0]!.id;

        // 1. One of the job's real chunks, announced again with a ring of the sender's: the foreign node.
        const [real] = await dataChunkNames(job);
        assert.ok(real);
        const realBody = await job.store.get(real);
        const foreignRing: TargetRing = { replica: 'b', hashing: 'spymemcached', nodes: [{ address: foreign.address, ringName: foreign.address }] };
        await announce(job, {
          version: 2,
          jobId: job.jobId,
          source: sourceNode,
          store: { bucket: job.bucket, prefix: PREFIX },
          chunk: { name: real, bytes: realBody.length, ...chunkHeader(realBody) },
          target: foreignRing,
        });
        // 2. Items of the sender's own, in the job's directory but not in a source node's.
        const forged = sampleItems({ count: 50, valueBytes: 10, nowSeconds: nowSeconds(), seed: 'forged' });
        const outsideName = `${job.jobId}/populators/data-000000-x-000.chunk`;
        await announce(job, await storedChunk(job, outsideName, forged, sourceNode));
        // 3. The same items as a data chunk of a source node the manifest does not list.
        const stranger = 'a/10.9.9.9:11211';
        const strangerName = `${nodePrefix(job.jobId, stranger)}/data-000000-x-000.chunk`;
        await announce(job, await storedChunk(job, strangerName, forged, stranger));

        const worker = startPopulator(job.queues.queueUrl, 'held-to-manifest');
        const end = await finished(worker);
        assert.equal(end.code, 1, end.stderr.slice(-2000));
        assert.equal(end.result.outcome, 'complete');
        assert.equal(end.result.parked, 3);

        const manifestAt = `s3://${job.bucket}/${PREFIX}/${job.jobId}/manifest.json`;
        const expectedReasons = new Map([
          [real, new RegExp(`names target ring "b" \\[${escaped(foreign.address)}\\], not the job's "b" \\[${job.target.nodes.map((n) => escaped(n.address)).join(', ')}\\] \\(from ${escaped(manifestAt)}\\): nothing written`)],
          [outsideName, new RegExp(`chunk "${escaped(outsideName)}" is not a data chunk of source node ${escaped(sourceNode)} \\(${escaped(nodePrefix(job.jobId, sourceNode))}/data-….chunk\\)`)],
          [strangerName, new RegExp(`comes from source node "${escaped(stranger)}", not one of the job's \\(${escaped(sourceNode)}, from ${escaped(manifestAt)}\\)`)],
        ]);
        const parked = await parkedMessages(aws.sqs, job.queues.deadLetterQueueUrl);
        assert.deepEqual(parked.map((p) => p.chunk).sort(), [...expectedReasons.keys()].sort(), parked.map((p) => `${p.chunk}: ${p.reason}`).join('\n'));
        for (const [chunk, reason] of expectedReasons) {
          assert.match(parked.find((p) => p.chunk === chunk)?.reason ?? '', reason, `the dead-letter reason of ${chunk}`);
          assert.ok(
            worker.events.some((e) => e.event === 'chunk-parked' && e['chunk'] === chunk && reason.test(String(e['reason']))),
            `the worker logged why ${chunk} was parked`,
          );
        }

        // Nothing was even tried on the foreign node; the target holds the job's items, exactly, and nothing else.
        assert.deepEqual(await serverCounters(foreign), { cmdGet: 0, getHits: 0, cmdSet: 0, totalItems: 0, currItems: 0 });
        await assertWarmed(job, items);
        assert.equal(await onTarget(job, forged.map((i) => i.key)), 0, 'no forged item on the target');
        assert.deepEqual(await queueBacklog(aws.sqs, job.queues.queueUrl), { visible: 0, inFlight: 0, delayed: 0 });
      });
    } finally {
      await foreign.stop();
    }
  });

  test('a worker SIGKILLed mid-job loses no count: what it finished was reported before its messages were deleted, what it held half-written is counted once, by the worker that finishes it; stored + existed over all reports is the item count', async () => {
    await withCluster({ a: 2, b: 3 }, async (cluster) => {
      const items = sampleItems({ count: 20_000, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'counted' });
      await load(cluster.topology, 'a', items);
      const job = await createJob(cluster, { visibilityTimeoutSeconds: 3 });
      const [first, second] = cluster.topology.replicas.get('a')!.nodes.map((n) => n.id);

      // The first source node's chunks: written whole and acknowledged, the worker then waits for the second node.
      const doomed = startPopulator(job.queues.queueUrl, 'doomed', '--concurrency', '2');
      const firstChunks = await dumpSource(job, 16 << 10, [first!]);
      await doomed.waitFor(() => acknowledged(doomed).size === firstChunks, `the first node's ${firstChunks} chunks acknowledged`);

      // A stalled target node holds every chunk of the second source node half-written: its
      // items for the other nodes are stored, those for this one wait unanswered.
      const [stalled, ...answering] = cluster.servers['b']!;
      const thaw = freeze(stalled!.pid);
      try {
        await dumpSource(job, 16 << 10, [second!]);
        await doomed.waitFor(() => heldChunks(doomed).size === 2, 'both slots holding a chunk of the second node');
        const held = [...heldChunks(doomed)];
        const heldKeys = (await Promise.all(held.map(async (name) => decodeDataChunk(await job.store.get(name), name)))).flat().map((i) => Buffer.from(i.key));
        let halfWritten = 0;
        await waitFor(
          async () => {
            halfWritten = 0;
            for (const server of answering) halfWritten += (await readFrom(server, heldKeys)).filter(Boolean).length;
            return halfWritten > 0;
          },
          { what: 'items of the held chunks stored on the nodes that answer', detail: () => halfWritten },
        );

        doomed.child.kill('SIGKILL');
        assert.equal((await within(doomed.exit, { what: 'exit of the SIGKILLed worker' })).signal, 'SIGKILL');
        const [lastWord] = await reports(job);
        assert.equal(lastWord?.workerId, 'doomed', 'the killed worker left a report');
        assert.equal(lastWord?.final, false);
        assert.equal(lastWord?.chunks, firstChunks, 'it counts exactly the chunks whose messages it deleted');
        thaw();

        const rescuer = startPopulator(job.queues.queueUrl, 'rescuer');
        const end = await finished(rescuer);
        assert.equal(end.code, 0, end.stderr.slice(-2000));
        for (const chunk of held) assert.ok(rescuer.events.some(named('chunk-done', chunk)), `${chunk} was finished by the other worker`);
        assert.ok(end.result.counters.existed >= halfWritten, 'what the killed worker half-wrote is counted as existing, by the worker that finished it');
      } finally {
        thaw();
      }

      const all = await reports(job);
      assert.deepEqual(all.map((r) => r.workerId).sort(), ['doomed', 'rescuer']);
      const counters = all.flatMap((r) => Object.values(r.byNode));
      assert.equal(counters.reduce((sum, c) => sum + c.stored + c.existed, 0), items.length, 'stored + existed over all reports');
      assert.equal(counters.reduce((sum, c) => sum + c.failed + c.expired, 0), 0);
      await assertWarmed(job, items);
      assert.deepEqual(await parkedMessages(aws.sqs, job.queues.deadLetterQueueUrl), []);
    });
  });

  test('an external worker whose job the controller completes (summary written, queues deleted) ends quietly: outcome complete, final report written, exit 0', async () => {
    await withCluster({ a: 1, b: 1 }, async (cluster) => {
      const items = sampleItems({ count: 2_000, valueBytes: 50, nowSeconds: nowSeconds(), seed: 'external' });
      await load(cluster.topology, 'a', items);
      // A second source node that leaves no end marker (its share covered from another replica,
      // say): the worker cannot see the job complete, only the controller's end of it.
      const job = await createJob(cluster, { moreSourceNodes: ['a/10.0.0.9:11211'] });
      const announced = await dumpSource(job, 32 << 10);

      const worker = startPopulator(job.queues.queueUrl, 'external');
      await worker.waitFor(() => acknowledged(worker).size === announced, `all ${announced} chunks acknowledged`);
      await worker.waitFor(named('waiting'), 'waiting for the unfinished source node');

      // The controller's end of a completed job: the summary first, then the queues go.
      await putJson(job.store, summaryName(job.jobId), { jobId: job.jobId, complete: true });
      await deleteJobQueues(aws.sqs, job.queues);

      const end = await finished(worker);
      assert.equal(end.code, 0, end.stderr.slice(-2000));
      assert.equal(end.result.outcome, 'complete');
      assert.doesNotMatch(end.stderr, /QueueDoesNotExist|cachewarm: /, 'no error said');
      const complete = worker.events.find(named('job-complete'));
      assert.equal(complete?.['queueDeleted'], true);
      assert.equal(complete?.['summary'], `s3://${job.bucket}/${PREFIX}/${job.jobId}/summary.json`);
      const [report] = await reports(job);
      assert.equal(report?.final, true);
      assert.equal(report && storedIn(report), items.length);
      await assertWarmed(job, items);
    });
  });

  test('a worker whose queue is deleted before the job has a summary fails, saying so: exit 1, JOB_FAILED, its final report written', async () => {
    await withCluster({ a: 1, b: 1 }, async (cluster) => {
      const job = await createJob(cluster);
      const worker = startPopulator(job.queues.queueUrl, 'orphaned');
      await worker.waitFor(named('waiting'), 'waiting for the source node');
      await deleteJobQueues(aws.sqs, job.queues);

      const exit = await within(worker.exit, { what: 'exit of the worker whose queue was deleted', detail: () => worker.events.slice(-5) });
      assert.equal(exit.code, 1, exit.stderr);
      const failed = worker.events.find(named('failed'));
      assert.deepEqual({ level: failed?.level, code: failed?.['code'] }, { level: 'error', code: 'JOB_FAILED' }, exit.stderr);
      assert.match(
        String(failed?.msg),
        new RegExp(
          `^queue ${escaped(job.queues.queueUrl)} of job ${job.jobId} was deleted before the job completed ` +
            `\\(no summary at ${escaped(`s3://${job.bucket}/${PREFIX}/${job.jobId}/summary.json`)}\\)`,
        ),
      );
      const [report] = await reports(job);
      assert.equal(report?.final, true);
    });
  });
});

describe('populators write only into the target processes the job works with', () => {
  test('a target node restarted since the job was planned is not written: its items are counted as replaced, the other node gets its share', async () => {
    await withCluster({ a: 1, b: 2 }, async (cluster) => {
      const items = sampleItems({ count: 4_000, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'pinned' });
      await load(cluster.topology, 'a', items);
      const job = await createJob(cluster);
      // The processes the controller planned the job with, as it records them.
      const targets: ProcessIdentities = {};
      for (const server of cluster.servers['b'] ?? []) {
        const seen = observation(server.address, await statsAt(server));
        assert.ok(!(seen instanceof Error));
        targets[server.address] = { pid: seen.pid, startedAtSeconds: seen.startedAtSeconds };
      }
      const record: ProcessesRecord = { targets, sources: {} };
      await putJson(job.store, processesName(job.jobId), record);
      const replaced = await cluster.restartEmpty('b', 0);
      const kept = cluster.servers['b']?.[1];
      assert.ok(kept);
      await dumpSource(job, 64 << 10);

      const { code, result } = await finished(startPopulator(job.queues.queueUrl, 'pinned-1'));
      assert.equal(code, 0);
      const ring = ringOfTarget(job.target);
      const shareOf = (address: string): number => items.filter((item) => ring.nodeFor(item.key).address === address).length;
      assert.equal(result.byNode[replaced.address]?.replaced, shareOf(replaced.address));
      assert.equal(result.byNode[replaced.address]?.stored ?? 0, 0);
      assert.equal(result.byNode[kept.address]?.stored, shareOf(kept.address));
      assert.equal((await serverCounters(replaced)).cmdSet, 0, 'not one write reached the new process');
    });
  });
});
