import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { DeleteQueueCommand, GetQueueAttributesCommand, ReceiveMessageCommand, SQSClient, SendMessageCommand } from '@aws-sdk/client-sqs';
import { targetRingOf } from '../controller/warm-plan.js';
import { connectDirect } from '../shared/memcached/connect.js';
import { MetaNodeWriter } from '../populator/meta-node-writer.js';
import { runPopulator } from '../populator/populate.js';
import { ChunkBuilder, chunkHeader } from '../shared/chunk-format.js';
import type { ChunkMessage } from '../shared/chunk-message.js';
import type { Delivery } from '../shared/chunk-queue.js';
import { type Clock, systemClock } from '../shared/clock.js';
import { WriteTally } from '../shared/counters.js';
import { CachewarmError } from '../shared/errors.js';
import { REASON_ATTRIBUTE, SqsQueue, type SqsQueueOptions, isQueueGone } from '../shared/queue/sqs-queue.js';
import { sampleItems } from '../shared/sample-items.js';
import { S3Store } from '../shared/store/s3-store.js';
import { nowSeconds, readFrom, startCluster } from './support/cluster.js';
import { FakeClock } from './support/fake-clock.js';
import { type AwsClients, type Fauxqs, awsClients, createBucket, createQueue, startFauxqs } from './support/fauxqs.js';
import { waitFor, within } from './support/wait.js';

function chunkMessage(name: string): ChunkMessage {
  return {
    version: 2,
    jobId: 'job-1',
    source: 'a/10.0.0.1:11211',
    chunk: { name, bytes: 100, items: 3, crc32: 12345 },
    target: { replica: 'b', hashing: 'spymemcached', nodes: [{ address: '10.0.1.1:11211', ringName: '10.0.1.1:11211' }] },
  };
}

