/**
 * Prometheus metrics: the only prom-client code. Counters and histograms are fed by the event
 * channels (the proxy never calls in here); gauges of upstream state are read from the pools
 * when Prometheus scrapes, so they cost nothing between scrapes.
 *
 * Labels only ever take values from the configuration (pool, backend, route, listener names)
 * or from small fixed sets (method, status, error code): never a raw client value, so a
 * client cannot grow the number of series.
 */
import { createRequire } from 'node:module';
import type * as PromClient from 'prom-client';
import type { Metric } from 'prom-client';

// prom-client's parts by file: its index also loads the Pushgateway (https, tls, zlib) and the
// cluster aggregator, about 4 MiB of RSS at start that a scrape endpoint never uses.
const requireLib = createRequire(import.meta.url);
const Counter = requireLib('prom-client/lib/counter.js') as typeof PromClient.Counter;
const Gauge = requireLib('prom-client/lib/gauge.js') as typeof PromClient.Gauge;
const Histogram = requireLib('prom-client/lib/histogram.js') as typeof PromClient.Histogram;
const Registry = requireLib('prom-client/lib/registry.js') as typeof PromClient.Registry;
const collectDefaultMetrics = requireLib('prom-client/lib/defaultMetrics.js') as typeof PromClient.collectDefaultMetrics;
type Counter<T extends string = string> = PromClient.Counter<T>;
type Gauge<T extends string = string> = PromClient.Gauge<T>;
type Histogram<T extends string = string> = PromClient.Histogram<T>;
type Registry = PromClient.Registry;
import { configReload, forwardDecision, requestEnd, requestRetry, tcpClose, tcpOpen, tunnelClose, tunnelOpen, upstreamError, upstreamResult, upstreamState } from '../core/events.ts';
import type { ConfigReloadEvent, ForwardDecisionEvent, RequestEndEvent, RequestRetryEvent, TcpConnectionEvent, TunnelEvent, UpstreamErrorEvent, UpstreamResultEvent, UpstreamStateEvent } from '../core/events.ts';
import { OpenBytes } from './open-bytes.ts';
import type { TcpCloseReason } from '../proxy/tcp-proxy.ts';
import type { RequestContext, UpstreamRef } from '../core/context.ts';
import { ErrorCode, FulcrumError } from '../errors.ts';
import type { Pool } from '../upstream/pool.ts';
import type { RateLimitStores } from '../middleware/rate-limit-stores.ts';
import type { Http2Stats } from '../downstream/http2-server.ts';
import { grpcStatusNames } from '../proxy/grpc.ts';
import { http2UpstreamStats } from '../transport/http2.ts';

/** What the metrics read at scrape time. */
export interface MetricsSources {
  pools(): ReadonlyMap<string, Pool>;
  stores(): RateLimitStores;
  listeners(): { name: string; open: number; refused: number; malformed: number; http2?: Http2Stats; proxyProtocol?: TcpListenerMetricsSource['proxyProtocol'] }[];
  /** Route names (series of per-route counters start at 0). */
  routes(): string[];
  /** The balancer's proxy: exchanges it does not carry (another balancer in the process) are not counted. */
  carrier?: object;
  /** Access-log lines dropped so far (a destination that did not keep up, or failed). */
  accessLogDropped?(): number;
  /** The https listeners' certificates and handshake totals (running totals since start). */
  tls?(): TlsMetricsSource[];
  /** The tcp listeners: open and refused connections, PROXY-protocol and TLS-passthrough refusals (running totals). */
  tcpListeners?(): TcpListenerMetricsSource[];
  /** The balancer's TCP proxy: TCP connections it does not carry are not counted. */
  tcpCarrier?: object;
}

/** One tcp listener as the metrics read it. */
export interface TcpListenerMetricsSource {
  name: string;
  open: number;
  refused: number;
  /** `enabled`: the listener accepts the PROXY protocol now (its accepted series then show from 0). */
  proxyProtocol: { readonly refused: ReadonlyMap<string, number>; readonly accepted: { readonly v1: number; readonly v2: number }; readonly enabled?: boolean };
  passthroughRefused: ReadonlyMap<string, number>;
  passthroughRouted: ReadonlyMap<string, number>;
}

/** One https listener as the TLS metrics read it. */
export interface TlsMetricsSource {
  listener: string;
  /** Each certificate's names and expiry. */
  certificates: { names: string[]; source: string; notAfter: number }[];
  /** Completed handshakes by TLS version. */
  handshakes: ReadonlyMap<string, number>;
  /** Failed or refused handshakes by reason. */
  failures: ReadonlyMap<string, number>;
}

/** prom-client default gauges named like counters (promtool rejects them); the same numbers are in nodejs_active_handles etc. by type. */
const misnamedDefaults = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];

/** Seconds; from a cache hit to a slow report. */
const durationBuckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** Seconds; from a short-lived socket to a day-long session. */
const tunnelBuckets = [1, 10, 60, 300, 900, 3600, 4 * 3600, 24 * 3600];
/** Why tunnels close: the values of lb_tunnels_closed_total's reason label. */
const tunnelReasons = ['client', 'upstream', 'error', 'idle', 'drained', 'removed', 'shutdown'];

/** Seconds; TCP connections last from a health probe's milliseconds to a replication link's day. */
const tcpBuckets = [0.01, 0.1, 1, 10, 60, 300, 900, 3600, 4 * 3600, 24 * 3600];
/** Why TCP connections close: the values of lb_tcp_connections_closed_total's reason label (a record, so a new reason is a compile error here). */
const tcpCloseReasonSet: Record<TcpCloseReason, true> = { client: true, upstream: true, client_error: true, upstream_error: true, idle: true, connect_failed: true, no_upstream: true, drained: true, removed: true, shutdown: true };
const tcpCloseReasons: readonly string[] = Object.keys(tcpCloseReasonSet);

