// The container image (Dockerfile, .dockerignore), checked without a container engine: the
// build context holds every COPY source, and the build and run stages' npm commands, run
// here as the Dockerfile gives them, make a package that installs with its production
// dependencies alone and whose installed `cachewarm` runs.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cp, lstat, mkdir, mkdtemp, readFile, readdir, rm, stat, symlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { type Copy, type Dockerfile, DockerIgnore, commandsOf, copiesOf, parseDockerfile } from './support/dockerfile.js';

const run = promisify(execFile);
/** The project's root: dist/test/ is two levels below it. */
const root = fileURLToPath(new URL('../../', import.meta.url));

interface PackageJson {
  version: string;
  files: string[];
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
}

async function readProject(): Promise<{ dockerfile: Dockerfile; ignore: DockerIgnore; pkg: PackageJson }> {
  const [dockerfile, ignore, pkg] = await Promise.all([
    readFile(path.join(root, 'Dockerfile'), 'utf8'),
    readFile(path.join(root, '.dockerignore'), 'utf8'),
    readFile(path.join(root, 'package.json'), 'utf8'),
  ]);
  return { dockerfile: parseDockerfile(dockerfile), ignore: new DockerIgnore(ignore), pkg: JSON.parse(pkg) as PackageJson };
}

/** Every file under `dir` (relative to root, `/`-separated), symbolic links not followed. */
async function filesUnder(dir: string): Promise<string[]> {
  const found: string[] = [];
  for (const entry of await readdir(path.join(root, dir), { withFileTypes: true })) {
    const relative = `${dir}/${entry.name}`;
    if (entry.isDirectory()) found.push(...(await filesUnder(relative)));
    else found.push(relative);
  }
  return found;
}