/** One SQS call as the client made it: the command, its input, when (by the given clock), and its answer once there. */
interface Call {
  readonly command: string;
  readonly input: Record<string, any>;
  readonly at: number;
  output?: Record<string, any>;
  settled: boolean;
}

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

  /**
   * An SQS client whose every call is recorded (see Call), `at` read from `clock`: the tests
   * assert what the queue sent, not how many calls fit in some stretch of time.
   */
  function observedSqs(clock: Clock = systemClock): { sqs: SQSClient; calls: Call[]; settled: (command: string) => Call[]; destroy(): void } {
    const clients = awsClients(fauxqs.endpoint);
    const calls: Call[] = [];
    clients.sqs.middlewareStack.add(
      (next, context) => async (args) => {
        const call: Call = { command: context.commandName ?? '?', input: args.input as Record<string, any>, at: clock.now(), settled: false };
        calls.push(call);
        try {
          const out = await next(args);
          call.output = out.output as Record<string, any>;
          return out;
        } finally {
          call.settled = true;
        }
      },
      { step: 'initialize', name: 'recordCalls' },
    );
    return {
      sqs: clients.sqs,
      calls,
      settled: (command) => calls.filter((c) => c.command === command && c.settled),
      destroy: () => clients.destroy(),
    };
  }

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
    const observed = observedSqs();
    try {
      const { make } = await fresh({ client: observed.sqs });
      assert.equal(await make({ stopWhenEmpty: true }).receive(), undefined);
      const receives = observed.calls.filter((c) => c.command === 'ReceiveMessageCommand');
      assert.equal(receives.length, 1, 'one receive');
      assert.equal(receives[0]?.input['WaitTimeSeconds'], 1, 'a long poll, waited out by SQS');
      assert.deepEqual(receives[0]?.output?.['Messages'] ?? [], [], 'that came back empty');
    } finally {
      observed.destroy();
    }
  });

  test('without stopWhenEmpty, receive keeps polling across empty long polls until a message comes', async () => {
    const observed = observedSqs();
    try {
      const { queue } = await fresh({ client: observed.sqs });
      const pending = queue.receive(AbortSignal.timeout(60_000)).then(track);
      const emptyPolls = () => observed.settled('ReceiveMessageCommand').filter((c) => !c.output?.['Messages']?.length).length;
      await waitFor(() => emptyPolls() >= 2, { what: 'two empty long polls', detail: () => observed.calls.map((c) => c.command) });
      await queue.send(chunkMessage('late'));
      const delivery = await within(pending, { what: 'the message sent after two empty polls' });
      assert.equal(delivery?.message.chunk.name, 'late');
      await delivery?.ack();
    } finally {
      observed.destroy();
    }
  });

  test('a retried message is delivered again, with receiveCount 2; its renewals stop with the retry', async () => {
    const clock = new FakeClock();
    const observed = observedSqs(clock);
    try {
      const { queue, queueUrl } = await fresh({ client: observed.sqs, clock });
      await queue.send(chunkMessage('flaky'));
      const first = await receiveOne(queue);
      assert.equal(clock.pendingSleeps, 1, 'the renewal waits for its time');
      await first.retry('target node down');
      assert.equal(clock.pendingSleeps, 0, 'the retry ended the renewals');
      // Renewal periods pass: a renewal still running after the retry would hide it again.
      await clock.advance(10_000);
      assert.deepEqual(
        observed.calls.filter((c) => c.command === 'ChangeMessageVisibilityCommand').map((c) => c.input['VisibilityTimeout']),
        [0],
        'only the retry itself changed the visibility: back to visible at once',
      );
      const second = await receiveOne(queue);
      assert.equal(second.message.chunk.name, 'flaky');
      assert.equal(second.receiveCount, 2);
      await second.ack();
      assert.deepEqual(await depth(queueUrl), { visible: 0, held: 0 });
    } finally {
      observed.destroy();
    }
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
    const again = track(await queue.receive(AbortSignal.timeout(30_000)));
    assert.equal(again?.message.chunk.name, 'unrenewed');
    assert.equal(again?.receiveCount, 2);
    await again?.ack();
  });

  test('a delivery held longer than the visibility timeout is not redelivered to a second receiver while it is renewed', async () => {
    // The renewals run on a FakeClock the test moves, so each one is sent when the test says
    // (well inside the 2 s timeout), however loaded the machine; SQS's own timeout is real.
    const clock = new FakeClock();
    const observed = observedSqs(clock);
    try {
      const { queue, make, queueUrl } = await fresh({ client: observed.sqs, clock });
      await queue.send(chunkMessage('long'));
      const held = await receiveOne(queue); // visibility 2 s, renewed every 1 s of the clock
      const heldAt = Date.now();
      const stop = new AbortController();
      const reason = new Error('the test is over');
      // (Were it redelivered, the second receiver's delivery is tracked, to be settled after the test.)
      const second = make({ client: aws.sqs, clock: systemClock }).receive(stop.signal).then(track);
      second.catch(() => undefined);
      let renewed = 0;
      while (Date.now() - heldAt < 3 * 2_000) {
        await clock.advance(1_000);
        renewed++;
        await waitFor(() => observed.settled('ChangeMessageVisibilityCommand').length === renewed && clock.pendingSleeps === 1, {
          timeoutMs: 10_000,
          what: `renewal ${renewed} sent and answered`,
        });
        await delay(250);
      }
      assert.ok(renewed >= 3);
      assert.deepEqual(await depth(queueUrl), { visible: 0, held: 1 }, 'still held, past three visibility timeouts');
      stop.abort(reason);
      await assert.rejects(within(second, { what: 'the second receiver to stop' }), (error: unknown) => error === reason, 'the second receiver got nothing');
      await held.ack();
      assert.deepEqual(await depth(queueUrl), { visible: 0, held: 0 });
    } finally {
      observed.destroy();
    }
  });

  test('renews visibility every half timeout while held, and stops once settled', async () => {
    const clock = new FakeClock();
    const observed = observedSqs(clock);
    const renewals = () => observed.settled('ChangeMessageVisibilityCommand');
    try {
      const { queueUrl } = await fresh();
      const queue = new SqsQueue({ client: observed.sqs, queueUrl, waitTimeSeconds: 1, visibilityTimeoutSeconds: 2, clock });
      await queue.send(chunkMessage('renewed'));
      const delivery = await receiveOne(queue);
      const heldAt = clock.now();
      const handle = observed.settled('ReceiveMessageCommand').find((c) => c.output?.['Messages']?.length)?.output?.['Messages'][0].ReceiptHandle;
      assert.ok(handle);

      await clock.advance(999);
      assert.equal(observed.calls.filter((c) => c.command === 'ChangeMessageVisibilityCommand').length, 0, 'nothing before half the timeout');
      await clock.advance(1);
      await waitFor(() => renewals().length === 1 && clock.pendingSleeps === 1, { what: 'the first renewal' });
      await clock.advance(1_000);
      await waitFor(() => renewals().length === 2 && clock.pendingSleeps === 1, { what: 'the second renewal' });
      assert.deepEqual(
        renewals().map((c) => ({ at: c.at - heldAt, handle: c.input['ReceiptHandle'], timeout: c.input['VisibilityTimeout'] })),
        [
          { at: 1_000, handle, timeout: 2 },
          { at: 2_000, handle, timeout: 2 },
        ],
        'every half timeout, for the whole timeout again',
      );

      await delivery.ack();
      assert.equal(clock.pendingSleeps, 0, 'the ack ended the renewals');
      await clock.advance(60_000);
      assert.equal(observed.calls.filter((c) => c.command === 'ChangeMessageVisibilityCommand').length, 2, 'no renewal after the ack');
      assert.deepEqual(await depth(queueUrl), { visible: 0, held: 0 });
    } finally {
      observed.destroy();
    }
  });

  test('a pending receive rejects promptly with the reason when its signal aborts', async () => {
    const observed = observedSqs();
    try {
      const { make } = await fresh({ client: observed.sqs });
      const queue = make({ waitTimeSeconds: 20 });
      const controller = new AbortController();
      const reason = new CachewarmError('ABORTED', 'job stopped');
      const pending = queue.receive(controller.signal);
      pending.catch(() => undefined);
      await waitFor(() => observed.calls.some((c) => c.command === 'ReceiveMessageCommand'), { what: 'the 20 s long poll to be sent' });
      controller.abort(reason);
      // Well short of the 20 s the long poll would take.
      await assert.rejects(within(pending, { timeoutMs: 10_000, what: 'the receive to end on the abort' }), (error: unknown) => error === reason);
    } finally {
      observed.destroy();
    }
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

  test('ackAll deletes held deliveries together, one DeleteMessageBatch per 10, keeping each hidden until then; each is settled', async () => {
    const observed = observedSqs();
    try {
      const { queue, queueUrl } = await fresh({ client: observed.sqs });
      for (let i = 0; i < 12; i++) await queue.send(chunkMessage(`job-1/a/data-${i}.chunk`));
      const held: Delivery[] = [];
      for (let i = 0; i < 12; i++) held.push(await receiveOne(queue));
      // Past the 2 s visibility timeout: still hidden, renewed while they wait for ackAll.
      const renewals = observed.settled('ChangeMessageVisibilityCommand').length;
      await waitFor(() => observed.settled('ChangeMessageVisibilityCommand').length >= renewals + 12 * 2, { what: 'two renewals of each held message' });
      assert.deepEqual(await depth(queueUrl), { visible: 0, held: 12 });

      await queue.ackAll(held);
      assert.deepEqual(observed.settled('DeleteMessageBatchCommand').map((call) => call.input['Entries'].length), [10, 2]);
      assert.deepEqual(observed.settled('DeleteMessageCommand'), [], 'no message deleted one by one');
      assert.deepEqual(await depth(queueUrl), { visible: 0, held: 0 });
      await assert.rejects(held[0]!.ack(), /settled twice/);
    } finally {
      observed.destroy();
    }
  });

  test('a queue deleted under its receiver: the failure names the queue and says it is gone (isQueueGone)', async () => {
    const { queue, queueUrl } = await fresh();
    await aws.sqs.send(new DeleteQueueCommand({ QueueUrl: queueUrl }));
    await assert.rejects(queue.receive(AbortSignal.timeout(10_000)), (error: unknown) => {
      assert.ok(error instanceof CachewarmError);
      assert.equal(error.code, 'TRANSPORT_FAILED');
      assert.match(error.message, new RegExp(`SQS ReceiveMessage on ${queueUrl} failed: QueueDoesNotExist`));
      assert.equal(isQueueGone(error), true);
      return true;
    });
    assert.equal(isQueueGone(new CachewarmError('TRANSPORT_FAILED', 'SQS ReceiveMessage failed: ServiceUnavailable', { awsError: 'ServiceUnavailable' })), false);
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
