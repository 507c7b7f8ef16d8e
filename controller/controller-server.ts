/**
 * The controller as a service: an authenticated HTTP API that takes the sidecars' restart
 * signals and runs instance warms through the job manager.
 *
 *   GET  /healthz               no token: is the service up, how many jobs are under way
 *   POST /v1/signals/restart    a RestartSignal → 202 { outcome, job } (new, or the one it collapsed into)
 *   POST /v1/jobs               { node } → 202 { outcome, job }: warm a node by hand
 *   GET  /v1/jobs               { jobs }: under way first, then finished, newest first
 *   GET  /v1/jobs/:id           the job, with its decision and counters
 *   GET  /metrics               Prometheus text
 *
 * Every other request carries `Authorization: Bearer <token>`. Errors are JSON
 * `{ error: { code, message, field? } }`. A signal for a node the topology does not have is a
 * 404 naming the node (the notifier takes a 4xx as final: sending it again would not help).
 */
import type http from 'node:http';
import { Counter, Gauge, Registry } from 'prom-client';
import { RESTART_SIGNAL_PATH } from '../dumper/restart-notifier.js';
import type { RestartSignal } from '../dumper/restart-watcher.js';
import { CachewarmError, isCachewarmError } from '../shared/errors.js';
import { reconcileOutcomes } from '../shared/counters.js';
import {
  BearerAuth,
  HttpError,
  type Reply,
  allow,
  createJsonApiServer,
  createMetricsServer,
  idInPath,
  listenHttp,
  metricsReply,
  readJsonBody,
} from '../shared/http-api.js';
import { withProcessMetrics } from '../shared/prometheus.js';
import { VERSION } from '../shared/version.js';
import { type NodeSpec, type Topology, findNode } from '../shared/topology.js';
import type { WarmDecision } from './expected-share.js';
import { ACTIVE_STATES, type InstanceJobManager, type InstanceJobView, JOB_STATES, type JobTrigger, type SubmitOutcome, type SubmitResult } from './instance-jobs.js';
import { type Log, safeLog } from '../shared/log.js';

export const CONTROLLER_PATHS = { health: '/healthz', metrics: '/metrics', jobs: '/v1/jobs', restartSignal: RESTART_SIGNAL_PATH } as const;

/** A signal or a manual request is a few hundred bytes. */
const MAX_REQUEST_BODY_BYTES = 64 << 10;
const MAX_CONNECTIONS = 64;
/** How long close() lets requests in flight finish before cutting their connections. */
const CLOSE_GRACE_MS = 2_000;

export interface ControllerServerOptions {
  /** The bearer token every request but the health check must carry. */
  readonly token: string;
  readonly jobs: InstanceJobManager;
  /** The current topology (it may be reloaded between calls). */
  readonly topology: () => Topology;
  /** Named in refusals, so an operator knows which file lacks the node. */
  readonly topologyFile?: string | undefined;
  /** One structured event per call. Never sees the token. */
  readonly log?: Log | undefined;
}

export interface ControllerServer {
  /** Starts listening; port 0 picks a free one. Resolves with the base URL. */
  listen(host: string, port: number): Promise<{ url: string }>;
  /** Serves `/metrics` without the token on a listener of its own (see createMetricsServer). */
  listenMetrics(host: string, port: number): Promise<{ url: string }>;
  /** Stops taking requests and closes its connections. The jobs are the manager's to close. Idempotent. */
  close(): Promise<void>;
}

export interface SubmitAnswer {
  readonly outcome: SubmitOutcome;
  readonly job: InstanceJobView;
}

export interface HealthAnswer {
  readonly ok: true;
  readonly activeJobs: number;
  readonly topology: { readonly replicas: number; readonly nodes: number };
}

// ---------------------------------------------------------------------------------------
// Request bodies

/**
 * A RestartSignal as the notifier sends it. Fields this version does not know are ignored:
 * a refusal is final for the notifier, so a newer sidecar's extra field must not lose a signal.
 */
