/**
 * The topology file: which memcached nodes make up each replica, and how the clients hash
 * keys onto them. Everything downstream (which node a key belongs to, which node to copy
 * from and to) trusts this file, so it is checked strictly: unknown fields, duplicate keys
 * and duplicate nodes are errors rather than things to guess about, and every error names
 * the file and the field so an operator can fix it without reading code.
 */
import { readFile } from 'node:fs/promises';
import { isIPv4, isIPv6 } from 'node:net';
import { parseDocument } from 'yaml';
import { CachewarmError, type ErrorContext } from './errors.js';
import { HASHING_PROFILES, ringNameFor, type HashingProfile } from './ketama.js';
import { isRecord } from './json-values.js';

export type { HashingProfile } from './ketama.js';

export interface NodeSpec {
  /** `${replica}/${address}`: the stable identity used in logs, summaries and job manifests */
  readonly id: string;
  readonly replica: string;
  /** normalized "host:port", IPv6 kept in brackets */
  readonly address: string;
  /** without brackets */
  readonly host: string;
  readonly port: number;
  readonly hostname?: string | undefined;
  /** the string hashed onto the ring: the file's ringName, else ringNameFor(hashing, node) */
  readonly ringName: string;
  readonly sidecar?: string | undefined;
}

export interface ReplicaSpec {
  readonly name: string;
  readonly nodes: readonly NodeSpec[];
}

export interface Topology {
  readonly hashing: HashingProfile;
  readonly replicas: ReadonlyMap<string, ReplicaSpec>;
}

const DEFAULT_HASHING: HashingProfile = 'spymemcached';
const DEFAULT_FILE_LABEL = 'topology';
/** the `field` of errors about the document as a whole (unreadable, unparsable, not an object) */
const ROOT_FIELD = '(root)';

// `$schema` points editors at topology.schema.json; cachewarm itself needs nothing from it.
const ROOT_FIELDS = ['$schema', 'hashing', 'replicas'] as const;
const REPLICA_FIELDS = ['nodes'] as const;
const NODE_FIELDS = ['address', 'hostname', 'ringName', 'sidecar'] as const;

// Replica names end up in node ids ("replica/address"), file names and log lines, so they
// must not contain "/" or whitespace.
const REPLICA_NAME = /^[A-Za-z0-9._-]+$/;
const ADDRESS_FORMS = 'IPv4, [IPv6]:port or host name; port 1-65535';

// ---------------------------------------------------------------------------------------
// Loading and parsing

export async function loadTopology(path: string): Promise<Topology> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    const code = errnoCode(error);
    const reason =
      code === 'ENOENT'
        ? 'topology file not found'
        : code === 'EISDIR'
          ? 'expected a topology file, got a directory'
          : code === 'EACCES' || code === 'EPERM'
            ? 'cannot read topology file: permission denied'
            : `cannot read topology file: ${error instanceof Error ? error.message : String(error)}`;
    throw new CachewarmError('TOPOLOGY_INVALID', `${path}: ${reason}`, { file: path, field: ROOT_FIELD, errno: code }, {
      cause: error,
    });
  }
  return parseTopologyText(text, path);
}

/** JSON, or YAML when `file` ends in .yaml/.yml; `file` also labels every error. */
export function parseTopologyText(text: string, file: string): Topology {
  // Editors on Windows like to add a BOM, which JSON.parse rejects as a syntax error.
  const body = text.startsWith('\uFEFF') ? text.slice(1) : text;
  const document = /\.ya?ml$/i.test(file) ? parseYamlDocument(body, file) : parseJsonDocument(body, file);
  return parseTopology(document, file);
}

