import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { isDeepStrictEqual, promisify } from 'node:util';
import parsePrometheusTextFormat, { type MetricFamily, type Sample } from 'parse-prometheus-text-format';
import type { WarmDecision } from '../controller/expected-share.js';
import { type ControllerServer, createControllerServer } from '../controller/controller-server.js';
import { InstanceJobManager } from '../controller/instance-jobs.js';
import type { StartDumpRequest } from '../dumper/sidecar-api.js';
import { SidecarClient } from '../dumper/sidecar-client.js';
import { type Sidecar, createSidecar } from '../dumper/sidecar-server.js';
import type { TargetRing } from '../shared/chunk-message.js';
import { systemClock } from '../shared/clock.js';
import type { DumpCounters } from '../shared/counters.js';
import { sampleItems } from '../shared/sample-items.js';
import { findNode, parseTopology } from '../shared/topology.js';
import { VERSION } from '../shared/version.js';
import { type Cluster, load, nowSeconds, startCluster } from './support/cluster.js';
import { type AwsClients, type Fauxqs, awsClients, createBucket, createQueue, startFauxqs } from './support/fauxqs.js';
import { httpWithToken } from './support/http.js';
import { waitFor, within } from './support/wait.js';

const TOKEN = 'metrics-test-token-0123456789abcdef';
const ITEMS = 2_000;
const http = httpWithToken(TOKEN);

/** The ring the populators would write: only named in chunk messages, never contacted. */
const TARGET: TargetRing = {
  replica: 'zone-b',
  hashing: 'spymemcached',
  nodes: ['10.0.1.1:11211', '10.0.1.2:11211'].map((address) => ({ address, ringName: address })),
};

/** Each per-job dump counter, and the status counter it reports. */
const DUMP_COUNTERS: readonly [string, keyof DumpCounters][] = [
  ['cachewarm_dump_keys_listed_total', 'listed'],
  ['cachewarm_dump_keys_caught_up_total', 'caughtUp'],
  ['cachewarm_dump_items_read_total', 'read'],
  ['cachewarm_dump_bytes_read_total', 'bytesRead'],
  ['cachewarm_dump_data_chunks_total', 'dataChunks'],
  ['cachewarm_dump_items_expired_total', 'expired'],
  ['cachewarm_dump_items_gone_total', 'gone'],
  ['cachewarm_dump_items_filtered_total', 'filtered'],
  ['cachewarm_dump_items_unsupported_total', 'unsupported'],
];
const DUMP_END_STATES = ['finished', 'failed', 'cancelled'];
const REQUEST_OUTCOMES = ['created', 'collapsed', 'superseded', 'refused'];
const FINAL_JOB_STATES = ['skipped', 'completed', 'failed', 'cancelled'];
const JOB_STATES = ['queued', 'deciding', 'skipped', 'running', 'completed', 'failed', 'cancelled'];

/** The controller's decision for every node here: it holds its share, so no warm runs. */
const LEAVE_ALONE: WarmDecision = { warm: false, expectedItems: 1000, actualItems: 990, ratio: 0.99, reason: 'holds 990 of ~1,000 expected items: leave alone' };

/** A scrape, as Prometheus reads it: the families by name. */
type Exposition = ReadonlyMap<string, MetricFamily>;

/** GET /metrics at `base` (with the token unless `token` is null), parsed by a Prometheus text parser. */
async function scrape(base: string, token: string | null = TOKEN): Promise<Exposition> {
  const answer = await http(base, 'GET', '/metrics', { token });
  assert.equal(answer.status, 200, answer.text);
  assert.match(answer.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4; charset=utf-8$/);
  const families = parsePrometheusTextFormat(answer.text);
  const byName = new Map(families.map((f) => [f.name, f]));
  assert.equal(byName.size, families.length, 'each family appears once');
  return byName;
}

function family(exposition: Exposition, name: string, type: MetricFamily['type']): MetricFamily {
  const found = exposition.get(name);
  assert.ok(found, `${name} is exposed`);
  assert.equal(found.type, type, `${name} is a ${type}`);
  return found;
}

