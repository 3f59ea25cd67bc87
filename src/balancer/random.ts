/** Random: an available upstream drawn with probability proportional to its weight. */
import { usable, type PickContext, type Policy, type PolicyFactory } from './policy.ts';
import type { Upstream } from '../upstream/upstream.ts';

class WeightedRandom implements Policy {
  private readonly snapshot: readonly Upstream[];
  /** Running sums of weights, built once per snapshot so a pick is one draw and a search. */
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
    const n = this.snapshot.length;
    if (n === 0) return undefined;
    const r = Math.random() * this.total;
    let i = 0;
    while (i < n - 1 && this.cumulative[i] <= r) i++;
    const u = this.snapshot[i];
    if (usable(u, tried)) return u;
    return this.pickAmongUsable(tried);
  }

  /** Slow path when the draw hit a full or tried upstream: draw again among the usable ones only. */
  private pickAmongUsable(tried: readonly Upstream[] | null | undefined): Upstream | undefined {
    let total = 0;
    for (const u of this.snapshot) if (usable(u, tried)) total += u.weight;
    if (total === 0) return undefined;
    let r = Math.random() * total;
    let last: Upstream | undefined;
    for (const u of this.snapshot) {
      if (!usable(u, tried)) continue;
      last = u;
      r -= u.weight;
      if (r < 0) return u;
    }
    return last;
  }
}

export const random: PolicyFactory = {
  name: 'random',
  aliases: ['weighted-random'],
  description: 'an available upstream at random, in proportion to weight',
  create: (snapshot) => new WeightedRandom(snapshot),
};
