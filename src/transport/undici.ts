/**
 * The undici transport: one undici Pool (keep-alive sockets) per upstream, driven through the
 * low-level `dispatch` handler API so response chunks go straight to the client with
 * backpressure and no intermediate stream. undici honours an upstream's `Keep-Alive: timeout`
 * (less the safety margin) and retires idle sockets before `keepalive.idle_timeout`.
 */
import diagnosticsChannel from 'node:diagnostics_channel';
import { Pool as UndiciPool, buildConnector, type Dispatcher } from 'undici';
import { heldWriteError, keepReadingAfterWriteError } from './upstream-socket.ts';
import type { PoolSettings } from '../config/schema.ts';
import type { RequestContext } from '../core/context.ts';
import type { Upstream } from '../upstream/upstream.ts';
import { effectiveIdle, socketReusableAfter, type ExchangeSink, type Transport } from './transport.ts';
import type { Socket } from 'node:net';
import { NodeHttpTransport } from './node-http.ts';

/** The exchange whose request undici is writing now: its onConnect and `undici:client:sendHeaders` run in one synchronous step. */
let writing: UndiciExchange | null = null;

/** Tells that exchange whether its socket carried an earlier exchange (it read bytes before this request). */
function onSendHeaders(message: unknown): void {
  const exchange = writing;
  if (exchange === null) return;
  writing = null;
  const socket = (message as { socket: Socket }).socket;
  exchange.reused = socket.bytesRead > 0;
  exchange.socket = socket;
}
diagnosticsChannel.subscribe('undici:client:sendHeaders', onSendHeaders);

/** One attempt of one request, as an undici dispatch handler. */
class UndiciExchange implements Dispatcher.DispatchHandler {
  private readonly ctx: RequestContext;
  private readonly sink: ExchangeSink;
  private readonly attempt: number;
  private sent = false;
  /** Sent on a keep-alive socket that had carried an earlier exchange (a reset there is most likely a stale socket). */
  reused = false;
  /** The upstream socket this attempt was written to (from `undici:client:sendHeaders`). */
  socket: Socket | null = null;
  /** False once the answer left the socket in doubt (socketReusableAfter): it is closed after the answer. */
  private reusable = true;
  private resume: (() => void) | null = null;
  /** The final status once headers arrived (0 before). */
  private status = 0;

  constructor(ctx: RequestContext, sink: ExchangeSink) {
    this.ctx = ctx;
    this.sink = sink;
    this.attempt = ctx.attempts;
  }

  private stale(): boolean {
    return this.ctx.done || this.ctx.attempts !== this.attempt;
  }

  onConnect(abort: (err?: Error) => void): void {
    // From here on the request is written to a socket: the upstream may have seen it.
    this.sent = true;
    if (this.stale()) {
      abort(this.ctx.error ?? new Error('request already finished'));
      return;
    }
    this.ctx.abort = abort;
    writing = this;
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText?: string): boolean {
    if (this.stale()) return false;
    if (statusCode < 200) {
      this.sink.onInformational(this.ctx, statusCode, reasonBytes(statusText) ?? '', rawHeaders);
      return true;
    }
    this.resume = resume;
    this.status = statusCode;
    this.reusable = socketReusableAfter(statusCode, rawHeaders);
    return this.sink.onResponse(this.ctx, statusCode, rawHeaders, reasonBytes(statusText));
  }

  onData(chunk: Buffer): boolean {
    if (this.stale()) return false;
    const more = this.sink.onData(this.ctx, chunk);
    if (!more) this.ctx.res.once('drain', this.resume!);
    return more;
  }

  onComplete(trailers: string[] | null): void {
    // Before undici hands the socket to the next request.
    if (!this.reusable || heldWriteError(this.socket) !== undefined) this.socket?.destroy();
    if (this.stale()) return;
    this.sink.onEnd(this.ctx, trailers);
  }

  onError(err: Error): void {
    if (this.ctx.attempts !== this.attempt) return;
    // undici holds a 204 or 304 (or a HEAD answer) to its Content-Length; RFC 9110 says they have no
    // body whatever it says. The answer is complete: relay it (undici has dropped the socket).
    if (this.status !== 0 && (err as NodeJS.ErrnoException).code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH' && bodiless(this.status, this.ctx.req.method)) {
      if (!this.stale()) this.sink.onEnd(this.ctx, null);
      return;
    }
    this.sink.onError(this.ctx, err, this.sent, this.reused);
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
function bodiless(status: number, method: string | undefined): boolean {
  return status === 204 || status === 304 || method === 'HEAD';
}

/** undici's own connector, with sockets that keep reading after a failed write (src/proxy/upstream-socket.ts). */
function keepReadingConnector(timeout: number): buildConnector.connector {
  const connect = buildConnector({ timeout });
  return (options, callback) =>
    connect(options, (err, socket) => {
      // undici's connector passes undefined (not null) for the missing one.
      if (err) callback(err, null);
      else callback(null, keepReadingAfterWriteError(socket!));
    });
}

/** Sockets per upstream: the smaller of keepalive.max_sockets and the upstream's max_connections (null: no limit). */
function socketLimit(maxSockets: number, maxConnections: number): number | null {
  const limit = Math.min(maxSockets > 0 ? maxSockets : Infinity, maxConnections);
  return Number.isFinite(limit) ? limit : null;
}

/** Keep-alive pools toward every upstream of one Fulcrum pool. */
export class UndiciTransport implements Transport {
  private readonly settings: PoolSettings;
  private readonly clients = new Map<Upstream, UndiciPool>();
  /** undici refuses `Expect: 100-continue` and closes after HEAD; those requests go over node:http (relays the 100, keeps the socket). */
  private continueTransport: NodeHttpTransport | null = null;
  readonly relaysContinue = true;

  constructor(settings: PoolSettings) {
    this.settings = settings;
  }

  private clientFor(upstream: Upstream): UndiciPool {
    let client = this.clients.get(upstream);
    if (client) return client;
    const { keepalive, timeouts } = this.settings;
    const idle = effectiveIdle(keepalive.idle_timeout, keepalive.safety_margin);
    client = new UndiciPool(upstream.origin, {
      connections: socketLimit(keepalive.max_sockets, upstream.maxConnections),
      pipelining: 1,
      keepAliveTimeout: idle,
      keepAliveMaxTimeout: idle,
      keepAliveTimeoutThreshold: keepalive.safety_margin,
      connect: keepReadingConnector(timeouts.connect),
      headersTimeout: timeouts.response_headers,
      bodyTimeout: timeouts.idle_body,
      strictContentLength: true,
    });
    // Socket errors are reported per request through the handler; this only keeps them from being unhandled.
    client.on('connectionError', () => {});
    this.clients.set(upstream, client);
    return client;
  }

  forward(ctx: RequestContext, upstream: Upstream, sink: ExchangeSink): void {
    // undici cannot send Expect, and it closes the socket after every HEAD: both go over node:http.
    if (ctx.expectContinue || ctx.req.method === 'HEAD') return (this.continueTransport ??= new NodeHttpTransport(this.settings)).forward(ctx, upstream, sink);
    const req = ctx.req;
    this.clientFor(upstream).dispatch(
      {
        path: ctx.upstreamPath,
        method: req.method as Dispatcher.HttpMethod,
        headers: ctx.upstreamHeaders,
        body: ctx.body,
      },
      new UndiciExchange(ctx, sink),
    );
  }

  async close(): Promise<void> {
    const all = [...this.clients.values()];
    this.clients.clear();
    await Promise.all([...all.map((c) => c.close().catch(() => {})), this.continueTransport?.close()]);
  }
}