/** A listener's PROXY-protocol intake as the metrics read it (src/listeners/proxy-protocol-gate.ts). */
type ProxyProtocolCounts = TcpListenerMetricsSource['proxyProtocol'];

/**
 * A counter over running totals that something else keeps (listeners count their own refusals):
 * at each scrape it adds what each (first label, second label) total grew by since the last.
 * `read` gives each first label value with its totals by second label value.
 */
function runningTotals(registers: Registry[], name: string, help: string, labels: [string, string], read: () => Iterable<[string, Iterable<[string, number]>]>): void {
  const seen = new Map<string, number>();
  new Counter({
    name, help, labelNames: labels, registers,
    collect() {
      for (const [a, totals] of read()) {
        for (const [b, n] of totals) {
          const key = `${a}\0${b}`;
          this.inc({ [labels[0]]: a, [labels[1]]: b }, Math.max(0, n - (seen.get(key) ?? 0)));
          seen.set(key, n);
        }
      }
    },
  });
}

/** Methods kept as they are; anything else is counted as OTHER (a client picks the method). */
const methods = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'CONNECT', 'TRACE', 'OTHER'];
const methodIndex = new Map(methods.map((m, i) => [m, i]));
const otherMethod = methods.length - 1;

/**
 * The per-request numbers of one (pool, backend): counts by method and status, and the latency
 * histogram. The request path only bumps numbers here; prom-client sees them when Prometheus
 * scrapes (prom-client hashes the label set on every inc and observe: microseconds per request).
 */
class Series {
  readonly pool: string;
  readonly backend: string;
  /** method index x 1000 + status -> requests not yet handed to the counter. */
  readonly pending = new Map<number, number>();
  /** Requests per latency bucket (not cumulative; the last slot is +Inf). */
  readonly buckets = new Float64Array(durationBuckets.length + 1);
  sum = 0;
  count = 0;

  constructor(pool: string, backend: string) {
    this.pool = pool;
    this.backend = backend;
  }
}
const knownCodes = new Set<string>(Object.values(ErrorCode));

/**
 * The `backend` label of an exchange's upstream: its `host:port`, except for a forward-proxy
 * destination, whose address the client chose: there it is the configured rule that allowed it.
 */
function backendLabel(ctx: RequestContext, upstream: UpstreamRef | null): string {
  if (upstream === null) return 'none';
  return ctx.forward === null ? upstream.id : (ctx.forward.rule ?? 'none');
}

/**
 * A short, stable cause for a state change (the log keeps the full sentence): the label of
 * `lb_backend_state_changes_total`.
 */
export function causeOf(field: string, to: string | boolean, reason: string): string {
  const r = reason.toLowerCase();
  if (r.includes('admin') || r.includes('operator') || field === 'enabled' || field === 'draining') return 'operator';
  if (field === 'health') {
    if (to === 'healthy') return 'checks_passed';
    if (r.includes('refused')) return 'connection_refused';
    if (r.includes('timeout')) return 'timeout';
    if (r.includes('reset')) return 'connection_reset';
    if (r.includes('status')) return 'bad_status';
    if (r.includes('body')) return 'bad_body';
    if (r.includes('not found')) return 'dns';
    if (r.includes('invalid http')) return 'protocol_error';
    return 'check_failed';
  }
  if (field === 'ejected') {
    if (to === true) return r.includes('nothing took the connection') ? 'connection_refused' : 'consecutive_failures';
    return r.includes('probe') ? 'probe_passed' : r.includes('check') ? 'checks_passed' : 'ejection_over';
  }
  if (field === 'circuit') {
    if (to === 'open') return r.includes('probe') ? 'probe_failed' : 'error_rate';
    if (to === 'half-open') return 'open_time_over';
    return 'probes_succeeded';
  }
  return 'other';
}

/** The registry and the subscriptions that feed it. */
export class Metrics {
  readonly registry = new Registry();
  /** Series by label values ("pool\nbackend"): one per pair, whatever objects a reload makes. */
  private readonly series = new Map<string, Series>();
  /**
   * The series of an upstream (or, for answers without one, a pool) object: a lookup without
   * building the label key per request. Weak, so objects dropped by reloads are not kept.
   */
  private readonly byObject = new WeakMap<object, Series>();
  private readonly noPool = {};
  /** "pool\nbackend" of series that counted a real event (never removed). */
  private readonly retriedSeries = new Set<string>();
  private readonly ejectedSeries = new Set<string>();
  private readonly rateLimited: Counter<'route'>;
  private readonly refusals: Counter<'code'>;
  private readonly headersDropped: Counter<'listener' | 'reason'>;
  private readonly retries: Counter<'pool' | 'backend'>;
  private readonly attemptFailures: Counter<'pool' | 'backend' | 'code'>;
  private readonly stateChanges: Counter<'pool' | 'backend' | 'field' | 'to' | 'cause'>;
  private readonly ejections: Counter<'pool' | 'backend'>;
  private readonly reloads: Counter<'result' | 'source'>;
  private readonly lastReloadOk: Gauge;
  private readonly lastReloadTime: Gauge;
  private readonly tunnelsOpened: Counter<'pool' | 'backend'>;
  private readonly tunnelsClosed: Counter<'pool' | 'reason'>;
  private readonly tunnelBytes: Counter<'pool' | 'direction'>;
  private readonly tunnelDuration: Histogram<'pool'>;
  /** Open tunnels and the bytes of each already counted (bytes count while a tunnel is open, at each scrape). */
  private readonly openTunnels = new OpenBytes<RequestContext>();
  /** Open TCP connections of this balancer and the bytes of each already counted (the same way). */
  private readonly openTcp = new OpenBytes<TcpConnectionEvent>();
  /** Requests by `listener\0protocol` since the last scrape. */
  private readonly byProtocol = new Map<string, number>();
  /** gRPC calls by `pool\0status name` since the last scrape. */
  private readonly grpcCodes = new Map<string, number>();
  private readonly subscriptions: [{ subscribe(f: (m: unknown) => void): void; unsubscribe(f: (m: unknown) => void): unknown }, (m: unknown) => void][] = [];

