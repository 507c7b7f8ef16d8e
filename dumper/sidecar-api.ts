import type { TargetRing } from '../shared/chunk-message.js';
import type { DumpCounters } from '../shared/counters.js';
import { CachewarmError } from '../shared/errors.js';
import { HASHING_PROFILES, type HashingProfile } from '../shared/ketama.js';
import type { S3Encryption } from '../shared/store/s3-store.js';
import { isRecord } from '../shared/json-values.js';
import type { KeySample, NodeSample, SampledKey } from '../shared/key-sample.js';
import { MAX_KEY_BYTES } from '../shared/memcached/keys.js';
import { type ProtectSource, parseProtectSource } from './read-pace.js';
import type { SourceGuardStatus } from './source-guard.js';

/**
 * The dumper sidecar's HTTP API, shared by the server (dumper/sidecar-server.ts) and the
 * client the controller uses (dumper/sidecar-client.ts), so both read one definition:
 *
 *   GET    /healthz            no token: is memcached up, what is the dump doing
 *   POST   /v1/dumps           start (or re-attach to) a dump: StartDumpRequest → DumpStatus
 *   GET    /v1/dumps/:jobId    DumpStatus, counters live
 *   DELETE /v1/dumps/:jobId    cancel: DumpStatus
 *   GET    /metrics            Prometheus text
 *
 * Every other request carries `Authorization: Bearer <token>`. Errors are JSON ErrorBody.
 */

export const SIDECAR_PATHS = { health: '/healthz', metrics: '/metrics', dumps: '/v1/dumps' } as const;

export const dumpPath = (jobId: string): string => `${SIDECAR_PATHS.dumps}/${encodeURIComponent(jobId)}`;

/** A request body larger than this is refused (413): a start request is a few KiB. */
export const MAX_REQUEST_BODY_BYTES = 1 << 20;

/** Chunk sizes any sidecar accepts; a sidecar may cap the top lower (its memory budget). */
export const MIN_CHUNK_SIZE_BYTES = 64 << 10;
export const MAX_CHUNK_SIZE_BYTES = 1 << 30;

/** Copy only the keys that the ring `nodes` (hashed as `hashing`) places on one of `keep`. */
export interface KeyFilterSpec {
  readonly nodes: readonly { readonly address: string; readonly ringName: string }[];
  readonly hashing: HashingProfile;
  readonly keep: readonly string[];
}

export interface StartDumpRequest {
  readonly jobId: string;
  /** The source node's id, e.g. `zone-a/10.0.0.1:11211`: names its chunk directory and its messages. */
  readonly node: string;
  readonly bucket: string;
  /** Key prefix the job's objects go under in the bucket (may be empty). */
  readonly prefix: string;
  readonly queueUrl: string;
  readonly chunkSizeBytes: number;
  /** Items per second read from memcached; absent: unlimited. */
  readonly maxItemsPerSecond?: number | undefined;
  /** Bytes per second uploaded to the store; absent: unlimited. */
  readonly maxBytesPerSecond?: number | undefined;
  /** The live p99 factor the dump keeps to (see read-pace.ts), or "off"; absent: the default, 1.2. */
  readonly protectSource?: ProtectSource | undefined;
  readonly sse?: S3Encryption | undefined;
  readonly target: TargetRing;
  readonly keyFilter?: KeyFilterSpec | undefined;
  /**
   * More queues every data chunk is announced on, each message with that queue's target ring
   * in place of `target`: one dump filling several replicas, each from a queue of its own.
   */
  readonly alsoTo?: readonly ChunkDestination[] | undefined;
  /**
   * Keep a uniform sample of this many of the keys the dump lists, for the status of the
   * finished dump (`listedSample`): the controller's read-back draws from it instead of
   * crawling the source a second time. Absent or 0: none.
   */
  readonly sampleKeys?: number | undefined;
  /**
   * `queueUrl` is a standing queue that many jobs share: a resumed dump announces again the
   * chunks its earlier run stored that no populator has marked (see dumpNode's unmarkedOf).
   */
  readonly standingQueue?: boolean | undefined;
  /** The job of the request's own destination when the dump is shared on a standing queue (see ChunkDestination.jobId). */
  readonly targetJobId?: string | undefined;
}

