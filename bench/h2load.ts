/**
 * h2load (nghttp2's load generator; Debian: nghttp2-client) for the HTTP/2 rows, and for the
 * HTTP/1.1 rows they are compared with, so both sides of a ratio come from the same tool in the
 * same run. C, one thread here, like wrk cheap enough to leave the proxy most of a core.
 *
 * h2load prints min, max, mean and standard deviation but no percentiles, so every run writes its
 * per-request log (`--log-file`: start, status, microseconds to the end of the response) to a
 * temporary file and p50, p90 and p99 are taken from it. With `--warm-up-time` h2load counts,
 * reports and logs only the measured period.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runCommand } from './children.ts';
import type { LoadResult } from './load.ts';

/** Whether `h2load` can be run here. */
export function haveH2load(): boolean {
  const probe = spawnSync('h2load', ['--version'], { stdio: 'ignore', timeout: 5000 });
  return probe.error === undefined && probe.status === 0;
}

/** One h2load run. */
export interface H2loadRun {
  /**
   * "h2": HTTP/2, h2c with prior knowledge on http:// and h2 by ALPN on https://; "h1": HTTP/1.1
   * (`--h1`), one request at a time per connection (no pipelining).
   */
  protocol: 'h1' | 'h2';
  /** Connections (h2load's clients). */
  connections: number;
  /** Streams in flight per connection with "h2" (h2load -m); always 1 with "h1". */
  streams: number;
  /** Seconds measured. */
  duration: number;
  /** Seconds of load before the measured period, on the same connections (h2load --warm-up-time; 0 for none). */
  warmup: number;
}

/** What h2load reports as the application protocol for `run` on `url`. */
function expectedProtocol(url: string, protocol: H2loadRun['protocol']): string {
  if (protocol === 'h1') return 'http/1.1';
  return new URL(url).protocol === 'https:' ? 'h2' : 'h2c';
}

/**
 * Runs h2load against `url` and reads its report and per-request log. Throws when h2load fails,
 * when the connection speaks another protocol than asked for (an h2 row served over HTTP/1.1
 * must not pass as HTTP/2), or when nothing was answered.
 */
export async function runH2load(url: string, run: H2loadRun): Promise<LoadResult> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'fulcrum-bench-h2load-'));
  const logFile = path.join(dir, 'requests.tsv');
  const streams = run.protocol === 'h1' ? 1 : run.streams;
  const args = [
    ...(run.protocol === 'h1' ? ['--h1'] : []),
    '-t', '1',
    '-c', String(run.connections),
    '-m', String(streams),
    '-D', String(run.duration),
    ...(run.warmup > 0 ? ['--warm-up-time', String(run.warmup)] : []),
    // A connection silent for 5 s counts its requests as timed out, as wrk's and autocannon's 5 s timeouts do.
    '-N', '5',
    '--log-file', logFile,
    url,
  ];
  try {
    const output = await runCommand('h2load', 'h2load', args, (run.warmup + run.duration + 20) * 1000);
    const result = parseH2load(output, readFileSync(logFile, 'utf8'));
    const want = expectedProtocol(url, run.protocol);
    if (result.protocol !== want) throw new Error(`h2load: asked for ${want}, the server spoke ${result.protocol ?? 'nothing'}\n${output}`);
    if (result.requests === 0) throw new Error(`h2load: no request was answered\n${output}`);
    return result;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Nearest-rank percentile of sorted values. */
function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

/**
 * Reads h2load's text report and its `--log-file` (tab-separated: start in microseconds since the
 * epoch, status or -1 for a failed stream, microseconds to the end of the response). Latency
 * figures (ms) are those of the answered requests in the log. Throws if the main figures are missing.
 */
export function parseH2load(output: string, log: string): LoadResult {
  const finished = /^finished in [\d.]+\w+, ([\d.]+) req\/s/m.exec(output);
  const requests = /^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/m.exec(output);
  const statuses = /^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/m.exec(output);
  if (!finished || !requests || !statuses) throw new Error(`h2load: unexpected output\n${output}`);
  const rps = Number(finished[1]);
  const done = Number(requests[3]);

  const lines = log.split('\n');
  const latencies = new Float64Array(lines.length);
  let count = 0;
  for (const line of lines) {
    const fields = line.split('\t');
    if (fields.length < 3 || fields[1] === '-1') continue;
    latencies[count++] = Number(fields[2]) / 1000;
  }
  const sorted = latencies.subarray(0, count).sort();
  let sum = 0;
  for (const ms of sorted) sum += ms;

  const tls = /^TLS Protocol: (\S+)\s+Cipher: (\S+)/m.exec(output);
  return {
    tool: 'h2load',
    // h2load's "finished in" includes the warm-up; its req/s is over the measured period only.
    duration: rps > 0 ? done / rps : 0,
    requests: done,
    rps,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    max: count > 0 ? sorted[count - 1] : Number.NaN,
    mean: count > 0 ? sum / count : Number.NaN,
    // "errored" is every request that failed below HTTP (reset streams, closed connections), timeouts included.
    errors: Number(requests[6]),
    non2xx: Number(statuses[2]) + Number(statuses[3]) + Number(statuses[4]),
    protocol: /^Application protocol: (\S+)/m.exec(output)?.[1],
    ...(tls ? { tls: `${tls[1]} ${tls[2]}` } : {}),
  };
}
