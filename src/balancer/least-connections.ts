/**
 * Least-connections as nginx's least_conn
 * (https://github.com/nginx/nginx/blob/master/src/http/modules/ngx_http_upstream_least_conn_module.c):
 * the available upstreams with the fewest requests in flight per unit of weight, and among those
 * tied for least (an idle pool: all of them) the one whose turn it is by smooth weighted
 * round-robin. So idle and equally loaded upstreams share picks by weight (1:2 stays 1:2 with
 * sequential requests) and busy ones get fewer.
 */
import { compareLoad, usable, type PickContext, type Policy, type PolicyFactory } from './policy.ts';
import type { Upstream } from '../upstream/upstream.ts';

class LeastConnections implements Policy {
  private readonly snapshot: readonly Upstream[];
  /** Smooth weighted round-robin state for the tie-break (only tied upstreams take part). */
  private readonly current: Float64Array;
  constructor(snapshot: readonly Upstream[]) {
    this.snapshot = snapshot;
    this.current = new Float64Array(snapshot.length);
  }

  pick(_ctx: PickContext, tried?: readonly Upstream[] | null): Upstream | undefined {
    const { snapshot, current } = this;
    let best = -1;
    let tie = false;
    for (let i = 0; i < snapshot.length; i++) {
      const u = snapshot[i];
      if (!usable(u, tried)) continue;
      if (best === -1) {
        best = i;
        continue;
      }
      const c = compareLoad(u, snapshot[best]);
      if (c < 0) {
        best = i;
        tie = false;
      } else if (c === 0) tie = true;
    }
    if (best === -1) return undefined;
    if (!tie) return snapshot[best];
    // Tied for least: nginx's smooth weighted round-robin among the tied ones only.
    const lead = snapshot[best];
    let total = 0;
    let chosen = -1;
    for (let i = best; i < snapshot.length; i++) {
      const u = snapshot[i];
      if (!usable(u, tried) || compareLoad(u, lead) !== 0) continue;
      current[i] += u.weight;
      total += u.weight;
      if (chosen === -1 || current[i] > current[chosen]) chosen = i;
    }
    current[chosen] -= total;
    return snapshot[chosen];
  }
}

export const leastConnections: PolicyFactory = {
  name: 'least-connections',
  aliases: ['least-conn', 'least-connection', 'least_connections', 'leastconn', 'least_conn'],
  description: 'fewest in-flight requests per unit of weight; ties (an idle pool) shared by weight, round-robin',
  create: (snapshot) => new LeastConnections(snapshot),
};
