/**
 * The HTTP/1.1 reverse proxy: the request phases of docs/architecture.md in code.
 *   accept -> validate -> route -> firewall -> rate-limit -> request-limits -> forward-headers
 *   -> pick -> send -> respond -> (retry) -> finish
 * Every path ends in `finish`, exactly once, which releases the upstream and publishes
 * `fulcrum:request:end` for the access log and, later, metrics.
 */
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import { Transform, type TransformCallback } from 'node:stream';
import type { BlockList } from 'node:net';
import { RequestContext } from '../core/context.ts';
import { clientFromForwardedFor, isTrusted, normalizeAddress } from '../core/client-address.ts';
import { requestEnd, requestRetry, upstreamError, upstreamResult } from '../core/events.ts';
import { retryAfterMs, retryReason, usesBudget, type RetryReason } from './retry.ts';
import { ErrorCode, FulcrumError } from '../errors.ts';
import type { Router } from '../router/router.ts';
import type { Upstream } from '../upstream/upstream.ts';
import { buildResponseHeaders, buildUpstreamHeaders, hopByHop, setUpstreamHost, type ForwardingSettings } from './headers.ts';
import { clientBodyFailed, clientGone, noUpstream, requestTimedOut, upstreamFailure } from './status.ts';
import type { ExchangeSink } from '../transport/transport.ts';
import { pipelineFor, pipelineWith } from '../router/router.ts';
import type { Refusal, RequestGuard } from '../core/pipeline.ts';
import { validateRequest } from './request-validation.ts';
import { encodedSlashRefusal, parseRequestTarget, upstreamTarget } from './request-target.ts';

/** What the proxy needs from the listener a request came in on. */
export interface ListenerInfo {
  name: string;
  trusted: BlockList | null;
  forwarding: ForwardingSettings;
  /** The listener's guards (firewall, request limits), run before each route's. */
  guards: readonly RequestGuard[];
  /** Request bodies beyond this are cut with 413 (0: no limit). */
  maxBodyBytes: number;
}

/** Runtime state shared by all requests of one configuration (swapped whole on reload). */
export interface ProxyRuntime {
  router: Router;
}

const kContext = Symbol('fulcrum.context');
type TrackedResponse = ServerResponse & { [kContext]?: RequestContext };

/**
 * The request body on its way upstream: counts bytes and keeps a copy while the body fits in
 * retry.max_body_bytes, so a retry can send it again. Beyond that it streams without keeping.
 */
