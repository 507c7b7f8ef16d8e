import { createHash } from 'node:crypto';
import {
  ChangeMessageVisibilityBatchCommand,
  CreateQueueCommand,
  DeleteMessageCommand,
  DeleteQueueCommand,
  GetQueueAttributesCommand,
  GetQueueUrlCommand,
  ListQueueTagsCommand,
  type Message,
  type QueueAttributeName,
  ReceiveMessageCommand,
  SendMessageCommand,
  type SQSClient,
  TagQueueCommand,
} from '@aws-sdk/client-sqs';
import { CachewarmError, abortReason } from './errors.js';
import { awsErrorName } from './aws-errors.js';
import { normalizePrefix } from './json-values.js';
import { REASON_ATTRIBUTE, SOURCE_MESSAGE_ID_ATTRIBUTE, isQueueGone, sqsFailure } from './queue/sqs-queue.js';

/**
 * A fleet job's two SQS queues: the job queue the dumpers announce chunks on and the
 * populators receive from, and its dead-letter queue (parked messages, with the reason).
 * The job queue carries tags that say which job it is and where its chunks are, so a
 * populator needs nothing but the queue URL.
 */

export const TAG_JOB = 'cachewarm-job';
export const TAG_BUCKET = 'cachewarm-bucket';
export const TAG_PREFIX = 'cachewarm-prefix';
export const TAG_DEAD_LETTER_QUEUE = 'cachewarm-dlq';
/** On the dead-letter queue only: says it is one, so it is not mistaken for a job queue. */
export const TAG_ROLE = 'cachewarm-role';

const NAME_PREFIX = 'cachewarm-';
const DLQ_SUFFIX = '-dlq';
/** SQS: at most 80 characters, letters, digits, `-` and `_`. */
const MAX_QUEUE_NAME_CHARS = 80;
/** SQS: a tag value is at most 256 characters. */
const MAX_TAG_VALUE_CHARS = 256;
/** 14 days, SQS's longest: a parked message outlives a long job and its post-mortem. */
const RETENTION_SECONDS = 1_209_600;
/** Long enough that one listing of a dead-letter queue does not see a message twice. */
const READING_VISIBILITY_SECONDS = 30;

export interface JobQueueSettings {
  readonly jobId: string;
  /** The bucket and key prefix the job's chunks are stored under. */
  readonly bucket: string;
  readonly prefix: string;
  /** Deliveries of one message before SQS moves it to the dead-letter queue. Default 5. */
  readonly maxReceives?: number | undefined;
  /** How long a received message stays hidden; populators renew it while they hold one. Default 60. */
  readonly visibilityTimeoutSeconds?: number | undefined;
}

export interface JobQueues {
  readonly queueUrl: string;
  readonly deadLetterQueueUrl: string;
}

/** What a job queue's tags and attributes say about its job. */
export interface JobQueueInfo extends JobQueues {
  readonly jobId: string;
  readonly bucket: string;
  /** Normalized: no `/` at either end, `''` for none. */
  readonly prefix: string;
  readonly visibilityTimeoutSeconds: number;
  /** The RedrivePolicy's maxReceiveCount; absent when the queue has none. */
  readonly maxReceives?: number | undefined;
}

export interface QueueBacklog {
  /** Waiting to be received. */
  readonly visible: number;
  /** Received and not yet deleted (held by a populator, or by one that crashed until its timeout runs out). */
  readonly inFlight: number;
  readonly delayed: number;
}

export interface ParkedEntry {
  /** The chunk the message named, when its body could be read as a chunk message. */
  readonly chunk?: string | undefined;
  /** The job the message was for (its `targetJobId`, else its `jobId`), when the body could be read. */
  readonly jobId?: string | undefined;
  readonly reason: string;
  readonly messageId?: string | undefined;
}


/**
 * `cachewarm-<job>` and `cachewarm-<job>-dlq`, valid SQS names for any job id: characters
 * SQS refuses become `-`, and a job id that had to be changed or shortened gets a hash of
 * the original, so two different job ids never share queues. The same job id always gives
 * the same names (a rerun finds its queues).
 */
