import { ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { ChangeMessageVisibilityCommand, DeleteMessageCommand, ListQueuesCommand, ReceiveMessageCommand, SendMessageCommand } from '@aws-sdk/client-sqs';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { verifyCopy } from '../controller/verify-copy.js';
import { targetRingOf } from '../controller/warm-plan.js';
import { connectDirect } from '../shared/memcached/connect.js';
import { SidecarClient } from '../dumper/sidecar-client.js';
import { createJobQueues } from '../shared/job-queues.js';
import { endMarkerName, nodePrefix } from '../shared/job-layout.js';
import { sampleItems } from '../shared/sample-items.js';
import { ChunkBuilder, chunkHeader } from '../shared/chunk-format.js';
import type { Topology } from '../shared/topology.js';
import { startCli } from './support/cli-process.js';
import { type Cluster, crawlsStarted, flushReplica, itemCount, load, nowSeconds, serverCounters, setMemoryLimit } from './support/cluster.js';
import { type AwsClients, type Fauxqs, createBucket, startFauxqs } from './support/fauxqs.js';
import { type Fleet, TOKEN, startFleet } from './support/fleet.js';
import { assertExactCopy, readBack } from './support/read-back.js';
import { waitFor, within } from './support/wait.js';

/**
 * The replica warm at fleet scale, every part a real process on loopback: memcached nodes,
 * one dumper sidecar per source node, the controller, and the populator workers it starts;
 * S3 and SQS are fauxqs, spoken to through the AWS SDK.
 */
describe('a replica warm through sidecars, S3 and SQS', () => {
  let fleet: Fleet;
  let fauxqs: Fauxqs;
  let aws: AwsClients;
  let cluster: Cluster;
  let topology: Topology;
  let topologyFile: string;
  let tokenFile: string;
  let dir: string;

  before(async () => {
    // The LRU maintainer schedules crawls of its own: without it, every crawl a node starts is the warm's.
    fleet = await startFleet({ a: 3, b: 4 }, { extraArgs: ['-o', 'no_lru_maintainer'] });
    ({ fauxqs, aws, cluster, topology, topologyFile, tokenFile, dir } = fleet);
  });

  after(() => fleet?.stop());

  const flushTarget = (): Promise<void> => flushReplica(topology, 'b');

  const warmArgs = (bucket: string, ...more: string[]): string[] => [
    'warm', 'replica', '--topology', topologyFile, '--target', 'b', '--source', 'a',
    '--transport', 'aws', '--bucket', bucket, '--prefix', 'warms', '--endpoint', fauxqs.endpoint,
    '--sidecar-token-file', tokenFile, '--chunk-size', '64KiB', '--json', ...more,
  ];

  test('copies every item to the node the target ring names, then removes its queues and chunks', async () => {
    const items = sampleItems({ count: 30_000, valueBytes: 200, nowSeconds: nowSeconds() });
    await load(topology, 'a', items);
    const bucket = await createBucket(aws.s3, 'warm-complete');
    const before = await crawlsStarted(cluster.servers['a'] ?? []);

    const controller = startCli(warmArgs(bucket, '--populators', '2'));
    const code = await controller.exited;
    assert.equal(code, 0, JSON.stringify(controller.lines.slice(-20)));
    const summary = JSON.parse(controller.stdout()) as { complete: boolean; jobId: string; targetNodes: { stored: number }[]; verification?: { checked: number; identical: number } };
    assert.equal(summary.complete, true);
    assert.equal(summary.targetNodes.reduce((sum, n) => sum + n.stored, 0), items.length, 'the populators reported every item written');
    // The read-back draws its 2,000 keys per target node from the sidecars' samples of what they listed.
    assert.deepEqual({ checked: summary.verification?.checked, identical: summary.verification?.identical }, { checked: 8_000, identical: 8_000 });
    const after = await crawlsStarted(cluster.servers['a'] ?? []);
    assert.deepEqual(after.map((n, i) => n - (before[i] as number)), [1, 1, 1], 'crawls started on each source node');

    const report = await verifyCopy(items, targetRingOf(topology, 'b'), { connect: connectDirect });
    assert.equal(report.matched, items.length, report.examples.join('\n'));
    let held = 0;
    for (const node of topology.replicas.get('b')?.nodes ?? []) held += await itemCount(node);
    assert.equal(held, items.length, 'nothing written anywhere else');

    const { QueueUrls = [] } = await aws.sqs.send(new ListQueuesCommand({ QueueNamePrefix: 'cachewarm-' }));
    assert.ok(!QueueUrls.some((url) => url.includes(summary.jobId.slice(0, 20))), `queues left: ${QueueUrls.join(', ')}`);
    const { Contents = [] } = await aws.s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `warms/${summary.jobId}/` }));
    assert.deepEqual(
      Contents.map((o) => o.Key).sort(),
      [`warms/${summary.jobId}/manifest.json`, `warms/${summary.jobId}/summary.json`],
      "the chunks are removed; the job's record stays",
    );

    // Run again as a scheduler would: the same job id is already complete; a new one finds the target warm.
    const again = startCli(warmArgs(bucket, '--job-id', summary.jobId));
    assert.equal(await again.exited, 0);
    const repeated = JSON.parse(again.stdout()) as { skipped?: string; jobId: string };
    assert.equal(repeated.skipped, 'already-complete');
    const fresh = startCli(warmArgs(bucket));
    assert.equal(await fresh.exited, 0);
    const judged = JSON.parse(fresh.stdout()) as { skipped?: string; warmth?: { ratio: number } };
    assert.equal(judged.skipped, 'already-warm');
    assert.ok((judged.warmth?.ratio ?? 0) >= 0.95);
  });

  test('a controller killed mid-job and run again with the same --job-id resumes the same dumps', async () => {
    await flushTarget();
    const items = sampleItems({ count: 15_000, valueBytes: 200, nowSeconds: nowSeconds(), seed: 'resume' });
    await load(topology, 'a', items);
    const bucket = await createBucket(aws.s3, 'warm-resume');
    const jobId = 'scale-up-resume-1';
    // 1,500 items/s per node: the dumps are still running when the controller dies.
    // --force: after flush_all, memcached reports the old curr_items until its crawler reclaims them.
    const args = warmArgs(bucket, '--job-id', jobId, '--populators', '1', '--max-ops', '1500', '--force');

    const first = startCli(args);
    const clients = (topology.replicas.get('a')?.nodes ?? []).map((n) => new SidecarClient({ baseUrl: n.sidecar as string, token: TOKEN }));
    let before: (string | undefined)[] = [];
    for (let i = 0; i < 200; i++) {
      before = await Promise.all(clients.map(async (c) => (await c.status(jobId).catch(() => undefined))?.startedAt));
      if (before.every(Boolean)) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.ok(before.every(Boolean), 'every sidecar was dumping');
    first.kill('SIGKILL');
    assert.equal(await first.exited, null);

    const second = startCli(args);
    const code = await second.exited;
    assert.equal(code, 0, JSON.stringify(second.lines.slice(-20)));
    const after = await Promise.all(clients.map(async (c) => (await c.status(jobId))?.startedAt));
    assert.deepEqual(after, before, 'the sidecars kept their dumps: nothing started over');
    const summary = JSON.parse(second.stdout()) as { complete: boolean; jobId: string; sourceNodes: { listed: number }[] };
    assert.equal(summary.jobId, jobId);
    assert.equal(summary.complete, true);

    const report = await verifyCopy(items, targetRingOf(topology, 'b'), { connect: connectDirect });
    assert.equal(report.matched, items.length, report.examples.join('\n'));
  });

  // The victim's share is about a quarter of the items (4 target nodes): "early" and "late"
  // are counted in writes it received.
  for (const { moment, writes, downMs } of [
    { moment: 'early, back at once', writes: 500, downMs: 0 },
    { moment: 'near the end, down for 5 s', writes: 4_000, downMs: 5_000 },
  ]) {
    test(`a target node restarted ${moment} is refilled from the source: complete, and every item in place`, async () => {
      await flushTarget();
      const items = sampleItems({ count: 20_000, valueBytes: 200, nowSeconds: nowSeconds(), seed: `target-restart-${writes}` });
      await load(topology, 'a', items);
      const bucket = await createBucket(aws.s3, `warm-target-restart-${writes}`);
      const victim = topology.replicas.get('b')?.nodes[2];
      assert.ok(victim);
      // Writes counted, not items held: after flush_all, curr_items still shows what was there.
      const setsBefore = (await serverCounters(victim)).cmdSet;
      const controller = startCli(warmArgs(bucket, '--populators', '1', '--max-ops', '2000', '--force'));
      await waitFor(async () => (await serverCounters(victim)).cmdSet - setsBefore > writes, { what: `writes to ${victim.id}`, timeoutMs: 60_000 });
      await cluster.restartEmpty('b', 2, undefined, { downMs });

      const code = await within(controller.exited, { what: 'the controller to finish', timeoutMs: 120_000 });
      assert.equal(code, 0, JSON.stringify(controller.lines.slice(-20)));
      const summary = JSON.parse(controller.stdout()) as { complete: boolean; repairs?: { nodes?: string[] }[] };
      assert.equal(summary.complete, true);
      assert.ok(summary.repairs?.some((r) => r.nodes?.includes(victim.id)), JSON.stringify(summary.repairs));
      await assertExactCopy({ topology, replica: 'b' }, items);
    });
  }

  test('a malformed message in the queue: it is parked, the rest lands, and the job exits 1 with its summary saying why', async () => {
    await flushTarget();
    const items = sampleItems({ count: 5_000, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'malformed' });
    await load(topology, 'a', items);
    const bucket = await createBucket(aws.s3, 'warm-malformed');
    const jobId = 'malformed-1';
    // The controller's own queues, made first (it makes them idempotently), with a forged message in.
    const queues = await createJobQueues(aws.sqs, { jobId, bucket, prefix: 'warms' });
    await aws.sqs.send(new SendMessageCommand({ QueueUrl: queues.queueUrl, MessageBody: '{"version":2,"jobId":"malformed-1"}' }));

    const run = startCli(warmArgs(bucket, '--job-id', jobId, '--populators', '1', '--force'));
    const code = await within(run.exited, { what: 'the controller to finish', timeoutMs: 120_000 });
    assert.equal(code, 1, JSON.stringify(run.lines.slice(-10)));
    const summary = JSON.parse(run.stdout()) as { complete: boolean; parked: { reason: string }[]; problems: string[] };
    assert.equal(summary.complete, false);
    assert.equal(summary.parked.length, 1);
    assert.match(summary.problems.join('\n'), /1 chunks parked/);
    await assertExactCopy({ topology, replica: 'b' }, items);
  });

  test('external populators (--populators 0): every write of theirs is in the summary, and they end with exit 0 once the job is complete', async () => {
    await flushTarget();
    const items = sampleItems({ count: 10_000, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'external' });
    await load(topology, 'a', items);
    const bucket = await createBucket(aws.s3, 'warm-external');
    const jobId = 'external-1';
    // The source holds the earlier tests' items too: the warm copies all it holds.
    const held = (await Promise.all((topology.replicas.get('a')?.nodes ?? []).map(itemCount))).reduce((a, b) => a + b, 0);
    // The job's queues as the controller makes them (idempotently): the fleet is pointed at them first.
    const queues = await createJobQueues(aws.sqs, { jobId, bucket, prefix: 'warms' });
    const controller = startCli(warmArgs(bucket, '--job-id', jobId, '--populators', '0', '--force'));
    // An autoscaler starts workers on the queue's depth: once chunks are announced, the manifest is there.
    await waitFor(async () => (await aws.s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `warms/${jobId}/manifest.json` }))).KeyCount === 1, {
      what: 'the manifest',
    });
    const workers = ['w1', 'w2'].map((id) =>
      startCli(['populator', '--queue-url', queues.queueUrl, '--endpoint', fauxqs.endpoint, '--worker-id', id, '--wait-seconds', '1']),
    );

    assert.equal(await within(controller.exited, { what: 'the controller', timeoutMs: 120_000 }), 0, JSON.stringify(controller.lines.slice(-10)));
    const summary = JSON.parse(controller.stdout()) as { complete: boolean; targetNodes: { stored: number; existed: number }[] };
    assert.equal(summary.complete, true);
    assert.equal(summary.targetNodes.reduce((sum, n) => sum + n.stored + n.existed, 0), held, JSON.stringify(summary.targetNodes));
    for (const worker of workers) assert.equal(await within(worker.exited, { what: 'an external worker' }), 0, JSON.stringify(worker.lines.slice(-5)));
    await assertExactCopy({ topology, replica: 'b' }, items);
  });

  test('a message deleted from the queue by someone else: the items it announced are missed, and the job says so (exit 1)', async () => {
    await flushTarget();
    const items = sampleItems({ count: 3_000, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'stolen' });
    await load(topology, 'a', items);
    const bucket = await createBucket(aws.s3, 'warm-stolen');
    const jobId = 'stolen-1';
    const queues = await createJobQueues(aws.sqs, { jobId, bucket, prefix: 'warms' });
    const controller = startCli(warmArgs(bucket, '--job-id', jobId, '--populators', '0', '--force'));
    // With no populator yet, the first announced chunk is taken off the queue and dropped.
    let stolen: string | undefined;
    await waitFor(async () => {
      const out = await aws.sqs.send(new ReceiveMessageCommand({ QueueUrl: queues.queueUrl, WaitTimeSeconds: 1 }));
      const message = out.Messages?.[0];
      if (!message?.ReceiptHandle) return false;
      await aws.sqs.send(new DeleteMessageCommand({ QueueUrl: queues.queueUrl, ReceiptHandle: message.ReceiptHandle }));
      stolen = message.Body;
      return true;
    }, { what: 'a first announced chunk' });
    const missed = (JSON.parse(stolen as string) as { chunk: { items: number } }).chunk.items;
    const worker = startCli(['populator', '--queue-url', queues.queueUrl, '--endpoint', fauxqs.endpoint, '--wait-seconds', '1']);

    assert.equal(await within(controller.exited, { what: 'the controller', timeoutMs: 120_000 }), 1, JSON.stringify(controller.lines.slice(-10)));
    const summary = JSON.parse(controller.stdout()) as { complete: boolean; problems: string[] };
    assert.match(summary.problems.join('\n'), new RegExp(`^${missed} of the [\\d,]+ items the dumps read never reached a writer`, 'm'));
    await within(worker.exited, { what: 'the worker' });
  });

  test('a parked message held by another reader during the rerun still counts: exit 1, and the dead-letter queue keeps it', async () => {
    await flushTarget();
    const items = sampleItems({ count: 2_000, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'browsed' });
    await load(topology, 'a', items);
    const bucket = await createBucket(aws.s3, 'warm-browsed');
    const jobId = 'browsed-1';
    const queues = await createJobQueues(aws.sqs, { jobId, bucket, prefix: 'warms' });
    await aws.sqs.send(new SendMessageCommand({ QueueUrl: queues.queueUrl, MessageBody: '{"version":2,"jobId":"browsed-1"}' }));
    const args = warmArgs(bucket, '--job-id', jobId, '--populators', '1', '--force');
    const first = startCli(args);
    assert.equal(await within(first.exited, { what: 'the first run', timeoutMs: 120_000 }), 1, JSON.stringify(first.lines.slice(-10)));

    // An operator browses the dead-letter queue: the message is invisible to everyone else for a minute.
    const browsed = await aws.sqs.send(new ReceiveMessageCommand({ QueueUrl: queues.deadLetterQueueUrl, VisibilityTimeout: 60, WaitTimeSeconds: 1 }));
    assert.equal(browsed.Messages?.length, 1);
    const rerun = startCli(args);
    assert.equal(await within(rerun.exited, { what: 'the rerun', timeoutMs: 120_000 }), 1, JSON.stringify(rerun.lines.slice(-10)));
    const summary = JSON.parse(rerun.stdout()) as { complete: boolean; parked: { reason: string }[] };
    assert.equal(summary.complete, false);
    assert.match(summary.parked[0]?.reason ?? '', /held by another reader/);

    const handle = browsed.Messages?.[0]?.ReceiptHandle as string;
    await aws.sqs.send(new ChangeMessageVisibilityCommand({ QueueUrl: queues.deadLetterQueueUrl, ReceiptHandle: handle, VisibilityTimeout: 0 }));
    const kept = await aws.sqs.send(new ReceiveMessageCommand({ QueueUrl: queues.deadLetterQueueUrl, WaitTimeSeconds: 1 }));
    assert.equal(kept.Messages?.[0]?.Body, '{"version":2,"jobId":"browsed-1"}', 'the parked message is still there');
    await assertExactCopy({ topology, replica: 'b' }, items);
  });

  test('a chunk parked as missing is written by the rerun with --retry-parked once the chunk is back: complete, exact', async () => {
    await flushTarget();
    const items = sampleItems({ count: 3_000, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'parked' });
    await load(topology, 'a', items);
    const bucket = await createBucket(aws.s3, 'warm-retry-parked');
    const jobId = 'retry-parked-1';
    // A valid message for the job whose chunk is not (yet) in the bucket: the populator parks it.
    const late = sampleItems({ count: 50, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'late' });
    const builder = new ChunkBuilder('data', 1 << 20);
    for (const item of late) builder.addData(item.key, item.value, item.flags, item.exptime);
    const chunk = builder.seal();
    // Where the source node's dumper would have put it: the manifest admits no other path.
    const name = `${nodePrefix(jobId, topology.replicas.get('a')?.nodes[0]?.id ?? '')}/data-000000.chunk`;
    const message = {
      version: 2,
      jobId,
      source: topology.replicas.get('a')?.nodes[0]?.id,
      store: { bucket, prefix: 'warms' },
      chunk: { name, bytes: chunk.length, ...chunkHeader(chunk) },
      target: targetRingOf(topology, 'b'),
    };
    const queues = await createJobQueues(aws.sqs, { jobId, bucket, prefix: 'warms' });
    await aws.sqs.send(new SendMessageCommand({ QueueUrl: queues.queueUrl, MessageBody: JSON.stringify(message) }));
    // The chunk holds items the source never had: the delete reconcile would rightly take them
    // back from the target (the source no longer holds them), so it is off here.
    const args = warmArgs(bucket, '--job-id', jobId, '--populators', '1', '--force', '--reconcile-deletes', 'off');

    const first = startCli(args);
    assert.equal(await within(first.exited, { what: 'the first run', timeoutMs: 120_000 }), 1, JSON.stringify(first.lines.slice(-10)));
    const parked = JSON.parse(first.stdout()) as { complete: boolean; parked: { chunk: string; reason: string }[] };
    assert.deepEqual(parked.parked.map((p) => p.chunk), [name]);
    assert.match(parked.parked[0]?.reason ?? '', /missing|does not exist|NoSuchKey/i);

    // The operator restores the chunk, then reruns the job asking for its parked messages.
    await aws.s3.send(new PutObjectCommand({ Bucket: bucket, Key: `warms/${name}`, Body: chunk }));
    const rerun = startCli([...args, '--retry-parked']);
    assert.equal(await within(rerun.exited, { what: 'the rerun', timeoutMs: 120_000 }), 0, JSON.stringify(rerun.lines.slice(-10)));
    const summary = JSON.parse(rerun.stdout()) as { complete: boolean; parked: unknown[] };
    assert.equal(summary.complete, true);
    assert.deepEqual(summary.parked, []);
    await assertExactCopy({ topology, replica: 'b' }, [...items, ...late]);
  });

  test('a second run of a running job exits 1 at once naming the holder, and leaves the first to complete exactly', async () => {
    await flushTarget();
    const items = sampleItems({ count: 10_000, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'one-run' });
    await load(topology, 'a', items);
    const bucket = await createBucket(aws.s3, 'warm-one-run');
    const args = warmArgs(bucket, '--job-id', 'one-run', '--populators', '1', '--max-ops', '2000', '--force');
    const first = startCli(args);
    await waitFor(async () => (await listKeys(bucket, 'warms/one-run/')).includes('warms/one-run/lock.json'), { what: 'the first run to take the lock' });

    const second = startCli(args);
    assert.equal(await within(second.exited, { what: 'the second run' }), 1, JSON.stringify(second.lines.slice(-10)));
    const refused = JSON.parse(second.stdout()) as { complete: boolean; error: { code: string; message: string } };
    assert.equal(refused.complete, false);
    assert.equal(refused.error.code, 'JOB_LOCKED');
    assert.match(refused.error.message, new RegExp(`job one-run is already running \\(${os.hostname()} pid \\d+ since `));

    assert.equal(await within(first.exited, { what: 'the first run', timeoutMs: 120_000 }), 0, JSON.stringify(first.lines.slice(-10)));
    assert.equal((JSON.parse(first.stdout()) as { complete: boolean }).complete, true);
    await assertExactCopy({ topology, replica: 'b' }, items);
    assert.ok(!(await listKeys(bucket, 'warms/one-run/')).includes('warms/one-run/lock.json'), 'the lock is gone with its run');
  });

  async function listKeys(bucket: string, prefix: string): Promise<string[]> {
    const out = await aws.s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix }));
    return (out.Contents ?? []).map((o) => o.Key ?? '');
  }

  test('a source node without a sidecar URL is refused, naming the node', async () => {
    const document = {
      replicas: {
        a: { nodes: (topology.replicas.get('a')?.nodes ?? []).map((n) => ({ address: n.address })) },
        b: { nodes: (topology.replicas.get('b')?.nodes ?? []).map((n) => ({ address: n.address })) },
      },
    };
    const file = path.join(dir, 'no-sidecars.json');
    await writeFile(file, JSON.stringify(document));
    const bucket = await createBucket(aws.s3, 'warm-refused');
    const args = warmArgs(bucket);
    args[args.indexOf(topologyFile)] = file;
    const run = startCli(args);
    assert.equal(await run.exited, 2);
    const first = topology.replicas.get('a')?.nodes[0]?.address ?? '';
    assert.match(JSON.stringify(run.lines), new RegExp(`node a/${first.replace(/[.]/g, '\\.')} has no \\\\"sidecar\\\\" URL`));
  });
});