class CountingBody extends Transform {
  private readonly ctx: RequestContext;
  private readonly keepLimit: number;
  private readonly maxBytes: number;
  constructor(ctx: RequestContext, keepLimit: number, maxBytes: number) {
    super();
    this.ctx = ctx;
    this.keepLimit = keepLimit;
    this.maxBytes = maxBytes;
    ctx.bodyKept = keepLimit > 0 ? [] : null;
  }
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    const ctx = this.ctx;
    ctx.bytesIn += chunk.length;
    if (this.maxBytes > 0 && ctx.bytesIn > this.maxBytes) {
      // A chunked body that outgrew the limit: the upstream request is aborted, the client gets 413.
      callback(new FulcrumError(ErrorCode.BodyTooLarge, `request body larger than ${this.maxBytes} bytes`, 'client', 413, false));
      return;
    }
    if (ctx.bodyKept !== null) {
      if (ctx.bodyKeptBytes + chunk.length <= this.keepLimit) {
        ctx.bodyKept.push(chunk);
        ctx.bodyKeptBytes += chunk.length;
      } else ctx.bodyKept = null;
    }
    callback(null, chunk);
  }
  override _flush(callback: TransformCallback): void {
    this.ctx.bodyEnded = true;
    callback();
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

  /**
   * After a runtime was committed: exchanges that outlive a request (tunnels) whose upstream is in
   * no pool of `pools` any more are closed once `graceMs` has passed; the others go on.
   */
  onCommit(_pools: ReadonlyMap<string, { readonly upstreams: readonly Upstream[] }>, _graceMs: number): void {}

  /** Phase accept: the listener hands over a request (`expectContinue`: the client waits for 100 Continue). */
  handle(req: IncomingMessage, res: ServerResponse, listener: ListenerInfo, expectContinue = false): void {
    const ctx = new RequestContext(req, res, listener.name, normalizeAddress(req.socket.remoteAddress));
    if (listener.trusted !== null && isTrusted(listener.trusted, ctx.peerAddress)) {
      ctx.trustedPeer = true;
      ctx.clientAddress = clientFromForwardedFor(listener.trusted, ctx.peerAddress, headerValue(req.headers['x-forwarded-for']));
    }
    ctx.forwarding = listener.forwarding;
    ctx.proxy = this;
    ctx.expectContinue = expectContinue;
    (res as TrackedResponse)[kContext] = ctx;
    res.on('close', onResponseClose);
    try {
      if (req.headers.upgrade !== undefined && upgradeAsked(req)) return this.refuseUpgrade(ctx);
      this.start(ctx, listener);
    } catch (err) {
      // A bug costs this one request (500, logged with its request id), never the process.
      this.fail(ctx, new FulcrumError(ErrorCode.Internal, `internal error: ${(err as Error)?.message ?? err}`, 'internal', 500, false, err));
    }
  }

  /**
   * A protocol upgrade (WebSocket, ...) is not relayed yet: 501 with a clear reason rather than a
   * plain request the upstream would answer as if no upgrade was asked. `h2c` is the exception:
   * RFC 9113 lets a server ignore it, and curl --http2 asks for it on every http:// request.
   */
  private refuseUpgrade(ctx: RequestContext): void {
    const protocol = ctx.req.headers.upgrade!.trim();
    ctx.extraHeaders = null;
    this.fail(ctx, new FulcrumError(ErrorCode.UpgradeNotSupported, `protocol upgrade to "${protocol.slice(0, 40)}" is not supported yet`, 'client', 501, false));
  }

  /**
   * The client connection failed under the request in progress: its body was malformed
   * (`status` 400) or did not arrive in time (408). Answered if nothing was sent yet, else cut.
   */
  requestBroken(res: ServerResponse, status: number, message: string): void {
    const ctx = (res as TrackedResponse)[kContext];
    if (ctx === undefined || ctx.done) return;
    this.fail(ctx, new FulcrumError(status === 408 ? ErrorCode.ClientTimeout : ErrorCode.BadRequest, message, 'client', status, false));
  }

  /** Phases validate and route, then the guards. */
  private start(ctx: RequestContext, listener: ListenerInfo): void {
    const req = ctx.req;
    const invalid = validateRequest(req, listener.forwarding.underscores);
    if (invalid !== null) return this.refuse(ctx, invalid);
    const url = req.url!;
    const target = parseRequestTarget(url);
    if ('error' in target) return this.refuse(ctx, target.error);
    ctx.authority = target.authority;
    ctx.path = target.path;

    // Phase route: on the normalised path; the upstream gets the target as sent unless the route says otherwise.
    const host = target.authority ?? req.headers.host;
    const match = this.runtime.router.match(host, target.path);
    if (match === 'no-route') return this.fail(ctx, new FulcrumError(ErrorCode.NoRoute, 'no route for this path', 'client', 404, false));
    if (match === 'foreign-host') return this.fail(ctx, new FulcrumError(ErrorCode.MisdirectedHost, `no route for host "${host ?? ''}"`, 'client', 421, false));
    const upstreamPath = upstreamTarget(url, target, match.forwarding);
    if (upstreamPath === null) return this.refuse(ctx, encodedSlashRefusal);
    ctx.upstreamPath = upstreamPath;
    // A `..` that leaves a route (`/admin/..`): a backend that does not resolve it routes on the longer path, so that route's rules apply too.
    const left = target.unresolvedPath === null ? match : this.runtime.router.match(host, target.unresolvedPath);
    ctx.route = match;
    ctx.pool = match.pool;

    // Phases firewall, rate-limit, request-limits.
    const guards = typeof left === 'string' || left === match ? pipelineFor(match, listener, listener.guards) : pipelineWith(match, left, listener.guards);
    this.runGuards(ctx, listener, guards, 0);
  }

  /** Runs guards from `index` on; waits only for a guard that returned a promise. */
  private runGuards(ctx: RequestContext, listener: ListenerInfo, guards: readonly RequestGuard[], index: number): void {
    for (let i = index; i < guards.length; i++) {
      const verdict = guards[i].check(ctx);
      if (verdict === null) continue;
      if (verdict instanceof Promise) {
        verdict.then(
          (answer) => {
            if (ctx.done) return;
            if (answer !== null) this.refuse(ctx, answer);
            else this.runGuards(ctx, listener, guards, i + 1);
          },
          (err: unknown) => this.fail(ctx, new FulcrumError(ErrorCode.Internal, `guard failed: ${(err as Error)?.message ?? err}`, 'internal', 500, false, err)),
        );
        return;
      }
      return this.refuse(ctx, verdict);
    }
    this.forward(ctx, listener);
  }

  /** Phase forward-headers, then the first attempt. */
  private forward(ctx: RequestContext, listener: ListenerInfo): void {
    const req = ctx.req;
    const pool = ctx.pool!;
    ctx.countedPool = pool;
    pool.active++;
    const headers = buildUpstreamHeaders(ctx, req.rawHeaders, listener.forwarding, pool.hostRewrite);
    if (headers === null) return this.fail(ctx, new FulcrumError(ErrorCode.BadRequest, 'more than one Host header', 'client', 400, false));
    // Absolute-form: the target's authority is the host (RFC 9112 section 3.2.2).
    if (ctx.authority !== null && pool.hostRewrite.kind === 'preserve') headers[1] = ctx.authority;
    ctx.upstreamHeaders = headers;
    if (hasBody(req)) {
      const body = new CountingBody(ctx, pool.settings.retry.max_body_bytes, listener.maxBodyBytes);
      req.on('error', (err) => body.destroy(clientBodyFailed(err)));
      // The body's own failures (over max_body_bytes, the client gone) end the request here; a
      // transport may listen too, but an 'error' nobody hears would take the process down.
      body.on('error', (err) => (req.socket.destroyed ? this.clientClosed(ctx) : this.fail(ctx, err instanceof FulcrumError ? err : clientBodyFailed(err))));
      req.pipe(body);
      ctx.body = body;
      ctx.bodyStream = body;
    }
    if (ctx.expectContinue) {
      // The upstream decides whether it wants the body: its 100 (or its final answer) is relayed.
      if (pool.transport.relaysContinue) headers.push('expect', '100-continue');
      else ctx.res.writeContinue();
    }
    const limit = pool.settings.timeouts.request;
    if (limit > 0) ctx.timer = setTimeout(onRequestTimeout, limit, this, ctx);
    this.attempt(ctx);
  }

  /** A guard's or the validator's answer: the status, its headers, nothing sent upstream. */
  private refuse(ctx: RequestContext, refusal: Refusal): void {
    ctx.extraHeaders = refusal.headers ?? null;
    this.fail(ctx, new FulcrumError(refusal.code, refusal.message, 'client', refusal.status, false));
  }

  /** Phases pick and send: one attempt on one upstream. */
  private attempt(ctx: RequestContext, sameAllowed = false): void {
    let pool = ctx.pool!;
    // Panic (Envoy's healthy_panic_threshold): too few upstreams up and no backup that can serve: every one the operator allows may be picked.
    let upstream: Upstream | undefined;
    if (pool.inPanic()) {
      if (ctx.tried === null) panicked.add(ctx);
      upstream = pool.pickInPanic(ctx, ctx.tried);
    } else upstream = ctx.tried === null ? pool.pick(ctx) : pool.pickExcept(ctx, ctx.tried);
    // A stale keep-alive socket says nothing against its upstream: with no other, the same one may go again
    // (with a backup pool waiting, only once: a second reset sends the request there).
    const last = ctx.upstream;
    if (upstream === undefined && sameAllowed && last !== null && last.available() && (pool.backup === null || ctx.tried!.indexOf(last) === ctx.tried!.lastIndexOf(last))) {
      upstream = last;
    }
    if (upstream === undefined && pool.backup !== null && (pool.eligible().length === 0 || ctx.tried !== null)) {
      // Every primary upstream is down (or failed this request): the backup pool serves, if it can.
      const backup = pool.backup;
      upstream = ctx.tried === null ? backup.pick(ctx) : backup.pickExcept(ctx, ctx.tried);
      if (upstream !== undefined) ctx.pool = pool = backup;
    }
    if (upstream === undefined) return this.fail(ctx, ctx.retryCause !== null ? panicAnswer(ctx, ctx.retryCause) : noUpstream(ctx.countedPool!.name));
    ctx.upstream = upstream;
    ctx.holding = true;
    ctx.attempts++;
    upstream.inFlight++;
    setUpstreamHost(ctx.upstreamHeaders, pool.hostRewrite, upstream.hostHeader);
    pool.transport.forward(ctx, upstream, this);
  }

  /**
   * An interim (1xx) answer from the upstream, relayed ahead of the final one (RFC 9110 section
   * 15.2): never to an HTTP/1.0 client, 100 only to a client that asked for it, and only once.
   */
  onInformational(ctx: RequestContext, status: number, reason: string, rawHeaders: readonly (Buffer | string)[]): void {
    const res = ctx.res as ServerResponse & { _writeRaw?: (data: string, encoding: BufferEncoding) => boolean; _sent100?: boolean };
    if (ctx.done || ctx.discarding || res.headersSent || ctx.req.httpVersionMinor === 0 || status === 101) return;
    if (status === 100) {
      if (!ctx.expectContinue || res._sent100 === true) return;
      res.writeContinue();
      return;
    }
    if (typeof res._writeRaw !== 'function') return;
    res._writeRaw(informationalHead(status, reason, rawHeaders), 'latin1');
  }

  /** Phase respond: upstream headers to the client (or, for a status worth retrying, to the bin). */
  onResponse(ctx: RequestContext, status: number, rawHeaders: readonly (Buffer | string)[], reason?: string): boolean {
    ctx.lastStatus = status;
    if (upstreamResult.hasSubscribers) upstreamResult.publish({ upstream: ctx.upstream!, status, failure: null });
    if (status >= 500 && retryReason(ctx, null, status, true) === 'status' && hasAlternative(ctx)) {
      const wait = retryAfterMs(findHeader(rawHeaders, 'retry-after'));
      if (wait <= ctx.pool!.settings.retry.max_retry_after) {
        // Read the answer to its end and drop it, so the socket stays reusable; retry in onEnd.
        ctx.discarding = true;
        ctx.retryDelay = wait;
        return true;
      }
    }
    const res = ctx.res;
    ctx.status = status;
    const bodyDone = requestBodyDone(ctx);
    let headers = buildResponseHeaders(ctx, rawHeaders, ctx.forwarding!, this.draining || !bodyDone);
    // 1xx and 204 carry no framing headers (RFC 9110 sections 8.6, 15.3.5); 304 and HEAD keep Content-Length.
    if (status === 204) headers = withoutFraming(headers);
    // The upstream answered before the upload ended (413, 401, a redirect): stop sending the body;
    // the upstream connection is dropped after this answer and the client's closed after it.
    if (!bodyDone && status >= 300) stopUpload(ctx);
    try {
      // The reason phrase as sent (RFC 9112 section 4: HTAB, SP, VCHAR, obs-text), else the standard one.
      if (reason !== undefined && validReason(reason)) res.writeHead(status, reason, headers);
      else res.writeHead(status, headers);
    } catch (err) {
      // writeHead keeps what it refused: the error answer must not trip over it again.
      res.statusMessage = '';
      // A header Node refuses to write (invalid characters): the response is unusable.
      this.onError(ctx, Object.assign(new Error(`invalid response header: ${(err as Error).message}`), { code: 'ERR_INVALID_CHAR' }), true);
      return false;
    }
    return true;
  }

  onData(ctx: RequestContext, chunk: Buffer): boolean {
    if (ctx.discarding) return true;
    ctx.bytesOut += chunk.length;
    return ctx.res.write(chunk);
  }

  onEnd(ctx: RequestContext, trailers: readonly (Buffer | string)[] | null): void {
    if (ctx.discarding) {
      ctx.discarding = false;
      const upstream = ctx.upstream!;
      release(ctx);
      ctx.abort = null;
      this.retry(ctx, upstream, 'status', `status ${ctx.lastStatus}`, ctx.retryDelay);
      return;
    }
    if (trailers !== null && trailers.length > 0 && ctx.res.chunkedEncoding) {
      const list: [string, string][] = [];
      for (let i = 0; i < trailers.length; i += 2) list.push([trailers[i].toString(), trailers[i + 1].toString()]);
      try {
        ctx.res.addTrailers(list);
      } catch {
        // Trailers are advisory; a bad one is dropped rather than failing a complete response.
      }
    }
    // A complete answer before the upload ended (a 2xx that did not read it all): the rest is not sent.
    if (!ctx.bodyAbandoned && !requestBodyDone(ctx)) stopUpload(ctx);
    ctx.res.end();
    ctx.upstream!.served++;
    this.finish(ctx);
  }

  /**
   * Phase retry, or the error answer: one decision per failed attempt. `reused`: the attempt went
   * out on a keep-alive socket that had carried an earlier exchange.
   */
  onError(ctx: RequestContext, err: unknown, sent: boolean, reused = false): void {
    if (ctx.done) return;
    const upstream = ctx.upstream!;
    const failure = upstreamFailure(err, sent);
    // A reused socket reset before any response byte: most likely closed by the upstream while idle (the keep-alive race).
    const stale = reused && sent && !ctx.discarding && !ctx.res.headersSent && failure.code === ErrorCode.UpstreamReset;
    const reason = retryReason(ctx, failure, 0, sent, stale);
    // A stale socket that is retried is no failure at all; the other cases below still show (a client got an error) but say nothing about health.
    if (failure.source === 'upstream' && reason !== 'stale-connection') {
      upstream.failures++;
      if (upstreamError.hasSubscribers) upstreamError.publish({ ctx, upstream, error: failure });
      // Published before the retry picks, so an upstream that refused is already out of its way.
      if (!stale && !clientsDoing(ctx, failure) && upstreamResult.hasSubscribers) upstreamResult.publish({ upstream, status: 0, failure });
    }
    ctx.discarding = false;
    release(ctx);
    ctx.abort = null;
    if (reason !== null) {
      ctx.retryCause = failure;
      this.retry(ctx, upstream, reason, failure.message, 0);
      return;
    }
    this.fail(ctx, panicAnswer(ctx, failure));
  }

  /** Phase retry: the next attempt, on another upstream when there is one. */
  private retry(ctx: RequestContext, upstream: Upstream, reason: RetryReason, why: string, delay: number): void {
    (ctx.tried ??= []).push(upstream);
    if (!ctx.retrying && usesBudget(reason)) {
      ctx.retrying = true;
      ctx.countedPool!.retrying++;
    }
    // A body the upstream may have read goes again from the kept copy.
    if (reason !== 'connect-failure' && ctx.bodyStream !== null) ctx.body = Buffer.concat(ctx.bodyKept!);
    if (requestRetry.hasSubscribers) requestRetry.publish({ ctx, upstream, reason: `${reason}: ${why}` });
    // After a reset the same upstream may go again when it is the only one (nothing says it is down).
    const sameAllowed = reason === 'reset' || reason === 'stale-connection';
    if (delay > 0) ctx.timerRetry = setTimeout(retryLater, delay, this, ctx, sameAllowed);
    else this.attempt(ctx, sameAllowed);
  }

  /** Runs a delayed retry unless the request ended meanwhile. */
  retryNow(ctx: RequestContext, sameAllowed: boolean): void {
    ctx.timerRetry = null;
    if (!ctx.done) this.attempt(ctx, sameAllowed);
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
      // After a refused upgrade the parser has stopped reading HTTP (what follows may be another protocol).
      if (this.draining || error.status === 400 || error.status === 501 || !requestBodyDone(ctx)) headers.push('connection', 'close');
      if (ctx.extraHeaders !== null) headers.push(...ctx.extraHeaders);
      else if (error.status === 503) headers.push('retry-after', '1');
      try {
        res.statusMessage = '';
        res.writeHead(error.status, headers);
        res.end(ctx.req.method === 'HEAD' ? undefined : body);
      } catch {
        // Never a crash for an answer that cannot be written: the connection is cut instead.
        res.destroy();
      }
    }
    if (ctx.bodyStream !== null && !ctx.bodyStream.destroyed) {
      ctx.req.unpipe(ctx.bodyStream);
      ctx.bodyStream.destroy();
    }
    // Finish first: aborting calls back into onError at once, which must find the request done.
    const abort = ctx.abort;
    ctx.abort = null;
    this.finish(ctx);
    if (abort !== null) abort(error);
  }

  /** Phase finish: exactly once per request. */
  private finish(ctx: RequestContext): void {
    if (ctx.done) return;
    ctx.done = true;
    if (ctx.timer !== null) clearTimeout(ctx.timer);
    if (ctx.timerRetry !== null) clearTimeout(ctx.timerRetry);
    release(ctx);
    const pool = ctx.countedPool;
    if (pool !== null) {
      pool.active--;
      if (ctx.retrying) pool.retrying--;
    }
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

/** True when the client asks to switch protocols (`Connection: upgrade` plus `Upgrade`), other than h2c. */
function upgradeAsked(req: IncomingMessage): boolean {
  const connection = req.headers.connection;
  if (connection === undefined || !/(?:^|,)\s*upgrade\s*(?:,|$)/i.test(connection)) return false;
  const protocols = req.headers.upgrade!.split(',').map((p) => p.trim().toLowerCase());
  return !protocols.every((p) => p === 'h2c');
}

/** The status line and headers of a relayed 1xx answer (hop-by-hop fields left out). */
function informationalHead(status: number, reason: string, raw: readonly (Buffer | string)[]): string {
  let head = `HTTP/1.1 ${status} ${reason}\r\n`;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i].toString('latin1');
    const lower = name.toLowerCase();
    if (hopByHop.has(lower) || lower === 'content-length') continue;
    head += `${name}: ${raw[i + 1].toString('latin1')}\r\n`;
  }
  return head + '\r\n';
}

