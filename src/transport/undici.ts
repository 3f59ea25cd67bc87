/**
 * The undici client toward one upstream: one undici Pool (keep-alive sockets), driven through
 * the low-level `dispatch` handler API so response chunks go straight to the client with
 * backpressure and no intermediate stream. undici honours an upstream's `Keep-Alive: timeout`
 * (less the safety margin) and retires idle sockets before `keepalive.idle_timeout`.
 * What undici cannot carry (`Expect: 100-continue`, HEAD without closing the socket, protocol
 * upgrades, a retried body's request trailers) goes over a node:http client toward the same
 * upstream; a streamed body's request trailers are dropped (see `forward`).
 * undici itself is loaded when the first UndiciClient is made (about 28 MiB of RSS): a
 * configuration without `transport: undici` never loads it here.
 * An `https://` upstream gets its TLS sockets from upstream-tls.ts (SNI, verification, ALPN
 * http/1.1, the last session resumed), as the other transports do; the connect timeout covers
 * the handshake.
 */
import diagnosticsChannel from 'node:diagnostics_channel';
import { createRequire } from 'node:module';
import type { Pool as UndiciPool, Dispatcher, buildConnector as BuildConnector } from 'undici';
import type { Socket } from 'node:net';
import { heldWriteError, keepReadingAfterWriteError } from './upstream-socket.ts';
import type { Upstream } from '../upstream/upstream.ts';
import { effectiveIdle, socketReusableAfter, type ClientSettings, type UpstreamAttempt, type UpstreamClient } from './transport.ts';
import { NodeHttpClient } from './node-http.ts';
import { duringHandshake, tlsFailureReason, UpstreamTlsConnector } from './upstream-tls.ts';

type Undici = typeof import('undici');
let undici: Undici | null = null;

/** undici, loaded on first use (and its `sendHeaders` channel listened to from then on). */
function loadUndici(): Undici {
  if (undici === null) {
    undici = createRequire(import.meta.url)('undici') as Undici;
    diagnosticsChannel.subscribe('undici:client:sendHeaders', onSendHeaders);
  }
  return undici;
}

/** The exchange whose request undici is writing now: its onConnect and `undici:client:sendHeaders` run in one synchronous step. */
let writing: UndiciExchange | null = null;

/** Tells that exchange whether its socket carried an earlier exchange (it read bytes before this request). */
function onSendHeaders(message: unknown): void {
  const exchange = writing;
  if (exchange === null) return;
  writing = null;
  const socket = (message as { socket: Socket }).socket;
  exchange.socket = socket;
  exchange.attempt.sending(socket.bytesRead > 0);
}

/** One attempt as an undici dispatch handler. */
class UndiciExchange implements Dispatcher.DispatchHandler {
  readonly attempt: UpstreamAttempt;
  /** The upstream socket this attempt was written to (from `undici:client:sendHeaders`). */
  socket: Socket | null = null;
  /** False once the answer left the socket in doubt (socketReusableAfter): it is closed after the answer. */
  private reusable = true;
  private resume: (() => void) | null = null;
  /** The final status once headers arrived (0 before). */
  private status = 0;

  constructor(attempt: UpstreamAttempt) {
    this.attempt = attempt;
  }

  onConnect(abort: (err?: Error) => void): void {
    // From here on the request is written to a socket: the upstream may have seen it.
    this.attempt.sending(false);
    if (!this.attempt.live) {
      abort(new Error('request already finished'));
      return;
    }
    this.attempt.onCancel(abort);
    writing = this;
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText?: string): boolean {
    if (!this.attempt.live) return false;
    if (statusCode < 200) {
      this.attempt.informational(statusCode, reasonBytes(statusText) ?? '', rawHeaders);
      return true;
    }
    this.resume = resume;
    this.status = statusCode;
    this.reusable = socketReusableAfter(statusCode, rawHeaders);
    return this.attempt.response(statusCode, rawHeaders, reasonBytes(statusText));
  }

