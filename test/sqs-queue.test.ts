import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { GetQueueAttributesCommand, ReceiveMessageCommand, SendMessageCommand } from '@aws-sdk/client-sqs';
import { targetRingOf } from '../controller/warm-plan.js';
import { connectDirect } from '../shared/memcached/connect.js';
import { MetaNodeWriter } from '../populator/meta-node-writer.js';
import { runPopulator } from '../populator/populate.js';
import { ChunkBuilder, chunkHeader } from '../shared/chunk-format.js';
import type { ChunkMessage } from '../shared/chunk-message.js';
import type { Delivery } from '../shared/chunk-queue.js';
import { systemClock } from '../shared/clock.js';
import { WriteTally } from '../shared/counters.js';
import { CachewarmError } from '../shared/errors.js';
import { REASON_ATTRIBUTE, SqsQueue, type SqsQueueOptions } from '../shared/queue/sqs-queue.js';
import { sampleItems } from '../shared/sample-items.js';
import { S3Store } from '../shared/store/s3-store.js';
import { nowSeconds, readFrom, startCluster } from './support/cluster.js';
import { type AwsClients, type Fauxqs, awsClients, createBucket, createQueue, startFauxqs } from './support/fauxqs.js';

function chunkMessage(name: string): ChunkMessage {
  return {
    version: 2,
    jobId: 'job-1',
    source: 'a/10.0.0.1:11211',
    chunk: { name, bytes: 100, items: 3, crc32: 12345 },
    target: { replica: 'b', hashing: 'spymemcached', nodes: [{ address: '10.0.1.1:11211', ringName: '10.0.1.1:11211' }] },
  };
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe('the SQS chunk queue (against fauxqs, through the real SQS client)', () => {
  let fauxqs: Fauxqs;
  let aws: AwsClients;
  let queues = 0;

  before(async () => {
    fauxqs = await startFauxqs();
    aws = awsClients(fauxqs.endpoint);
  });
  after(async () => {
    aws.destroy();
    await fauxqs.stop();
  });

  // A delivery left unsettled by a failed assertion would renew its visibility forever and
  // keep the test process alive: settle whatever a test left behind.
  const received: Delivery[] = [];
  function track<T extends Delivery | undefined>(delivery: T): T {
    if (delivery) received.push(delivery);
    return delivery;
  }
  afterEach(async () => {
    await Promise.allSettled(received.splice(0).map((d) => d.ack()));
  });

  /** A fresh main queue and dead-letter queue. */
  async function fresh(options: Partial<SqsQueueOptions> = {}) {
    const n = ++queues;
    const queueUrl = await createQueue(aws.sqs, `chunks-${n}`);
    const deadLetterQueueUrl = await createQueue(aws.sqs, `chunks-${n}-dlq`);
    const make = (more: Partial<SqsQueueOptions> = {}): SqsQueue =>
      new SqsQueue({
        client: aws.sqs,
        queueUrl,
        deadLetterQueueUrl,
        waitTimeSeconds: 1,
        visibilityTimeoutSeconds: 2,
        clock: systemClock,
        ...options,
        ...more,
      });
    return { queueUrl, deadLetterQueueUrl, queue: make(), make };
  }

  /** Messages on a queue, visible or held: what SQS itself counts. */
  async function depth(queueUrl: string): Promise<{ visible: number; held: number }> {
    const { Attributes = {} } = await aws.sqs.send(
      new GetQueueAttributesCommand({
        QueueUrl: queueUrl,
        AttributeNames: ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible'],
      }),
    );
    return { visible: Number(Attributes.ApproximateNumberOfMessages), held: Number(Attributes.ApproximateNumberOfMessagesNotVisible) };
  }

  /** Everything on a dead-letter queue: body and reason. */
  async function deadLetters(queueUrl: string): Promise<{ body: string; reason: string | undefined }[]> {
    const out = await aws.sqs.send(
      new ReceiveMessageCommand({ QueueUrl: queueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 0, MessageAttributeNames: ['All'] }),
    );
    return (out.Messages ?? []).map((m) => ({ body: m.Body ?? '', reason: m.MessageAttributes?.[REASON_ATTRIBUTE]?.StringValue }));
  }

  async function receiveOne(queue: SqsQueue): Promise<Delivery> {
    const delivery = track(await queue.receive(AbortSignal.timeout(10_000)));
    assert.ok(delivery, 'a message was delivered');
    return delivery;
  }

  test('sends a chunk message and receives it intact; after ack it is gone', async () => {
    const { queue, queueUrl } = await fresh();
    const sent = chunkMessage('job-1/a/data-000000.chunk');
    await queue.send(sent);
    assert.deepEqual(await depth(queueUrl), { visible: 1, held: 0 });

    const delivery = await receiveOne(queue);
    assert.deepEqual(delivery.message, { ...sent, target: { ...sent.target, writeOnly: undefined } });
    assert.equal(delivery.receiveCount, 1);
    assert.deepEqual(await depth(queueUrl), { visible: 0, held: 1 });

    await delivery.ack();
    assert.deepEqual(await depth(queueUrl), { visible: 0, held: 0 });
    await assert.rejects(delivery.ack(), /settled twice/);
  });

  test('with stopWhenEmpty, receive returns undefined after one empty long poll', async () => {
    const { make } = await fresh();
    const started = Date.now();
    assert.equal(await make({ stopWhenEmpty: true }).receive(), undefined);
    assert.ok(Date.now() - started >= 900, 'it waited out the long poll first');
  });

  test('without stopWhenEmpty, receive keeps polling across empty long polls until a message comes', async () => {
    const { queue } = await fresh();
    const pending = queue.receive(AbortSignal.timeout(10_000));
    await sleep(2_500); // two and a half 1 s long polls come back empty meanwhile
    await queue.send(chunkMessage('late'));
    const delivery = track(await pending);
    assert.equal(delivery?.message.chunk.name, 'late');
    await delivery?.ack();
  });

  test('a retried message is delivered again, with receiveCount 2', async () => {
    const { queue, queueUrl } = await fresh();
    await queue.send(chunkMessage('flaky'));
    const first = await receiveOne(queue);
    await first.retry('target node down');
    // Past one renewal period: a renewal still running after the retry would hide it again.
    await sleep(1_200);
    const second = await receiveOne(queue);
    assert.equal(second.message.chunk.name, 'flaky');
    assert.equal(second.receiveCount, 2);
    await second.ack();
    assert.deepEqual(await depth(queueUrl), { visible: 0, held: 0 });
  });

  test('with maxReceives, a retry of the last allowed delivery parks the message with the retry reason', async () => {
    const { queue, queueUrl, deadLetterQueueUrl } = await fresh({ maxReceives: 2 });
    await queue.send(chunkMessage('always-down'));
    const first = await receiveOne(queue);
    await first.retry('node 10.0.1.1:11211 down');
    assert.deepEqual(await deadLetters(deadLetterQueueUrl), [], 'the first retry returns it to the queue');
    const second = await receiveOne(queue);
    assert.equal(second.receiveCount, 2);
    await second.retry('node 10.0.1.1:11211 still down');

    assert.deepEqual(await depth(queueUrl), { visible: 0, held: 0 });
    const parked = await deadLetters(deadLetterQueueUrl);
    assert.deepEqual(
      parked.map((p) => [JSON.parse(p.body).chunk.name, p.reason]),
      [['always-down', 'node 10.0.1.1:11211 still down']],
    );
  });

  test('a parked message goes to the dead-letter queue with the reason, and leaves the main queue', async () => {
    const { queue, queueUrl, deadLetterQueueUrl } = await fresh();
    const sent = chunkMessage('corrupt');
    await queue.send(sent);
    const delivery = await receiveOne(queue);
    await delivery.park('chunk s3://b/corrupt: checksum mismatch');

    assert.deepEqual(await depth(queueUrl), { visible: 0, held: 0 });
    const parked = await deadLetters(deadLetterQueueUrl);
    assert.equal(parked.length, 1);
    assert.deepEqual(JSON.parse(parked[0]?.body ?? ''), sent, 'the original body, unchanged');
    assert.equal(parked[0]?.reason, 'chunk s3://b/corrupt: checksum mismatch');
  });

  test('park without a dead-letter queue fails clearly and leaves the delivery to be settled otherwise', async () => {
    const { make, queueUrl } = await fresh();
    const queue = make({ deadLetterQueueUrl: undefined });
    await queue.send(chunkMessage('nowhere'));
    const delivery = await receiveOne(queue);
    await assert.rejects(delivery.park('bad'), (error: unknown) => {
      assert.ok(error instanceof CachewarmError);
      assert.match(error.message, /cannot park message .* \(chunk nowhere\): queue .*chunks-\d+ has no dead-letter queue configured/);
      return true;
    });
    await delivery.ack();
    assert.deepEqual(await depth(queueUrl), { visible: 0, held: 0 });
  });

  test('a malformed body goes to the dead-letter queue with the reason, and receive returns the next good message', async () => {
    const malformed: string[] = [];
    const { queue, queueUrl, deadLetterQueueUrl } = await fresh({ onMalformed: (reason) => malformed.push(reason) });
    await aws.sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: '{oops' }));
    await aws.sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: JSON.stringify({ ...chunkMessage('x'), version: 9 }) }));
    await queue.send(chunkMessage('good'));

    const delivery = await receiveOne(queue);
    assert.equal(delivery.message.chunk.name, 'good');
    await delivery.ack();

    assert.deepEqual(await depth(queueUrl), { visible: 0, held: 0 }, 'the malformed messages left the main queue');
    const parked = await deadLetters(deadLetterQueueUrl);
    assert.deepEqual(
      parked.map((p) => p.body),
      ['{oops', JSON.stringify({ ...chunkMessage('x'), version: 9 })],
    );
    assert.match(parked[0]?.reason ?? '', /^message .*chunks-\d+#[\w-]+: not JSON/);
    assert.match(parked[1]?.reason ?? '', /version 9 is not supported/);
    assert.equal(malformed.length, 2);
  });

  test('(control) the emulator redelivers a message held past its visibility timeout when nobody renews it', async () => {
    const { queue, queueUrl } = await fresh();
    await queue.send(chunkMessage('unrenewed'));
    // Received by a bare client: nothing renews its visibility.
    const raw = await aws.sqs.send(new ReceiveMessageCommand({ QueueUrl: queueUrl, VisibilityTimeout: 2, WaitTimeSeconds: 1 }));
    assert.equal(raw.Messages?.length, 1);
    const again = track(await queue.receive(AbortSignal.timeout(5_000)));
    assert.equal(again?.message.chunk.name, 'unrenewed');
    assert.equal(again?.receiveCount, 2);
    await again?.ack();
  });

  test('a delivery held longer than the visibility timeout is not redelivered to a second receiver', async () => {
    const { queue, make, queueUrl } = await fresh();
    await queue.send(chunkMessage('long'));
    const held = await receiveOne(queue); // visibility 2 s, renewed every 1 s
    const other = make();
    const started = Date.now();
    // (Were it redelivered, the second receiver's delivery is tracked, to be settled after the test.)
    await assert.rejects(other.receive(AbortSignal.timeout(5_000)).then(track), (error: unknown) => {
      assert.equal((error as Error).name, 'TimeoutError', 'the second receiver got nothing for 5 s');
      return true;
    });
    assert.ok(Date.now() - started >= 4_900);
    assert.deepEqual(await depth(queueUrl), { visible: 0, held: 1 });
    await held.ack();
    assert.deepEqual(await depth(queueUrl), { visible: 0, held: 0 });
  });

  test('renews visibility every half timeout while held, and stops once settled', async () => {
    const observed = awsClients(fauxqs.endpoint);
    const renewals: number[] = [];
    observed.sqs.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === 'ChangeMessageVisibilityCommand') renewals.push(Date.now());
        return next(args);
      },
      { step: 'initialize', name: 'countRenewals' },
    );
    try {
      const { queueUrl } = await fresh();
      const queue = new SqsQueue({ client: observed.sqs, queueUrl, waitTimeSeconds: 1, visibilityTimeoutSeconds: 2, clock: systemClock });
      await queue.send(chunkMessage('renewed'));
      const delivery = await receiveOne(queue);
      const heldAt = Date.now();
      await sleep(2_600);
      assert.equal(renewals.length, 2, 'renewed at about 1 s and 2 s');
      assert.ok((renewals[0] as number) - heldAt >= 900);
      await delivery.ack();
      const atAck = renewals.length;
      await sleep(1_500);
      assert.equal(renewals.length, atAck, 'no renewal after the ack');
    } finally {
      observed.destroy();
    }
  });

  test('a pending receive rejects promptly with the reason when its signal aborts', async () => {
    const { make } = await fresh();
    const queue = make({ waitTimeSeconds: 20 });
    const controller = new AbortController();
    const reason = new CachewarmError('ABORTED', 'job stopped');
    const started = Date.now();
    setTimeout(() => controller.abort(reason), 200);
    await assert.rejects(queue.receive(controller.signal), (error: unknown) => error === reason);
    assert.ok(Date.now() - started < 2_000, 'it did not wait out the 20 s long poll');
  });

  test('an SQS failure is a CachewarmError naming the queue and the AWS error', async () => {
    const { queueUrl } = await fresh();
    const queue = new SqsQueue({ client: aws.sqs, queueUrl: `${queueUrl}-missing`, clock: systemClock });
    await assert.rejects(queue.send(chunkMessage('c')), (error: unknown) => {
      assert.ok(error instanceof CachewarmError);
      assert.match(error.message, /SQS SendMessage on .*chunks-\d+-missing failed: .*QueueDoesNotExist/);
      return true;
    });
  });

  test('the real populator runs unchanged over S3Store + SqsQueue: both chunks written, messages acked, chunks deleted', async () => {
    const cluster = await startCluster({ b: 2 });
    const bucket = await createBucket(aws.s3, 'populate');
    const store = new S3Store({ client: aws.s3, bucket, prefix: 'jobs' });
    const { make, queueUrl, deadLetterQueueUrl } = await fresh();
    const writer = new MetaNodeWriter({ connect: connectDirect, clock: systemClock });
    try {
      const target = targetRingOf(cluster.topology, 'b');
      const batches = [0, 1].map((i) => sampleItems({ count: 800, valueBytes: 200, nowSeconds: nowSeconds(), seed: `s3sqs-${i}` }));
      const producer = make();
      for (const [i, items] of batches.entries()) {
        const builder = new ChunkBuilder('data', 1 << 20);
        for (const item of items) builder.addData(item.key, item.value, item.flags, item.exptime);
        const chunk = builder.seal();
        const name = `job-1/a/data-00000${i}.chunk`;
        await store.put(name, chunk);
        const { items: count, crc32 } = chunkHeader(chunk);
        await producer.send({ version: 2, jobId: 'job-1', source: 'a/x', chunk: { name, bytes: chunk.length, items: count, crc32 }, target });
      }

      const tally = new WriteTally();
      const done: string[] = [];
      await runPopulator({
        queue: make({ stopWhenEmpty: true }),
        store,
        writer,
        clock: systemClock,
        tally,
        deleteConsumed: true,
        onChunkDone: (m) => done.push(m.chunk.name),
        signal: AbortSignal.timeout(20_000),
      });

      const all = batches.flat();
      assert.deepEqual(done.sort(), ['job-1/a/data-000000.chunk', 'job-1/a/data-000001.chunk']);
      assert.equal(tally.total().stored, all.length);
      let found = 0;
      for (const server of cluster.servers['b'] ?? []) {
        const back = await readFrom(server, all.map((i) => i.key));
        back.forEach((got, i) => {
          if (!got) return;
          found++;
          assert.ok(got.value.equals((all[i] as (typeof all)[number]).value), 'the value is byte-exact');
        });
      }
      assert.equal(found, all.length, 'every item is on the target replica');
      assert.deepEqual(await depth(queueUrl), { visible: 0, held: 0 }, 'every message was acked');
      assert.deepEqual(await deadLetters(deadLetterQueueUrl), []);
      assert.deepEqual(await store.list(''), [], 'consumed chunks were deleted');
    } finally {
      await writer.close();
      await cluster.stop();
    }
  });
});
