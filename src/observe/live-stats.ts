/**
 * Live numbers for the dashboard: per upstream requests per second, error rate and p50/p99
 * latency, sampled once a second from `fulcrum:request:end`. Prometheus gets its own cumulative
 * series (metrics.ts); this keeps only the last few seconds, in fixed arrays, so a dashboard
 * never costs more than a counter bump per request. Open WebSocket tunnels are counted from
 * `fulcrum:tunnel:open` and `fulcrum:tunnel:close`, off the request path; TCP connections'
 * bytes per second from `fulcrum:tcp:open` and `fulcrum:tcp:close` and, while they are open,
 * at each tick.
 */
import { requestEnd, tcpClose, tcpOpen, tunnelClose, tunnelOpen, type RequestEndEvent, type TcpConnectionEvent, type TunnelEvent } from '../core/events.ts';
import { OpenBytes } from './open-bytes.ts';
import type { RequestContext } from '../core/context.ts';
import { ErrorCode } from '../errors.ts';
import type { Pool } from '../upstream/pool.ts';
import type { Upstream } from '../upstream/upstream.ts';
import type { LiveBackend, LiveSample } from '../admin/types.ts';
import { upstreamState } from '../admin/status.ts';

/** Latency buckets: bucket i holds durations up to 0.05 ms x 1.25^i (64 buckets reach about 63 s). */
const bucketCount = 64;
const base = 0.05;
const logStep = Math.log(1.25);
/** Percentiles look at this many one-second slots, so a quiet second still has a p99. */
const windowSlots = 5;

function bucketOf(ms: number): number {
  if (ms <= base) return 0;
  const i = Math.ceil(Math.log(ms / base) / logStep);
  return i >= bucketCount ? bucketCount - 1 : i;
}

function bucketUpper(i: number): number {
  return base * Math.pow(1.25, i);
}

/** Counts of one second and the latency slots of the last few. */
class Window {
  requests = 0;
  errors = 0;
  readonly slots: Uint32Array[] = Array.from({ length: windowSlots }, () => new Uint32Array(bucketCount));
  slot = 0;

  record(ms: number, failed: boolean): void {
    this.requests++;
    if (failed) this.errors++;
    this.slots[this.slot][bucketOf(ms)]++;
  }

  /** A request counted without its latency (a tunnel: its life is no response time). */
  count(failed: boolean): void {
    this.requests++;
    if (failed) this.errors++;
  }

  /** The q-quantile (0..1) over the window, as the upper bound of its bucket; null without data. */
  quantile(q: number): number | null {
    let total = 0;
    for (const s of this.slots) for (let i = 0; i < bucketCount; i++) total += s[i];
    if (total === 0) return null;
    const rank = Math.ceil(q * total);
    let seen = 0;
    for (let i = 0; i < bucketCount; i++) {
      for (const s of this.slots) seen += s[i];
      if (seen >= rank) return Math.round(bucketUpper(i) * 100) / 100;
    }
    return null;
  }

  /** Ends a second: counts restart, the oldest latency slot is cleared for the next one. */
  rotate(): void {
    this.requests = 0;
    this.errors = 0;
    this.slot = (this.slot + 1) % windowSlots;
    this.slots[this.slot].fill(0);
  }
}

/** Options for tests. */
export interface LiveStatsOptions {
  /** Tick length in ms (default 1000). */
  interval?: number;
  /** Samples kept for a dashboard that connects later (default 300: five minutes). */
  history?: number;
  /** The balancer's TCP proxy: only its connections count (channels are process-wide); absent: every one. */
  tcpCarrier?: object;
}

/** Samples the live view once per interval and hands each sample to listeners. */
export class LiveStats {
  private readonly pools: () => ReadonlyMap<string, Pool>;
  private readonly windows = new Map<Upstream, Window>();
  private readonly total = new Window();
  private rateLimited = 0;
  private rateLimitedTotal = 0;
  private requestsTotal = 0;
  private readonly interval: number;
  private readonly keep: number;
  private readonly samples: LiveSample[] = [];
  private readonly listeners = new Set<(sample: LiveSample) => void>();
  private timer: NodeJS.Timeout | null = null;
  private last = 0;
  private readonly onEnd = (message: unknown): void => this.record((message as RequestEndEvent).ctx);
  /** Open tunnels of this balancer's pools, and how many each upstream has (channels are process-wide). */
  private readonly tunnels = new Set<RequestContext>();
  private readonly tunnelsByUpstream = new Map<Upstream, number>();
  private readonly onTunnelOpen = (message: unknown): void => {
    const { ctx } = message as TunnelEvent;
    const pool = ctx.pool === null ? undefined : this.pools().get(ctx.pool.name);
    if (pool === undefined || pool !== ctx.pool || ctx.upstream === null) return;
    const u = ctx.upstream as Upstream;
    this.tunnels.add(ctx);
    this.tunnelsByUpstream.set(u, (this.tunnelsByUpstream.get(u) ?? 0) + 1);
  };
  private readonly onTunnelClose = (message: unknown): void => {
    const { ctx } = message as TunnelEvent;
    if (!this.tunnels.delete(ctx)) return;
    const u = ctx.upstream as Upstream;
    const left = (this.tunnelsByUpstream.get(u) ?? 1) - 1;
    if (left > 0) this.tunnelsByUpstream.set(u, left);
    else this.tunnelsByUpstream.delete(u);
  };

