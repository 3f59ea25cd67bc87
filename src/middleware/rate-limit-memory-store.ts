/**
 * Token buckets in this process's memory, at most `maxEntries` of them per limit, the least
 * recently used dropped first.
 *
 * Keys come from clients (addresses, headers), so the table must be bounded or a scan of
 * spoofed addresses grows it until the process dies. Dropping a bucket is harmless when it was
 * idle long enough to be full again, and only forgiving otherwise (its key starts over with a
 * full bucket), so the least recently used is the one to drop: a key that keeps coming back is
 * never the victim while `maxEntries` other keys are not all newer than it.
 *
 * Layout: buckets live in slots of parallel typed arrays (tokens, refill time, LRU links), and a
 * Map from key to slot finds them. A check on a known key allocates nothing, a new key costs
 * one Map entry, and eviction reuses the victim's slot; all of it O(1).
 */
import { ALLOWED, TOKEN_EPSILON, type BucketPolicy, type BucketStore } from './rate-limit-bucket.ts';

/** Milliseconds from a monotonic clock. */
export type Clock = () => number;

/** No slot: the end of the LRU list. */
const NONE = -1;
/** Slots allocated up front; the arrays double from there up to `maxEntries`. */
const INITIAL_SLOTS = 1024;

/** The buckets of one limit, bounded, least recently used evicted first. */
export class MemoryBuckets implements BucketStore {
  readonly maxEntries: number;
  private readonly rate: number;
  private readonly per: number;
  private readonly burst: number;
  private readonly clock: Clock;
  private readonly slots = new Map<string, number>();
  private keys: string[] = [];
  private tokens: Float64Array;
  /** When each bucket was last refilled, on `clock`'s scale. */
  private refilled: Float64Array;
  /** Toward the least recently used. */
  private older: Int32Array;
  /** Toward the most recently used. */
  private newer: Int32Array;
  private newest = NONE;
  private oldest = NONE;
  private evicted = 0;

  constructor(policy: BucketPolicy, maxEntries: number, clock: Clock = performance.now.bind(performance)) {
    if (!(maxEntries >= 1)) throw new RangeError(`maxEntries must be at least 1, got ${maxEntries}`);
    this.maxEntries = maxEntries;
    this.rate = policy.rate;
    this.per = policy.per;
    this.burst = policy.burst;
    this.clock = clock;
    const size = Math.min(INITIAL_SLOTS, maxEntries);
    this.tokens = new Float64Array(size);
    this.refilled = new Float64Array(size);
    this.older = new Int32Array(size);
    this.newer = new Int32Array(size);
  }

  /** Buckets held now (never more than `maxEntries`). */
  get size(): number {
    return this.slots.size;
  }

  /** Buckets dropped to stay within `maxEntries`, since creation. */
  get evictions(): number {
    return this.evicted;
  }

  take(key: string): number {
    const now = this.clock();
    let slot = this.slots.get(key);
    let tokens: number;
    if (slot === undefined) {
      slot = this.claim(key);
      tokens = this.burst;
    } else {
      this.touch(slot);
      tokens = this.tokens[slot];
      const elapsed = now - this.refilled[slot];
      // Multiply before dividing: integer rates and clocks then refill in exact whole tokens.
      // A clock that went backwards (only an injected one can) refills nothing.
      if (elapsed > 0) tokens = Math.min(this.burst, tokens + (elapsed * this.rate) / this.per);
    }
    this.refilled[slot] = now;
    if (tokens >= 1 - TOKEN_EPSILON) {
      this.tokens[slot] = Math.max(0, tokens - 1);
      return ALLOWED;
    }
    this.tokens[slot] = tokens;
    return ((1 - tokens) * this.per) / this.rate;
  }

  /** A slot for a new key, at the most recent end: a free one, or the least recently used one's. */
  private claim(key: string): number {
    let slot: number;
    if (this.slots.size < this.maxEntries) {
      slot = this.slots.size;
      if (slot === this.tokens.length) this.grow();
    } else {
      slot = this.oldest;
      this.slots.delete(this.keys[slot]);
      this.unlink(slot);
      this.evicted++;
    }
    this.keys[slot] = key;
    this.slots.set(key, slot);
    this.linkNewest(slot);
    return slot;
  }

  /** Marks a slot the most recently used. */
  private touch(slot: number): void {
    if (slot === this.newest) return;
    this.unlink(slot);
    this.linkNewest(slot);
  }

  private linkNewest(slot: number): void {
    this.older[slot] = this.newest;
    this.newer[slot] = NONE;
    if (this.newest !== NONE) this.newer[this.newest] = slot;
    this.newest = slot;
    if (this.oldest === NONE) this.oldest = slot;
  }

  private unlink(slot: number): void {
    const older = this.older[slot];
    const newer = this.newer[slot];
    if (older !== NONE) this.newer[older] = newer;
    else this.oldest = newer;
    if (newer !== NONE) this.older[newer] = older;
    else this.newest = older;
  }

  /** Doubles the slot arrays (up to `maxEntries`): memory follows the keys actually seen. */
  private grow(): void {
    const size = Math.min(this.maxEntries, this.tokens.length * 2);
    this.tokens = copyInto(new Float64Array(size), this.tokens);
    this.refilled = copyInto(new Float64Array(size), this.refilled);
    this.older = copyInto(new Int32Array(size), this.older);
    this.newer = copyInto(new Int32Array(size), this.newer);
  }
}

function copyInto<T extends Float64Array | Int32Array>(to: T, from: T): T {
  to.set(from);
  return to;
}
