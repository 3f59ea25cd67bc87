/**
 * Smooth weighted round-robin, nginx's algorithm
 * (https://github.com/phusion/nginx/commit/27e94984486058d73157038f7950a0a36ecc6e35):
 * every pick adds each weight to its current value, takes the largest and subtracts the total
 * from it. Weights 5,1,1 give a a b a c a a: heavy upstreams are interleaved, not bunched.
 */
import type { Policy, PolicyFactory } from './policy.ts';
import type { Upstream } from '../upstream/upstream.ts';

class WeightedRoundRobin implements Policy {
  private readonly snapshot: readonly Upstream[];
  private readonly current: Float64Array;
  constructor(snapshot: readonly Upstream[]) {
    this.snapshot = snapshot;
    this.current = new Float64Array(snapshot.length);
  }

  pick(): Upstream | undefined {
    const { snapshot, current } = this;
    let total = 0;
    let best = -1;
    for (let i = 0; i < snapshot.length; i++) {
      const u = snapshot[i];
      if (!u.available()) continue;
      current[i] += u.weight;
      total += u.weight;
      if (best === -1 || current[i] > current[best]) best = i;
    }
    if (best === -1) return undefined;
    current[best] -= total;
    return snapshot[best];
  }
}

export const weightedRoundRobin: PolicyFactory = {
  name: 'weighted-round-robin',
  aliases: ['weighted_round_robin', 'wrr', 'weighted'],
  description: "nginx's smooth weighted round-robin: shares follow weights, heavy upstreams interleaved",
  weighted: true,
  create: (snapshot) => new WeightedRoundRobin(snapshot),
};