export function jobQueueNames(jobId: string): { queue: string; deadLetterQueue: string } {
  if (!jobId) throw new CachewarmError('INVALID_ARGUMENT', 'a job queue needs a job id');
  const room = MAX_QUEUE_NAME_CHARS - NAME_PREFIX.length - DLQ_SUFFIX.length;
  const safe = jobId.replace(/[^A-Za-z0-9_-]/g, '-');
  let base = safe;
  if (safe !== jobId || safe.length > room) {
    const hash = createHash('sha256').update(jobId).digest('hex').slice(0, 8);
    base = `${safe.slice(0, room - hash.length - 1)}-${hash}`;
  }
  return { queue: `${NAME_PREFIX}${base}`, deadLetterQueue: `${NAME_PREFIX}${base}${DLQ_SUFFIX}` };
}

/**
 * Creates a job's dead-letter queue, then its job queue (redriving to the dead-letter queue
 * after `maxReceives` deliveries, tagged with the job, bucket, prefix and dead-letter queue).
 * Idempotent: a rerun with the same job id gets the same queues, as they are.
 */
export async function createJobQueues(sqs: SQSClient, settings: JobQueueSettings, signal?: AbortSignal): Promise<JobQueues> {
  const { jobId, bucket } = settings;
  const prefix = normalizePrefix(settings.prefix);
  const maxReceives = settings.maxReceives ?? 5;
  const visibilityTimeoutSeconds = settings.visibilityTimeoutSeconds ?? 60;
  checkSettings(settings, maxReceives, visibilityTimeoutSeconds);
  const names = jobQueueNames(jobId);

  const deadLetterQueueUrl = await createQueue(
    sqs,
    names.deadLetterQueue,
    { MessageRetentionPeriod: String(RETENTION_SECONDS) },
    { [TAG_JOB]: jobId, [TAG_ROLE]: 'dead-letter' },
    signal,
  );
  const deadLetterArn = (await attributes(sqs, deadLetterQueueUrl, ['QueueArn'], signal)).QueueArn;
  if (!deadLetterArn) throw sqsFailure('GetQueueAttributes', deadLetterQueueUrl, new Error('no QueueArn in the answer'));

  const tags = {
    [TAG_JOB]: jobId,
    [TAG_BUCKET]: bucket,
    // An empty tag value is not accepted everywhere; `/` normalizes back to no prefix.
    [TAG_PREFIX]: prefix || '/',
    [TAG_DEAD_LETTER_QUEUE]: deadLetterQueueUrl,
  };
  for (const [key, value] of Object.entries(tags)) {
    if (value.length > MAX_TAG_VALUE_CHARS) {
      throw new CachewarmError('INVALID_ARGUMENT', `${key} ${JSON.stringify(value)} is longer than the ${MAX_TAG_VALUE_CHARS} characters an SQS tag holds`);
    }
  }
  const queueUrl = await createQueue(
    sqs,
    names.queue,
    {
      RedrivePolicy: JSON.stringify({ deadLetterTargetArn: deadLetterArn, maxReceiveCount: maxReceives }),
      VisibilityTimeout: String(visibilityTimeoutSeconds),
      MessageRetentionPeriod: String(RETENTION_SECONDS),
    },
    tags,
    signal,
  );
  return { queueUrl, deadLetterQueueUrl };
}

function checkSettings(settings: JobQueueSettings, maxReceives: number, visibilityTimeoutSeconds: number): void {
  if (!settings.bucket) throw new CachewarmError('INVALID_ARGUMENT', `job ${settings.jobId}: a job queue needs the bucket its chunks are in`);
  // SQS's own range for a RedrivePolicy's maxReceiveCount.
  if (!Number.isInteger(maxReceives) || maxReceives < 1 || maxReceives > 1000) {
    throw new CachewarmError('INVALID_ARGUMENT', `maxReceives must be a whole number from 1 to 1000, got ${maxReceives}`);
  }
  // 2 s at least: populators renew a held message every half timeout.
  if (!Number.isInteger(visibilityTimeoutSeconds) || visibilityTimeoutSeconds < 2 || visibilityTimeoutSeconds > 43_200) {
    throw new CachewarmError('INVALID_ARGUMENT', `the visibility timeout must be 2 to 43200 whole seconds, got ${visibilityTimeoutSeconds}`);
  }
}

