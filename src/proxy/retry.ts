/**
 * The retry decision, in one place (Envoy's retry policy with a retry budget):
 * - connect failures (the upstream never saw the request): any method;
 * - a stream an HTTP/2 upstream did not process (REFUSED_STREAM, or past the last stream of its
 *   GOAWAY; RFC 9113 section 8.7): any method, like gRPC's transparent retry, and like it (gRFC
 *   A6) not counted against `max_attempts` but bounded on its own (MAX_UNPROCESSED_RETRIES): when
 *   every upstream restarts at once, a call may meet several GOAWAYs in a row;
 * - a stale keep-alive socket (a reused socket reset before any response byte, most likely
 *   closed by the upstream while idle): idempotent methods, and a non-idempotent one once when it
 *   carries `Idempotency-Key` (Go's net/http rule); the reset is not held against the upstream;
 * - a reset before any response byte (a backend killed mid-request): idempotent methods only;
 * - a status in `retry.on_status`: idempotent methods only, after a short `Retry-After`;
 * - never once response bytes reached the client, never past `max_attempts`, never a body that
 *   was sent and not kept.
 * The retry budget (retries in flight at most budget_percent of the pool's requests) limits the
 * retries that add load to upstreams that already saw the request: resets and statuses. A connect
 * failure or a stale socket adds none (nothing was processed), so those are limited by
 * `max_attempts` only; a budget sized for overload would otherwise turn one dead backend into
 * 502s for every request above min_retry_concurrency.
 */
import { ErrorCode, type FulcrumError } from '../errors.ts';
import type { Exchange } from './exchange.ts';

/** Why an attempt is tried again. */
export type RetryReason = 'connect-failure' | 'unprocessed' | 'stale-connection' | 'reset' | 'status';

/** True for reasons the retry budget limits (the upstream saw the request); the others only count against max_attempts. */
export function usesBudget(reason: RetryReason): boolean {
  return reason === 'reset' || reason === 'status';
}

/** Retries of unprocessed streams per request, beyond `max_attempts`: bounds a loop between upstreams that all refuse. */
export const MAX_UNPROCESSED_RETRIES = 10;

/** RFC 9110 section 9.2.2: methods whose repetition has the same effect as one request. */
const idempotent = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

/** True for methods that may be sent twice. */
export function isIdempotent(method: string | undefined): boolean {
  return method !== undefined && idempotent.has(method);
}

/**
 * Whether a failed attempt is tried again and why; null to answer the client now. `failure` is
 * null when the upstream answered `status`; `sent` is false when it never saw the request;
 * `stale` is true when a reused keep-alive socket failed before any response byte.
 */
export function retryReason(ctx: Exchange, failure: FulcrumError | null, status: number, sent: boolean, stale = false): RetryReason | null {
  const pool = ctx.pool!;
  const policy = pool.settings.retry;
  if (ctx.downstream.headSent || ctx.clientGone || ctx.done) return null;
  if (failure !== null && failure.code === ErrorCode.UpstreamUnprocessed) {
    return ctx.unprocessedRetries < MAX_UNPROCESSED_RETRIES && bodyReplayable(ctx) ? 'unprocessed' : null;
  }
  if (ctx.attempts - ctx.unprocessedRetries >= policy.max_attempts) return null;
  let reason: RetryReason;
  if (failure !== null) {
    if (!sent && failure.retryable) reason = 'connect-failure';
    else if (failure.code !== ErrorCode.UpstreamReset) return null;
    else if (stale && (isIdempotent(ctx.req.method) || (ctx.tried === null && hasIdempotencyKey(ctx)))) reason = 'stale-connection';
    else if (isIdempotent(ctx.req.method)) reason = 'reset';
    else return null;
  } else {
    if (!isIdempotent(ctx.req.method) || !policy.on_status.includes(status)) return null;
    reason = 'status';
  }
  if (sent && !bodyReplayable(ctx)) return null;
  if (usesBudget(reason) && !ctx.retrying && !withinBudget(ctx)) return null;
  return reason;
}

/** The client declared the request safe to repeat (draft-ietf-httpapi-idempotency-key-header). */
function hasIdempotencyKey(ctx: Exchange): boolean {
  const key = ctx.req.headers['idempotency-key'];
  return typeof key === 'string' && key.length > 0;
}

/** A sent body can go again only if it was small enough to keep and was read to its end. */
function bodyReplayable(ctx: Exchange): boolean {
  return ctx.bodyStream === null || (ctx.bodyKept !== null && ctx.bodyEnded);
}

/** Retries in flight stay under budget_percent of the pool's requests (at least min_retry_concurrency). */
function withinBudget(ctx: Exchange): boolean {
  const pool = ctx.countedPool!;
  const policy = pool.settings.retry;
  return pool.retrying < Math.max(policy.min_retry_concurrency, (pool.active * policy.budget_percent) / 100);
}

/** IMF-fixdate (RFC 9110 section 5.6.7), the only HTTP-date form senders may generate. */
const httpDate = /^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} GMT$/;

/** Milliseconds a `Retry-After` value asks for (delta-seconds or an HTTP date); 0 when absent or past. */
export function retryAfterMs(value: string | undefined): number {
  if (value === undefined) return 0;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  if (!httpDate.test(text)) return 0;
  const at = Date.parse(text);
  return Number.isNaN(at) ? 0 : Math.max(0, at - Date.now());
}