describe('a replica warm through sidecars, S3 and SQS, whose source node restarts mid-dump', () => {
  let fleet: Fleet;
  let fauxqs: Fauxqs;
  let aws: AwsClients;
  let cluster: Cluster;
  let topology: Topology;
  let topologyFile: string;
  let tokenFile: string;

  before(async () => {
    fleet = await startFleet({ a: 2, b: 2, c: 2 });
    ({ fauxqs, aws, cluster, topology, topologyFile, tokenFile } = fleet);
  });

  after(() => fleet?.stop());

  test("its share is taken from another full replica: complete in one run, every item the fleet still holds in place", async () => {
    const items = sampleItems({ count: 30_000, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'source-restart' });
    await Promise.all([load(topology, 'a', items), load(topology, 'c', items.slice(0, 29_000))]);
    const bucket = await createBucket(aws.s3, 'warm-source-restart');
    const victim = topology.replicas.get('a')?.nodes[0];
    assert.ok(victim);
    const readsBefore = (await serverCounters(victim)).cmdGet;
    const controller = startCli([
      'warm', 'replica', '--topology', topologyFile, '--target', 'b', '--transport', 'aws', '--bucket', bucket, '--prefix', 'warms',
      '--endpoint', fauxqs.endpoint, '--sidecar-token-file', tokenFile, '--chunk-size', '64KiB', '--json', '--populators', '1', '--max-ops', '3000',
    ]);
    await waitFor(async () => (await serverCounters(victim)).cmdGet - readsBefore > 2_000, { what: `reads from ${victim.id}`, timeoutMs: 60_000 });
    await cluster.restartEmpty('a', 0);

    const code = await within(controller.exited, { what: 'the controller to finish', timeoutMs: 180_000 });
    assert.equal(code, 0, JSON.stringify(controller.lines.slice(-20)));
    const summary = JSON.parse(controller.stdout()) as {
      complete: boolean;
      source: string;
      sourceNodes: { node: string; restarted?: boolean; coveredBy?: string }[];
      targetNodes: { reconcileUnchecked: number }[];
    };
    assert.equal(summary.complete, true);
    // What the node gave before its restart was looked up for deletes at c in its place.
    assert.equal(summary.targetNodes.reduce((sum, n) => sum + n.reconcileUnchecked, 0), 0);
    assert.equal(summary.source, 'a');
    assert.deepEqual(
      summary.sourceNodes.find((n) => n.node === victim.id),
      { ...summary.sourceNodes.find((n) => n.node === victim.id), restarted: true, coveredBy: 'c' },
    );
    // What c holds of the restarted node's share, and all the other source node holds.
    const inC = new Set((await readBack({ topology, replica: 'c' }, items)).missing);
    const inA = new Set((await readBack({ topology, replica: 'a' }, items)).missing);
    const expected = items.filter((i) => !inA.has(i.key.toString()) || !inC.has(i.key.toString()));
    assert.ok(expected.length >= 29_000);
    await assertExactCopy({ topology, replica: 'b' }, expected);
  });
});

