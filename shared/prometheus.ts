/**
 * Prometheus metrics, through prom-client. Each server keeps a Registry of its own (never
 * prom-client's global one: several servers may share a process, as in the tests), registers
 * its cachewarm_* metrics there (values read from its state by `collect` hooks at scrape
 * time), then passes it through withProcessMetrics.
 */
import { Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { VERSION } from './version.js';

/** Built on first use, once per process: see withProcessMetrics. */
let processRegistry: Registry | undefined;

/**
 * What the process reports about itself: prom-client's default metrics (process_* and
 * nodejs_*: CPU, memory, start time, file descriptors, event loop lag, heap, GC) and
 * `cachewarm_build_info{version,nodejs_version} 1`. They describe the process, not a
 * server, so they are collected once (a private registry, not prom-client's global one)
 * and shared by every server: the event-loop-delay monitor and the GC observer that
 * collectDefaultMetrics starts cannot be stopped, and per server they would pile up (neither
 * keeps the process alive).
 */
function processMetrics(): Registry {
  if (processRegistry) return processRegistry;
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  new Gauge({
    name: 'cachewarm_build_info',
    help: 'The cachewarm build serving these metrics (always 1).',
    labelNames: ['version', 'nodejs_version'],
    registers: [registry],
  }).set({ version: VERSION, nodejs_version: process.version }, 1);
  processRegistry = registry;
  return registry;
}

/**
 * The registry a server serves at /metrics: its own metrics (all registered already: this
 * takes them as they are now), then the build and process ones. Serve it with
 * `registry.metrics()` and `registry.contentType`.
 */
export function withProcessMetrics(own: Registry): Registry {
  return Registry.merge([own, processMetrics()]);
}