/**
 * CreateQueue, tolerating a queue of that name made earlier with other settings (a rerun
 * after the defaults changed): that queue is used as it is. Tags are set again either way,
 * since CreateQueue leaves an existing queue's tags alone.
 */
async function createQueue(
  sqs: SQSClient,
  name: string,
  queueAttributes: Partial<Record<QueueAttributeName, string>>,
  tags: Record<string, string>,
  signal: AbortSignal | undefined,
): Promise<string> {
  let url: string | undefined;
  try {
    url = (await sqs.send(new CreateQueueCommand({ QueueName: name, Attributes: queueAttributes, tags }), { abortSignal: signal })).QueueUrl;
  } catch (error) {
    if (!isNameTaken(error)) throw mapped('CreateQueue', name, error, signal);
    url = await call('GetQueueUrl', name, signal, async () => (await sqs.send(new GetQueueUrlCommand({ QueueName: name }), { abortSignal: signal })).QueueUrl);
  }
  if (!url) throw sqsFailure('CreateQueue', name, new Error('no QueueUrl in the answer'));
  const queueUrl = url;
  await call('TagQueue', queueUrl, signal, () => sqs.send(new TagQueueCommand({ QueueUrl: queueUrl, Tags: tags }), { abortSignal: signal }));
  return queueUrl;
}

const isNameTaken = (error: unknown): boolean => {
  const name = awsErrorName(error);
  return name === 'QueueNameExists' || name === 'QueueAlreadyExists' || name === 'AWS.SimpleQueueService.QueueNameExists';
};

/**
 * What job a queue belongs to and where its chunks are, from its tags. A queue without
 * them (not made by createJobQueues) or one that does not exist is a usage error.
 */
export async function readJobQueue(sqs: SQSClient, queueUrl: string, signal?: AbortSignal): Promise<JobQueueInfo> {
  let tags: Record<string, string>;
  try {
    tags = (await sqs.send(new ListQueueTagsCommand({ QueueUrl: queueUrl }), { abortSignal: signal })).Tags ?? {};
  } catch (error) {
    if (isQueueGone(error) && !signal?.aborted) {
      throw new CachewarmError('INVALID_ARGUMENT', `queue ${queueUrl} does not exist`, { queue: queueUrl }, { cause: error });
    }
    throw mapped('ListQueueTags', queueUrl, error, signal);
  }
  const jobId = tags[TAG_JOB];
  if (!jobId) throw notAJobQueue(queueUrl, `no ${TAG_JOB} tag`);
  if (tags[TAG_ROLE] === 'dead-letter') {
    throw new CachewarmError('INVALID_ARGUMENT', `queue ${queueUrl} is the dead-letter queue of cachewarm job ${jobId}, not its job queue`, { queue: queueUrl });
  }
  const bucket = tags[TAG_BUCKET];
  const deadLetterQueueUrl = tags[TAG_DEAD_LETTER_QUEUE];
  if (!bucket) throw notAJobQueue(queueUrl, `tagged for job ${jobId} but no ${TAG_BUCKET} tag`);
  if (!deadLetterQueueUrl) throw notAJobQueue(queueUrl, `tagged for job ${jobId} but no ${TAG_DEAD_LETTER_QUEUE} tag`);

  const found = await attributes(sqs, queueUrl, ['VisibilityTimeout', 'RedrivePolicy'], signal);
  return {
    jobId,
    bucket,
    prefix: normalizePrefix(tags[TAG_PREFIX] ?? ''),
    queueUrl,
    deadLetterQueueUrl,
    visibilityTimeoutSeconds: Number(found.VisibilityTimeout ?? 30),
    maxReceives: maxReceiveCountOf(found.RedrivePolicy),
  };
}

function notAJobQueue(queueUrl: string, why: string): CachewarmError {
  return new CachewarmError('INVALID_ARGUMENT', `queue ${queueUrl} is not a cachewarm job queue (${why})`, { queue: queueUrl });
}

function maxReceiveCountOf(redrivePolicy: string | undefined): number | undefined {
  if (!redrivePolicy) return undefined;
  try {
    const count = Number((JSON.parse(redrivePolicy) as { maxReceiveCount?: unknown }).maxReceiveCount);
    return Number.isSafeInteger(count) && count > 0 ? count : undefined;
  } catch {
    return undefined;
  }
}