/** Most keys a dump samples for the read-back: the sample travels in one status body. */
export const MAX_SAMPLE_KEYS = 50_000;

/** A queue a dump announces its chunks on, and the ring its messages name. */
export interface ChunkDestination {
  readonly queueUrl: string;
  readonly target: TargetRing;
  /**
   * The target's job, named in each message (`targetJobId`) when several targets share one
   * standing queue: it is what tells a populator whose manifest governs the message.
   */
  readonly jobId?: string | undefined;
}

/** Queues one dump may announce on besides its own: the targets one dump fills. */
export const MAX_EXTRA_DESTINATIONS = 15;

export type DumpState = 'running' | 'finished' | 'failed' | 'cancelled';
export const DUMP_STATES: readonly DumpState[] = ['running', 'finished', 'failed', 'cancelled'];

export interface DumpStatus {
  readonly jobId: string;
  readonly node: string;
  readonly state: DumpState;
  readonly counters: DumpCounters;
  /** ISO 8601. */
  readonly startedAt: string;
  readonly finishedAt?: string | undefined;
  readonly error?: { readonly code: string; readonly message: string } | undefined;
  /** The source guard while the dump runs protected (its last state once it ended); absent when protection is off. */
  readonly sourceGuard?: SourceGuardStatus | undefined;
  /** The sample asked for (`sampleKeys`): only once finished, and only if this run's crawl listed the whole node. */
  readonly listedSample?: ListedSampleJson | undefined;
}

/** A uniform sample of the keys a dump listed, as a status carries it. */
export interface ListedSampleJson {
  /** Keys the dump listed (after its key filter): how large a share of the whole the sample stands for. */
  readonly listed: number;
  /** Keys as base64; `exptime` absolute (0 for none), as the crawler reported it. */
  readonly keys: readonly { readonly key: string; readonly exptime: number; readonly sizeBytes: number }[];
}

export interface HealthStatus {
  /** False (and HTTP 503) when memcached does not answer. */
  readonly ok: boolean;
  readonly memcached: 'up' | 'down';
  /** The state of the running dump, else of the last one; null before any. */
  readonly dump: DumpState | null;
}

export interface ErrorBody {
  readonly error: {
    /** A CachewarmError code (NODE_BUSY, INVALID_ARGUMENT, …) or an HTTP-level one (UNAUTHORIZED, NOT_FOUND, …). */
    readonly code: string;
    readonly message: string;
    /** For a refused start request: the field at fault, e.g. `target.nodes[2].ringName`. */
    readonly field?: string | undefined;
  };
}

// ---------------------------------------------------------------------------------------
// Validation of a start request, on both sides: the client refuses a bad request before
// sending it, the server refuses whatever a client sent anyway.

const TOP_LEVEL_FIELDS = new Set([
  'jobId',
  'node',
  'bucket',
  'prefix',
  'queueUrl',
  'chunkSizeBytes',
  'maxItemsPerSecond',
  'maxBytesPerSecond',
  'protectSource',
  'sse',
  'target',
  'keyFilter',
  'alsoTo',
  'sampleKeys',
  'standingQueue',
  'targetJobId',
]);

function describe(value: unknown): string {
  if (value === undefined) return 'nothing';
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

function invalid(field: string, why: string): CachewarmError {
  return new CachewarmError('INVALID_ARGUMENT', `start request: ${field}: ${why}`, { field });
}

function expected(field: string, what: string, got: unknown): CachewarmError {
  return invalid(field, `expected ${what}, got ${describe(got)}`);
}

// Control characters would end up in S3 keys, log lines and metric labels.
const PRINTABLE = /^[^\u0000-\u001f\u007f]+$/;

function text(obj: Record<string, unknown>, name: string, where: string, what: string, maxChars = 256): string {
  const value = obj[name];
  const field = `${where}${name}`;
  if (typeof value !== 'string' || value === '' || value.length > maxChars || !PRINTABLE.test(value)) {
    throw expected(field, `${what} (1 to ${maxChars} printable characters)`, value);
  }
  return value;
}

function rate(obj: Record<string, unknown>, name: string): number | undefined {
  const value = obj[name];
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) throw expected(name, 'a positive number per second', value);
  return value;
}

