import { CachewarmError } from './errors.js';
import { HASHING_PROFILES, type HashingProfile } from './ketama.js';
import { isRecord, normalizePrefix } from './json-values.js';
import { isDataChunkOf, nodePrefix } from './job-layout.js';

/** 2: `store` names the bucket and prefix a chunk is in (absent for a local directory). */
export const MESSAGE_VERSION = 2;

/** The ring a populator routes by: the target replica's nodes as its clients hash them. */
export interface TargetRing {
  readonly replica: string;
  readonly hashing: HashingProfile;
  readonly nodes: readonly { readonly address: string; readonly ringName: string }[];
  /** Addresses that may be written; absent: all (an instance warm writes one node only). */
  readonly writeOnly?: readonly string[] | undefined;
}

export interface ChunkLocation {
  readonly bucket: string;
  readonly prefix: string;
}

/** One data chunk ready to be written: everything a populator on any machine needs. */
export interface ChunkMessage {
  readonly version: typeof MESSAGE_VERSION;
  readonly jobId: string;
  /**
   * The job the message is for when that is not `jobId`: one dump filling several targets on a
   * standing queue names the dump in `jobId` (its chunks are under it) and each target's job here.
   */
  readonly targetJobId?: string | undefined;
  /** The node id the chunk was dumped from. */
  readonly source: string;
  /** The bucket and key prefix the chunk's name is under; absent when the store is local. */
  readonly store?: ChunkLocation | undefined;
  readonly chunk: {
    /** Relative to the store: `<job>/<node>/data-….chunk`. */
    readonly name: string;
    readonly bytes: number;
    readonly items: number;
    /** The CRC-32 in the chunk's header, checked against what is downloaded. */
    readonly crc32: number;
  };
  readonly target: TargetRing;
}

function malformed(where: string, why: string): CachewarmError {
  return new CachewarmError('MESSAGE_MALFORMED', `message ${where}: ${why}`, { message: where });
}

function field<T>(obj: Record<string, unknown>, name: string, where: string, check: (v: unknown) => v is T, expected: string): T {
  const value = obj[name];
  if (!check(value)) throw malformed(where, `${name}: expected ${expected}, got ${JSON.stringify(value) ?? 'nothing'}`);
  return value;
}

const isString = (v: unknown): v is string => typeof v === 'string' && v.length > 0;
const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const isU32 = (v: unknown): v is number => isCount(v) && v <= 0xffffffff;
const isProfile = (v: unknown): v is HashingProfile => HASHING_PROFILES.includes(v as HashingProfile);

/** Validates a message from outside the process (a queue body); throws MESSAGE_MALFORMED. */
export function parseChunkMessage(body: string, where: string): ChunkMessage {
  let doc: unknown;
  try {
    doc = JSON.parse(body);
  } catch (error) {
    throw malformed(where, `not JSON (${(error as Error).message})`);
  }
  if (!isRecord(doc)) throw malformed(where, 'not a JSON object');
  if (doc['version'] !== MESSAGE_VERSION) {
    throw malformed(where, `version ${JSON.stringify(doc['version'])} is not supported (this build reads ${MESSAGE_VERSION})`);
  }
  const chunk = doc['chunk'];
  const target = doc['target'];
  if (!isRecord(chunk)) throw malformed(where, 'chunk: expected an object');
  if (!isRecord(target)) throw malformed(where, 'target: expected an object');
  const store = doc['store'];
  if (store !== undefined && !isRecord(store)) throw malformed(where, 'store: expected an object');
  const nodes = target['nodes'];
  if (!Array.isArray(nodes) || nodes.length === 0) throw malformed(where, 'target.nodes: expected a non-empty array');
  const writeOnly = target['writeOnly'];
  if (writeOnly !== undefined && !(Array.isArray(writeOnly) && writeOnly.every(isString))) {
    throw malformed(where, 'target.writeOnly: expected an array of addresses');
  }
  const targetJobId = doc['targetJobId'];
  if (targetJobId !== undefined && !isString(targetJobId)) throw malformed(where, 'targetJobId: expected a job id');
  return {
    version: MESSAGE_VERSION,
    jobId: field(doc, 'jobId', where, isString, 'a job id'),
    ...(targetJobId !== undefined && { targetJobId }),
    source: field(doc, 'source', where, isString, 'a node id'),
    ...(store && {
      store: {
        bucket: field(store, 'bucket', where, isString, 'a bucket name'),
        prefix: field(store, 'prefix', where, (v: unknown): v is string => typeof v === 'string', 'a key prefix'),
      },
    }),
    chunk: {
      name: field(chunk, 'name', where, isString, 'a chunk name'),
      bytes: field(chunk, 'bytes', where, isCount, 'a byte count'),
      items: field(chunk, 'items', where, isCount, 'an item count'),
      crc32: field(chunk, 'crc32', where, isU32, 'a CRC-32'),
    },
    target: {
      replica: field(target, 'replica', where, isString, 'a replica name'),
      hashing: field(target, 'hashing', where, isProfile, `one of ${HASHING_PROFILES.join(', ')}`),
      nodes: nodes.map((node: unknown, i) => {
        if (!isRecord(node)) throw malformed(where, `target.nodes[${i}]: expected an object`);
        return {
          address: field(node, 'address', where, isString, 'an address'),
          ringName: field(node, 'ringName', where, isString, 'a ring name'),
        };
      }),
      writeOnly: writeOnly as string[] | undefined,
    },
  };
}