/** The samples of a counter or gauge family. */
function samples(exposition: Exposition, name: string, type: 'COUNTER' | 'GAUGE'): Sample[] {
  return family(exposition, name, type).metrics as Sample[];
}

/** The value of the one sample of `name` whose labels are exactly `labels`; undefined when there is none. */
function valueOf(exposition: Exposition, name: string, type: 'COUNTER' | 'GAUGE', labels: Record<string, string> = {}): number | undefined {
  const matching = samples(exposition, name, type).filter((s) => isDeepStrictEqual(s.labels ?? {}, labels));
  assert.ok(matching.length <= 1, `${name}${JSON.stringify(labels)} appears once at most`);
  return matching[0] === undefined ? undefined : Number(matching[0].value);
}

/**
 * /metrics of the dumper sidecar (a real one, over a real memcached node, with S3 and SQS
 * emulated) and of the controller service (a real one; its job manager decides with a fake),
 * scraped over HTTP on both listeners: the API's, with the bearer token, and the metrics
 * listener (`--metrics-listen`), without one.
 */
describe('/metrics, as Prometheus reads it', () => {
  let fauxqs: Fauxqs;
  let aws: AwsClients;
  let cluster: Cluster;
  let sidecar: Sidecar;
  let controller: ControllerServer;
  let jobs: InstanceJobManager;
  /** Each service's two listeners: the API (token) and the metrics listener (none). */
  const urls = { sidecar: { api: '', metrics: '' }, controller: { api: '', metrics: '' } };
  let nodeId: string;

  const topology = parseTopology({ replicas: { a: { nodes: [{ address: '127.0.0.1:11001' }] }, b: { nodes: [{ address: '127.0.0.1:11002' }] } } }, 'metrics-test');
  const controllerNode = findNode(topology, 'b/127.0.0.1:11002');

  before(async () => {
    fauxqs = await startFauxqs();
    aws = awsClients(fauxqs.endpoint);
    cluster = await startCluster({ 'zone-a': 1 });
    const node = cluster.topology.replicas.get('zone-a')?.nodes[0];
    assert.ok(node);
    nodeId = node.id;
    await load(cluster.topology, 'zone-a', sampleItems({ count: ITEMS, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'metrics' }));
    sidecar = createSidecar({ memcached: { host: node.host, port: node.port }, token: TOKEN, s3: aws.s3, sqs: aws.sqs, clock: systemClock });
    urls.sidecar.api = (await sidecar.listen('127.0.0.1', 0)).url;
    urls.sidecar.metrics = (await sidecar.listenMetrics('127.0.0.1', 0)).url;

    jobs = new InstanceJobManager({
      runWarm: async () => assert.fail('no warm runs: every node holds its share'),
      decide: async () => LEAVE_ALONE,
      clock: systemClock,
    });
    controller = createControllerServer({ token: TOKEN, jobs, topology: () => topology });
    urls.controller.api = (await controller.listen('127.0.0.1', 0)).url;
    urls.controller.metrics = (await controller.listenMetrics('127.0.0.1', 0)).url;
  });

  after(async () => {
    await controller?.close();
    await jobs?.close();
    await sidecar?.close();
    aws?.destroy();
    await fauxqs?.stop();
    await cluster?.stop();
  });

  /** Both listeners of both services. */
  const everyListener = (): [string, string, string | null][] =>
    (['sidecar', 'controller'] as const).flatMap((service) => [
      [`${service} API`, urls[service].api, TOKEN] as [string, string, string | null],
      [`${service} metrics listener`, urls[service].metrics, null] as [string, string, string | null],
    ]);

  test('every listener serves an exposition a Prometheus parser reads, each family with its HELP and TYPE', async () => {
    for (const [listener, url, token] of everyListener()) {
      const exposition = await scrape(url, token);
      assert.ok(exposition.size > 0, listener);
      for (const f of exposition.values()) {
        assert.notEqual(f.help, '', `${listener}: ${f.name} has a HELP line`);
        assert.notEqual(f.type, 'UNTYPED', `${listener}: ${f.name} has a TYPE line`);
      }
    }
    for (const service of ['sidecar', 'controller'] as const) {
      const viaApi = [...(await scrape(urls[service].api)).keys()];
      const viaListener = [...(await scrape(urls[service].metrics, null)).keys()];
      assert.deepEqual(viaListener, viaApi, `${service}: the same families on both listeners`);
      assert.equal((await http(urls[service].api, 'GET', '/metrics', { token: null })).status, 401, `${service}: the API's /metrics needs the token`);
    }
  });

  test('cachewarm_build_info names this build (shared/version.ts) and the Node.js version, with the value 1', async () => {
    assert.notEqual(VERSION, 'unknown');
    for (const [listener, url, token] of everyListener()) {
      assert.deepEqual(samples(await scrape(url, token), 'cachewarm_build_info', 'GAUGE'), [{ value: '1', labels: { version: VERSION, nodejs_version: process.version } }], listener);
    }
  });

  test("prom-client's default process and Node.js metrics are there: CPU, start time, memory, heap, event loop, GC", async () => {
    for (const [listener, url, token] of everyListener()) {
      const exposition = await scrape(url, token);
      assert.ok(valueOf(exposition, 'process_cpu_seconds_total', 'COUNTER')! > 0, `${listener}: CPU seconds`);
      const started = valueOf(exposition, 'process_start_time_seconds', 'GAUGE')!;
      assert.ok(Math.abs(started - (Date.now() / 1000 - process.uptime())) < 5, `${listener}: this process's start time (${started})`);
      assert.ok(valueOf(exposition, 'process_resident_memory_bytes', 'GAUGE')! > 10 << 20, `${listener}: resident memory`);
      assert.ok(valueOf(exposition, 'nodejs_heap_size_total_bytes', 'GAUGE')! > 0, `${listener}: heap size`);
      family(exposition, 'nodejs_eventloop_lag_seconds', 'GAUGE');
      family(exposition, 'nodejs_gc_duration_seconds', 'HISTOGRAM');
      assert.deepEqual(samples(exposition, 'nodejs_version_info', 'GAUGE')[0]?.labels?.['version'], process.version, listener);
    }
  });

  test('before any dump, the sidecar reports dumps ended by each state at 0 and none running; per-job counters have no series yet', async () => {
    for (const [listener, url, token] of everyListener().filter(([l]) => l.startsWith('sidecar'))) {
      const exposition = await scrape(url, token);
      for (const state of DUMP_END_STATES) assert.equal(valueOf(exposition, 'cachewarm_dumps_ended_total', 'COUNTER', { state }), 0, `${listener}: ${state}`);
      assert.equal(valueOf(exposition, 'cachewarm_dump_running', 'GAUGE'), 0, listener);
      for (const [name] of DUMP_COUNTERS) assert.deepEqual(samples(exposition, name, 'COUNTER'), [], `${listener}: ${name} is declared, with no job yet`);
    }
  });

  test('before any request, the controller reports every request outcome and every final job state at 0, and no jobs', async () => {
    for (const [listener, url, token] of everyListener().filter(([l]) => l.startsWith('controller'))) {
      const exposition = await scrape(url, token);
      for (const outcome of REQUEST_OUTCOMES) assert.equal(valueOf(exposition, 'cachewarm_controller_requests_total', 'COUNTER', { outcome }), 0, `${listener}: ${outcome}`);
      for (const state of FINAL_JOB_STATES) assert.equal(valueOf(exposition, 'cachewarm_controller_jobs_ended_total', 'COUNTER', { state }), 0, `${listener}: ${state}`);
      for (const state of JOB_STATES) assert.equal(valueOf(exposition, 'cachewarm_controller_jobs', 'GAUGE', { state }), 0, `${listener}: ${state}`);
      for (const name of ['cachewarm_controller_items_written_total', 'cachewarm_controller_last_decision_warm']) {
        assert.deepEqual(samples(exposition, name, name.endsWith('_total') ? 'COUNTER' : 'GAUGE'), [], `${listener}: ${name} has no node yet`);
      }
    }
  });

  test("after one dump, its counters (labelled job_id and node) moved by exactly what the dump's status reports, it counts as finished, and its source guard's state is there", async () => {
    const request: StartDumpRequest = {
      jobId: 'job-metrics-1',
      node: nodeId,
      bucket: await createBucket(aws.s3, 'metrics-chunks'),
      prefix: 'warm/metrics',
      queueUrl: await createQueue(aws.sqs, 'metrics-chunks'),
      chunkSizeBytes: 64 << 10,
      target: TARGET,
    };
    const client = new SidecarClient({ baseUrl: urls.sidecar.api, token: TOKEN });
    const before = await scrape(urls.sidecar.api);
    await client.start(request);
    const status = await waitFor(
      async () => {
        const s = await client.status(request.jobId);
        assert.ok(s?.state === 'running' || s?.state === 'finished', JSON.stringify(s));
        return s.state === 'finished' && s;
      },
      { what: `dump ${request.jobId} finished`, intervalMs: 100, timeoutMs: 60_000 },
    );
    assert.ok(status.counters.read === ITEMS && status.counters.dataChunks > 1, JSON.stringify(status.counters));

    const labels = { job_id: request.jobId, node: nodeId };
    for (const [listener, url, token] of everyListener().filter(([l]) => l.startsWith('sidecar'))) {
      const now = await scrape(url, token);
      for (const [name, field] of DUMP_COUNTERS) {
        assert.equal(valueOf(before, name, 'COUNTER', labels) ?? 0, 0, `${name}: nothing for the job before it started`);
        assert.equal(valueOf(now, name, 'COUNTER', labels), status.counters[field], `${listener}: ${name} is the status' ${field}`);
      }
      assert.equal(valueOf(now, 'cachewarm_dumps_ended_total', 'COUNTER', { state: 'finished' }), 1, listener);
      assert.equal(valueOf(now, 'cachewarm_dumps_ended_total', 'COUNTER', { state: 'failed' }), 0, listener);
      assert.equal(valueOf(now, 'cachewarm_dump_running', 'GAUGE'), 0, listener);
      // Protected by default: the guard's last state, as the status gives it.
      const guard = status.sourceGuard;
      assert.ok(guard?.baselineP99Micros !== undefined, JSON.stringify(status));
      assert.equal(valueOf(now, 'cachewarm_source_probe_p99_seconds', 'GAUGE', { ...labels, window: 'baseline' }), guard.baselineP99Micros / 1e6, listener);
      assert.equal(valueOf(now, 'cachewarm_source_guard_pace_items_per_second', 'GAUGE', labels), guard.paceItemsPerSecond, listener);
      assert.equal(valueOf(now, 'cachewarm_source_guard_backoffs_total', 'COUNTER', labels), guard.backoffs, listener);
    }
  });

  test('after a refused request and a restart signal for a node that holds its share, each controller counter moved by one, and the decision is reported', async () => {
    const refused = await http(urls.controller.api, 'POST', '/v1/jobs', { body: { node: 'b/127.0.0.1:1' } });
    assert.equal(refused.status, 404, refused.text);
    const signal = { node: controllerNode.id, replica: 'b', pid: 4242, uptimeSeconds: 3, items: 990, detectedAt: new Date().toISOString() };
    const posted = await http(urls.controller.api, 'POST', '/v1/signals/restart', { body: signal });
    assert.equal(posted.status, 202, posted.text);
    const job = await within(jobs.whenSettled(posted.body.job.id), { timeoutMs: 10_000, what: 'the job settled' });
    assert.equal(job?.state, 'skipped');

    const node = { node: controllerNode.id };
    for (const [listener, url, token] of everyListener().filter(([l]) => l.startsWith('controller'))) {
      const now = await scrape(url, token);
      for (const outcome of REQUEST_OUTCOMES) {
        const expected = outcome === 'created' || outcome === 'refused' ? 1 : 0;
        assert.equal(valueOf(now, 'cachewarm_controller_requests_total', 'COUNTER', { outcome }), expected, `${listener}: ${outcome}`);
      }
      for (const state of FINAL_JOB_STATES) {
        assert.equal(valueOf(now, 'cachewarm_controller_jobs_ended_total', 'COUNTER', { state }), state === 'skipped' ? 1 : 0, `${listener}: ${state}`);
      }
      assert.equal(valueOf(now, 'cachewarm_controller_jobs', 'GAUGE', { state: 'skipped' }), 1, listener);
      assert.equal(valueOf(now, 'cachewarm_controller_last_decision_warm', 'GAUGE', node), 0, listener);
      assert.equal(valueOf(now, 'cachewarm_controller_last_decision_share_ratio', 'GAUGE', node), 0.99, listener);
      const decidedAt = valueOf(now, 'cachewarm_controller_last_decision_timestamp_seconds', 'GAUGE', node)!;
      assert.ok(Math.abs(decidedAt - Date.now() / 1000) < 60, `${listener}: decided just now (${decidedAt})`);
    }
  });

  test('no series has a `job` label (Prometheus sets its own): jobs are named by job_id', async () => {
    for (const [listener, url, token] of everyListener()) {
      for (const f of (await scrape(url, token)).values()) {
        for (const sample of f.metrics) assert.ok(!('job' in (sample.labels ?? {})), `${listener}: ${f.name} ${JSON.stringify(sample.labels)}`);
      }
    }
    const exposition = await scrape(urls.sidecar.api);
    for (const [name] of DUMP_COUNTERS) {
      const series = samples(exposition, name, 'COUNTER');
      assert.ok(series.length > 0, `${name} has the dump's series`);
      for (const s of series) assert.deepEqual(Object.keys(s.labels ?? {}), ['job_id', 'node'], name);
    }
  });
});

