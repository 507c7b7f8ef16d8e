import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { GetQueueAttributesCommand } from '@aws-sdk/client-sqs';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { targetRingOf } from '../controller/warm-plan.js';
import { ringFilter } from '../dumper/ring-filter.js';
import type { WritableItem } from '../shared/memcached/meta-add.js';
import { sampleItems } from '../shared/sample-items.js';
import { type NodeSpec, type Topology, parseTopology } from '../shared/topology.js';
import { countersOf, load, nowSeconds } from './support/cluster.js';
import { type AwsClients, awsClients, createBucket, createQueue } from './support/fauxqs.js';
import { httpWithToken } from './support/http.js';
import { type HostCli, type HostMemcached, HostNetwork, networkUnavailable } from './support/netns.js';
import { assertExactCopy } from './support/read-back.js';
import { assertReadAsExpected, collect, compileSpyRead, keysInput, spymemcachedMissing } from './support/third-party-clients.js';
import { waitFor } from './support/wait.js';

const SIDECAR_TOKEN = 'multi-host-sidecar-token-0123456789';
const CONTROLLER_TOKEN = 'multi-host-controller-token-0123456789';
const BUCKET = 'fleet-chunks';
const PREFIX = 'warms';
const ITEMS = 100_000;
const VALUE_BYTES = 200;
const FINAL_STATES = ['skipped', 'completed', 'failed', 'cancelled'];
/** A populator deletes its finished chunks' messages in batches of up to this many (SQS's DeleteMessageBatch limit). */
const ACK_BATCH_CHUNKS = 10;

/** Each host: a network namespace of its own, its address `10.213.<n>.<octet>` on one bridge. */
const HOSTS = {
  // replica a, the source: memcached and its dumper sidecar on each
  src1: 1,
  src2: 2,
  // replicas b and c, the targets: memcached and a sidecar watching it for restarts on each
  b1: 11,
  b2: 12,
  b3: 13,
  c1: 21,
  c2: 22,
  s3: 30, // the S3/SQS emulator
  ctl: 40, // controller serve, and the warm replica CLI
  pop1: 51,
  pop2: 52,
  app: 60, // an application host: spymemcached reads the targets back from here
} as const;
type HostName = keyof typeof HOSTS;
const MEMCACHED_HOSTS: readonly HostName[] = ['src1', 'src2', 'b1', 'b2', 'b3', 'c1', 'c2'];
const REPLICAS: Readonly<Record<string, readonly HostName[]>> = { a: ['src1', 'src2'], b: ['b1', 'b2', 'b3'], c: ['c1', 'c2'] };

const request = httpWithToken(CONTROLLER_TOKEN);
const unavailable = networkUnavailable() ?? spymemcachedMissing();

/**
 * A multi-host proof: the fleet of the README's "At fleet scale" and "A standing queue", every
 * part a real process on a host of its own (a Linux network namespace: support/netns.ts), the
 * hosts joined by one bridge and nothing else. No host has a loopback address; the topology
 * names each node and sidecar by its host's address. The test process reaches the hosts from
 * the root namespace through a veth into the same bridge (the one address outside the
 * namespaces), to load the source, make the queues, ask the controller and read the targets back
 * with the project's reader; spymemcached, on an application host, reads them back too.
 */