/** A long-lived queue the installation owns, which every job of the installation shares. */
export interface StandingQueue {
  readonly queueUrl: string;
  /** From the queue's RedrivePolicy: where parked and refused messages go. */
  readonly deadLetterQueueUrl: string;
  readonly visibilityTimeoutSeconds: number;
  readonly maxReceives: number;
}

/**
 * A standing queue's settings, read from SQS: it must exist and have a RedrivePolicy, since
 * what cannot be applied (a message naming a location not allowed, a corrupt chunk) is set
 * aside on its dead-letter queue, never dropped.
 */
export async function readStandingQueue(sqs: SQSClient, queueUrl: string, signal?: AbortSignal): Promise<StandingQueue> {
  let found: Partial<Record<QueueAttributeName, string>>;
  try {
    found = await attributes(sqs, queueUrl, ['VisibilityTimeout', 'RedrivePolicy'], signal);
  } catch (error) {
    if (isQueueGone(error) && !signal?.aborted) {
      throw new CachewarmError('INVALID_ARGUMENT', `queue ${queueUrl} does not exist`, { queue: queueUrl }, { cause: error });
    }
    throw error;
  }
  const maxReceives = maxReceiveCountOf(found.RedrivePolicy);
  const arn = deadLetterArnOf(found.RedrivePolicy);
  if (maxReceives === undefined || !arn) {
    throw new CachewarmError(
      'INVALID_ARGUMENT',
      `queue ${queueUrl} has no RedrivePolicy naming a dead-letter queue: a standing queue needs one, where messages that cannot be applied are set aside`,
      { queue: queueUrl },
    );
  }
  // arn:aws:sqs:<region>:<account>:<name>
  const [, , , , account, name] = arn.split(':');
  if (!name) throw new CachewarmError('INVALID_ARGUMENT', `queue ${queueUrl}: the RedrivePolicy's deadLetterTargetArn ${arn} is not an SQS queue ARN`, { queue: queueUrl });
  const deadLetterQueueUrl = await call('GetQueueUrl', name, signal, async () =>
    (await sqs.send(new GetQueueUrlCommand({ QueueName: name, ...(account && { QueueOwnerAWSAccountId: account }) }), { abortSignal: signal })).QueueUrl,
  );
  if (!deadLetterQueueUrl) throw sqsFailure('GetQueueUrl', name, new Error('no QueueUrl in the answer'));
  return { queueUrl, deadLetterQueueUrl, visibilityTimeoutSeconds: Number(found.VisibilityTimeout ?? 30), maxReceives };
}

function deadLetterArnOf(redrivePolicy: string | undefined): string | undefined {
  if (!redrivePolicy) return undefined;
  try {
    const arn = (JSON.parse(redrivePolicy) as { deadLetterTargetArn?: unknown }).deadLetterTargetArn;
    return typeof arn === 'string' && arn.startsWith('arn:') ? arn : undefined;
  } catch {
    return undefined;
  }
}

/** SQS's approximate message counts for a queue. */
export async function queueBacklog(sqs: SQSClient, queueUrl: string, signal?: AbortSignal): Promise<QueueBacklog> {
  const found = await attributes(
    sqs,
    queueUrl,
    ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible', 'ApproximateNumberOfMessagesDelayed'],
    signal,
  );
  return {
    visible: Number(found.ApproximateNumberOfMessages ?? 0),
    inFlight: Number(found.ApproximateNumberOfMessagesNotVisible ?? 0),
    delayed: Number(found.ApproximateNumberOfMessagesDelayed ?? 0),
  };
}

export const backlogIsEmpty = (backlog: QueueBacklog): boolean => backlog.visible === 0 && backlog.inFlight === 0 && backlog.delayed === 0;

/**
 * What is on a dead-letter queue, read without consuming it: each message is received
 * (hidden for a short while, so one listing sees it once) and made visible again at the
 * end. A message SQS itself moved there (its holders crashed `maxReceives` times) has no
 * recorded reason, and says so. Messages another reader holds at the time are not seen.
 */
