/**
 * Every policy by name. The config schema's enum is built from this table, so adding a policy
 * is one file and one line here.
 */
import type { PolicyFactory } from './policy.ts';
import { roundRobin } from './round-robin.ts';
import { weightedRoundRobin } from './weighted-round-robin.ts';
import { leastConnections } from './least-connections.ts';
import { random } from './random.ts';
import { powerOfTwoChoices } from './power-of-two-choices.ts';

/** The policies in the order the docs list them. */
export const policies: readonly PolicyFactory[] = [roundRobin, weightedRoundRobin, leastConnections, random, powerOfTwoChoices];

const byName = new Map<string, PolicyFactory>();
for (const p of policies) {
  byName.set(p.name, p);
  for (const alias of p.aliases) byName.set(alias, p);
}

/** Every accepted spelling, canonical names first (the schema's enum). */
export const policyNames: readonly string[] = [...policies.map((p) => p.name), ...policies.flatMap((p) => p.aliases)];

/** The policy for a name or alias, or undefined. */
export function findPolicy(name: string): PolicyFactory | undefined {
  return byName.get(name.toLowerCase());
}
