/**
 * The TCP proxy: each client connection of a `protocol: tcp` listener is one exchange with one
 * upstream of a tcp pool, its bytes relayed both ways as they come, never parsed.
 *   admitted (firewall, limits, PROXY header, SNI route) -> pick -> connect (failover) -> relay -> close
 *
 * - Pick: the pool's policy over its available upstreams, as for HTTP (panic mode and the backup
 *   pool included); an upstream's `inFlight` counts its open connections, so least-connections
 *   balances by open connections and `max_connections` caps them.
 * - Connect: `timeouts.connect` per try; a refused or timed-out connect goes to another upstream
 *   (up to `retry.max_attempts` tries), which is safe because nothing of the client's was sent yet.
 *   Connect failures are published as upstream results, so passive ejection sees them.
 * - Relay: backpressure both ways (a side that cannot take more pauses the other), half-close
 *   passed on (a FIN one way, the other way keeps flowing, as HAProxy and nginx's stream module
 *   do), an error or reset on one side resets the other. `timeouts.tunnel_idle` with no byte
 *   either way closes both. One sweep timer per proxy, never one per connection.
 * - Drain, removal and shutdown: a drained, disabled or removed upstream's connections go on for
 *   the grace period, then are closed; a reload that keeps the upstream keeps them.
 */
