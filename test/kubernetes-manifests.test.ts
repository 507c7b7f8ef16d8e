// The Kubernetes manifests (deploy/kubernetes): each overlay rendered with `kubectl kustomize`,
// every object checked against the Kubernetes, KEDA and Prometheus-operator schemas (the
// kubernetes-models packages: their validate() for values, their TypeScript types for field
// names, which validate() lets through), then what matters for behaviour: the sidecar's
// probes, the scaler's queue and bounds, non-root containers, the overlay's images, the
// topology (parsed by cachewarm's own parser) against the memcached pods, the references
// between objects, and every command-line flag against the CLI's own --help.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import ts from 'typescript';
import { parse as parseYaml, parseAllDocuments } from 'yaml';
import type { IScaledObject, ITriggerAuthentication } from '@kubernetes-models/keda/keda.sh/v1alpha1';
import type { IPodMonitor, IServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';
import type { ICronJob } from 'kubernetes-models/batch/v1';
import type { IContainer, IPodSpec, IPodTemplateSpec, IService } from 'kubernetes-models/v1';
import { type Topology, parseTopologyText } from '../shared/topology.js';

const run = promisify(execFile);
/** The project's root: dist/test/ is two levels below it. */
const root = fileURLToPath(new URL('../../', import.meta.url));
const deploy = path.join(root, 'deploy', 'kubernetes');
const cli = fileURLToPath(new URL('../bin/cachewarm.js', import.meta.url));

/** The packages whose models cover the objects: an object of a kind none covers fails. */
const MODEL_PACKAGES = ['kubernetes-models', '@kubernetes-models/keda', '@kubernetes-models/prometheus-operator'];

type ObjectMeta = NonNullable<IService['metadata']>;

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: ObjectMeta & { name: string };
  [field: string]: unknown;
}

/** A pod template and what owns it. */
interface Workload {
  readonly owner: K8sObject;
  readonly template: IPodTemplateSpec & { spec: IPodSpec };
}

/** `cachewarm …` as one container runs it: its subcommand and options, `$(VAR)`s expanded. */
interface Invocation {
  readonly workload: Workload;
  readonly container: IContainer;
  readonly subcommand: string[];
  readonly options: Map<string, string | true>;
}

interface Rendered {
  readonly overlay: string;
  readonly objects: K8sObject[];
  readonly namespace: string | undefined;
  readonly images: { name: string; newName?: string; newTag?: string }[];
}

// ---------------------------------------------------------------------------------------
// kubectl, rendering

/** Why kustomize cannot run here (no kubectl, or one whose kustomize is older than v5), or undefined. */
async function kustomizeMissing(): Promise<string | undefined> {
  let answer: string;
  try {
    answer = (await run('kubectl', ['version', '--client', '--output=json'])).stdout;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 'kubectl is not on PATH (it renders the manifests with its built-in kustomize, v5 or later)';
    throw error;
  }
  const version = (JSON.parse(answer) as { kustomizeVersion?: string }).kustomizeVersion ?? '';
  const major = Number(/^v(\d+)\./.exec(version)?.[1] ?? 0);
  return major >= 5 ? undefined : `kubectl's kustomize is ${version || 'unknown'}: the manifests need kustomize v5 or later (kubectl 1.27 or later)`;
}

const overlays = existsSync(path.join(deploy, 'overlays')) ? (await readdir(path.join(deploy, 'overlays'))).sort() : [];

/**
 * Renders an overlay from a copy of deploy/kubernetes, with the files its secretGenerator
 * reads (the tokens, kept out of git) made up for the copy.
 */