  constructor(sources: MetricsSources) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    for (const name of misnamedDefaults) this.registry.removeSingleMetric(name);
    const all = (): Iterable<Series> => this.series.values();
    new Counter({
      name: 'lb_requests_total', help: 'Requests answered, by backend (none: answered by Fulcrum itself), method and status.', labelNames: ['pool', 'backend', 'method', 'status'], registers,
      collect() {
        for (const s of all()) {
          for (const [code, n] of s.pending) {
            if (n === 0) continue;
            this.inc({ pool: s.pool, backend: s.backend, method: methods[Math.floor(code / 1000)], status: String(code % 1000) }, n);
            s.pending.set(code, 0);
          }
        }
      },
    });
    // A histogram built from the series' own buckets, in the registry's value format (prom-client's
    // Histogram has no way to add counts in bulk).
    const histogram = {
      name: 'lb_request_duration_seconds',
      help: 'Time from the request accepted to the response finished, by backend.',
      type: 'histogram',
      aggregator: 'sum',
      get: () => {
        const values: { labels: Record<string, string | number>; value: number; metricName: string }[] = [];
        for (const s of all()) {
          let cumulative = 0;
          for (let i = 0; i <= durationBuckets.length; i++) {
            cumulative += s.buckets[i];
            values.push({ labels: { le: i < durationBuckets.length ? durationBuckets[i] : '+Inf', pool: s.pool, backend: s.backend }, value: cumulative, metricName: 'lb_request_duration_seconds_bucket' });
          }
          values.push({ labels: { pool: s.pool, backend: s.backend }, value: s.sum, metricName: 'lb_request_duration_seconds_sum' });
          values.push({ labels: { pool: s.pool, backend: s.backend }, value: s.count, metricName: 'lb_request_duration_seconds_count' });
        }
        return { name: histogram.name, help: histogram.help, type: histogram.type, aggregator: histogram.aggregator, values };
      },
      reset: () => {
        for (const s of all()) {
          s.buckets.fill(0);
          s.sum = 0;
          s.count = 0;
        }
      },
    };
    this.registry.registerMetric(histogram as unknown as Metric);
    this.rateLimited = new Counter({
      name: 'lb_rate_limited_requests_total', help: 'Requests refused with 429 by a rate limit, by route.', labelNames: ['route'], registers,
      // Every route shows, at 0 until one is limited, so rate() works from the first scrape.
      collect() { for (const route of sources.routes()) this.inc({ route }, 0); },
    });
    this.refusals = new Counter({ name: 'lb_request_errors_total', help: 'Requests that ended in an error, by stable error code (docs/errors.md).', labelNames: ['code'], registers });
    this.headersDropped = new Counter({
      name: 'lb_headers_dropped_total', help: 'Request headers left out of the upstream request, by listener and reason ("underscore": a name with "_", headers_with_underscores: drop).', labelNames: ['listener', 'reason'], registers,
      collect() { for (const l of sources.listeners()) this.inc({ listener: l.name, reason: 'underscore' }, 0); },
    });
    const each = (f: (pool: Pool, u: Pool['upstreams'][number]) => void): void => {
      for (const pool of sources.pools().values()) for (const u of pool.upstreams) f(pool, u);
    };
    const eachUpstream = (f: (pool: string, backend: string) => void): void => each((p, u) => f(p.name, u.id));
    /**
     * Shows every current backend at 0 and takes back the zeros of backends that are gone (a
     * series that counted something stays: counters do not go away under Prometheus' feet).
     */
    const zeros = (counter: Counter<'pool' | 'backend'>, counted: Set<string>) => {
      const shown = new Set<string>();
      return (): void => {
        const now = new Set<string>();
        eachUpstream((pool, backend) => {
          const key = `${pool}\n${backend}`;
          now.add(key);
          if (!shown.has(key) && !counted.has(key)) {
            counter.inc({ pool, backend }, 0);
            shown.add(key);
          }
        });
        for (const key of shown) {
          if (now.has(key)) continue;
          shown.delete(key);
          if (counted.has(key)) continue;
          const [pool, backend] = key.split('\n');
          counter.remove({ pool, backend });
        }
      };
    };
    const retried = this.retriedSeries;
    const ejected = this.ejectedSeries;
    let zeroRetries: (() => void) | null = null;
    let zeroEjections: (() => void) | null = null;
    // Series of every current backend show from the first scrape (at 0), so ratios and rate() work before the first event.
    this.retries = new Counter({
      name: 'lb_retries_total', help: 'Requests sent again after an attempt failed, by the backend that failed.', labelNames: ['pool', 'backend'], registers,
      collect() {
        zeroRetries ??= zeros(this, retried);
        zeroRetries();
      },
    });
    this.attemptFailures = new Counter({ name: 'lb_backend_attempt_failures_total', help: 'Attempts against a backend that failed (connect, reset, timeout), by error code.', labelNames: ['pool', 'backend', 'code'], registers });
    this.stateChanges = new Counter({ name: 'lb_backend_state_changes_total', help: 'Backend state changes (health, ejected, circuit, enabled, draining), with a short cause.', labelNames: ['pool', 'backend', 'field', 'to', 'cause'], registers });
    this.ejections = new Counter({
      name: 'lb_backend_ejections_total', help: 'Passive outlier ejections.', labelNames: ['pool', 'backend'], registers,
      collect() {
        zeroEjections ??= zeros(this, ejected);
        zeroEjections();
      },
    });
    this.reloads = new Counter({ name: 'lb_config_reloads_total', help: 'Configuration reloads, by result (success, failure) and source (file, signal, watch, admin, api).', labelNames: ['result', 'source'], registers });
    for (const result of ['success', 'failure']) for (const source of ['signal', 'watch', 'admin']) this.reloads.inc({ result, source }, 0);
    this.lastReloadOk = new Gauge({ name: 'lb_config_last_reload_successful', help: '1 if the last reload was applied, 0 if it was refused.', registers });
    this.lastReloadTime = new Gauge({ name: 'lb_config_last_reload_success_timestamp_seconds', help: 'When a configuration was last applied (start counts).', registers });
    this.lastReloadOk.set(1);
    this.lastReloadTime.set(Date.now() / 1000);