/** What a COPY from the build context sends: its files, relative to the context. */
async function contextFiles(copy: Copy): Promise<Map<string, string[]>> {
  const bySource = new Map<string, string[]>();
  for (const source of copy.sources) {
    assert.ok(!/[*?[]/.test(source), `Dockerfile line ${copy.line}: COPY ${source}: no wildcards, so that this test can follow what is copied`);
    const relative = path.posix.normalize(source).replace(/\/$/, '');
    assert.ok(!relative.startsWith('..') && !path.posix.isAbsolute(relative), `Dockerfile line ${copy.line}: ${source} is outside the build context`);
    const info = await stat(path.join(root, relative)).catch(() => undefined);
    assert.ok(info, `Dockerfile line ${copy.line}: COPY source ${source} does not exist in the repository`);
    bySource.set(source, info.isDirectory() ? await filesUnder(relative) : [relative]);
  }
  return bySource;
}

describe('the container image', () => {
  test('two stages on the Node the project is tested on; the run stage is non-root, with tini, cachewarm as the entrypoint', async () => {
    const { dockerfile } = await readProject();
    assert.equal(dockerfile.stages.length, 2, 'a build stage and a run stage');
    const [build, runStage] = dockerfile.stages as [Dockerfile['stages'][0], Dockerfile['stages'][0]];
    for (const stage of dockerfile.stages) assert.equal(stage.from, 'node:22-bookworm-slim');
    assert.ok(build.name, 'the build stage is named, for COPY --from');
    const runInstructions = (keyword: string) => runStage.instructions.filter((i) => i.keyword === keyword);
    assert.deepEqual(runInstructions('USER').map((i) => i.text), ['node'], 'the run stage runs as the image\'s node user (uid 1000)');
    assert.deepEqual(
      runInstructions('ENTRYPOINT').map((i) => JSON.parse(i.text) as unknown),
      [['/usr/bin/tini', '--', 'cachewarm']],
      'exec form, so that tini is PID 1 and the container\'s command is cachewarm\'s arguments',
    );
    const installs = commandsOf(runStage).filter((c) => c.words[0] === 'apt-get' && c.words[1] === 'install');
    assert.ok(installs.some((c) => c.words.includes('tini')), 'tini comes from Debian\'s package');
    // The run stage gets only the build stage's package, nothing from the build context.
    for (const copy of copiesOf(dockerfile).filter((c) => c.stage === runStage)) assert.equal(copy.from, build.name, `Dockerfile line ${copy.line}`);
  });

  test('every COPY source is in the repository and in the build context .dockerignore leaves', async () => {
    const { dockerfile, ignore } = await readProject();
    const fromContext = copiesOf(dockerfile).filter((c) => c.from === undefined);
    assert.ok(fromContext.length > 0);
    for (const copy of fromContext) {
      for (const [source, files] of await contextFiles(copy)) {
        assert.ok(files.length > 0, `Dockerfile line ${copy.line}: ${source} is empty`);
        const left = files.filter((f) => ignore.excludes(f));
        assert.deepEqual(left, [], `Dockerfile line ${copy.line}: .dockerignore leaves these out of the build context, so COPY ${source} would miss them`);
      }
    }
    // What a local checkout builds or runs stays out of the context.
    for (const heavy of ['node_modules/typescript/package.json', 'dist/bin/cachewarm.js', 'dist-k/bin/cachewarm.js', '.git/HEAD', 'test/cli.test.ts']) {
      assert.ok(ignore.excludes(heavy), `.dockerignore should leave out ${heavy}`);
    }
  });

  test("the build stage's npm pack and the run stage's npm install, run here: the installed cachewarm runs, with production dependencies only", { timeout: 240_000 }, async (t) => {
    const { dockerfile, pkg } = await readProject();
    const [build, runStage] = dockerfile.stages as [Dockerfile['stages'][0], Dockerfile['stages'][0]];
    const work = await mkdtemp(path.join(os.tmpdir(), 'cachewarm-image-'));
    try {
      // The build stage: its WORKDIR laid out from its COPY instructions (the files the build
      // context holds), node_modules standing in for its `npm ci`, then its `npm pack`.
      const src = path.join(work, 'src');
      for (const copy of copiesOf(dockerfile).filter((c) => c.stage === build && c.from === undefined)) {
        const toDirectory = copy.sources.length > 1 || copy.destination.endsWith('/');
        for (const source of copy.sources) {
          const target = path.join(src, copy.destination, toDirectory ? path.basename(source) : '');
          await mkdir(path.dirname(target), { recursive: true });
          await cp(path.join(root, source), target, { recursive: true });
        }
      }
      // Its commands in order, absolute paths under work/fs: `npm ci` is node_modules linked in.
      const inWork = (word: string): string => (word.startsWith('/') ? path.join(work, 'fs', word) : word);
      let packDir: string | undefined;
      for (const { line, words } of commandsOf(build)) {
        const [program, verb] = words;
        if (program === 'npm' && verb === 'ci') {
          await symlink(path.join(root, 'node_modules'), path.join(src, 'node_modules'), 'dir');
        } else if (program === 'mkdir') {
          for (const dir of words.slice(1).filter((w) => !w.startsWith('-'))) await mkdir(inWork(dir), { recursive: true });
        } else if (program === 'npm' && verb === 'pack') {
          const args = words.slice(1).map(inWork);
          const at = args.findIndex((w) => w === '--pack-destination');
          assert.ok(at !== -1 && args[at + 1], `Dockerfile line ${line}: npm pack --pack-destination DIR, for the run stage to copy from`);
          packDir = args[at + 1]!;
          await run('npm', args, { cwd: src, maxBuffer: 16 << 20 });
        } else {
          assert.fail(`Dockerfile line ${line}: ${words.join(' ')}: a build step this test does not know how to run here`);
        }
      }
      assert.ok(packDir, 'the build stage runs npm pack');
      const [tarball, ...others] = await readdir(packDir);
      assert.ok(tarball && others.length === 0 && /^cachewarm-.*\.tgz$/.test(tarball), `npm pack made ${[tarball, ...others].join(', ')}`);

      // The run stage's install, into a prefix of our own instead of /usr/local.
      const install = commandsOf(runStage).find((c) => c.words[0] === 'npm' && c.words[1] === 'install');
      assert.ok(install, 'the run stage installs the package with npm');
      assert.ok(install.words.includes('--omit=dev'), 'production dependencies only');
      assert.ok(install.words.includes('--global') || install.words.includes('-g'), 'installed globally: `cachewarm` on PATH');
      const prefix = path.join(work, 'usr-local');
      const installArgs = install.words.slice(1).map((w) => (w.endsWith('.tgz') ? path.join(packDir, tarball) : w));
      await run('npm', [...installArgs, '--prefix', prefix, '--prefer-offline'], { maxBuffer: 16 << 20 });

      const installed = path.join(prefix, 'lib', 'node_modules', 'cachewarm');
      const command = path.join(prefix, 'bin', 'cachewarm');
      const version = await run(process.execPath, [command, '--version']);
      assert.equal(version.stdout.trim(), pkg.version);
      const help = await run(process.execPath, [command, '--help']);
      for (const name of ['warm', 'controller', 'dumper', 'populator', 'verify']) assert.match(help.stdout, new RegExp(`^\\s+${name}\\b`, 'm'));
      await run(process.execPath, [command, 'controller', 'serve', '--help']);

      // Every production dependency loads from the installed tree (the AWS SDK is loaded only
      // when a command needs it, so --help alone would not show it missing); no dev dependency is there.
      const dependencies = Object.keys(pkg.dependencies);
      await run(process.execPath, ['--input-type=module', '-e', `for (const name of ${JSON.stringify(dependencies)}) await import(name);`], { cwd: installed });
      for (const name of Object.keys(pkg.devDependencies)) {
        assert.equal(await exists(path.join(installed, 'node_modules', name)), false, `dev dependency ${name} was installed`);
      }
      // The files the command needs at run time are in the package ("files" in package.json).
      for (const file of ['package.json', 'topology.schema.json', 'dist/bin/cachewarm.js', 'dist/dumper/latency-probe-worker.js']) {
        assert.ok(await exists(path.join(installed, file)), `${file} is not in the installed package`);
      }

      const size = await treeSize(installed);
      const ownBytes = size.bytes - (await treeSize(path.join(installed, 'node_modules'))).bytes;
      const largest = await largestDependencies(path.join(installed, 'node_modules'), 5);
      t.diagnostic(
        `installed tree (the run stage's layer over node:22-bookworm-slim, tini aside): ${mib(size.bytes)} in ${size.files.toLocaleString('en-US')} files;` +
          ` cachewarm itself ${mib(ownBytes)}; largest dependencies: ${largest.map(([name, bytes]) => `${name} ${mib(bytes)}`).join(', ')}`,
      );
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });
});

async function exists(file: string): Promise<boolean> {
  return (await lstat(file).catch(() => undefined)) !== undefined;
}

/** Bytes (apparent sizes, as an image layer's tar holds them) and files under `dir`. */
async function treeSize(dir: string): Promise<{ bytes: number; files: number }> {
  let bytes = 0;
  let files = 0;
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const entry of entries) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) {
      const sub = await treeSize(full);
      bytes += sub.bytes;
      files += sub.files;
    } else {
      bytes += (await lstat(full)).size;
      files++;
    }
  }
  return { bytes, files };
}

/** The `count` largest packages (scoped ones by scope) under a node_modules directory. */
async function largestDependencies(nodeModules: string, count: number): Promise<[string, number][]> {
  const sizes: [string, number][] = [];
  for (const entry of await readdir(nodeModules, { withFileTypes: true })) {
    if (entry.isDirectory() && !entry.name.startsWith('.')) sizes.push([entry.name, (await treeSize(path.join(nodeModules, entry.name))).bytes]);
  }
  return sizes.sort((a, b) => b[1] - a[1]).slice(0, count);
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}
