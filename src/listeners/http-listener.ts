/**
 * An HTTP/1.1 listener: an acceptor that admits connections (firewall, limits), an HTTP/1.1
 * server that parses them and hands requests to the proxy (Fulcrum's own, src/downstream/
 * http1-connection.ts, or node:http's with `engine: node`), answers to what the parser refuses
 * (400, 408, 431, ...), and the drain of its connections on shutdown.
 */
import type * as http from 'node:http';
import { http as nodeHttp } from '../node-builtins.ts';
import net from 'node:net';
import type { Socket } from 'node:net';
import type { ListenerSettings } from '../config/schema.ts';
import { compileCidrs } from '../config/schema.ts';
import type { HttpProxy, ListenerInfo } from '../proxy/http-proxy.ts';
import { Http1Downstream } from '../downstream/http1.ts';
import { TunnelLimits } from '../downstream/tunnel.ts';
import { asksWebSocket } from '../proxy/websocket.ts';
import { Firewall, firewallGuard } from '../middleware/firewall.ts';
import { requestLimitsGuard } from '../middleware/request-limits.ts';
import { ConnectionLimiter } from './connection-limiter.ts';
import { ClientConnection, requestBeingParsed, type StartRequest } from './client-connection.ts';
import { closingAnswer, Http1Server, type Http1Settings } from '../downstream/http1-connection.ts';
import type { Logger } from '../observe/logger.ts';
import type { RequestHead } from '../core/context.ts';
import { TlsTermination } from '../tls/termination.ts';
import type { TLSSocket } from 'node:tls';
import { Http2Front, type Http2ServerSettings } from '../downstream/http2-server.ts';
import { ForwardProxy, isAbsoluteForm } from '../forward/forward-proxy.ts';
import { carryProxyHeader, ProxyProtocolGate } from './proxy-protocol-gate.ts';
import { bindAcceptor, boundAddress, type ListenerAddress } from './bind.ts';

/** At the end of the grace period, how long tunnels (told to close) may take before their sockets are cut. */
const TUNNEL_CLOSE_WAIT_MS = 1500;

export type { ListenerAddress } from './bind.ts';

const parserStatus: Record<string, [number, string]> = {
  HPE_HEADER_OVERFLOW: [431, 'Request Header Fields Too Large'],
  ERR_HTTP_REQUEST_TIMEOUT: [408, 'Request Timeout'],
};

/** What a listener needs to answer its metrics path. */
export interface MetricsSource {
  scrape(): Promise<{ contentType: string; body: string }>;
}

/** The HTTP/1.1 server settings of a listener's limits. */
function http1Settings(settings: ListenerSettings): Http1Settings {
  const limits = settings.limits;
  const requestTimeout = limits.request_timeout;
  return {
    keepAliveMs: settings.keepalive_timeout,
    headersTimeoutMs: requestTimeout > 0 ? Math.min(limits.headers_timeout, requestTimeout) : limits.headers_timeout,
    requestTimeoutMs: requestTimeout,
    // One over max_headers is the request-limits guard's (431, logged); beyond it the parser refuses (431).
    limits: { maxHeadBytes: limits.max_header_bytes, maxHeaders: limits.max_headers + 1 },
    connect: settings.forward_proxy?.connect === true,
  };
}

/** The HTTP/2 limits of a listener's settings. */
function http2Settings(settings: ListenerSettings): Http2ServerSettings {
  const h = settings.http2;
  return {
    maxConcurrentStreams: h.max_concurrent_streams,
    initialWindowSize: h.initial_window_bytes,
    maxHeaderListSize: settings.limits.max_header_bytes,
    maxHeaders: settings.limits.max_headers,
    maxResets: h.max_resets,
    resetWindowMs: h.reset_window,
    maxControlFrames: h.max_control_frames,
    idleTimeoutMs: settings.keepalive_timeout,
    requestTimeoutMs: settings.limits.request_timeout,
  };
}

/** The HTTP/2 connection preface (RFC 9113 section 3.4): what an h2c client with prior knowledge sends first. */
const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

/**
 * Reads a cleartext connection's first bytes and tells HTTP/2 (the preface) from HTTP/1.1, then
 * puts the bytes back for the server that takes it. A client that sends nothing decisive within
 * `timeoutMs`, or closes first, is closed. `sniffing` holds the socket meanwhile (a drain closes those).
 */
