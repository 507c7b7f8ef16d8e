import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CachewarmError, isCachewarmError } from '../shared/errors.js';
import {
  findNode,
  loadTopology,
  parseAddress,
  parseTopology,
  parseTopologyText,
  replicaOf,
  type Topology,
} from '../shared/topology.js';

const EXAMPLE = {
  hashing: 'spymemcached',
  replicas: {
    'zone-a': { nodes: [{ address: '10.0.0.1:11211' }, { address: '10.0.0.2:11211' }] },
    'zone-c': {
      nodes: [{ address: '10.0.2.1:11211', hostname: 'cache-7.example', sidecar: 'http://10.0.2.1:11299' }],
    },
  },
};

const EXAMPLE_YAML = `# same cluster as EXAMPLE
hashing: spymemcached
replicas:
  zone-a:
    nodes:
      - address: 10.0.0.1:11211
      - address: 10.0.0.2:11211
  zone-c:
    nodes:
      - address: 10.0.2.1:11211
        hostname: cache-7.example
        sidecar: http://10.0.2.1:11299
`;

/** a one-replica document ("zone-a") with these nodes */
function withNodes(nodes: unknown, extra: Record<string, unknown> = {}): unknown {
  return { ...extra, replicas: { 'zone-a': { nodes } } };
}

function catchError(run: () => unknown): unknown {
  try {
    run();
  } catch (error) {
    return error;
  }
  return assert.fail('expected an error, but the call returned normally');
}

/**
 * Asserts TOPOLOGY_INVALID with context.field === field, a message that names the field
 * (unless it is about the whole document) and contains every fragment.
 */
function assertInvalid(error: unknown, field: string, ...fragments: string[]): CachewarmError {
  assert.ok(isCachewarmError(error, 'TOPOLOGY_INVALID'), `expected TOPOLOGY_INVALID, got ${String(error)}`);
  assert.equal(error.context['field'], field);
  if (field !== '(root)') assert.ok(error.message.includes(`${field}:`), `message does not name ${field}: ${error.message}`);
  for (const fragment of fragments) {
    assert.ok(error.message.includes(fragment), `message lacks ${JSON.stringify(fragment)}: ${error.message}`);
  }
  return error;
}

function expectInvalid(input: unknown, field: string, ...fragments: string[]): CachewarmError {
  const error = assertInvalid(
    catchError(() => parseTopology(input, 'cluster.json')),
    field,
    'cluster.json: ',
    ...fragments,
  );
  assert.equal(error.context['file'], 'cluster.json');
  return error;
}

function addressOf(topology: Topology, replica: string): string[] {
  return replicaOf(topology, replica).nodes.map((node) => node.address);
}

