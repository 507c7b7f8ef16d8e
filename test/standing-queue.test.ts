import { DeleteObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { GetQueueAttributesCommand, ListQueuesCommand, type Message, ReceiveMessageCommand, SendMessageCommand } from '@aws-sdk/client-sqs';
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import type { WritableItem } from '../shared/memcached/meta-add.js';
import { targetRingOf } from '../controller/warm-plan.js';
import { ChunkBuilder, chunkHeader } from '../shared/chunk-format.js';
import { chunkDoneName, endMarkerName, manifestName, nodePrefix } from '../shared/job-layout.js';
import { runStandingWorker } from '../populator/standing-worker.js';
import { systemClock } from '../shared/clock.js';
import { REASON_ATTRIBUTE } from '../shared/queue/sqs-queue.js';
import { sampleItems } from '../shared/sample-items.js';
import { AWS_TEST_ENV, type CliProcess, startCli } from './support/cli-process.js';
import { crawlsStarted, flushReplica, load, nowSeconds } from './support/cluster.js';
import { createBucket, createQueue } from './support/fauxqs.js';
import { type Fleet, startFleet } from './support/fleet.js';
import { Application } from './support/application.js';
import { assertExactCopy, readBack } from './support/read-back.js';
import { waitFor } from './support/wait.js';

/**
 * A standing queue the installation owns, shared by every job (what a KEDA scaler watches):
 * the controller makes and removes no queue, populators that follow it serve every job whose
 * chunks are in a location they allow, and anything else is set aside on its dead-letter
 * queue with the reason.
 */
describe('a standing queue shared by every job', () => {
  let fleet: Fleet;
  let queueUrl: string;
  let deadLetterQueueUrl: string;
  let bucket: string;
  const populators: CliProcess[] = [];
  const items = sampleItems({ count: 12_000, valueBytes: 300, nowSeconds: nowSeconds() });

  before(async () => {
    // Without the LRU maintainer's own crawls, every crawl a source node starts is a warm's.
    fleet = await startFleet({ a: 2, b: 2, c: 3 }, { extraArgs: ['-o', 'no_lru_maintainer'] });
    const { sqs, s3 } = fleet.aws;
    bucket = await createBucket(s3, 'standing');
    deadLetterQueueUrl = await createQueue(sqs, 'fleet-warms-dlq', { MessageRetentionPeriod: '1209600' });
    const { Attributes } = await sqs.send(new GetQueueAttributesCommand({ QueueUrl: deadLetterQueueUrl, AttributeNames: ['QueueArn'] }));
    queueUrl = await createQueue(sqs, 'fleet-warms', {
      VisibilityTimeout: '30',
      RedrivePolicy: JSON.stringify({ deadLetterTargetArn: Attributes?.QueueArn, maxReceiveCount: 5 }),
    });
    await Promise.all(['p1', 'p2'].map((id) => startPopulator(id).event('worker-started')));
    await load(fleet.topology, 'a', items);
  });

  after(async () => {
    for (const p of populators) p.kill();
    await Promise.all(populators.map((p) => p.exited));
    await fleet?.stop();
  });

  const warm = (target: string, ...more: string[]): CliProcess =>
    startCli([
      'warm', 'replica', '--topology', fleet.topologyFile, '--source', 'a', '--target', target,
      '--transport', 'aws', '--bucket', bucket, '--prefix', 'warms', '--endpoint', fleet.fauxqs.endpoint,
      '--sidecar-token-file', fleet.tokenFile, '--chunk-size', '64KiB', '--queue-url', queueUrl, '--populators', '0', '--json', ...more,
    ], AWS_TEST_ENV);

  const startPopulator = (id: string): CliProcess => {
    const populator = startCli(
      ['populator', '--queue-url', queueUrl, '--allow-location', `s3://${bucket}/warms`, '--follow', '--worker-id', id, '--wait-seconds', '1', '--endpoint', fleet.fauxqs.endpoint],
      AWS_TEST_ENV,
    );
    populators.push(populator);
    return populator;
  };

  /**
   * Stops the populators, and waits for their exit and for the long polls they left on the
   * queue to lapse (1 s each): a poll outlives its client, and a message it takes then stays
   * hidden for the visibility timeout.
   */
  async function stopPopulators(): Promise<void> {
    const stopping = populators.splice(0);
    for (const p of stopping) p.kill();
    await Promise.all(stopping.map((p) => p.exit()));
    await delay(1_500);
  }

  async function assertComplete(controller: CliProcess, target: string, items: readonly WritableItem[]): Promise<string> {
    assert.equal(await controller.exit(180_000), 0, JSON.stringify(controller.lines.slice(-15)));
    const summary = JSON.parse(controller.stdout()) as { complete: boolean; jobId: string; targetNodes: { stored: number }[] };
    assert.equal(summary.complete, true);
    assert.equal(summary.targetNodes.reduce((sum, n) => sum + n.stored, 0), items.length, `job ${summary.jobId}: every item counted as stored`);
    await assertExactCopy({ topology: fleet.topology, replica: target }, items, { nothingElseOn: (fleet.topology.replicas.get(target)?.nodes ?? []).map((n) => n.address) });
    const { Contents = [] } = await fleet.aws.s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `warms/${summary.jobId}/` }));
    assert.deepEqual(Contents.map((o) => o.Key).sort(), [`warms/${summary.jobId}/manifest.json`, `warms/${summary.jobId}/summary.json`], 'chunks and marks removed');
    return summary.jobId;
  }

  test('two jobs are served by the same populators, each complete exactly, and the queue stays', async () => {
    const jobs = [await assertComplete(warm('b'), 'b', items)];

    // The second job's chunks wait on the queue with nobody to take them: the job waits too,
    // however empty the queue looked, until a populator has written every chunk.
    await stopPopulators();
    const controller = warm('c');
    await delay(6_000);
    assert.equal(controller.child.exitCode, null, 'the job does not end while its chunks are unwritten');
    startPopulator('p3');
    jobs.push(await assertComplete(controller, 'c', items));

    const { QueueUrls = [] } = await fleet.aws.sqs.send(new ListQueuesCommand({}));
    assert.deepEqual(QueueUrls.map((url) => url.slice(url.lastIndexOf('/') + 1)).sort(), ['fleet-warms', 'fleet-warms-dlq'], 'no queue made, none removed');
    const joined = populators.flatMap((p) => p.lines.filter((l) => l['event'] === 'job-joined').map((l) => String(l['jobId'])));
    assert.deepEqual(joined, [jobs[1]], 'the new populator served the second job');
  });

  test("a job's parked chunk goes back with --retry-parked once fixed; other jobs' parked messages stay", async () => {
    await flushReplica(fleet.topology, 'b');
    const jobId = 'standing-retry';
    const source = fleet.topology.replicas.get('a')?.nodes[0];
    assert.ok(source);
    // Another job's message, set aside earlier: no retry of this job may touch it.
    const other = { version: 2, jobId: 'another-job', source: source.id, store: { bucket, prefix: 'warms' }, chunk: { name: 'another-job/x/data-1.chunk', bytes: 1, items: 1, crc32: 0 }, target: targetRingOf(fleet.topology, 'b') };
    const { MessageId: otherId } = await fleet.aws.sqs.send(new SendMessageCommand({ QueueUrl: deadLetterQueueUrl, MessageBody: JSON.stringify(other) }));

    // One more chunk of the job's first source node, stored where its dumper would put it but
    // damaged in the store: the populator parks it, and the job waits for nothing else.
    const late = sampleItems({ count: 40, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'late' });
    const builder = new ChunkBuilder('data', 1 << 20);
    for (const item of late) builder.addData(item.key, item.value, item.flags, item.exptime);
    const chunk = builder.seal();
    const name = `${nodePrefix(jobId, source.id)}/data-000000.chunk`;
    const damaged = Buffer.from(chunk);
    damaged[damaged.length - 1] = (damaged[damaged.length - 1] as number) ^ 0xff;
    await fleet.aws.s3.send(new PutObjectCommand({ Bucket: bucket, Key: `warms/${name}`, Body: damaged }));
    const message = { version: 2, jobId, source: source.id, store: { bucket, prefix: 'warms' }, chunk: { name, bytes: chunk.length, ...chunkHeader(chunk) }, target: targetRingOf(fleet.topology, 'b') };
    await fleet.aws.sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: JSON.stringify(message) }));

    // The damaged chunk holds items the source never had: the delete reconcile would rightly
    // take them back from the target, so it is off for this job's runs.
    const runs = ['--job-id', jobId, '--force', '--reconcile-deletes', 'off'];
    const first = warm('b', ...runs);
    assert.equal(await first.exit(180_000), 1, JSON.stringify(first.lines.slice(-10)));
    const parked = JSON.parse(first.stdout()) as { complete: boolean; parked: { chunk: string; reason: string }[] };
    assert.deepEqual(parked.parked.map((p) => p.chunk), [name]);
    assert.match(parked.parked[0]?.reason ?? '', /checksum|does not match|corrupt/i);

    // Retried before the cause is fixed, it is parked again, once: the rerun ends saying so.
    const early = warm('b', ...runs, '--retry-parked');
    assert.equal(await early.exit(180_000), 1, JSON.stringify(early.lines.slice(-10)));
    assert.deepEqual((JSON.parse(early.stdout()) as { parked: { chunk: string }[] }).parked.map((p) => p.chunk), [name]);

    await fleet.aws.s3.send(new PutObjectCommand({ Bucket: bucket, Key: `warms/${name}`, Body: chunk }));
    const rerun = warm('b', ...runs, '--retry-parked');
    assert.equal(await rerun.exit(180_000), 0, JSON.stringify(rerun.lines.slice(-10)));
    assert.deepEqual((JSON.parse(rerun.stdout()) as { parked: unknown[] }).parked, []);
    await assertExactCopy({ topology: fleet.topology, replica: 'b' }, [...items, ...late]);

    const { Messages = [] } = await fleet.aws.sqs.send(new ReceiveMessageCommand({ QueueUrl: deadLetterQueueUrl, WaitTimeSeconds: 1, MaxNumberOfMessages: 10, VisibilityTimeout: 0 }));
    assert.deepEqual(Messages.map((m) => m.MessageId), [otherId], "the other job's message stays where it was set aside, untouched");
  });

  test('one dump fills two targets on the standing queue, each message naming its target job', async () => {
    await flushReplica(fleet.topology, 'b');
    await flushReplica(fleet.topology, 'c');
    const before = await crawlsStarted(fleet.cluster.servers['a'] ?? []);
    const controller = warm('b,c', '--force');
    assert.equal(await controller.exit(180_000), 0, JSON.stringify(controller.lines.slice(-15)));
    const summary = JSON.parse(controller.stdout()) as { complete: boolean; completed: string[]; jobId: string };
    assert.deepEqual({ complete: summary.complete, completed: [...summary.completed].sort() }, { complete: true, completed: ['b', 'c'] });
    for (const target of ['b', 'c']) await assertExactCopy({ topology: fleet.topology, replica: target }, items, { what: `replica ${target}` });
    const after = await crawlsStarted(fleet.cluster.servers['a'] ?? []);
    assert.deepEqual(after.map((n, i) => n - (before[i] as number)), after.map(() => 1), 'each source node crawled once for both targets');
    const { Contents = [] } = await fleet.aws.s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `warms/${summary.jobId}` }));
    assert.deepEqual(Contents.map((o) => o.Key).filter((key) => !key?.endsWith('/manifest.json') && !key?.endsWith('/summary.json')), [], 'chunks and marks removed');
  });

  test('a message naming a location no populator allows is set aside with the reason, unread', async () => {
    const forged = {
      version: 2,
      jobId: 'forged-job',
      source: 'a/127.0.0.1:1',
      store: { bucket: 'someone-elses', prefix: 'secrets' },
      chunk: { name: 'forged-job/a_127.0.0.1_1/data-x.chunk', bytes: 10, items: 1, crc32: 0 },
      target: { replica: 'b', hashing: 'spymemcached', nodes: [{ address: '127.0.0.1:1', ringName: '127.0.0.1:1' }] },
    };
    await fleet.aws.sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: JSON.stringify(forged) }));
    const body = JSON.stringify(forged);
    let setAside: Message | undefined;
    await waitFor(async () => {
      const { Messages = [] } = await fleet.aws.sqs.send(
        new ReceiveMessageCommand({ QueueUrl: deadLetterQueueUrl, WaitTimeSeconds: 1, MaxNumberOfMessages: 10, MessageAttributeNames: [REASON_ATTRIBUTE], VisibilityTimeout: 0 }),
      );
      setAside = Messages.find((m) => m.Body === body);
      return setAside !== undefined;
    }, { what: 'the forged message on the dead-letter queue, set aside as it came' });
    assert.match(String(setAside?.MessageAttributes?.[REASON_ATTRIBUTE]?.StringValue), /s3:\/\/someone-elses\/secrets, outside the locations this populator serves \(s3:\/\/standing\/warms\)/);
  });

  test('a populator refuses a bad allowed location before it starts', async () => {
    const refused = startCli(['populator', '--queue-url', queueUrl, '--allow-location', 'http://standing/warms', '--endpoint', fleet.fauxqs.endpoint], AWS_TEST_ENV);
    assert.equal(await refused.exit(), 2);
    assert.match(JSON.stringify(refused.lines), /expected s3:\/\/BUCKET or s3:\/\/BUCKET\/PREFIX/);
  });
  test('a follower lets go of a job once idle: nothing of the job is written again after its controller removed it', async () => {
    await stopPopulators();
    const source = fleet.topology.replicas.get('a')?.nodes[0];
    assert.ok(source);
    const jobId = 'idle-job';
    const put = (name: string, body: Buffer | string): Promise<unknown> => fleet.aws.s3.send(new PutObjectCommand({ Bucket: bucket, Key: `warms/${name}`, Body: body }));
    const target = targetRingOf(fleet.topology, 'b');
    // Items the source never had, so no delete reconcile (it would take them back).
    await put(
      manifestName(jobId),
      JSON.stringify({ version: 1, jobId, kind: 'replica', source: { replica: 'a', nodes: [source.id] }, target, reconcileDeletes: false, createdAt: new Date().toISOString() }),
    );
    const few = sampleItems({ count: 20, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'idle' });
    const builder = new ChunkBuilder('data', 1 << 16);
    for (const item of few) builder.addData(item.key, item.value, item.flags, item.exptime);
    const chunk = builder.seal();
    const name = `${nodePrefix(jobId, source.id)}/data-r1-1.chunk`;
    await put(name, chunk);
    const message = { version: 2, jobId, source: source.id, store: { bucket, prefix: 'warms' }, chunk: { name, bytes: chunk.length, ...chunkHeader(chunk) }, target };
    await fleet.aws.sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: JSON.stringify(message) }));

    const events: string[] = [];
    const stop = new AbortController();
    const worker = runStandingWorker({
      s3: fleet.aws.s3, sqs: fleet.aws.sqs, queueUrl, allowed: [{ bucket, prefix: 'warms' }], workerId: 'follower', follow: true,
      waitTimeSeconds: 1, reportIntervalMs: 100, progressIntervalMs: 100, laneIdleMs: 500, clock: systemClock, signal: stop.signal,
      log: (entry) => void events.push(String(entry['event'])),
    });
    const keys = async (): Promise<string[]> =>
      ((await fleet.aws.s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `warms/${jobId}/` }))).Contents ?? []).map((o) => o.Key ?? '');
    await waitFor(async () => (await keys()).includes(`warms/${chunkDoneName(jobId, source.id, name)}`), { what: 'the chunk marked done' });
    await assertExactCopy(target, few, { what: "the chunk written" });
    // The job's controller, done, removes everything but the manifest.
    for (const key of await keys()) if (!key.endsWith('/manifest.json')) await fleet.aws.s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
    await waitFor(() => events.includes('job-left'), { what: 'the worker to let go of the idle job' });
    await delay(500);
    assert.deepEqual(await keys(), [`warms/${manifestName(jobId)}`], 'no report written again after the removal');
    stop.abort();
    const result = await worker;
    assert.equal(result.jobs[jobId]?.chunks, 1);
    assert.equal(result.outcome, 'aborted');
  });

  test('keys the application deletes while their chunks wait on the queue are taken back by the populator that writes them', async () => {
    await stopPopulators();
    await flushReplica(fleet.topology, 'b');
    const jobId = 'standing-deletes';
    // --force: after flush_all, memcached reports the old curr_items until its crawler reclaims them.
    const controller = warm('b', '--job-id', jobId, '--force');
    const sources = fleet.topology.replicas.get('a')?.nodes ?? [];
    const ended = async (): Promise<boolean> => {
      const { Contents = [] } = await fleet.aws.s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `warms/${jobId}/` }));
      const names = new Set(Contents.map((o) => o.Key));
      return sources.every((node) => names.has(`warms/${endMarkerName(jobId, node.id)}`));
    };
    await waitFor(ended, { timeoutMs: 60_000, what: 'every source node dumped, its chunks waiting on the queue' });

    // Every key dumped; none written. The application deletes some from both replicas, and
    // deletes and sets again others.
    const app = new Application(fleet.topology);
    const deleted = items.filter((_, i) => i % 10 === 3);
    const setAgain = items.filter((_, i) => i % 10 === 7);
    const appValue = (key: Buffer): Buffer => Buffer.from(`set again: ${key.toString()}`);
    try {
      for (const item of [...deleted, ...setAgain]) {
        await app.delete('a', item.key);
        await app.delete('b', item.key);
      }
      for (const item of setAgain) {
        await app.set('a', item.key, appValue(item.key));
        await app.set('b', item.key, appValue(item.key));
      }
    } finally {
      await app.close();
    }
    startPopulator('p-deletes');
    assert.equal(await controller.exit(180_000), 0, JSON.stringify(controller.lines.slice(-15)));
    const summary = JSON.parse(controller.stdout()) as { complete: boolean; targetNodes: Record<string, number>[] };
    assert.equal(summary.complete, true);
    const sum = (field: string): number => summary.targetNodes.reduce((total, n) => total + (n[field] ?? 0), 0);
    assert.equal(sum('reconcileRemoved'), deleted.length, 'each deleted key the populator wrote, it took back');
    assert.equal(sum('reconcileChecked'), sum('stored'));
    assert.equal(sum('reconcileUnchecked'), 0);
    const untouched = items.filter((_, i) => i % 10 !== 3 && i % 10 !== 7);
    const expected = [...untouched, ...setAgain.map((item) => ({ ...item, value: appValue(item.key), flags: 0, exptime: 0 }))];
    await assertExactCopy({ topology: fleet.topology, replica: 'b' }, expected, { what: 'b after the warm and the deletes' });
    const gone = await readBack({ topology: fleet.topology, replica: 'b' }, deleted);
    assert.equal(gone.missing.length, deleted.length, 'none of the deleted keys is in b');
  });
});