function sniffPreface(socket: Socket, timeoutMs: number, sniffing: Set<Socket>, then: (h2: boolean) => void): void {
  let got: Buffer | null = null;
  sniffing.add(socket);
  const done = (): void => {
    clearTimeout(timer);
    sniffing.delete(socket);
    socket.off('data', onData);
    socket.off('error', onError);
    socket.off('end', onError);
  };
  const onData = (chunk: Buffer): void => {
    got = got === null ? chunk : Buffer.concat([got, chunk]);
    const n = Math.min(got.length, H2_PREFACE.length);
    const h2 = got.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
    if (h2 && got.length < H2_PREFACE.length) return;
    done();
    socket.pause();
    socket.unshift(got);
    then(h2);
    // The HTTP/1.1 server reads 'data' events; node:http2 reads what was put back itself (next tick) and then the socket's handle.
    if (!h2) socket.resume();
  };
  const onError = (): void => {
    done();
    socket.destroy();
  };
  const timer = setTimeout(onError, timeoutMs);
  socket.on('data', onData);
  socket.on('error', onError);
  // The acceptor's sockets are half-open: a FIN before the deciding bytes would otherwise wait out the timer.
  socket.on('end', onError);
}

/** A status, headers (flat) and a body written whole: the listener's own answers (the metrics path). */
type Answer = (status: number, headers: string[], body: string) => void;

/** Where ACME HTTP-01 validations ask (RFC 8555 section 8.3). */
const ACME_CHALLENGE_PREFIX = '/.well-known/acme-challenge/';

/** The value of Strict-Transport-Security for a listener's `hsts`, or undefined. */
function hstsValue(settings: ListenerSettings): string | undefined {
  const h = settings.hsts;
  if (h === undefined || settings.protocol !== 'https') return undefined;
  return `max-age=${Math.floor(h.max_age / 1000)}${h.include_subdomains ? '; includeSubDomains' : ''}${h.preload ? '; preload' : ''}`;
}

/** One HTTP listener of the balancer. */
export class HttpListener {
  settings: ListenerSettings;
  /**
   * Parses HTTP on the connections the acceptor admits (it never listens itself): Fulcrum's own
   * HTTP/1.1 server (`engine: fulcrum`, the default) or node:http's (`engine: node`); one of them is null.
   */
  readonly http1: Http1Server | null;
  readonly server: http.Server | null;
  /** Accepts TCP connections, paused until admitted (firewall, connection limits). */
  private readonly acceptor: net.Server;
  readonly info: ListenerInfo;
  private readonly logger: Logger;
  private readonly connections: ConnectionLimiter;
  /** The PROXY protocol from trusted balancers in front (`proxy_protocol`), read before the firewall and limits. */
  readonly gate: ProxyProtocolGate;
  private readonly proxy: HttpProxy;
  /** Every admitted client socket, also those Node's server no longer tracks (after CONNECT, lingering). */
  private readonly open = new Set<Socket>();
  /** Cleartext sockets whose first bytes are still awaited to tell h2c from HTTP/1.1 (they sent nothing yet). */
  private readonly sniffing = new Set<Socket>();
  private metrics: MetricsSource | null = null;
  /** Requests answered by the parser's error path (malformed, too large, too slow). */
  malformed = 0;
  private metricsPath: string | null = null;
  /** TLS termination of an https listener (null for http). */
  readonly tls: TlsTermination | null;
  /** HTTP/2 sessions: h2 chosen by ALPN on https, h2c by its preface on http (`http2.h2c`). */
  readonly http2: Http2Front;
  /** ACME HTTP-01 key authorizations by token, answered on http listeners (shared by the balancer). */
  private acmeTokens: ReadonlyMap<string, string> | null = null;
  /** `forward_proxy` as JSON when it was compiled into `info.forward` (a reload that keeps it keeps the compiled one). */
  private forwardKey = '';

