import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { SettledChunks } from '../controller/settled-chunks.js';
import { chunkDoneName, chunkParkedName, nodePrefix, putJson } from '../shared/job-layout.js';
import type { ParkedEntry } from '../shared/job-queues.js';
import { LocalDirStore } from '../shared/store/local-dir-store.js';
import { FakeClock } from './support/fake-clock.js';

/**
 * A job on a standing queue is drained when every data chunk its dumpers stored is marked done
 * or parked by a populator, or is on the dead-letter queue (where SQS moves a message whose
 * holders all crashed, unmarked).
 */
test('a job on a standing queue is drained only when every stored chunk is marked or dead-lettered', async () => {
  const store = new LocalDirStore(await mkdtemp(path.join(os.tmpdir(), 'cachewarm-settled-')));
  const nodes = ['a/10.0.0.1:11211', 'a/10.0.0.2:11211'];
  const chunk = (node: string, i: number): string => `${nodePrefix('job', node)}/data-r1-${i}.chunk`;
  for (const node of nodes) {
    for (let i = 0; i < 3; i++) await store.put(chunk(node, i), Buffer.from('x'));
    await store.put(`${nodePrefix('job', node)}/keys-0.chunk`, Buffer.from('k'));
  }
  const clock = new FakeClock();
  let deadLetters: ParkedEntry[] = [];
  let reads = 0;
  const settled = new SettledChunks({ store, jobId: 'job', sourceNodes: nodes, readDeadLetters: async () => (reads++, deadLetters), clock });

  assert.equal(await settled.all(), false, 'nothing marked');
  for (const node of nodes) for (let i = 0; i < 3; i++) if (!(node === nodes[1] && i === 2)) await putJson(store, chunkDoneName('job', node, chunk(node, i)), {});
  await putJson(store, chunkParkedName('job', nodes[1] as string, chunk(nodes[1] as string, 1)), { chunk: chunk(nodes[1] as string, 1), reason: 'corrupt' });
  assert.equal(await settled.all(), false, 'one chunk of the second node is unmarked');
  assert.equal(reads, 1, 'the dead-letter queue is read at most once per interval');

  deadLetters = [
    { chunk: chunk(nodes[1] as string, 2), jobId: 'job', reason: 'moved by SQS after 5 receives' },
    { chunk: 'other-job/a_10.0.0.2_11211/data-r1-2.chunk', jobId: 'other-job', reason: 'not this job' },
  ];
  assert.equal(await settled.all(), false, 'not read again before the interval');
  clock.advance(30_000);
  assert.equal(await settled.all(), true);
  assert.deepEqual(
    (await settled.parked()).sort((x, y) => x.chunk.localeCompare(y.chunk)),
    [
      { chunk: chunk(nodes[1] as string, 1), reason: 'corrupt' },
      { chunk: chunk(nodes[1] as string, 2), reason: 'moved by SQS after 5 receives' },
    ],
  );
});
