/**
 * Durations in configs: `250ms`, `5s`, `1.5m`, `1h`, `30d`, or `0`. In a file a number needs its
 * unit (`interval: 5` is refused, not read as 5 ms); in code a number is milliseconds.
 */

const units: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const pattern = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$/;

/** Milliseconds for a duration string, or NaN when it is not one. */
export function parseDuration(text: string): number {
  const m = pattern.exec(text);
  if (!m) return Number.NaN;
  return Math.round(Number(m[1]) * units[m[2]]);
}

/** The shortest exact spelling of a duration, for normalised configs and messages. */
export function formatDuration(ms: number): string {
  if (ms !== 0 && ms % 86_400_000 === 0) return `${ms / 86_400_000}d`;
  if (ms !== 0 && ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms !== 0 && ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

/**
 * Why a number written without a unit is refused, with the spellings it probably meant:
 * `5` -> `write 5s or 5ms`; `5000` -> `write 5000ms (5s)`. Only `0` needs no unit.
 */
export function unitlessDurationMessage(value: number | string): string {
  const n = Number(value);
  const shown = typeof value === 'string' ? JSON.stringify(value) : String(value);
  if (!Number.isFinite(n) || n < 0) return `expected a duration such as "250ms", "5s" or "2m", got ${shown}`;
  // Below a second a number is as likely seconds as milliseconds; from 1000 up, milliseconds.
  const short = formatDuration(n);
  const hint = n >= 1000 && Number.isInteger(n) ? `write ${n}ms${short === `${n}ms` ? '' : ` (${short})`}` : `write ${n}s or ${n}ms`;
  return `a duration needs a unit, got ${shown}: ${hint}`;
}
