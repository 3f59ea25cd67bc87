/**
 * The request pipeline: guards that may answer a request before it is proxied, in a fixed,
 * named order (docs/architecture.md): firewall, rate-limit, request-limits; then the
 * forward-headers phase. A guard returns null to let the request on, or a Refusal. Guards are
 * synchronous unless they must wait (a Redis-backed rate limit); the proxy only awaits a guard
 * that returned a promise.
 */
import type { RequestContext } from './context.ts';

/** The answer of a guard that stops a request. */
export interface Refusal {
  status: number;
  /** Stable error code for logs and tests (FUL_FIREWALL_DENIED, FUL_RATE_LIMITED, ...). */
  code: string;
  message: string;
  /** Extra response headers, flat `[name, value, ...]` (Retry-After, RateLimit-*). */
  headers?: string[];
}

/** The phases guards belong to, in the order they run. */
export type GuardPhase = 'firewall' | 'rate-limit' | 'request-limits';

/** One check on a request. */
export interface RequestGuard {
  readonly phase: GuardPhase;
  check(ctx: RequestContext): Refusal | null | Promise<Refusal | null>;
}

const order: Record<GuardPhase, number> = { firewall: 0, 'rate-limit': 1, 'request-limits': 2 };

/** Sorts guards into phase order (stable within a phase). */
export function inPhaseOrder(guards: readonly RequestGuard[]): RequestGuard[] {
  return [...guards].sort((a, b) => order[a.phase] - order[b.phase]);
}

/** Something a guard holds open (a Redis connection) that a reload or shutdown must close. */
export interface Closable {
  close(): Promise<void>;
}
