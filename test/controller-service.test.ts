import assert from 'node:assert/strict';
import { GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { ListQueuesCommand } from '@aws-sdk/client-sqs';
import { mkdtemp, rename, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { abandonJob } from '../controller/abandon-job.js';
import { targetRingOf } from '../controller/warm-plan.js';
import { ringFilter } from '../dumper/ring-filter.js';
import type { RestartSignal } from '../dumper/restart-watcher.js';
import { systemClock } from '../shared/clock.js';
import { jobQueueNames } from '../shared/job-queues.js';
import { statsAt } from '../shared/memcached/commands.js';
import type { WritableItem } from '../shared/memcached/meta-add.js';
import { sampleItems } from '../shared/sample-items.js';
import { type NodeSpec, type Topology, loadTopology } from '../shared/topology.js';
import { type CliProcess, startCli } from './support/cli-process.js';
import { type Cluster, countersOf, itemCount, load, nowSeconds, startCluster } from './support/cluster.js';
import { type AwsClients, type Fauxqs, awsClients, createBucket, startFauxqs } from './support/fauxqs.js';
import { type HttpAnswer, type HttpOptions, httpWithToken } from './support/http.js';
import { type MemcachedProcess, startMemcached } from './support/memcached.js';
import { assertExactCopy } from './support/read-back.js';
import { waitFor } from './support/wait.js';

const TOKEN = 'controller-test-token-0123456789';
const ITEMS = 20_000;
const FINAL_STATES = ['skipped', 'completed', 'failed', 'cancelled'];

/** One request to the service at `base`, with the token unless told otherwise. */
const request = httpWithToken(TOKEN);

/** Polls the job until it reaches `states` (by default, any final state); fails if it ends otherwise, or not in time. */
async function jobIn(base: string, id: string, states = FINAL_STATES, timeoutMs = 180_000): Promise<any> {
  let last = '';
  return waitFor(
    async () => {
      const answer = await request(base, 'GET', `/v1/jobs/${encodeURIComponent(id)}`);
      assert.equal(answer.status, 200, answer.text);
      last = answer.text;
      if (states.includes(answer.body.state)) return answer.body;
      assert.ok(!FINAL_STATES.includes(answer.body.state), `job ${id} ended ${answer.body.state}, not ${states.join(' or ')}: ${answer.text}`);
      return undefined;
    },
    { timeoutMs, intervalMs: 200, what: `job ${id} in state ${states.join(' or ')}`, detail: () => last },
  );
}

/** Whether the job is running; fails the test if it already ended (the scenario under test did not happen). */
async function stillRunning(base: string, id: string): Promise<boolean> {
  const answer = await request(base, 'GET', `/v1/jobs/${encodeURIComponent(id)}`);
  assert.ok(!FINAL_STATES.includes(answer.body.state), `job ${id} ended while the test needed it running: ${answer.text}`);
  return answer.body.state === 'running';
}

/** The signal the node's sidecar would send: the server's own pid and uptime. */
async function signalOf(node: NodeSpec): Promise<RestartSignal> {
  const stats = await statsAt(node);
  return {
    node: node.id,
    replica: node.replica,
    pid: Number(stats.get('pid')),
    uptimeSeconds: Number(stats.get('uptime')),
    items: Number(stats.get('curr_items')),
    detectedAt: new Date().toISOString(),
  };
}

/** The items that the ring of the node's replica places on it. */
function ownedBy(topology: Topology, node: NodeSpec, items: readonly WritableItem[]): WritableItem[] {
  const owns = ringFilter(targetRingOf(topology, node.replica).nodes, [node.address]);
  return items.filter((item) => owns(item.key));
}

/** A topology file written elsewhere and renamed over `file`, as config managers do. */
async function writeTopologyFile(file: string, replicas: Record<string, { nodes: { address: string; sidecar?: string }[] }>): Promise<void> {
  const next = `${file}.next`;
  await writeFile(next, JSON.stringify({ replicas }));
  await rename(next, file);
}

const documentOf = (topology: Topology): Record<string, { nodes: { address: string }[] }> =>
  Object.fromEntries([...topology.replicas.values()].map((r) => [r.name, { nodes: r.nodes.map((n) => ({ address: n.address })) }]));

/**
 * The controller as a service, as operators run it: `cachewarm controller serve` in a process
 * of its own, in front of real memcached replicas `a` and `b` (3 nodes each, loaded with the
 * same items through their rings), warming restarted nodes of `b` on the embedded transport.
 */
describe('the controller service', () => {
  let cluster: Cluster;
  let items: WritableItem[];
  let dir: string;
  let topologyPath: string;
  let controller: CliProcess;
  let url: string;
  let tokenFile: string;
  const extra: MemcachedProcess[] = [];

  before(async () => {
    cluster = await startCluster({ a: 3, b: 3 });
    items = sampleItems({ count: ITEMS, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'controller' });
    await load(cluster.topology, 'a', items);
    await load(cluster.topology, 'b', items);
    dir = await mkdtemp(path.join(os.tmpdir(), 'cachewarm-controller-'));
    tokenFile = path.join(dir, 'token');
    await writeFile(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
    topologyPath = path.join(dir, 'cluster.json');
    await writeTopology(cluster.topology);
    controller = startService();
    url = String((await controller.event('listening'))['url']);
  });

  const startService = (...more: string[]): CliProcess =>
    startCli([
      'controller', 'serve', '--topology', topologyPath, '--listen', '127.0.0.1:0', '--token-file', tokenFile,
      '--work-dir', path.join(dir, 'work'), '--chunk-size', '64KiB', '--topology-poll-ms', '200', ...more,
    ]);

  after(async () => {
    controller?.kill('SIGKILL');
    await controller?.exit();
    await Promise.allSettled(extra.map((m) => m.stop()));
    await cluster?.stop();
  });

  const writeTopology = (topology: Topology, more: Record<string, { nodes: { address: string }[] }> = {}): Promise<void> =>
    writeTopologyFile(topologyPath, { ...documentOf(topology), ...more });
  const http = (method: string, pathname: string, options: HttpOptions = {}): Promise<HttpAnswer> =>
    request(url, method, pathname, options);
  const finalJob = (id: string): Promise<any> => jobIn(url, id);
  const nodeOf = (replica: string, index: number): NodeSpec => cluster.topology.replicas.get(replica)!.nodes[index]!;

  test('a restarted, empty node of b is warmed from a with its keys; its peers get no writes', async () => {
    const victim = nodeOf('b', 0);
    await cluster.restartEmpty('b', 0);
    const peers = [nodeOf('b', 1), nodeOf('b', 2)];
    const peersBefore = await countersOf(peers);

    const posted = await http('POST', '/v1/signals/restart', { body: await signalOf(victim) });
    assert.equal(posted.status, 202, posted.text);
    assert.equal(posted.body.outcome, 'created');
    assert.equal(posted.body.job.node, victim.id);
    assert.equal(posted.headers.get('location'), `/v1/jobs/${encodeURIComponent(posted.body.job.id)}`);

    const job = await finalJob(posted.body.job.id);
    assert.equal(job.state, 'completed', JSON.stringify(job));
    assert.equal(job.source, 'a', 'from the other replica, never its own');
    assert.equal(job.decision.warm, true);
    assert.match(job.decision.reason, /: warm$/);
    assert.ok(job.counters.written.stored > 0);

    // Every item b's ring places on the node is back, value, flags and expiry identical, and nothing else.
    const owned = ownedBy(cluster.topology, victim, items);
    await assertExactCopy({ topology: cluster.topology, replica: 'b' }, owned, { what: `the ${owned.length} items b's ring places on ${victim.id}`, nothingElseOn: [victim.address] });
    assert.deepEqual((await countersOf(peers)).map((c) => c.cmdSet), peersBefore.map((c) => c.cmdSet), 'no writes to its peers');
    assert.equal(job.counters.written.stored, owned.length, 'every item written is one it owns');

    const events = controller.lines.filter((e) => e['jobId'] === job.id).map((e) => e['event']);
    for (const event of ['signal-received', 'decision', 'job-started', 'job-finished']) assert.ok(events.includes(event), `logged ${event}: ${events.join(', ')}`);

    const metrics = await http('GET', '/metrics');
    assert.equal(metrics.status, 200);
    assert.match(metrics.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    assert.match(metrics.text, new RegExp(`^cachewarm_controller_items_written_total\\{node="${victim.id.replace(/\./g, '\\.')}"\\} ${owned.length}$`, 'm'));
    assert.match(metrics.text, /^cachewarm_controller_jobs_ended_total\{state="completed"\} 1$/m);
    assert.match(metrics.text, new RegExp(`^cachewarm_controller_last_decision_warm\\{node="${victim.id.replace(/\./g, '\\.')}"\\} 1$`, 'm'));
  });

  test('a signal for a node that still holds its share starts no warm, and the job says why', async () => {
    const full = nodeOf('b', 1);
    const before = await countersOf([full]);
    const posted = await http('POST', '/v1/signals/restart', { body: await signalOf(full) });
    assert.equal(posted.status, 202, posted.text);
    const job = await finalJob(posted.body.job.id);
    assert.equal(job.state, 'skipped');
    assert.equal(job.decision.warm, false);
    assert.match(job.reason, /holds [\d,]+ of ~[\d,]+ expected items \(\d\.\d\d >= 0\.5\): leave alone/);
    assert.equal(job.startedAt, undefined, 'no warm started');
    assert.deepEqual((await countersOf([full])).map((c) => c.cmdSet), before.map((c) => c.cmdSet));
    const decision = controller.lines.find((e) => e['event'] === 'decision' && e['jobId'] === job.id);
    assert.equal(decision?.['reason'], job.reason, 'the decision is logged with its reason');
  });

  test('two signals at once for one node make one job', async () => {
    const node = nodeOf('b', 2);
    await cluster.restartEmpty('b', 2);
    const signal = await signalOf(node);
    const answers = await Promise.all([
      http('POST', '/v1/signals/restart', { body: signal }),
      http('POST', '/v1/signals/restart', { body: signal }),
    ]);
    assert.deepEqual(answers.map((a) => a.status), [202, 202]);
    assert.deepEqual(answers.map((a) => a.body.outcome).sort(), ['collapsed', 'created']);
    assert.equal(answers[0]!.body.job.id, answers[1]!.body.job.id);
    const listed = await http('GET', '/v1/jobs');
    assert.equal(listed.body.jobs.filter((j: { node: string }) => j.node === node.id).length, 1);
    const job = await finalJob(answers[0]!.body.job.id);
    assert.equal(job.state, 'completed', JSON.stringify(job));
    assert.equal(job.duplicates, 1);
    const owned = ownedBy(cluster.topology, node, items);
    await assertExactCopy({ topology: cluster.topology, replica: 'b' }, owned, { what: `the ${owned.length} items b's ring places on ${node.id}`, nothingElseOn: [node.address] });
  });

  test('a signal for a node the topology does not have is refused with 404 naming it; a bad body with 400', async () => {
    const stranger = { ...(await signalOf(nodeOf('b', 1))), node: 'b/127.0.0.1:1' };
    const unknown = await http('POST', '/v1/signals/restart', { body: stranger });
    assert.equal(unknown.status, 404);
    assert.equal(unknown.body.error.code, 'UNKNOWN_NODE');
    assert.match(unknown.body.error.message, /^node "b\/127\.0\.0\.1:1" is not in the topology .*cluster\.json: replica "b" has no node at "127\.0\.0\.1:1"/);
    const otherReplica = await http('POST', '/v1/signals/restart', { body: { ...stranger, node: 'zone-x/127.0.0.1:1', replica: 'zone-x' } });
    assert.equal(otherReplica.status, 404);
    assert.match(otherReplica.body.error.message, /zone-x/);

    const bad = await http('POST', '/v1/signals/restart', { body: { ...stranger, pid: 'one' } });
    assert.equal(bad.status, 400);
    assert.equal(bad.body.error.field, 'pid');
    assert.equal((await http('GET', '/v1/jobs/no-such-job')).status, 404);
    assert.equal((await http('GET', '/v1/signals/restart')).status, 405);
  });

  test('no token or a wrong one is 401 everywhere but the health check', async () => {
    assert.equal((await http('GET', '/healthz', { token: null })).status, 200);
    for (const [method, pathname] of [['POST', '/v1/signals/restart'], ['GET', '/v1/jobs'], ['POST', '/v1/jobs'], ['GET', '/v1/jobs/x'], ['GET', '/metrics']] as const) {
      for (const token of [null, 'wrong-token', `${TOKEN}x`]) {
        const answer = await http(method, pathname, { token, ...(method === 'POST' && { body: {} }) });
        assert.equal(answer.status, 401, `${method} ${pathname} with token ${token}`);
        assert.equal(answer.body.error.code, 'UNAUTHORIZED');
        assert.match(answer.headers.get('www-authenticate') ?? '', /^Bearer realm="cachewarm-controller"/);
        assert.ok(!answer.text.includes(TOKEN), 'the token is never echoed');
      }
    }
  });

  test('a node added to the topology file is accepted without a restart of the service', async () => {
    const added = await startMemcached({ memoryMb: 16 });
    extra.push(added);
    const signal: RestartSignal = { node: `c/${added.address}`, replica: 'c', pid: added.pid, uptimeSeconds: 1, items: 0, detectedAt: new Date().toISOString() };
    assert.equal((await http('POST', '/v1/signals/restart', { body: signal })).status, 404, 'not in the topology yet');

    await writeTopology(cluster.topology, { c: { nodes: [{ address: added.address }] } });
    let last: HttpAnswer | undefined;
    const answer = await waitFor(
      async () => {
        last = await http('POST', '/v1/signals/restart', { body: signal });
        return last.status === 404 ? undefined : last;
      },
      { timeoutMs: 30_000, intervalMs: 100, what: `a signal for ${signal.node} accepted once the topology file names it`, detail: () => last?.text },
    );
    assert.equal(answer.status, 202, answer.text);
    assert.ok(controller.lines.some((e) => e['event'] === 'topology-reloaded' && JSON.stringify(e['added']) === JSON.stringify([signal.node])));
    // Alone in its replica, it has no peer to be judged against: left alone, saying so.
    const job = await finalJob(answer.body.job.id);
    assert.equal(job.state, 'skipped');
    assert.match(job.reason, /no healthy peer/);
  });

  test('a bad topology file is logged and the last good one kept', async () => {
    await writeFile(topologyPath, '{ "replicas": ');
    await waitFor(() => controller.lines.some((e) => e['event'] === 'topology-invalid'), {
      timeoutMs: 30_000,
      what: 'topology-invalid log line for the bad topology file',
      detail: () => controller.lines.slice(-3),
    });
    const health = await http('GET', '/healthz', { token: null });
    assert.deepEqual(health.body.topology, { replicas: 3, nodes: 7 });
  });

  test('SIGTERM stops the service with exit 0, cancelling the warm under way', async () => {
    controller.kill('SIGTERM');
    assert.equal(await controller.exit(), 0, JSON.stringify(controller.lines.slice(-5)));
    assert.ok(controller.lines.some((e) => e['event'] === 'stopped'));

    // Another one, whose warms crawl at 200 items/s per source node: still running when stopped.
    await writeTopology(cluster.topology);
    const slow = startService('--max-ops', '200');
    const slowUrl = String((await slow.event('listening'))['url']);
    const node = nodeOf('b', 1);
    await cluster.restartEmpty('b', 1);
    const posted = await request(slowUrl, 'POST', '/v1/jobs', { body: { node: node.id } });
    assert.equal(posted.status, 202, posted.text);
    assert.equal(posted.body.job.trigger, 'manual');
    await jobIn(slowUrl, posted.body.job.id, ['running']);
    slow.kill('SIGTERM');
    assert.equal(await slow.exit(), 0, JSON.stringify(slow.lines.slice(-5)));
    const ended = slow.lines.find((e) => e['event'] === 'job-finished' && e['jobId'] === posted.body.job.id);
    assert.equal(ended?.['state'], 'cancelled', JSON.stringify(slow.lines.slice(-8)));
    assert.equal(ended?.['reason'], 'the controller is shutting down');
  });
});

/**
 * The same service on the S3+SQS transport, every part a real process: dumper sidecars on the
 * source replica's nodes, populator workers the controller starts, fauxqs for S3 and SQS.
 */
describe('the controller service on the S3+SQS transport', () => {
  const SIDECAR_TOKEN = 'controller-test-sidecar-token-0123';
  let fauxqs: Fauxqs;
  let aws: AwsClients;
  let cluster: Cluster;
  let items: WritableItem[];
  let tokenFile: string;
  let sidecarTokenFile: string;
  let topologyPath: string;
  let sidecars: CliProcess[];
  let sidecarUrls: string[];
  let bucket: string;
  const processes: CliProcess[] = [];

  before(async () => {
    fauxqs = await startFauxqs();
    aws = awsClients(fauxqs.endpoint);
    cluster = await startCluster({ a: 3, b: 3 });
    items = sampleItems({ count: ITEMS, valueBytes: 100, nowSeconds: nowSeconds(), seed: 'controller-aws' });
    await load(cluster.topology, 'a', items);
    await load(cluster.topology, 'b', items);
    const dir = await mkdtemp(path.join(os.tmpdir(), 'cachewarm-controller-aws-'));
    tokenFile = path.join(dir, 'token');
    sidecarTokenFile = path.join(dir, 'sidecar-token');
    await writeFile(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
    await writeFile(sidecarTokenFile, `${SIDECAR_TOKEN}\n`, { mode: 0o600 });
    const sourceNodes = cluster.topology.replicas.get('a')!.nodes;
    sidecars = sourceNodes.map((node) =>
      startCli(['dumper', 'serve', '--memcached', node.address, '--listen', '127.0.0.1:0', '--token-file', sidecarTokenFile, '--endpoint', fauxqs.endpoint]),
    );
    processes.push(...sidecars);
    sidecarUrls = await Promise.all(sidecars.map(async (s) => String((await s.event('listening'))['url'])));
    topologyPath = path.join(dir, 'cluster.json');
    await writeTopologyFile(topologyPath, {
      ...documentOf(cluster.topology),
      a: { nodes: sourceNodes.map((n, i) => ({ address: n.address, sidecar: sidecarUrls[i] as string })) },
    });
    bucket = await createBucket(aws.s3, 'controller-warm');
  });

  after(async () => {
    for (const p of processes) p.kill('SIGKILL');
    await Promise.all(processes.map((p) => p.exit()));
    aws?.destroy();
    await fauxqs?.stop();
    await cluster?.stop();
  });

  /** `controller serve` on the S3+SQS transport, with one populator per job; resolves with its URL. */
  async function startController(...more: string[]): Promise<{ controller: CliProcess; url: string }> {
    const controller = startCli([
      'controller', 'serve', '--topology', topologyPath, '--listen', '127.0.0.1:0', '--token-file', tokenFile,
      '--transport', 'aws', '--bucket', bucket, '--prefix', 'warms', '--endpoint', fauxqs.endpoint,
      '--sidecar-token-file', sidecarTokenFile, '--populators', '1', '--chunk-size', '64KiB', ...more,
    ]);
    processes.push(controller);
    return { controller, url: String((await controller.event('listening'))['url']) };
  }

  const nodeOf = (replica: string, index: number): NodeSpec => cluster.topology.replicas.get(replica)!.nodes[index]!;

  test('a restarted node of b, signalled by its sidecar, is warmed from a through S3 and SQS', async () => {
    const { controller, url } = await startController();
    const victim = nodeOf('b', 0);
    await cluster.restartEmpty('b', 0);
    const peers = cluster.topology.replicas.get('b')!.nodes.slice(1);
    const peersBefore = await countersOf(peers);
    // Its sidecar starts with it (a replaced machine): a memcached this young counts as restarted.
    const watcher = startCli([
      'dumper', 'serve', '--memcached', victim.address, '--listen', '127.0.0.1:0', '--token-file', sidecarTokenFile,
      '--endpoint', fauxqs.endpoint, '--node', victim.id, '--controller', url, '--controller-token-file', tokenFile,
    ]);
    processes.push(watcher);

    const jobId: string = await waitFor(
      async () => (await request(url, 'GET', '/v1/jobs')).body.jobs.find((j: { node: string }) => j.node === victim.id)?.id,
      { timeoutMs: 60_000, intervalMs: 100, what: `a job for ${victim.id}, started by its sidecar's signal`, detail: () => watcher.lines.slice(-5) },
    );
    const job = await jobIn(url, jobId);
    assert.equal(job.state, 'completed', JSON.stringify(job));
    assert.equal(job.source, 'a');
    assert.equal(job.trigger, 'restart');

    const owned = ownedBy(cluster.topology, victim, items);
    await assertExactCopy({ topology: cluster.topology, replica: 'b' }, owned, { what: `the ${owned.length} items b's ring places on ${victim.id}`, nothingElseOn: [victim.address] });
    assert.deepEqual((await countersOf(peers)).map((c) => c.cmdSet), peersBefore.map((c) => c.cmdSet), 'no writes to its peers');
    assert.ok(watcher.lines.some((e) => e['event'] === 'restart-signal' && e['outcome'] === 'acknowledged'), 'the sidecar saw its signal acknowledged');

    controller.kill('SIGTERM');
    assert.equal(await controller.exit(), 0);
  });

  test('a node restarted twice during its own instance warm is refilled exactly; the superseded job is cancelled and its queues and chunks removed', async () => {
    // 100 items/s read per source node: a job writes for tens of seconds, time to restart the
    // node under it. --min-share 0.1: the superseded job's writes into the new process (a
    // fifth of the node's share, below) are more than the decision asks of a warm node.
    const { controller, url } = await startController('--max-ops', '100', '--min-share', '0.1');
    const victim = nodeOf('b', 1);
    const owned = ownedBy(cluster.topology, victim, items);
    const peers = [nodeOf('b', 0), nodeOf('b', 2)];
    const peersBefore = await countersOf(peers);

    await cluster.restartEmpty('b', 1);
    const created = await request(url, 'POST', '/v1/signals/restart', { body: await signalOf(victim) });
    assert.equal(created.body.outcome, 'created', created.text);
    const first: string = created.body.job.id;
    await waitFor(async () => (await stillRunning(url, first)) && (await itemCount(victim)) > 0, {
      timeoutMs: 120_000,
      intervalMs: 200,
      what: `the first job writing into ${victim.id}`,
    });

    // Restarted again while the first job writes; its signal comes late, once the first job's
    // writers have reconnected and written a fifth of the share into the new process.
    await cluster.restartEmpty('b', 1);
    await waitFor(async () => (await stillRunning(url, first)) && (await itemCount(victim)) >= owned.length / 5, {
      timeoutMs: 120_000,
      intervalMs: 200,
      what: `the first job's writes into the new process of ${victim.id}`,
      detail: () => controller.lines.slice(-3),
    });
    const superseding = await request(url, 'POST', '/v1/signals/restart', { body: await signalOf(victim) });
    assert.equal(superseding.body.outcome, 'superseded', superseding.text);
    const second: string = superseding.body.job.id;

    const old = await jobIn(url, first);
    assert.equal(old.state, 'cancelled', JSON.stringify(old));
    assert.equal(old.supersededBy, second);
    assert.equal(old.cleanup?.done, true, JSON.stringify(old));
    assert.match(old.cleanup.detail, /^2 queues and [1-9]\d* objects removed; the manifest kept, with s3:\/\/controller-warm\/warms\/.*\/superseded\.json$/);
    const job = await jobIn(url, second);
    assert.equal(job.state, 'completed', JSON.stringify(job));
    assert.equal(job.decision.warm, true, 'not fooled by what the cancelled job wrote');
    assert.ok(job.decision.reason.includes(`overruled: it restarted while job ${first} was warming it`), job.decision.reason);

    await assertExactCopy({ topology: cluster.topology, replica: 'b' }, owned, { what: `the ${owned.length} items b's ring places on ${victim.id}`, nothingElseOn: [victim.address] });
    assert.deepEqual((await countersOf(peers)).map((c) => c.cmdSet), peersBefore.map((c) => c.cmdSet), 'no writes to its peers');

    // The replacement started once the superseded job had stopped: its dumps ended on every
    // sidecar before the replacement's began, and what it left was removed first.
    const order = controller.lines
      .filter((e) => (e['event'] === 'job-abandoned' && e['jobId'] === first) || (e['event'] === 'job-started' && e['jobId'] === second))
      .map((e) => e['event']);
    assert.deepEqual(order, ['job-abandoned', 'job-started']);
    for (const [i, sidecar] of sidecars.entries()) {
      const ended = sidecar.lines.findIndex((e) => e['jobId'] === first && ['dump-cancelled', 'dump-finished', 'dump-failed'].includes(String(e['event'])));
      const began = sidecar.lines.findIndex((e) => e['jobId'] === second && e['event'] === 'dump-started');
      assert.ok(ended >= 0 && ended < began, `sidecar ${sidecarUrls[i]}: ${JSON.stringify(sidecar.lines.filter((e) => String(e['event']).startsWith('dump-')))}`);
      const dump = await httpWithToken(SIDECAR_TOKEN)(sidecarUrls[i] as string, 'GET', `/v1/dumps/${encodeURIComponent(first)}`);
      assert.ok(dump.status === 404 || dump.body.state !== 'running', dump.text);
    }
    // Of the superseded job, only its manifest and the note saying what replaced it are left.
    const names = jobQueueNames(first);
    const { QueueUrls = [] } = await aws.sqs.send(new ListQueuesCommand({ QueueNamePrefix: names.queue }));
    assert.deepEqual(QueueUrls, [], `the queues of ${first} are removed`);
    const { Contents = [] } = await aws.s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `warms/${first}/` }));
    assert.deepEqual(Contents.map((o) => o.Key).sort(), [`warms/${first}/manifest.json`, `warms/${first}/superseded.json`]);
    const readNote = async (): Promise<any> =>
      JSON.parse(Buffer.from(await (await aws.s3.send(new GetObjectCommand({ Bucket: bucket, Key: `warms/${first}/superseded.json` }))).Body!.transformToByteArray()).toString());
    const note = await readNote();
    assert.equal(note.supersededBy, second);
    // Done again, the removal finds nothing more to remove and leaves the record as it was.
    const again = await abandonJob({
      s3: aws.s3, sqs: aws.sqs, bucket, prefix: 'warms', sidecarToken: SIDECAR_TOKEN, clock: systemClock, topology: await loadTopology(topologyPath), jobId: first, supersededBy: second,
    });
    assert.deepEqual([again.queuesRemoved, again.objectsRemoved], [0, 0]);
    assert.deepEqual(await readNote(), note);
    assert.deepEqual((await aws.s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `warms/${first}/` }))).Contents?.map((o) => o.Key).sort(), Contents.map((o) => o.Key).sort());

    controller.kill('SIGTERM');
    assert.equal(await controller.exit(), 0);
  });
});
