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
  /** Idempotent. */
  stop(): Promise<void>;
}

/** On `port` when given (a service restarted empty where its clients expect it), else on a free one. */
export async function startFauxqs(options: { readonly port?: number } = {}): Promise<Fauxqs> {
  const app = buildApp({ logger: false });
  addConditionalWrites(app);
  const endpoint = await app.listen({ port: options.port ?? 0, host: '127.0.0.1' });
  let stopped: Promise<void> | undefined;
  return { endpoint, stop: () => (stopped ??= app.close()) };
}

type FauxqsApp = ReturnType<typeof buildApp>;

/**
 * S3's conditional writes, which fauxqs 1.9 ignores, as S3 documents them: a PutObject with
 * `If-None-Match: *` fails with 412 PreconditionFailed when the key exists; one with
 * `If-Match: <etag>` fails with 412 when the object has another ETag, 404 when there is none.
 * Conditional puts are taken one at a time, as S3 orders writes to one key, so that of two
 * racing, exactly one sees its condition hold. Everything else is fauxqs' own.
 */
function addConditionalWrites(app: FauxqsApp): void {
  let last = Promise.resolve();
  const turns = new WeakMap<object, () => void>();
  app.addHook('onRequest', async (request, reply) => {
    const ifNoneMatch = request.headers['if-none-match'];
    const ifMatch = request.headers['if-match'];
    if (request.method !== 'PUT' || (ifNoneMatch === undefined && ifMatch === undefined)) return;
    const before = last;
    last = new Promise<void>((resolve) => turns.set(request, resolve));
    await before;
    const head = await app.inject({ method: 'HEAD', url: request.url.split('?')[0] as string });
    const failed =
      (ifNoneMatch === '*' && head.statusCode === 200) || (ifMatch !== undefined && (head.statusCode !== 200 || head.headers.etag !== ifMatch));
    if (!failed) return;
    const code = head.statusCode === 404 && ifMatch !== undefined ? ['NoSuchKey', 404] as const : ['PreconditionFailed', 412] as const;
    await reply
      .code(code[1])
      .header('content-type', 'application/xml')
      .send(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code[0]}</Code><Message>At least one of the pre-conditions you specified did not hold</Message></Error>`);
  });
  const release = (request: object): void => {
    turns.get(request)?.();
    turns.delete(request);
  };
  app.addHook('onResponse', async (request) => release(request));
  app.addHook('onRequestAbort', async (request) => release(request));
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
