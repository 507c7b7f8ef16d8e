import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { ReceiveMessageCommand } from '@aws-sdk/client-sqs';
import { MAX_SAMPLE_KEYS, type StartDumpRequest, parseStartDumpRequest, sampleOfStatus } from '../dumper/sidecar-api.js';
import { SidecarClient } from '../dumper/sidecar-client.js';
import { type Sidecar, createSidecar } from '../dumper/sidecar-server.js';
import { type DataItem, decodeDataChunk } from '../shared/chunk-format.js';
import type { ChunkMessage, TargetRing } from '../shared/chunk-message.js';
import { systemClock } from '../shared/clock.js';
import { CachewarmError } from '../shared/errors.js';
import { nodeDirectory } from '../shared/job-layout.js';
import { KetamaRing } from '../shared/ketama.js';
import type { WritableItem } from '../shared/memcached/meta-add.js';
import { sampleItems } from '../shared/sample-items.js';
import { type CliProcess, startCli } from './support/cli-process.js';
import { type Cluster, load, nowSeconds, startCluster } from './support/cluster.js';
import { type AwsClients, type Fauxqs, awsClients, createBucket, createQueue, startFauxqs } from './support/fauxqs.js';
import { httpWithToken } from './support/http.js';
import { FakeClock } from './support/fake-clock.js';
import { freePort } from './support/memcached.js';
import { waitFor } from './support/wait.js';

const TOKEN = 'sidecar-test-token-0123456789abcdef';
const ITEMS = 20_000;
const CHUNK_BYTES = 64 << 10;

/** The replica the populators would write: only named in messages, never contacted here. */
const TARGET: TargetRing = {
  replica: 'zone-b',
  hashing: 'spymemcached',
  nodes: ['10.0.1.1:11211', '10.0.1.2:11211', '10.0.1.3:11211'].map((address) => ({ address, ringName: address })),
};

/** One raw request, with the token unless told otherwise. */
const http = httpWithToken(TOKEN);