    new Gauge({
      name: 'lb_backend_up', help: '1 if the backend takes new requests (healthy, enabled, not draining, ejected or open), else 0.', labelNames: ['pool', 'backend'], registers,
      collect() { this.reset(); each((p, u) => this.set({ pool: p.name, backend: u.id }, u.eligible() ? 1 : 0)); },
    });
    new Gauge({
      name: 'lb_backend_healthy', help: '1 if the active health check passes (or none is configured), else 0.', labelNames: ['pool', 'backend'], registers,
      collect() { this.reset(); each((p, u) => this.set({ pool: p.name, backend: u.id }, u.health === 'healthy' ? 1 : 0)); },
    });
    new Gauge({
      name: 'lb_active_connections', help: 'Requests in flight to the backend.', labelNames: ['pool', 'backend'], registers,
      collect() { this.reset(); each((p, u) => this.set({ pool: p.name, backend: u.id }, u.inFlight)); },
    });
    new Gauge({
      name: 'lb_backend_ejected', help: '1 while passive outlier detection keeps the backend out.', labelNames: ['pool', 'backend'], registers,
      collect() { this.reset(); each((p, u) => this.set({ pool: p.name, backend: u.id }, u.ejected ? 1 : 0)); },
    });
    new Gauge({
      name: 'lb_backend_draining', help: '1 while the backend is drained (finishes its requests, takes no new ones).', labelNames: ['pool', 'backend'], registers,
      collect() { this.reset(); each((p, u) => this.set({ pool: p.name, backend: u.id }, u.draining ? 1 : 0)); },
    });
    new Gauge({
      name: 'lb_backend_enabled', help: '0 while an operator disabled the backend.', labelNames: ['pool', 'backend'], registers,
      collect() { this.reset(); each((p, u) => this.set({ pool: p.name, backend: u.id }, u.enabled ? 1 : 0)); },
    });
    new Gauge({
      name: 'lb_backend_weight', help: 'The backend\'s weight.', labelNames: ['pool', 'backend'], registers,
      collect() { this.reset(); each((p, u) => this.set({ pool: p.name, backend: u.id }, u.weight)); },
    });
    new Gauge({
      name: 'lb_circuit_breaker_state', help: 'Circuit-breaker state: 1 for the current state of each backend, 0 for the others.', labelNames: ['pool', 'backend', 'state'], registers,
      collect() {
        this.reset();
        each((p, u) => {
          for (const state of ['closed', 'open', 'half-open']) this.set({ pool: p.name, backend: u.id, state }, u.circuit === state ? 1 : 0);
        });
      },
    });
    new Gauge({
      name: 'lb_pool_available_backends', help: 'Backends of the pool that take new requests.', labelNames: ['pool'], registers,
      collect() { this.reset(); for (const p of sources.pools().values()) this.set({ pool: p.name }, p.eligible().length); },
    });
    new Gauge({
      name: 'lb_pool_panic', help: '1 while too few of the pool\'s backends are up (panic_threshold_percent) and requests are spread over all of them, else 0.', labelNames: ['pool'], registers,
      collect() { this.reset(); for (const p of sources.pools().values()) this.set({ pool: p.name }, p.inPanic() ? 1 : 0); },
    });
    new Gauge({
      name: 'lb_client_connections', help: 'Open client connections, by listener.', labelNames: ['listener'], registers,
      collect() {
        this.reset();
        for (const l of sources.listeners()) this.set({ listener: l.name }, l.open);
        for (const l of sources.tcpListeners?.() ?? []) this.set({ listener: l.name }, l.open);
      },
    });
    // Listeners keep their own running totals; these counters add what is new since the last scrape.
    const listenerCounter = (name: string, help: string, field: 'refused' | 'malformed'): void => {
      const seen = new Map<string, number>();
      new Counter({
        name, help, labelNames: ['listener'], registers,
        collect() {
          // Tcp listeners parse no requests: they count in the connection refusals only.
          const tcp = field === 'refused' ? (sources.tcpListeners?.() ?? []).map((l) => ({ name: l.name, refused: l.refused, malformed: 0 })) : [];
          for (const l of [...sources.listeners(), ...tcp]) {
            this.labels(l.name).inc(Math.max(0, l[field] - (seen.get(l.name) ?? 0)));
            seen.set(l.name, l[field]);
          }
        },
      });
    };
    new Gauge({
      name: 'lb_tls_certificate_expiry_seconds', help: 'Seconds until each certificate a listener serves expires (negative once expired), by listener, server name and source (file or acme:<domain>).', labelNames: ['listener', 'name', 'source'], registers,
      collect() {
        this.reset();
        const now = Date.now();
        for (const l of sources.tls?.() ?? []) for (const c of l.certificates) for (const name of c.names.length > 0 ? c.names : ['']) this.set({ listener: l.listener, name, source: c.source }, Math.round((c.notAfter - now) / 1000));
      },
    });
    // Handshake totals are kept by the listeners; the counters add what is new since the last scrape.
    const tlsCounter = (name: string, help: string, label: 'version' | 'reason', field: 'handshakes' | 'failures'): void =>
      runningTotals(registers, name, help, ['listener', label], () => (sources.tls?.() ?? []).map((l) => [l.listener, l[field]]));
    new Gauge({
      name: 'lb_http2_sessions', help: 'Open HTTP/2 client sessions (connections), by listener.', labelNames: ['listener'], registers,
      collect() { this.reset(); for (const l of sources.listeners()) if (l.http2 !== undefined) this.set({ listener: l.name }, l.http2.sessions); },
    });
    new Gauge({
      name: 'lb_http2_streams', help: 'HTTP/2 client streams in flight (each one exchange), by listener.', labelNames: ['listener'], registers,
      collect() { this.reset(); for (const l of sources.listeners()) if (l.http2 !== undefined) this.set({ listener: l.name }, l.http2.streams); },
    });
    // Running totals kept by each listener's HTTP/2 side; the counters add what is new since the last scrape.
    const http2Counter = (name: string, help: string, label: string, field: 'goawaySent' | 'goawayReceived' | 'glitches'): void =>
      runningTotals(registers, name, help, ['listener', label], () => sources.listeners().flatMap((l) => (l.http2 === undefined ? [] : [[l.name, l.http2[field]] as [string, Iterable<[string, number]>]])));
    http2Counter('lb_http2_goaway_sent_total', 'GOAWAY frames sent to HTTP/2 clients, by listener and error code (NO_ERROR: idle or shutdown; ENHANCE_YOUR_CALM: an abuse limit).', 'code', 'goawaySent');
    http2Counter('lb_http2_goaway_received_total', 'GOAWAY frames received from HTTP/2 clients, by listener and error code.', 'code', 'goawayReceived');
    http2Counter(
      'lb_http2_glitches_total',
      'HTTP/2 client misbehaviour, by listener and kind: rapid_reset and control_flood (past max_resets or max_control_frames: the session was closed), protocol_error (nghttp2 closed the session: CONTINUATION floods, malformed frames), frame_error.',
      'kind',
      'glitches',
    );
    // The HTTP/2 upstream clients keep process-wide totals (every balancer of the process shares them).
    new Gauge({ name: 'lb_http2_upstream_sessions', help: 'Open HTTP/2 sessions to upstreams (h2 and h2c pools), connecting ones included.', registers, collect() { this.set(http2UpstreamStats.sessionsOpen); } });
    new Gauge({ name: 'lb_http2_upstream_streams', help: 'HTTP/2 streams in flight to upstreams.', registers, collect() { this.set(http2UpstreamStats.streamsInFlight); } });
    const upstreamGoawaysSeen = new Map<string, number>();
    new Counter({
      name: 'lb_http2_upstream_goaway_received_total', help: 'GOAWAY frames received from upstreams, by error code (NO_ERROR: a graceful shutdown or idle close).', labelNames: ['code'], registers,
      collect() {
        for (const [code, n] of Object.entries(http2UpstreamStats.goawaysReceived)) {
          this.inc({ code }, Math.max(0, n - (upstreamGoawaysSeen.get(code) ?? 0)));
          upstreamGoawaysSeen.set(code, n);
        }
      },
    });
    const upstreamTotal = (name: string, help: string, field: 'unprocessedStreams' | 'pingTimeouts'): void => {
      let seen = 0;
      new Counter({ name, help, registers, collect() { this.inc(Math.max(0, http2UpstreamStats[field] - seen)); seen = http2UpstreamStats[field]; } });
    };
    upstreamTotal('lb_http2_upstream_unprocessed_streams_total', 'Streams an upstream did not process (REFUSED_STREAM, or above the last stream of its GOAWAY): sent again, any method.', 'unprocessedStreams');
    upstreamTotal('lb_http2_upstream_ping_timeouts_total', 'HTTP/2 upstream sessions closed because a keepalive PING went unanswered past ping_timeout.', 'pingTimeouts');
    tlsCounter('lb_tls_handshakes_total', 'TLS handshakes completed on https listeners, by listener and TLS version.', 'version', 'handshakes');
    tlsCounter('lb_tls_handshake_failures_total', 'TLS connections that failed or were refused before or during the handshake, by listener and reason (timeout, not_tls, unknown_name, no_shared_cipher, client_certificate, ...).', 'reason', 'failures');
    let droppedSeen = 0;
    new Counter({
      name: 'lb_access_log_dropped_total', help: 'Access-log lines dropped because the destination did not keep up (more than 8 buffers waiting) or a write failed.', registers,
      collect() {
        const dropped = sources.accessLogDropped?.() ?? 0;
        this.inc(Math.max(0, dropped - droppedSeen));
        droppedSeen = dropped;
      },
    });
    listenerCounter('lb_client_connections_refused_total', 'Client connections closed at accept by the firewall or a connection limit, by listener.', 'refused');
    listenerCounter('lb_malformed_requests_total', 'Requests the HTTP parser rejected (400, 408, 431, ...) before they could be routed, by listener.', 'malformed');
    // Rate-limit stores are rebuilt by a reload: these counters add what each store counted since the last scrape.
    const carried = { stores: null as RateLimitStores | null, fallbacks: 0, evictions: 0 };
    const storeDelta = (field: 'fallbacks' | 'evictions'): number => {
      const stores = sources.stores();
      if (carried.stores !== stores) {
        carried.stores = stores;
        carried.fallbacks = 0;
        carried.evictions = 0;
      }
      const delta = stores[field] - carried[field];
      carried[field] = stores[field];
      return Math.max(0, delta);
    };
    new Counter({
      name: 'lb_rate_limit_store_fallbacks_total', help: 'Rate-limit checks answered without Redis because it was down or slow (by the local bucket, or with 503 when on_failure is closed).', registers,
      collect() { this.inc(storeDelta('fallbacks')); },
    });
    new Counter({
      name: 'lb_rate_limit_evictions_total', help: 'Rate-limit buckets evicted from a full memory table (least recently used first).', registers,
      collect() { this.inc(storeDelta('evictions')); },
    });
    new Gauge({
      // Labelled so that it can be absent: an unlabelled gauge always shows (as 0), which would look like Redis down.
      name: 'lb_rate_limit_redis_up', help: '1 while the Redis connection for global rate limits is up, 0 while it is down; absent without Redis limits.', labelNames: ['store'], registers,
      collect() {
        this.reset();
        const status = sources.stores().redisStatus;
        if (status !== 'off') this.set({ store: 'redis' }, status === 'up' ? 1 : 0);
      },
    });

