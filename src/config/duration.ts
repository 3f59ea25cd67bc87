/** Durations in configs: `250ms`, `5s`, `1.5m`, `1h`, or a plain number of milliseconds. */

const units: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const pattern = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$/;

/** Milliseconds for a duration string, or NaN when it is not one. */
export function parseDuration(text: string): number {
  const m = pattern.exec(text);
  if (!m) return Number.NaN;
  return Math.round(Number(m[1]) * units[m[2]]);
}

/** The shortest exact spelling of a duration, for normalised configs and messages. */
export function formatDuration(ms: number): string {
  if (ms !== 0 && ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms !== 0 && ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}