/** True for a reason phrase Node will write as is: HTAB, SP, VCHAR and obs-text (RFC 9112 section 4). */
function validReason(reason: string): boolean {
  for (let i = 0; i < reason.length; i++) {
    const c = reason.charCodeAt(i);
    if (c > 0xff || c === 0x7f || (c < 0x20 && c !== 0x09)) return false;
  }
  return true;
}

/** A flat header list without Content-Length and Transfer-Encoding. */
function withoutFraming(headers: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < headers.length; i += 2) {
    const lower = headers[i].toLowerCase();
    if (lower !== 'content-length' && lower !== 'transfer-encoding') out.push(headers[i], headers[i + 1]);
  }
  return out;
}

function onResponseClose(this: TrackedResponse): void {
  const ctx = this[kContext];
  if (ctx !== undefined && !ctx.done && !this.writableFinished) ctx.proxy!.clientClosed(ctx);
}

function retryLater(proxy: HttpProxy, ctx: RequestContext, sameAllowed: boolean): void {
  proxy.retryNow(ctx, sameAllowed);
}

/**
 * True when a failure came from how the client's body was going, not from the upstream's health:
 * reset while the body was still on its way (the upstream answered early, a 413 or 401, and
 * closed without reading the rest: the kernel then resets and the answer may be lost, or cut
 * while it is read), or no response headers in time while the client had not finished sending
 * the body.
 */