describe('a replica warm through sidecars, S3 and SQS, into a target that refuses items', () => {
  let fleet: Fleet;
  let topology: Topology;
  let cluster: Cluster;
  const MiB = 1 << 20;

  // The source takes items up to 2 MiB; each test gives the target node its own limits.
  before(async () => {
    fleet = await startFleet({ a: 1, b: 1 }, { extraArgs: ['-I', '2m'] });
    ({ topology, cluster } = fleet);
  });
  after(() => fleet?.stop());

  const warm = async (bucket: string, jobId: string, ...more: string[]): Promise<{ code: number | null; summary: RefusalSummary }> => {
    const run = startCli([
      'warm', 'replica', '--topology', fleet.topologyFile, '--target', 'b', '--source', 'a', '--transport', 'aws', '--bucket', bucket,
      '--prefix', 'warms', '--endpoint', fleet.fauxqs.endpoint, '--sidecar-token-file', fleet.tokenFile, '--chunk-size', '256KiB',
      '--json', '--populators', '1', '--job-id', jobId, ...more,
    ]);
    const code = await within(run.exited, { what: `the run of ${jobId}`, timeoutMs: 120_000 });
    return { code, summary: JSON.parse(run.stdout()) as RefusalSummary };
  };
  const refused = (s: RefusalSummary, reason: 'tooLarge' | 'outOfMemory'): number => s.targetNodes.reduce((sum, n) => sum + n[reason], 0);

  test('out of memory (-M): exit 1 naming the count; once the node has room, the rerun writes exactly what was refused', async () => {
    const target = await cluster.restartEmpty('b', 0, { memoryMb: 8, extraArgs: ['-M'] });
    const items = sampleItems({ count: 20_000, valueBytes: 1000, nowSeconds: nowSeconds(), seed: 'oom' });
    await load(topology, 'a', items);
    const bucket = await createBucket(fleet.aws.s3, 'warm-oom');

    const first = await warm(bucket, 'oom', '--accept-evictions');
    assert.equal(first.code, 1);
    const count = refused(first.summary, 'outOfMemory');
    assert.ok(count > 0, JSON.stringify(first.summary.targetNodes));
    assert.match(first.summary.problems.join('\n'), new RegExp(`refused ${count.toLocaleString('en-US')} items for want of memory`));
    assert.equal((await readBack({ topology, replica: 'b' }, items)).missing.length, count, 'what was refused is exactly what is missing');

    await setMemoryLimit(target, 128);
    const rerun = await warm(bucket, 'oom');
    assert.equal(rerun.code, 0, JSON.stringify(rerun.summary.problems));
    assert.equal(refused(rerun.summary, 'outOfMemory'), 0);
    assert.ok(rerun.summary.repairs.some((r) => r.reason.includes(`retried: ${count} stored, 0 already there, 0 refused again`)), JSON.stringify(rerun.summary.repairs));
    const total = (field: 'stored' | 'reconcileChecked'): number => rerun.summary.targetNodes.reduce((sum, n) => sum + n[field], 0);
    assert.equal(total('stored'), items.length);
    assert.equal(total('reconcileChecked'), items.length, 'what the retry stored was looked up at the source for deletes too');
    await assertExactCopy({ topology, replica: 'b' }, items);
  });

  test('too large for the node: exit 1 on every rerun, each retrying exactly those items, until --skip-too-large accepts it', async () => {
    await cluster.restartEmpty('b', 0, { memoryMb: 128 });
    const small = sampleItems({ count: 2_000, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'small' });
    const big = ['big-1', 'big-2', 'big-3'].map((key, i) => ({ key: Buffer.from(key), value: Buffer.alloc(1.5 * MiB, 0x61 + i), flags: i, exptime: 0 }));
    await load(topology, 'a', [...small, ...big]);
    const bucket = await createBucket(fleet.aws.s3, 'warm-too-large');

    const first = await warm(bucket, 'big');
    assert.equal(first.code, 1);
    assert.equal(refused(first.summary, 'tooLarge'), 3);
    assert.match(first.summary.problems.join('\n'), /refused 3 items as too large for it \(its item size limit is 1\.0 MiB;/);
    await assertExactCopy({ topology, replica: 'b' }, small);

    const second = await warm(bucket, 'big');
    assert.equal(second.code, 1, 'an identical rerun is not complete');
    assert.equal(refused(second.summary, 'tooLarge'), 3);
    assert.ok(second.summary.repairs.some((r) => r.reason.includes('retried: 0 stored, 0 already there, 3 refused again')), JSON.stringify(second.summary.repairs));

    const accepted = await warm(bucket, 'big', '--skip-too-large');
    assert.equal(accepted.code, 0, JSON.stringify(accepted.summary.problems));
    assert.equal(accepted.summary.skippedTooLarge, 3);
    const again = await warm(bucket, 'big');
    assert.equal(again.code, 0);
    assert.equal(again.summary.skipped, 'already-complete');
  });
});

interface RefusalSummary {
  readonly complete: boolean;
  readonly problems: string[];
  readonly targetNodes: { tooLarge: number; outOfMemory: number; stored: number; reconcileChecked: number }[];
  readonly repairs: { reason: string }[];
  readonly skippedTooLarge?: number;
  readonly skipped?: string;
}

describe('a replica warm through sidecars, S3 and SQS, whose S3/SQS service loses its state', () => {
  let fleet: Fleet;
  let fauxqs: Fauxqs;

  before(async () => {
    fleet = await startFleet({ a: 2, b: 2 });
    fauxqs = fleet.fauxqs;
  });
  after(async () => {
    await fleet?.stop();
    // The service restarted by a test is the one to stop (the fleet stops the first).
    if (fauxqs !== fleet?.fauxqs) await fauxqs?.stop();
  });

  const args = (bucket: string, jobId: string, ...more: string[]): string[] => [
    'warm', 'replica', '--topology', fleet.topologyFile, '--target', 'b', '--source', 'a', '--transport', 'aws', '--bucket', bucket,
    '--prefix', 'warms', '--endpoint', fleet.fauxqs.endpoint, '--sidecar-token-file', fleet.tokenFile, '--chunk-size', '64KiB',
    '--json', '--force', '--job-id', jobId, ...more,
  ];
  const objects = async (bucket: string): Promise<string[]> =>
    ((await fleet.aws.s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: 'warms/' }))).Contents ?? []).map((o) => o.Key ?? '');

  /** The S3/SQS service restarted empty on the same address; the operator makes the bucket again. */
  async function loseState(bucket: string): Promise<void> {
    const port = Number(new URL(fleet.fauxqs.endpoint).port);
    await fauxqs.stop();
    fauxqs = await startFauxqs({ port });
    await createBucket(fleet.aws.s3, bucket);
  }

  const flushTarget = (): Promise<void> => flushReplica(fleet.topology, 'b');

  for (const when of ['after every dump finished', 'while the dumps run'] as const) {
    test(`lost ${when}: the rerun dumps again from the store's state, not the sidecars' memory, and completes exactly`, async () => {
      await flushTarget();
      const items = sampleItems({ count: 8_000, valueBytes: 200, nowSeconds: nowSeconds(), seed: `lost-${when}` });
      await load(fleet.topology, 'a', items);
      const bucket = await createBucket(fleet.aws.s3, when === 'while the dumps run' ? 'lost-while' : 'lost-after');
      const jobId = `lost-${bucket}`;
      const sourceNodes = fleet.topology.replicas.get('a')?.nodes ?? [];
      const endMarkers = sourceNodes.map((n) => `warms/${endMarkerName(jobId, n.id)}`);

      // No populators: the queue is not drained, so the job waits with its dumps done.
      const first = startCli(args(bucket, jobId, '--populators', '0', ...(when === 'while the dumps run' ? ['--max-ops', '1000'] : [])));
      if (when === 'after every dump finished') {
        await waitFor(async () => (await objects(bucket)).filter((k) => endMarkers.includes(k)).length === endMarkers.length, {
          what: 'both end markers',
          timeoutMs: 60_000,
        });
      } else {
        await waitFor(async () => (await objects(bucket)).some((k) => /\/data-[^/]+\.chunk$/.test(k)), { what: 'a first data chunk', timeoutMs: 60_000 });
      }
      first.kill('SIGKILL');
      await within(first.exited, { what: 'the first run to die' });
      await loseState(bucket);

      const rerun = startCli(args(bucket, jobId, '--populators', '1'));
      const code = await within(rerun.exited, { what: 'the rerun', timeoutMs: 120_000 });
      assert.equal(code, 0, `${rerun.stdout()}\n${JSON.stringify(rerun.lines.slice(-15))}`);
      const summary = JSON.parse(rerun.stdout()) as { complete: boolean; targetNodes: { stored: number; existed: number }[] };
      assert.equal(summary.complete, true);
      await assertExactCopy({ topology: fleet.topology, replica: 'b' }, items);
    });
  }
});