/** Job ids name an S3 key part and a URL path segment: letters, digits, `.`, `_`, `-`. */
const JOB_ID = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$/;

function jobIdOf(body: Record<string, unknown>, field = 'jobId', where = ''): string {
  const value = body[field];
  if (typeof value !== 'string' || !JOB_ID.test(value)) {
    throw expected(`${where}${field}`, 'a job id of letters, digits, ".", "_" and "-" (at most 200, not starting with ".")', value);
  }
  return value;
}

function prefixOf(body: Record<string, unknown>): string {
  const value = body['prefix'];
  if (typeof value !== 'string' || value.length > 512 || (value !== '' && !PRINTABLE.test(value))) {
    throw expected('prefix', 'a key prefix (a string, may be empty)', value);
  }
  const parts = value.replace(/^\/+|\/+$/g, '').split('/');
  if (parts.some((p) => p === '.' || p === '..')) throw invalid('prefix', `${describe(value)} holds a "." or ".." segment`);
  return value;
}

function bucketOf(body: Record<string, unknown>): string {
  const bucket = text(body, 'bucket', '', 'a bucket name', 255);
  if (/[\s/]/.test(bucket)) throw expected('bucket', 'a bucket name without "/" or spaces', bucket);
  return bucket;
}

function queueUrlOf(obj: Record<string, unknown>, where = ''): string {
  const value = text(obj, 'queueUrl', where, 'a queue URL', 2048);
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw expected(`${where}queueUrl`, 'an http(s) URL', value);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw expected(`${where}queueUrl`, 'an http(s) URL', value);
  return value;
}

function chunkSizeOf(body: Record<string, unknown>): number {
  const value = body['chunkSizeBytes'];
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < MIN_CHUNK_SIZE_BYTES || value > MAX_CHUNK_SIZE_BYTES) {
    throw expected('chunkSizeBytes', `a whole number of bytes from ${MIN_CHUNK_SIZE_BYTES} to ${MAX_CHUNK_SIZE_BYTES}`, value);
  }
  return value;
}

function sseOf(body: Record<string, unknown>): S3Encryption | undefined {
  const value = body['sse'];
  if (value === undefined) return undefined;
  const forms = '{"type":"AES256"} or {"type":"aws:kms","kmsKeyId"?:…}';
  if (!isRecord(value)) throw expected('sse', forms, value);
  const extra = Object.keys(value).filter((k) => k !== 'type' && !(value['type'] === 'aws:kms' && k === 'kmsKeyId'));
  if (extra.length > 0) throw invalid(`sse.${extra[0]}`, `not a field of ${describe(value['type'])} encryption`);
  if (value['type'] === 'AES256') return { type: 'AES256' };
  if (value['type'] !== 'aws:kms') throw expected('sse.type', '"AES256" or "aws:kms"', value['type']);
  if (value['kmsKeyId'] === undefined) return { type: 'aws:kms' };
  return { type: 'aws:kms', kmsKeyId: text(value, 'kmsKeyId', 'sse.', 'a KMS key id or ARN', 2048) };
}

function hashingOf(obj: Record<string, unknown>, where: string): HashingProfile {
  const value = obj['hashing'];
  if (!HASHING_PROFILES.includes(value as HashingProfile)) throw expected(`${where}hashing`, `one of ${HASHING_PROFILES.join(', ')}`, value);
  return value as HashingProfile;
}

function ringNodesOf(obj: Record<string, unknown>, where: string): { address: string; ringName: string }[] {
  const value = obj['nodes'];
  if (!Array.isArray(value) || value.length === 0) throw expected(`${where}nodes`, 'a non-empty array of { address, ringName }', value);
  const seen = new Set<string>();
  return value.map((node: unknown, i) => {
    const at = `${where}nodes[${i}]`;
    if (!isRecord(node)) throw expected(at, 'an object { address, ringName }', node);
    const address = text(node, 'address', `${at}.`, 'a node address');
    if (seen.has(address)) throw invalid(`${at}.address`, `${describe(address)} is on the ring twice`);
    seen.add(address);
    return { address, ringName: text(node, 'ringName', `${at}.`, 'a ring name') };
  });
}

