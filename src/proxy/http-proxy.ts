/**
 * The HTTP/1.1 reverse proxy: the request phases of docs/architecture.md in code.
 *   accept -> route -> forward-headers -> pick -> send -> respond -> (retry) -> finish
 * Every path ends in `finish`, exactly once, which releases the upstream and publishes
 * `fulcrum:request:end` for the access log and, later, metrics.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Transform, type TransformCallback } from 'node:stream';
import type { BlockList } from 'node:net';
import { RequestContext } from '../core/context.ts';
import { clientFromForwardedFor, isTrusted, normalizeAddress } from '../core/client-address.ts';
import { requestEnd, upstreamError } from '../core/events.ts';
import { ErrorCode, FulcrumError } from '../errors.ts';
import type { Router } from '../router/router.ts';
import type { Upstream } from '../upstream/upstream.ts';
import { buildResponseHeaders, buildUpstreamHeaders, setUpstreamHost, type ForwardingSettings } from './headers.ts';
import { clientBodyFailed, clientGone, noUpstream, requestTimedOut, upstreamFailure } from './status.ts';
import type { ExchangeSink } from './transport.ts';

/** What the proxy needs from the listener a request came in on. */
export interface ListenerInfo {
  name: string;
  trusted: BlockList | null;
  forwarding: ForwardingSettings;
}

/** Runtime state shared by all requests of one configuration (swapped whole on reload). */
export interface ProxyRuntime {
  router: Router;
}

const kContext = Symbol('fulcrum.context');
type TrackedResponse = ServerResponse & { [kContext]?: RequestContext };

/** Counts request body bytes on their way upstream; it never buffers beyond the stream's own window. */
class CountingBody extends Transform {
  private readonly ctx: RequestContext;
  constructor(ctx: RequestContext) {
    super();
    this.ctx = ctx;
  }
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.ctx.bytesIn += chunk.length;
    callback(null, chunk);
  }
}

/** True when the request has a body to stream (RFC 9112 section 6.3). */
function hasBody(req: IncomingMessage): boolean {
  const te = req.headers['transfer-encoding'];
  if (te !== undefined) return true;
  const cl = req.headers['content-length'];
  return cl !== undefined && cl !== '0';
}

/** The reverse proxy for every HTTP listener of one balancer. */
export class HttpProxy implements ExchangeSink {
  runtime: ProxyRuntime;
  /** Set during graceful shutdown: responses carry `Connection: close`. */
  draining = false;

  constructor(runtime: ProxyRuntime) {
    this.runtime = runtime;
  }

  /** Phase accept: the listener hands over a request. */
  handle(req: IncomingMessage, res: ServerResponse, listener: ListenerInfo): void {
    const ctx = new RequestContext(req, res, listener.name, normalizeAddress(req.socket.remoteAddress));
    if (listener.trusted !== null && isTrusted(listener.trusted, ctx.peerAddress)) {
      ctx.trustedPeer = true;
      ctx.clientAddress = clientFromForwardedFor(listener.trusted, ctx.peerAddress, headerValue(req.headers['x-forwarded-for']));
    }
    ctx.forwarding = listener.forwarding;
    ctx.proxy = this;
    (res as TrackedResponse)[kContext] = ctx;
    res.on('close', onResponseClose);

    // Phase route.
    const match = this.runtime.router.match(req.headers.host, req.url ?? '/');
    if (match === 'no-route') return this.fail(ctx, new FulcrumError(ErrorCode.NoRoute, 'no route for this path', 'client', 404, false));
    if (match === 'foreign-host') return this.fail(ctx, new FulcrumError(ErrorCode.MisdirectedHost, `no route for host "${req.headers.host ?? ''}"`, 'client', 421, false));
    ctx.route = match;
    const pool = match.pool;
    ctx.pool = pool;

    // Phase forward-headers.
    const headers = buildUpstreamHeaders(ctx, req.rawHeaders, listener.forwarding, pool.hostRewrite);
    if (headers === null) return this.fail(ctx, new FulcrumError(ErrorCode.BadRequest, 'more than one Host header', 'client', 400, false));
    ctx.upstreamHeaders = headers;
    if (hasBody(req)) {
      const body = new CountingBody(ctx);
      req.on('error', (err) => body.destroy(clientBodyFailed(err)));
      req.pipe(body);
      ctx.body = body;
    }
    const limit = pool.settings.timeouts.request;
    if (limit > 0) ctx.timer = setTimeout(onRequestTimeout, limit, this, ctx);
    this.attempt(ctx);
  }

  /** Phases pick and send: one attempt on one upstream. */
  private attempt(ctx: RequestContext): void {
    const pool = ctx.pool!;
    const upstream = ctx.tried === null ? pool.pick(ctx) : pool.pickExcept(ctx, ctx.tried);
    if (upstream === undefined) return this.fail(ctx, ctx.retryCause ?? noUpstream(pool.name));
    ctx.upstream = upstream;
    ctx.holding = true;
    ctx.attempts++;
    upstream.inFlight++;
    setUpstreamHost(ctx.upstreamHeaders, pool.hostRewrite, upstream.hostHeader);
    pool.transport.forward(ctx, upstream, this);
  }