import net, { type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { tcpClose, tcpOpen, upstreamResult, upstreamState, type TcpConnectionEvent, type UpstreamStateEvent } from '../core/events.ts';
import type { Pool } from '../upstream/pool.ts';
import type { Upstream } from '../upstream/upstream.ts';
import { upstreamFailure } from './status.ts';
import { startsWithProxySignature } from '../listeners/proxy-protocol.ts';
import { proxyHeader } from './upstream-proxy-header.ts';
import type { Logger } from '../observe/logger.ts';

/** Why a TCP connection ended (a label of lb_tcp_connections_closed_total and the access log's `close`). */
export type TcpCloseReason = 'client' | 'upstream' | 'client_error' | 'upstream_error' | 'idle' | 'connect_failed' | 'no_upstream' | 'drained' | 'removed' | 'shutdown';

/** The idle sweep's period bounds: a quarter of the shortest idle timeout, within these. */
const SWEEP_MAX_MS = 1000;
const SWEEP_MIN_MS = 25;

/** Where a client connection came from and what it asked for, as the listener found out. */
export interface TcpClientInfo {
  /** The client's address (after the PROXY protocol, when a trusted balancer sent one). */
  address: string;
  port: number;
  /** The address and port the client connected to (a PROXY header's destination when there was one). */
  localAddress: string;
  localPort: number;
  /** TLS server name read from the ClientHello (TLS passthrough), else null. */
  sni: string | null;
  /** ALPN protocols the ClientHello offered (TLS passthrough), else empty. */
  alpn: readonly string[];
}

/** One relayed connection. */
export class TcpConnection implements TcpConnectionEvent {
  readonly carrier: TcpProxy;
  readonly id: number;
  readonly listener: string;
  readonly client: TcpClientInfo;
  readonly clientSocket: Socket;
  /** The pool that served it (the backup pool when it took over). */
  pool: Pool;
  upstream: Upstream | null = null;
  upstreamSocket: Socket | null = null;
  /** Bytes client to upstream, and upstream to client. */
  bytesIn = 0;
  bytesOut = 0;
  /** `performance.now()` at accept, at connect, at the last byte either way. */
  readonly startedAt: number;
  connectedAt = 0;
  lastActivity: number;
  /** Connect tries (failover included). */
  attempts = 0;
  reason: TcpCloseReason | null = null;
  /** What went wrong, for the log: the last connect failure, or the error that closed it. */
  error: string | null = null;
  /** The upstreams whose connect failed. */
  readonly tried: Upstream[] = [];
  clientEnded = false;
  upstreamEnded = false;
  /** Who sent the first FIN: the side that closed the connection. */
  firstEnd: 'client' | 'upstream' | null = null;
  /** Set for clients that may not send a PROXY header (a listener that accepts it from trusted peers only): the first bytes are checked. */
  checkProxySignature = false;
  /** While `checkProxySignature`: the client's first bytes so far, a proper prefix of a PROXY signature (at most 11 bytes), held back until they decide. */
  signaturePrefix: Buffer | null = null;
  private closedSides = 0;
  connectTimer: NodeJS.Timeout | null = null;

  constructor(carrier: TcpProxy, id: number, listener: string, client: TcpClientInfo, socket: Socket, pool: Pool, since: number) {
    this.carrier = carrier;
    this.id = id;
    this.listener = listener;
    this.client = client;
    this.clientSocket = socket;
    this.pool = pool;
    this.startedAt = since;
    this.lastActivity = since;
  }

  /** For policies (PickContext): the client address. */
  get clientAddress(): string {
    return this.client.address;
  }

  /** Milliseconds from accept to the end (or to now while open). */
  get durationMs(): number {
    return (this.closedAt || performance.now()) - this.startedAt;
  }

  closedAt = 0;

  /** One side's socket closed; true once both have. */
  sideClosed(): boolean {
    return ++this.closedSides >= 2;
  }
}

/** The TCP exchange core of one balancer: picks, connects, relays, and tracks open connections by upstream. */
export class TcpProxy {
  private readonly logger: Logger | null;
  private nextId = 1;
  /** Open connections (connecting or relaying). */
  private readonly open = new Set<TcpConnection>();
  private readonly byUpstream = new Map<Upstream, Set<TcpConnection>>();
  /** Scheduled closings of a drained or removed upstream's connections. */
  private readonly closing = new Map<Upstream, NodeJS.Timeout>();
  private graceMs = 30_000;
  private sweep: NodeJS.Timeout | null = null;
  private sweepMs = SWEEP_MAX_MS;
  private onEmpty: (() => void) | null = null;
  private shuttingDown = false;
  /** Told of a client refused for sending a PROXY header it may not send (the listener counts it). */
  refusedProxy: ((listener: string) => void) | null = null;
  private readonly onUpstreamState = (message: unknown): void => {
    const c = message as UpstreamStateEvent;
    const u = c.upstream as Upstream;
    if (!this.byUpstream.has(u)) return;
    if ((c.field === 'draining' && c.to === true) || (c.field === 'enabled' && c.to === false)) this.closeLater(u, this.graceMs, 'drained');
    else if ((c.field === 'draining' || c.field === 'enabled') && !u.draining && u.enabled) this.keep(u);
  };

  constructor(logger: Logger | null = null) {
    this.logger = logger;
    upstreamState.subscribe(this.onUpstreamState);
  }

  /** Connections open now (connecting or relaying). */
  get openCount(): number {
    return this.open.size;
  }

  /** The open connections (a snapshot, for /status and the dashboard). */
  connections(): TcpConnection[] {
    return [...this.open];
  }

  /** Open connections to `upstream`. */
  countFor(upstream: Upstream): number {
    return this.byUpstream.get(upstream)?.size ?? 0;
  }

  /**
   * After a runtime was committed: connections to upstreams no pool holds any more close once
   * `graceMs` has passed; those to surviving upstreams go on.
   */
  onCommit(pools: ReadonlyMap<string, { readonly upstreams: readonly Upstream[] }>, graceMs: number): void {
    this.graceMs = graceMs;
    const live = new Set<Upstream>();
    for (const pool of pools.values()) for (const u of pool.upstreams) live.add(u);
    for (const u of this.byUpstream.keys()) {
      if (!live.has(u)) this.closeLater(u, graceMs, 'removed');
      else if (!u.draining && u.enabled) this.keep(u);
    }
  }

  /**
   * Takes an admitted client connection (paused, nothing read but what `prelude` holds: bytes
   * the listener already read, such as the ClientHello, sent upstream first) for `pool`.
   */
  handle(socket: Socket, listener: string, client: TcpClientInfo, pool: Pool, prelude: Buffer | null, since = performance.now(), checkProxySignature = false): void {
    const c = new TcpConnection(this, this.nextId++, listener, client, socket, pool, since);
    c.checkProxySignature = checkProxySignature && prelude === null;
    this.open.add(c);
    // Until the upstream is connected the client stays paused; a reset or close meanwhile ends the connection.
    socket.on('error', (err) => this.sideError(c, err, true));
    socket.once('close', () => this.sideClose(c, true));
    if (prelude !== null && prelude.length > 0) socket.unshift(prelude);
    if (tcpOpen.hasSubscribers) tcpOpen.publish(c);
    this.connect(c);
  }

  /** Picks an upstream (not one that failed this connection) and connects to it. */
  private connect(c: TcpConnection): void {
    if (c.reason !== null) return;
    let pool = c.pool;
    let upstream: Upstream | undefined;
    const tried = c.tried.length === 0 ? null : c.tried;
    if (pool.inPanic()) upstream = pool.pickInPanic(c, tried);
    else upstream = tried === null ? pool.pick(c) : pool.pickExcept(c, tried);
    if (upstream === undefined) {
      upstream = pool.pickBackup(c, tried);
      if (upstream !== undefined) c.pool = pool = pool.backup!;
    }
    if (upstream === undefined) {
      c.error ??= `no available upstream in pool ${pool.name}`;
      return this.end(c, c.tried.length > 0 ? 'connect_failed' : 'no_upstream');
    }
    c.upstream = upstream;
    c.attempts++;
    upstream.inFlight++;
    this.track(c, upstream);
    const socket = net.connect({ host: upstream.connectHost, port: upstream.port, allowHalfOpen: true, noDelay: true });
    c.upstreamSocket = socket;
    const connectMs = pool.settings.timeouts.connect;
    c.connectTimer = setTimeout(() => {
      c.connectTimer = null;
      const err = Object.assign(new Error(`no connection to ${upstream.id} within ${connectMs}ms`), { code: 'ETIMEDOUT' });
      this.connectFailed(c, upstream, socket, err);
    }, connectMs);
    socket.once('connect', () => this.connected(c, upstream, socket));
    socket.on('error', (err) => {
      if (c.connectedAt === 0) this.connectFailed(c, upstream, socket, err);
      else this.sideError(c, err, false);
    });
  }

  /** A connect failed: published for passive health, then another upstream, while tries remain. */
  private connectFailed(c: TcpConnection, upstream: Upstream, socket: Socket, err: Error): void {
    if (c.upstreamSocket !== socket) return;
    if (c.connectTimer !== null) clearTimeout(c.connectTimer);
    c.connectTimer = null;
    socket.destroy();
    c.upstreamSocket = null;
    c.upstream = null;
    upstream.inFlight--;
    upstream.failures++;
    this.untrack(c, upstream);
    const failure = upstreamFailure(err, false);
    if (upstreamResult.hasSubscribers) upstreamResult.publish({ upstream, status: 0, failure });
    c.tried.push(upstream);
    c.error = `${upstream.id}: ${failure.message}`;
    if (c.reason !== null) return;
    if (c.attempts >= c.pool.settings.retry.max_attempts || this.shuttingDown) {
      return this.end(c, 'connect_failed');
    }
    this.logger?.debug({ listener: c.listener, upstream: upstream.id, err: failure.message }, `tcp: connect to ${upstream.id} failed (${failure.message}); trying another upstream`);
    this.connect(c);
  }

  /** Connected: the PROXY header (when the pool sends one) goes first, then bytes flow both ways. */
  private connected(c: TcpConnection, upstream: Upstream, socket: Socket): void {
    if (c.upstreamSocket !== socket || c.reason !== null) return;
    if (c.connectTimer !== null) clearTimeout(c.connectTimer);
    c.connectTimer = null;
    c.connectedAt = performance.now();
    c.lastActivity = c.connectedAt;
    upstream.served++;
    if (upstreamResult.hasSubscribers) upstreamResult.publish({ upstream, status: 0, failure: null });
    socket.once('close', () => this.sideClose(c, false));
    const header = proxyHeaderOf(c);
    if (header !== null) socket.write(header);
    this.relay(c, c.clientSocket, socket, true);
    this.relay(c, socket, c.clientSocket, false);
    this.startSweep(c.pool.settings.timeouts.tunnel_idle);
    c.clientSocket.resume();
  }

  /** One direction: `from`'s bytes to `to`, pausing `from` while `to` is full; `from`'s FIN becomes `to`'s. */
  private relay(c: TcpConnection, from: Socket, to: Socket, fromClient: boolean): void {
    from.on('data', (data: Buffer) => {
      let chunk = data;
      if (fromClient) {
        if (c.checkProxySignature) {
          // Judged on the first bytes together: a header split over segments ("PRO", "XY ...") is still a header.
          const head = c.signaturePrefix === null ? chunk : Buffer.concat([c.signaturePrefix, chunk]);
          const verdict = startsWithProxySignature(head);
          // A PROXY header from a peer that is not trusted to send one: a client posing as a balancer.
          if (verdict === true) {
            c.error = 'a PROXY protocol header from a peer not in proxy_protocol.trusted';
            this.refusedProxy?.(c.listener);
            return this.end(c, 'client_error');
          }
          if (verdict === null) {
            c.signaturePrefix = head;
            c.lastActivity = performance.now();
            return;
          }
          c.checkProxySignature = false;
          c.signaturePrefix = null;
          chunk = head;
        }
        c.bytesIn += chunk.length;
      } else c.bytesOut += chunk.length;
      c.lastActivity = performance.now();
      if (!to.write(chunk)) from.pause();
    });
    to.on('drain', () => from.resume());
    from.once('end', () => {
      if (fromClient) {
        // A FIN after part of a signature: those bytes were no header, they go on before the FIN.
        if (c.signaturePrefix !== null && !to.destroyed) {
          c.bytesIn += c.signaturePrefix.length;
          to.write(c.signaturePrefix);
        }
        c.checkProxySignature = false;
        c.signaturePrefix = null;
        c.clientEnded = true;
      } else c.upstreamEnded = true;
      c.firstEnd ??= fromClient ? 'client' : 'upstream';
      // The other direction keeps flowing (half-close); `to` ends once what was written is out.
      if (!to.destroyed) to.end();
    });
  }

  /** An error on one side: the other side is reset (what the peer did is passed on), both close. */
  private sideError(c: TcpConnection, err: Error, client: boolean): void {
    if (c.reason !== null) return;
    c.error = `${client ? 'client' : 'upstream'}: ${(err as NodeJS.ErrnoException).code ?? err.message}`;
    this.end(c, client ? 'client_error' : 'upstream_error', true);
  }

  /**
   * One side's socket closed. Before the upstream connected, the client's close ends the
   * connection. After, a socket closes cleanly only once its peer's FIN came and ours went out;
   * a close without its FIN (destroyed under us) takes the other side down too.
   */
  private sideClose(c: TcpConnection, client: boolean): void {
    if (c.reason !== null) return;
    if (c.connectedAt === 0) {
      if (client) this.end(c, 'client');
      return;
    }
    const clean = client ? c.clientEnded : c.upstreamEnded;
    if (!clean) return this.end(c, client ? 'client' : 'upstream', true);
    if (c.sideClosed()) this.end(c, c.firstEnd ?? (client ? 'client' : 'upstream'));
  }

  /**
   * Ends the connection once: both sockets destroyed (`reset`: the survivor gets a reset rather
   * than a FIN, so a peer sees the failure), the upstream released, the close published.
   */
  end(c: TcpConnection, reason: TcpCloseReason, reset = false): void {
    if (c.reason !== null) return;
    c.reason = reason;
    c.closedAt = performance.now();
    if (c.connectTimer !== null) clearTimeout(c.connectTimer);
    c.connectTimer = null;
    const up = c.upstreamSocket;
    for (const s of [c.clientSocket, up]) {
      if (s === null || s.destroyed) continue;
      if (reset && typeof s.resetAndDestroy === 'function' && !s.connecting) s.resetAndDestroy();
      else s.destroy();
    }
    const u = c.upstream;
    if (u !== null) {
      u.inFlight--;
      this.untrack(c, u);
    }
    this.open.delete(c);
    if (tcpClose.hasSubscribers) tcpClose.publish(c);
    if (this.open.size === 0) {
      this.stopSweep();
      const resolve = this.onEmpty;
      this.onEmpty = null;
      resolve?.();
    }
  }

  private track(c: TcpConnection, u: Upstream): void {
    let set = this.byUpstream.get(u);
    if (set === undefined) this.byUpstream.set(u, (set = new Set()));
    set.add(c);
  }

  private untrack(c: TcpConnection, u: Upstream): void {
    const set = this.byUpstream.get(u);
    if (set === undefined || !set.delete(c) || set.size > 0) return;
    this.byUpstream.delete(u);
    const timer = this.closing.get(u);
    if (timer !== undefined) clearTimeout(timer);
    this.closing.delete(u);
  }

  /** Closes `upstream`'s connections after `graceMs` (0: now), unless `keep` comes first. */
  private closeLater(upstream: Upstream, graceMs: number, reason: TcpCloseReason): void {
    if (!this.byUpstream.has(upstream) || this.closing.has(upstream)) return;
    const run = (): void => {
      this.closing.delete(upstream);
      for (const c of [...(this.byUpstream.get(upstream) ?? [])]) this.end(c, reason);
    };
    if (graceMs <= 0) return run();
    const timer = setTimeout(run, graceMs);
    timer.unref();
    this.closing.set(upstream, timer);
  }

  private keep(upstream: Upstream): void {
    const timer = this.closing.get(upstream);
    if (timer === undefined) return;
    clearTimeout(timer);
    this.closing.delete(upstream);
  }

  /** The idle sweep runs while connections are open, often enough for the shortest idle timeout seen. */
  private startSweep(idleMs: number): void {
    if (idleMs <= 0) return;
    const period = Math.max(SWEEP_MIN_MS, Math.min(SWEEP_MAX_MS, Math.floor(idleMs / 4)));
    if (this.sweep !== null && period >= this.sweepMs) return;
    this.stopSweep();
    this.sweepMs = period;
    this.sweep = setInterval(() => this.sweepIdle(), period);
    this.sweep.unref();
  }

  private stopSweep(): void {
    if (this.sweep !== null) clearInterval(this.sweep);
    this.sweep = null;
    this.sweepMs = SWEEP_MAX_MS;
  }

  private sweepIdle(): void {
    const now = performance.now();
    for (const c of this.open) {
      const idle = c.pool.settings.timeouts.tunnel_idle;
      if (c.connectedAt > 0 && idle > 0 && now - c.lastActivity >= idle) {
        c.error = `no byte either way for ${idle}ms`;
        this.end(c, 'idle');
      }
    }
  }

  /**
   * Shutdown: no new failover; connections still open when `graceMs` is over are closed.
   * Resolves once every connection has ended.
   */
  async shutdown(graceMs: number): Promise<void> {
    this.shuttingDown = true;
    upstreamState.unsubscribe(this.onUpstreamState);
    if (this.open.size === 0) return;
    const empty = new Promise<void>((resolve) => (this.onEmpty = resolve));
    let timer: NodeJS.Timeout | undefined;
    const grace = new Promise<'grace'>((resolve) => (timer = setTimeout(resolve, graceMs, 'grace')));
    const how = await Promise.race([empty, grace]);
    clearTimeout(timer);
    if (how === 'grace') {
      const left = this.open.size;
      if (left > 0) this.logger?.warn({ connections: left }, `grace period over: closing ${left} TCP connection${left === 1 ? '' : 's'} still open`);
      for (const c of [...this.open]) this.end(c, 'shutdown');
    }
    for (const t of this.closing.values()) clearTimeout(t);
    this.closing.clear();
    this.stopSweep();
  }

  /** Closes every connection now (a listener that failed to start, tests). */
  closeAll(reason: TcpCloseReason = 'shutdown'): void {
    for (const c of [...this.open]) this.end(c, reason);
  }
}

/** The PROXY header a connection's pool sends first, or null. */
function proxyHeaderOf(c: TcpConnection): Buffer | null {
  const version = c.pool.settings.proxy_protocol;
  if (version === undefined) return null;
  const client = c.client;
  return proxyHeader(version, { address: client.address, port: client.port }, { address: client.localAddress, port: client.localPort }, client.sni);
}
