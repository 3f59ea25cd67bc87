/**
 * The load generator, run as its own process by bench/run.ts so it never shares an event loop
 * with the proxy it measures:
 *   node bench/load.ts <url> <connections> <duration-s> <warmup-s>
 * Runs autocannon once to warm up (JIT, connection pools; result thrown away), then once to
 * measure, and prints one JSON object (a LoadResult) on stdout.
 */
import autocannon, { type AutocannonOptions, type AutocannonResult } from 'autocannon';

/** What bench/run.ts reads back: the measured run, reduced to the figures it reports. */
export interface LoadResult {
  tool: 'autocannon' | 'wrk' | 'h2load';
  /** Seconds actually measured. */
  duration: number;
  /** Completed requests (any status). */
  requests: number;
  rps: number;
  /** Latency in ms. */
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
  /** Connection errors and timeouts. */
  errors: number;
  non2xx: number;
  /** The application protocol h2load reports ("h2", "h2c", "http/1.1"); h2load only. */
  protocol?: string;
  /** TLS version and cipher h2load reports, over TLS; h2load only. */
  tls?: string;
}

function run(options: AutocannonOptions): Promise<AutocannonResult> {
  return new Promise((resolve, reject) => {
    autocannon(options, (err, result) => (err ? reject(err) : resolve(result)));
  });
}

async function main(): Promise<void> {
  const [url, connectionsText, durationText, warmupText] = process.argv.slice(2);
  const connections = Number(connectionsText);
  const duration = Number(durationText);
  const warmup = Number(warmupText);
  if (!url || !(connections > 0) || !(duration > 0) || !(warmup >= 0)) {
    console.error('usage: node bench/load.ts <url> <connections> <duration-s> <warmup-s>');
    process.exit(2);
  }
  // A 5 s timeout: anything slower than that on loopback is a failure worth counting.
  if (warmup > 0) await run({ url, connections, duration: warmup, timeout: 5 });
  const r = await run({ url, connections, duration, timeout: 5 });
  const requests = r.requests.total;
  const result: LoadResult = {
    tool: 'autocannon',
    duration: r.duration,
    requests,
    // Total over elapsed time rather than autocannon's mean of 1 s samples: same figure when
    // steady, and it does not drop the partial last second.
    rps: r.duration > 0 ? requests / r.duration : 0,
    p50: r.latency.p50,
    p90: r.latency.p90,
    p99: r.latency.p99,
    max: r.latency.max,
    mean: r.latency.mean,
    errors: r.errors,
    non2xx: r.non2xx,
  };
  process.stdout.write(JSON.stringify(result) + '\n');
}

await main();