export function parseRestartSignal(body: unknown): RestartSignal {
  const record = recordOf(body, 'a restart signal');
  const detectedAt = text(record, 'detectedAt');
  if (Number.isNaN(Date.parse(detectedAt))) throw invalid('detectedAt', `expected an ISO 8601 time, got ${JSON.stringify(detectedAt)}`);
  return {
    node: text(record, 'node'),
    replica: text(record, 'replica'),
    pid: count(record, 'pid'),
    uptimeSeconds: count(record, 'uptimeSeconds'),
    items: count(record, 'items'),
    detectedAt,
  };
}

/** `{ node: "replica/host:port" }` */
export function parseManualRequest(body: unknown): { readonly node: string } {
  return { node: text(recordOf(body, 'a request like { "node": "replica/host:port" }'), 'node') };
}

function recordOf(body: unknown, what: string): Readonly<Record<string, unknown>> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw invalid('(body)', `expected ${what}, got ${JSON.stringify(body)}`);
  return body as Readonly<Record<string, unknown>>;
}

function text(record: Readonly<Record<string, unknown>>, field: string): string {
  const value = record[field];
  if (typeof value !== 'string' || value === '') throw invalid(field, `expected a non-empty string, got ${JSON.stringify(value) ?? 'nothing'}`);
  return value;
}

function count(record: Readonly<Record<string, unknown>>, field: string): number {
  const value = record[field];
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw invalid(field, `expected a whole number from 0, got ${JSON.stringify(value) ?? 'nothing'}`);
  }
  return value;
}

function invalid(field: string, message: string): HttpError {
  return new HttpError(400, 'INVALID_ARGUMENT', `${field}: ${message}`, {}, field);
}

// ---------------------------------------------------------------------------------------
// Metrics

/** Requests for a warm, by what became of them. */
type SignalOutcome = SubmitOutcome | 'refused';
const SIGNAL_OUTCOMES: readonly SignalOutcome[] = ['created', 'collapsed', 'superseded', 'refused'];

/**
 * The controller's metrics registry, and the requests counter it counts into. The rest is read
 * from the job manager when scraped (the `collect` hooks); counters are present, at 0, from
 * start-up.
 */
function controllerMetrics(jobs: InstanceJobManager): { registry: Registry; requests: Counter<'outcome'> } {
  const registry = new Registry();
  const registers = [registry];
  new Gauge({
    name: 'cachewarm_controller_jobs',
    help: 'Jobs kept by the controller (under way, and the recent finished ones), by state.',
    labelNames: ['state'],
    registers,
    collect() {
      const { jobsByState } = jobs.metrics();
      for (const state of JOB_STATES) this.set({ state }, jobsByState.get(state) ?? 0);
    },
  });
  new Counter({
    name: 'cachewarm_controller_jobs_ended_total',
    help: 'Jobs that reached a final state since the controller started, by state.',
    labelNames: ['state'],
    registers,
    collect() {
      this.reset();
      const { endedTotal } = jobs.metrics();
      for (const state of JOB_STATES.filter((s) => !ACTIVE_STATES.has(s))) this.inc({ state }, endedTotal.get(state) ?? 0);
    },
  });
  const requests = new Counter({
    name: 'cachewarm_controller_requests_total',
    help: 'Restart signals and manual requests, by outcome: a new job, collapsed into one under way, superseding one, refused.',
    labelNames: ['outcome'],
    registers,
  });
  for (const outcome of SIGNAL_OUTCOMES) requests.inc({ outcome }, 0);
  new Counter({
    name: 'cachewarm_controller_items_written_total',
    help: 'Items written to each node by its instance warms (jobs under way included).',
    labelNames: ['node'],
    registers,
    collect() {
      this.reset();
      for (const [node, written] of jobs.metrics().writtenByNode) this.inc({ node }, written.stored);
    },
  });
  new Counter({
    name: 'cachewarm_controller_reconciled_items_total',
    help:
      "The delete reconcile of each node's instance warms, by outcome: checked (looked up at the source), removed (deleted there, taken back), " +
      'kept (deleted there, changed here since), gone (deleted in both already), unchecked (never looked up: reported).',
    labelNames: ['node', 'outcome'],
    registers,
    collect() {
      this.reset();
      for (const [node, written] of jobs.metrics().writtenByNode) {
        for (const [outcome, value] of Object.entries(reconcileOutcomes(written))) this.inc({ node, outcome }, value);
      }
    },
  });
  const perDecision = (name: string, help: string, value: (last: { readonly decision: WarmDecision; readonly atMs: number }) => number): void => {
    new Gauge({
      name,
      help,
      labelNames: ['node'],
      registers,
      collect() {
        this.reset();
        for (const [node, d] of jobs.metrics().lastDecisions) this.set({ node }, value(d));
      },
    });
  };
  perDecision('cachewarm_controller_last_decision_warm', 'The last decision for each node: 1 warm, 0 left alone.', (d) => (d.decision.warm ? 1 : 0));
  perDecision(
    'cachewarm_controller_last_decision_share_ratio',
    "The node's items over its expected items at the last decision (NaN when no expectation could be made).",
    (d) => d.decision.ratio ?? Number.NaN,
  );
  perDecision('cachewarm_controller_last_decision_timestamp_seconds', 'When the last decision for each node was made, unix seconds.', (d) => d.atMs / 1000);
  return { registry: withProcessMetrics(registry), requests };
}

