/**
 * Power of two choices (Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing"):
 * draw two available upstreams at random and send to the one with fewer in-flight requests per
 * unit of weight. Nearly as even as least-connections without scanning the whole pool.
 */
import { loadScore, type Policy, type PolicyFactory } from './policy.ts';
import type { Upstream } from '../upstream/upstream.ts';

class PowerOfTwoChoices implements Policy {
  private readonly snapshot: readonly Upstream[];
  constructor(snapshot: readonly Upstream[]) {
    this.snapshot = snapshot;
  }

  pick(): Upstream | undefined {
    const s = this.snapshot;
    const n = s.length;
    if (n === 0) return undefined;
    if (n === 1) return s[0].available() ? s[0] : undefined;
    const i = (Math.random() * n) | 0;
    let j = (Math.random() * (n - 1)) | 0;
    if (j >= i) j++;
    const a = s[i];
    const b = s[j];
    const aOk = a.available();
    const bOk = b.available();
    if (aOk && bOk) {
      const sa = loadScore(a);
      const sb = loadScore(b);
      return sa < sb ? a : sb < sa ? b : Math.random() < 0.5 ? a : b;
    }
    if (aOk) return a;
    if (bOk) return b;
    return this.leastLoadedAvailable();
  }

  /** Both draws were unavailable: fall back to a scan so a pick never fails while one is free. */
  private leastLoadedAvailable(): Upstream | undefined {
    let best: Upstream | undefined;
    for (const u of this.snapshot) if (u.available() && (!best || loadScore(u) < loadScore(best))) best = u;
    return best;
  }
}

export const powerOfTwoChoices: PolicyFactory = {
  name: 'power-of-two-choices',
  aliases: ['p2c', 'power_of_two_choices'],
  description: 'two random upstreams, the less loaded one wins (in-flight per weight)',
  weighted: true,
  create: (snapshot) => new PowerOfTwoChoices(snapshot),
};