  /**
   * Builds the listener (nothing is bound before `listen`). An https listener reads its
   * certificates here: throws CertificateError naming the file when one cannot be used. A
   * `forward_proxy` is compiled here too: throws an Error naming a rule or user that cannot be used.
   */
  constructor(settings: ListenerSettings, proxy: HttpProxy, logger: Logger) {
    this.settings = settings;
    this.logger = logger;
    this.proxy = proxy;
    const name = settings.name ?? `${settings.host}:${settings.port}`;
    const secure = settings.protocol === 'https';
    this.info = {
      name,
      trusted: null,
      forwarding: { proto: secure ? 'https' : 'http', port: String(settings.port), via: '1.1 fulcrum', underscores: settings.headers_with_underscores, hsts: hstsValue(settings), clientSubjectHeader: settings.tls?.client_auth?.subject_header?.toLowerCase() },
      guards: [],
      maxBodyBytes: 0,
      tunnels: new TunnelLimits(),
      // Compiled here so that rules or password hashes that cannot be used stop the start (update() keeps the old ones instead).
      forward: settings.forward_proxy === undefined ? null : new ForwardProxy(settings.forward_proxy),
    };
    this.forwardKey = settings.forward_proxy === undefined ? '' : JSON.stringify(settings.forward_proxy);
    // One request at a time per connection, in order: pipelining is answered as sent (either engine).
    const own = settings.engine === 'fulcrum';
    this.http1 = own ? this.ownServer() : null;
    this.server = own ? null : this.nodeServer();
    const serve = own ? (socket: Socket, since?: number) => void this.http1!.accept(socket, since) : this.nodeAdmit(this.server!);
    const h2 = new Http2Front(http2Settings(settings), {
      request: (head, downstream) => {
        if (this.answersItself(head, (status, headers, body) => downstream.fail(status, headers, body, false))) return;
        this.proxy.handle(head, downstream, this.info);
      },
    }, logger, name);
    this.http2 = h2;
    const open = this.open;
    // After the handshake the TLS socket stands for the connection (drain closes it, not the TCP socket under it).
    this.tls = secure
      ? new TlsTermination(settings.tls!, name, logger, (tlsSocket: TLSSocket, raw) => {
          if (raw !== null) open.delete(raw);
          // The client a PROXY header named stays the client once TLS wraps the socket.
          carryProxyHeader(raw, tlsSocket);
          open.add(tlsSocket);
          tlsSocket.once('close', () => open.delete(tlsSocket));
          if (tlsSocket.alpnProtocol === 'h2') h2.accept(tlsSocket);
          else serve(tlsSocket);
        })
      : null;
    const tls = this.tls;
    this.gate = new ProxyProtocolGate(logger, name);
    this.connections = new ConnectionLimiter(logger, name, (socket) => {
      if (tls !== null) tls.accept(socket);
      else if (this.settings.http2.h2c) {
        const since = performance.now();
        sniffPreface(socket, this.settings.limits.headers_timeout, this.sniffing, (isH2) => (isH2 ? h2.accept(socket) : serve(socket, since)));
      }
      else serve(socket);
      open.add(socket);
      socket.once('close', () => open.delete(socket));
      socket.resume();
    });
    this.update(settings);
    // Sockets start paused: nothing is read (or parsed) before the firewall and limits admit them.
    // Half-open with the own server: the connection decides what a client's FIN means (mid-request the
    // client gave up, as node:http and nginx take it; while closing, the answer still leaving goes first).
    this.acceptor = net.createServer({ pauseOnConnect: true, allowHalfOpen: own }, (socket) => this.gate.accept(socket, (s) => this.connections.accept(s)));
  }

  /** Fulcrum's own HTTP/1.1 server (`engine: fulcrum`). */
  private ownServer(): Http1Server {
    const info = this.info;
    return new Http1Server(http1Settings(this.settings), {
      request: (head, response) => {
        // The optional public metrics path, ACME validations and the redirect to https answer here, before routing: they are not proxied.
        if (this.answersItself(head, (status, headers, body) => response.fail(status, headers, body, false))) return;
        this.proxy.handle(head, response, info);
      },
      refused: (status, code, reason) => {
        this.malformed++;
        this.logger.debug({ listener: info.name, code, status, reason }, code === 'CONNECT' ? 'refused a CONNECT request' : 'rejected a malformed request');
      },
    });
  }