// ---------------------------------------------------------------------------------------
// The server

export function createControllerServer(options: ControllerServerOptions): ControllerServer {
  const log = safeLog(options.log);
  if (options.token === '') throw new CachewarmError('INVALID_ARGUMENT', 'the controller needs a non-empty token');
  const auth = new BearerAuth(options.token, 'cachewarm-controller');
  const { jobs } = options;
  const metrics = controllerMetrics(jobs);
  const counted = (outcome: SignalOutcome): void => metrics.requests.inc({ outcome });
  let closing: Promise<void> | undefined;

  /** The node as the current topology has it: 404 naming it (and the file) when it has none. */
  function nodeNamed(id: string, topology: Topology, field: string): NodeSpec {
    try {
      return findNode(topology, id);
    } catch (error) {
      if (isCachewarmError(error, 'INVALID_ARGUMENT')) throw new HttpError(400, 'INVALID_ARGUMENT', `${field}: ${error.message}`, {}, field);
      if (!isCachewarmError(error, 'TOPOLOGY_INVALID')) throw error;
      const file = options.topologyFile ? ` ${options.topologyFile}` : '';
      // findNode's message starts by naming the node too.
      const detail = error.message.replace(`node ${JSON.stringify(id)}: `, '');
      throw new HttpError(404, 'UNKNOWN_NODE', `node ${JSON.stringify(id)} is not in the topology${file}: ${detail}`, {}, field);
    }
  }

  /** Reads and checks a body; 503 once closing (the sender retries with the next controller). */
  async function bodyOf<T>(req: http.IncomingMessage, parse: (body: unknown) => T): Promise<T> {
    const body = await readJsonBody(req, MAX_REQUEST_BODY_BYTES);
    if (closing) throw new HttpError(503, 'SHUTTING_DOWN', 'the controller is shutting down; send it again to the next one', { 'retry-after': '5' });
    return parse(body);
  }

  function submit(node: NodeSpec, topology: Topology, trigger: JobTrigger): SubmitResult {
    try {
      return jobs.submit(node, topology, trigger);
    } catch (error) {
      if (isCachewarmError(error, 'ABORTED')) throw new HttpError(503, 'SHUTTING_DOWN', error.message, { 'retry-after': '5' });
      throw error;
    }
  }

  /** Runs `check`; a refusal (a 4xx) is counted and logged as `event` before it is answered. */
  async function refusals<T>(event: string, check: () => Promise<T>): Promise<T> {
    try {
      return await check();
    } catch (error) {
      if (error instanceof HttpError && error.status < 500) {
        counted('refused');
        log({ event, status: error.status, code: error.code, reason: error.message });
      }
      throw error;
    }
  }

  async function restartSignal(req: http.IncomingMessage): Promise<Reply> {
    const topology = options.topology();
    const { restart, node } = await refusals('signal-refused', async () => {
      const restart = await bodyOf(req, parseRestartSignal);
      const node = nodeNamed(restart.node, topology, 'node');
      if (node.replica !== restart.replica) {
        throw new HttpError(400, 'INVALID_ARGUMENT', `replica: node ${restart.node} is in replica ${node.replica}, not ${JSON.stringify(restart.replica)}`, {}, 'replica');
      }
      return { restart, node };
    });
    const result = submit(node, topology, { kind: 'restart', restart });
    counted(result.outcome);
    log({
      event: 'signal-received',
      node: node.id,
      pid: restart.pid,
      uptimeSeconds: restart.uptimeSeconds,
      items: restart.items,
      detectedAt: restart.detectedAt,
      outcome: result.outcome,
      jobId: result.job.id,
    });
    return accepted(result);
  }

  async function manualJob(req: http.IncomingMessage): Promise<Reply> {
    const topology = options.topology();
    const node = await refusals('manual-request-refused', async () => nodeNamed((await bodyOf(req, parseManualRequest)).node, topology, 'node'));
    const result = submit(node, topology, { kind: 'manual' });
    counted(result.outcome);
    log({ event: 'manual-request', node: node.id, outcome: result.outcome, jobId: result.job.id });
    return accepted(result);
  }

  function accepted(result: SubmitResult): Reply {
    const body: SubmitAnswer = { outcome: result.outcome, job: result.job };
    return { status: 202, body, headers: { location: `${CONTROLLER_PATHS.jobs}/${encodeURIComponent(result.job.id)}` } };
  }

  function health(): Reply {
    const topology = options.topology();
    const nodes = [...topology.replicas.values()].reduce((sum, r) => sum + r.nodes.length, 0);
    const { jobsByState } = jobs.metrics();
    const active = [...ACTIVE_STATES].reduce((sum, state) => sum + (jobsByState.get(state) ?? 0), 0);
    const body: HealthAnswer = { ok: true, activeJobs: active, topology: { replicas: topology.replicas.size, nodes } };
    return { status: 200, body };
  }

  async function route(req: http.IncomingMessage, pathname: string): Promise<Reply> {
    if (pathname === CONTROLLER_PATHS.health) {
      allow(req.method, ['GET']);
      return health();
    }
    auth.require(req.headers.authorization);
    if (pathname === CONTROLLER_PATHS.metrics) {
      allow(req.method, ['GET']);
      return metricsReply(metrics.registry);
    }
    if (pathname === CONTROLLER_PATHS.restartSignal) {
      allow(req.method, ['POST']);
      return restartSignal(req);
    }
    if (pathname === CONTROLLER_PATHS.jobs) {
      allow(req.method, ['GET', 'POST']);
      return req.method === 'POST' ? manualJob(req) : { status: 200, body: { jobs: jobs.list() } };
    }
    const jobId = idInPath(pathname, CONTROLLER_PATHS.jobs);
    if (jobId === undefined) throw new HttpError(404, 'NOT_FOUND', `no such path: ${pathname}`);
    allow(req.method, ['GET']);
    const job = jobs.get(jobId);
    if (!job) throw new HttpError(404, 'NOT_FOUND', `no job ${JSON.stringify(jobId)} (finished jobs are kept for a while, then forgotten)`);
    return { status: 200, body: job };
  }

  const server = createJsonApiServer({ route, log, maxConnections: MAX_CONNECTIONS });
  const metricsServer = createMetricsServer(metrics.registry, log);

  return {
    async listen(host, port) {
      const url = await listenHttp(server, host, port);
      log({ event: 'listening', url, version: VERSION });
      return { url };
    },
    async listenMetrics(host, port) {
      const url = await listenHttp(metricsServer, host, port);
      log({ event: 'metrics-listening', url: `${url}/metrics` });
      return { url };
    },
    close() {
      closing ??= (async () => {
        if (metricsServer.listening) metricsServer.close();
        metricsServer.closeAllConnections();
        const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
        server.closeIdleConnections();
        const grace = setTimeout(() => server.closeAllConnections(), CLOSE_GRACE_MS);
        await stopped;
        clearTimeout(grace);
      })();
      return closing;
    },
  };
}