function parseYamlDocument(text: string, file: string): unknown {
  // uniqueKeys (the default) makes a repeated replica name an error instead of a silent
  // overwrite; prettyErrors is off because the excerpt it appends spans several lines.
  const doc = parseDocument(text, { prettyErrors: false, uniqueKeys: true });
  const first = doc.errors[0];
  if (first !== undefined) {
    const { line, column } = lineColumn(text, first.pos[0]);
    throw new CachewarmError(
      'TOPOLOGY_INVALID',
      `${file}: invalid YAML at line ${line}, column ${column}: ${first.message}`,
      { file, field: ROOT_FIELD, line, column },
      { cause: first },
    );
  }
  try {
    return doc.toJS();
  } catch (error) {
    // toJS is where unresolved aliases and alias bombs (maxAliasCount) are caught.
    throw new CachewarmError(
      'TOPOLOGY_INVALID',
      `${file}: invalid YAML: ${error instanceof Error ? error.message : String(error)}`,
      { file, field: ROOT_FIELD },
      { cause: error },
    );
  }
}

function parseJsonDocument(text: string, file: string): unknown {
  if (text.trim() === '') {
    throw new CachewarmError('TOPOLOGY_INVALID', `${file}: invalid JSON: the file is empty`, {
      file,
      field: ROOT_FIELD,
    });
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    // V8 leaves the position out of some messages ("Unexpected token '}', ... is not valid
    // JSON", "Unexpected end of JSON input"), so the scanner finds it instead.
    const found = scanJson(text).syntaxError;
    const parserMessage = error instanceof Error ? error.message : String(error);
    const located = found?.offset ?? v8Position(parserMessage);
    if (located === undefined) {
      throw new CachewarmError(
        'TOPOLOGY_INVALID',
        `${file}: invalid JSON: ${parserMessage}`,
        { file, field: ROOT_FIELD },
        { cause: error },
      );
    }
    const offset = Math.min(located, text.length);
    const { line, column } = lineColumn(text, offset);
    const message = found?.message ?? parserMessage;
    throw new CachewarmError(
      'TOPOLOGY_INVALID',
      `${file}: invalid JSON at line ${line}, column ${column} (position ${offset}): ${message}`,
      { file, field: ROOT_FIELD, line, column, position: offset },
      { cause: error },
    );
  }
  // JSON.parse keeps the last of two equal keys, so a second "zone-a" would silently
  // replace the first replica; YAML reports that itself, JSON needs this extra pass.
  const duplicate = scanJson(text).duplicate;
  if (duplicate !== undefined) {
    const first = lineColumn(text, duplicate.firstOffset);
    const again = lineColumn(text, duplicate.offset);
    throw invalid(
      file,
      duplicate.field,
      `expected each key once, got ${JSON.stringify(duplicate.key)} at line ${first.line}, column ${first.column} ` +
        `and again at line ${again.line}, column ${again.column} (JSON would silently keep only the last)`,
      { line: again.line, column: again.column },
    );
  }
  return value;
}

function v8Position(message: string): number | undefined {
  const match = /at position (\d+)/.exec(message);
  if (match?.[1] !== undefined) return Number(match[1]);
  return /end of JSON input/.test(message) ? Number.MAX_SAFE_INTEGER : undefined;
}

/** 1-based line and column of a character offset */
function lineColumn(text: string, offset: number): { line: number; column: number } {
  const end = Math.min(Math.max(offset, 0), text.length);
  let line = 1;
  let lineStart = 0;
  for (let i = 0; i < end; i++) {
    if (text.charCodeAt(i) === 10) {
      line++;
      lineStart = i + 1;
    }
  }
  return { line, column: end - lineStart + 1 };
}

// ---------------------------------------------------------------------------------------
// Validation

