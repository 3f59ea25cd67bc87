/**
 * One backend address and its live state. Policies only ask `available()`; health checks and
 * the admin API change state through the setters, which report every change to the pool.
 */
import type { UpstreamStateEvent } from '../core/events.ts';

/** Health as set by active checks and outlier ejection (always healthy until they land). */
export type HealthState = 'healthy' | 'unhealthy';

/** Circuit-breaker state: closed lets everything through, open nothing, half-open a few probes. */
export type CircuitState = 'closed' | 'open' | 'half-open';

/** What changed on an upstream, handed to the pool and published as an event (`fulcrum:upstream:state` adds the pool). */
export type UpstreamChange = Omit<UpstreamStateEvent<Upstream>, 'pool'>;

/**
 * `host:port` of an upstream URL, the port always spelled out (`http://10.0.0.2` is
 * `10.0.0.2:80`): the id in logs, metrics labels, the admin API, and across reloads.
 */
export function upstreamIdOf(url: string | URL): string {
  const u = typeof url === 'string' ? new URL(url) : url;
  // tcp:// is not a special scheme: the URL parser keeps its host's case, so it is lowered here (DNS names have no case).
  return `${u.hostname.toLowerCase()}:${u.port || (u.protocol === 'https:' ? '443' : '80')}`;
}

/** Options for one upstream, already validated and defaulted by the config schema. */
export interface UpstreamOptions {
  url: string;
  weight: number;
  /** Most requests in flight at once; 0 means no limit. */
  maxConnections: number;
  /** Requests allowed to wait beyond maxConnections (only with a limit); beyond that: 503 at once. */
  maxPending?: number;
  /** Requests let through while the circuit breaker is half-open (default 3). */
  halfOpenLimit?: number;
}

/** An upstream: address, weight, counters and availability. */
export class Upstream {
  /** `host:port`, stable across reloads: state for an unchanged address carries over. */
  readonly id: string;
  /** `http://host:port` or `https://host:port`, the origin requests are sent to. */
  readonly origin: string;
  /** An `https://` upstream: reached over TLS with its pool's `tls` settings. */
  readonly secure: boolean;
  /** The URL's host as written (an IPv6 address in brackets). */
  readonly hostname: string;
  /** The host to connect to: `hostname` without IPv6 brackets (`::1`, `10.0.0.5`, `db.internal`). */
  readonly connectHost: string;
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
  /** Set by passive outlier detection until the ejection time is over. */
  ejected = false;
  /** How many times it was ejected (multiplies the next ejection time). */
  ejections = 0;
  /** When the current ejection ends (Date.now() ms; 0 while not ejected), so a reload can keep it. */
  ejectedUntil = 0;
  /** When an open circuit goes half-open (Date.now() ms), so a reload can keep it. */
  circuitOpenUntil = 0;
  /** The error-rate circuit breaker's state. */
  circuit: CircuitState = 'closed';
  /** Requests let through while half-open. */
  halfOpenLimit = 3;
  /** Requests allowed to wait for a connection beyond maxConnections. */
  maxPending: number;
  /** Set by its pool while in panic mode: health, ejection and an open breaker do not keep it out. */
  panic = false;
  /** Out because a connect was refused (with `ejected`); back when a connect probe or an active check succeeds. */
  refused = false;
  /** Set by the pool that owns the upstream; told of every state change. */
  onChange: ((change: UpstreamChange) => void) | null = null;

  constructor(options: UpstreamOptions) {
    const url = new URL(options.url);
    this.hostname = url.hostname;
    this.connectHost = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
    this.secure = url.protocol === 'https:';
    this.port = url.port ? Number(url.port) : this.secure ? 443 : 80;
    this.origin = `${url.protocol}//${url.host}`;
    this.hostHeader = url.host;
    this.id = upstreamIdOf(url);
    this.weight = options.weight;
    this.maxConnections = Infinity;
    this.maxPending = 0;
    this.configure(options);
  }

  /**
   * Takes new settings for the same address. A reload keeps the Upstream object itself (not a
   * copy), so requests still in flight count against the same in-flight number and counters.
   */
  configure(options: UpstreamOptions): void {
    this.weight = options.weight;
    this.maxConnections = options.maxConnections > 0 ? options.maxConnections : Infinity;
    this.maxPending = options.maxPending ?? 0;
    this.halfOpenLimit = options.halfOpenLimit ?? 3;
  }

  /** Eligible (or its pool in panic), below its connection (and queue) limit, and let through by its circuit breaker. */
  available(): boolean {
    if (this.inFlight >= this.maxConnections + this.maxPending) return false;
    if (this.circuit === 'half-open' && this.inFlight >= this.halfOpenLimit) return false;
    return this.eligible() || (this.panic && this.enabled && !this.draining);
  }

  /** Up as far as health, ejection, breaker and operator go (what pool snapshots hold); limits aside. */
  eligible(): boolean {
    return this.health === 'healthy' && this.enabled && !this.draining && !this.ejected && this.circuit !== 'open';
  }

  setEjected(to: boolean, reason: string): void {
    this.change('ejected', to, reason);
  }

  setCircuit(to: CircuitState, reason: string): void {
    this.change('circuit', to, reason);
  }

  setHealth(to: HealthState, reason: string): void {
    this.change('health', to, reason);
  }

  setEnabled(to: boolean, reason: string): void {
    this.change('enabled', to, reason);
  }

  setDraining(to: boolean, reason: string): void {
    this.change('draining', to, reason);
  }

  /** Sets one state field and tells the pool, only when the value really changes. */
  private change<F extends UpstreamChange['field']>(field: F, to: this[F], reason: string): void {
    const from = this[field];
    if (from === to) return;
    this[field] = to;
    this.onChange?.({ upstream: this, field, from: from as string | boolean, to: to as string | boolean, reason });
  }
}