    const openTunnels = this.openTunnels;
    new Gauge({
      name: 'lb_tunnels_open', help: 'Open WebSocket and forward-proxy (CONNECT) tunnels, by backend (a forward destination: pool "(forward)", backend the rule that allowed it).', labelNames: ['pool', 'backend'], registers,
      collect() {
        this.reset();
        eachUpstream((pool, backend) => this.set({ pool, backend }, 0));
        for (const ctx of openTunnels.keys()) this.inc({ pool: ctx.pool?.name ?? 'none', backend: backendLabel(ctx, ctx.upstream) });
      },
    });
    this.tunnelsOpened = new Counter({ name: 'lb_tunnels_opened_total', help: 'WebSocket tunnels opened (a 101 relayed), by backend.', labelNames: ['pool', 'backend'], registers });
    this.tunnelsClosed = new Counter({ name: 'lb_tunnels_closed_total', help: `WebSocket tunnels closed, by pool and reason (${tunnelReasons.join(', ')}).`, labelNames: ['pool', 'reason'], registers });
    const addBytes = (ctx: RequestContext, bytesIn: number, bytesOut: number): void => {
      const pool = ctx.pool?.name ?? 'none';
      if (bytesIn > 0) this.tunnelBytes.inc({ pool, direction: 'upstream' }, bytesIn);
      if (bytesOut > 0) this.tunnelBytes.inc({ pool, direction: 'downstream' }, bytesOut);
    };
    this.tunnelBytes = new Counter({
      name: 'lb_tunnel_bytes_total', help: 'Bytes relayed through WebSocket tunnels, by pool and direction (upstream: client to backend; downstream: backend to client); open tunnels count at each scrape.', labelNames: ['pool', 'direction'], registers,
      collect() { openTunnels.collect(addBytes); },
    });
    this.tunnelDuration = new Histogram({ name: 'lb_tunnel_duration_seconds', help: 'How long WebSocket tunnels were open, by pool (observed when they close).', labelNames: ['pool'], buckets: tunnelBuckets, registers });
    const mine = (ctx: RequestContext): boolean => sources.carrier === undefined || ctx.carrier === sources.carrier;
    this.on(tunnelOpen, (m) => {
      const { ctx } = m as TunnelEvent;
      if (!mine(ctx)) return;
      openTunnels.open(ctx);
      this.tunnelsOpened.inc({ pool: ctx.pool?.name ?? 'none', backend: backendLabel(ctx, ctx.upstream) });
    });
    this.on(tunnelClose, (m) => {
      const { ctx, reason } = m as TunnelEvent;
      if (!openTunnels.close(ctx, addBytes)) return;
      const pool = ctx.pool?.name ?? 'none';
      this.tunnelsClosed.inc({ pool, reason: reason !== undefined && tunnelReasons.includes(reason) ? reason : 'error' });
      this.tunnelDuration.observe({ pool }, (performance.now() - ctx.start) / 1000);
    });
    this.tcpMetrics(sources, registers);
    this.forwardMetrics(registers, mine);