/** Validate an already-parsed document (JSON.parse or YAML output). */
export function parseTopology(input: unknown, file: string = DEFAULT_FILE_LABEL): Topology {
  if (!isRecord(input)) {
    throw invalid(file, '', `expected an object with "hashing" and "replicas", got ${describe(input)}`);
  }
  rejectUnknownFields(file, '', input, ROOT_FIELDS);

  const hashing = parseHashing(file, input['hashing']);

  const replicasField = childPath('', 'replicas');
  const replicasInput = input['replicas'];
  if (!isRecord(replicasInput)) {
    throw invalid(
      file,
      replicasField,
      `expected an object mapping replica names to { "nodes": [...] }, got ${describe(replicasInput)}`,
    );
  }
  const names = Object.keys(replicasInput);
  if (names.length === 0) {
    throw invalid(file, replicasField, 'expected at least one replica, got an empty object');
  }

  // Keyed by normalized address, across all replicas: a node belongs to one replica.
  const owners = new Map<string, string>();
  const replicas = new Map<string, ReplicaSpec>();
  for (const name of names) {
    replicas.set(name, parseReplica(file, hashing, name, replicasInput[name], owners));
  }
  return Object.freeze({ hashing, replicas });
}

function parseHashing(file: string, value: unknown): HashingProfile {
  if (value === undefined) return DEFAULT_HASHING;
  if (typeof value === 'string') {
    const profile = HASHING_PROFILES.find((candidate) => candidate === value);
    if (profile !== undefined) return profile;
  }
  const expected = HASHING_PROFILES.map((p) => JSON.stringify(p)).join(', ');
  const hint = typeof value === 'string' ? didYouMean(value, HASHING_PROFILES) : '';
  throw invalid(file, 'hashing', `expected one of ${expected}, got ${describe(value)}${hint}`);
}

function parseReplica(
  file: string,
  hashing: HashingProfile,
  name: string,
  value: unknown,
  owners: Map<string, string>,
): ReplicaSpec {
  const field = childPath('replicas', name);
  if (!REPLICA_NAME.test(name)) {
    throw invalid(
      file,
      field,
      `expected a replica name made of letters, digits, ".", "_" or "-", got ${describe(name)}`,
    );
  }
  if (!isRecord(value)) {
    throw invalid(file, field, `expected an object like { "nodes": [...] }, got ${describe(value)}`);
  }
  rejectUnknownFields(file, field, value, REPLICA_FIELDS);

  const nodesField = childPath(field, 'nodes');
  const nodesInput = value['nodes'];
  if (!Array.isArray(nodesInput)) {
    throw invalid(file, nodesField, `expected a non-empty array of nodes, got ${describe(nodesInput)}`);
  }
  if (nodesInput.length === 0) {
    throw invalid(file, nodesField, 'expected at least one node, got an empty array');
  }

  const nodes: NodeSpec[] = [];
  const ringNames = new Map<string, string>();
  nodesInput.forEach((nodeInput: unknown, index) => {
    const nodeField = childPath(nodesField, index);
    const node = parseNode(file, hashing, name, nodeField, nodeInput);

    const addressField = childPath(nodeField, 'address');
    const key = addressKey(node.host, node.port);
    const owner = owners.get(key);
    if (owner !== undefined) {
      throw invalid(
        file,
        addressField,
        `expected each node to be listed once, got ${describe(node.address)} which is already ${owner}` +
          (owner.startsWith(`${field}.`) ? '' : ' (a node belongs to one replica)'),
      );
    }
    owners.set(key, nodeField);

    // Two nodes hashed under one name would share every ring point, and the later one
    // would take all of the earlier one's keys.
    const sameRing = ringNames.get(node.ringName);
    if (sameRing !== undefined) {
      const given = isRecord(nodeInput) && nodeInput['ringName'] !== undefined;
      throw invalid(
        file,
        given ? childPath(nodeField, 'ringName') : nodeField,
        `expected a ring name of its own, got ${describe(node.ringName)} which ${sameRing} already hashes to` +
          (given ? '' : ` under ${JSON.stringify(hashing)} hashing (give one of them an explicit "ringName")`),
      );
    }
    ringNames.set(node.ringName, nodeField);

    nodes.push(node);
  });

  return Object.freeze({ name, nodes: Object.freeze(nodes) });
}

