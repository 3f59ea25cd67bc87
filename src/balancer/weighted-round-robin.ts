/**
 * Weighted round-robin: the same algorithm as `round-robin` (nginx's smooth weighted
 * round-robin, see round-robin.ts), kept as its own name for configurations that spell the
 * weighting out. Weights 5,1,1 give a a b a c a a.
 */
import type { PolicyFactory } from './policy.ts';
import { SmoothWeightedRoundRobin } from './round-robin.ts';

export const weightedRoundRobin: PolicyFactory = {
  name: 'weighted-round-robin',
  aliases: ['weighted_round_robin', 'wrr', 'weighted'],
  description: "the same as round-robin (nginx's smooth weighted round-robin: heavy upstreams interleaved, not bunched)",
  create: (snapshot) => new SmoothWeightedRoundRobin(snapshot),
};