/** What a populator holds a message to: its job, and where that job's chunks are. */
export interface MessageScope {
  readonly jobId: string;
  readonly store?: ChunkLocation | undefined;
  /**
   * From the job's manifest, which only the controller writes: the one ring the job writes
   * to and the source nodes whose chunks belong to it. Without it (the embedded transport,
   * whose queue is in process) a message's own ring is trusted.
   */
  readonly manifest?: ManifestScope | undefined;
}

export interface ManifestScope {
  /** Where the manifest is, for the reasons a refused message is parked with. */
  readonly where: string;
  readonly target: TargetRing;
  readonly sourceNodes: readonly string[];
  /** The shared dump the job takes its chunks from (see JobManifest.dumpJobId); absent: the job's own. */
  readonly dumpJobId?: string | undefined;
}

/**
 * Refuses a message that reaches outside its job: another bucket or prefix than the job's,
 * or a chunk name outside `<job>/`; with the manifest, also a ring other than the job's
 * target, a source node the job does not dump, or a chunk that is not one of that node's
 * data chunks. A populator applies nothing such a message names.
 */
export function checkMessageScope(message: ChunkMessage, scope: MessageScope, where: string): void {
  // One dump filling several targets: its messages name the dump, and the ring tells the targets apart.
  const jobId = scope.manifest?.dumpJobId ?? scope.jobId;
  if (message.jobId !== jobId) throw malformed(where, `belongs to job ${message.jobId}, not ${jobId}`);
  const expected = scope.store;
  const actual = message.store;
  if (expected?.bucket !== actual?.bucket || normalizePrefix(expected?.prefix) !== normalizePrefix(actual?.prefix)) {
    throw malformed(where, `points at ${describeLocation(actual)}, outside the job's ${describeLocation(expected)}`);
  }
  const name = message.chunk.name;
  if (!name.startsWith(`${jobId}/`) || name.split('/').some((part) => part === '..' || part === '.' || part === '')) {
    throw malformed(where, `chunk ${JSON.stringify(name)} is outside the job's directory ${jobId}/`);
  }
  if (scope.manifest) checkAgainstManifest(message, jobId, scope.manifest, where);
}

/** A message may only repeat what the manifest says: a forged one cannot point a populator at other nodes. */
function checkAgainstManifest(message: ChunkMessage, jobId: string, manifest: ManifestScope, where: string): void {
  if (!sameRing(message.target, manifest.target)) {
    throw malformed(
      where,
      `names target ring ${describeRing(message.target)}, not the job's ${describeRing(manifest.target)} (from ${manifest.where}): nothing written`,
    );
  }
  if (!manifest.sourceNodes.includes(message.source)) {
    throw malformed(
      where,
      `comes from source node ${JSON.stringify(message.source)}, not one of the job's (${manifest.sourceNodes.join(', ')}, from ${manifest.where}): nothing written`,
    );
  }
  if (!isDataChunkOf(jobId, message.source, message.chunk.name)) {
    throw malformed(
      where,
      `chunk ${JSON.stringify(message.chunk.name)} is not a data chunk of source node ${message.source} ` +
        `(${nodePrefix(jobId, message.source)}/data-….chunk): nothing written`,
    );
  }
}

/** The same ring: replica, hashing, nodes in order and write-only nodes (absent and undefined alike). */
function sameRing(a: TargetRing, b: TargetRing): boolean {
  return JSON.stringify(ringIdentity(a)) === JSON.stringify(ringIdentity(b));
}

const ringIdentity = (ring: TargetRing): unknown[] => [
  ring.replica,
  ring.hashing,
  ring.nodes.map((node) => [node.address, node.ringName]),
  ring.writeOnly ?? null,
];

const describeRing = (ring: TargetRing): string =>
  `${JSON.stringify(ring.replica)} [${ring.nodes.map((node) => node.address).join(', ')}]${ring.writeOnly ? ` writing only ${ring.writeOnly.join(', ')}` : ''}`;

const describeLocation = (location: ChunkLocation | undefined): string =>
  location ? `s3://${location.bucket}/${normalizePrefix(location.prefix)}` : 'local store';
