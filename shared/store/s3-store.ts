import {
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type PutObjectCommandInput,
  type S3Client,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { awsErrorName } from '../aws-errors.js';
import { normalizePrefix } from '../json-values.js';
import type { BufferPool } from '../buffer-pool.js';
import type { ChunkStore } from '../chunk-store.js';
import { CachewarmError, abortReason } from '../errors.js';

export type S3Encryption = { readonly type: 'AES256' } | { readonly type: 'aws:kms'; readonly kmsKeyId?: string | undefined };

export interface S3StoreOptions {
  /** Built once by the caller (region, credentials, endpoint), shared by every call. */
  readonly client: S3Client;
  readonly bucket: string;
  /** Key prefix every chunk name goes under, e.g. `cachewarm/prod`; `/`s at either end are ignored. */
  readonly prefix?: string | undefined;
  /** Server-side encryption asked for on every put. */
  readonly sse?: S3Encryption | undefined;
  /** Keys per ListObjectsV2 page (S3's own maximum and default is 1000). */
  readonly listPageSize?: number | undefined;
  /**
   * Chunks larger than this go up as a multipart upload, `multipartPartBytes` per part, a few
   * parts at once: a large chunk uploads faster, and a failed part is retried alone. Default 16 MiB.
   */
  readonly multipartThresholdBytes?: number | undefined;
  /** Default 8 MiB (S3's least is 5 MiB). */
  readonly multipartPartBytes?: number | undefined;
}

/** Parts in flight per multipart upload. The chunk is already in memory: parts are views of it, not copies. */
const MULTIPART_QUEUE_SIZE = 4;

/** Chunks as objects in an S3 bucket: the fleet-scale store. A put is atomic in S3, so a reader never sees part of a chunk. */
export class S3Store implements ChunkStore {
  readonly client: S3Client;
  readonly bucket: string;
  readonly prefix: string;
  private readonly sse: S3Encryption | undefined;
  private readonly listPageSize: number | undefined;
  private readonly multipartThresholdBytes: number;
  private readonly multipartPartBytes: number;

  constructor(options: S3StoreOptions) {
    this.client = options.client;
    this.bucket = options.bucket;
    this.prefix = normalizePrefix(options.prefix);
    this.sse = options.sse;
    this.listPageSize = options.listPageSize;
    this.multipartThresholdBytes = options.multipartThresholdBytes ?? 16 << 20;
    this.multipartPartBytes = Math.max(options.multipartPartBytes ?? 8 << 20, 5 << 20);
    if (!this.bucket) throw new CachewarmError('INVALID_ARGUMENT', 'an S3 store needs a bucket name');
  }

  describe(name: string): string {
    return `s3://${this.bucket}/${this.keyOf(name)}`;
  }

  async put(name: string, body: Buffer, signal?: AbortSignal): Promise<void> {
    const key = this.keyOf(name);
    const input: PutObjectCommandInput = { Bucket: this.bucket, Key: key, Body: body, ContentLength: body.length };
    if (this.sse?.type === 'AES256') input.ServerSideEncryption = 'AES256';
    if (this.sse?.type === 'aws:kms') {
      input.ServerSideEncryption = 'aws:kms';
      if (this.sse.kmsKeyId) input.SSEKMSKeyId = this.sse.kmsKeyId;
    }
    if (body.length > this.multipartThresholdBytes) {
      await this.putMultipart(input, signal);
      return;
    }
    try {
      await this.client.send(new PutObjectCommand(input), { abortSignal: signal });
    } catch (error) {
      throw this.failure('PutObject', key, error, signal);
    }
  }

  /**
   * Writes a small object only if it is as the caller last saw it: absent (`If-None-Match: *`)
   * or still the version with `etag` (`If-Match`). Resolves with the new ETag, or undefined
   * when the condition did not hold: another writer got there first. This is what makes an
   * S3 object a lock; it needs a store that honours conditional writes (S3 does since 2024).
   */
  async putIf(name: string, body: Buffer, expected: { readonly etag: string } | 'absent', signal?: AbortSignal): Promise<string | undefined> {
    const key = this.keyOf(name);
    const condition = expected === 'absent' ? { IfNoneMatch: '*' } : { IfMatch: expected.etag };
    try {
      const out = await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body, ContentLength: body.length, ...condition }), {
        abortSignal: signal,
      });
      return out.ETag ?? '';
    } catch (error) {
      // 412: the condition failed; 409: a concurrent conditional write won; 404: If-Match on an object since removed.
      const status = (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
      if (status === 412 || status === 409 || (status === 404 && expected !== 'absent')) return undefined;
      throw this.failure('PutObject', key, error, signal);
    }
  }

  /** A small object and its ETag (for `putIf`), or undefined when there is none. */
  async getTagged(name: string, signal?: AbortSignal): Promise<{ body: Buffer; etag: string } | undefined> {
    const key = this.keyOf(name);
    try {
      const out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }), { abortSignal: signal });
      const body = Buffer.from((await out.Body?.transformToByteArray()) ?? []);
      return { body, etag: out.ETag ?? '' };
    } catch (error) {
      const failure = this.failure('GetObject', key, error, signal);
      if (failure instanceof CachewarmError && failure.code === 'CHUNK_MISSING') return undefined;
      throw failure;
    }
  }

  /** lib-storage's Upload: parts in parallel, the upload aborted (no orphaned parts) on failure. */
  private async putMultipart(input: PutObjectCommandInput, signal: AbortSignal | undefined): Promise<void> {
    const { ContentLength: _length, ...params } = input;
    const upload = new Upload({
      client: this.client,
      params,
      partSize: this.multipartPartBytes,
      queueSize: MULTIPART_QUEUE_SIZE,
      leavePartsOnError: false,
    });
    const abort = (): void => void upload.abort().catch(() => undefined);
    signal?.addEventListener('abort', abort, { once: true });
    try {
      signal?.throwIfAborted();
      await upload.done();
    } catch (error) {
      throw this.failure('MultipartUpload', input.Key as string, error, signal);
    } finally {
      signal?.removeEventListener('abort', abort);
    }
  }

  async get(name: string, options: { signal?: AbortSignal | undefined; into?: BufferPool | undefined } = {}): Promise<Buffer> {
    const { signal, into } = options;
    const key = this.keyOf(name);
    let buf: Buffer | undefined;
    try {
      const out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }), { abortSignal: signal });
      const body = out.Body as AsyncIterable<Uint8Array> | undefined;
      if (!body) throw new Error('the response has no body');
      const size = out.ContentLength;
      if (size === undefined) {
        // No length: gather the parts, then copy them into one buffer.
        const parts: Uint8Array[] = [];
        let total = 0;
        for await (const part of body) {
          signal?.throwIfAborted();
          parts.push(part);
          total += part.length;
        }
        buf = into ? into.acquire(total) : Buffer.allocUnsafe(total);
        let at = 0;
        for (const part of parts) {
          buf.set(part, at);
          at += part.length;
        }
        return buf.subarray(0, total);
      }
      buf = into ? into.acquire(size) : Buffer.allocUnsafe(size);
      let read = 0;
      for await (const part of body) {
        // Leaving the loop destroys the body stream.
        signal?.throwIfAborted();
        if (read + part.length > size) throw new Error(`the body is longer than its Content-Length ${size}`);
        buf.set(part, read);
        read += part.length;
      }
      if (read !== size) throw new Error(`the body ended after ${read} of its ${size} bytes`);
      return buf.subarray(0, size);
    } catch (error) {
      if (buf && into) into.release(buf);
      throw this.failure('GetObject', key, error, signal);
    }
  }

  async delete(name: string, signal?: AbortSignal): Promise<void> {
    const key = this.keyOf(name);
    try {
      // S3 answers a delete of a missing key with success.
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key }), { abortSignal: signal });
    } catch (error) {
      if (awsErrorName(error) === 'NoSuchKey') return;
      throw this.failure('DeleteObject', key, error, signal);
    }
  }

  /**
   * Removes the objects under `prefix` (a job's directory) that `which` selects (default:
   * all), a thousand per request (S3's most per DeleteObjects). Returns how many were removed.
   */
  async deleteAll(prefix: string, which: (name: string) => boolean = () => true, signal?: AbortSignal): Promise<number> {
    const names = (await this.list(prefix, signal)).filter(which);
    for (let i = 0; i < names.length; i += 1000) {
      const keys = names.slice(i, i + 1000).map((name) => ({ Key: this.keyOf(name) }));
      try {
        const out = await this.client.send(
          new DeleteObjectsCommand({ Bucket: this.bucket, Delete: { Objects: keys, Quiet: true } }),
          { abortSignal: signal },
        );
        const refused = out.Errors?.[0];
        if (refused) throw Object.assign(new Error(`${refused.Key}: ${refused.Code} ${refused.Message}`), { name: refused.Code });
      } catch (error) {
        throw this.failure('DeleteObjects', `${prefix}/`, error, signal);
      }
    }
    return names.length;
  }

  /** Names under `prefix` taken as a directory (`j` and `j/` both list `j/...`), relative to the store, sorted. */
  async list(prefix: string, signal?: AbortSignal): Promise<string[]> {
    const dir = normalizePrefix(prefix);
    const storeDir = this.prefix ? `${this.prefix}/` : '';
    const keyPrefix = storeDir + (dir ? `${dir}/` : '');
    const names: string[] = [];
    let token: string | undefined;
    do {
      try {
        const out = await this.client.send(
          new ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: keyPrefix || undefined,
            ContinuationToken: token,
            MaxKeys: this.listPageSize,
          }),
          { abortSignal: signal },
        );
        for (const object of out.Contents ?? []) {
          if (object.Key?.startsWith(storeDir)) names.push(object.Key.slice(storeDir.length));
        }
        token = out.IsTruncated ? out.NextContinuationToken : undefined;
      } catch (error) {
        throw this.failure('ListObjectsV2', keyPrefix, error, signal);
      }
    } while (token);
    return names.sort();
  }

  private keyOf(name: string): string {
    const parts = name.split('/');
    if (!name || name.startsWith('/') || parts.some((p) => p === '' || p === '.' || p === '..')) {
      throw new CachewarmError('INVALID_ARGUMENT', `chunk name ${JSON.stringify(name)} is not a plain relative path`, { chunk: name });
    }
    return this.prefix ? `${this.prefix}/${name}` : name;
  }

  /** Every S3 failure becomes a CachewarmError here, naming the object and the AWS error. */
  private failure(operation: string, key: string, error: unknown, signal: AbortSignal | undefined): Error {
    if (signal?.aborted) return abortReason(signal);
    if (error instanceof CachewarmError) return error;
    const url = `s3://${this.bucket}/${key}`;
    const awsName = awsErrorName(error);
    const status = (error as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode;
    const detail = error instanceof Error ? error.message : String(error);
    const context = { store: 's3', operation, bucket: this.bucket, key, awsError: awsName, httpStatus: status };
    if (operation === 'GetObject' && (awsName === 'NoSuchKey' || (status === 404 && awsName !== 'NoSuchBucket'))) {
      return new CachewarmError('CHUNK_MISSING', `chunk ${url} is not in the store (${awsName ?? 'HTTP 404'})`, context, { cause: error });
    }
    return new CachewarmError(
      'TRANSPORT_FAILED',
      `S3 ${operation} ${url} failed: ${awsName ?? 'error'}${status ? ` (HTTP ${status})` : ''}: ${detail}`,
      context,
      { cause: error },
    );
  }
}
