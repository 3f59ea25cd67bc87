/**
 * Passive health for one pool, fed by `fulcrum:upstream:result` (the proxy never calls it):
 * - outlier ejection (Envoy's outlier_detection): N consecutive gateway failures eject an
 *   upstream for base time x ejection count, never more than max_ejection_percent of the pool;
 * - a refused connection ejects at once (nginx's `max_fails=1`), whatever max_ejection_percent
 *   (nothing listens there: it is no guess), until a TCP connect probe (after 250 ms, then
 *   doubling up to 5 s) or an active check passes; panic mode is the guard if too many go;
 * - an error-rate circuit breaker per upstream: closed -> open when the failed share of the last
 *   `window` passes `error_rate`; open -> half-open after `open_time`; half-open -> closed after
 *   `half_open_requests` successes, or back to open on one failure.
 */
import net from 'node:net';
import { upstreamResult, type UpstreamResultEvent } from '../core/events.ts';
import { ErrorCode } from '../errors.ts';
import type { PoolSettings } from '../config/schema.ts';
import type { Upstream } from '../upstream/upstream.ts';
import { formatDuration } from '../config/duration.ts';

/** Statuses an upstream answers when it is itself failing (a gateway failure, not the client's). */
const gatewayStatuses = new Set([502, 503, 504]);
const buckets = 10;
/** Connect probes of a refused upstream: the first wait, and the longest once it doubled. */
const firstProbe = 250;
const slowestProbe = 5000;

/** Per-upstream counters. */
class UpstreamRecord {
  consecutiveFailures = 0;
  /** When the last ejection ended (for forgetting old ejections). */
  returnedAt = 0;
  ejectTimer: NodeJS.Timeout | null = null;
  circuitTimer: NodeJS.Timeout | null = null;
  /** Error-rate window: `buckets` slots of window/buckets each, rotated by time. */
  total = new Uint32Array(buckets);
  failed = new Uint32Array(buckets);
  slot = 0;
  slotStart = 0;
  halfOpenSuccesses = 0;
  probeTimer: NodeJS.Timeout | null = null;
  probeSocket: net.Socket | null = null;
}

/** Outlier ejection and circuit breaking for the upstreams of one pool. */
export class PassiveHealth {
  private readonly settings: PoolSettings;
  private readonly upstreams: readonly Upstream[];
  private readonly records = new Map<Upstream, UpstreamRecord>();
  private readonly onResult = (message: unknown): void => this.record(message as UpstreamResultEvent<Upstream>);
  private started = false;

  constructor(settings: PoolSettings, upstreams: readonly Upstream[]) {
    this.settings = settings;
    this.upstreams = upstreams;
    for (const u of upstreams) {
      const r = new UpstreamRecord();
      // Ejections carried over a reload are forgiven on the usual clock, from now.
      if (u.ejections > 0 && !u.ejected) r.returnedAt = Date.now();
      this.records.set(u, r);
    }
  }

  start(): void {
    if (this.started) return;
    this.started = true;
    upstreamResult.subscribe(this.onResult);
    // State carried over a reload keeps its clock: an ejection ends, an open circuit half-opens, when it would have.
    for (const [u, r] of this.records) {
      if (u.ejected && u.refused) {
        if (this.settings.outlier_detection.enabled) this.scheduleProbe(u, r, 0);
        else this.readmit(u, r, 'outlier detection turned off by a reload');
      } else if (u.ejected) this.scheduleReturn(u, r, Math.max(0, u.ejectedUntil - Date.now()), 'ejection time over (kept across a reload)');
      // A breaker turned off by a reload lets everything through again; otherwise nothing would close it.
      if (!this.settings.circuit_breaker.enabled && u.circuit !== 'closed') u.setCircuit('closed', 'circuit breaker turned off by a reload');
      else if (u.circuit === 'open') this.scheduleHalfOpen(u, r, Math.max(0, u.circuitOpenUntil - Date.now()));
    }
  }

  stop(): void {
    this.started = false;
    upstreamResult.unsubscribe(this.onResult);
    for (const r of this.records.values()) {
      if (r.ejectTimer) clearTimeout(r.ejectTimer);
      if (r.circuitTimer) clearTimeout(r.circuitTimer);
      this.stopProbe(r);
    }
  }

  /** An active check passed: an upstream out for a refused connection is back (its port answers again). */
  checkPassed(u: Upstream): void {
    const r = this.records.get(u);
    if (r !== undefined && this.started && u.refused) this.readmit(u, r, 'an active health check passed');
  }

  /** One attempt's outcome. Public for tests; normally reached through the channel. */
  record(event: UpstreamResultEvent<Upstream>): void {
    const r = this.records.get(event.upstream);
    if (r === undefined) return; // another pool's upstream
    const u = event.upstream;
    const failed = event.failure !== null ? event.failure.source === 'upstream' : gatewayStatuses.has(event.status);
    // A client that left or sent garbage says nothing about the upstream.
    if (event.failure !== null && event.failure.source !== 'upstream') return;
    if (event.failure?.code === ErrorCode.ConnectRefused && this.settings.outlier_detection.enabled) this.refuse(u, r, event.failure.message);
    this.outlier(u, r, failed, event);
    if (this.settings.circuit_breaker.enabled) this.breaker(u, r, failed);
  }

