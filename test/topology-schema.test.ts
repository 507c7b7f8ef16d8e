import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import Ajv2020 from 'ajv/dist/2020.js';
import { HASHING_PROFILES } from '../shared/ketama.js';
import { parseTopology } from '../shared/topology.js';

const schemaFile = fileURLToPath(new URL('../../topology.schema.json', import.meta.url));
const node = (address: string, more: Record<string, unknown> = {}): Record<string, unknown> => ({ address, ...more });
const one = (nodes: unknown[], more: Record<string, unknown> = {}): Record<string, unknown> => ({ replicas: { a: { nodes } }, ...more });

/** Documents both cachewarm and the schema accept. */
const VALID: Record<string, unknown> = {
  'the smallest topology': one([node('127.0.0.1:11211')]),
  'two replicas, every node field': {
    hashing: 'libmemcached',
    replicas: {
      'zone-a': { nodes: [node('10.0.0.1:11211', { hostname: 'cache-1', ringName: 'cache-1:11211', sidecar: 'http://10.0.0.1:11299' })] },
      'zone_b.2': { nodes: [node('cache-2.example.com:11211'), node('[::1]:11212', { sidecar: 'https://[::1]:8443/x' })] },
    },
  },
  'evcache hashing with host names': one([node('10.0.0.1:11211', { hostname: 'h1' }), node('10.0.0.2:11211', { ringName: 'h2/10.0.0.2:11211' })], { hashing: 'evcache' }),
  'the highest port': one([node('h:65535')]),
  'one that names its schema for editors': one([node('h:1')], { $schema: './node_modules/cachewarm/topology.schema.json' }),
};

/** Documents both reject. */
const INVALID: Record<string, unknown> = {
  'not an object': [],
  'no replicas': {},
  'no replica in replicas': { replicas: {} },
  'an unknown top-level field': one([node('h:1')], { version: 2 }),
  'an unknown hashing': one([node('h:1')], { hashing: 'ketama' }),
  'a replica name with a slash': { replicas: { 'a/b': { nodes: [node('h:1')] } } },
  'a replica with no nodes': one([]),
  'an unknown replica field': { replicas: { a: { nodes: [node('h:1')], weight: 1 } } },
  'an unknown node field': one([node('h:1', { weight: 2 })]),
  'a node without an address': one([{ hostname: 'h' }]),
  'an address without a port': one([node('10.0.0.1')]),
  'port 0': one([node('h:0')]),
  'port 65536': one([node('h:65536')]),
  'a port with a leading zero': one([node('h:011211')]),
  'IPv6 without brackets': one([node('::1:11211')]),
  'an address with a space': one([node('h :1')]),
  'a hostname with surrounding spaces': one([node('h:1', { hostname: ' h' })]),
  'an empty ringName': one([node('h:1', { ringName: '' })]),
  'a sidecar that is not http(s)': one([node('h:1', { sidecar: 'ftp://h:21' })]),
  'evcache hashing, a node with neither hostname nor ringName': one([node('10.0.0.1:11211')], { hashing: 'evcache' }),
};

/** What only cachewarm's checks catch: the schema cannot compare nodes with each other, nor parse IP addresses. */
const VALIDATOR_ONLY: Record<string, unknown> = {
  'a node listed in two replicas': { replicas: { a: { nodes: [node('h:1')] }, b: { nodes: [node('h:1')] } } },
  'two nodes with one ring name': one([node('h:1', { ringName: 'same' }), node('h:2', { ringName: 'same' })]),
  'an IPv4 address out of range': one([node('10.0.0.256:11211')]),
};

describe('topology.schema.json, for editors and CI', () => {
  const load = async (): Promise<(document: unknown) => boolean> => {
    const schema = JSON.parse(await readFile(schemaFile, 'utf8')) as { properties: { hashing: { enum: string[] } } };
    assert.deepEqual(schema.properties.hashing.enum, [...HASHING_PROFILES], 'the hashing profiles are the ones cachewarm knows');
    const validate = new Ajv2020.default({ strict: true, strictRequired: false, allErrors: true }).compile(schema);
    return (document) => validate(document) === true;
  };
  const acceptedByCachewarm = (document: unknown): boolean => {
    try {
      parseTopology(document, 'test.json');
      return true;
    } catch {
      return false;
    }
  };

  test('accepts what cachewarm accepts', async () => {
    const schema = await load();
    for (const [what, document] of Object.entries(VALID)) {
      assert.equal(acceptedByCachewarm(document), true, `cachewarm accepts ${what}`);
      assert.equal(schema(document), true, `the schema accepts ${what}`);
    }
  });

  test('rejects what cachewarm rejects, but for what only comparing nodes or parsing addresses can tell', async () => {
    const schema = await load();
    for (const [what, document] of Object.entries(INVALID)) {
      assert.equal(acceptedByCachewarm(document), false, `cachewarm rejects ${what}`);
      assert.equal(schema(document), false, `the schema rejects ${what}`);
    }
    for (const [what, document] of Object.entries(VALIDATOR_ONLY)) {
      assert.equal(acceptedByCachewarm(document), false, `cachewarm rejects ${what}`);
      assert.equal(schema(document), true, `the schema cannot tell ${what}`);
    }
  });
});
