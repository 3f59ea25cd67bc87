/**
 * The contract between the rate-limit guard and its stores: the numbers that describe one token
 * bucket, and the one call a store answers. Answers are plain numbers, not objects, so the
 * memory path allocates nothing per request.
 */
import type { RouteSettings } from '../config/schema.ts';

/** One configured limit of a route, as validated (durations in milliseconds). */
export type RateLimitSettings = RouteSettings['rate_limits'][number];

/** A token bucket: `burst` tokens at most, refilled at `rate` tokens per `per` milliseconds. */
export interface BucketPolicy {
  readonly rate: number;
  readonly per: number;
  readonly burst: number;
}

/** `take` answer: a token was taken, the request may pass. */
export const ALLOWED = 0;
/** `take` answer: the store could not answer and the limit is configured to fail closed. */
export const STORE_UNAVAILABLE = -1;

/**
 * Tokens are fractions; sums of refills such as 0.3 + 0.7 may land a hair under 1 in floating
 * point. A billionth of a token of slack keeps "exactly one token" from being refused.
 */
export const TOKEN_EPSILON = 1e-9;

/** Where buckets live: this process's memory, or Redis shared by every instance. */
export interface BucketStore {
  /**
   * Takes one token from `key`'s bucket. Answers ALLOWED, the milliseconds until a token will be
   * there (> 0), or STORE_UNAVAILABLE. A store never throws and never rejects: a store that may
   * wait (Redis) answers with a promise, one that need not (memory) answers at once.
   */
  take(key: string): number | Promise<number>;
}

/** The bucket of a configured limit; `burst` defaults to the rate, rounded up. */
export function bucketPolicy(limit: Pick<RateLimitSettings, 'rate' | 'per' | 'burst'>): BucketPolicy {
  return { rate: limit.rate, per: limit.per, burst: limit.burst ?? Math.ceil(limit.rate) };
}

/** How long an untouched bucket takes to fill up from empty: after that it equals a new one. */
export function refillTime(policy: BucketPolicy): number {
  return (policy.burst * policy.per) / policy.rate;
}