  /** node:http's server (`engine: node`): it never binds, the acceptor hands it admitted sockets. */
  private nodeServer(): http.Server {
    const limits = this.settings.limits;
    const requestTimeout = limits.request_timeout;
    const headersTimeout = requestTimeout > 0 ? Math.min(limits.headers_timeout, requestTimeout) : limits.headers_timeout;
    const server = nodeHttp.createServer(
      {
        keepAliveTimeout: this.settings.keepalive_timeout,
        requireHostHeader: false, // request-validation answers 400 itself, so it is logged and counted
        maxHeaderSize: limits.max_header_bytes,
        headersTimeout,
        requestTimeout,
        // Node checks these timeouts on this tick (30 s by default): short enough that 408 comes on time.
        connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(headersTimeout / 4))),
        // WebSocket handshakes leave the parser (the 'upgrade' event); other upgrade offers stay requests (501, or h2c ignored).
        shouldUpgradeCallback: (req) => asksWebSocket(req as RequestHead),
      },
      (req, res) => this.nodeDispatch(req, res, false),
    );
    server.on('checkContinue', (req, res) => this.nodeDispatch(req, res, true));
    server.on('upgrade', (req: http.IncomingMessage, socket: Socket, head: Buffer) => this.onUpgrade(req, socket, head));
    server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => this.onClientError(err, socket));
    // CONNECT: a forward-proxy tunnel where `forward_proxy.connect` is on; elsewhere a clear answer instead of Node's silent close.
    server.on('connect', (req: http.IncomingMessage, socket: Socket, head: Buffer) => {
      if (this.info.forward?.connect === true) {
        // The acceptor's sockets close on the client's FIN with this engine; a tunnel passes a half-close on instead.
        socket.allowHalfOpen = true;
        this.onUpgrade(req, socket, head);
      } else this.refuseTunnel(req, socket);
    });
    return server;
  }

  /** Starts one request node:http parsed (`ClientConnection` keeps them in order). */
  private readonly nodeStart: StartRequest = (req, res, expectContinue) => {
    // The optional public metrics path, ACME validations and the redirect to https answer here, before routing: they are not proxied.
    const answer: Answer = (status, headers, body) => {
      res.writeHead(status, headers);
      res.end(body);
    };
    if (this.answersItself(req as RequestHead, answer)) return;
    this.proxy.handle(req as RequestHead, new Http1Downstream(req, res, expectContinue), this.info);
  };

  private nodeDispatch(req: http.IncomingMessage, res: http.ServerResponse, expectContinue: boolean): void {
    const connection = ClientConnection.of(req.socket);
    if (connection !== undefined) connection.request(req, res, expectContinue);
    else this.nodeStart(req, res, expectContinue);
  }

  /** How node:http's server takes an admitted socket. */
  private nodeAdmit(server: http.Server): (socket: Socket) => void {
    return (socket) => {
      new ClientConnection(socket, this.nodeStart);
      server.emit('connection', socket);
    };
  }

  /**
   * Applies (re)loaded settings in place: trusted proxies, firewall, limits and timeouts change for
   * the next connection and request; open connections are kept. The bind address and
   * max_header_bytes (fixed per parser) take a restart.
   */
  update(settings: ListenerSettings): void {
    this.settings = settings;
    this.metricsPath = settings.metrics_path ?? null;
    const limits = settings.limits;
    const info = this.info;
    const firewall = settings.firewall ? new Firewall(settings.firewall) : null;
    info.trusted = settings.trusted_proxies.length > 0 ? compileCidrs(settings.trusted_proxies) : null;
    info.guards = firewall !== null ? [firewallGuard(firewall, `listener ${info.name}`), requestLimitsGuard(limits)] : [requestLimitsGuard(limits)];
    info.maxBodyBytes = limits.max_body_bytes;
    info.tunnels.configure(limits.max_tunnels, limits.max_tunnels_per_ip);
    info.forwarding.underscores = settings.headers_with_underscores;
    info.forwarding.hsts = hstsValue(settings);
    info.forwarding.clientSubjectHeader = settings.tls?.client_auth?.subject_header?.toLowerCase();
    if (settings.forward_proxy === undefined) info.forward = null;
    else if (info.forward === null || JSON.stringify(settings.forward_proxy) !== this.forwardKey) {
      try {
        // Verified credentials are kept while `auth` is unchanged.
        info.forward = new ForwardProxy(settings.forward_proxy, info.forward);
      } catch (err) {
        // The loader compiles the same settings before a reload is committed; this is the last guard.
        this.logger.error({ listener: info.name, err: (err as Error).message }, `forward_proxy not applied: ${(err as Error).message}; the one loaded before stays`);
      }
    }
    this.forwardKey = settings.forward_proxy === undefined ? '' : JSON.stringify(settings.forward_proxy);
    if (this.tls !== null && settings.tls !== undefined) {
      try {
        this.tls.update(settings.tls);
      } catch (err) {
        // Checked before the reload was committed; a file changed since: the listener keeps its TLS settings.
        this.logger.error({ listener: info.name, err: (err as Error).message }, `TLS settings not applied: ${(err as Error).message}; the ones loaded before stay`);
      }
    }
    if (this.http1 !== null) this.http1.configure(http1Settings(settings));
    this.http2.configure(http2Settings(settings));
    if (this.server !== null) {
      const requestTimeout = limits.request_timeout;
      this.server.keepAliveTimeout = settings.keepalive_timeout;
      this.server.requestTimeout = requestTimeout;
      this.server.headersTimeout = requestTimeout > 0 ? Math.min(limits.headers_timeout, requestTimeout) : limits.headers_timeout;
      // Node answers 431 itself beyond this count; at exactly one over, the request-limits guard does.
      this.server.maxHeadersCount = limits.max_headers + 1;
    }
    this.connections.configure(limits, info.trusted, firewall);
    this.gate.configure(settings.proxy_protocol);
  }

  /**
   * Answers what the listener answers itself, before routing: the metrics path, an ACME HTTP-01
   * validation (plain http listeners), and with `redirect_https` every other request. True when answered.
   */
  private answersItself(head: RequestHead, answer: Answer): boolean {
    // The forward proxy's requests (CONNECT, absolute-form) name another host: never this listener's own paths or its redirect.
    if (this.info.forward !== null && (head.method === 'CONNECT' || isAbsoluteForm(head.url))) return false;
    if (this.isMetricsRequest(head)) {
      this.sendMetrics(answer);
      return true;
    }
    const url = head.url;
    const acmeToken = acmeChallengeToken(url);
    if (this.tls === null && acmeToken !== null && this.acmeTokens !== null && (head.method === 'GET' || head.method === 'HEAD')) {
      const keyAuthorization = this.acmeTokens.get(acmeToken);
      if (keyAuthorization !== undefined) {
        answer(200, ['content-type', 'text/plain', 'content-length', String(keyAuthorization.length), 'cache-control', 'no-store'], head.method === 'HEAD' ? '' : keyAuthorization);
        return true;
      }
    }
    const redirect = this.settings.redirect_https;
    // Only a real challenge path stays on http: `/.well-known/acme-challenge/../../admin` is redirected like any other.
    if (redirect === undefined || acmeToken !== null) return false;
    const location = httpsLocation(head, redirect.port);
    if (location === null) {
      const text = 'Bad Request: a Host header is needed to redirect to https\n';
      answer(400, ['content-type', 'text/plain', 'content-length', String(text.length)], text);
      return true;
    }
    const text = `Redirecting to ${location}\n`;
    answer(redirect.status, ['location', location, 'content-type', 'text/plain', 'content-length', String(Buffer.byteLength(text)), 'cache-control', 'no-store'], head.method === 'HEAD' ? '' : text);
    return true;
  }

  /** ACME HTTP-01 key authorizations to answer (the balancer's, shared by its listeners). */
  serveAcmeChallenges(tokens: ReadonlyMap<string, string>): void {
    this.acmeTokens = tokens;
  }

  /** Serves `metrics` at the listener's `metrics_path` (when it has one). */
  serveMetrics(metrics: MetricsSource): void {
    this.metrics = metrics;
  }

  /** Client connections open now. */
  get openConnections(): number {
    return this.connections.openCount;
  }

  /** Client connections closed at accept (firewall, limits) since start. */
  get refusedConnections(): number {
    return this.connections.refused;
  }

  private isMetricsRequest(head: RequestHead): boolean {
    return this.metricsPath !== null && this.metrics !== null && head.url === this.metricsPath && (head.method === 'GET' || head.method === 'HEAD');
  }

  private sendMetrics(answer: Answer): void {
    this.metrics!.scrape().then(
      ({ contentType, body }) => answer(200, ['content-type', contentType, 'content-length', String(Buffer.byteLength(body)), 'cache-control', 'no-store'], body),
      (err: Error) => {
        this.logger.error({ err: err.message }, 'metrics scrape failed');
        const text = 'metrics scrape failed\n';
        answer(500, ['content-type', 'text/plain', 'content-length', String(text.length)], text);
      },
    );
  }

  /** Binds the socket; resolves with the address (port 0 gets the OS's choice). */
  async listen(): Promise<ListenerAddress> {
    await bindAcceptor(this.acceptor, this.settings.host, this.settings.port, this.logger, this.info.name);
    // The HTTP server never binds (the acceptor does), but its 'listening' starts Node's connection
    // tracking: the timer behind headers and request timeouts, and the list closeIdleConnections uses.
    this.server?.emit('listening');
    const bound = this.address()!;
    this.info.forwarding.port = String(bound.port);
    return bound;
  }

  /** The bound address, or null before listen. */
  address(): ListenerAddress | null {
    return boundAddress(this.acceptor, this.info.name, this.tls !== null ? 'https' : 'http');
  }


  /**
   * Stops accepting, lets requests in flight finish, closes connections as they fall idle,
   * and cuts whatever is left when the grace period ends.
   */
  async drain(graceMs: number): Promise<void> {
    if (!this.acceptor.listening) return;
    // Resolves once every accepted connection has ended.
    const closed = new Promise<void>((resolve) => this.acceptor.close(() => resolve()));
    this.connections.dropWaiting();
    this.gate.closeReading();
    // Connections that only linger (answered, closing) have nothing left to deliver.
    // (An answer still leaving a slow client is let go: its connection's clock bounds it.)
    for (const socket of this.open) if ((ClientConnection.of(socket) ?? Http1Server.of(socket))?.isLingering === true && socket.writableLength === 0) socket.destroy();
    if (this.http1 !== null) this.http1.draining = true;
    this.http2.drain();
    // Connections still deciding between h2c and HTTP/1.1 have sent nothing to answer.
    for (const socket of this.sniffing) socket.destroy();
    this.closeIdle();
    const sweep = setInterval(() => this.closeIdle(), 25);
    let timer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<'grace'>((resolve) => (timer = setTimeout(resolve, graceMs, 'grace')));
    const how = await Promise.race([closed, graceOver]);
    clearInterval(sweep);
    clearTimeout(timer);
    if (how === 'grace') {
      this.logger.warn({ listener: this.info.name }, 'grace period over: closing the connections still open');
      this.server?.closeAllConnections();
      this.http1?.closeAll();
      this.http2.closeAll();
      // Node's list misses sockets it handed over (CONNECT) or no longer parses. Tunnels were just
      // sent their Close frames (HttpProxy.shutdown): a frame in flight may end first, briefly.
      let tunnels = 0;
      for (const socket of this.open) {
        if (Http1Downstream.isTunnel(socket) || Http1Server.of(socket)?.isSwitched === true) tunnels++;
        else socket.destroy();
      }
      if (tunnels > 0) {
        let wait: NodeJS.Timeout | undefined;
        await Promise.race([closed, new Promise<void>((resolve) => (wait = setTimeout(resolve, TUNNEL_CLOSE_WAIT_MS)))]);
        clearTimeout(wait);
      }
      for (const socket of this.open) socket.destroy();
      await closed;
    }
    // Stops the HTTP server's timeout timer (it reports "not running": it never bound a socket).
    this.server?.close(() => {});
    this.http1?.stop();
    this.tls?.stop();
  }

  /** Closes the connections between requests (node:http's closeIdleConnections). */
  private closeIdle(): void {
    if (this.server !== null) this.server.closeIdleConnections();
    else this.http1!.closeIdle();
  }

  /** Open WebSocket tunnels (and handshakes in progress) on this listener. */
  get openTunnels(): number {
    return this.info.tunnels.count;
  }

  private onClientError(err: NodeJS.ErrnoException, socket: Socket): void {
    const connection = ClientConnection.of(socket);
    // Already closing (an answer with Connection: close went out): what follows is dropped unanswered.
    if (connection?.closing === true) return;
    // ECONNRESET and friends: the client is gone, there is nobody to answer.
    if (err.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    const [status, text] = parserStatus[err.code ?? ''] ?? [400, 'Bad Request'];
    this.malformed++;
    this.logger.debug({ listener: this.info.name, code: err.code, status }, 'rejected a malformed request');
    const active = connection?.activeResponse ?? null;
    // The request the parser was reading when it failed (a bad body, a body that stopped arriving).
    const broken = requestBeingParsed(socket);
    if (active !== null && (active.req as http.IncomingMessage) === broken) {
      // The parser failed inside the body of the request in progress (or it timed out): that request is the broken one.
      Http1Downstream.of(active)?.owner?.onRequestBroken(status, err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'request not received in time' : `malformed request (${err.code ?? 'parse error'})`);
      return;
    }
    const answer = closingAnswer(status, text, '');
    // After the answers to the requests before it, never ahead of them; a queued broken request is replaced by it.
    if (connection !== undefined) connection.refuse(answer, broken);
    else socket.end(answer, 'latin1');
  }

  /**
   * A WebSocket handshake, or a CONNECT on a forward-proxy listener, handed over by Node's parser
   * with the socket (the parser is done with it). It is answered on a response of its own that
   * closes the connection unless the upstream switches protocols (a CONNECT: the tunnel's 200);
   * it waits for the answers to requests pipelined before it.
   */
  private onUpgrade(req: http.IncomingMessage, socket: Socket, head: Buffer): void {
    tendHandedOver(socket);
    // A client must wait for the 101 before it sends frames (RFC 6455 section 4.1); what came early is kept for the tunnel.
    if (head.length > 0) socket.unshift(head);
    const start = (): void => {
      if (socket.destroyed) return;
      // Only now: while an earlier answer is still being written the socket is that answer's.
      const res = new nodeHttp.ServerResponse(req);
      res.shouldKeepAlive = false;
      res.assignSocket(socket);
      this.proxy.handle(req as RequestHead, new Http1Downstream(req, res, false, true), this.info);
    };
    const connection = ClientConnection.of(socket);
    if (connection !== undefined) connection.whenIdle(start);
    else start();
  }

  /** CONNECT: no tunnels on this listener yet (501), said clearly and logged, then a graceful close. */
  private refuseTunnel(req: http.IncomingMessage, socket: Socket): void {
    tendHandedOver(socket);
    this.malformed++;
    this.logger.debug({ listener: this.info.name, method: req.method, target: req.url }, 'refused a CONNECT request');
    const answer = closingAnswer(501, 'Not Implemented', 'CONNECT tunnels are not supported on this listener (see docs/errors.md)');
    const connection = ClientConnection.of(socket);
    if (connection !== undefined) connection.refuse(answer);
    else socket.end(answer, 'latin1');
  }
}