export async function parkedMessages(
  sqs: SQSClient,
  deadLetterQueueUrl: string,
  signal?: AbortSignal,
  options: { readonly maxMessages?: number } = {},
): Promise<ParkedEntry[]> {
  const maxMessages = options.maxMessages ?? 1000;
  const seen = new Map<string, Message>();
  const handles: string[] = [];
  try {
    while (seen.size < maxMessages) {
      const out = await call('ReceiveMessage', deadLetterQueueUrl, signal, () =>
        sqs.send(
          new ReceiveMessageCommand({
            QueueUrl: deadLetterQueueUrl,
            MaxNumberOfMessages: 10,
            // A long poll asks every SQS server; a short one samples some and may miss messages.
            WaitTimeSeconds: 1,
            VisibilityTimeout: READING_VISIBILITY_SECONDS,
            MessageAttributeNames: [REASON_ATTRIBUTE],
          }),
          { abortSignal: signal },
        ),
      );
      const messages = out.Messages ?? [];
      if (messages.length === 0) break;
      for (const message of messages) {
        if (message.ReceiptHandle) handles.push(message.ReceiptHandle);
        seen.set(message.MessageId ?? `#${seen.size}`, message);
      }
    }
  } finally {
    await releaseAll(sqs, deadLetterQueueUrl, handles);
  }
  return [...seen.values()].map(parkedEntryOf);
}

/**
 * Moves every message of a job's dead-letter queue back to its queue, as it was: for a rerun
 * after whatever parked them was fixed (a chunk restored, a target given room). Each is sent
 * before it is deleted, so a failure midway duplicates a message at worst, never loses one;
 * one that fails again is parked again with its reason. Returns how many were moved.
 */
export async function retryParked(
  sqs: SQSClient,
  queues: JobQueues,
  signal?: AbortSignal,
  /** Which messages to move (a standing queue's dead-letter queue holds every job's); default all. */
  belongs: (entry: ParkedEntry) => boolean = () => true,
): Promise<number> {
  // The ids the moved messages got on the queue: one parked again meanwhile (its cause not
  // fixed, and populators at work) comes back under that id, and is not moved a second time.
  const movedAs = new Set<string>();
  // Messages left where they are stay hidden until the end, so that the loop ends; then shown again.
  const left: string[] = [];
  try {
    for (;;) {
      const out = await call('ReceiveMessage', queues.deadLetterQueueUrl, signal, () =>
        sqs.send(
          new ReceiveMessageCommand({
            QueueUrl: queues.deadLetterQueueUrl,
            MaxNumberOfMessages: 10,
            WaitTimeSeconds: 1,
            VisibilityTimeout: READING_VISIBILITY_SECONDS,
            MessageAttributeNames: [SOURCE_MESSAGE_ID_ATTRIBUTE],
          }),
          { abortSignal: signal },
        ),
      );
      const messages = out.Messages ?? [];
      if (messages.length === 0) return movedAs.size;
      for (const message of messages) {
        const parkedFrom = message.MessageAttributes?.[SOURCE_MESSAGE_ID_ATTRIBUTE]?.StringValue;
        const again = movedAs.has(message.MessageId ?? '') || (parkedFrom !== undefined && movedAs.has(parkedFrom));
        if (again || !belongs(parkedEntryOf(message))) {
          if (message.ReceiptHandle) left.push(message.ReceiptHandle);
          continue;
        }
        const sent = await call('SendMessage', queues.queueUrl, signal, () =>
          sqs.send(new SendMessageCommand({ QueueUrl: queues.queueUrl, MessageBody: message.Body ?? '' }), { abortSignal: signal }),
        );
        await call('DeleteMessage', queues.deadLetterQueueUrl, signal, () =>
          sqs.send(new DeleteMessageCommand({ QueueUrl: queues.deadLetterQueueUrl, ReceiptHandle: message.ReceiptHandle }), { abortSignal: signal }),
        );
        movedAs.add(sent.MessageId ?? `#${movedAs.size}`);
      }
    }
  } finally {
    await releaseAll(sqs, queues.deadLetterQueueUrl, left);
  }
}