describe('a fleet of hosts, each a network namespace of its own', { skip: unavailable ? `skipped: ${unavailable}` : false }, () => {
  let network: HostNetwork;
  let aws: AwsClients | undefined;
  let endpoint: string;
  let dir: string | undefined;
  let topologyFile: string;
  let topology: Topology;
  let sidecarTokenFile: string;
  let controllerTokenFile: string;
  let queueUrl: string;
  let deadLetterQueueUrl: string;
  let controllerUrl: string;
  const memcached = new Map<HostName, HostMemcached>();
  const sidecars = new Map<HostName, HostCli>();
  const populators = new Map<HostName, HostCli>();
  let items: WritableItem[];
  let spyRead: Awaited<ReturnType<typeof compileSpyRead>> | undefined;

  const address = (host: HostName): string => network.address(host);
  const nodeOf = (replica: string, index: number): NodeSpec => topology.replicas.get(replica)!.nodes[index]!;
  const addressesOf = (replica: string): string[] => topology.replicas.get(replica)!.nodes.map((n) => n.address);

  before(async () => {
    spyRead = await compileSpyRead();
    network = await HostNetwork.create(HOSTS);
    try {
      await setUp();
    } catch (error) {
      await network.destroy();
      throw error;
    }
  });

  after(async () => {
    aws?.destroy();
    await network?.destroy();
    await spyRead?.remove();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function setUp(): Promise<void> {
    await Promise.all(MEMCACHED_HOSTS.map(async (host) => memcached.set(host, await network.startMemcached(host))));
    ({ endpoint } = await network.startEmulator('s3'));
    aws = awsClients(endpoint);

    // The installation's standing queue, as an operator makes it (README, Deploy on Kubernetes, 2.),
    // with a short visibility timeout: a dead populator's chunks come back within 10 s. (fauxqs
    // names its queues http://sqs.us-east-1.localhost:4566/…: a name only, every client sends to
    // --endpoint, the emulator host's address; a host resolving it would find no loopback.)
    await createBucket(aws.s3, BUCKET);
    deadLetterQueueUrl = await createQueue(aws.sqs, 'cachewarm-standing-dlq', { MessageRetentionPeriod: '1209600' });
    const { Attributes } = await aws.sqs.send(new GetQueueAttributesCommand({ QueueUrl: deadLetterQueueUrl, AttributeNames: ['QueueArn'] }));
    queueUrl = await createQueue(aws.sqs, 'cachewarm-standing', {
      VisibilityTimeout: '10',
      MessageRetentionPeriod: '1209600',
      RedrivePolicy: JSON.stringify({ deadLetterTargetArn: Attributes?.QueueArn, maxReceiveCount: 5 }),
    });

    dir = await mkdtemp(path.join(os.tmpdir(), 'cachewarm-multi-host-'));
    sidecarTokenFile = path.join(dir, 'sidecar-token');
    controllerTokenFile = path.join(dir, 'controller-token');
    await writeFile(sidecarTokenFile, `${SIDECAR_TOKEN}\n`, { mode: 0o600 });
    await writeFile(controllerTokenFile, `${CONTROLLER_TOKEN}\n`, { mode: 0o600 });

    const sidecarUrl = (host: HostName): string => `http://${address(host)}:11299`;
    const startSidecar = (host: HostName, ...more: string[]): HostCli => {
      const sidecar = network.startCli(host, [
        'dumper', 'serve', '--memcached', `${address(host)}:11211`, '--listen', `${address(host)}:11299`,
        '--token-file', sidecarTokenFile, '--endpoint', endpoint, ...more,
      ]);
      sidecars.set(host, sidecar);
      return sidecar;
    };
    await Promise.all(REPLICAS['a']!.map(async (host) => assert.equal((await startSidecar(host).event('listening'))['url'], sidecarUrl(host))));

    const document = {
      hashing: 'spymemcached',
      replicas: Object.fromEntries(
        Object.entries(REPLICAS).map(([replica, hosts]) => [
          replica,
          { nodes: hosts.map((host) => ({ address: `${address(host)}:11211`, sidecar: sidecarUrl(host) })) },
        ]),
      ),
    };
    topologyFile = path.join(dir, 'cluster.json');
    await writeFile(topologyFile, JSON.stringify(document, null, 2));
    topology = parseTopology(document, topologyFile);

    // `--populators 0`: the populator hosts drain the standing queue, none runs beside the controller.
    const controller = network.startCli('ctl', [
      'controller', 'serve', '--topology', topologyFile, '--listen', `${address('ctl')}:11300`, '--token-file', controllerTokenFile,
      '--transport', 'aws', '--bucket', BUCKET, '--prefix', PREFIX, '--endpoint', endpoint, '--sidecar-token-file', sidecarTokenFile,
      '--queue-url', queueUrl, '--populators', '0', '--chunk-size', '64KiB', '--topology-poll-ms', '500',
    ]);
    controllerUrl = String((await controller.event('listening'))['url']);
    assert.equal(controllerUrl, `http://${address('ctl')}:11300`);

    // The targets' sidecars watch their nodes. Their first look finds a young memcached and
    // signals it (a replaced machine); the controller leaves each alone: its replica holds nothing yet.
    const targets = (['b', 'c'] as const).flatMap((replica) => REPLICAS[replica]!.map((host) => ({ replica, host })));
    await Promise.all(
      targets.map(async ({ replica, host }) => {
        const node = `${replica}/${address(host)}:11211`;
        const sidecar = startSidecar(host, '--node', node, '--controller', controllerUrl, '--controller-token-file', controllerTokenFile);
        await sidecar.line((l) => l['event'] === 'restart-signal' && l['outcome'] === 'acknowledged', 'its start-up restart signal acknowledged');
      }),
    );
    const jobs = await waitFor(
      async () => {
        const listed = (await request(controllerUrl, 'GET', '/v1/jobs')).body.jobs as { node: string; state: string; reason?: string }[];
        return listed.length === targets.length && listed.every((j) => FINAL_STATES.includes(j.state)) && listed;
      },
      { timeoutMs: 30_000, intervalMs: 200, what: 'the start-up signals of the targets decided' },
    );
    assert.deepEqual(jobs.map((j) => j.state), targets.map(() => 'skipped'), JSON.stringify(jobs));

    await Promise.all(
      (['pop1', 'pop2'] as const).map(async (host) => {
        const populator = network.startCli(host, [
          '--log-level', 'debug', 'populator', '--queue-url', queueUrl, '--allow-location', `s3://${BUCKET}/${PREFIX}`, '--follow',
          '--worker-id', host, '--wait-seconds', '1', '--endpoint', endpoint,
        ]);
        populators.set(host, populator);
        await populator.event('worker-started');
      }),
    );

    // spymemcached parses flags as a Java int and fails on 2^31 and up, which it never writes itself.
    items = sampleItems({ count: ITEMS, valueBytes: VALUE_BYTES, nowSeconds: nowSeconds(), seed: 'multi-host' }).map((item) => ({
      ...item,
      flags: item.flags & 0x7fff_ffff,
    }));
    await load(topology, 'a', items);
  }

  /**
   * `cachewarm warm replica` on the controller's host, on the standing queue, drained by the
   * populator hosts. `--protect-source off`: the source serves no traffic here, and the rate is
   * the path's, as the benchmark's are.
   */
  const warmReplica = (target: string, jobId: string): HostCli =>
    network.startCli('ctl', [
      'warm', 'replica', '--topology', topologyFile, '--source', 'a', '--target', target, '--job-id', jobId,
      '--transport', 'aws', '--bucket', BUCKET, '--prefix', PREFIX, '--endpoint', endpoint, '--sidecar-token-file', sidecarTokenFile,
      '--queue-url', queueUrl, '--populators', '0', '--chunk-size', '64KiB', '--protect-source', 'off', '--json',
    ]);

  interface Summary {
    complete: boolean;
    jobId: string;
    durationMs: number;
    targetNodes: { address: string; stored: number; existed: number }[];
  }

  async function completed(warm: HostCli): Promise<Summary> {
    assert.equal(await warm.exit(180_000), 0, JSON.stringify(warm.lines.slice(-15)));
    const summary = JSON.parse(warm.stdout()) as Summary;
    assert.equal(summary.complete, true, warm.stdout());
    return summary;
  }

  /** Of a job, only its manifest and its summary are left in the store: chunks and marks removed. */
  async function onlyRecordsLeft(jobId: string): Promise<void> {
    const { Contents = [] } = await aws!.s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: `${PREFIX}/${jobId}/` }));
    assert.deepEqual(Contents.map((o) => o.Key).sort(), [`${PREFIX}/${jobId}/manifest.json`, `${PREFIX}/${jobId}/summary.json`]);
  }

  /**
   * Every item read back by spymemcached (KetamaConnectionFactory, EVCache's base) on the
   * application host, each from the node its own ring picks: value, flags and length exact.
   */
  async function readBySpymemcached(replica: string): Promise<void> {
    const reader = network.spawn('app', 'java', ['-cp', spyRead!.classpath, 'SpyRead', addressesOf(replica).join(' ')], { stdin: 'pipe' });
    const ran = await collect(reader, keysInput(items), `spymemcached on the app host reading replica ${replica}`);
    assertReadAsExpected(`spymemcached on the app host, replica ${replica}`, ran, items);
  }

  const chunksDone = (populator: HostCli, jobId: string): Record<string, unknown>[] =>
    populator.lines.filter((l) => l['event'] === 'chunk-done' && l['jobId'] === jobId);

  test('a replica warm a → b, run from the controller host on the standing queue, is an exact copy', async (t) => {
    const started = Date.now();
    const summary = await completed(warmReplica('b', 'multi-host-b'));
    const seconds = (Date.now() - started) / 1000;
    assert.equal(summary.targetNodes.reduce((sum, n) => sum + n.stored, 0), ITEMS, 'every item stored once');
    await assertExactCopy({ topology, replica: 'b' }, items, { what: `replica b, read back from the tester`, nothingElseOn: addressesOf('b') });
    await readBySpymemcached('b');

    for (const host of ['pop1', 'pop2'] as const) assert.ok(chunksDone(populators.get(host)!, summary.jobId).length > 0, `${host} wrote chunks of ${summary.jobId}`);
    for (const host of REPLICAS['a']!) {
      assert.ok(sidecars.get(host)!.lines.some((l) => l['event'] === 'dump-finished' && l['jobId'] === summary.jobId), `the sidecar on ${host} dumped its node`);
    }
    await onlyRecordsLeft(summary.jobId);
    const chunks = ['pop1', 'pop2'].map((h) => `${h} ${chunksDone(populators.get(h as HostName)!, summary.jobId).length}`).join(', ');
    t.diagnostic(
      `replica warm a → b (2 → 3 nodes, ${ITEMS} items of ${VALUE_BYTES} B, 64 KiB chunks; chunks written: ${chunks}): ` +
        `${seconds.toFixed(1)} s from the CLI's start to its exit, ${Math.round(ITEMS / seconds)} items/s; ` +
        `the job's own duration ${(summary.durationMs / 1000).toFixed(1)} s, ${Math.round(ITEMS / (summary.durationMs / 1000))} items/s`,
    );
  });

  test('a target host whose memcached restarts empty is refilled by controller serve, signalled by its sidecar', async (t) => {
    const victim = nodeOf('b', 1);
    const host: HostName = 'b2';
    assert.equal(victim.address, memcached.get(host)!.address);
    const owned = ownedBy(topology, victim, items);
    const peers = topology.replicas.get('b')!.nodes.filter((n) => n !== victim);
    const peersBefore = await countersOf(peers);

    const restartedAt = Date.now();
    await memcached.get(host)!.stop();
    const fresh = await network.startMemcached(host);
    memcached.set(host, fresh);

    const jobId: string = await waitFor(
      async () => {
        const listed = (await request(controllerUrl, 'GET', '/v1/jobs')).body.jobs as { id: string; node: string; restart?: { pid: number } }[];
        return listed.find((j) => j.node === victim.id && j.restart?.pid === fresh.pid)?.id;
      },
      { timeoutMs: 60_000, intervalMs: 200, what: `a job for ${victim.id}, started by its sidecar's signal`, detail: () => sidecars.get(host)!.lines.slice(-5) },
    );
    let last = '';
    const job = await waitFor(
      async () => {
        const answer = await request(controllerUrl, 'GET', `/v1/jobs/${encodeURIComponent(jobId)}`);
        last = answer.text;
        return FINAL_STATES.includes(answer.body.state) && answer.body;
      },
      { timeoutMs: 120_000, intervalMs: 200, what: `job ${jobId} ended`, detail: () => last },
    );
    const seconds = (Date.now() - restartedAt) / 1000;
    assert.equal(job.state, 'completed', JSON.stringify(job));
    assert.equal(job.trigger, 'restart');
    assert.equal(job.source, 'a');
    assert.equal(job.decision.warm, true, job.decision.reason);
    assert.equal(job.counters.written.stored, owned.length, 'every item written is one the node owns');

    await assertExactCopy({ topology, replica: 'b' }, owned, { what: `the ${owned.length} items b's ring places on ${victim.id}`, nothingElseOn: [victim.address] });
    await readBySpymemcached('b');
    assert.deepEqual((await countersOf(peers)).map((c) => c.cmdSet), peersBefore.map((c) => c.cmdSet), 'no writes to its peers');
    const warmSeconds = (Date.parse(job.finishedAt) - Date.parse(job.startedAt)) / 1000;
    t.diagnostic(
      `instance warm of ${victim.id} (${owned.length} items): ${seconds.toFixed(1)} s from the restart to the job's end ` +
        `(the sidecar's signal and the decision included), the warm itself ${warmSeconds.toFixed(1)} s, ${Math.round(owned.length / warmSeconds)} items/s`,
    );
  });

  test('a populator host killed mid-job hands its chunks to the other, and the warm a → c still completes exactly', async (t) => {
    const jobId = 'multi-host-c';
    const [dying, surviving] = [populators.get('pop1')!, populators.get('pop2')!];
    const started = Date.now();
    const warm = warmReplica('c', jobId);

    // Killed the moment it has finished its fifth chunk of the job (the job well under way):
    // that chunk's message is deleted only with its next acknowledgement (about every second,
    // or every 10 chunks), and the chunks it received meanwhile are being written.
    let killed = false;
    await Promise.race([
      dying.line(() => chunksDone(dying, jobId).length >= 5, `5 chunks of ${jobId} done`, 120_000),
      warm.exited.then((code) => killed || assert.fail(`the warm ended (exit ${code}) before pop1 had done 5 of its chunks: ${JSON.stringify(warm.lines.slice(-5))}`)),
    ]);
    dying.killHard();
    killed = true;
    const killedAt = Date.now();
    await dying.exit(10_000);
    assert.equal(warm.child.exitCode, null, 'the warm was still running when the populator host died');

    const summary = await completed(warm);
    const seconds = (Date.now() - started) / 1000;
    await assertExactCopy({ topology, replica: 'c' }, items, { what: 'replica c, read back from the tester', nothingElseOn: addressesOf('c') });
    await readBySpymemcached('c');
    const stored = summary.targetNodes.reduce((sum, n) => sum + n.stored, 0);
    const existed = summary.targetNodes.reduce((sum, n) => sum + n.existed, 0);
    assert.ok(stored <= ITEMS && stored + existed >= ITEMS, `stored ${stored}, existed ${existed}: every item written, none twice`);

    // What it had finished and not yet acknowledged came back to the other host once the
    // visibility timeout (10 s) ran out, and was written there. The one batch being acknowledged
    // when it died may not have: its done marks written, its delete carried out by the queue or
    // not (the answer died with the host), the job needs nothing more of it and may end first.
    const acknowledged = new Set(
      dying.lines.filter((l) => l['event'] === 'acknowledged').flatMap((l) => (l['chunks'] as string[]).filter((c) => c.startsWith(`${jobId}/`))),
    );
    const unacknowledged = chunksDone(dying, jobId).map((l) => String(l['chunk'])).filter((c) => !acknowledged.has(c));
    const redoneAt = new Map(chunksDone(surviving, jobId).map((l) => [String(l['chunk']), Date.parse(String(l['time']))]));
    const handedBack = unacknowledged.filter((chunk) => redoneAt.has(chunk));
    assert.ok(handedBack.length > 0, `of the ${unacknowledged.length} chunks pop1 died holding finished and unacknowledged, pop2 wrote none`);
    assert.ok(unacknowledged.length - handedBack.length <= ACK_BATCH_CHUNKS, `not written again: ${unacknowledged.filter((c) => !redoneAt.has(c)).join(', ')}`);
    const gaps = handedBack.map((chunk) => ((redoneAt.get(chunk) as number) - killedAt) / 1000);
    assert.ok(Math.min(...gaps) >= 4, `delivered again only after the visibility timeout: ${gaps.join(', ')} s after the kill`);

    await onlyRecordsLeft(jobId);
    const { Attributes = {} } = await aws!.sqs.send(
      new GetQueueAttributesCommand({ QueueUrl: deadLetterQueueUrl, AttributeNames: ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible'] }),
    );
    assert.deepEqual([Attributes.ApproximateNumberOfMessages, Attributes.ApproximateNumberOfMessagesNotVisible], ['0', '0'], 'nothing parked');
    t.diagnostic(
      `replica warm a → c with pop1 killed (SIGKILL) ${((killedAt - started) / 1000).toFixed(1)} s in: ${seconds.toFixed(1)} s from the CLI's start to its exit ` +
        `(the job's own ${(summary.durationMs / 1000).toFixed(1)} s); ${handedBack.length} finished chunks handed back, written by pop2 ` +
        `${Math.min(...gaps).toFixed(1)}–${Math.max(...gaps).toFixed(1)} s after the kill; stored ${stored}, existed ${existed}`,
    );
  });
});

/** The items that the ring of the node's replica places on it. */
function ownedBy(topology: Topology, node: NodeSpec, items: readonly WritableItem[]): WritableItem[] {
  const owns = ringFilter(targetRingOf(topology, node.replica).nodes, [node.address]);
  return items.filter((item) => owns(item.key));
}