/**
 * A socket Node's server handed over (CONNECT, an upgrade) loses Node's own error, drain and
 * timeout listeners. An error must still be handled, and an answer still being written ahead of
 * the handover (a pipelined request before it) still needs the socket's drains to go on.
 */
function tendHandedOver(socket: Socket): void {
  socket.on('error', destroyOnError);
  socket.on('drain', drainAnswerAhead);
}

function destroyOnError(this: Socket): void {
  this.destroy();
}

function drainAnswerAhead(this: Socket): void {
  const message = (this as Socket & { _httpMessage?: http.ServerResponse | null })._httpMessage;
  if (message && !message.writableFinished) message.emit('drain');
}

/** The token of an ACME HTTP-01 request-target (`/.well-known/acme-challenge/<base64url token>`, RFC 8555 section 8.3), else null. */
export function acmeChallengeToken(url: string): string | null {
  if (!url.startsWith(ACME_CHALLENGE_PREFIX)) return null;
  const token = url.slice(ACME_CHALLENGE_PREFIX.length);
  return /^[A-Za-z0-9_-]+$/.test(token) ? token : null;
}

/**
 * The https URL of a request for the redirect: the Host's name (its port replaced by `port`,
 * left out when 443), then the request-target as sent. An absolute-form target's authority wins.
 * Null when there is no usable host.
 */
export function httpsLocation(head: RequestHead, port: number): string | null {
  let target = head.url;
  let authority: string | undefined;
  const absolute = /^https?:\/\/([^/?#]*)(.*)$/i.exec(target);
  if (absolute !== null) {
    authority = absolute[1];
    target = absolute[2] || '/';
  } else {
    const host = head.headers.host;
    authority = Array.isArray(host) ? host[0] : host;
  }
  if (authority === undefined || authority === '' || !target.startsWith('/')) return null;
  // A host name or [v6]; the port the client used is dropped. No user info: `a.com:80@evil` is no host to send anyone to.
  const m = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.~!$&'()*+,;=%-]+)(?::\d*)?$/.exec(authority);
  if (m === null) return null;
  return `https://${m[1]}${port === 443 ? '' : `:${port}`}${target}`;
}