describe('a valid topology', () => {
  test('parses every field of the example, keeping replica and node order', () => {
    const topology = parseTopology(EXAMPLE, 'cluster.json');
    assert.equal(topology.hashing, 'spymemcached');
    assert.deepEqual([...topology.replicas.keys()], ['zone-a', 'zone-c']);
    assert.deepEqual(addressOf(topology, 'zone-a'), ['10.0.0.1:11211', '10.0.0.2:11211']);

    const [cache7] = replicaOf(topology, 'zone-c').nodes;
    assert.deepEqual({ ...cache7 }, {
      id: 'zone-c/10.0.2.1:11211',
      replica: 'zone-c',
      address: '10.0.2.1:11211',
      host: '10.0.2.1',
      port: 11211,
      hostname: 'cache-7.example',
      ringName: 'cache-7.example/10.0.2.1:11211',
      sidecar: 'http://10.0.2.1:11299',
    });
  });

  test('hashing defaults to spymemcached, whose ring name is host:port without a hostname', () => {
    const topology = parseTopology(withNodes([{ address: '10.0.0.1:11211' }]));
    assert.equal(topology.hashing, 'spymemcached');
    const [node] = replicaOf(topology, 'zone-a').nodes;
    assert.equal(node?.ringName, '10.0.0.1:11211');
    assert.equal(node?.hostname, undefined);
    assert.equal(node?.sidecar, undefined);
  });

  test('evcache ring names are hostname/ip:11211 whatever the port', () => {
    const topology = parseTopology(
      withNodes([{ address: '10.0.0.1:11300', hostname: 'cache-1.example' }], { hashing: 'evcache' }),
    );
    assert.equal(topology.hashing, 'evcache');
    assert.equal(replicaOf(topology, 'zone-a').nodes[0]?.ringName, 'cache-1.example/10.0.0.1:11211');
  });

  test('libmemcached ring names drop the default port only', () => {
    const topology = parseTopology(
      withNodes([{ address: '10.0.0.1:11211' }, { address: '10.0.0.2:11212' }], { hashing: 'libmemcached' }),
    );
    assert.deepEqual(
      replicaOf(topology, 'zone-a').nodes.map((node) => node.ringName),
      ['10.0.0.1', '10.0.0.2:11212'],
    );
  });

  test('an explicit ringName is hashed verbatim under every profile', () => {
    for (const hashing of ['spymemcached', 'evcache', 'libmemcached']) {
      const topology = parseTopology(withNodes([{ address: '10.0.0.1:11211', ringName: 'legacy-1' }], { hashing }));
      assert.equal(replicaOf(topology, 'zone-a').nodes[0]?.ringName, 'legacy-1', hashing);
    }
  });

  test('addresses of every form split into host and port, IPv6 kept in brackets in the id', () => {
    const topology = parseTopology(
      withNodes([
        { address: '[2001:db8::1]:11211' },
        { address: 'cache-1.example:11212' },
        { address: '10.0.0.1:11213' },
      ]),
    );
    const nodes = replicaOf(topology, 'zone-a').nodes;
    assert.deepEqual(
      nodes.map((node) => [node.id, node.address, node.host, node.port]),
      [
        ['zone-a/[2001:db8::1]:11211', '[2001:db8::1]:11211', '2001:db8::1', 11211],
        ['zone-a/cache-1.example:11212', 'cache-1.example:11212', 'cache-1.example', 11212],
        ['zone-a/10.0.0.1:11213', '10.0.0.1:11213', '10.0.0.1', 11213],
      ],
    );
  });

  test('the result cannot be modified by accident', () => {
    const topology = parseTopology(EXAMPLE);
    const nodes = replicaOf(topology, 'zone-a').nodes;
    assert.ok(Object.isFrozen(nodes));
    assert.ok(Object.isFrozen(nodes[0]));
  });

  test('JSON and YAML texts of the same cluster give the same topology', () => {
    const fromJson = parseTopologyText(JSON.stringify(EXAMPLE, null, 2), 'cluster.json');
    const fromYaml = parseTopologyText(EXAMPLE_YAML, 'cluster.yaml');
    const fromYml = parseTopologyText(EXAMPLE_YAML, 'CLUSTER.YML');
    assert.deepEqual(fromYaml, fromJson);
    assert.deepEqual(fromYml, fromJson);
  });

  test('a UTF-8 byte order mark does not break JSON parsing', () => {
    const topology = parseTopologyText(`\uFEFF${JSON.stringify(EXAMPLE)}`, 'cluster.json');
    assert.equal(topology.replicas.size, 2);
  });
});

