/** Round-robin: each available upstream in turn, weights ignored (use weighted-round-robin). */
import type { Policy, PolicyFactory } from './policy.ts';
import type { Upstream } from '../upstream/upstream.ts';

class RoundRobin implements Policy {
  private readonly snapshot: readonly Upstream[];
  private next = 0;
  constructor(snapshot: readonly Upstream[]) {
    this.snapshot = snapshot;
  }

  pick(): Upstream | undefined {
    const n = this.snapshot.length;
    for (let tried = 0; tried < n; tried++) {
      const i = this.next;
      this.next = i + 1 === n ? 0 : i + 1;
      const u = this.snapshot[i];
      if (u.available()) return u;
    }
    return undefined;
  }
}

export const roundRobin: PolicyFactory = {
  name: 'round-robin',
  aliases: ['roundrobin', 'round_robin', 'rr'],
  description: 'each available upstream in turn; weights are ignored',
  weighted: false,
  create: (snapshot) => new RoundRobin(snapshot),
};
