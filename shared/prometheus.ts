/**
 * Prometheus text exposition (format 0.0.4), just enough for a few counters and gauges:
 * `# HELP`, `# TYPE`, then one line per labelled sample. No client library: the sidecar's
 * handful of metrics is rendered from state it keeps anyway, on each scrape.
 */

export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

export type MetricType = 'counter' | 'gauge';

export interface Sample {
  readonly labels?: Readonly<Record<string, string>> | undefined;
  readonly value: number;
}

export interface Metric {
  readonly name: string;
  readonly help: string;
  readonly type: MetricType;
  readonly samples: readonly Sample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
// Names starting `__` are reserved for Prometheus itself.
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** A label value inside double quotes: backslash, double quote and line feed are escaped. */
export function escapeLabelValue(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/** HELP text: only backslash and line feed are escaped (a quote is literal there). */
export function escapeHelp(text: string): string {
  return text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

export function formatValue(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Number.POSITIVE_INFINITY) return '+Inf';
  if (value === Number.NEGATIVE_INFINITY) return '-Inf';
  return String(value);
}

function labelSet(labels: Readonly<Record<string, string>> | undefined, metric: string): string {
  const entries = Object.entries(labels ?? {});
  if (entries.length === 0) return '';
  const parts = entries.map(([name, value]) => {
    if (!LABEL_NAME.test(name) || name.startsWith('__')) throw new Error(`metric ${metric}: invalid label name ${JSON.stringify(name)}`);
    return `${name}="${escapeLabelValue(value)}"`;
  });
  return `{${parts.join(',')}}`;
}

/**
 * Renders metrics as exposition text. A bad metric or label name is a programming error
 * (names are constants here), so it throws rather than emit text a scraper would reject whole.
 */
export function renderMetrics(metrics: readonly Metric[]): string {
  const lines: string[] = [];
  for (const metric of metrics) {
    if (!METRIC_NAME.test(metric.name)) throw new Error(`invalid metric name ${JSON.stringify(metric.name)}`);
    lines.push(`# HELP ${metric.name} ${escapeHelp(metric.help)}`);
    lines.push(`# TYPE ${metric.name} ${metric.type}`);
    for (const sample of metric.samples) {
      lines.push(`${metric.name}${labelSet(sample.labels, metric.name)} ${formatValue(sample.value)}`);
    }
  }
  return lines.length === 0 ? '' : `${lines.join('\n')}\n`;
}

/**
 * What every cachewarm process reports about itself: its build (`cachewarm_build_info`, 1,
 * labelled with the version and the Node.js version), resident memory, CPU seconds and start
 * time, under the names Prometheus' own client libraries use.
 */
export function processMetrics(version: string): Metric[] {
  const cpu = process.cpuUsage();
  return [
    {
      name: 'cachewarm_build_info',
      help: 'The cachewarm build serving these metrics (always 1).',
      type: 'gauge',
      samples: [{ labels: { version, nodejs_version: process.version }, value: 1 }],
    },
    { name: 'process_resident_memory_bytes', help: 'Resident memory size in bytes.', type: 'gauge', samples: [{ value: process.memoryUsage.rss() }] },
    { name: 'process_cpu_seconds_total', help: 'Total user and system CPU time spent in seconds.', type: 'counter', samples: [{ value: (cpu.user + cpu.system) / 1e6 }] },
    {
      name: 'process_start_time_seconds',
      help: 'Start time of the process since unix epoch in seconds.',
      type: 'gauge',
      samples: [{ value: Math.round((Date.now() - process.uptime() * 1000) / 1000) }],
    },
  ];
}