async function render(overlay: string, work: string): Promise<Rendered> {
  const copy = path.join(work, overlay, 'kubernetes');
  await cp(deploy, copy, { recursive: true });
  const dir = path.join(copy, 'overlays', overlay);
  const kustomization = parseYaml(await readFile(path.join(dir, 'kustomization.yaml'), 'utf8')) as {
    namespace?: string;
    images?: Rendered['images'];
    secretGenerator?: { files?: string[] }[];
  };
  for (const generator of kustomization.secretGenerator ?? []) {
    for (const entry of generator.files ?? []) {
      const file = path.join(dir, entry.includes('=') ? entry.slice(entry.indexOf('=') + 1) : entry);
      if (existsSync(file)) continue;
      await mkdir(path.dirname(file), { recursive: true });
      await writeFile(file, `${randomBytes(32).toString('hex')}\n`);
    }
  }
  const { stdout } = await run('kubectl', ['kustomize', dir], { maxBuffer: 16 << 20 });
  const objects: K8sObject[] = [];
  for (const document of parseAllDocuments(stdout)) {
    if (document.errors.length > 0) throw document.errors[0];
    const object = document.toJS() as K8sObject | null;
    if (object === null) continue;
    // kustomize wraps a Secret's base64 at 70 columns, which the API server's decoder reads
    // (it skips line breaks) and the models' "byte" format does not: unwrapped, as it is read.
    if (object.kind === 'Secret' && object['data']) {
      object['data'] = Object.fromEntries(Object.entries(object['data'] as Record<string, string>).map(([key, value]) => [key, value.replace(/\s+/g, '')]));
    }
    objects.push(object);
  }
  return { overlay, objects, namespace: kustomization.namespace, images: kustomization.images ?? [] };
}

// ---------------------------------------------------------------------------------------
// Schemas

interface ModelClass {
  readonly apiVersion: string;
  readonly kind: string;
  new (data: unknown): { validate(): void };
}

/** The model class of an object's apiVersion and kind, and the module it comes from. */
async function modelOf(object: K8sObject): Promise<{ model: ModelClass; module: string } | undefined> {
  for (const pkg of MODEL_PACKAGES) {
    const module = `${pkg}/${object.apiVersion}`;
    let exports: Record<string, unknown>;
    try {
      exports = (await import(module)) as Record<string, unknown>;
    } catch {
      continue; // not a group/version this package has
    }
    const model = Object.values(exports).find(
      (value): value is ModelClass => typeof value === 'function' && (value as Partial<ModelClass>).kind === object.kind && (value as Partial<ModelClass>).apiVersion === object.apiVersion,
    );
    if (model) return { model, module };
  }
  return undefined;
}

/**
 * The objects as literals of their models' TypeScript types, type-checked: an unknown field
 * (a misspelt `readinesProbe`, a field at the wrong level) is an excess property there, which
 * the models' validate() does not report. Returns the errors, each naming its object.
 */
function unknownFields(objects: readonly K8sObject[], modules: readonly string[]): string[] {
  const file = path.join(root, '__rendered_manifests__.ts');
  const lines: string[] = [];
  const owners: { from: number; label: string }[] = [];
  objects.forEach((object, i) => {
    lines.push(`import type { I${object.kind} as T${i} } from ${JSON.stringify(modules[i])};`);
  });
  objects.forEach((object, i) => {
    owners.push({ from: lines.length, label: `${object.kind} ${object.metadata.name}` });
    lines.push(...`export const o${i}: T${i} = ${JSON.stringify(object, null, 1)};`.split('\n'));
  });
  const source = lines.join('\n');
  const options: ts.CompilerOptions = {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    types: [],
  };
  const host = ts.createCompilerHost(options);
  const { getSourceFile, fileExists, readFile: read } = host;
  host.getSourceFile = (name, language, ...rest) =>
    name === file ? ts.createSourceFile(name, source, language) : getSourceFile.call(host, name, language, ...rest);
  host.fileExists = (name) => name === file || fileExists.call(host, name);
  host.readFile = (name) => (name === file ? source : read.call(host, name));
  const program = ts.createProgram([file], options, host);
  const sourceFile = program.getSourceFile(file);
  return ts.getPreEmitDiagnostics(program, sourceFile).map((diagnostic) => {
    const line = diagnostic.file && diagnostic.start !== undefined ? diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start).line : -1;
    const owner = owners.findLast((o) => o.from <= line);
    return `${owner?.label ?? '(imports)'}: ${ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n')}`;
  });
}