describe('two replicas filled from one dump through sidecars, S3 and SQS', () => {
  let fleet: Fleet;

  before(async () => {
    fleet = await startFleet({ a: 2, c: 2, d: 1 });
  });

  after(() => fleet?.stop());

  test('the sidecars dump the source once, each target is its own job and exact copy, and only the jobs\' records are left', async () => {
    const { aws, fauxqs, topology, topologyFile, tokenFile, cluster } = fleet;
    const items = sampleItems({ count: 20_000, valueBytes: 150, nowSeconds: nowSeconds(), seed: 'two-targets' });
    await load(topology, 'a', items);
    const bucket = await createBucket(aws.s3, 'warm-two-targets');
    const hits = async (): Promise<number> => (await Promise.all((cluster.servers['a'] ?? []).map(serverCounters))).reduce((sum, c) => sum + c.getHits, 0);
    const hitsBefore = await hits();

    const controller = startCli([
      'warm', 'replica', '--topology', topologyFile, '--target', 'c,d', '--source', 'a', '--job-id', 'two', '--transport', 'aws', '--bucket', bucket,
      '--prefix', 'warms', '--endpoint', fauxqs.endpoint, '--sidecar-token-file', tokenFile, '--chunk-size', '64KiB', '--json', '--populators', '1',
    ]);
    const code = await within(controller.exited, { what: 'the controller to finish', timeoutMs: 180_000 });

    assert.equal(code, 0, JSON.stringify(controller.lines.slice(-20)));
    type Outcome = { target: string; summary?: { jobId: string; complete: boolean; verification?: { checked: number }; targetNodes: { reconcileChecked: number }[] } };
    const group = JSON.parse(controller.stdout()) as { complete: boolean; completed: string[]; outcomes: Outcome[] };
    assert.deepEqual({ complete: group.complete, completed: group.completed }, { complete: true, completed: ['c', 'd'] });
    const readBackReads = group.outcomes.reduce((sum, o) => sum + (o.summary?.verification?.checked ?? 0), 0);
    const lookups = group.outcomes.reduce((sum, o) => sum + (o.summary?.targetNodes ?? []).reduce((s, n) => s + n.reconcileChecked, 0), 0);
    assert.equal(lookups, 2 * items.length, "each target's delete reconcile looked up at the source what it wrote");
    assert.equal((await hits()) - hitsBefore, items.length + readBackReads + lookups, 'each item read once by the dump (and the read-backs\' samples and the lookups once each)');
    await assertExactCopy({ topology, replica: 'c' }, items);
    await assertExactCopy({ topology, replica: 'd' }, items);

    const { QueueUrls = [] } = await aws.sqs.send(new ListQueuesCommand({ QueueNamePrefix: 'cachewarm-' }));
    assert.deepEqual(QueueUrls.filter((url) => url.includes('two')), [], 'both jobs removed their queues');
    const { Contents = [] } = await aws.s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: 'warms/' }));
    assert.deepEqual(
      Contents.map((o) => o.Key).sort(),
      ['warms/two.c/manifest.json', 'warms/two.c/summary.json', 'warms/two.d/manifest.json', 'warms/two.d/summary.json'],
      "the shared dump's chunks are removed once both targets hold them",
    );
  });
});