/** Addresses that must all be nodes of the ring: a typo would otherwise silently copy nothing. */
function addressesOn(value: unknown, field: string, ring: readonly { address: string }[]): string[] {
  if (!Array.isArray(value) || value.length === 0) throw expected(field, 'a non-empty array of node addresses', value);
  return value.map((address: unknown, i) => {
    if (typeof address !== 'string' || !ring.some((n) => n.address === address)) {
      throw expected(`${field}[${i}]`, 'the address of a node on the ring', address);
    }
    return address;
  });
}

function targetOf(obj: Record<string, unknown>, where = ''): TargetRing {
  const value = obj['target'];
  const field = `${where}target`;
  if (!isRecord(value)) throw expected(field, 'the target ring { replica, hashing, nodes, writeOnly? }', value);
  const replica = text(value, 'replica', `${field}.`, 'a replica name');
  const hashing = hashingOf(value, `${field}.`);
  const nodes = ringNodesOf(value, `${field}.`);
  const writeOnly = value['writeOnly'] === undefined ? undefined : addressesOn(value['writeOnly'], `${field}.writeOnly`, nodes);
  return { replica, hashing, nodes, ...(writeOnly && { writeOnly }) };
}

/** Each extra queue once, none the request's own: a message announced twice on one queue is written twice. */
function alsoToOf(body: Record<string, unknown>, queueUrl: string, targetJobId: string | undefined): ChunkDestination[] | undefined {
  const value = body['alsoTo'];
  if (value === undefined) return undefined;
  if (!Array.isArray(value) || value.length === 0 || value.length > MAX_EXTRA_DESTINATIONS) {
    throw expected('alsoTo', `an array of 1 to ${MAX_EXTRA_DESTINATIONS} { queueUrl, target }`, value);
  }
  // One queue may take several targets' messages (a standing queue), each for another job.
  const destination = (url: string, jobId: string | undefined): string => JSON.stringify([url, jobId ?? null]);
  const seen = new Set([destination(queueUrl, targetJobId)]);
  return value.map((entry: unknown, i) => {
    const at = `alsoTo[${i}].`;
    if (!isRecord(entry)) throw expected(`alsoTo[${i}]`, 'an object { queueUrl, target, jobId? }', entry);
    const extra = Object.keys(entry).filter((k) => k !== 'queueUrl' && k !== 'target' && k !== 'jobId');
    if (extra.length > 0) throw invalid(`${at}${extra[0]}`, 'not a field of a destination');
    const url = queueUrlOf(entry, at);
    const jobId = entry['jobId'] === undefined ? undefined : jobIdOf(entry, 'jobId', at);
    if (seen.has(destination(url, jobId))) throw invalid(`${at}queueUrl`, `${describe(url)} is named twice${jobId ? ` for job ${jobId}` : ''}`);
    seen.add(destination(url, jobId));
    return { queueUrl: url, target: targetOf(entry, at), ...(jobId !== undefined && { jobId }) };
  });
}

function sampleKeysOf(body: Record<string, unknown>): number | undefined {
  const value = body['sampleKeys'];
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0 || value > MAX_SAMPLE_KEYS) {
    throw expected('sampleKeys', `a whole number of keys from 0 to ${MAX_SAMPLE_KEYS}`, value);
  }
  return value;
}

function protectSourceOf(body: Record<string, unknown>): ProtectSource | undefined {
  const value = body['protectSource'];
  if (value === undefined) return undefined;
  try {
    return parseProtectSource(String(value));
  } catch {
    throw expected('protectSource', 'a factor from 1 to 100 or "off"', value);
  }
}

function keyFilterOf(body: Record<string, unknown>): KeyFilterSpec | undefined {
  const value = body['keyFilter'];
  if (value === undefined) return undefined;
  if (!isRecord(value)) throw expected('keyFilter', 'an object { nodes, hashing, keep }', value);
  const nodes = ringNodesOf(value, 'keyFilter.');
  const hashing = hashingOf(value, 'keyFilter.');
  return { nodes, hashing, keep: addressesOn(value['keep'], 'keyFilter.keep', nodes) };
}

