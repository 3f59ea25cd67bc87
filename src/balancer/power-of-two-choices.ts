/**
 * Power of two choices (Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing"):
 * draw two different available upstreams, each in proportion to its weight, and send to the one
 * with fewer in-flight requests per unit of weight; on a tie (an idle pool) the first drawn wins,
 * so idle upstreams share picks by weight. Nearly as even as least-connections without scanning
 * the whole pool.
 */
import { compareLoad, usable, type PickContext, type Policy, type PolicyFactory } from './policy.ts';
import type { Upstream } from '../upstream/upstream.ts';

class PowerOfTwoChoices implements Policy {
  private readonly snapshot: readonly Upstream[];
  /** Running sums of weights, built once per snapshot so a draw is one random number and a search. */
  private readonly cumulative: Float64Array;
  private readonly total: number;
  constructor(snapshot: readonly Upstream[]) {
    this.snapshot = snapshot;
    this.cumulative = new Float64Array(snapshot.length);
    let sum = 0;
    for (let i = 0; i < snapshot.length; i++) this.cumulative[i] = sum += snapshot[i].weight;
    this.total = sum;
  }

  pick(_ctx: PickContext, tried?: readonly Upstream[] | null): Upstream | undefined {
    const s = this.snapshot;
    const n = s.length;
    if (n === 0) return undefined;
    if (n === 1) return usable(s[0], tried) ? s[0] : undefined;
    const i = this.indexAt(Math.random() * this.total);
    // The second draw leaves out the first one's stretch of the weight line.
    const start = i === 0 ? 0 : this.cumulative[i - 1];
    const weight = this.cumulative[i] - start;
    let r = Math.random() * (this.total - weight);
    if (r >= start) r += weight;
    let j = this.indexAt(r);
    if (j === i) j = i === n - 1 ? i - 1 : i + 1; // rounding at a stretch's edge
    const a = s[i];
    const b = s[j];
    if (usable(a, tried) && usable(b, tried)) return compareLoad(b, a) < 0 ? b : a;
    return this.pickAmongUsable(tried);
  }

  /** The index whose stretch of the weight line holds `r` (binary search: O(log n), no scan). */
  private indexAt(r: number): number {
    const c = this.cumulative;
    let low = 0;
    let high = c.length - 1;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if (c[mid] <= r) low = mid + 1;
      else high = mid;
    }
    return low;
  }

  /** A draw hit a full or tried upstream: the same two draws among the usable ones only. */
  private pickAmongUsable(tried: readonly Upstream[] | null | undefined): Upstream | undefined {
    let total = 0;
    let count = 0;
    for (const u of this.snapshot) {
      if (!usable(u, tried)) continue;
      total += u.weight;
      count++;
    }
    if (count === 0) return undefined;
    const first = this.drawUsable(Math.random() * total, tried, null);
    if (count === 1) return first;
    const second = this.drawUsable(Math.random() * (total - first.weight), tried, first);
    return compareLoad(second, first) < 0 ? second : first;
  }

  /** The usable upstream (other than `skip`) at `r` on the line of their weights. */
  private drawUsable(r: number, tried: readonly Upstream[] | null | undefined, skip: Upstream | null): Upstream {
    let last: Upstream | undefined;
    for (const u of this.snapshot) {
      if (u === skip || !usable(u, tried)) continue;
      last = u;
      r -= u.weight;
      if (r < 0) return u;
    }
    return last!;
  }
}

export const powerOfTwoChoices: PolicyFactory = {
  name: 'power-of-two-choices',
  aliases: ['p2c', 'power_of_two_choices'],
  description: 'two upstreams drawn by weight, the less loaded one (in flight per weight) wins; ties to the first drawn',
  create: (snapshot) => new PowerOfTwoChoices(snapshot),
};