/** A script that starts, scrapes and closes a sidecar and a controller; it must then exit on its own. */
const CLOSE_SCRIPT = `
import { S3Client } from '@aws-sdk/client-s3';
import { SQSClient } from '@aws-sdk/client-sqs';
import { createSidecar } from ${JSON.stringify(new URL('../dumper/sidecar-server.js', import.meta.url).href)};
import { createControllerServer } from ${JSON.stringify(new URL('../controller/controller-server.js', import.meta.url).href)};
import { InstanceJobManager } from ${JSON.stringify(new URL('../controller/instance-jobs.js', import.meta.url).href)};
import { systemClock } from ${JSON.stringify(new URL('../shared/clock.js', import.meta.url).href)};
import { parseTopology } from ${JSON.stringify(new URL('../shared/topology.js', import.meta.url).href)};

const token = 't';
const s3 = new S3Client({ region: 'us-east-1' });
const sqs = new SQSClient({ region: 'us-east-1' });
const sidecar = createSidecar({ memcached: { host: '127.0.0.1', port: 1 }, token, s3, sqs, clock: systemClock });
const topology = parseTopology({ replicas: { a: { nodes: [{ address: '127.0.0.1:1' }] } } }, 'close-test');
const jobs = new InstanceJobManager({ runWarm: async () => { throw new Error('no'); }, decide: async () => { throw new Error('no'); }, clock: systemClock });
const controller = createControllerServer({ token, jobs, topology: () => topology });
for (const server of [sidecar, controller]) {
  const api = (await server.listen('127.0.0.1', 0)).url;
  const metrics = (await server.listenMetrics('127.0.0.1', 0)).url;
  for (const [url, headers] of [[api, { authorization: 'Bearer t' }], [metrics, {}]]) {
    const answer = await fetch(url + '/metrics', { headers });
    if (answer.status !== 200 || !(await answer.text()).includes('nodejs_eventloop_lag_seconds')) throw new Error('scrape failed: ' + answer.status);
  }
  await Promise.all([server.close(), server.close()]);
  await server.close();
}
await jobs.close();
s3.destroy();
sqs.destroy();
console.log('closed');
`;

describe('closing a server', () => {
  test('a closed sidecar and controller (close() called three times) leave nothing that keeps the process alive', async () => {
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '--eval', CLOSE_SCRIPT], {
      cwd: new URL('../..', import.meta.url),
      timeout: 30_000,
    });
    assert.equal(stdout.trim(), 'closed', 'it exited on its own, well within the 30 s it was given');
  });
});