describe('mistakes in the document', () => {
  test('a document that is not an object', () => {
    expectInvalid([EXAMPLE], '(root)', 'got an array');
    expectInvalid(null, '(root)', 'got null');
  });

  test('an unknown hashing profile, with a suggestion for a near miss', () => {
    expectInvalid({ ...EXAMPLE, hashing: 'ketama' }, 'hashing', '"ketama"', '"spymemcached"', '"evcache"', '"libmemcached"');
    expectInvalid({ ...EXAMPLE, hashing: 'spymemcache' }, 'hashing', 'did you mean "spymemcached"');
    expectInvalid({ ...EXAMPLE, hashing: 1 }, 'hashing', 'got 1');
  });

  test('missing, empty or mistyped replicas', () => {
    expectInvalid({ hashing: 'spymemcached' }, 'replicas', 'got nothing');
    expectInvalid({ replicas: {} }, 'replicas', 'at least one replica', 'empty object');
    expectInvalid({ replicas: [{ nodes: [] }] }, 'replicas', 'got an array');
  });

  test('a replica name with characters outside [A-Za-z0-9._-]', () => {
    expectInvalid({ replicas: { 'zone a': { nodes: [{ address: '10.0.0.1:11211' }] } } }, 'replicas["zone a"]', '"zone a"');
    expectInvalid({ replicas: { 'eu/1': { nodes: [{ address: '10.0.0.1:11211' }] } } }, 'replicas["eu/1"]');
  });

  test('missing or empty node lists', () => {
    expectInvalid({ replicas: { 'zone-a': {} } }, 'replicas["zone-a"].nodes', 'got nothing');
    expectInvalid(withNodes([]), 'replicas["zone-a"].nodes', 'at least one node', 'empty array');
    expectInvalid(withNodes({ address: '10.0.0.1:11211' }), 'replicas["zone-a"].nodes', 'got an object');
  });

  test('a node written as a bare string', () => {
    expectInvalid(withNodes(['10.0.0.1:11211']), 'replicas["zone-a"].nodes[0]', '"10.0.0.1:11211"', '"address"');
  });

  test('a missing port gives the documented message', () => {
    const error = expectInvalid(
      withNodes([{ address: '10.0.0.2:11211' }, { address: '10.0.0.1' }]),
      'replicas["zone-a"].nodes[1].address',
    );
    assert.match(error.message, /^cluster\.json: replicas\["zone-a"\]\.nodes\[1\]\.address: expected "host:port", got "10\.0\.0\.1"/);
  });

  test('every malformed address form is rejected, naming the address', () => {
    const bad = [
      '',
      '10.0.0.1:',
      ':11211',
      '10.0.0.1:11211x',
      '10.0.0.1:-1',
      '10.0.0.1:1.5',
      '10.0.0.1:011211',
      '10.0.0.1 :11211',
      ' 10.0.0.1:11211',
      '10.0.0.256:11211',
      '10.0.0:11211',
      'cache_1..example:11211',
      'cache!1:11211',
      '::1:11211',
      '2001:db8::1:11211',
      '[::1]',
      '[::1]11211',
      '[zz::1]:11211',
      '[10.0.0.1]:11211',
      'memcached://10.0.0.1:11211',
    ];
    for (const address of bad) {
      expectInvalid(withNodes([{ address }]), 'replicas["zone-a"].nodes[0].address', JSON.stringify(address));
    }
  });

  test('IPv6 without brackets explains the bracket form', () => {
    expectInvalid(withNodes([{ address: '::1:11211' }]), 'replicas["zone-a"].nodes[0].address', '[::1]:11211');
  });

  test('ports 0 and 70000 are out of range', () => {
    for (const address of ['10.0.0.1:0', '10.0.0.1:70000', '[::1]:0', 'cache-1.example:65536']) {
      expectInvalid(withNodes([{ address }]), 'replicas["zone-a"].nodes[0].address', JSON.stringify(address), '1 to 65535');
    }
  });

  test('a missing or non-string address', () => {
    expectInvalid(withNodes([{ hostname: 'cache-1.example' }]), 'replicas["zone-a"].nodes[0].address', 'got nothing');
    expectInvalid(withNodes([{ address: 11211 }]), 'replicas["zone-a"].nodes[0].address', 'got 11211');
  });

  test('unknown fields at every level are errors, with a suggestion for typos', () => {
    expectInvalid({ ...EXAMPLE, hashng: 'evcache' }, 'hashng', 'unknown field', 'did you mean "hashing"');
    expectInvalid({ replicas: { 'zone-a': { node: [] } } }, 'replicas["zone-a"].node', 'unknown field', 'did you mean "nodes"');
    expectInvalid(
      withNodes([{ address: '10.0.0.1:11211', hostnme: 'cache-1.example' }]),
      'replicas["zone-a"].nodes[0].hostnme',
      'unknown field',
      'did you mean "hostname"',
    );
    expectInvalid(
      withNodes([{ address: '10.0.0.1:11211', weight: 2 }]),
      'replicas["zone-a"].nodes[0].weight',
      '"address", "hostname", "ringName", "sidecar"',
    );
  });

  test('hostname and ringName must be non-empty strings without surrounding spaces', () => {
    expectInvalid(withNodes([{ address: '10.0.0.1:11211', hostname: '' }]), 'replicas["zone-a"].nodes[0].hostname', 'got ""');
    expectInvalid(withNodes([{ address: '10.0.0.1:11211', hostname: 7 }]), 'replicas["zone-a"].nodes[0].hostname', 'got 7');
    expectInvalid(withNodes([{ address: '10.0.0.1:11211', ringName: ' a ' }]), 'replicas["zone-a"].nodes[0].ringName', '" a "');
  });

  test('sidecar must be an http(s) URL', () => {
    for (const sidecar of ['10.0.2.1:11299', 'localhost:11299', 'ftp://10.0.2.1/', 'http://', 5]) {
      expectInvalid(
        withNodes([{ address: '10.0.0.1:11211', sidecar }]),
        'replicas["zone-a"].nodes[0].sidecar',
        'http(s) URL',
      );
    }
    const ok = parseTopology(withNodes([{ address: '10.0.0.1:11211', sidecar: 'https://sidecar.example/warm' }]));
    assert.equal(replicaOf(ok, 'zone-a').nodes[0]?.sidecar, 'https://sidecar.example/warm');
  });

  test('the same node twice in a replica, however it is spelled', () => {
    const pairs = [
      ['10.0.0.1:11211', '10.0.0.1:11211'],
      ['cache-1.example:11211', 'CACHE-1.example:11211'],
      ['[::1]:11211', '[0:0:0:0:0:0:0:1]:11211'],
    ];
    for (const [first, second] of pairs) {
      expectInvalid(
        withNodes([{ address: first }, { address: second }]),
        'replicas["zone-a"].nodes[1].address',
        JSON.stringify(second),
        'replicas["zone-a"].nodes[0]',
      );
    }
  });

  test('the same node in two replicas', () => {
    expectInvalid(
      {
        replicas: {
          'zone-a': { nodes: [{ address: '10.0.0.1:11211' }] },
          'zone-c': { nodes: [{ address: '10.0.2.1:11211' }, { address: '10.0.0.1:11211' }] },
        },
      },
      'replicas["zone-c"].nodes[1].address',
      '"10.0.0.1:11211"',
      'replicas["zone-a"].nodes[0]',
      'one replica',
    );
  });

  test('evcache needs a hostname on every node unless ringName is given', () => {
    expectInvalid(
      withNodes([{ address: '10.0.0.1:11211', hostname: 'cache-1.example' }, { address: '10.0.0.2:11211' }], {
        hashing: 'evcache',
      }),
      'replicas["zone-a"].nodes[1].hostname',
      'evcache',
      'ringName',
    );
    const ok = parseTopology(withNodes([{ address: '10.0.0.2:11211', ringName: 'cache-2/10.0.0.2:11211' }], { hashing: 'evcache' }));
    assert.equal(replicaOf(ok, 'zone-a').nodes[0]?.ringName, 'cache-2/10.0.0.2:11211');
  });

  test('two nodes that hash to the same ring name', () => {
    // evcache writes every port as 11211, so two instances on one host collide.
    expectInvalid(
      withNodes(
        [
          { address: '10.0.0.1:11211', hostname: 'cache-1.example' },
          { address: '10.0.0.1:11212', hostname: 'cache-1.example' },
        ],
        { hashing: 'evcache' },
      ),
      'replicas["zone-a"].nodes[1]',
      '"cache-1.example/10.0.0.1:11211"',
      'replicas["zone-a"].nodes[0]',
    );
    expectInvalid(
      withNodes([
        { address: '10.0.0.1:11211', ringName: 'shared' },
        { address: '10.0.0.2:11211', ringName: 'shared' },
      ]),
      'replicas["zone-a"].nodes[1].ringName',
      '"shared"',
    );
  });
});

