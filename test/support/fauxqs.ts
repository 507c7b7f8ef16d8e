import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { CreateQueueCommand, SQSClient } from '@aws-sdk/client-sqs';
import { buildApp } from 'fauxqs';

/**
 * An S3- and SQS-compatible emulator for the tests: fauxqs (npm, 1.9 line: runs on Node 20),
 * embedded in the test process and listening on a free port on 127.0.0.1 only. All state is
 * in memory and goes with `stop()`.
 *
 * (fauxqs' own `startFauxqs` listens on 0.0.0.0; building its app and listening ourselves
 * keeps it on loopback.)
 */
export interface Fauxqs {
  /** e.g. http://127.0.0.1:40123 — S3 path-style and SQS share it. */
  readonly endpoint: string;
  stop(): Promise<void>;
}

export async function startFauxqs(): Promise<Fauxqs> {
  const app = buildApp({ logger: false });
  const endpoint = await app.listen({ port: 0, host: '127.0.0.1' });
  return { endpoint, stop: () => app.close() };
}

export interface AwsClients {
  readonly s3: S3Client;
  readonly sqs: SQSClient;
  destroy(): void;
}

/**
 * SDK clients pointed at the emulator: region us-east-1, dummy static credentials (never
 * checked), S3 path-style (`http://127.0.0.1:port/bucket/key`: virtual-host style would need
 * `bucket.127.0.0.1` to resolve). With an explicit endpoint the SQS client sends every call
 * there, whatever host a queue URL names.
 */
export function awsClients(endpoint: string): AwsClients {
  const common = { endpoint, region: 'us-east-1', credentials: { accessKeyId: 'test', secretAccessKey: 'test' } };
  const s3 = new S3Client({ ...common, forcePathStyle: true });
  const sqs = new SQSClient(common);
  return {
    s3,
    sqs,
    destroy: () => {
      s3.destroy();
      sqs.destroy();
    },
  };
}

export async function createBucket(s3: S3Client, name: string): Promise<string> {
  await s3.send(new CreateBucketCommand({ Bucket: name }));
  return name;
}

/** Creates a queue and returns its URL. */
export async function createQueue(sqs: SQSClient, name: string, attributes: Record<string, string> = {}): Promise<string> {
  const { QueueUrl } = await sqs.send(new CreateQueueCommand({ QueueName: name, Attributes: attributes }));
  if (!QueueUrl) throw new Error(`CreateQueue ${name} returned no queue URL`);
  return QueueUrl;
}
