/**
 * The one interface every balancing policy implements. A pool builds a policy for each
 * snapshot of eligible upstreams (membership or health changed) and then only calls `pick`.
 */
import type { Upstream } from '../upstream/upstream.ts';

/** What a policy may know about the request it picks for. */
export interface PickContext {
  /** The client address after trusted-proxy rules (for hashing policies). */
  clientAddress: string;
}

/** Picks one upstream from a snapshot; must only return upstreams whose `available()` is true. */
export interface Policy {
  pick(ctx: PickContext): Upstream | undefined;
}

/** Builds a policy for a snapshot of eligible upstreams (healthy, enabled, not draining). */
export interface PolicyFactory {
  /** The canonical name used in configs and logs. */
  readonly name: string;
  /** Other spellings accepted in configs (the seeds' `least-conn`, ...). */
  readonly aliases: readonly string[];
  /** One line for `fulcrum --help` and the docs. */
  readonly description: string;
  /** False for policies that ignore weights by design (plain round-robin). */
  readonly weighted: boolean;
  create(snapshot: readonly Upstream[]): Policy;
}

/** Weight-aware load score (nginx's least_conn compares conns/weight); lower is better. */
export function loadScore(u: Upstream): number {
  return (u.inFlight + 1) / u.weight;
}