  onData(chunk: Buffer): boolean {
    const more = this.attempt.data(chunk);
    if (!more) this.attempt.whenWritable(this.resume!);
    return more;
  }

  onComplete(trailers: string[] | null): void {
    // Before undici hands the socket to the next request.
    if (!this.reusable || heldWriteError(this.socket) !== undefined) this.socket?.destroy();
    this.attempt.end(trailers);
  }

  onError(err: Error): void {
    // A TLS alert after the handshake (a TLS 1.3 upstream refusing the client certificate): undici
    // reports the close that follows as UND_ERR_SOCKET; the alert is what the operator needs.
    if ((err as NodeJS.ErrnoException).code === 'UND_ERR_SOCKET' && this.socket !== null) {
      const alert = (this.socket as TlsSocket)[kTlsError];
      if (alert !== undefined) err = alert;
    }
    // undici holds a 204 or 304 (or a HEAD answer) to its Content-Length; RFC 9110 says they have no
    // body whatever it says. The answer is complete: relay it (undici has dropped the socket).
    if (this.status !== 0 && (err as NodeJS.ErrnoException).code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH' && bodiless(this.status, this.attempt.method)) {
      this.attempt.end(null);
      return;
    }
    // A 101 nobody asked for: undici calls it a socket error; it is the upstream breaking the protocol (502, no retry).
    if ((err as NodeJS.ErrnoException).code === 'UND_ERR_SOCKET' && err.message === 'bad upgrade') {
      this.attempt.error(Object.assign(new Error('upstream switched protocols without being asked'), { code: 'UND_ERR_INFO' }));
      return;
    }
    this.attempt.error(err);
  }

  onUpgrade(): void {}
  onBodySent(): void {}
}

/**
 * The reason phrase as the upstream's bytes, one char per byte (what Node writes back): undici
 * decodes it as UTF-8, so a valid UTF-8 phrase is re-encoded; one that was not (U+FFFD) is dropped.
 */
function reasonBytes(text: string | undefined): string | undefined {
  if (text === undefined) return undefined;
  for (let i = 0; i < text.length; i++) {
    if (text.charCodeAt(i) < 0x80) continue;
    return text.includes('\ufffd') ? undefined : Buffer.from(text, 'utf8').toString('latin1');
  }
  return text;
}

/** Responses that never have a body (RFC 9110 sections 6.4.1, 15.3.5, 15.4.5). */
function bodiless(status: number, method: string): boolean {
  return status === 204 || status === 304 || method === 'HEAD';
}

/** The first TLS failure (an alert) on an upstream socket, kept for onError: undici replaces it with its own SocketError. */
const kTlsError = Symbol('fulcrum.undici.tlsError');
type TlsSocket = Socket & { [kTlsError]?: Error };

function keepTlsError(this: TlsSocket, err: Error): void {
  if (this[kTlsError] === undefined && tlsFailureReason(err) !== null) this[kTlsError] = err;
}

/** undici's own connector, with sockets that keep reading after a failed write (src/transport/upstream-socket.ts). */
function keepReadingConnector(timeout: number): BuildConnector.connector {
  const connect = loadUndici().buildConnector({ timeout });
  return (options, callback) =>
    connect(options, (err, socket) => {
      // undici's connector passes undefined (not null) for the missing one.
      if (err) callback(err, null);
      else callback(null, keepReadingAfterWriteError(socket!));
    });
}

/**
 * The connector toward an https upstream: the same TLS sockets as the other transports
 * (UpstreamTlsConnector: SNI, verification, ALPN http/1.1, the last session resumed), handed to
 * undici once the handshake is done or failed; `timeout` covers TCP and the handshake. Every
 * error here comes before the request was written, and is marked so (status.ts reads a reset
 * then as a TLS failure).
 */
