/**
 * Turning results into the printed table and the ratios. Pure functions: bench/run.ts does the
 * measuring and the writing.
 */
import type { LoadResult } from './load.ts';

/** One target's outcome: figures per load tool, or why it could not be measured. */
export interface TargetResult {
  name: string;
  label: string;
  autocannon?: LoadResult;
  wrk?: LoadResult;
  h2load?: LoadResult;
  error?: string;
  /** Why it was not measured here (nginx or wrk not installed); not a failure. */
  skipped?: string;
}

/** A load generator whose figures a result may hold. */
export type Tool = LoadResult['tool'];

/** A comparison of two targets as measured by one tool. */
export interface Ratio {
  tool: Tool;
  subject: string;
  baseline: string;
  /** subject req/s over baseline req/s: above 1, the subject serves more. */
  rps: number;
  /** subject latency over baseline latency: below 1, the subject answers sooner. */
  p50: number;
  p99: number;
}

/**
 * The pairs the benchmark is about: every proxy against direct, then the proxies head to head,
 * then HTTPS: against nginx with the same certificate and ciphers, against the same server over
 * plain HTTP (what TLS costs on a kept connection), and the handshake per request; then HTTP/2
 * (h2load's figures): against nginx, against HTTP/1.1 to the same proxy, what TLS costs on h2,
 * h2c to the upstream against HTTP/1.1 to it, and the two backends against each other.
 */
const pairs: ReadonlyArray<readonly [string, string]> = [
  ['fulcrum', 'direct'],
  ['fulcrum-undici', 'direct'],
  ['fulcrum-node-http', 'direct'],
  ['http-proxy', 'direct'],
  ['nginx', 'direct'],
  ['fulcrum-undici', 'http-proxy'],
  ['fulcrum-node-http', 'http-proxy'],
  ['fulcrum-undici', 'fulcrum-node-http'],
  ['fulcrum', 'fulcrum-undici'],
  ['fulcrum', 'http-proxy'],
  ['fulcrum', 'nginx'],
  ['fulcrum-https', 'nginx-https'],
  ['fulcrum-https', 'fulcrum'],
  ['nginx-https', 'nginx'],
  ['fulcrum-https-resume', 'nginx-https-resume'],
  ['fulcrum-https-full', 'nginx-https-full'],
  ['fulcrum-https-full', 'fulcrum-close'],
  ['fulcrum-https-resume', 'fulcrum-close'],
  ['fulcrum-https-full', 'fulcrum-https'],
  ['nginx-https-full', 'nginx-https'],
  ['fulcrum-h2', 'nginx-h2'],
  ['fulcrum-h2c', 'nginx-h2c'],
  ['fulcrum-h2c', 'fulcrum'],
  ['nginx-h2c', 'nginx'],
  ['fulcrum-h2', 'fulcrum-h2c'],
  ['nginx-h2', 'nginx-h2c'],
  ['fulcrum-h2-h2c-upstream', 'fulcrum-h2c'],
  ['direct-h2c', 'direct'],
];

/** The ratios for every pair where both sides were measured by `tool`. */
export function computeRatios(results: readonly TargetResult[], tool: Tool): Ratio[] {
  const byName = new Map(results.map((r) => [r.name, r[tool]]));
  const ratios: Ratio[] = [];
  // With --baseline: each Fulcrum against the same target built from the other checkout (after / before).
  const before = results.filter((r) => r.name.endsWith('@baseline')).map((r) => [r.name.slice(0, -'@baseline'.length), r.name] as const);
  for (const [subject, baseline] of [...pairs, ...before]) {
    const a = byName.get(subject);
    const b = byName.get(baseline);
    if (!a || !b) continue;
    ratios.push({ tool, subject, baseline, rps: a.rps / b.rps, p50: a.p50 / b.p50, p99: a.p99 / b.p99 });
  }
  return ratios;
}

function pad(text: string, width: number, right = false): string {
  return right ? text.padStart(width) : text.padEnd(width);
}

function fixed(n: number, digits: number): string {
  return Number.isFinite(n) ? n.toFixed(digits) : 'n/a';
}

/** Renders rows as an aligned text table; the first column is left-aligned, the rest right. */
function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]): string => cells.map((c, i) => pad(c, widths[i], i > 0)).join('   ').trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

/** The results table for one tool. */
export function resultsTable(results: readonly TargetResult[], tool: Tool): string {
  const rows = results.map((r) => {
    const m = r[tool];
    if (!m) return [r.label, r.error ? 'FAILED' : r.skipped ? 'skipped' : '-', '', '', '', ''];
    // autocannon's histogram holds whole milliseconds; decimals would be false precision.
    const digits = tool === 'autocannon' ? 0 : 2;
    return [r.label, fixed(m.rps, 0), fixed(m.p50, digits), fixed(m.p99, digits), String(m.errors), String(m.non2xx)];
  });
  return table(['target', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'non-2xx'], rows);
}

/** The ratios table for one tool. */
export function ratiosTable(ratios: readonly Ratio[]): string {
  const rows = ratios.map((r) => [`${r.subject} vs ${r.baseline}`, `${fixed(r.rps, 2)}x`, `${fixed(r.p50, 2)}x`, `${fixed(r.p99, 2)}x`]);
  return table(['comparison', 'req/s', 'p50', 'p99'], rows);
}