/** Makes received messages visible again at once; best effort (they reappear after the timeout anyway). */
async function releaseAll(sqs: SQSClient, queueUrl: string, handles: readonly string[]): Promise<void> {
  for (let at = 0; at < handles.length; at += 10) {
    const entries = handles.slice(at, at + 10).map((handle, i) => ({ Id: `m${i}`, ReceiptHandle: handle, VisibilityTimeout: 0 }));
    await sqs.send(new ChangeMessageVisibilityBatchCommand({ QueueUrl: queueUrl, Entries: entries })).catch(() => undefined);
  }
}

function parkedEntryOf(message: Message): ParkedEntry {
  const reason =
    message.MessageAttributes?.[REASON_ATTRIBUTE]?.StringValue ??
    'no reason recorded: moved by the queue\'s redrive policy after its last allowed delivery (its holders crashed or timed out)';
  const { chunk, jobId } = namesOf(message.Body);
  return { chunk, jobId, reason, messageId: message.MessageId };
}

/** The chunk and job a parked body names, as far as it can be read (it may be anything). */
function namesOf(body: string | undefined): { chunk?: string; jobId?: string } {
  const text = (value: unknown): string | undefined => (typeof value === 'string' ? value : undefined);
  try {
    const doc = JSON.parse(body ?? '') as { chunk?: { name?: unknown }; jobId?: unknown; targetJobId?: unknown } | null;
    const chunk = text(doc?.chunk?.name);
    const jobId = text(doc?.targetJobId) ?? text(doc?.jobId);
    return { ...(chunk !== undefined && { chunk }), ...(jobId !== undefined && { jobId }) };
  } catch {
    return {};
  }
}

/** Deletes a job's queues, the job queue first (it names the other); one already gone is fine. */
export async function deleteJobQueues(sqs: SQSClient, queues: JobQueues, signal?: AbortSignal): Promise<void> {
  for (const queueUrl of [queues.queueUrl, queues.deadLetterQueueUrl]) await deleteQueue(sqs, queueUrl, signal);
}

/**
 * Deletes a job's queues found by their names, for a job whose URLs are not at hand (one
 * superseded by another). Returns how many there were; none is not an error.
 */
export async function deleteJobQueuesOf(sqs: SQSClient, jobId: string, signal?: AbortSignal): Promise<number> {
  let deleted = 0;
  for (const name of Object.values(jobQueueNames(jobId))) {
    let queueUrl: string | undefined;
    try {
      queueUrl = (await sqs.send(new GetQueueUrlCommand({ QueueName: name }), { abortSignal: signal })).QueueUrl;
    } catch (error) {
      if (isQueueGone(error) && !signal?.aborted) continue;
      throw mapped('GetQueueUrl', name, error, signal);
    }
    if (queueUrl && (await deleteQueue(sqs, queueUrl, signal))) deleted++;
  }
  return deleted;
}

/** False when the queue was already gone. */
async function deleteQueue(sqs: SQSClient, queueUrl: string, signal: AbortSignal | undefined): Promise<boolean> {
  try {
    await sqs.send(new DeleteQueueCommand({ QueueUrl: queueUrl }), { abortSignal: signal });
    return true;
  } catch (error) {
    if (isQueueGone(error) && !signal?.aborted) return false;
    throw mapped('DeleteQueue', queueUrl, error, signal);
  }
}

async function attributes(
  sqs: SQSClient,
  queueUrl: string,
  names: QueueAttributeName[],
  signal: AbortSignal | undefined,
): Promise<Partial<Record<QueueAttributeName, string>>> {
  const out = await call('GetQueueAttributes', queueUrl, signal, () =>
    sqs.send(new GetQueueAttributesCommand({ QueueUrl: queueUrl, AttributeNames: names }), { abortSignal: signal }),
  );
  return out.Attributes ?? {};
}

async function call<T>(operation: string, queue: string, signal: AbortSignal | undefined, send: () => Promise<T>): Promise<T> {
  try {
    return await send();
  } catch (error) {
    throw mapped(operation, queue, error, signal);
  }
}

/** The one place SQS failures of these helpers become errors: the abort's reason, or TRANSPORT_FAILED naming the operation and queue. */
function mapped(operation: string, queue: string, error: unknown, signal: AbortSignal | undefined): Error {
  if (signal?.aborted) return abortReason(signal);
  return sqsFailure(operation, queue, error);
}