  private outlier(u: Upstream, r: UpstreamRecord, failed: boolean, event: UpstreamResultEvent<Upstream>): void {
    const o = this.settings.outlier_detection;
    if (!o.enabled) return;
    if (!failed) {
      r.consecutiveFailures = 0;
      // A full base ejection time back without trouble: earlier ejections are forgiven.
      if (u.ejections > 0 && r.returnedAt > 0 && Date.now() - r.returnedAt > o.base_ejection_time) u.ejections = 0;
      return;
    }
    r.consecutiveFailures++;
    if (u.ejected || r.consecutiveFailures < o.consecutive_failures) return;
    const ejectedNow = this.upstreams.filter((x) => x.ejected).length;
    const allowed = Math.max(1, Math.floor((this.upstreams.length * o.max_ejection_percent) / 100));
    if (ejectedNow + 1 > allowed) return;
    u.ejections++;
    const time = Math.min(o.base_ejection_time * u.ejections, o.max_ejection_time);
    const what = event.failure ? event.failure.message : `status ${event.status}`;
    r.consecutiveFailures = 0;
    u.ejectedUntil = Date.now() + time;
    u.setEjected(true, `${o.consecutive_failures} consecutive failures, last: ${what}; out for ${formatDuration(time)}`);
    this.scheduleReturn(u, r, time, `ejection time of ${formatDuration(time)} over`);
  }

  /** Out at once after a refused connection, until a connect probe or an active check passes. */
  private refuse(u: Upstream, r: UpstreamRecord, what: string): void {
    if (u.ejected) return;
    r.consecutiveFailures = 0;
    u.refused = true;
    u.ejectedUntil = 0;
    u.setEjected(true, `${what}: nothing took the connection; out until a connect probe or a health check passes`);
    this.scheduleProbe(u, r, firstProbe);
  }

  private readmit(u: Upstream, r: UpstreamRecord, reason: string): void {
    this.stopProbe(r);
    u.refused = false;
    u.setEjected(false, reason);
  }

  /** A TCP connect to the upstream after `delay`; on failure again, twice as late (at most slowestProbe). */
  private scheduleProbe(u: Upstream, r: UpstreamRecord, delay: number): void {
    this.stopProbe(r);
    r.probeTimer = setTimeout(() => {
      r.probeTimer = null;
      const socket = net.connect({ host: u.connectHost, port: u.port });
      r.probeSocket = socket;
      socket.unref();
      socket.setTimeout(Math.min(this.settings.timeouts.connect, 2000));
      const next = Math.min(Math.max(delay * 2, firstProbe), slowestProbe);
      const failed = (): void => {
        if (r.probeSocket !== socket) return;
        r.probeSocket = null;
        socket.destroy();
        if (this.started && u.refused) this.scheduleProbe(u, r, next);
      };
      socket.once('connect', () => {
        if (r.probeSocket !== socket) return;
        r.probeSocket = null;
        socket.destroy();
        if (this.started && u.refused) this.readmit(u, r, 'a connect probe succeeded');
      });
      socket.on('error', failed);
      socket.once('timeout', failed);
    }, delay);
    r.probeTimer.unref();
  }

  private stopProbe(r: UpstreamRecord): void {
    if (r.probeTimer) clearTimeout(r.probeTimer);
    r.probeTimer = null;
    r.probeSocket?.destroy();
    r.probeSocket = null;
  }

  private scheduleReturn(u: Upstream, r: UpstreamRecord, delay: number, reason: string): void {
    if (r.ejectTimer) clearTimeout(r.ejectTimer);
    r.ejectTimer = setTimeout(() => {
      r.ejectTimer = null;
      r.returnedAt = Date.now();
      u.ejectedUntil = 0;
      u.setEjected(false, reason);
    }, delay);
    r.ejectTimer.unref();
  }

  private breaker(u: Upstream, r: UpstreamRecord, failed: boolean): void {
    const c = this.settings.circuit_breaker;
    if (u.circuit === 'half-open') {
      if (failed) return this.open(u, r, 'a probe failed while half-open');
      if (++r.halfOpenSuccesses >= c.half_open_requests) {
        r.total.fill(0);
        r.failed.fill(0);
        u.setCircuit('closed', `${c.half_open_requests} probes succeeded`);
      }
      return;
    }
    if (u.circuit === 'open') return;
    const now = Date.now();
    const width = c.window / buckets;
    if (now - r.slotStart >= width) {
      // Move on, clearing every slot skipped since the last request.
      const steps = Math.min(buckets, Math.floor((now - r.slotStart) / width));
      for (let i = 0; i < steps; i++) {
        r.slot = (r.slot + 1) % buckets;
        r.total[r.slot] = 0;
        r.failed[r.slot] = 0;
      }
      r.slotStart = steps === buckets ? now : r.slotStart + steps * width;
    }
    r.total[r.slot]++;
    if (failed) r.failed[r.slot]++;
    if (!failed) return;
    let total = 0;
    let bad = 0;
    for (let i = 0; i < buckets; i++) {
      total += r.total[i];
      bad += r.failed[i];
    }
    if (total >= c.min_requests && bad / total >= c.error_rate) {
      this.open(u, r, `${bad} of ${total} requests failed in ${formatDuration(c.window)}`);
    }
  }

  private open(u: Upstream, r: UpstreamRecord, reason: string): void {
    const c = this.settings.circuit_breaker;
    r.halfOpenSuccesses = 0;
    u.circuitOpenUntil = Date.now() + c.open_time;
    u.setCircuit('open', `${reason}; closed to traffic for ${formatDuration(c.open_time)}`);
    this.scheduleHalfOpen(u, r, c.open_time);
  }

  private scheduleHalfOpen(u: Upstream, r: UpstreamRecord, delay: number): void {
    const c = this.settings.circuit_breaker;
    if (r.circuitTimer) clearTimeout(r.circuitTimer);
    r.circuitTimer = setTimeout(() => {
      r.circuitTimer = null;
      u.setCircuit('half-open', `open for ${formatDuration(c.open_time)}; letting ${c.half_open_requests} probe requests through`);
    }, delay);
    r.circuitTimer.unref();
  }
}
