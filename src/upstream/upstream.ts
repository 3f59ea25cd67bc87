/**
 * One backend address and its live state. Policies only ask `available()`; health checks and
 * the admin API change state through the setters, which report every change to the pool.
 */

/** Health as set by active checks and outlier ejection (always healthy until they land). */
export type HealthState = 'healthy' | 'unhealthy';

/** What changed on an upstream, handed to the pool and published as an event. */
export interface UpstreamChange {
  upstream: Upstream;
  field: 'health' | 'enabled' | 'draining';
  from: string | boolean;
  to: string | boolean;
  reason: string;
}

/** Options for one upstream, already validated and defaulted by the config schema. */
export interface UpstreamOptions {
  url: string;
  weight: number;
  /** Most requests in flight at once; 0 means no limit. */
  maxConnections: number;
}

/** An upstream: address, weight, counters and availability. */
export class Upstream {
  /** `host:port`, stable across reloads: state for an unchanged address carries over. */
  readonly id: string;
  /** `http://host:port`, the origin requests are sent to. */
  readonly origin: string;
  readonly hostname: string;
  readonly port: number;
  /** `host:port` as a Host header would carry it. */
  readonly hostHeader: string;
  weight: number;
  maxConnections: number;
  /** Requests sent and not yet finished. */
  inFlight = 0;
  /** Requests that got a response from this upstream. */
  served = 0;
  /** Attempts that failed (connect error, reset, timeout). */
  failures = 0;
  health: HealthState = 'healthy';
  enabled = true;
  draining = false;
  /** Set by the pool that owns the upstream; told of every state change. */
  onChange: ((change: UpstreamChange) => void) | null = null;

  constructor(options: UpstreamOptions) {
    const url = new URL(options.url);
    this.hostname = url.hostname;
    this.port = url.port ? Number(url.port) : url.protocol === 'https:' ? 443 : 80;
    this.origin = `${url.protocol}//${url.host}`;
    this.hostHeader = url.host;
    this.id = url.host;
    this.weight = options.weight;
    this.maxConnections = options.maxConnections > 0 ? options.maxConnections : Infinity;
  }

  /** Healthy, enabled, not draining and below its connection limit. */
  available(): boolean {
    return this.health === 'healthy' && this.enabled && !this.draining && this.inFlight < this.maxConnections;
  }

  /** Eligible for new requests apart from the connection limit (what pool snapshots hold). */
  eligible(): boolean {
    return this.health === 'healthy' && this.enabled && !this.draining;
  }

  setHealth(to: HealthState, reason: string): void {
    if (this.health === to) return;
    const from = this.health;
    this.health = to;
    this.onChange?.({ upstream: this, field: 'health', from, to, reason });
  }

  setEnabled(to: boolean, reason: string): void {
    if (this.enabled === to) return;
    this.enabled = to;
    this.onChange?.({ upstream: this, field: 'enabled', from: !to, to, reason });
  }

  setDraining(to: boolean, reason: string): void {
    if (this.draining === to) return;
    this.draining = to;
    this.onChange?.({ upstream: this, field: 'draining', from: !to, to, reason });
  }

  /** Copies the live state of the same address from before a reload. */
  adoptStateFrom(previous: Upstream): void {
    this.health = previous.health;
    this.enabled = previous.enabled;
    this.draining = previous.draining;
    this.served = previous.served;
    this.failures = previous.failures;
  }
}
