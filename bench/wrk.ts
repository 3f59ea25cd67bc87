/**
 * Optional second opinion from wrk, when it is on PATH. wrk is C and multi-threaded, so it
 * saturates a Node server with less CPU than autocannon does: on a 2-core machine its figures
 * put less of the load generator into the result.
 */
import { spawnSync } from 'node:child_process';
import { runCommand } from './children.ts';
import type { LoadResult } from './load.ts';

/** Whether `wrk` can be run here. */
export function haveWrk(): boolean {
  const probe = spawnSync('wrk', ['--version'], { stdio: 'ignore', timeout: 5000 });
  // wrk --version prints its banner and exits 1; only "not found" counts as absent.
  return probe.error === undefined;
}

/**
 * Runs wrk against `url` and parses its report. Each of `headers` ("Name: value") is sent on every
 * request: with "Connection: close" the server closes after each answer and wrk connects again
 * (wrk reconnects when a response is not keep-alive). Over HTTPS wrk then offers the session of
 * its previous connection: a server with session tickets resumes it, one without makes a full
 * handshake (checked against nginx's $connection_requests and $ssl_session_reused: 1 and "r",
 * or "." with tickets off, on every request).
 */
export async function runWrk(url: string, connections: number, duration: number, headers: readonly string[] = []): Promise<LoadResult> {
  const threads = String(Math.max(1, Math.min(2, connections)));
  const args = ['-t', threads, '-c', String(connections), '-d', `${duration}s`, '--timeout', '5s', '--latency', ...headers.flatMap((h) => ['-H', h]), url];
  const output = await runCommand('wrk', 'wrk', args, (duration + 15) * 1000);
  return parseWrk(output);
}

const toMs: Record<string, number> = { us: 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** "1.23ms" -> 1.23, "845.00us" -> 0.845; NaN when it does not parse. */
function parseTime(text: string | undefined): number {
  const m = /^([\d.]+)(us|ms|s|m|h)$/.exec(text ?? '');
  return m ? Number(m[1]) * toMs[m[2]] : Number.NaN;
}

/** Reads wrk's text report (run with --latency). Throws if the main figures are missing. */
export function parseWrk(output: string): LoadResult {
  const find = (re: RegExp): string | undefined => re.exec(output)?.[1];
  const percentile = (p: string): number => parseTime(find(new RegExp(`^\\s*${p}%\\s+(\\S+)`, 'm')));
  const total = /(\d+) requests in ([\d.]+\w+),/.exec(output);
  const rps = Number(find(/^Requests\/sec:\s+([\d.]+)/m));
  if (!total || Number.isNaN(rps)) throw new Error(`wrk: unexpected output\n${output}`);
  const socketErrors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(output);
  const latency = /^\s*Latency\s+(\S+)\s+\S+\s+(\S+)/m.exec(output);
  return {
    tool: 'wrk',
    duration: parseTime(total[2]) / 1000,
    requests: Number(total[1]),
    rps,
    p50: percentile('50'),
    p90: percentile('90'),
    p99: percentile('99'),
    max: parseTime(latency?.[2]),
    mean: parseTime(latency?.[1]),
    errors: socketErrors ? socketErrors.slice(1).reduce((sum, n) => sum + Number(n), 0) : 0,
    // wrk counts statuses of 400 and above here, under the name "Non-2xx or 3xx".
    non2xx: Number(find(/Non-2xx or 3xx responses: (\d+)/) ?? 0),
  };
}