/**
 * A start request from a parsed JSON body, every field checked. Throws CachewarmError
 * INVALID_ARGUMENT naming the field (`context.field` and the message); unknown fields are
 * refused too, since a misspelt limit silently ignored would dump at full speed.
 */
export function parseStartDumpRequest(body: unknown): StartDumpRequest {
  if (!isRecord(body)) throw expected('(body)', 'a JSON object', body);
  const unknown = Object.keys(body).filter((k) => !TOP_LEVEL_FIELDS.has(k));
  if (unknown.length > 0) throw invalid(unknown[0] as string, 'not a field of a start request');
  // Checked in the order the fields are documented, so the first fault reported is the first one listed.
  const jobId = jobIdOf(body);
  const node = text(body, 'node', '', 'a node id such as "zone-a/10.0.0.1:11211"');
  const bucket = bucketOf(body);
  const prefix = prefixOf(body);
  const queueUrl = queueUrlOf(body);
  const chunkSizeBytes = chunkSizeOf(body);
  const maxItemsPerSecond = rate(body, 'maxItemsPerSecond');
  const maxBytesPerSecond = rate(body, 'maxBytesPerSecond');
  const protectSource = protectSourceOf(body);
  const sse = sseOf(body);
  const target = targetOf(body);
  const keyFilter = keyFilterOf(body);
  const targetJobId = body['targetJobId'] === undefined ? undefined : jobIdOf(body, 'targetJobId');
  const alsoTo = alsoToOf(body, queueUrl, targetJobId);
  const sampleKeys = sampleKeysOf(body);
  const standingQueue = body['standingQueue'];
  if (standingQueue !== undefined && typeof standingQueue !== 'boolean') throw expected('standingQueue', 'true or false', standingQueue);
  return {
    jobId,
    node,
    bucket,
    prefix,
    queueUrl,
    chunkSizeBytes,
    ...(maxItemsPerSecond !== undefined && { maxItemsPerSecond }),
    ...(maxBytesPerSecond !== undefined && { maxBytesPerSecond }),
    ...(protectSource !== undefined && { protectSource }),
    ...(sse && { sse }),
    target,
    ...(keyFilter && { keyFilter }),
    ...(alsoTo && { alsoTo }),
    ...(sampleKeys && { sampleKeys }),
    ...(standingQueue && { standingQueue }),
    ...(targetJobId !== undefined && { targetJobId }),
  };
}

/**
 * A status's sample as keys of `node`, every entry checked: a key of 1 to 250 bytes, whole
 * non-negative numbers, no more keys than were listed. Undefined for anything else, which
 * costs the read-back a crawl of the source rather than trust in a malformed answer.
 */
export function sampleOfStatus(value: unknown, node: string): NodeSample | undefined {
  if (!isRecord(value) || !Array.isArray(value['keys'])) return undefined;
  const listed = value['listed'];
  const wholeNumber = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
  if (!wholeNumber(listed) || value['keys'].length > Math.min(listed, MAX_SAMPLE_KEYS)) return undefined;
  const keys: SampledKey[] = [];
  for (const entry of value['keys'] as unknown[]) {
    if (!isRecord(entry) || typeof entry['key'] !== 'string' || !wholeNumber(entry['exptime']) || !wholeNumber(entry['sizeBytes'])) return undefined;
    const key = Buffer.from(entry['key'], 'base64');
    if (key.length === 0 || key.length > MAX_KEY_BYTES || key.toString('base64') !== entry['key']) return undefined;
    keys.push({ key, exptime: entry['exptime'], sizeBytes: entry['sizeBytes'], source: node });
  }
  return { listed, keys };
}

/** A dump's sample as its status carries it. */
export function listedSampleJson(sample: KeySample): ListedSampleJson {
  return {
    listed: sample.listed,
    keys: sample.keys.map(({ key, exptime, sizeBytes }) => ({ key: key.toString('base64'), exptime, sizeBytes })),
  };
}
