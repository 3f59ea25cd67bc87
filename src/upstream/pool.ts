/**
 * A pool: named upstreams, a policy and the transport that talks to them. The policy works on
 * a snapshot of eligible upstreams that is rebuilt only when an upstream's state changes
 * (Pingora's habit), so a pick never filters or allocates.
 */
import type { PoolSettings, UpstreamSettings } from '../config/schema.ts';
import { findPolicy } from '../balancer/registry.ts';
import type { PickContext, Policy, PolicyFactory } from '../balancer/policy.ts';
import { poolPanic, upstreamState, type PoolPanicEvent } from '../core/events.ts';
import { Upstream, upstreamIdOf, type UpstreamChange, type UpstreamOptions } from './upstream.ts';
import type { HostRewrite } from '../proxy/headers.ts';
import type { Transport } from '../transport/transport.ts';
import type { ConnectionPools } from '../transport/connection-pools.ts';
import { PassiveHealth } from '../health/passive-health.ts';
import { ActiveChecker, resolveCheckSettings } from '../health/active-checker.ts';
import { readUpstreamTls, UpstreamTlsFileError, type UpstreamTls } from '../transport/upstream-tls.ts';

const secureUrl = /^https:/i;

/** An upstream's settings as its pool gives them (limits and breaker from the pool's). */
function upstreamOptions(u: UpstreamSettings, settings: PoolSettings): UpstreamOptions {
  // A TCP connection never waits for an upstream slot (it is refused at once): max_connections is its whole cap.
  const maxPending = settings.protocol === 'tcp' ? 0 : settings.circuit_breaker.max_pending;
  return { url: u.url, weight: u.weight, maxConnections: u.max_connections, maxPending, halfOpenLimit: settings.circuit_breaker.half_open_requests };
}

/**
 * A pool built from its settings. Building it touches nothing shared (a runtime is built off to
 * the side); `adopt()` puts it in charge of its upstreams and `start()` in service.
 */
export class Pool {
  readonly name: string;
  readonly settings: PoolSettings;
  readonly upstreams: readonly Upstream[];
  readonly policyFactory: PolicyFactory;
  readonly hostRewrite: HostRewrite;
  /** The client toward this pool's upstreams, from the balancer's connection pools (which close it). */
  readonly transport: Transport;
  /** `settings.tls` read (its PEM files) when the pool was built; null when no upstream is https. */
  readonly upstreamTls: UpstreamTls | null;
  /** Used only while no upstream of this pool is eligible (linked when its runtime is committed). */
  backup: Pool | null = null;
  /** Requests in flight through this pool, and how many of them are retries (the retry budget). */
  active = 0;
  retrying = 0;
  private readonly passive: PassiveHealth;
  private readonly checker: ActiveChecker | null;
  /** Over no upstream until `adopt()`. */
  private policy: Policy;
  private snapshot: readonly Upstream[] = Object.freeze([]);
  /** Below panic_threshold_percent: the policy over every upstream the operator allows, else null. */
  private panicPolicy: Policy | null = null;