// ---------------------------------------------------------------------------------------
// Reading the rendered objects

function workloadsOf(objects: readonly K8sObject[]): Workload[] {
  const workloads: Workload[] = [];
  for (const owner of objects) {
    const spec = owner['spec'] as { template?: Workload['template']; jobTemplate?: { spec?: { template?: Workload['template'] } } } | undefined;
    const template = owner.kind === 'CronJob' ? spec?.jobTemplate?.spec?.template : spec?.template;
    if (template?.spec) workloads.push({ owner, template });
  }
  return workloads;
}

function containersOf(workload: Workload): IContainer[] {
  return [...(workload.template.spec.initContainers ?? []), ...workload.template.spec.containers];
}

function find(objects: readonly K8sObject[], kind: string, name: string): K8sObject | undefined {
  return objects.find((o) => o.kind === kind && o.metadata.name === name);
}

function label(object: K8sObject): string {
  return `${object.kind} ${object.metadata.name}`;
}

/** What a pod's downward API gives a container; a StatefulSet's pod is named `<set>-<ordinal>`. */
interface PodIdentity {
  readonly name: string;
  readonly namespace: string;
}

/**
 * A container's environment as the kubelet builds it: `envFrom` ConfigMaps, then `env` in
 * order, `$(VAR)` expanded from what is defined before. Secret values and field references
 * the pod identity does not cover are left undefined.
 */
function environmentOf(container: IContainer, workload: Workload, objects: readonly K8sObject[], pod?: PodIdentity): Map<string, string | undefined> {
  const env = new Map<string, string | undefined>();
  for (const source of container.envFrom ?? []) {
    if (source.configMapRef) {
      const configMap = find(objects, 'ConfigMap', source.configMapRef.name ?? '');
      assert.ok(configMap, `${label(workload.owner)}: container ${container.name}: envFrom names ConfigMap ${source.configMapRef.name}, which is not rendered`);
      for (const [key, value] of Object.entries((configMap['data'] ?? {}) as Record<string, string>)) env.set(`${source.prefix ?? ''}${key}`, value);
    }
  }
  const meta = workload.template.metadata ?? {};
  for (const variable of container.env ?? []) {
    if (variable.value !== undefined) {
      env.set(variable.name, expand(variable.value, env, `${label(workload.owner)}: env ${variable.name}`));
      continue;
    }
    const field = variable.valueFrom?.fieldRef?.fieldPath;
    let value: string | undefined;
    if (field === 'metadata.name') value = pod?.name;
    else if (field === 'metadata.namespace') value = pod?.namespace;
    else if (field && /^metadata\.(labels|annotations)\['.+'\]$/.test(field)) {
      const [, kind, key] = /^metadata\.(labels|annotations)\['(.+)'\]$/.exec(field)!;
      value = (kind === 'labels' ? meta.labels : meta.annotations)?.[key!];
      assert.ok(value !== undefined, `${label(workload.owner)}: env ${variable.name} reads ${field}, which its pod template does not set`);
    }
    env.set(variable.name, value);
  }
  return env;
}

/** `$(VAR)` expansion, as Kubernetes does in env values, command and args (`$$` escapes). */
function expand(text: string, env: ReadonlyMap<string, string | undefined>, where: string): string {
  return text.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (whole, name: string | undefined) => {
    if (whole === '$$') return '$';
    assert.ok(env.has(name!), `${where}: $(${name}) is defined nowhere in the container's environment: Kubernetes would pass it on as it is`);
    const value = env.get(name!);
    return value ?? `<${name}>`;
  });
}

