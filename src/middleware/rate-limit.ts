/**
 * The rate-limit phase: one guard per configured limit of a route, a token bucket per key.
 * A request passes when its bucket has a token; otherwise it gets 429 with Retry-After and the
 * RateLimit-* fields of draft-ietf-httpapi-ratelimit-headers, so well-behaved clients can wait
 * exactly as long as needed.
 *
 * Memory limits answer synchronously; Redis limits answer with a promise, which the pipeline
 * awaits (see src/core/pipeline.ts). Neither throws: a store that cannot answer falls back as
 * configured (src/middleware/rate-limit-redis-store.ts).
 */
import type { RequestContext } from '../core/context.ts';
import type { Refusal, RequestGuard } from '../core/pipeline.ts';
import { ALLOWED, STORE_UNAVAILABLE, bucketPolicy, type BucketPolicy, type BucketStore, type RateLimitSettings } from './rate-limit-bucket.ts';
import type { RateLimitStores } from './rate-limit-stores.ts';
import { ErrorCode } from '../errors.ts';

export { createRateLimitStores, type RateLimitStores, type RateLimitStoresOptions } from './rate-limit-stores.ts';
export type { RateLimitSettings } from './rate-limit-bucket.ts';

/** Stable codes of this phase's refusals. */
export const RateLimitCode = {
  Limited: ErrorCode.RateLimited,
  StoreDown: ErrorCode.RateLimitStoreDown,
} as const;

/**
 * Header values are up to the client: a bucket key keeps at most this many characters of one,
 * so that a table of `max_entries` buckets stays small (clients that share such a long prefix
 * share a bucket).
 */
export const MAX_HEADER_KEY_CHARS = 256;

/**
 * Joins the parts of a key. Neither addresses nor header values can contain a line feed (Node
 * refuses it in header values), so two different part lists never join to the same key.
 */
const KEY_SEPARATOR = '\n';

const PART_IP = 0;
const PART_ROUTE = 1;
const PART_HEADER = 2;

/** One part of a bucket key, compiled from "ip", "route" or "header:<name>". */
interface KeyPart {
  readonly kind: typeof PART_IP | typeof PART_ROUTE | typeof PART_HEADER;
  /** The route name, or the lowercased header name. */
  readonly text: string;
}

/** A rate limit of one route. */
export class RateLimitGuard implements RequestGuard {
  readonly phase = 'rate-limit' as const;
  /** Where this limit's buckets are (tests read its counters). */
  readonly store: BucketStore;
  readonly policy: BucketPolicy;
  private readonly parts: readonly KeyPart[];
  private readonly message: string;
  private readonly limitHeader: string;
  private readonly policyHeader: string;
  private readonly storeDown: Refusal;

  constructor(limit: RateLimitSettings, routeName: string, stores: RateLimitStores) {
    if (!(limit.per > 0)) throw new RangeError(`route "${routeName}": a rate limit's "per" must be longer than 0ms`);
    this.policy = bucketPolicy(limit);
    this.parts = limit.key.map((k) => compilePart(k, routeName));
    this.store = limit.store === 'redis' ? stores.redis(this.policy, redisId(limit, routeName, this.policy)) : stores.memory(this.policy);
    this.message = `rate limit exceeded (${limit.name ?? `${limit.rate} per ${limit.per}ms`})`;
    this.limitHeader = String(this.policy.burst);
    // The draft's window is whole seconds.
    this.policyHeader = `${this.policy.burst};w=${Math.max(1, Math.ceil(limit.per / 1000))}`;
    this.storeDown = { status: 503, code: RateLimitCode.StoreDown, message: 'rate limit store unavailable', headers: ['retry-after', '1'] };
  }

  check(ctx: RequestContext): Refusal | null | Promise<Refusal | null> {
    const answer = this.store.take(this.keyOf(ctx));
    return typeof answer === 'number' ? this.verdict(answer) : answer.then(this.verdict);
  }

  /** The bucket key of a request: its parts joined. */
  keyOf(ctx: RequestContext): string {
    const parts = this.parts;
    let key = partOf(ctx, parts[0]);
    for (let i = 1; i < parts.length; i++) key += KEY_SEPARATOR + partOf(ctx, parts[i]);
    return key;
  }

  /** A store's answer as the guard's (an arrow, so `then` needs no closure per request). */
  private readonly verdict = (answer: number): Refusal | null => {
    if (answer === ALLOWED) return null;
    if (answer === STORE_UNAVAILABLE) return this.storeDown;
    return this.refusal(answer);
  };

  private refusal(waitMs: number): Refusal {
    const seconds = String(Math.max(1, Math.ceil(waitMs / 1000)));
    return {
      status: 429,
      code: RateLimitCode.Limited,
      message: this.message,
      headers: [
        'retry-after', seconds,
        'ratelimit-limit', this.limitHeader,
        'ratelimit-remaining', '0',
        'ratelimit-reset', seconds,
        'ratelimit-policy', this.policyHeader,
      ],
    };
  }
}

/** The guard of one configured limit of route `routeName`, its buckets in `stores`. */
export function createRateLimitGuard(limit: RateLimitSettings, routeName: string, stores: RateLimitStores): RateLimitGuard {
  return new RateLimitGuard(limit, routeName, stores);
}

function compilePart(spec: string, routeName: string): KeyPart {
  if (spec === 'ip') return { kind: PART_IP, text: '' };
  if (spec === 'route') return { kind: PART_ROUTE, text: routeName };
  if (spec.startsWith('header:')) return { kind: PART_HEADER, text: spec.slice('header:'.length).toLowerCase() };
  throw new Error(`unknown rate limit key "${spec}"`);
}

function partOf(ctx: RequestContext, part: KeyPart): string {
  if (part.kind === PART_IP) return ctx.clientAddress;
  if (part.kind === PART_ROUTE) return part.text;
  const value = headerValue(ctx.req.rawHeaders, part.text);
  return value.length > MAX_HEADER_KEY_CHARS ? value.slice(0, MAX_HEADER_KEY_CHARS) : value;
}

/**
 * The first value of a header, '' when absent. Reads `rawHeaders` rather than `req.headers`,
 * which Node builds lazily: a guard that looks at one header should not build them all.
 */
export function headerValue(rawHeaders: readonly string[], lowerName: string): string {
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (equalsLowercase(rawHeaders[i], lowerName)) return rawHeaders[i + 1];
  }
  return '';
}

/** `name` equals `lower` ignoring ASCII case (header names are ASCII), without allocating. */
function equalsLowercase(name: string, lower: string): boolean {
  if (name.length !== lower.length) return false;
  for (let i = 0; i < name.length; i++) {
    let c = name.charCodeAt(i);
    if (c >= 65 && c <= 90) c += 32;
    if (c !== lower.charCodeAt(i)) return false;
  }
  return true;
}

/**
 * A limit's name in Redis keys: the same on every instance that has the same configuration.
 * Unnamed limits are named by what they are, so two unnamed limits of a route do not share
 * buckets unless they are identical.
 */
function redisId(limit: RateLimitSettings, routeName: string, policy: BucketPolicy): string {
  const name = limit.name ?? `${policy.rate}/${policy.per}ms/${policy.burst}/${limit.key.join('+')}`;
  return `${routeName}:${name}`;
}
