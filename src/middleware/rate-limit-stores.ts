/**
 * The bucket stores of one configuration: a bounded memory table per limit, and at most one
 * Redis connection that every Redis-backed limit shares. Built with the configuration, closed
 * when a reload replaces it or the balancer shuts down.
 */
import type { FulcrumConfig } from '../config/schema.ts';
import type { Closable } from '../core/pipeline.ts';
import type { Logger } from '../observe/logger.ts';
import type { BucketPolicy } from './rate-limit-bucket.ts';
import { MemoryBuckets, type Clock } from './rate-limit-memory-store.ts';
import { RedisBuckets, RedisLink, type LinkState } from './rate-limit-redis-store.ts';

/** Where the limits of one configuration keep their buckets. */
export interface RateLimitStores {
  /** A new memory table for one limit (at most `max_entries` buckets). */
  memory(policy: BucketPolicy): MemoryBuckets;
  /**
   * The Redis buckets of one limit; `id` must be the same on every instance for the same limit.
   * Throws when the configuration has no `rate_limit.redis`.
   */
  redis(policy: BucketPolicy, id: string): RedisBuckets;
  /** Checks answered without Redis while it was down, since creation. */
  readonly fallbacks: number;
  /** Buckets evicted from memory tables (local fallback tables included), since creation. */
  readonly evictions: number;
  /** The Redis connection's state; 'off' while no limit uses Redis. */
  readonly redisStatus: LinkState | 'off';
}

/** Options for tests. */
export interface RateLimitStoresOptions {
  /** Milliseconds from a monotonic clock for memory buckets (default `performance.now`). */
  clock?: Clock;
}

/** The stores for a configuration's `rate_limit` section. Nothing connects until a limit needs Redis. */
export function createRateLimitStores(
  settings: FulcrumConfig['rate_limit'],
  logger: Logger,
  options: RateLimitStoresOptions = {},
): RateLimitStores & Closable {
  const tables: MemoryBuckets[] = [];
  let link: RedisLink | null = null;
  let closed = false;

  const table = (policy: BucketPolicy): MemoryBuckets => {
    const buckets = new MemoryBuckets(policy, settings.max_entries, options.clock);
    tables.push(buckets);
    return buckets;
  };

  return {
    memory: table,
    redis(policy, id) {
      if (settings.redis === undefined) throw new Error('a rate limit with store "redis" needs a rate_limit.redis section');
      if (closed) throw new Error('rate-limit stores are closed');
      link ??= new RedisLink(settings.redis, logger);
      const buckets = new RedisBuckets(link, policy, id, settings.max_entries, options.clock);
      if (buckets.fallback !== null) tables.push(buckets.fallback);
      return buckets;
    },
    get fallbacks() {
      return link === null ? 0 : link.fallbacks;
    },
    get evictions() {
      let sum = 0;
      for (const t of tables) sum += t.evictions;
      return sum;
    },
    get redisStatus() {
      return link === null ? 'off' : link.status;
    },
    async close() {
      closed = true;
      await link?.close();
    },
  };
}