  private readonly tcpCarrier: object | null;
  /** Open TCP connections, and the bytes each upstream's moved this second (closed ones' and open ones' alike). */
  private readonly tcp = new OpenBytes<TcpConnectionEvent>();
  private readonly tcpBytes = new Map<Upstream, { in: number; out: number }>();
  private readonly addTcpBytes = (c: TcpConnectionEvent, bytesIn: number, bytesOut: number): void => {
    const u = c.upstream as Upstream | null;
    if (u === null) return;
    const b = this.tcpBytes.get(u);
    if (b === undefined) this.tcpBytes.set(u, { in: bytesIn, out: bytesOut });
    else {
      b.in += bytesIn;
      b.out += bytesOut;
    }
  };
  private readonly onTcpOpen = (message: unknown): void => {
    const c = message as TcpConnectionEvent;
    if (this.tcpCarrier === null || c.carrier === this.tcpCarrier) this.tcp.open(c);
  };
  private readonly onTcpClose = (message: unknown): void => void this.tcp.close(message as TcpConnectionEvent, this.addTcpBytes);

  constructor(pools: () => ReadonlyMap<string, Pool>, options: LiveStatsOptions = {}) {
    this.pools = pools;
    this.tcpCarrier = options.tcpCarrier ?? null;
    this.interval = options.interval ?? 1000;
    this.keep = options.history ?? 300;
  }

  start(): void {
    if (this.timer) return;
    requestEnd.subscribe(this.onEnd);
    tunnelOpen.subscribe(this.onTunnelOpen);
    tunnelClose.subscribe(this.onTunnelClose);
    tcpOpen.subscribe(this.onTcpOpen);
    tcpClose.subscribe(this.onTcpClose);
    this.last = performance.now();
    this.timer = setInterval(() => this.tick(), this.interval);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    requestEnd.unsubscribe(this.onEnd);
    tunnelOpen.unsubscribe(this.onTunnelOpen);
    tunnelClose.unsubscribe(this.onTunnelClose);
    tcpOpen.unsubscribe(this.onTcpOpen);
    tcpClose.unsubscribe(this.onTcpClose);
    this.tcp.clear();
    this.tcpBytes.clear();
    this.tunnels.clear();
    this.tunnelsByUpstream.clear();
    this.listeners.clear();
  }

  /** The samples kept so far, oldest first. */
  history(): readonly LiveSample[] {
    return this.samples;
  }

  /** Calls `listener` with every new sample until the returned function is called. */
  subscribe(listener: (sample: LiveSample) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private record(ctx: RequestEndEvent['ctx']): void {
    this.requestsTotal++;
    if (ctx.error !== null && ctx.error.code === ErrorCode.RateLimited) {
      this.rateLimited++;
      this.rateLimitedTotal++;
    }
    const failed = ctx.status >= 500 || (ctx.error !== null && ctx.error.source === 'upstream');
    // A tunnel ends after minutes or hours: counted as one request (its 101), kept out of the latencies.
    const tunnel = ctx.kind === 'tunnel';
    if (tunnel) this.total.count(failed);
    else this.total.record(ctx.duration, failed);
    // The upstreams this balancer's pools hold (the context names them only as references).
    const u = ctx.upstream as Upstream | null;
    if (u === null) return;
    let w = this.windows.get(u);
    if (w === undefined) {
      w = new Window();
      this.windows.set(u, w);
    }
    if (tunnel) w.count(failed);
    else w.record(ctx.duration, failed);
  }

  /** Builds one sample from the second that just ended, then starts the next. */
  tick(): LiveSample {
    const now = performance.now();
    const seconds = Math.max(0.001, (now - this.last) / 1000);
    this.last = now;
    const rate = (n: number): number => Math.round((n / seconds) * 10) / 10;
    this.tcp.collect(this.addTcpBytes);
    const backends: LiveBackend[] = [];
    const present = new Set<Upstream>();
    let inFlight = 0;
    for (const pool of this.pools().values()) {
      const tcp = pool.settings.protocol === 'tcp';
      for (const u of pool.upstreams) {
        present.add(u);
        inFlight += u.inFlight;
        const w = this.windows.get(u);
        const bytes = tcp ? (this.tcpBytes.get(u) ?? { in: 0, out: 0 }) : null;
        backends.push({
          pool: pool.name,
          id: u.id,
          rps: w ? rate(w.requests) : 0,
          error_rate: w && w.requests > 0 ? Math.round((w.errors / w.requests) * 1000) / 1000 : 0,
          p50_ms: w ? w.quantile(0.5) : null,
          p99_ms: w ? w.quantile(0.99) : null,
          in_flight: u.inFlight,
          tunnels_open: this.tunnelsByUpstream.get(u) ?? 0,
          // A tcp pool's upstream counts its open connections in flight (src/proxy/tcp-proxy.ts).
          ...(bytes === null ? {} : { open_connections: u.inFlight, bytes_in_per_s: Math.round(bytes.in / seconds), bytes_out_per_s: Math.round(bytes.out / seconds) }),
          ...upstreamState(u),
        });
      }
    }
    const t = this.total;
    const sample: LiveSample = {
      t: Date.now(),
      rps: rate(t.requests),
      error_rate: t.requests > 0 ? Math.round((t.errors / t.requests) * 1000) / 1000 : 0,
      p50_ms: t.quantile(0.5),
      p99_ms: t.quantile(0.99),
      rate_limited_per_s: rate(this.rateLimited),
      rate_limited_total: this.rateLimitedTotal,
      requests_total: this.requestsTotal,
      in_flight: inFlight,
      tunnels_open: this.tunnels.size,
      backends,
    };
    t.rotate();
    this.rateLimited = 0;
    this.tcpBytes.clear();
    for (const [u, w] of this.windows) {
      // Upstreams removed by a reload leave once their last request has been counted.
      if (!present.has(u) && u.inFlight === 0) this.windows.delete(u);
      else w.rotate();
    }
    this.samples.push(sample);
    if (this.samples.length > this.keep) this.samples.shift();
    for (const listener of this.listeners) listener(sample);
    return sample;
  }
}
