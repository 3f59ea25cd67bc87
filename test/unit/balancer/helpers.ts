/** Shared helpers for the balancer unit tests: named upstreams and pick sequences. */
import { Upstream } from '../../../src/upstream/upstream.ts';
import type { Policy } from '../../../src/balancer/policy.ts';

export const ctx = { clientAddress: '127.0.0.1' };

/** Upstreams named by their host (`a`, `b`, ...), one per weight. */
export function named(weights: Record<string, number>, maxConnections = 0): Upstream[] {
  return Object.entries(weights).map(([name, weight]) => new Upstream({ url: `http://${name}:80`, weight, maxConnections }));
}

/** The hostnames of `n` picks, `-` for undefined. */
export function sequence(policy: Policy, n: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(policy.pick(ctx)?.hostname ?? '-');
  return out;
}

/** How many times each hostname is picked in `n` picks. */
export function tally(policy: Policy, n: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const name of sequence(policy, n)) out[name] = (out[name] ?? 0) + 1;
  return out;
}