  /** Phase respond: upstream headers to the client. */
  onResponse(ctx: RequestContext, status: number, rawHeaders: readonly (Buffer | string)[]): boolean {
    const res = ctx.res;
    ctx.status = status;
    const headers = buildResponseHeaders(ctx, rawHeaders, ctx.forwarding!, this.draining || !requestBodyDone(ctx));
    try {
      res.writeHead(status, headers);
    } catch (err) {
      // A header Node refuses to write (invalid characters): the response is unusable.
      this.onError(ctx, Object.assign(new Error(`invalid response header: ${(err as Error).message}`), { code: 'ERR_INVALID_CHAR' }), true);
      return false;
    }
    return true;
  }

  onData(ctx: RequestContext, chunk: Buffer): boolean {
    ctx.bytesOut += chunk.length;
    return ctx.res.write(chunk);
  }

  onEnd(ctx: RequestContext, trailers: readonly (Buffer | string)[] | null): void {
    if (trailers !== null && trailers.length > 0 && ctx.res.chunkedEncoding) {
      const list: [string, string][] = [];
      for (let i = 0; i < trailers.length; i += 2) list.push([trailers[i].toString(), trailers[i + 1].toString()]);
      try {
        ctx.res.addTrailers(list);
      } catch {
        // Trailers are advisory; a bad one is dropped rather than failing a complete response.
      }
    }
    ctx.res.end();
    ctx.upstream!.served++;
    this.finish(ctx);
  }

  /** Phase retry, or the error answer: one decision per failed attempt. */
  onError(ctx: RequestContext, err: unknown, sent: boolean): void {
    if (ctx.done) return;
    const upstream = ctx.upstream!;
    const failure = upstreamFailure(err, sent);
    if (failure.source === 'upstream') {
      upstream.failures++;
      if (upstreamError.hasSubscribers) upstreamError.publish({ ctx, upstream, error: failure });
    }
    release(ctx);
    ctx.abort = null;
    // Retry only what the upstream never saw, before any byte went to the client.
    if (failure.retryable && !ctx.res.headersSent && ctx.attempts < ctx.pool!.settings.retry.max_attempts) {
      (ctx.tried ??= []).push(upstream);
      ctx.retryCause = failure;
      this.attempt(ctx);
      return;
    }
    this.fail(ctx, failure);
  }

  /** The error answer: a status and a short text body, or a cut connection once bytes were sent. */
  fail(ctx: RequestContext, error: FulcrumError): void {
    if (ctx.done) return;
    ctx.error = error;
    const res = ctx.res;
    if (ctx.clientGone || error.status === 499) {
      ctx.status = 499;
    } else if (res.headersSent) {
      // Never let a cut response look complete: destroy the client socket mid-body.
      res.destroy();
    } else {
      ctx.status = error.status;
      const body = `${error.status} ${statusText(error.status)}: ${error.message}\nrequest id: ${ctx.requestIdForUpstream ?? ctx.id}\n`;
      const headers: string[] = ['content-type', 'text/plain; charset=utf-8', 'content-length', String(Buffer.byteLength(body)), 'x-request-id', ctx.requestIdForUpstream ?? ctx.id];
      // A malformed request or an unread body leaves the connection in doubt: close it.
      if (this.draining || error.status === 400 || !requestBodyDone(ctx)) headers.push('connection', 'close');
      if (error.status === 503) headers.push('retry-after', '1');
      res.writeHead(error.status, headers);
      res.end(ctx.req.method === 'HEAD' ? undefined : body);
    }
    if (ctx.body !== null && !ctx.body.destroyed) {
      ctx.req.unpipe(ctx.body);
      ctx.body.destroy();
    }
    if (ctx.abort !== null) ctx.abort(error);
    this.finish(ctx);
  }

  /** Phase finish: exactly once per request. */
  private finish(ctx: RequestContext): void {
    if (ctx.done) return;
    ctx.done = true;
    if (ctx.timer !== null) clearTimeout(ctx.timer);
    release(ctx);
    ctx.duration = performance.now() - ctx.start;
    if (requestEnd.hasSubscribers) requestEnd.publish({ ctx });
  }

  /** The client went away before the response was complete. */
  clientClosed(ctx: RequestContext): void {
    if (ctx.done) return;
    ctx.clientGone = true;
    this.fail(ctx, clientGone());
  }
}

function onResponseClose(this: TrackedResponse): void {
  const ctx = this[kContext];
  if (ctx !== undefined && !ctx.done && !this.writableFinished) ctx.proxy!.clientClosed(ctx);
}

function onRequestTimeout(proxy: HttpProxy, ctx: RequestContext): void {
  ctx.timer = null;
  proxy.fail(ctx, requestTimedOut(ctx.pool!.settings.timeouts.request));
}

/** True when the client's request body was read to its end (or there was none). */
function requestBodyDone(ctx: RequestContext): boolean {
  return ctx.body === null || ctx.req.readableEnded;
}

/** Stops counting the request against its upstream (once). */
function release(ctx: RequestContext): void {
  if (ctx.holding) {
    ctx.holding = false;
    ctx.upstream!.inFlight--;
  }
}

function headerValue(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v.join(', ') : v;
}

const texts: Record<number, string> = { 400: 'Bad Request', 404: 'Not Found', 421: 'Misdirected Request', 499: 'Client Closed Request', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout' };
function statusText(status: number): string {
  return texts[status] ?? 'Error';
}