function tlsConnector(connector: UpstreamTlsConnector, timeout: number): BuildConnector.connector {
  return (_options, callback) => {
    let socket: TlsSocket;
    try {
      socket = connector.connect();
    } catch (err) {
      callback(duringHandshake(err as Error), null);
      return;
    }
    let done = false;
    const finish = (err: Error | null): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.off('error', onError);
      if (err === null) {
        socket.on('error', keepTlsError);
        callback(null, keepReadingAfterWriteError(socket));
        return;
      }
      socket.destroy();
      callback(duringHandshake(err), null);
    };
    const onError = (err: Error): void => finish(err);
    const timer = setTimeout(() => {
      const handshaking = !socket.connecting;
      finish(Object.assign(new Error(`connect timeout after ${timeout}ms${handshaking ? ' (connected, TLS handshake not finished)' : ''}`), { code: 'UND_ERR_CONNECT_TIMEOUT' }));
    }, timeout);
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 60_000);
    socket.once('secureConnect', () => finish(null));
    socket.on('error', onError);
  };
}

/** A kept body (a retry) whose request trailers are known: undici could not send them. */
function keptWithTrailers(attempt: UpstreamAttempt): boolean {
  if (!Buffer.isBuffer(attempt.body)) return false;
  const trailers = attempt.requestTrailers;
  return trailers !== null && trailers.length > 0;
}

/** Keep-alive sockets toward one upstream over undici. */
export class UndiciClient implements UpstreamClient {
  private readonly upstream: Upstream;
  private readonly settings: ClientSettings;
  private readonly pool: UndiciPool;
  /** TLS sockets for an https upstream (null for http). */
  readonly tls: UpstreamTlsConnector | null = null;
  /** For what undici cannot carry: Expect, HEAD, upgrades (created on first use). */
  private fallback: NodeHttpClient | null = null;
  private closed = false;

  constructor(upstream: Upstream, settings: ClientSettings) {
    this.upstream = upstream;
    this.settings = settings;
    const { keepalive, timeouts } = settings;
    const idle = effectiveIdle(keepalive.idle_timeout, keepalive.safety_margin);
    this.pool = new (loadUndici().Pool)(upstream.origin, {
      connections: settings.maxSockets,
      pipelining: 1,
      keepAliveTimeout: idle,
      keepAliveMaxTimeout: idle,
      keepAliveTimeoutThreshold: keepalive.safety_margin,
      connect: settings.tls === null ? keepReadingConnector(timeouts.connect) : tlsConnector((this.tls = new UpstreamTlsConnector(upstream, settings.tls)), timeouts.connect),
      headersTimeout: timeouts.response_headers,
      bodyTimeout: timeouts.idle_body,
      strictContentLength: true,
    });
    // Socket errors are reported per request through the handler; this only keeps them from being unhandled.
    this.pool.on('connectionError', () => {});
  }

  /**
   * Request trailers: undici has no way to send them (its chunked writer ends every body with a
   * bare `0\r\n\r\n`, and its dispatch options have no trailers), and a streamed body's
   * trailers are known only once it ended, long after undici took the request: over undici they
   * are dropped. A kept body (a retry) comes with its trailers already known: it goes over
   * node:http, which sends them, so a retry carries what a first attempt over http1 or node-http
   * would. For the same reason TE goes without `Connection: te` here (undici refuses any
   * Connection value but keep-alive and close).
   */
  forward(attempt: UpstreamAttempt): void {
    // undici cannot send Expect, trailers or switch protocols, and it closes the socket after every HEAD;
    // and a closed client opens nothing: those go over node:http (a closed one uses a one-off connection).
    if (attempt.expectContinue || attempt.upgrade || attempt.method === 'HEAD' || this.closed || keptWithTrailers(attempt)) {
      this.fallback ??= new NodeHttpClient(this.upstream, this.settings);
      if (this.closed) void this.fallback.close();
      return this.fallback.forward(attempt);
    }
    this.pool.dispatch(
      {
        path: attempt.path,
        method: attempt.method as Dispatcher.HttpMethod,
        headers: attempt.headers,
        body: attempt.body,
      },
      new UndiciExchange(attempt),
    );
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([this.pool.close().catch(() => {}), this.fallback?.close()]);
  }
}
