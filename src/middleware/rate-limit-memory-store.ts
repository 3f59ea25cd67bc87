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
 * Layout: buckets live in slots of parallel typed arrays (tokens, refill time, LRU links, key
 * hash), found through an open-addressing index (linear probing, backward-shift deletion) in an
 * Int32Array. Not a Map: a million evictions would delete and re-add a million Map entries, and
 * V8 rehashes a Map's backing store as deleted entries pile up, leaving tens of MB of garbage
 * for the next full GC (measured with `npm run bench:million`). A check on a known key allocates
 * nothing, a new key stores one string, and eviction reuses the victim's slot; all O(1).
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
  /** Index from key hash to slot + 1 (0: empty), twice the slot capacity, a power of two. */
  private index: Int32Array;
  private mask: number;
  private count = 0;
  private keys: string[] = [];
  /** Each slot's key hash, so probing compares strings only on a hash match. */
  private hashes: Int32Array;
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
    this.hashes = new Int32Array(size);
    this.index = new Int32Array(indexSize(size));
    this.mask = this.index.length - 1;
  }

  /** Buckets held now (never more than `maxEntries`). */
  get size(): number {
    return this.count;
  }

  /** Buckets dropped to stay within `maxEntries`, since creation. */
  get evictions(): number {
    return this.evicted;
  }

  take(key: string): number {
    const now = this.clock();
    const hash = hashKey(key);
    let slot = this.find(key, hash);
    let tokens: number;
    if (slot === NONE) {
      slot = this.claim(key, hash);
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
  private claim(key: string, hash: number): number {
    let slot: number;
    if (this.count < this.maxEntries) {
      slot = this.count++;
      if (slot === this.tokens.length) this.grow();
    } else {
      slot = this.oldest;
      this.remove(slot);
      this.unlink(slot);
      this.evicted++;
    }
    this.keys[slot] = key;
    this.hashes[slot] = hash;
    this.insert(slot, hash);
    this.linkNewest(slot);
    return slot;
  }

  /** The slot holding `key`, or NONE. */
  private find(key: string, hash: number): number {
    const { index, mask } = this;
    for (let i = hash & mask; ; i = (i + 1) & mask) {
      const entry = index[i];
      if (entry === 0) return NONE;
      const slot = entry - 1;
      if (this.hashes[slot] === hash && this.keys[slot] === key) return slot;
    }
  }

  private insert(slot: number, hash: number): void {
    const { index, mask } = this;
    let i = hash & mask;
    while (index[i] !== 0) i = (i + 1) & mask;
    index[i] = slot + 1;
  }

  /** Takes a slot out of the index, shifting later probes back so no tombstone is left (Knuth 6.4, algorithm R). */
  private remove(slot: number): void {
    const { index, mask } = this;
    let i = this.hashes[slot] & mask;
    while (index[i] !== slot + 1) i = (i + 1) & mask;
    for (let j = (i + 1) & mask; index[j] !== 0; j = (j + 1) & mask) {
      const home = this.hashes[index[j] - 1] & mask;
      // Move the entry at j back to i unless its home lies cyclically in (i, j].
      const between = i <= j ? home > i && home <= j : home > i || home <= j;
      if (!between) {
        index[i] = index[j];
        i = j;
      }
    }
    index[i] = 0;
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
    this.hashes = copyInto(new Int32Array(size), this.hashes);
    // Re-index every slot in a table sized for the new capacity (only while the store fills up).
    this.index = new Int32Array(indexSize(size));
    this.mask = this.index.length - 1;
    for (let slot = 0; slot < this.count - 1; slot++) this.insert(slot, this.hashes[slot]);
  }
}

/** Index entries for `slots` slots: a power of two at least twice as large (load factor <= 0.5). */
function indexSize(slots: number): number {
  let size = 2;
  while (size < slots * 2) size *= 2;
  return size;
}

/** FNV-1a over UTF-16 code units: cheap, well spread for addresses and header values. */
function hashKey(key: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h & 0x7fffffff;
}

function copyInto<T extends Float64Array | Int32Array>(to: T, from: T): T {
  to.set(from);
  return to;
}
