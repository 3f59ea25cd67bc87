/**
 * The one interface every balancing policy implements. A pool builds a policy for each
 * snapshot of eligible upstreams (membership or health changed) and then only calls `pick`.
 *
 * Weights mean the same thing in every policy: an upstream of weight 2 gets twice the share of
 * one of weight 1 when they are equally loaded (idle included). The conformance suite
 * (test/conformance/policies.test.ts) checks this for every policy in the registry.
 */
import type { Upstream } from '../upstream/upstream.ts';

/** What a policy may know about the request it picks for. */
export interface PickContext {
  /** The client address after trusted-proxy rules (for hashing policies). */
  clientAddress: string;
}

/**
 * Picks one upstream from a snapshot; must only return upstreams whose `available()` is true.
 * `tried` (a retry's failed upstreams) are passed over as if unavailable, inside the same pass
 * and with the same state as first picks (nginx's `tried` bitmap), so retries are spread by the
 * policy itself: undefined only when every available upstream was tried.
 */
export interface Policy {
  pick(ctx: PickContext, tried?: readonly Upstream[] | null): Upstream | undefined;
}

/** Builds a policy for a snapshot of eligible upstreams (healthy, enabled, not draining). */
export interface PolicyFactory {
  /** The canonical name used in configs and logs. */
  readonly name: string;
  /** Other spellings accepted in configs (the seeds' `least-conn`, ...). */
  readonly aliases: readonly string[];
  /** One line for `fulcrum --help` and the docs. */
  readonly description: string;
  create(snapshot: readonly Upstream[]): Policy;
}

/** True when `u` may take this pick: available, and not already tried by this request. */
export function usable(u: Upstream, tried: readonly Upstream[] | null | undefined): boolean {
  return u.available() && (tried == null || !tried.includes(u));
}

/**
 * Load per unit of weight compared, as nginx's least_conn does (conns/weight, cross-multiplied so
 * equal loads compare exactly equal): negative when `a` is less loaded than `b`, 0 when tied.
 * Idle upstreams are tied whatever their weights; the tie-break is where weights apply.
 */
export function compareLoad(a: Upstream, b: Upstream): number {
  return a.inFlight * b.weight - b.inFlight * a.weight;
}
