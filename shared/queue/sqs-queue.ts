import {
  ChangeMessageVisibilityCommand,
  DeleteMessageBatchCommand,
  DeleteMessageCommand,
  type Message,
  ReceiveMessageCommand,
  SendMessageCommand,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import { awsErrorName } from '../aws-errors.js';
import { type ChunkMessage, parseChunkMessage } from '../chunk-message.js';
import type { ChunkQueue, Delivery } from '../chunk-queue.js';
import type { Clock } from '../clock.js';
import { CachewarmError, abortReason, isCachewarmError } from '../errors.js';

/** The message attribute a parked or malformed message carries its reason in, on the dead-letter queue. */
export const REASON_ATTRIBUTE = 'CachewarmReason';
/** The id the message had on the main queue, also on the dead-letter copy. */
export const SOURCE_MESSAGE_ID_ATTRIBUTE = 'CachewarmSourceMessageId';

/** SQS allows 256 KiB for a whole message; a reason is kept well inside that. */
const MAX_REASON_CHARS = 4096;
/** SQS's limit of entries in one DeleteMessageBatch. */
const MAX_BATCH_ENTRIES = 10;

export interface SqsQueueOptions {
  /** Built once by the caller (region, credentials, endpoint), shared by every call. */
  readonly client: SQSClient;
  readonly queueUrl: string;
  /** Where parked and malformed messages go, with the reason. Without it, park throws. */
  readonly deadLetterQueueUrl?: string | undefined;
  /** Long-poll wait of one ReceiveMessage, 0 to 20 s. Default 20. */
  readonly waitTimeSeconds?: number | undefined;
  /** How long a received message stays hidden from other receivers; renewed while held. Default 60. */
  readonly visibilityTimeoutSeconds?: number | undefined;
  /**
   * Deliveries of one message before `retry` parks it (with the retry's reason) instead, as
   * MemoryQueue does; needs the dead-letter queue. Absent: retry always returns the message,
   * and only the queue's own RedrivePolicy (if any) ends its retries.
   */
  readonly maxReceives?: number | undefined;
  /** receive returns undefined after one empty long poll (a drain that ends when the queue is empty). */
  readonly stopWhenEmpty?: boolean | undefined;
  /** Told of each malformed message taken off the queue (it is on the dead-letter queue if there is one). */
  readonly onMalformed?: ((reason: string, messageId: string | undefined) => void) | undefined;
  readonly clock: Clock;
}

/**
 * Chunk messages over SQS: the fleet-scale queue, at-least-once. A received message is hidden
 * from other populators for the visibility timeout, and the timeout is renewed while the
 * delivery is held, so a long chunk is not handed to a second populator mid-write; one whose
 * holder crashed comes back once the timeout runs out.
 *
 * SQS has no capacity, so send never waits for room.
 */
export class SqsQueue implements ChunkQueue {
  readonly queueUrl: string;
  readonly deadLetterQueueUrl: string | undefined;
  private readonly client: SQSClient;
  private readonly waitTimeSeconds: number;
  private readonly visibilityTimeoutSeconds: number;
  private readonly stopWhenEmpty: boolean;
  private readonly maxReceives: number | undefined;
  private readonly onMalformed: SqsQueueOptions['onMalformed'];
  private readonly clock: Clock;
  /** Settles a delivery of this queue as an ack would, for ackAll, returning its receipt handle. */
  private readonly releasers = new WeakMap<Delivery, () => string>();

  constructor(options: SqsQueueOptions) {
    this.client = options.client;
    this.queueUrl = options.queueUrl;
    this.deadLetterQueueUrl = options.deadLetterQueueUrl;
    this.waitTimeSeconds = options.waitTimeSeconds ?? 20;
    this.visibilityTimeoutSeconds = options.visibilityTimeoutSeconds ?? 60;
    this.stopWhenEmpty = options.stopWhenEmpty ?? false;
    this.maxReceives = options.maxReceives;
    if (this.maxReceives !== undefined && !this.deadLetterQueueUrl) {
      throw new CachewarmError('INVALID_ARGUMENT', `maxReceives needs a dead-letter queue to park messages in (queue ${this.queueUrl})`);
    }
    this.onMalformed = options.onMalformed;
    this.clock = options.clock;
    if (!Number.isInteger(this.waitTimeSeconds) || this.waitTimeSeconds < 0 || this.waitTimeSeconds > 20) {
      throw new CachewarmError('INVALID_ARGUMENT', `SQS wait time must be 0 to 20 whole seconds, got ${this.waitTimeSeconds}`);
    }
    if (!Number.isInteger(this.visibilityTimeoutSeconds) || this.visibilityTimeoutSeconds < 2 || this.visibilityTimeoutSeconds > 43_200) {
      throw new CachewarmError(
        'INVALID_ARGUMENT',
        `SQS visibility timeout must be 2 to 43200 whole seconds, got ${this.visibilityTimeoutSeconds}`,
      );
    }
  }

  async send(message: ChunkMessage, signal?: AbortSignal): Promise<void> {
    await this.call('SendMessage', this.queueUrl, signal, () =>
      this.client.send(new SendMessageCommand({ QueueUrl: this.queueUrl, MessageBody: JSON.stringify(message) }), {
        abortSignal: signal,
      }),
    );
  }

  async receive(signal?: AbortSignal): Promise<Delivery | undefined> {
    for (;;) {
      if (signal?.aborted) throw abortReason(signal);
      const out = await this.call('ReceiveMessage', this.queueUrl, signal, () =>
        this.client.send(
          new ReceiveMessageCommand({
            QueueUrl: this.queueUrl,
            MaxNumberOfMessages: 1,
            WaitTimeSeconds: this.waitTimeSeconds,
            VisibilityTimeout: this.visibilityTimeoutSeconds,
            MessageSystemAttributeNames: ['ApproximateReceiveCount'],
          }),
          { abortSignal: signal },
        ),
      );
      const received = out.Messages?.[0];
      if (!received) {
        if (this.stopWhenEmpty) return undefined;
        continue;
      }
      const receiptHandle = received.ReceiptHandle;
      if (!receiptHandle) throw this.failure('ReceiveMessage', this.queueUrl, new Error('a message came without a receipt handle'));
      const where = `${this.queueUrl}#${received.MessageId ?? '?'}`;
      let message: ChunkMessage;
      try {
        message = parseChunkMessage(received.Body ?? '', where);
      } catch (error) {
        if (!isCachewarmError(error, 'MESSAGE_MALFORMED')) throw error;
        // It can never succeed: set it aside (if there is somewhere to) and go on to the next.
        if (this.deadLetterQueueUrl) await this.deadLetter(received, error.message, signal);
        await this.deleteMessage(receiptHandle, signal);
        this.onMalformed?.(error.message, received.MessageId);
        continue;
      }
      return this.deliveryOf(received, receiptHandle, message);
    }
  }

  private deliveryOf(received: Message, receiptHandle: string, message: ChunkMessage): Delivery {
    const count = Number(received.Attributes?.ApproximateReceiveCount);
    const extending = new AbortController();
    void this.keepHidden(receiptHandle, extending.signal);
    let settled = false;
    const markSettled = (operation: string): void => {
      if (settled) throw new Error(`a delivery was settled twice (${operation} after it was settled)`);
      settled = true;
      extending.abort();
    };
    const settle = async (operation: string, action: () => Promise<void>): Promise<void> => {
      markSettled(operation);
      await action();
    };
    const receiveCount = Number.isSafeInteger(count) && count > 0 ? count : 1;
    const parkNow = async (reason: string): Promise<void> => {
      await this.deadLetter(received, reason);
      await this.deleteMessage(receiptHandle);
    };
    const delivery: Delivery = {
      message,
      receiveCount,
      ack: () => settle('ack', () => this.deleteMessage(receiptHandle)),
      retry: (reason) =>
        settle('retry', async () => {
          if (this.maxReceives !== undefined && receiveCount >= this.maxReceives) {
            await parkNow(reason);
            return;
          }
          await this.call('ChangeMessageVisibility', this.queueUrl, undefined, () =>
            this.client.send(
              new ChangeMessageVisibilityCommand({ QueueUrl: this.queueUrl, ReceiptHandle: receiptHandle, VisibilityTimeout: 0 }),
            ),
          );
        }),
      park: (reason) => {
        if (!this.deadLetterQueueUrl) {
          // Not settled: the caller may still retry or ack it.
          return Promise.reject(new CachewarmError(
            'INVALID_ARGUMENT',
            `cannot park message ${received.MessageId ?? '?'} (chunk ${message.chunk.name}): queue ${this.queueUrl} has no dead-letter queue configured`,
            { queue: this.queueUrl, chunk: message.chunk.name },
          ));
        }
        return settle('park', () => parkNow(reason));
      },
    };
    this.releasers.set(delivery, () => {
      markSettled('ackAll');
      return receiptHandle;
    });
    return delivery;
  }

  /**
   * Acknowledges deliveries of this queue together, with one DeleteMessageBatch per 10 rather
   * than a DeleteMessage each: for a holder that acknowledges only once something else is
   * done (a report written). Until this is called each message stays hidden, its visibility
   * renewed as while it was held. A message that could not be deleted is named in the error;
   * it is delivered again once its visibility timeout runs out.
   */
  async ackAll(deliveries: readonly Delivery[], signal?: AbortSignal): Promise<void> {
    const handles = deliveries.map((delivery) => {
      const release = this.releasers.get(delivery);
      if (!release) throw new Error(`ackAll on ${this.queueUrl}: the delivery of ${delivery.message.chunk.name} was not received from this queue`);
      return release();
    });
    const failed: string[] = [];
    for (let at = 0; at < handles.length; at += MAX_BATCH_ENTRIES) {
      const entries = handles.slice(at, at + MAX_BATCH_ENTRIES).map((handle, i) => ({ Id: String(at + i), ReceiptHandle: handle }));
      const out = await this.call('DeleteMessageBatch', this.queueUrl, signal, () =>
        this.client.send(new DeleteMessageBatchCommand({ QueueUrl: this.queueUrl, Entries: entries }), { abortSignal: signal }),
      );
      for (const entry of out.Failed ?? []) {
        failed.push(`${deliveries[Number(entry.Id)]?.message.chunk.name ?? entry.Id}: ${entry.Code ?? 'error'} ${entry.Message ?? ''}`.trim());
      }
    }
    if (failed.length > 0) {
      throw new CachewarmError(
        'TRANSPORT_FAILED',
        `SQS DeleteMessageBatch on ${this.queueUrl}: ${failed.length} of ${handles.length} messages not deleted (delivered again later): ${failed.join('; ')}`,
        { queue: this.queueUrl, operation: 'DeleteMessageBatch' },
      );
    }
  }

  /** Renews the visibility timeout every half timeout until `stop` aborts. A failed renewal is tried again next time. */
  private async keepHidden(receiptHandle: string, stop: AbortSignal): Promise<void> {
    const everyMs = (this.visibilityTimeoutSeconds * 1000) / 2;
    for (;;) {
      try {
        await this.clock.sleep(everyMs, stop);
      } catch {
        return;
      }
      if (stop.aborted) return;
      try {
        await this.client.send(
          new ChangeMessageVisibilityCommand({
            QueueUrl: this.queueUrl,
            ReceiptHandle: receiptHandle,
            VisibilityTimeout: this.visibilityTimeoutSeconds,
          }),
          { abortSignal: stop },
        );
      } catch {
        // Settled meanwhile, or SQS unreachable: at worst the message is delivered again,
        // which at-least-once with add-only writes allows.
      }
    }
  }

  private async deadLetter(received: Message, reason: string, signal?: AbortSignal): Promise<void> {
    const dlq = this.deadLetterQueueUrl as string;
    const attributes: Record<string, { DataType: string; StringValue: string }> = {
      [REASON_ATTRIBUTE]: { DataType: 'String', StringValue: truncate(reason || 'no reason given') },
    };
    if (received.MessageId) attributes[SOURCE_MESSAGE_ID_ATTRIBUTE] = { DataType: 'String', StringValue: received.MessageId };
    await this.call('SendMessage', dlq, signal, () =>
      this.client.send(
        new SendMessageCommand({ QueueUrl: dlq, MessageBody: received.Body || '(empty body)', MessageAttributes: attributes }),
        { abortSignal: signal },
      ),
    );
  }

  private async deleteMessage(receiptHandle: string, signal?: AbortSignal): Promise<void> {
    await this.call('DeleteMessage', this.queueUrl, signal, () =>
      this.client.send(new DeleteMessageCommand({ QueueUrl: this.queueUrl, ReceiptHandle: receiptHandle }), { abortSignal: signal }),
    );
  }

  private async call<T>(operation: string, queueUrl: string, signal: AbortSignal | undefined, send: () => Promise<T>): Promise<T> {
    try {
      return await send();
    } catch (error) {
      if (signal?.aborted) throw abortReason(signal);
      throw this.failure(operation, queueUrl, error);
    }
  }

  private failure(operation: string, queueUrl: string, error: unknown): CachewarmError {
    return sqsFailure(operation, queueUrl, error);
  }
}

/**
 * Every SQS failure becomes a CachewarmError here, naming the operation, the queue and the
 * AWS error (shared with the job-queue helpers, so all SQS errors read alike).
 */
export function sqsFailure(operation: string, queueUrl: string, error: unknown): CachewarmError {
  if (error instanceof CachewarmError) return error;
  const awsName = awsErrorName(error);
  const status = (error as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode;
  const detail = error instanceof Error ? error.message : String(error);
  return new CachewarmError(
    'TRANSPORT_FAILED',
    `SQS ${operation} on ${queueUrl} failed: ${awsName ?? 'error'}${status ? ` (HTTP ${status})` : ''}: ${detail}`,
    { queue: queueUrl, operation, awsError: awsName, httpStatus: status },
    { cause: error },
  );
}

const MISSING_QUEUE_ERRORS: ReadonlySet<string> = new Set(['QueueDoesNotExist', 'AWS.SimpleQueueService.NonExistentQueue']);

/** Whether an SQS failure (the SDK's error, or the CachewarmError sqsFailure made of it) says the queue does not exist. */
export function isQueueGone(error: unknown): boolean {
  const name = error instanceof CachewarmError ? error.context['awsError'] : awsErrorName(error);
  return typeof name === 'string' && MISSING_QUEUE_ERRORS.has(name);
}

function truncate(text: string): string {
  return text.length <= MAX_REASON_CHARS ? text : `${text.slice(0, MAX_REASON_CHARS - 1)}…`;
}