function parseNode(file: string, hashing: HashingProfile, replica: string, field: string, value: unknown): NodeSpec {
  if (!isRecord(value)) {
    throw invalid(file, field, `expected an object like { "address": "host:port" }, got ${describe(value)}`);
  }
  rejectUnknownFields(file, field, value, NODE_FIELDS);

  const addressField = childPath(field, 'address');
  const addressInput = value['address'];
  if (typeof addressInput !== 'string') {
    throw invalid(file, addressField, `expected "host:port" (${ADDRESS_FORMS}), got ${describe(addressInput)}`);
  }
  const parsed = checkAddress(addressInput);
  if ('problem' in parsed) {
    throw invalid(file, addressField, `expected "host:port", got ${describe(addressInput)} (${parsed.problem})`);
  }
  const { host, port } = parsed;

  const hostname = optionalName(file, childPath(field, 'hostname'), value['hostname']);
  const givenRingName = optionalName(file, childPath(field, 'ringName'), value['ringName']);
  const sidecar = optionalSidecar(file, childPath(field, 'sidecar'), value['sidecar']);

  if (hashing === 'evcache' && hostname === undefined && givenRingName === undefined) {
    throw invalid(
      file,
      childPath(field, 'hostname'),
      'expected a host name, because "evcache" hashing puts "hostname/ip:11211" on the ring ' +
        '(or give an explicit "ringName"), got nothing',
    );
  }

  let ringName: string;
  try {
    ringName = givenRingName ?? ringNameFor(hashing, { host, port, hostname });
  } catch (error) {
    // ketama.ts has its own rules; pin whatever it rejects to this node's entry.
    const reason = error instanceof Error ? error.message : String(error);
    throw invalid(file, field, `cannot compute the ring name: ${reason}`, {}, error);
  }

  const address = formatAddress(host, port);
  return Object.freeze({
    id: `${replica}/${address}`,
    replica,
    address,
    host,
    port,
    hostname,
    ringName,
    sidecar,
  });
}

function optionalName(file: string, field: string, value: unknown): string | undefined {
  if (value === undefined) return undefined;
  // Surrounding whitespace would be hashed too and move every key of the node.
  if (typeof value !== 'string' || value === '' || value.trim() !== value) {
    throw invalid(file, field, `expected a non-empty string without surrounding spaces, got ${describe(value)}`);
  }
  return value;
}

function optionalSidecar(file: string, field: string, value: unknown): string | undefined {
  if (value === undefined) return undefined;
  const expected = 'expected an http(s) URL such as "http://10.0.2.1:11299"';
  if (typeof value !== 'string') throw invalid(file, field, `${expected}, got ${describe(value)}`);
  let url: URL | undefined;
  try {
    url = new URL(value);
  } catch {
    url = undefined;
  }
  // "10.0.2.1:11299" either fails to parse or parses with "10.0.2.1:" as its scheme.
  if (
    url === undefined ||
    (url.protocol !== 'http:' && url.protocol !== 'https:') ||
    url.hostname === '' ||
    value.trim() !== value
  ) {
    throw invalid(file, field, `${expected}, got ${describe(value)}`);
  }
  return value;
}

function rejectUnknownFields(
  file: string,
  field: string,
  value: Readonly<Record<string, unknown>>,
  known: readonly string[],
): void {
  for (const key of Object.keys(value)) {
    if (known.includes(key)) continue;
    const expected = known.map((k) => JSON.stringify(k)).join(', ');
    throw invalid(
      file,
      childPath(field, key),
      `unknown field; expected ${known.length === 1 ? '' : 'one of '}${expected}${didYouMean(key, known)}`,
    );
  }
}

// ---------------------------------------------------------------------------------------
// Addresses

/** The address in a node id `<replica>/<address>`. */
export function addressOfNodeId(id: string): string {
  return id.slice(id.indexOf('/') + 1);
}

export function parseAddress(address: string): { host: string; port: number } {
  const parsed: ParsedAddress = typeof address === 'string' ? checkAddress(address) : { problem: 'not a string' };
  if ('problem' in parsed) {
    throw new CachewarmError(
      'INVALID_ARGUMENT',
      `invalid address ${describe(address)}: ${parsed.problem}; expected "host:port" (${ADDRESS_FORMS})`,
      { address: typeof address === 'string' ? address : String(address) },
    );
  }
  return parsed;
}

