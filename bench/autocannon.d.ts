/**
 * The small part of autocannon's API that bench/load.ts uses; the package ships no types.
 * Kept as an ambient declaration (no top-level import/export) so `import autocannon from
 * 'autocannon'` resolves to it.
 */
declare module 'autocannon' {
  interface AutocannonOptions {
    url: string;
    connections?: number;
    /** Seconds. */
    duration?: number;
    /** Seconds before a request counts as a timeout (and an error). */
    timeout?: number;
    pipelining?: number;
    workers?: number;
  }

  /** A histogram summary as autocannon reports it (latency in ms, requests per second sample). */
  interface AutocannonStats {
    average: number;
    mean: number;
    stddev: number;
    min: number;
    max: number;
    total: number;
    p50: number;
    p90: number;
    p99: number;
    p99_9?: number;
    [percentile: string]: number | undefined;
  }

  interface AutocannonResult {
    url: string;
    connections: number;
    /** Seconds, to the hundredth. */
    duration: number;
    /** Every failed request, timeouts included. */
    errors: number;
    timeouts: number;
    resets: number;
    mismatches: number;
    non2xx: number;
    '2xx': number;
    latency: AutocannonStats;
    requests: AutocannonStats & { sent: number };
    throughput: AutocannonStats;
  }

  function autocannon(options: AutocannonOptions, done: (err: Error | null, result: AutocannonResult) => void): unknown;

  export default autocannon;
  export type { AutocannonOptions, AutocannonResult, AutocannonStats };
}