describe('topology text', () => {
  test('invalid JSON names the file, line and column', () => {
    const text = '{\n  "replicas": {\n    "zone-a": { "nodes": [ { "address": "10.0.0.1:11211" }, ] }\n  }\n}\n';
    const error = assertInvalid(catchError(() => parseTopologyText(text, 'cluster.json')), '(root)', 'cluster.json', 'line 3, column 61');
    assert.equal(error.context['line'], 3);
    assert.equal(error.context['column'], 61);
  });

  test('JSON errors V8 reports without a position still get one', () => {
    // "Unexpected token '}', ... is not valid JSON" carries no position in Node 20.
    assertInvalid(catchError(() => parseTopologyText('{\n  "hashing": }', 'c.json')), '(root)', 'c.json', 'line 2, column 14');
    // "Unexpected end of JSON input": the end of the text.
    assertInvalid(catchError(() => parseTopologyText('{\n  "hashing":', 'c.json')), '(root)', 'c.json', 'line 2, column 13');
    assertInvalid(catchError(() => parseTopologyText('  \n', 'c.json')), '(root)', 'c.json', 'empty');
  });

  test('a key repeated in JSON is an error, not a silent overwrite', () => {
    const text = [
      '{ "replicas": {',
      '  "zone-a": { "nodes": [ { "address": "10.0.0.1:11211" } ] },',
      '  "zone-a": { "nodes": [ { "address": "10.0.0.2:11211" } ] }',
      '} }',
    ].join('\n');
    const error = assertInvalid(
      catchError(() => parseTopologyText(text, 'cluster.json')),
      'replicas["zone-a"]',
      'cluster.json',
      'line 2, column 3',
      'line 3, column 3',
    );
    assert.equal(error.context['line'], 3);
  });

  test('invalid YAML names the file, line and column', () => {
    const text = 'replicas:\n  zone-a:\n    nodes: [ { address: 10.0.0.1:11211 }\n  zone-c: {}\n';
    const error = assertInvalid(catchError(() => parseTopologyText(text, 'cluster.yaml')), '(root)', 'cluster.yaml', 'invalid YAML at line');
    assert.equal(typeof error.context['line'], 'number');
  });

  test('YAML duplicate keys and unresolved aliases are errors', () => {
    const duplicate = 'replicas:\n  zone-a:\n    nodes: [ { address: "10.0.0.1:11211" } ]\n  zone-a:\n    nodes: []\n';
    assertInvalid(catchError(() => parseTopologyText(duplicate, 'c.yml')), '(root)', 'c.yml', 'line 4, column 3');
    assertInvalid(catchError(() => parseTopologyText('replicas: *nowhere\n', 'c.yml')), '(root)', 'c.yml', 'nowhere');
  });

  test('YAML mistakes name the same field paths as JSON ones', () => {
    const text = EXAMPLE_YAML.replace('address: 10.0.0.2:11211', 'address: 10.0.0.2');
    assertInvalid(
      catchError(() => parseTopologyText(text, 'cluster.yaml')),
      'replicas["zone-a"].nodes[1].address',
      'cluster.yaml: ',
      '"10.0.0.2"',
    );
  });
});

