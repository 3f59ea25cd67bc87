/**
 * Least-connections: the available upstream with the fewest requests in flight per unit of
 * weight (nginx's least_conn), ties broken at random so idle pools still spread.
 */
import { loadScore, type Policy, type PolicyFactory } from './policy.ts';
import type { Upstream } from '../upstream/upstream.ts';

class LeastConnections implements Policy {
  private readonly snapshot: readonly Upstream[];
  constructor(snapshot: readonly Upstream[]) {
    this.snapshot = snapshot;
  }

  pick(): Upstream | undefined {
    let best: Upstream | undefined;
    let bestScore = Infinity;
    let ties = 0;
    for (const u of this.snapshot) {
      if (!u.available()) continue;
      const score = loadScore(u);
      if (score < bestScore) {
        best = u;
        bestScore = score;
        ties = 1;
      } else if (score === bestScore && Math.random() * ++ties < 1) {
        // Reservoir sampling: each of the k tied upstreams ends up chosen with chance 1/k.
        best = u;
      }
    }
    return best;
  }
}

export const leastConnections: PolicyFactory = {
  name: 'least-connections',
  aliases: ['least-conn', 'least-connection', 'least_connections', 'leastconn', 'least_conn'],
  description: 'fewest in-flight requests per unit of weight; ties broken at random',
  weighted: true,
  create: (snapshot) => new LeastConnections(snapshot),
};