type ParsedAddress = { host: string; port: number } | { problem: string };

function checkAddress(address: string): ParsedAddress {
  if (address === '') return { problem: 'empty' };
  if (/\s/.test(address)) return { problem: 'contains whitespace' };

  let host: string;
  let portText: string;
  if (address.startsWith('[')) {
    const match = /^\[([^\]]*)\](?::(.*))?$/.exec(address);
    if (match === null) return { problem: 'malformed [IPv6] address' };
    host = match[1] ?? '';
    if (match[2] === undefined) return { problem: 'missing ":port"' };
    portText = match[2];
    if (!isIPv6(host)) return { problem: `${JSON.stringify(host)} is not an IPv6 address` };
  } else {
    const colon = address.indexOf(':');
    if (colon < 0) return { problem: 'missing ":port"' };
    if (address.indexOf(':', colon + 1) >= 0) {
      return { problem: 'IPv6 addresses go in brackets, e.g. "[::1]:11211"' };
    }
    host = address.slice(0, colon);
    portText = address.slice(colon + 1);
    const hostProblem = checkHost(host);
    if (hostProblem !== undefined) return { problem: hostProblem };
  }

  if (portText === '') return { problem: 'missing port number after ":"' };
  // No leading zeros: "011211" is far more likely a typo than a way of writing 11211.
  const port = /^[1-9]\d{0,4}$/.test(portText) ? Number(portText) : Number.NaN;
  if (!(port >= 1 && port <= 65535)) {
    return { problem: `port must be an integer from 1 to 65535, got ${JSON.stringify(portText)}` };
  }
  return { host, port };
}

function checkHost(host: string): string | undefined {
  if (host === '') return 'missing host before ":"';
  // All digits and dots can only mean IPv4; "10.0.0.256" must not pass as a host name.
  if (/^[\d.]+$/.test(host)) return isIPv4(host) ? undefined : `${JSON.stringify(host)} is not a valid IPv4 address`;
  const label = /^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$/;
  if (host.length > 253 || !host.split('.').every((part) => label.test(part))) {
    return `${JSON.stringify(host)} is not a valid host name`;
  }
  return undefined;
}

