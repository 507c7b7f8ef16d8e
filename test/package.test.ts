import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cp, mkdtemp, readFile, rm, symlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { sampleItems } from '../shared/sample-items.js';
import { topologyFileOf } from './support/cli.js';
import { load, nowSeconds, withCluster } from './support/cluster.js';
import { assertExactCopy } from './support/read-back.js';

const run = promisify(execFile);
/** The project's root: dist/test/ is two levels below it. */
const root = fileURLToPath(new URL('../../', import.meta.url));
/** What a fresh checkout holds that packing needs (tests, bench and scripts stay out of the package). */
const SOURCES = ['package.json', 'package-lock.json', 'tsconfig.json', 'tsconfig.build.json', 'README.md', 'LICENSE', 'topology.schema.json', 'bin', 'controller', 'dumper', 'populator', 'shared'];

describe('the npm package', () => {
  test('packs the built command and nothing else, installs into an empty prefix, and the installed command warms a replica exactly', async () => {
    const work = await mkdtemp(path.join(os.tmpdir(), 'cachewarm-package-'));
    try {
      await packInstallAndWarm(work);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });
});

async function packInstallAndWarm(work: string): Promise<void> {
  const checkout = path.join(work, 'checkout');
  for (const name of SOURCES) await cp(path.join(root, name), path.join(checkout, name), { recursive: true });
  await symlink(path.join(root, 'node_modules'), path.join(checkout, 'node_modules'), 'dir');

  // Packing an unbuilt checkout builds it (prepack).
  const packed = await run('npm', ['pack', '--json', '--pack-destination', work], { cwd: checkout, maxBuffer: 16 << 20 });
  const [tarball] = JSON.parse(packed.stdout) as { filename: string; files: { path: string }[] }[];
  assert.ok(tarball);
  const files = tarball.files.map((f) => f.path);
  assert.ok(files.includes('dist/bin/cachewarm.js'), files.join(' '));
  assert.ok(files.includes('LICENSE') && files.includes('README.md'));
  assert.deepEqual(files.filter((f) => !/^dist\/(bin|controller|dumper|populator|shared)\/.*\.js$/.test(f)).sort(), ['LICENSE', 'README.md', 'package.json', 'topology.schema.json']);

  const prefix = path.join(work, 'prefix');
  await run('npm', ['install', '--global', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', path.join(work, tarball.filename)], {
    maxBuffer: 16 << 20,
  });
  const installed = path.join(prefix, 'bin', 'cachewarm');
  const { version } = JSON.parse(await readFile(path.join(root, 'package.json'), 'utf8')) as { version: string };
  assert.equal((await run(installed, ['--version'])).stdout.trim(), version);

  await withCluster({ a: 1, b: 1 }, async (cluster) => {
    const items = sampleItems({ count: 2_000, valueBytes: 100, nowSeconds: nowSeconds() });
    await load(cluster.topology, 'a', items);
    const topology = await topologyFileOf(cluster.topology);
    const warm = await run(installed, ['warm', 'replica', '--topology', topology, '--target', 'b', '--work-dir', path.join(work, 'jobs'), '--json']);
    assert.equal((JSON.parse(warm.stdout) as { complete: boolean }).complete, true);
    await assertExactCopy({ topology: cluster.topology, replica: 'b' }, items);
  });
}
