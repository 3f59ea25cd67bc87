/**
 * Round-robin as nginx, HAProxy and Traefik do it: each available upstream in turn, as many turns
 * as its weight. The algorithm is nginx's smooth weighted round-robin
 * (https://github.com/phusion/nginx/commit/27e94984486058d73157038f7950a0a36ecc6e35): every pick
 * adds each weight to its current value, takes the largest (the first on a tie) and subtracts the
 * total from it. Equal weights give a b c a b c; weights 5,1,1 give a a b a c a a (heavy
 * upstreams interleaved, not bunched). An unavailable or already tried upstream takes no part in
 * a pick (no weight added), so a retry goes to the sibling whose turn is nearest and retries
 * spread over the siblings by weight.
 */
import { usable, type Policy, type PolicyFactory, type PickContext } from './policy.ts';
import type { Upstream } from '../upstream/upstream.ts';

/** nginx's smooth weighted round-robin over one snapshot (shared by `round-robin` and `weighted-round-robin`). */
export class SmoothWeightedRoundRobin implements Policy {
  private readonly snapshot: readonly Upstream[];
  private readonly current: Float64Array;
  constructor(snapshot: readonly Upstream[]) {
    this.snapshot = snapshot;
    this.current = new Float64Array(snapshot.length);
  }

  pick(_ctx: PickContext, tried?: readonly Upstream[] | null): Upstream | undefined {
    const { snapshot, current } = this;
    let total = 0;
    let best = -1;
    for (let i = 0; i < snapshot.length; i++) {
      const u = snapshot[i];
      if (!usable(u, tried)) continue;
      current[i] += u.weight;
      total += u.weight;
      if (best === -1 || current[i] > current[best]) best = i;
    }
    if (best === -1) return undefined;
    current[best] -= total;
    return snapshot[best];
  }
}

export const roundRobin: PolicyFactory = {
  name: 'round-robin',
  aliases: ['roundrobin', 'round_robin', 'rr'],
  description: "each available upstream in turn, as many turns as its weight (nginx's smooth weighted round-robin)",
  create: (snapshot) => new SmoothWeightedRoundRobin(snapshot),
};