    this.on(requestEnd, (m) => {
      if (mine((m as RequestEndEvent).ctx)) this.onEnd(m as RequestEndEvent);
    });
    // Requests by protocol and gRPC statuses: counted into plain maps on the request path, handed to prom-client at scrape time.
    const pendingCounter = (name: string, help: string, labels: [string, string], pending: Map<string, number>): void => {
      new Counter({
        name, help, labelNames: labels, registers,
        collect() {
          for (const [key, n] of pending) {
            if (n === 0) continue;
            const [a, b] = key.split('\0');
            this.inc({ [labels[0]]: a, [labels[1]]: b }, n);
            pending.set(key, 0);
          }
        },
      });
    };
    pendingCounter('lb_requests_by_protocol_total', 'Requests answered, by listener and client protocol (h1, h2, grpc: a gRPC or gRPC-Web call, whatever the protocol under it).', ['listener', 'protocol'], this.byProtocol);
    pendingCounter(
      'lb_grpc_responses_total',
      'gRPC calls answered, by pool and grpc-status name (the upstream\'s, or Fulcrum\'s own: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ...; "none" when the call ended without one).',
      ['pool', 'code'],
      this.grpcCodes,
    );
    this.on(requestRetry, (m) => {
      const { ctx, upstream } = m as RequestRetryEvent;
      if (!mine(ctx)) return;
      const pool = ctx.pool?.name ?? 'none';
      const backend = backendLabel(ctx, upstream);
      this.retriedSeries.add(`${pool}\n${backend}`);
      this.retries.inc({ pool, backend });
    });
    this.on(upstreamError, (m) => {
      const { ctx, upstream, error } = m as UpstreamErrorEvent;
      if (!mine(ctx)) return;
      const code = error instanceof FulcrumError && knownCodes.has(error.code) ? error.code : 'other';
      this.attemptFailures.inc({ pool: ctx.pool?.name ?? 'none', backend: backendLabel(ctx, upstream), code });
    });
    this.on(upstreamState, (m) => {
      const c = m as UpstreamStateEvent;
      // Upstream objects are this balancer's when one of its pools holds them (state changes are rare: a scan is fine).
      if (sources.carrier !== undefined && ![...sources.pools().values()].some((p) => p.upstreams.includes(c.upstream as Pool['upstreams'][number]))) return;
      this.stateChanges.inc({ pool: c.pool, backend: c.upstream.id, field: c.field, to: String(c.to), cause: causeOf(c.field, c.to, c.reason) });
      if (c.field === 'ejected' && c.to === true) {
        this.ejectedSeries.add(`${c.pool}\n${c.upstream.id}`);
        this.ejections.inc({ pool: c.pool, backend: c.upstream.id });
      }
    });
    this.on(configReload, (m) => {
      const e = m as ConfigReloadEvent;
      this.reloads.inc({ result: e.ok ? 'success' : 'failure', source: e.source });
      this.lastReloadOk.set(e.ok ? 1 : 0);
      if (e.ok) this.lastReloadTime.set(Date.now() / 1000);
    });
  }

  /**
   * TCP connections of `protocol: tcp` listeners (this balancer's only: `sources.tcpCarrier`),
   * PROXY-protocol intake and TLS-passthrough routing. Bytes of open connections count at each
   * scrape, like tunnels'.
   */
  private tcpMetrics(sources: MetricsSources, registers: Registry[]): void {
    const openTcp = this.openTcp;
    const mine = (c: TcpConnectionEvent): boolean => sources.tcpCarrier === undefined || c.carrier === sources.tcpCarrier;
    new Gauge({
      name: 'lb_tcp_connections_open', help: 'Open TCP connections (connecting ones included), by backend; every backend of a tcp pool shows, at 0 without connections.', labelNames: ['pool', 'backend'], registers,
      collect() {
        this.reset();
        for (const p of sources.pools().values()) if (p.settings.protocol === 'tcp') for (const u of p.upstreams) this.set({ pool: p.name, backend: u.id }, 0);
        // Counted from the connections rather than the pools: a removed backend's connections still open in their grace period show too.
        for (const c of openTcp.keys()) if (c.upstream !== null) this.inc({ pool: c.pool.name, backend: c.upstream.id });
      },
    });
    const addBytes = (c: TcpConnectionEvent, bytesIn: number, bytesOut: number): void => {
      const backend = c.upstream?.id ?? 'none';
      if (bytesIn > 0) bytes.inc({ pool: c.pool.name, backend, direction: 'in' }, bytesIn);
      if (bytesOut > 0) bytes.inc({ pool: c.pool.name, backend, direction: 'out' }, bytesOut);
    };
    const bytes = new Counter({
      name: 'lb_tcp_bytes_total', help: 'Bytes relayed through TCP connections, by backend and direction (in: client to backend; out: backend to client); open connections count at each scrape.', labelNames: ['pool', 'backend', 'direction'], registers,
      collect() { openTcp.collect(addBytes); },
    });
    const opened = new Counter({ name: 'lb_tcp_connections_total', help: 'TCP connections accepted and routed to a pool, by listener and pool.', labelNames: ['listener', 'pool'], registers });
    const closed = new Counter({ name: 'lb_tcp_connections_closed_total', help: `TCP connections closed, by listener, the pool that served them and reason (${tcpCloseReasons.join(', ')}).`, labelNames: ['listener', 'pool', 'reason'], registers });
    const duration = new Histogram({ name: 'lb_tcp_connection_duration_seconds', help: 'How long TCP connections were open, from accept to close, by listener and pool (observed when they close).', labelNames: ['listener', 'pool'], buckets: tcpBuckets, registers });
    const connectFailures = new Counter({ name: 'lb_tcp_connect_failures_total', help: 'Connects to TCP backends that failed (refused, timed out, unreachable), by backend and error code; another backend is tried while retry.max_attempts allows.', labelNames: ['pool', 'backend', 'code'], registers });
    this.on(tcpOpen, (m) => {
      const c = m as TcpConnectionEvent;
      if (!mine(c)) return;
      openTcp.open(c);
      opened.inc({ listener: c.listener, pool: c.pool.name });
    });
    this.on(tcpClose, (m) => {
      const c = m as TcpConnectionEvent;
      if (!openTcp.close(c, addBytes)) return;
      const reason = c.reason !== null && tcpCloseReasons.includes(c.reason) ? c.reason : 'other';
      closed.inc({ listener: c.listener, pool: c.pool.name, reason });
      duration.observe({ listener: c.listener, pool: c.pool.name }, c.durationMs / 1000);
    });
    // TCP connects have no request, so no fulcrum:upstream:error (lb_backend_attempt_failures_total); they
    // publish upstream results only. A failure of an upstream of one of this balancer's tcp pools is one.
    this.on(upstreamResult, (m) => {
      const { upstream, failure } = m as UpstreamResultEvent;
      if (failure === null) return;
      for (const p of sources.pools().values()) {
        if (p.settings.protocol !== 'tcp' || !p.upstreams.includes(upstream as Pool['upstreams'][number])) continue;
        connectFailures.inc({ pool: p.name, backend: upstream.id, code: knownCodes.has(failure.code) ? failure.code : 'other' });
        return;
      }
    });

    const tcpListeners = (): TcpListenerMetricsSource[] => sources.tcpListeners?.() ?? [];
    const gates = (): { name: string; gate: ProxyProtocolCounts }[] => {
      const all: { name: string; gate: ProxyProtocolCounts }[] = [];
      for (const l of sources.listeners()) if (l.proxyProtocol !== undefined) all.push({ name: l.name, gate: l.proxyProtocol });
      for (const l of tcpListeners()) all.push({ name: l.name, gate: l.proxyProtocol });
      return all;
    };
    runningTotals(registers, 'lb_proxy_protocol_refused_total', 'Connections closed for their PROXY protocol header, by listener and reason (malformed, too_large, timeout, closed, unsupported; untrusted: a header from a peer not in proxy_protocol.trusted).', ['listener', 'reason'], () =>
      gates().map((l) => [l.name, l.gate.refused]),
    );
    // Listeners that accept the PROXY protocol show both versions from the first scrape, at 0.
    runningTotals(registers, 'lb_proxy_protocol_accepted_total', 'PROXY protocol headers accepted from trusted balancers, by listener and version (v1, v2).', ['listener', 'version'], () =>
      gates().flatMap((l) => (l.gate.enabled === false && l.gate.accepted.v1 + l.gate.accepted.v2 === 0 ? [] : [[l.name, Object.entries(l.gate.accepted)]])),
    );
    runningTotals(registers, 'lb_tls_passthrough_refused_total', 'TLS-passthrough connections closed before a pool took them, by listener and reason (timeout, not_tls, malformed, no_route, closed).', ['listener', 'reason'], () =>
      tcpListeners().map((l) => [l.name, l.passthroughRefused]),
    );
    runningTotals(registers, 'lb_tls_passthrough_routed_total', 'TLS-passthrough connections routed by server name and ALPN (or to the default pool), by listener and pool.', ['listener', 'pool'], () =>
      tcpListeners().map((l) => [l.name, l.passthroughRouted]),
    );
  }

  /**
   * The forward proxy's decisions, fed by `fulcrum:forward:decision`: every label value is from a
   * fixed set or the configuration (listener and rule names), never the destination a client named.
   */
  private forwardMetrics(registers: Registry[], mine: (ctx: RequestContext) => boolean): void {
    const requests = new Counter({
      name: 'lb_forward_proxy_requests_total',
      help: 'Forward-proxy requests whose destination was decided (or whose credentials were refused), by listener, method_kind (absolute, connect, route), decision (allowed, denied) and rule (the configured rule that decided; "none": no rule matched, or refused credentials).',
      labelNames: ['listener', 'method_kind', 'decision', 'rule'],
      registers,
    });
    const denied = new Counter({
      name: 'lb_forward_proxy_denied_total',
      help: 'Forward-proxy requests refused, by listener and reason (no_rule, denied_by_rule, special_address, port: 403; bad_host: 400; resolve_failed: 502; auth: 407).',
      labelNames: ['listener', 'reason'],
      registers,
    });
    this.on(forwardDecision, (m) => {
      const { ctx } = m as ForwardDecisionEvent;
      const f = ctx.forward;
      if (f === null || f.decision === null || !mine(ctx)) return;
      requests.inc({ listener: ctx.listener, method_kind: f.kind, decision: f.decision, rule: f.rule ?? 'none' });
      if (f.decision === 'denied') denied.inc({ listener: ctx.listener, reason: f.reason ?? 'none' });
    });
  }

  /** The exposition text and its content type. */
  async scrape(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  /** Unsubscribes from every channel. */
  close(): void {
    for (const [channel, f] of this.subscriptions) channel.unsubscribe(f);
    this.subscriptions.length = 0;
  }

  private on(channel: { subscribe(f: (m: unknown) => void): void; unsubscribe(f: (m: unknown) => void): unknown }, f: (m: unknown) => void): void {
    channel.subscribe(f);
    this.subscriptions.push([channel, f]);
  }

  private onEnd({ ctx }: RequestEndEvent): void {
    const poolName = ctx.pool?.name ?? 'none';
    let s: Series | undefined;
    // A destination of the forward proxy is reached under several rules: its series is by rule, looked up by name.
    if (ctx.forward !== null) s = this.seriesFor(null, poolName, backendLabel(ctx, ctx.upstream));
    else {
      const key: object = ctx.upstream ?? ctx.pool ?? this.noPool;
      s = this.byObject.get(key);
      if (s === undefined || s.pool !== poolName) s = this.seriesFor(key, poolName, ctx.upstream?.id ?? 'none');
    }
    const m = methodIndex.get(ctx.req.method ?? '') ?? otherMethod;
    // 0 means nothing was sent (the client left first): counted as 499, the usual "client closed".
    const code = m * 1000 + (ctx.status > 0 ? ctx.status % 1000 : 499);
    s.pending.set(code, (s.pending.get(code) ?? 0) + 1);
    if (ctx.kind === 'tunnel') {
      // A tunnel's life is in lb_tunnel_duration_seconds: it would swamp the request latencies.
      this.afterEnd(ctx);
      return;
    }
    const seconds = ctx.duration / 1000;
    let i = 0;
    while (i < durationBuckets.length && seconds > durationBuckets[i]) i++;
    s.buckets[i]++;
    s.sum += seconds;
    s.count++;
    this.afterEnd(ctx);
  }

  /** Header drops, error codes, protocol and gRPC status of a finished exchange. */
  private afterEnd(ctx: RequestContext): void {
    const protocol = ctx.grpc ? 'grpc' : ctx.downstream.protocol;
    const pk = ctx.listener + '\0' + protocol;
    this.byProtocol.set(pk, (this.byProtocol.get(pk) ?? 0) + 1);
    if (ctx.grpc) {
      const gk = (ctx.pool?.name ?? 'none') + '\0' + (grpcStatusNames[ctx.grpcStatus] ?? (ctx.grpcStatus < 0 ? 'none' : 'other'));
      this.grpcCodes.set(gk, (this.grpcCodes.get(gk) ?? 0) + 1);
    }
    if (ctx.droppedHeaders !== null) this.headersDropped.inc({ listener: ctx.listener, reason: 'underscore' }, ctx.droppedHeaders.length);
    const error = ctx.error;
    if (error !== null) {
      this.refusals.inc({ code: knownCodes.has(error.code) ? error.code : 'other' });
      if (error.code === ErrorCode.RateLimited) this.rateLimited.inc({ route: ctx.route?.name ?? 'none' });
    }
  }

  /** The series of (pool, backend), made if new; cached for `key` (an upstream or pool object) unless null. */
  private seriesFor(key: object | null, pool: string, backend: string): Series {
    const name = `${pool}\n${backend}`;
    let s = this.series.get(name);
    if (s === undefined) {
      s = new Series(pool, backend);
      this.series.set(name, s);
    }
    // An upstream reached through a backup pool has a second pool name: that one is not cached.
    if (key !== null && !this.byObject.has(key)) this.byObject.set(key, s);
    return s;
  }
}