function clientsDoing(ctx: RequestContext, failure: FulcrumError): boolean {
  // It answered before the upload ended (bodyAbandoned): a reset while that answer is read comes from the same early close.
  if (ctx.bodyAbandoned) return failure.code === ErrorCode.UpstreamReset;
  if (ctx.bodyStream === null || ctx.bodyEnded || ctx.discarding || ctx.res.headersSent) return false;
  return failure.code === ErrorCode.UpstreamReset || failure.code === ErrorCode.HeadersTimeout;
}

/** Requests whose first pick was made in panic mode (rare: nothing is added outside panic). */
const panicked = new WeakSet<RequestContext>();

/**
 * The answer for a failure that ends a request. In panic mode upstreams known to be down are
 * tried too; when a request that came while the pool was in panic found none that even took
 * the connection, it gets what it would have had without panic: 503, nothing available.
 */
function panicAnswer(ctx: RequestContext, failure: FulcrumError): FulcrumError {
  if (failure.source !== 'upstream' || !failure.retryable || !panicked.has(ctx)) return failure;
  const name = ctx.countedPool!.name;
  return new FulcrumError(ErrorCode.NoUpstream, `no available upstream in pool "${name}" (too few up: panic mode tried them anyway; last: ${failure.message})`, 'upstream', 503, false, failure);
}