/** Every container that runs cachewarm (the overlay's cachewarm image), with its options. */
function invocationsOf(rendered: Rendered, pod?: (workload: Workload) => PodIdentity): Invocation[] {
  const image = cachewarmImage(rendered);
  const invocations: Invocation[] = [];
  for (const workload of workloadsOf(rendered.objects)) {
    for (const container of containersOf(workload)) {
      if (container.image !== image) continue;
      assert.equal(container.command, undefined, `${label(workload.owner)}: container ${container.name}: no command, so that the image's entrypoint (tini, cachewarm) runs`);
      const env = environmentOf(container, workload, rendered.objects, pod?.(workload));
      const args = (container.args ?? []).map((arg) => expand(arg, env, `${label(workload.owner)}: container ${container.name}`));
      const at = args.findIndex((arg) => arg.startsWith('-'));
      const subcommand = at === -1 ? args : args.slice(0, at);
      const options = new Map<string, string | true>();
      for (let i = subcommand.length; i < args.length; i++) {
        const arg = args[i]!;
        assert.ok(arg.startsWith('--'), `${label(workload.owner)}: container ${container.name}: ${arg} is not an option`);
        const equals = arg.indexOf('=');
        if (equals !== -1) options.set(arg.slice(0, equals), arg.slice(equals + 1));
        else if (i + 1 < args.length && !args[i + 1]!.startsWith('--')) options.set(arg, args[++i]!);
        else options.set(arg, true);
      }
      invocations.push({ workload, container, subcommand, options });
    }
  }
  return invocations;
}

function cachewarmImage(rendered: Rendered): string {
  const entry = rendered.images.find((i) => i.name === 'cachewarm');
  assert.ok(entry?.newTag, `overlay ${rendered.overlay}: images: sets no tag for cachewarm`);
  return `${entry.newName ?? entry.name}:${entry.newTag}`;
}

function invocation(invocations: readonly Invocation[], ...subcommand: string[]): Invocation[] {
  return invocations.filter((i) => i.subcommand.join(' ') === subcommand.join(' '));
}

function option(inv: Invocation, name: string): string {
  const value = inv.options.get(name);
  assert.ok(typeof value === 'string', `${label(inv.workload.owner)}: container ${inv.container.name}: ${name} VALUE expected`);
  return value;
}

/** The ConfigMap or Secret key a file path given to a container lands on, through its volume mounts. */
function fileSource(inv: Invocation, objects: readonly K8sObject[], file: string): { object: K8sObject; key: string; value: string } {
  const where = `${label(inv.workload.owner)}: container ${inv.container.name}: ${file}`;
  const mount = (inv.container.volumeMounts ?? []).find((m) => path.posix.dirname(file) === m.mountPath.replace(/\/$/, ''));
  assert.ok(mount, `${where}: no volume is mounted at ${path.posix.dirname(file)}`);
  const volume = (inv.workload.template.spec.volumes ?? []).find((v) => v.name === mount.name);
  assert.ok(volume, `${where}: volume ${mount.name} is not in the pod`);
  const [kind, name] = volume.configMap ? ['ConfigMap', volume.configMap.name] : volume.secret ? ['Secret', volume.secret.secretName] : [];
  assert.ok(kind && name, `${where}: volume ${mount.name} is neither a ConfigMap nor a Secret`);
  const object = find(objects, kind, name);
  assert.ok(object, `${where}: ${kind} ${name} is not rendered`);
  const key = path.posix.basename(file);
  const data = { ...((object['data'] ?? {}) as Record<string, string>), ...((object['stringData'] ?? {}) as Record<string, string>) };
  assert.ok(key in data, `${where}: ${kind} ${name} has no key ${key}`);
  const value = kind === 'Secret' && object['data'] !== undefined && key in (object['data'] as object) ? Buffer.from(data[key]!, 'base64').toString('utf8') : data[key]!;
  return { object, key, value };
}

function selects(selector: Record<string, string> | undefined, labels: Record<string, string> | undefined): boolean {
  return selector !== undefined && Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels?.[k] === v);
}

/** The port a container listens on for a `host:port` option. */
function portOf(address: string): number {
  return Number(address.slice(address.lastIndexOf(':') + 1));
}

function containerPort(container: IContainer, port: number | string | undefined): number | undefined {
  return typeof port === 'number' ? port : container.ports?.find((p) => p.name === port)?.containerPort;
}

// ---------------------------------------------------------------------------------------

const missing = await kustomizeMissing();