describe('loadTopology', () => {
  let dir = '';
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cachewarm-topology-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('reads JSON and YAML files by extension', async () => {
    const json = join(dir, 'cluster.json');
    const yaml = join(dir, 'cluster.yml');
    await writeFile(json, JSON.stringify(EXAMPLE));
    await writeFile(yaml, EXAMPLE_YAML);
    assert.deepEqual(await loadTopology(yaml), await loadTopology(json));
    assert.equal((await loadTopology(json)).replicas.size, 2);
  });

  test('errors in a file name its path', async () => {
    const path = join(dir, 'bad.json');
    await writeFile(path, JSON.stringify(withNodes([{ address: '10.0.0.1:0' }])));
    await assert.rejects(loadTopology(path), (error: unknown) => {
      assertInvalid(error, 'replicas["zone-a"].nodes[0].address', `${path}: `);
      return true;
    });
  });

  test('a missing file names the path', async () => {
    const path = join(dir, 'nope', 'cluster.json');
    await assert.rejects(loadTopology(path), (error: unknown) => {
      const invalid = assertInvalid(error, '(root)', path, 'not found');
      assert.equal(invalid.context['file'], path);
      return true;
    });
  });

  test('a directory is not a topology file', async () => {
    const path = join(dir, 'a-directory.json');
    await mkdir(path);
    await assert.rejects(loadTopology(path), (error: unknown) => {
      assertInvalid(error, '(root)', path, 'directory');
      return true;
    });
  });
});

