// parse-prometheus-text-format 1.1 ships no types: what its README shows (prom2json's shape).
declare module 'parse-prometheus-text-format' {
  /** A counter, gauge or untyped sample; values stay the text the exposition had. */
  export interface Sample {
    readonly value: string;
    readonly labels?: Readonly<Record<string, string>>;
    readonly timestamp_ms?: string;
  }

  /** A histogram or summary, flattened: buckets by `le` (or quantiles), count and sum. */
  export interface Distribution {
    readonly buckets?: Readonly<Record<string, string>>;
    readonly quantiles?: Readonly<Record<string, string>>;
    readonly count?: string;
    readonly sum?: string;
    readonly labels?: Readonly<Record<string, string>>;
  }

  export interface MetricFamily {
    readonly name: string;
    /** '' when the exposition had no HELP line. */
    readonly help: string;
    /** 'UNTYPED' when the exposition had no TYPE line. */
    readonly type: 'COUNTER' | 'GAUGE' | 'HISTOGRAM' | 'SUMMARY' | 'UNTYPED';
    readonly metrics: readonly (Sample | Distribution)[];
  }

  /** Throws on a line it cannot parse. */
  export default function parsePrometheusTextFormat(text: string): MetricFamily[];
}
