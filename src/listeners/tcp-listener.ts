/**
 * A TCP listener (`protocol: tcp`): admits connections (PROXY header from trusted balancers,
 * firewall, connection limits), chooses a tcp pool, by TLS server name and ALPN when
 * `tls_passthrough` is set (the ClientHello is read, never answered: the bytes go on to the
 * upstream unchanged, and the upstream holds the keys), and hands the connection to the TCP proxy.
 */
import net, { type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { ListenerSettings } from '../config/schema.ts';
import { Firewall } from '../middleware/firewall.ts';
import type { Logger } from '../observe/logger.ts';
import type { TcpProxy } from '../proxy/tcp-proxy.ts';
import { MAX_CLIENT_HELLO_BYTES, parseClientHello } from '../tls/client-hello.ts';
import type { Pool } from '../upstream/pool.ts';
import { ConnectionLimiter } from './connection-limiter.ts';
import { bindAcceptor, boundAddress, type ListenerAddress } from './bind.ts';
import { ProxyProtocolGate } from './proxy-protocol-gate.ts';
import { normalizeAddress } from '../core/client-address.ts';

/** Why a TLS-passthrough connection was closed before it reached a pool (lb_tls_passthrough_refused_total). */
export type PassthroughRefusal = 'timeout' | 'not_tls' | 'malformed' | 'no_route' | 'closed';

/** A compiled SNI route. */
interface SniRoute {
  exact: ReadonlySet<string>;
  /** `.example.com` for `*.example.com`. */
  suffixes: readonly string[];
  alpn: readonly string[] | null;
  pool: string;
}

/**
 * The pool name for a server name and the ALPN protocols offered: exact names before wildcards,
 * a longer wildcard before a shorter one, then the first listed; a route with `alpn` only when
 * one of its protocols was offered. Null when no route takes it.
 */
export function matchSniRoute(routes: readonly SniRoute[], serverName: string | null, alpn: readonly string[]): string | null {
  if (serverName === null) return null;
  const name = serverName.toLowerCase().replace(/\.$/, '');
  let best: SniRoute | null = null;
  let bestRank = -1;
  for (const r of routes) {
    if (r.alpn !== null && !r.alpn.some((p) => alpn.includes(p))) continue;
    let rank = -1;
    if (r.exact.has(name)) rank = Number.MAX_SAFE_INTEGER;
    else for (const s of r.suffixes) if (name.endsWith(s) && name.length > s.length && s.length > rank) rank = s.length;
    if (rank > bestRank) {
      best = r;
      bestRank = rank;
    }
  }
  return best?.pool ?? null;
}

/** Compiles a listener's `tls_passthrough.routes`. */
export function compileSniRoutes(settings: ListenerSettings['tls_passthrough']): SniRoute[] {
  return (settings?.routes ?? []).map((r) => {
    const names = r.server_names.map((n) => n.toLowerCase().replace(/\.$/, ''));
    return { exact: new Set(names.filter((n) => !n.startsWith('*.'))), suffixes: names.filter((n) => n.startsWith('*.')).map((n) => n.slice(1)), alpn: r.alpn ?? null, pool: r.pool };
  });
}

/** One TCP listener of the balancer. */
export class TcpListener {
  settings: ListenerSettings;
  readonly info: { name: string };
  private readonly acceptor: net.Server;
  private readonly connections: ConnectionLimiter;
  readonly gate: ProxyProtocolGate;
  private readonly proxy: TcpProxy;
  private readonly pools: () => ReadonlyMap<string, Pool>;
  private readonly logger: Logger;
  private routes: SniRoute[] = [];
  /** Connections still sending their ClientHello (a drain closes them). */
  private readonly hello = new Set<Socket>();
  /** Every admitted client socket. */
  private readonly open = new Set<Socket>();
  /** TLS-passthrough connections closed before a pool took them, by reason. */
  readonly passthroughRefused = new Map<PassthroughRefusal, number>();
  /** Passthrough connections routed, by pool: how SNI routing splits them. */
  readonly passthroughRouted = new Map<string, number>();

  constructor(settings: ListenerSettings, proxy: TcpProxy, pools: () => ReadonlyMap<string, Pool>, logger: Logger) {
    this.settings = settings;
    this.proxy = proxy;
    this.pools = pools;
    this.logger = logger;
    const name = settings.name ?? `${settings.host}:${settings.port}`;
    this.info = { name };
    this.gate = new ProxyProtocolGate(logger, name);
    this.connections = new ConnectionLimiter(logger, name, (socket) => this.admitted(socket));
    this.update(settings);
    // Half-open: a client's FIN is passed on, and the upstream's answer still flows back.
    this.acceptor = net.createServer({ pauseOnConnect: true, allowHalfOpen: true }, (socket) => {
      socket.setNoDelay(true);
      this.gate.accept(socket, (s) => this.connections.accept(s));
    });
  }

  /** Applies (re)loaded settings: firewall, limits, PROXY protocol, routes and pool for the next connection; open ones are kept. */
  update(settings: ListenerSettings): void {
    this.settings = settings;
    this.gate.configure(settings.proxy_protocol);
    this.routes = compileSniRoutes(settings.tls_passthrough);
    this.connections.configure(settings.limits, null, settings.firewall ? new Firewall(settings.firewall) : null);
  }

  /** A connection the firewall and limits let in (still paused). */
  private admitted(socket: Socket): void {
    const since = performance.now();
    this.open.add(socket);
    socket.once('close', () => this.open.delete(socket));
    const passthrough = this.settings.tls_passthrough;
    if (passthrough === undefined) {
      const pool = this.poolNamed(this.settings.pool);
      if (pool === null) return void socket.destroy();
      // A header from an untrusted peer is refused on its first bytes (the gate let trusted peers' through already).
      return this.proxy.handle(socket, this.info.name, this.clientOf(socket, null, []), pool, null, since, this.gate.enabled && !this.gate.expectsHeader(socket));
    }
    this.readClientHello(socket, passthrough.client_hello_timeout, since);
  }

  /** TLS passthrough: the ClientHello's server name and ALPN choose the pool; the bytes read go upstream first. */
  private readClientHello(socket: Socket, timeoutMs: number, since: number): void {
    let received: Buffer | null = null;
    this.hello.add(socket);
    const done = (): void => {
      clearTimeout(timer);
      this.hello.delete(socket);
      socket.off('data', onData);
      socket.off('error', onGone);
      socket.off('end', onGone);
      socket.off('close', onGone);
    };
    const refuse = (reason: PassthroughRefusal, detail: string): void => {
      done();
      this.passthroughRefused.set(reason, (this.passthroughRefused.get(reason) ?? 0) + 1);
      this.logger.debug({ listener: this.info.name, reason, client: socket.remoteAddress, detail }, `TLS passthrough: connection closed (${reason}): ${detail}`);
      socket.destroy();
    };
    const onData = (chunk: Buffer): void => {
      received = received === null ? chunk : Buffer.concat([received, chunk]);
      const hello = parseClientHello(received);
      if (hello.kind === 'incomplete') {
        if (received.length > MAX_CLIENT_HELLO_BYTES + 64) refuse('malformed', `no whole ClientHello in ${received.length} bytes`);
        return;
      }
      if (hello.kind === 'not-tls') return refuse('not_tls', hello.http ? 'plain HTTP sent to a TLS passthrough port' : 'the first bytes are not a TLS handshake');
      if (hello.kind === 'malformed') return refuse('malformed', hello.reason);
      const poolName = matchSniRoute(this.routes, hello.serverName, hello.alpn) ?? this.settings.pool ?? null;
      if (poolName === null) return refuse('no_route', `no route for server name ${JSON.stringify(hello.serverName)}${hello.alpn.length > 0 ? ` (ALPN ${hello.alpn.join(', ')})` : ''} and no default pool`);
      const pool = this.poolNamed(poolName);
      if (pool === null) return refuse('no_route', `pool ${poolName} is gone`);
      done();
      socket.pause();
      this.passthroughRouted.set(poolName, (this.passthroughRouted.get(poolName) ?? 0) + 1);
      this.proxy.handle(socket, this.info.name, this.clientOf(socket, hello.serverName, hello.alpn), pool, received, since);
    };
    const onGone = (): void => refuse('closed', 'the client left before its ClientHello was complete');
    const timer = setTimeout(() => refuse('timeout', `no whole ClientHello within ${timeoutMs}ms`), timeoutMs);
    socket.on('data', onData);
    socket.on('error', onGone);
    socket.on('end', onGone);
    // Destroyed under us (a drain): the deadline goes with it.
    socket.on('close', onGone);
    socket.resume();
  }

  private clientOf(socket: Socket, sni: string | null, alpn: readonly string[]): { address: string; port: number; localAddress: string; localPort: number; sni: string | null; alpn: readonly string[] } {
    return { address: normalizeAddress(socket.remoteAddress), port: socket.remotePort ?? 0, localAddress: normalizeAddress(socket.localAddress), localPort: socket.localPort ?? 0, sni: sni === null ? null : sni.toLowerCase(), alpn };
  }

  /** The committed runtime's pool of that name (a reload may have removed it: then null, logged). */
  private poolNamed(name: string | undefined): Pool | null {
    const pool = name === undefined ? undefined : this.pools().get(name);
    if (pool === undefined) {
      this.logger.error({ listener: this.info.name, pool: name }, `tcp listener ${this.info.name}: pool ${name} does not exist; connection closed`);
      return null;
    }
    return pool;
  }

  /** Client connections open now. */
  get openConnections(): number {
    return this.connections.openCount;
  }

  /** Connections closed at accept (firewall, limits) since start. */
  get refusedConnections(): number {
    return this.connections.refused;
  }

  /** Binds the socket; resolves with the address (port 0 gets the OS's choice). */
  async listen(): Promise<ListenerAddress> {
    await bindAcceptor(this.acceptor, this.settings.host, this.settings.port, this.logger, this.info.name);
    return this.address()!;
  }

  /** The bound address (`tcp://host:port`), or null before listen. */
  address(): ListenerAddress | null {
    return boundAddress(this.acceptor, this.info.name, 'tcp');
  }

  /**
   * Stops accepting; connections still sending a PROXY header or a ClientHello are closed, open
   * ones may go on for `graceMs` (the TCP proxy closes what is left then); resolves when all are gone.
   */
  async drain(graceMs: number): Promise<void> {
    if (!this.acceptor.listening) return;
    const closed = new Promise<void>((resolve) => this.acceptor.close(() => resolve()));
    this.connections.dropWaiting();
    this.gate.closeReading();
    for (const s of this.hello) s.destroy();
    let timer: NodeJS.Timeout | undefined;
    const grace = new Promise<'grace'>((resolve) => (timer = setTimeout(resolve, graceMs, 'grace')));
    const how = await Promise.race([closed, grace]);
    clearTimeout(timer);
    if (how === 'grace') {
      for (const s of this.open) s.destroy();
      await closed;
    }
  }
}