describe('parseAddress', () => {
  test('splits the accepted forms', () => {
    assert.deepEqual(parseAddress('10.0.0.1:11211'), { host: '10.0.0.1', port: 11211 });
    assert.deepEqual(parseAddress('[::1]:11211'), { host: '::1', port: 11211 });
    assert.deepEqual(parseAddress('cache-7.example:1'), { host: 'cache-7.example', port: 1 });
    assert.deepEqual(parseAddress('localhost:65535'), { host: 'localhost', port: 65535 });
  });

  test('throws INVALID_ARGUMENT naming the bad address', () => {
    for (const address of ['10.0.0.1', '10.0.0.1:0', '10.0.0.1:70000', '::1:11211', 'a b:1']) {
      const error = catchError(() => parseAddress(address));
      assert.ok(isCachewarmError(error, 'INVALID_ARGUMENT'), `${address}: ${String(error)}`);
      assert.ok(error.message.includes(JSON.stringify(address)), error.message);
      assert.equal(error.context['address'], address);
    }
  });
});

describe('replicaOf and findNode', () => {
  const topology = parseTopology(EXAMPLE, 'cluster.json');

  test('replicaOf returns the named replica', () => {
    assert.equal(replicaOf(topology, 'zone-c').nodes[0]?.hostname, 'cache-7.example');
  });

  test('replicaOf names the unknown replica, where it came from, and the known ones', () => {
    const error = assertInvalid(
      catchError(() => replicaOf(topology, 'zone-b', '--source')),
      '--source',
      '"zone-b"',
      '"zone-a"',
      '"zone-c"',
    );
    assert.equal(error.context['replica'], 'zone-b');
    const unnamed = catchError(() => replicaOf(topology, 'zone-b'));
    assert.ok(isCachewarmError(unnamed, 'TOPOLOGY_INVALID'));
    assert.ok(unnamed.message.includes('"zone-b"'));
  });

  test('findNode finds a node by its id, however the address is spelled', () => {
    assert.equal(findNode(topology, 'zone-c/10.0.2.1:11211').hostname, 'cache-7.example');
    const named = parseTopology(withNodes([{ address: 'cache-1.example:11211' }, { address: '[::1]:11211' }]));
    assert.equal(findNode(named, 'zone-a/CACHE-1.example:11211').id, 'zone-a/cache-1.example:11211');
    assert.equal(findNode(named, 'zone-a/[0:0::1]:11211').id, 'zone-a/[::1]:11211');
    for (const node of replicaOf(topology, 'zone-a').nodes) assert.equal(findNode(topology, node.id), node);
  });

  test('findNode with an unknown replica lists the known ones', () => {
    const error = catchError(() => findNode(topology, 'zone-b/10.0.0.1:11211'));
    assert.ok(isCachewarmError(error, 'TOPOLOGY_INVALID'));
    assert.ok(error.message.includes('zone-b/10.0.0.1:11211'), error.message);
    assert.ok(error.message.includes('"zone-a", "zone-c"'), error.message);
  });

  test('findNode with an unknown address lists the replica nodes and where the address lives', () => {
    const missing = catchError(() => findNode(topology, 'zone-a/10.9.9.9:11211'));
    assert.ok(isCachewarmError(missing, 'TOPOLOGY_INVALID'));
    assert.ok(missing.message.includes('"10.9.9.9:11211"'), missing.message);
    assert.ok(missing.message.includes('"10.0.0.1:11211", "10.0.0.2:11211"'), missing.message);

    const moved = catchError(() => findNode(topology, 'zone-a/10.0.2.1:11211'));
    assert.ok(isCachewarmError(moved, 'TOPOLOGY_INVALID'));
    assert.ok(moved.message.includes('zone-c/10.0.2.1:11211'), moved.message);
  });

  test('findNode rejects ids that are not replica/address', () => {
    for (const id of ['10.0.0.1:11211', '/10.0.0.1:11211', 'zone-a/', '']) {
      const error = catchError(() => findNode(topology, id));
      assert.ok(isCachewarmError(error, 'INVALID_ARGUMENT'), `${JSON.stringify(id)}: ${String(error)}`);
      assert.ok(error.message.includes('replica/host:port'), error.message);
    }
  });
});