  /**
   * `kept` lends the Upstream objects of addresses that stay (the same pool before a reload, or
   * a renamed one): health, ejection, breaker, counters and in-flight requests carry over; they
   * take this pool's settings only at `adopt()` (an address that changed between http:// and
   * https:// gets a new Upstream). Reads `settings.tls` when an upstream is https. Throws when an
   * address is listed twice, and `UpstreamTlsFileError` when a TLS file cannot be used.
   */
  constructor(name: string, settings: PoolSettings, connections: ConnectionPools, kept?: ReadonlyMap<string, Upstream>) {
    // Two entries for one address would share one object; the schema cannot see that, the pool can.
    const ids = settings.upstreams.map((u) => upstreamIdOf(u.url));
    const twice = ids.find((id, i) => ids.indexOf(id) !== i);
    if (twice !== undefined) throw new Error(`pool ${name}: upstream ${twice} is listed twice`);
    this.name = name;
    this.settings = settings;
    this.policyFactory = findPolicy(settings.policy)!;
    this.hostRewrite =
      settings.host_header === 'preserve' ? { kind: 'preserve' } : settings.host_header === 'upstream' ? { kind: 'upstream' } : { kind: 'fixed', value: settings.host_header };
    this.upstreams = settings.upstreams.map((u, i) => {
      const old = kept?.get(ids[i]);
      return old !== undefined && old.secure === secureUrl.test(u.url) ? old : new Upstream(upstreamOptions(u, settings));
    });
    this.upstreamTls = null;
    if (this.upstreams.some((u) => u.secure)) {
      try {
        this.upstreamTls = readUpstreamTls(settings.tls);
      } catch (err) {
        if (err instanceof UpstreamTlsFileError) err.message = `pool ${name}: ${err.message}`;
        throw err;
      }
    }
    this.policy = this.policyFactory.create(this.snapshot);
    this.transport = connections.transportFor(settings, this.upstreamTls);
    this.passive = new PassiveHealth(settings, this.upstreams);
    // The checker gets a decided type (the schema leaves it to the pool's protocol: tcp pools tcp) and the pool's PROXY header version.
    this.checker = settings.health_check
      ? new ActiveChecker(resolveCheckSettings(settings.health_check, settings.protocol, settings.proxy_protocol), this.upstreams, (u, state, reason) => u.setHealth(state, reason), (u) => this.passive.checkPassed(u), this.upstreamTls)
      : null;
  }

  /**
   * True when the pool's TLS files now read differently from when it was built (a renewed CA
   * file or client certificate), or cannot be read any more: a reload that keeps the pool's
   * settings should build it again, so new connections use the new files (or the reload is
   * refused with the file's problem). False for a pool without https upstreams. Reads the files:
   * for reloads only.
   */
  tlsFilesChanged(): boolean {
    if (this.upstreamTls === null) return false;
    try {
      return readUpstreamTls(this.settings.tls).fingerprint !== this.upstreamTls.fingerprint;
    } catch {
      return true;
    }
  }

  /**
   * The warning to log at every start and every reload while this pool does not verify its
   * https upstreams' certificates (`tls.insecure_skip_verify: true`); null otherwise.
   */
  tlsWarning(): string | null {
    if (this.upstreamTls === null || this.upstreamTls.rejectUnauthorized) return null;
    const names = this.upstreams.filter((u) => u.secure).map((u) => u.id);
    return `pool ${this.name}: tls.insecure_skip_verify is on: the certificates of ${names.join(', ')} are NOT verified, so anyone on the network path can pose as ${names.length === 1 ? 'it' : 'them'} and read or change the traffic; for tests only`;
  }

  /**
   * Takes charge of its upstreams (a runtime's commit; never throws): gives them this pool's
   * settings (weight, limits, breaker), has their state changes reported here, builds the policy.
   */
  adopt(): void {
    const onChange = (change: UpstreamChange): void => this.changed(change);
    for (const [i, u] of this.upstreams.entries()) {
      u.configure(upstreamOptions(this.settings.upstreams[i], this.settings));
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

  /** Stops health work (passive and active checks); its connections belong to the balancer's connection pools. */
  async close(): Promise<void> {
    this.passive.stop();
    await this.checker?.stop();
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

  /**
   * When this pool found no upstream: one of its backup pool's (never one of `tried`), if it has
   * a backup and every primary upstream is down or this exchange already failed on some; else
   * undefined. The caller then serves from `this.backup`.
   */
  pickBackup(ctx: PickContext, tried: readonly Upstream[] | null): Upstream | undefined {
    const backup = this.backup;
    if (backup === null || (this.snapshot.length > 0 && tried === null)) return undefined;
    return tried === null ? backup.pick(ctx) : backup.pickExcept(ctx, tried);
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
