/**
 * A pool: named upstreams, a policy and the transport that talks to them. The policy works on
 * a snapshot of eligible upstreams that is rebuilt only when an upstream's state changes
 * (Pingora's habit), so a pick never filters or allocates.
 */
import type { PoolSettings } from '../config/schema.ts';
import { findPolicy } from '../balancer/registry.ts';
import type { PickContext, Policy, PolicyFactory } from '../balancer/policy.ts';
import { poolPanic, upstreamState, type PoolPanicEvent } from '../core/events.ts';
import { Upstream, upstreamIdOf, type UpstreamChange } from './upstream.ts';
import type { HostRewrite } from '../proxy/headers.ts';
import type { Transport } from '../transport/transport.ts';
import { UndiciTransport } from '../transport/undici.ts';
import { NodeHttpTransport } from '../transport/node-http.ts';
import { PassiveHealth } from '../health/passive-health.ts';
import { ActiveChecker } from '../health/active-checker.ts';

/** A pool built from its settings; `previous` (the same pool before a reload) lends its upstreams. */
export class Pool {
  readonly name: string;
  readonly settings: PoolSettings;
  readonly upstreams: readonly Upstream[];
  readonly policyFactory: PolicyFactory;
  readonly hostRewrite: HostRewrite;
  /** The client toward this pool's upstreams (keep-alive sockets per upstream). */
  readonly transport: Transport;
  /** Used only while no upstream of this pool is eligible (set once every pool is built). */
  backup: Pool | null = null;
  /** Requests in flight through this pool, and how many of them are retries (the retry budget). */
  active = 0;
  retrying = 0;
  private readonly passive: PassiveHealth;
  private readonly checker: ActiveChecker | null;
  private policy: Policy;
  private snapshot: readonly Upstream[] = [];
  /** Below panic_threshold_percent: the policy over every upstream the operator allows, else null. */
  private panicPolicy: Policy | null = null;

  constructor(name: string, settings: PoolSettings, previous?: ReadonlyMap<string, Upstream>) {
    // Two entries for one address would share one object; the schema cannot see that, the pool can.
    const ids = settings.upstreams.map((u) => upstreamIdOf(u.url));
    const twice = ids.find((id, i) => ids.indexOf(id) !== i);
    if (twice !== undefined) throw new Error(`pool ${name}: upstream ${twice} is listed twice`);
    this.name = name;
    this.settings = settings;
    this.policyFactory = findPolicy(settings.policy)!;
    this.hostRewrite =
      settings.host_header === 'preserve' ? { kind: 'preserve' } : settings.host_header === 'upstream' ? { kind: 'upstream' } : { kind: 'fixed', value: settings.host_header };
    const onChange = (change: UpstreamChange): void => this.changed(change);
    this.upstreams = settings.upstreams.map((u) => {
      const options = { url: u.url, weight: u.weight, maxConnections: u.max_connections, maxPending: settings.circuit_breaker.max_pending };
      const old = previous?.get(upstreamIdOf(u.url));
      // The same address keeps its object: health, ejection, breaker, counters and in-flight requests.
      const upstream = old ?? new Upstream(options);
      if (old) old.configure(options);
      upstream.onChange = onChange;
      return upstream;
    });
    this.policy = this.rebuild();
    this.transport = settings.transport === 'node-http' ? new NodeHttpTransport(settings) : new UndiciTransport(settings);
    this.passive = new PassiveHealth(settings, this.upstreams);
    this.checker = settings.health_check ? new ActiveChecker(settings.health_check, this.upstreams, (u, state, reason) => u.setHealth(state, reason), (u) => this.passive.checkPassed(u)) : null;
  }

  /**
   * Takes its upstreams back after a reload that failed half-way: a new pool built around the
   * same Upstream objects may have re-pointed and re-configured them.
   */
  reclaim(): void {
    const onChange = (change: UpstreamChange): void => this.changed(change);
    for (const [i, u] of this.upstreams.entries()) {
      const s = this.settings.upstreams[i];
      u.configure({ url: s.url, weight: s.weight, maxConnections: s.max_connections, maxPending: this.settings.circuit_breaker.max_pending });
      u.halfOpenLimit = this.settings.circuit_breaker.half_open_requests;
      u.onChange = onChange;
    }
    this.policy = this.rebuild();
  }

  /** Starts passive health and, if configured, active checks. */
  start(): void {
    // Without active checks nothing would ever mark an upstream healthy again (done here, once the
    // pool is in service, so a reload that fails half-way leaves the running pools' state alone).
    if (!this.settings.health_check) for (const u of this.upstreams) u.setHealth('healthy', 'no health check configured any more');
    this.passive.start();
    this.checker?.start();
  }

  /** Stops health work and closes the pool's upstream sockets (idle now, busy ones when their request ends). */
  async close(): Promise<void> {
    this.passive.stop();
    await this.checker?.stop();
    await this.transport.close();
  }

  /** An available upstream chosen by the policy, or undefined (the caller answers 503). */
  pick(ctx: PickContext): Upstream | undefined {
    return this.policy.pick(ctx);
  }

  /**
   * As pick, but never one of `tried` (retries); undefined once every available upstream was
   * tried. The live policy itself passes over the tried ones (nginx's `tried` bitmap), so retries
   * follow its turns and weights and are spread over the siblings, not sent to the first untried.
   */
  pickExcept(ctx: PickContext, tried: readonly Upstream[]): Upstream | undefined {
    return this.policy.pick(ctx, tried);
  }

  /** The eligible upstreams the policy currently chooses from (outside panic mode). */
  eligible(): readonly Upstream[] {
    return this.snapshot;
  }

  /**
   * True while requests are balanced over all upstreams the operator allows, down ones included
   * (Envoy's panic mode): fewer than panic_threshold_percent of them are eligible, and there is
   * no backup pool with an eligible upstream (a backup is the operator's chosen fallback and goes first).
   */
  inPanic(): boolean {
    return this.panicPolicy !== null && (this.backup === null || this.backup.eligible().length === 0);
  }

  /** As pick in panic mode: any upstream not disabled, drained or full, never one of `tried`. */
  pickInPanic(ctx: PickContext, tried: readonly Upstream[] | null): Upstream | undefined {
    return this.panicPolicy?.pick(ctx, tried);
  }

  private rebuild(): Policy {
    this.snapshot = Object.freeze(this.upstreams.filter((u) => u.eligible()));
    // Operators' choices (disabled, drained) are never overridden and do not count in the share; health, ejection and breakers are.
    const allowed = this.upstreams.filter((u) => u.enabled && !u.draining);
    const threshold = this.settings.panic_threshold_percent;
    const panic = threshold > 0 && allowed.length > 0 && this.snapshot.length * 100 < threshold * allowed.length;
    if (panic !== (this.panicPolicy !== null) && poolPanic.hasSubscribers) {
      poolPanic.publish({ pool: this.name, upstreams: this.upstreams, panic, available: this.snapshot.length, allowed: allowed.length, threshold } satisfies PoolPanicEvent);
    }
    for (const u of this.upstreams) u.panic = panic && u.enabled && !u.draining;
    this.panicPolicy = panic ? this.policyFactory.create(Object.freeze(allowed)) : null;
    return this.policyFactory.create(this.snapshot);
  }

  private changed(change: UpstreamChange): void {
    this.policy = this.rebuild();
    if (upstreamState.hasSubscribers) upstreamState.publish({ ...change, pool: this.name });
  }
}