// Without kustomize here, one skipped test says why (a skipped suite would count no test).
if (missing) test('the Kubernetes manifests', { skip: `${missing}: skipped` }, () => undefined);
else describe('the Kubernetes manifests', () => {
  const renders = new Map<string, Rendered>();
  let work = '';
  before(async () => {
    work = await mkdtemp(path.join(os.tmpdir(), 'cachewarm-k8s-'));
    for (const overlay of overlays) renders.set(overlay, await render(overlay, work));
  });
  after(() => rm(work, { recursive: true, force: true }));

  test('there is an overlay to render', () => {
    assert.ok(overlays.length > 0, 'deploy/kubernetes/overlays/ holds no overlay');
  });

  for (const overlay of overlays) {
    describe(`overlay ${overlay}`, () => {
      const rendered = (): Rendered => renders.get(overlay)!;

      test('every object is valid against its kind\'s schema, and has no field the schema does not know', async () => {
        const { objects } = rendered();
        assert.ok(objects.length > 0);
        const modules: string[] = [];
        for (const object of objects) {
          const found = await modelOf(object);
          assert.ok(found, `${object.apiVersion} ${label(object)}: no model in ${MODEL_PACKAGES.join(', ')} covers this kind`);
          assert.doesNotThrow(() => new found.model(object).validate(), `${label(object)} is not valid`);
          modules.push(found.module);
        }
        assert.deepEqual(unknownFields(objects, modules), []);
      });

      test('every container runs as a non-root user, without privilege escalation, with its resources set', () => {
        for (const workload of workloadsOf(rendered().objects)) {
          const pod = workload.template.spec.securityContext ?? {};
          for (const container of containersOf(workload)) {
            const where = `${label(workload.owner)}: container ${container.name}`;
            const context = container.securityContext ?? {};
            assert.equal(context.runAsNonRoot ?? pod.runAsNonRoot, true, `${where}: runAsNonRoot`);
            assert.notEqual(context.runAsUser ?? pod.runAsUser, 0, `${where}: runAsUser 0`);
            assert.equal(context.allowPrivilegeEscalation, false, `${where}: allowPrivilegeEscalation`);
            assert.ok(container.resources?.requests?.['memory'] && container.resources.limits?.['memory'], `${where}: memory request and limit`);
          }
        }
      });

      test('every image is one the overlay sets (images:), cachewarm\'s included', () => {
        const r = rendered();
        const set = new Set(r.images.map((i) => `${i.newName ?? i.name}:${i.newTag ?? 'latest'}`));
        const image = cachewarmImage(r);
        let cachewarmContainers = 0;
        for (const workload of workloadsOf(r.objects)) {
          for (const container of containersOf(workload)) {
            assert.ok(set.has(container.image ?? ''), `${label(workload.owner)}: container ${container.name}: image ${container.image} is not one the overlay sets (${[...set].join(', ')})`);
            if (container.image === image) cachewarmContainers++;
          }
        }
        assert.ok(cachewarmContainers >= 4, 'controller, sidecars, populators and the scale-up job run the cachewarm image');
      });

      test('every flag given to cachewarm is one its --help lists', async () => {
        const unknown: string[] = [];
        const helps = new Map<string, string>();
        for (const inv of invocationsOf(rendered())) {
          const key = inv.subcommand.join(' ');
          if (!helps.has(key)) {
            const { stdout } = await run(process.execPath, [cli, ...inv.subcommand, '--help'], { env: { ...process.env, CACHEWARM_LOG_FORMAT: 'text' } });
            helps.set(key, stdout);
          }
          const help = helps.get(key)!;
          for (const flag of inv.options.keys()) {
            if (!new RegExp(`(?<![\\w-])${flag}(?![\\w-])`).test(help)) unknown.push(`cachewarm ${key} ${flag} (${label(inv.workload.owner)})`);
          }
        }
        assert.ok(helps.size >= 4, `expected the controller, the sidecar, the populators and a warm; found ${[...helps.keys()].join(', ')}`);
        assert.deepEqual(unknown, [], 'flags the CLI does not know');
      });

      test('the files given to cachewarm are mounted: the topology parses with cachewarm\'s own parser, the tokens are there', () => {
        const r = rendered();
        for (const inv of invocationsOf(r)) {
          for (const [name, value] of inv.options) {
            if (name !== '--topology' && !name.endsWith('-file')) continue;
            const source = fileSource(inv, r.objects, String(value));
            if (name === '--topology') parseTopologyText(source.value, source.key);
            else assert.ok(source.value.trim() !== '', `${name} ${value}: empty`);
          }
        }
      });

      test('the sidecar: a readiness probe on /healthz of its API, no liveness probe anywhere in the memcached pod', () => {
        const sidecars = invocation(invocationsOf(rendered()), 'dumper', 'serve');
        assert.ok(sidecars.length > 0, 'no dumper sidecar is rendered');
        for (const inv of sidecars) {
          const where = `${label(inv.workload.owner)}: container ${inv.container.name}`;
          const probe = inv.container.readinessProbe?.httpGet;
          assert.equal(probe?.path, '/healthz', `${where}: readiness probe`);
          assert.equal(containerPort(inv.container, probe.port), portOf(option(inv, '--listen')), `${where}: the probe's port is the API's (--listen)`);
          for (const container of containersOf(inv.workload)) {
            assert.equal(container.livenessProbe, undefined, `${label(inv.workload.owner)}: container ${container.name}: a liveness probe would restart it`);
            assert.equal(container.startupProbe, undefined, `${label(inv.workload.owner)}: container ${container.name}: a startup probe kills what fails it`);
          }
          assert.ok(inv.container.resources?.limits?.['cpu'], `${where}: a CPU limit, so that a dump leaves memcached its CPU`);
        }
      });

      test('the topology names every memcached pod with a sidecar, by its node id, with its sidecar\'s URL; the sidecars signal the controller\'s service', () => {
        const r = rendered();
        const [controller] = invocation(invocationsOf(r), 'controller', 'serve');
        assert.ok(controller, 'no controller is rendered');
        const topologyFile = fileSource(controller, r.objects, option(controller, '--topology'));
        const topology: Topology = parseTopologyText(topologyFile.value, topologyFile.key);
        const listed = new Map([...topology.replicas.values()].flatMap((replica) => replica.nodes.map((node) => [node.id, node] as const)));

        const seen = new Set<string>();
        const sets = invocation(invocationsOf(r), 'dumper', 'serve').map((inv) => inv.workload);
        for (const workload of sets) {
          const set = workload.owner;
          assert.equal(set.kind, 'StatefulSet', `${label(set)}: the sidecar's node id is built from a StatefulSet pod's stable name`);
          const spec = set['spec'] as { replicas?: number; serviceName?: string };
          const service = find(r.objects, 'Service', spec.serviceName ?? '') as (K8sObject & IService) | undefined;
          assert.ok(service?.spec?.clusterIP === 'None', `${label(set)}: its serviceName ${spec.serviceName} is a headless Service`);
          assert.ok(selects(service.spec.selector, workload.template.metadata?.labels), `${label(set)}: Service ${service.metadata.name} selects its pods`);
          const namespace = set.metadata.namespace ?? r.namespace ?? 'default';
          for (let ordinal = 0; ordinal < (spec.replicas ?? 1); ordinal++) {
            const pod = { name: `${set.metadata.name}-${ordinal}`, namespace };
            const [inv] = invocation(invocationsOf(r, (w) => (w.owner === set ? pod : { name: '?', namespace })), 'dumper', 'serve').filter((i) => i.workload.owner === set);
            const id = option(inv!, '--node');
            const node = listed.get(id);
            assert.ok(node, `pod ${pod.name}: its sidecar's --node ${id} is not in the topology (${[...listed.keys()].join(', ')})`);
            assert.equal(node.host, `${pod.name}.${spec.serviceName}.${namespace}.svc.cluster.local`, `pod ${pod.name}: the topology's address is the pod's DNS name`);
            assert.equal(portOf(option(inv!, '--memcached')), node.port, `pod ${pod.name}: the sidecar dumps the port the topology lists`);
            assert.equal(node.sidecar, `http://${node.host}:${portOf(option(inv!, '--listen'))}`, `pod ${pod.name}: the topology's sidecar URL`);
            seen.add(id);

            // Restart signals reach the controller's Service, on the port of its API.
            const url = new URL(option(inv!, '--controller'));
            const controllerService = find(r.objects, 'Service', url.hostname.split('.')[0]!) as (K8sObject & IService) | undefined;
            assert.ok(controllerService, `${label(set)}: --controller ${url.href}: no such Service`);
            assert.ok(selects(controllerService.spec?.selector, controller.workload.template.metadata?.labels), `Service ${controllerService.metadata.name} selects the controller`);
            const port = controllerService.spec?.ports?.find((p) => p.port === Number(url.port));
            assert.equal(containerPort(controller.container, port?.targetPort), portOf(option(controller, '--listen')), `--controller ${url.href}: the controller's API`);
          }
        }
        assert.deepEqual([...listed.keys()].filter((id) => !seen.has(id)), [], 'topology nodes without a memcached pod and sidecar');
      });

      test('the populators: KEDA scales them from 0 on the queue the controller and the scale-up job are given, and they accept its location', () => {
        const r = rendered();
        const invocations = invocationsOf(r);
        const [controller] = invocation(invocations, 'controller', 'serve');
        const populators = invocation(invocations, 'populator');
        const warms = invocation(invocations, 'warm', 'replica');
        assert.ok(controller && populators.length === 1 && warms.length > 0, 'a controller, a populator Deployment and a scale-up job');
        const queueUrl = option(controller, '--queue-url');
        assert.match(queueUrl, /^https:\/\/sqs\.[a-z0-9-]+\.amazonaws\.com\/\d{12}\/[\w-]+$/);
        const [populator] = populators as [Invocation];
        assert.equal(option(populator, '--queue-url'), queueUrl);
        for (const warm of warms) {
          assert.equal(option(warm, '--transport'), 'aws');
          assert.equal(option(warm, '--queue-url'), queueUrl, `${label(warm.workload.owner)}`);
          assert.equal(option(warm, '--bucket'), option(controller, '--bucket'));
          assert.equal(option(warm, '--prefix'), option(controller, '--prefix'));
        }
        assert.equal(option(controller, '--transport'), 'aws');
        assert.equal(populator.options.get('--follow'), true, 'populators keep polling the standing queue');
        assert.equal(option(populator, '--allow-location'), `s3://${option(controller, '--bucket')}/${option(controller, '--prefix')}`, 'the populators accept the controller\'s chunks');
        assert.ok((populator.workload.template.spec.terminationGracePeriodSeconds ?? 30) >= 30, 'time to hand chunks back on SIGTERM');

        const scalers = r.objects.filter((o) => o.kind === 'ScaledObject') as (K8sObject & IScaledObject)[];
        assert.equal(scalers.length, 1);
        const [scaler] = scalers as [K8sObject & IScaledObject];
        assert.equal(scaler.spec?.scaleTargetRef.name, populator.workload.owner.metadata.name, 'the scaler scales the populators');
        assert.equal(scaler.spec?.scaleTargetRef.kind ?? 'Deployment', populator.workload.owner.kind);
        assert.equal(scaler.spec?.minReplicaCount, 0);
        assert.ok((scaler.spec?.maxReplicaCount ?? 0) >= 1);
        assert.equal((populator.workload.owner['spec'] as { replicas?: number }).replicas, undefined, 'KEDA owns the replica count');
        const [trigger, ...more] = scaler.spec?.triggers ?? [];
        assert.ok(trigger && more.length === 0);
        assert.equal(trigger.type, 'aws-sqs-queue');
        assert.equal(trigger.metadata['queueURL'], queueUrl, 'the scaler watches the queue the controller fills');
        assert.equal(trigger.metadata['awsRegion'], /^https:\/\/sqs\.([a-z0-9-]+)\./.exec(queueUrl)?.[1], 'the queue\'s region');
        assert.match(trigger.metadata['queueLength'] ?? '', /^[1-9]\d*$/);
        const auth = find(r.objects, 'TriggerAuthentication', trigger.authenticationRef?.name ?? '') as (K8sObject & ITriggerAuthentication) | undefined;
        assert.ok(auth, `TriggerAuthentication ${trigger.authenticationRef?.name} is not rendered`);
        assert.equal(auth.spec?.podIdentity?.provider, 'aws');
      });

      test('references resolve: service accounts (with their IAM role), Services and monitors select what they mean', () => {
        const r = rendered();
        for (const workload of workloadsOf(r.objects)) {
          const name = workload.template.spec.serviceAccountName;
          if (name === undefined) continue;
          const account = find(r.objects, 'ServiceAccount', name);
          assert.ok(account, `${label(workload.owner)}: ServiceAccount ${name} is not rendered`);
          assert.match(account.metadata.annotations?.['eks.amazonaws.com/role-arn'] ?? '', /^arn:aws:iam::\d{12}:role\/[\w+=,.@/-]+$/, `ServiceAccount ${name}: IRSA role`);
          for (const volume of workload.template.spec.volumes ?? []) {
            if (volume.configMap) assert.ok(find(r.objects, 'ConfigMap', volume.configMap.name ?? ''), `${label(workload.owner)}: ConfigMap ${volume.configMap.name}`);
            if (volume.secret) assert.ok(find(r.objects, 'Secret', volume.secret.secretName ?? ''), `${label(workload.owner)}: Secret ${volume.secret.secretName}`);
          }
        }
        const workloads = workloadsOf(r.objects);
        for (const service of r.objects.filter((o) => o.kind === 'Service') as (K8sObject & IService)[]) {
          const selected = workloads.filter((w) => selects(service.spec?.selector, w.template.metadata?.labels));
          assert.ok(selected.length > 0, `${label(service)} selects no pods`);
          for (const port of service.spec?.ports ?? []) {
            const target = port.targetPort ?? port.port;
            assert.ok(selected.some((w) => containersOf(w).some((c) => containerPort(c, target) !== undefined)), `${label(service)}: port ${port.name}: no container port ${target}`);
          }
        }
        const invocations = invocationsOf(r);
        for (const monitor of r.objects.filter((o) => o.kind === 'ServiceMonitor') as (K8sObject & IServiceMonitor)[]) {
          const services = (r.objects.filter((o) => o.kind === 'Service') as (K8sObject & IService)[]).filter((s) => selects(monitor.spec.selector.matchLabels, s.metadata.labels));
          assert.equal(services.length, 1, `${label(monitor)} selects one Service`);
          for (const endpoint of monitor.spec.endpoints ?? []) {
            const port = services[0]!.spec?.ports?.find((p) => p.name === endpoint.port);
            const pods = invocations.filter((i) => selects(services[0]!.spec?.selector, i.workload.template.metadata?.labels));
            assert.ok(port && pods.length > 0, `${label(monitor)}: port ${endpoint.port}`);
            for (const pod of pods) assert.equal(containerPort(pod.container, port.targetPort), portOf(option(pod, '--metrics-listen')), `${label(monitor)}: the metrics listener (no token)`);
          }
        }
        for (const monitor of r.objects.filter((o) => o.kind === 'PodMonitor') as (K8sObject & IPodMonitor)[]) {
          const pods = invocations.filter((i) => selects(monitor.spec.selector.matchLabels, i.workload.template.metadata?.labels));
          assert.ok(pods.length > 0, `${label(monitor)} selects no cachewarm pods`);
          for (const endpoint of monitor.spec.podMetricsEndpoints ?? []) {
            for (const pod of pods) assert.equal(containerPort(pod.container, endpoint.port), portOf(option(pod, '--metrics-listen')), `${label(monitor)}: the metrics listener (no token)`);
          }
        }
        for (const job of r.objects.filter((o) => o.kind === 'CronJob') as (K8sObject & ICronJob)[]) {
          assert.equal(job.spec?.concurrencyPolicy, 'Forbid', `${label(job)}: never two runs of one job id at once`);
        }
      });
    });
  }
});