/** True when an upstream not tried yet (or the backup pool) could take a retry: else the answer in hand is kept. */
function hasAlternative(ctx: RequestContext): boolean {
  const pool = ctx.pool!;
  for (const u of pool.eligible()) if (u !== ctx.upstream && u.available() && (ctx.tried === null || !ctx.tried.includes(u))) return true;
  return pool.backup !== null && pool.backup.eligible().some((u) => u.available());
}

/** The first value of a header in a raw list, case-insensitively. */
function findHeader(raw: readonly (Buffer | string)[], lower: string): string | undefined {
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i].toString('latin1');
    if (name.length === lower.length && name.toLowerCase() === lower) return raw[i + 1].toString('latin1');
  }
  return undefined;
}

function onRequestTimeout(proxy: HttpProxy, ctx: RequestContext): void {
  ctx.timer = null;
  proxy.fail(ctx, requestTimedOut(ctx.pool!.settings.timeouts.request));
}

/** True when the client's request body was read to its end (or there was none). */
function requestBodyDone(ctx: RequestContext): boolean {
  return ctx.req.readableEnded || !hasBody(ctx.req);
}

/** The upstream answered before the client's body ended: nothing more of it is read or sent upstream. */
function stopUpload(ctx: RequestContext): void {
  ctx.bodyAbandoned = true;
  if (ctx.bodyStream !== null) ctx.req.unpipe(ctx.bodyStream);
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

function statusText(status: number): string {
  return status === 499 ? 'Client Closed Request' : (STATUS_CODES[status] ?? 'Error');
}