describe('the dumper sidecar', () => {
  let fauxqs: Fauxqs;
  let aws: AwsClients;
  let cluster: Cluster;
  let memcached: { host: string; port: number; address: string };
  let nodeId: string;
  let items: WritableItem[];
  let sidecar: Sidecar;
  let url: string;
  let client: SidecarClient;
  const events: Record<string, unknown>[] = [];
  let jobs = 0;

  before(async () => {
    fauxqs = await startFauxqs();
    aws = awsClients(fauxqs.endpoint);
    cluster = await startCluster({ 'zone-a': 1 });
    const node = cluster.topology.replicas.get('zone-a')?.nodes[0];
    assert.ok(node);
    memcached = { host: node.host, port: node.port, address: node.address };
    nodeId = node.id;
    items = sampleItems({ count: ITEMS, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'sidecar' });
    await load(cluster.topology, 'zone-a', items);
    sidecar = createSidecar({
      memcached,
      token: TOKEN,
      s3: aws.s3,
      sqs: aws.sqs,
      clock: systemClock,
      log: (event) => events.push(event),
    });
    ({ url } = await sidecar.listen('127.0.0.1', 0));
    client = new SidecarClient({ baseUrl: url, token: TOKEN });
  });

  after(async () => {
    await sidecar?.close();
    aws?.destroy();
    await fauxqs?.stop();
    await cluster?.stop();
  });

  /** A start request for a new job, with a bucket and a queue of its own. */
  async function newJob(more: Partial<StartDumpRequest> = {}): Promise<StartDumpRequest> {
    const n = ++jobs;
    return {
      jobId: `job-${n}`,
      node: nodeId,
      bucket: await createBucket(aws.s3, `chunks-${n}`),
      prefix: 'warm/prod',
      queueUrl: await createQueue(aws.sqs, `chunks-${n}`),
      chunkSizeBytes: CHUNK_BYTES,
      target: TARGET,
      ...more,
    };
  }

  /**
   * Polls the job until it is in `state`; fails if it ends otherwise or not in time. `tick`
   * runs between two polls (a sidecar on a FakeClock moves its clock there).
   */
  async function waitForState(jobId: string, state: string, timeoutMs = 60_000, sidecarClient = client, tick?: () => Promise<void>) {
    let last: unknown;
    return waitFor(
      async () => {
        const status = await sidecarClient.status(jobId);
        assert.ok(status, `the sidecar knows job ${jobId}`);
        last = status;
        if (status.state === state) return status;
        assert.ok(status.state === 'running', `job ${jobId} ended ${status.state}, not ${state}: ${JSON.stringify(status.error)}`);
        await tick?.();
        return undefined;
      },
      { timeoutMs, intervalMs: 100, what: `job ${jobId} ${state}`, detail: () => last },
    );
  }

  /** A sidecar of its own on the same memcached, on a FakeClock the test moves: rate limits then wait on it, not on real time. */
  async function sidecarOnFakeClock() {
    const clock = new FakeClock(Date.now());
    const own = createSidecar({ memcached, token: TOKEN, s3: aws.s3, sqs: aws.sqs, clock });
    const { url: ownUrl } = await own.listen('127.0.0.1', 0);
    return { clock, own, client: new SidecarClient({ baseUrl: ownUrl, token: TOKEN }), url: ownUrl };
  }

  /** The data chunks in the job's bucket, and their bytes, as S3 counts them. */
  async function uploaded(request: StartDumpRequest): Promise<{ chunks: number; bytes: number }> {
    const out = await aws.s3.send(new ListObjectsV2Command({ Bucket: request.bucket }));
    const chunks = (out.Contents ?? []).filter((o) => /\/data-[^/]+\.chunk$/.test(o.Key ?? ''));
    return { chunks: chunks.length, bytes: chunks.reduce((sum, o) => sum + (o.Size ?? 0), 0) };
  }

  /** Every object key in the bucket, as S3 has it. */
  async function objectKeys(bucket: string): Promise<string[]> {
    const out = await aws.s3.send(new ListObjectsV2Command({ Bucket: bucket }));
    return (out.Contents ?? []).map((o) => o.Key as string).sort();
  }

  async function dataChunks(request: StartDumpRequest): Promise<string[]> {
    return (await objectKeys(request.bucket)).filter((key) => /\/data-[^/]+\.chunk$/.test(key));
  }

  /** The items in the given data chunks, by key (a key listed twice by the live walk appears once). */
  async function itemsIn(bucket: string, keys: readonly string[]): Promise<Map<string, DataItem>> {
    const found = new Map<string, DataItem>();
    for (const key of keys) {
      const out = await aws.s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
      const chunk = Buffer.from(await (out.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray());
      for (const item of decodeDataChunk(chunk, key)) found.set(item.key.toString('latin1'), item);
    }
    return found;
  }

  /** Takes every message off the queue. */
  async function drain(queueUrl: string): Promise<ChunkMessage[]> {
    const messages: ChunkMessage[] = [];
    for (;;) {
      const out = await aws.sqs.send(new ReceiveMessageCommand({ QueueUrl: queueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 0, VisibilityTimeout: 300 }));
      if (!out.Messages?.length) return messages;
      for (const m of out.Messages) messages.push(JSON.parse(m.Body ?? '') as ChunkMessage);
    }
  }

  function loadedKeys(filter: (item: WritableItem) => boolean = () => true): string[] {
    return items.filter(filter).map((i) => i.key.toString('latin1')).sort();
  }

  test('health needs no token; every other route answers 401 with WWW-Authenticate: Bearer without the right one', async () => {
    const health = await http(url, 'GET', '/healthz', { token: null });
    assert.equal(health.status, 200);
    assert.deepEqual(health.body, { ok: true, memcached: 'up', dump: null });

    for (const [method, pathname] of [['GET', '/v1/dumps/x'], ['DELETE', '/v1/dumps/x'], ['POST', '/v1/dumps'], ['GET', '/metrics']] as const) {
      for (const token of [null, 'wrong-token', `${TOKEN}x`, TOKEN.slice(0, -1)]) {
        const answer = await http(url, method, pathname, { token, ...(method === 'POST' && { body: {} }) });
        assert.equal(answer.status, 401, `${method} ${pathname} with token ${token}`);
        assert.match(answer.headers.get('www-authenticate') ?? '', /^Bearer/);
        assert.equal(answer.body.error.code, 'UNAUTHORIZED');
        assert.ok(!answer.text.includes(TOKEN), 'the token is never echoed');
      }
    }
    const lowercase = await fetch(`${url}/v1/dumps/x`, { headers: { authorization: `bearer ${TOKEN}` } });
    assert.equal(lowercase.status, 404, 'the scheme is case-insensitive; the job is unknown');

    const refused = new SidecarClient({ baseUrl: url, token: 'wrong-token' });
    await assert.rejects(refused.status('x'), (error: unknown) => {
      assert.ok(error instanceof CachewarmError);
      assert.equal(error.code, 'INVALID_ARGUMENT');
      assert.match(error.message, /^sidecar http:\/\/127\.0\.0\.1:\d+\/v1\/dumps\/x: token refused/);
      return true;
    });
    assert.deepEqual(await refused.health(), { ok: true, memcached: 'up', dump: null });
  });

  test('a started dump of a loaded node finishes: its data chunks under <prefix>/<job>/<node dir>/, one message each, exactly the loaded items', async () => {
    const request = await newJob();
    const { started, status } = await client.start(request);
    assert.equal(started, true);
    assert.equal(status.state, 'running');
    assert.equal(status.jobId, request.jobId);
    assert.equal(status.node, nodeId);

    const finished = await waitForState(request.jobId, 'finished');
    assert.equal(finished.counters.read, ITEMS);
    assert.equal(finished.counters.expired + finished.counters.gone + finished.counters.filtered, 0);
    assert.ok(finished.finishedAt && Date.parse(finished.finishedAt) >= Date.parse(finished.startedAt));

    const directory = `warm/prod/${request.jobId}/${nodeDirectory(nodeId)}/`;
    const chunks = await dataChunks(request);
    assert.equal(chunks.length, finished.counters.dataChunks);
    assert.ok(chunks.length >= 20, `${ITEMS} items of 100 bytes make dozens of 64 KiB chunks (got ${chunks.length})`);
    for (const key of chunks) assert.ok(key.startsWith(directory), `${key} is under ${directory}`);

    const messages = await drain(request.queueUrl);
    assert.equal(messages.length, chunks.length, 'one message per data chunk');
    for (const message of messages) {
      assert.deepEqual(message.store, { bucket: request.bucket, prefix: 'warm/prod' });
      assert.equal(message.jobId, request.jobId);
      assert.equal(message.source, nodeId);
      assert.deepEqual(message.target.nodes, TARGET.nodes);
    }
    assert.deepEqual(messages.map((m) => `warm/prod/${m.chunk.name}`).sort(), chunks);

    const dumped = await itemsIn(request.bucket, chunks);
    assert.deepEqual([...dumped.keys()].sort(), loadedKeys());
    for (const item of items) {
      const got = dumped.get(item.key.toString('latin1'));
      assert.ok(got?.value.equals(item.value), 'the value is byte-exact');
      assert.equal(got?.flags, item.flags);
    }

    // A controller re-sending its start (after its own restart) gets the status, not a second dump.
    const again = await client.start(request);
    assert.equal(again.started, false);
    assert.equal(again.status.state, 'finished');
    const raw = await http(url, 'POST', '/v1/dumps', { body: request });
    assert.equal(raw.status, 200);
    assert.equal((await dataChunks(request)).length, chunks.length, 'nothing was dumped again');

    assert.ok(events.some((e) => e['event'] === 'dump-finished' && e['jobId'] === request.jobId));
    assert.ok(!JSON.stringify(events).includes(TOKEN), 'the token is never logged');
  });

  test('asked for a sample of what it lists, the finished dump\'s status carries that many listed keys, each with its expiry and size', async () => {
    const request = await newJob({ sampleKeys: 500 });
    const { status } = await client.start(request);
    assert.equal(status.listedSample, undefined, 'no sample while the dump runs');

    const finished = await waitForState(request.jobId, 'finished');
    const sample = sampleOfStatus(finished.listedSample, nodeId);
    assert.ok(sample, 'a well-formed sample');
    assert.equal(sample.listed, ITEMS);
    assert.equal(sample.keys.length, 500);
    const byKey = new Map(items.map((item) => [item.key.toString('latin1'), item]));
    assert.equal(new Set(sample.keys.map((k) => k.key.toString('latin1'))).size, 500, 'no key twice');
    for (const { key, exptime, sizeBytes, source } of sample.keys) {
      const item = byKey.get(key.toString('latin1'));
      assert.ok(item, `${key.toString('latin1')} is a loaded key`);
      // memcached keeps expiries relative to its own start: the absolute one read back may be a second off.
      assert.ok(item.exptime === 0 ? exptime === 0 : Math.abs(exptime - item.exptime) <= 1, `exptime ${exptime}, loaded ${item.exptime}`);
      assert.ok(sizeBytes > item.value.length, 'the size the crawler reports counts the item header too');
      assert.equal(source, nodeId);
    }
  });

  test('metrics show each job\'s counters, labelled job_id and node, the running gauge, the build and the process', async () => {
    const answer = await http(url, 'GET', '/metrics');
    assert.equal(answer.status, 200);
    assert.match(answer.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    const labels = `{job_id="job-1",node="${nodeId}"}`;
    const lines = answer.text.split('\n');
    for (const [name, value] of [
      ['cachewarm_dump_keys_listed_total', undefined],
      ['cachewarm_dump_items_read_total', ITEMS],
      ['cachewarm_dump_bytes_read_total', ITEMS * 100],
      ['cachewarm_dump_data_chunks_total', undefined],
      ['cachewarm_dump_items_expired_total', 0],
      ['cachewarm_dump_items_gone_total', 0],
      ['cachewarm_dump_items_filtered_total', 0],
      ['cachewarm_dump_items_unsupported_total', 0],
    ] as const) {
      assert.ok(lines.includes(`# TYPE ${name} counter`), `${name} is a counter`);
      const sample = lines.find((l) => l.startsWith(`${name}${labels} `));
      assert.ok(sample, `${name}${labels} is there`);
      if (value !== undefined) assert.equal(Number(sample.split(' ')[1]), value, name);
    }
    assert.ok(Number(lines.find((l) => l.startsWith('cachewarm_dump_keys_listed_total{'))?.split(' ')[1]) >= ITEMS);
    assert.ok(lines.includes('# TYPE cachewarm_dump_running gauge'));
    assert.ok(lines.includes('cachewarm_dump_running 0'));
    assert.ok(lines.includes('cachewarm_dumps_ended_total{state="cancelled"} 0'), 'present from start-up, at 0');
    assert.ok(Number(lines.find((l) => l.startsWith('cachewarm_dumps_ended_total{state="finished"}'))?.split(' ')[1]) >= 1);
    const rss = Number(lines.find((l) => l.startsWith('process_resident_memory_bytes '))?.split(' ')[1]);
    assert.ok(rss > 10 << 20, `resident memory is reported (${rss})`);
    const { version } = JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    assert.ok(lines.includes(`cachewarm_build_info{version="${version}",nodejs_version="${process.version}"} 1`), 'the build is named');
    for (const name of ['process_cpu_seconds_total', 'process_start_time_seconds']) assert.ok(Number(lines.find((l) => l.startsWith(`${name} `))?.split(' ')[1]) > 0, name);
  });

  test('a metrics listener of its own serves /metrics without the token, and nothing else; the API keeps its token', async () => {
    const { url: metricsUrl } = await sidecar.listenMetrics('127.0.0.1', 0);
    const scraped = await fetch(`${metricsUrl}/metrics`);
    assert.equal(scraped.status, 200);
    assert.match(await scraped.text(), /^cachewarm_build_info\{version="[^"]+",nodejs_version="v\d+/m);
    assert.equal((await fetch(`${metricsUrl}/v1/dumps`)).status, 404);
    assert.equal((await fetch(`${url}/metrics`)).status, 401);
  });

  test('one crawl at a time: another job is refused with 409 NODE_BUSY naming the running one; the same job gets 200', async () => {
    const slow = await newJob({ maxItemsPerSecond: 300 });
    assert.equal((await client.start(slow)).started, true);
    const other = await newJob();

    const raw = await http(url, 'POST', '/v1/dumps', { body: other });
    assert.equal(raw.status, 409);
    assert.equal(raw.body.error.code, 'NODE_BUSY');
    assert.match(raw.body.error.message, new RegExp(`job ${slow.jobId} is running`));
    await assert.rejects(client.start(other), (error: unknown) => {
      assert.ok(error instanceof CachewarmError);
      assert.equal(error.code, 'NODE_BUSY');
      assert.match(error.message, new RegExp(`^sidecar ${url}/v1/dumps: job ${slow.jobId} is running on this node`));
      return true;
    });

    const same = await client.start(slow);
    assert.equal(same.started, false);
    assert.equal(same.status.state, 'running');
    assert.equal((await http(url, 'POST', '/v1/dumps', { body: slow })).status, 200);

    const moved = await http(url, 'POST', '/v1/dumps', { body: { ...slow, bucket: other.bucket } });
    assert.equal(moved.status, 400, 'the same job id elsewhere is a mistake, not a re-send');
    assert.equal(moved.body.error.field, 'bucket');

    assert.equal((await http(url, 'GET', '/metrics')).text.includes('\ncachewarm_dump_running 1\n'), true);
    assert.deepEqual(await client.health(), { ok: true, memcached: 'up', dump: 'running' });

    const cancelled = await client.cancel(slow.jobId);
    assert.equal(cancelled?.state, 'cancelled');
    assert.equal(cancelled?.error?.code, 'ABORTED');
  });

  test('cancel stops a running dump; started again, the job runs to the end and every item is in its chunks', async () => {
    // Reads at 300 items/s by a clock the test moves: the dump reads only as far as the test
    // lets it (no source guard: its pace follows the node, not the test's clock).
    const { clock, own, client: ownClient, url: ownUrl } = await sidecarOnFakeClock();
    try {
      const request = await newJob({ maxItemsPerSecond: 300, protectSource: 'off' });
      await ownClient.start(request);
      // At most 10 s of clock: at most 30 + 3,000 items can be read, far from all 20,000.
      let moved = 0;
      await waitFor(
        async () => {
          if (((await ownClient.status(request.jobId))?.counters.read ?? 0) > 0) return true;
          if (moved < 10_000) {
            await clock.advance(500);
            moved += 500;
          }
          return false;
        },
        { what: 'the first items read' },
      );

      const answer = await http(ownUrl, 'DELETE', `/v1/dumps/${request.jobId}`);
      assert.equal(answer.status, 200);
      assert.equal(answer.body.state, 'cancelled');
      assert.ok(answer.body.finishedAt);
      const read = answer.body.counters.read as number;
      assert.ok(read > 0 && read < ITEMS, `stopped part way (${read} read)`);
      // Nothing of the dump waits on the clock any more: time that would let it read thousands more goes by.
      assert.equal(clock.pendingSleeps, 0, 'no read left waiting for its turn');
      await clock.advance(60_000);
      assert.equal((await ownClient.status(request.jobId))?.counters.read, read, 'nothing is read after the cancel');
      assert.equal((await ownClient.cancel(request.jobId))?.state, 'cancelled', 'cancelling again is harmless');

      // A cancelled (or failed) job is started again: dumpNode picks up from what the store holds.
      const { maxItemsPerSecond: _slow, ...unlimited } = request;
      const again = await ownClient.start(unlimited);
      assert.equal(again.started, true);
      await waitForState(request.jobId, 'finished', 60_000, ownClient, () => clock.advance(200));
      const dumped = await itemsIn(request.bucket, await dataChunks(request));
      assert.deepEqual([...dumped.keys()].sort(), loadedKeys());
    } finally {
      await own.close();
    }
  });

  test('the bytes/s limit holds the uploads back: never more uploaded than the rate allows by the clock, and uploads go on as it moves', async () => {
    const { clock, own, client: ownClient } = await sidecarOnFakeClock();
    try {
      const bytesPerSecond = 16 << 10;
      const burst = bytesPerSecond / 10; // the token bucket's default
      const request = await newJob({ maxBytesPerSecond: bytesPerSecond, protectSource: 'off' });
      const startedAt = clock.now();
      await ownClient.start(request);
      // (+1: the bucket's floating-point refill may grant a hair early.)
      const allowed = (): number => burst + (bytesPerSecond * (clock.now() - startedAt)) / 1000 + 1;

      // Whatever the machine's speed, S3 never holds more than the clock allowed by then.
      assert.deepEqual(await uploaded(request), { chunks: 0, bytes: 0 }, 'a 64 KiB chunk waits ~4 s of clock for its turn');
      const seen: { chunks: number; bytes: number }[] = [];
      await waitFor(
        async () => {
          const now = await uploaded(request);
          assert.ok(now.bytes <= allowed(), `${now.bytes} bytes uploaded after ${clock.now() - startedAt} ms of clock, ${allowed()} allowed`);
          seen.push(now);
          if (now.chunks >= 2) return true;
          await clock.advance(1_000);
          return false;
        },
        { what: 'two chunks uploaded as the clock moves', detail: () => seen.slice(-5) },
      );
      const status = await ownClient.status(request.jobId);
      assert.equal(status?.state, 'running', `${ITEMS} items of 100 bytes at 16 KiB/s take minutes of clock`);
      assert.ok((status?.counters.read ?? 0) < ITEMS, 'the reads wait for the uploads');
      assert.equal((await ownClient.cancel(request.jobId))?.state, 'cancelled');
    } finally {
      await own.close();
    }
  });

  test('with a key filter, only the keys the ring places on the kept node are copied', async () => {
    const kept = TARGET.nodes[1]?.address as string;
    const request = await newJob({
      target: { ...TARGET, writeOnly: [kept] },
      keyFilter: { nodes: TARGET.nodes, hashing: 'spymemcached', keep: [kept] },
    });
    await client.start(request);
    const finished = await waitForState(request.jobId, 'finished');
    const ring = new KetamaRing(TARGET.nodes, (n) => n.ringName);
    const expected = loadedKeys((item) => ring.nodeFor(item.key).address === kept);
    assert.ok(expected.length > ITEMS / 5 && expected.length < ITEMS / 2, 'the kept node holds about a third');
    const dumped = await itemsIn(request.bucket, await dataChunks(request));
    assert.deepEqual([...dumped.keys()].sort(), expected);
    assert.equal(finished.counters.read, expected.length);
    assert.equal(finished.counters.filtered, ITEMS - expected.length);
  });

  test('a bad start request is refused with 400 naming the field; the client refuses it before sending', async () => {
    const good = await newJob();
    const cases: [unknown, string][] = [
      [{ ...good, chunkSizeBytes: undefined }, 'chunkSizeBytes'],
      [{ ...good, chunkSizeBytes: 100 }, 'chunkSizeBytes'],
      [{ ...good, chunkSizeBytes: 128 << 20 }, 'chunkSizeBytes'], // over this sidecar's 64 MiB budget
      [{ ...good, jobId: '../etc' }, 'jobId'],
      [{ ...good, queueUrl: 'not a url' }, 'queueUrl'],
      [{ ...good, maxItemsPerSecond: 0 }, 'maxItemsPerSecond'],
      [{ ...good, maxBytesPerSecond: 'fast' }, 'maxBytesPerSecond'],
      [{ ...good, sse: { type: 'rot13' } }, 'sse.type'],
      [{ ...good, target: { ...TARGET, hashing: 'md5' } }, 'target.hashing'],
      [{ ...good, target: { ...TARGET, nodes: [{ address: '10.0.1.1:11211' }] } }, 'target.nodes[0].ringName'],
      [{ ...good, keyFilter: { nodes: TARGET.nodes, hashing: 'spymemcached', keep: ['10.9.9.9:11211'] } }, 'keyFilter.keep[0]'],
      [{ ...good, maxOps: 5 }, 'maxOps'],
      [{ ...good, alsoTo: [] }, 'alsoTo'],
      [{ ...good, alsoTo: [{ queueUrl: good.queueUrl, target: TARGET }] }, 'alsoTo[0].queueUrl'],
      [{ ...good, alsoTo: [{ queueUrl: 'http://127.0.0.1:1/q2', target: { ...TARGET, nodes: [] } }] }, 'alsoTo[0].target.nodes'],
      [{ ...good, alsoTo: [{ queueUrl: 'http://127.0.0.1:1/q2', target: TARGET, colour: 'x' }] }, 'alsoTo[0].colour'],
      [{ ...good, alsoTo: [{ queueUrl: 'http://127.0.0.1:1/q2', target: TARGET, jobId: '../x' }] }, 'alsoTo[0].jobId'],
      // One standing queue takes several targets' messages, but each target's once.
      [{ ...good, targetJobId: 'j1', alsoTo: [{ queueUrl: good.queueUrl, target: TARGET, jobId: 'j1' }] }, 'alsoTo[0].queueUrl'],
      [{ ...good, targetJobId: '../j1' }, 'targetJobId'],
      [{ ...good, standingQueue: 'yes' }, 'standingQueue'],
      [{ ...good, sampleKeys: -1 }, 'sampleKeys'],
      [{ ...good, sampleKeys: 2.5 }, 'sampleKeys'],
      [{ ...good, sampleKeys: MAX_SAMPLE_KEYS + 1 }, 'sampleKeys'],
      [[good], '(body)'],
    ];
    for (const [body, field] of cases) {
      const answer = await http(url, 'POST', '/v1/dumps', { body });
      assert.equal(answer.status, 400, `${field}: ${answer.text}`);
      assert.equal(answer.body.error.code, 'INVALID_ARGUMENT');
      assert.equal(answer.body.error.field, field);
      assert.ok(answer.body.error.message.includes(field), `the message names ${field}: ${answer.body.error.message}`);
    }
    const notJson = await http(url, 'POST', '/v1/dumps', { rawBody: '{"jobId": ' });
    assert.equal(notJson.status, 400);
    assert.match(notJson.body.error.message, /not JSON/);

    const huge = await http(url, 'POST', '/v1/dumps', { rawBody: JSON.stringify({ ...good, pad: 'x'.repeat(2 << 20) }) });
    assert.equal(huge.status, 413);
    assert.equal(huge.body.error.code, 'PAYLOAD_TOO_LARGE');

    await assert.rejects(client.start({ ...good, chunkSizeBytes: 1 }), (error: unknown) => {
      assert.ok(error instanceof CachewarmError);
      assert.equal(error.code, 'INVALID_ARGUMENT');
      assert.equal(error.context['field'], 'chunkSizeBytes');
      return true;
    });
    assert.equal(await client.status(good.jobId), undefined, 'nothing was started');
    assert.deepEqual(parseStartDumpRequest(JSON.parse(JSON.stringify(good))), good, 'a good request passes unchanged');
    const fanned = { ...good, alsoTo: [{ queueUrl: 'http://127.0.0.1:1/q2', target: TARGET }] };
    assert.deepEqual(parseStartDumpRequest(JSON.parse(JSON.stringify(fanned))), fanned, 'so does one announcing on another queue too');
    const standing = { ...good, standingQueue: true, targetJobId: 'j1', alsoTo: [{ queueUrl: good.queueUrl, target: TARGET, jobId: 'j2' }] };
    assert.deepEqual(parseStartDumpRequest(JSON.parse(JSON.stringify(standing))), standing, 'and one announcing for two jobs on one standing queue');
  });

  test('unknown paths answer 404, wrong methods 405 with Allow, unknown jobs 404; all as JSON', async () => {
    const unknownPath = await http(url, 'GET', '/v2/things');
    assert.equal(unknownPath.status, 404);
    assert.equal(unknownPath.body.error.code, 'NOT_FOUND');
    const wrongMethod = await http(url, 'PUT', '/v1/dumps/job-1', { body: {} });
    assert.equal(wrongMethod.status, 405);
    assert.equal(wrongMethod.headers.get('allow'), 'GET, DELETE');
    assert.equal((await http(url, 'GET', '/v1/dumps')).status, 405);
    assert.equal((await http(url, 'POST', '/healthz', { token: null })).status, 405);
    const unknownJob = await http(url, 'GET', '/v1/dumps/no-such-job');
    assert.equal(unknownJob.status, 404);
    assert.match(unknownJob.body.error.message, /no-such-job/);
    assert.equal(await client.status('no-such-job'), undefined);
    assert.equal(await client.cancel('no-such-job'), undefined);
  });

  test('health answers 503 with memcached down; a sidecar nobody answers for is NODE_UNREACHABLE naming its URL', async () => {
    const port = await freePort();
    const lonely = createSidecar({ memcached: { host: '127.0.0.1', port }, token: TOKEN, s3: aws.s3, sqs: aws.sqs, clock: systemClock });
    const { url: lonelyUrl } = await lonely.listen('127.0.0.1', 0);
    try {
      const answer = await http(lonelyUrl, 'GET', '/healthz', { token: null });
      assert.equal(answer.status, 503);
      assert.deepEqual(answer.body, { ok: false, memcached: 'down', dump: null });
      assert.deepEqual(await new SidecarClient({ baseUrl: lonelyUrl, token: TOKEN }).health(), { ok: false, memcached: 'down', dump: null });
    } finally {
      await lonely.close();
    }
    const nobodyUrl = `http://127.0.0.1:${await freePort()}`;
    const nobody = new SidecarClient({ baseUrl: nobodyUrl, token: TOKEN, timeoutMs: 2_000 });
    await assert.rejects(nobody.start(await newJob()), (error: unknown) => {
      assert.ok(error instanceof CachewarmError);
      assert.equal(error.code, 'NODE_UNREACHABLE');
      assert.ok(error.message.startsWith(`sidecar ${nobodyUrl}/v1/dumps unreachable: ECONNREFUSED`), error.message);
      return true;
    });
  });

  test('close cancels the running dump, waits for it, and may be called again', async () => {
    const log: Record<string, unknown>[] = [];
    const own = createSidecar({ memcached, token: TOKEN, s3: aws.s3, sqs: aws.sqs, clock: systemClock, log: (e) => log.push(e) });
    const { url: ownUrl } = await own.listen('127.0.0.1', 0);
    const ownClient = new SidecarClient({ baseUrl: ownUrl, token: TOKEN });
    const request = await newJob({ maxItemsPerSecond: 300 });
    await ownClient.start(request);
    // Under way: its crawl has listed keys (its reads, at 300 items/s, take a minute).
    await waitFor(async () => ((await ownClient.status(request.jobId))?.counters.listed ?? 0) > 0, { what: 'keys listed by the dump' });
    await Promise.all([own.close(), own.close()]);
    await own.close();
    assert.deepEqual(
      log.filter((e) => String(e['event']).startsWith('dump-')).map((e) => e['event']),
      ['dump-started', 'dump-cancelling', 'dump-cancelled'],
    );
    await assert.rejects(ownClient.health(), /NODE_UNREACHABLE|unreachable/);
  });

  describe('as a command: cachewarm dumper serve', () => {
    async function tokenFile(content: string): Promise<string> {
      const file = path.join(await mkdtemp(path.join(os.tmpdir(), 'cachewarm-sidecar-')), 'token');
      await writeFile(file, content, { mode: 0o600 });
      return file;
    }

    const serve = (...args: string[]): CliProcess => startCli(['dumper', 'serve', '--memcached', memcached.address, ...args]);

    test('serves with a token file and an endpoint, dumps to it, and on SIGTERM cancels its dump and exits 0', async () => {
      const file = await tokenFile(`${TOKEN}\n`);
      const { lines, event, exit, kill } = serve('--listen', '127.0.0.1:0', '--token-file', file, '--endpoint', fauxqs.endpoint);
      try {
        const listening = await event('listening');
        const cliUrl = String(listening['url']);
        assert.match(cliUrl, /^http:\/\/127\.0\.0\.1:\d+$/);
        assert.ok(typeof listening['time'] === 'string', 'each log line is stamped');

        const health = await http(cliUrl, 'GET', '/healthz', { token: null });
        assert.equal(health.status, 200);
        assert.equal(health.body.memcached, 'up');
        assert.equal((await http(cliUrl, 'GET', '/metrics', { token: 'nope' })).status, 401);

        const cliClient = new SidecarClient({ baseUrl: cliUrl, token: TOKEN });
        const done = await newJob();
        await cliClient.start(done);
        await waitForState(done.jobId, 'finished', 60_000, cliClient);
        assert.ok((await dataChunks(done)).length > 0, 'the CLI reached S3 at --endpoint (path-style)');
        assert.equal((await drain(done.queueUrl)).length, (await dataChunks(done)).length, 'and SQS');

        const slow = await newJob({ maxItemsPerSecond: 300 });
        await cliClient.start(slow);
        kill('SIGTERM');
        const code = await exit();
        assert.equal(code, 0, JSON.stringify(lines));
        const names = lines.map((e) => e['event']);
        assert.ok(names.includes('stopping') && names.includes('dump-cancelled') && names.includes('closed'), JSON.stringify(names));
        assert.ok(!JSON.stringify(lines).includes(TOKEN), 'the token is never logged');
      } finally {
        kill('SIGKILL');
      }
    });

    test('an empty or unreadable token file is refused clearly, exit 2', async () => {
      for (const [file, message] of [
        [await tokenFile('\n'), /--token-file .* is empty/],
        [path.join(os.tmpdir(), 'no-such-dir-cachewarm', 'token'), /cannot read --token-file .*no-such-dir-cachewarm\/token/],
      ] as const) {
        const { lines, exit } = serve('--listen', '127.0.0.1:0', '--token-file', file);
        const code = await exit();
        assert.equal(code, 2);
        const failed = lines.find((l) => l['event'] === 'failed');
        assert.equal(failed?.['level'], 'error', JSON.stringify(lines));
        assert.match(String(failed?.['msg']), message);
      }
    });
  });
});