function formatAddress(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Two spellings of one node (host-name case, IPv6 zero compression) compare equal. */
function addressKey(host: string, port: number): string {
  let canonical = host.toLowerCase();
  if (host.includes(':')) {
    try {
      canonical = new URL(`http://[${host}]/`).hostname;
    } catch {
      // Zone ids ("fe80::1%eth0") are valid for net but not for URL; lowercase will do.
    }
  }
  return formatAddress(canonical, port);
}

// ---------------------------------------------------------------------------------------
// Lookups

/** The named replica; `field` (e.g. "--source") says where the name came from. */
export function replicaOf(topology: Topology, name: string, field?: string): ReplicaSpec {
  const replica = topology.replicas.get(name);
  if (replica !== undefined) return replica;
  const known = [...topology.replicas.keys()];
  throw new CachewarmError(
    'TOPOLOGY_INVALID',
    `${field === undefined ? '' : `${field}: `}unknown replica ${describe(name)}; the topology has ${listOf(known)}` +
      didYouMean(name, known),
    { replica: name, field, known: known.join(',') },
  );
}

/** The node with id "replica/address" (as NodeSpec.id). */
export function findNode(topology: Topology, id: string): NodeSpec {
  const slash = typeof id === 'string' ? id.indexOf('/') : -1;
  if (slash <= 0 || slash === id.length - 1) {
    throw new CachewarmError('INVALID_ARGUMENT', `node id ${describe(id)}: expected "replica/host:port"`, {
      id: String(id),
    });
  }
  const replicaName = id.slice(0, slash);
  const address = id.slice(slash + 1);
  const replica = replicaOf(topology, replicaName, `node ${JSON.stringify(id)}`);

  const wanted = keyOfWritten(address);
  const node = replica.nodes.find((candidate) => addressKey(candidate.host, candidate.port) === wanted);
  if (node !== undefined) return node;

  // A node moved to another replica is the likeliest cause of a stale id; say where it went.
  let elsewhere = '';
  for (const other of topology.replicas.values()) {
    const moved = other.nodes.find((candidate) => addressKey(candidate.host, candidate.port) === wanted);
    if (moved !== undefined) elsewhere = `; that address is in replica ${JSON.stringify(other.name)} as "${moved.id}"`;
  }
  throw new CachewarmError(
    'TOPOLOGY_INVALID',
    `node ${JSON.stringify(id)}: replica ${JSON.stringify(replicaName)} has no node at ${JSON.stringify(address)}; ` +
      `it has ${listOf(replica.nodes.map((n) => n.address))}${elsewhere}`,
    { id, replica: replicaName, address },
  );
}

function keyOfWritten(address: string): string {
  const parsed = checkAddress(address);
  return 'problem' in parsed ? address : addressKey(parsed.host, parsed.port);
}

// ---------------------------------------------------------------------------------------
// Field paths and messages

/** replicas are always bracketed (`replicas["zone-a"]`) so names with "-" or "." read the same as others */
function childPath(parent: string, key: string | number): string {
  if (typeof key === 'number') return `${parent}[${key}]`;
  if (parent === 'replicas' || !/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(key)) return `${parent}[${JSON.stringify(key)}]`;
  return parent === '' ? key : `${parent}.${key}`;
}

function invalid(
  file: string,
  field: string,
  message: string,
  extra: ErrorContext = {},
  cause?: unknown,
): CachewarmError {
  const where = field === '' ? ROOT_FIELD : field;
  return new CachewarmError(
    'TOPOLOGY_INVALID',
    `${file}: ${where}: ${message}`,
    { ...extra, file, field: where },
    cause === undefined ? undefined : { cause },
  );
}

function describe(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (value === null) return 'null';
  if (typeof value === 'string') {
    const shown = value.length > 80 ? `${value.slice(0, 77)}...` : value;
    return JSON.stringify(shown);
  }
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  if (Array.isArray(value)) return value.length === 0 ? 'an empty array' : 'an array';
  if (isRecord(value)) return Object.keys(value).length === 0 ? 'an empty object' : 'an object';
  return typeof value;
}

function listOf(items: readonly string[]): string {
  if (items.length === 0) return 'none';
  const shown = items.slice(0, 10).map((item) => JSON.stringify(item));
  return items.length > shown.length ? `${shown.join(', ')} and ${items.length - shown.length} more` : shown.join(', ');
}

function didYouMean(value: string, candidates: readonly string[]): string {
  let best: string | undefined;
  let bestDistance = Number.POSITIVE_INFINITY;
  let tied = false;
  for (const candidate of candidates) {
    const distance = editDistance(value.toLowerCase(), candidate.toLowerCase());
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
      tied = false;
    } else if (distance === bestDistance) {
      tied = true;
    }
  }
  // "zone-b" is as close to "zone-a" as to "zone-c"; naming either would mislead.
  return best !== undefined && !tied && bestDistance <= Math.max(1, Math.floor(best.length / 4))
    ? ` (did you mean ${JSON.stringify(best)}?)`
    : '';
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = (previous[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min((previous[j] ?? 0) + 1, (current[j - 1] ?? 0) + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length] ?? 0;
}

function errnoCode(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null || !('code' in error)) return undefined;
  return typeof error.code === 'string' ? error.code : undefined;
}

// ---------------------------------------------------------------------------------------
// JSON scanning: locates syntax errors V8 reports without a position, and duplicate keys
// JSON.parse silently resolves. Values still come from JSON.parse.

interface JsonScan {
  syntaxError?: { offset: number; message: string };
  duplicate?: { field: string; key: string; offset: number; firstOffset: number };
}

class JsonSyntaxError extends Error {
  constructor(
    readonly offset: number,
    message: string,
  ) {
    super(message);
  }
}

function scanJson(text: string): JsonScan {
  const result: JsonScan = {};
  let pos = 0;

  const fail = (message: string): never => {
    throw new JsonSyntaxError(pos, message);
  };
  const skipWhitespace = (): void => {
    while (pos < text.length && ' \t\n\r'.includes(text.charAt(pos))) pos++;
  };
  const expect = (char: string, what: string): void => {
    if (text.charAt(pos) !== char) fail(`expected ${what}, got ${found()}`);
    pos++;
  };
  const found = (): string => (pos >= text.length ? 'the end of the file' : JSON.stringify(text.charAt(pos)));

  const scanString = (): string => {
    const start = pos;
    pos++;
    for (;;) {
      if (pos >= text.length) fail('unterminated string');
      const code = text.charCodeAt(pos);
      if (code === 0x22) {
        pos++;
        return String(JSON.parse(text.slice(start, pos)));
      }
      if (code === 0x5c) {
        const escape = text.charAt(pos + 1);
        if ('"\\/bfnrt'.includes(escape) && escape !== '') pos += 2;
        else if (escape === 'u' && /^[0-9a-fA-F]{4}$/.test(text.slice(pos + 2, pos + 6))) pos += 6;
        else fail('invalid escape sequence in string');
      } else if (code < 0x20) {
        fail('control character in string (newlines and tabs must be escaped)');
      } else {
        pos++;
      }
    }
  };

  const scanValue = (path: string): void => {
    const char = text.charAt(pos);
    if (char === '{') return scanObject(path);
    if (char === '[') return scanArray(path);
    if (char === '"') {
      scanString();
      return;
    }
    for (const literal of ['true', 'false', 'null']) {
      if (text.startsWith(literal, pos)) {
        pos += literal.length;
        return;
      }
    }
    const number = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
    number.lastIndex = pos;
    if (number.test(text)) {
      pos = number.lastIndex;
      return;
    }
    fail(`expected a value, got ${found()}`);
  };

  const scanObject = (path: string): void => {
    pos++;
    skipWhitespace();
    if (text.charAt(pos) === '}') {
      pos++;
      return;
    }
    const seen = new Map<string, number>();
    for (;;) {
      if (text.charAt(pos) !== '"') fail(`expected a double-quoted property name, got ${found()}`);
      const keyOffset = pos;
      const key = scanString();
      const child = childPath(path, key);
      const firstOffset = seen.get(key);
      if (firstOffset !== undefined && result.duplicate === undefined) {
        result.duplicate = { field: child, key, offset: keyOffset, firstOffset };
      }
      seen.set(key, keyOffset);
      skipWhitespace();
      expect(':', '":" after a property name');
      skipWhitespace();
      scanValue(child);
      skipWhitespace();
      if (text.charAt(pos) === '}') {
        pos++;
        return;
      }
      expect(',', '"," or "}" after a property value');
      skipWhitespace();
    }
  };

  const scanArray = (path: string): void => {
    pos++;
    skipWhitespace();
    if (text.charAt(pos) === ']') {
      pos++;
      return;
    }
    for (let index = 0; ; index++) {
      scanValue(childPath(path, index));
      skipWhitespace();
      if (text.charAt(pos) === ']') {
        pos++;
        return;
      }
      expect(',', '"," or "]" after an array element');
      skipWhitespace();
    }
  };

  try {
    skipWhitespace();
    scanValue('');
    skipWhitespace();
    if (pos < text.length) fail(`expected the end of the file after the JSON value, got ${found()}`);
  } catch (error) {
    // A document nested deep enough to overflow the stack is not a topology anyway;
    // parseTopology will say what is wrong with it.
    if (error instanceof RangeError) return result;
    if (!(error instanceof JsonSyntaxError)) throw error;
    result.syntaxError = { offset: error.offset, message: error.message };
  }
  return result;
}
