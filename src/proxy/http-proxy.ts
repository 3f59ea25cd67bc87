/**
 * The HTTP/1.1 reverse proxy: the request phases of docs/architecture.md in code.
 *   accept -> validate -> route -> firewall -> rate-limit -> request-limits -> forward-headers
 *   -> pick -> send -> respond -> (retry) -> finish
 * Every path ends in `finish`, exactly once, which releases the upstream and publishes
 * `fulcrum:request:end` for the access log and, later, metrics. A forward-proxy exchange
 * (absolute-form or CONNECT on a `forward_proxy` listener, a `/forward?url=` route) has no route
 * pool: its forward phase (src/forward/forward-proxy.ts) runs after the guards and makes the
 * allowed destination its pool, before forward-headers (docs/forward-proxy.md).
 */
import { STATUS_CODES } from '../node-builtins.ts';
import { Transform, type TransformCallback } from 'node:stream';
import type { BlockList, Socket } from 'node:net';
import type { RequestHead } from '../core/context.ts';
import { clientFromForwardedFor, isTrusted, normalizeAddress } from '../core/client-address.ts';
import { requestEnd, requestRetry, tunnelClose, tunnelOpen, upstreamError, upstreamResult, upstreamState, type UpstreamStateEvent } from '../core/events.ts';
import type { Downstream } from '../core/downstream.ts';
import { retryAfterMs, retryReason, usesBudget, type RetryReason } from './retry.ts';
import { ErrorCode, FulcrumError } from '../errors.ts';
import type { Router } from '../router/router.ts';
import type { Upstream } from '../upstream/upstream.ts';
import { buildResponseHeaders, buildUpstreamHeaders, setUpstreamHost, type ForwardingSettings } from './headers.ts';
import { clientBodyFailed, clientGone, noUpstream, requestTimedOut, upstreamFailure } from './status.ts';
import { pipelineFor, pipelineWith } from '../router/router.ts';
import type { Refusal, RequestGuard } from '../core/pipeline.ts';
import { validateRequest } from './request-validation.ts';
import { encodedSlashRefusal, parseRequestTarget, upstreamTarget } from './request-target.ts';
import { Exchange, type ExchangeCore } from './exchange.ts';
import { Attempt, type AttemptHandler } from './attempt.ts';
import { OpenTunnels } from './open-tunnels.ts';
import { Tunnel, type TunnelCloseReason, type TunnelLimits } from '../downstream/tunnel.ts';
import type { Logger } from '../observe/logger.ts';
import { switchProblem, upgradeProtocols, webSocketRefusal } from './websocket.ts';
import { GrpcWebDownstream, toGrpcHeaders } from './grpc-web.ts';
import { encodeGrpcMessage, GrpcStatus, grpcStatusFor, grpcKind, grpcStatusOf, grpcTimeoutMs } from './grpc.ts';
import { confineRouteAnswer, decideForward, dropProxyHeaders, dropSiteCredentials, isAbsoluteForm, type ForwardCore, type ForwardProxy } from '../forward/forward-proxy.ts';
import { DestinationClients } from '../forward/destination-clients.ts';

/** A client's own deadline timer may fire a little before Fulcrum's: within this it counts as the deadline. */
const DEADLINE_SLACK_MS = 20;

/** What the proxy needs from the listener a request came in on. */
export interface ListenerInfo {
  name: string;
  trusted: BlockList | null;
  forwarding: ForwardingSettings;
  /** The listener's guards (firewall, request limits), run before each route's. */
  guards: readonly RequestGuard[];
  /** Request bodies beyond this are cut with 413 (0: no limit). */
  maxBodyBytes: number;
  /** The listener's tunnel limits (WebSocket, CONNECT). */
  tunnels: TunnelLimits;
  /** The listener's forward proxy (absolute-form requests and CONNECT go to it), or null. */
  forward: ForwardProxy | null;
}

/** Runtime state shared by all requests of one configuration (swapped whole on reload). */
export interface ProxyRuntime {
  router: Router;
}

/**
 * The request body on its way upstream: counts bytes and keeps a copy while the body fits in
 * retry.max_body_bytes, so a retry can send it again. Beyond that it streams without keeping.
 */
class CountingBody extends Transform {
  private readonly ctx: Exchange;
  private readonly keepLimit: number;
  private readonly maxBytes: number;
  constructor(ctx: Exchange, keepLimit: number, maxBytes: number) {
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

/**
 * The exchange core for every HTTP listener of one balancer. It speaks to the client only
 * through the exchange's `Downstream` and to upstreams only through `Attempt`s: no protocol is
 * named here.
 */
export class HttpProxy implements AttemptHandler, ExchangeCore, ForwardCore<ListenerInfo> {
  runtime: ProxyRuntime;
  /** Set during graceful shutdown: responses carry `Connection: close`. */
  draining = false;
  /** Open tunnels by upstream (drain, removal, shutdown act on them). */
  readonly tunnels = new OpenTunnels();
  /** Open forward-proxy tunnels (CONNECT, or an upgrade through an absolute-form request): shutdown closes them; reloads and drains of pools never do. */
  readonly forwardTunnels = new OpenTunnels();
  /** The forward proxy's clients toward destinations: at most 256, least recently used closed first. */
  readonly destinations = new DestinationClients();
  /** How long a drained or removed upstream's tunnels may go on (shutdown.grace_period), set by each commit. */
  private graceMs = 30_000;
  /** The upstreams of the committed pools (null before the first commit): a handshake that completes on another is for a removed upstream. */
  private liveUpstreams: ReadonlySet<Upstream> | null = null;
  private shutdownTimer: NodeJS.Timeout | null = null;
  private readonly onUpstreamState = (message: unknown): void => {
    const c = message as UpstreamStateEvent;
    const u = c.upstream as Upstream;
    if (this.tunnels.countFor(u) === 0) return;
    if ((c.field === 'draining' && c.to === true) || (c.field === 'enabled' && c.to === false)) this.tunnels.closeLater(u, this.graceMs, 'drained');
    else if ((c.field === 'draining' || c.field === 'enabled') && !u.draining && u.enabled) this.tunnels.keep(u);
  };

  /** Where failures of Fulcrum's own code are logged (the balancer's logger). */
  logger: Logger | null;

  constructor(runtime: ProxyRuntime, logger: Logger | null = null) {
    this.runtime = runtime;
    this.logger = logger;
  }

  /**
   * After a runtime was committed: tunnels to upstreams that no pool of `pools` holds any more
   * close once `graceMs` has passed; those to surviving upstreams go on (and a removal undone in
   * time keeps them).
   */
  onCommit(pools: ReadonlyMap<string, { readonly upstreams: readonly Upstream[] }>, graceMs: number): void {
    this.graceMs = graceMs;
    const live = new Set<Upstream>();
    for (const pool of pools.values()) for (const u of pool.upstreams) live.add(u);
    this.liveUpstreams = live;
    for (const u of this.tunnels.upstreams()) {
      if (!live.has(u)) this.tunnels.closeLater(u, graceMs, 'removed');
      else if (!u.draining && u.enabled) this.tunnels.keep(u);
    }
  }

  /**
   * Graceful shutdown starts: answers carry `Connection: close`, and tunnels still open when
   * `graceMs` is over are closed (just before the listeners cut what is left).
   */
  shutdown(graceMs: number): void {
    this.draining = true;
    this.shutdownTimer ??= setTimeout(() => {
      this.tunnels.closeAll('shutdown');
      this.forwardTunnels.closeAll('shutdown');
    }, graceMs);
  }

  /**
   * Shutdown's end: tunnels left (forward-proxy ones too) are closed now; resolves once every
   * tunnel has ended (both sides closed and its exchange finished; a side that does not close is
   * destroyed within 5 s) and the forward proxy's destination clients are closed.
   */
  async closeTunnels(): Promise<void> {
    if (this.shutdownTimer !== null) clearTimeout(this.shutdownTimer);
    this.tunnels.closeAll('shutdown');
    this.forwardTunnels.closeAll('shutdown');
    await Promise.all([this.tunnels.whenEmpty(), this.forwardTunnels.whenEmpty()]);
    upstreamState.unsubscribe(this.onUpstreamState);
    // The forward proxy's destination sockets: idle ones now, busy ones when their exchange ends.
    await this.destinations.close();
  }

  /** Phase accept: a downstream hands over a request. */
  handle(req: RequestHead, downstream: Downstream, listener: ListenerInfo): void {
    // A gRPC-Web call is answered through a translator; the rest of the core sees a gRPC call.
    const grpc = grpcKind(req);
    if (grpc === 'web' || grpc === 'web-text') downstream = new GrpcWebDownstream(downstream, grpc === 'web' ? 'binary' : 'text', req);
    const ctx = new Exchange(this, req, downstream, listener.name, normalizeAddress(downstream.remoteAddress));
    downstream.owner = ctx;
    try {
      if (listener.trusted !== null && isTrusted(listener.trusted, ctx.peerAddress)) {
        ctx.trustedPeer = true;
        ctx.clientAddress = clientFromForwardedFor(listener.trusted, ctx.peerAddress, headerValue(req.headers['x-forwarded-for']));
      }
      ctx.forwarding = listener.forwarding;
      ctx.grpc = grpc !== null;
      // On a forward-proxy listener, CONNECT and absolute-form requests name their destination (origin-form ones still go to routes).
      const forwarder = listener.forward;
      if (forwarder !== null && (req.method === 'CONNECT' || isAbsoluteForm(req.url))) {
        ctx.forwarder = forwarder;
        ctx.forward = { kind: req.method === 'CONNECT' ? 'connect' : 'absolute', decision: null, rule: null, reason: null };
        // A CONNECT is a tunnel from the start: whatever it is answered, its connection is not HTTP afterwards.
        if (req.method === 'CONNECT') {
          ctx.upgrade = 'connect';
          return this.start(ctx, listener);
        }
      }
      if (req.headers.upgrade !== undefined) {
        const protocols = upgradeProtocols(req);
        // h2c is ignored (RFC 9113 lets a server; curl --http2 asks on every http:// request): a plain request.
        if (protocols !== null && !protocols.every((p) => p === 'h2c')) {
          if (!protocols.includes('websocket')) return this.refuseUpgrade(ctx, protocols.join(', '));
          if (!this.admitUpgrade(ctx, listener)) return;
        }
      }
      this.start(ctx, listener);
    } catch (err) {
      // A bug costs this one request (500, logged with its request id), never the process.
      this.internalError(ctx, err);
    }
  }

  /** A failure of Fulcrum's own code on an async path: a 500 (or 502 once an upstream was involved) for this exchange. */
  internalError(ctx: Exchange, err: unknown, status = 500): void {
    this.logger?.error({ request_id: ctx.requestIdForUpstream ?? ctx.id, listener: ctx.listener, err }, `internal error on ${ctx.req.method} ${ctx.req.url}: ${(err as Error)?.message ?? err} (answered ${ctx.done ? 'already' : status})`);
    try {
      this.fail(ctx, new FulcrumError(ErrorCode.Internal, `internal error: ${(err as Error)?.message ?? err}`, 'internal', status, false, err));
    } catch {
      // Even the error path failed: the exchange still ends (its upstream released, its counts undone).
      this.finish(ctx);
    }
  }

  /**
   * A protocol upgrade Fulcrum does not relay (anything but WebSocket): 501 with a clear reason
   * rather than a plain request the upstream would answer as if no upgrade was asked.
   */
  private refuseUpgrade(ctx: Exchange, protocol: string): void {
    this.fail(ctx, new FulcrumError(ErrorCode.UpgradeNotSupported, `protocol upgrade to "${protocol.slice(0, 40)}" is not supported (WebSocket is)`, 'client', 501, false));
  }

  /** A WebSocket handshake: well-formed (else 400 before anything else runs). False when it was answered. */
  private admitUpgrade(ctx: Exchange, listener: ListenerInfo): boolean {
    const malformed = webSocketRefusal(ctx.req);
    if (malformed !== null) {
      this.refuse(ctx, malformed);
      return false;
    }
    ctx.upgrade = 'websocket';
    return true;
  }

  /**
   * A place under the listener's tunnel limits for a handshake that passed the guards (so a
   * firewalled or rate-limited client gets that answer, not this one). False when it was answered.
   */
  private reserveTunnel(ctx: Exchange, listener: ListenerInfo): boolean {
    const slot = listener.tunnels.reserve(ctx.clientAddress);
    if (slot === 'listener') {
      this.fail(ctx, new FulcrumError(ErrorCode.TunnelLimit, `listener ${listener.name} has its most tunnels open (limits.max_tunnels ${listener.tunnels.max})`, 'client', 503, false));
      return false;
    }
    if (slot === 'client') {
      ctx.extraHeaders = ['retry-after', '1'];
      this.fail(ctx, new FulcrumError(ErrorCode.TunnelLimit, `this client has its most tunnels open (limits.max_tunnels_per_ip ${listener.tunnels.perClient})`, 'client', 429, false));
      return false;
    }
    ctx.tunnelSlot = slot;
    return true;
  }

  /** The client's request failed under it (`status` 400: malformed body; 408: too slow). Answered if nothing was sent yet, else cut. */
  requestBroken(ctx: Exchange, status: number, message: string): void {
    if (ctx.done) return;
    this.fail(ctx, new FulcrumError(status === 408 ? ErrorCode.ClientTimeout : ErrorCode.BadRequest, message, 'client', status, false));
  }

  /** Phases validate and route, then the guards. */
  private start(ctx: Exchange, listener: ListenerInfo): void {
    const req = ctx.req;
    const invalid = validateRequest(req, listener.forwarding.underscores, ctx.downstream.protocol);
    if (invalid !== null) return this.refuse(ctx, invalid);
    // A CONNECT's target is an authority (host:port), parsed by the forward phase; the listener's guards apply.
    if (ctx.upgrade === 'connect') return this.runGuards(ctx, listener, listener.guards, 0);
    const url = req.url!;
    const target = parseRequestTarget(url);
    if ('error' in target) return this.refuse(ctx, target.error);
    ctx.authority = target.authority;
    ctx.path = target.path;
    if (ctx.forward !== null) {
      // Absolute-form to the forward proxy: no route, the listener's guards; the destination gets the path and query as sent.
      ctx.upstreamPath = target.rawPath + target.query;
      return this.runGuards(ctx, listener, listener.guards, 0);
    }

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
    if (match.forward !== null) {
      // A `/forward?url=` route: its guards, then the forward phase instead of a pool.
      ctx.forwarder = match.forward;
      ctx.forward = { kind: 'route', decision: null, rule: null, reason: null };
    }

    // Phases firewall, rate-limit, request-limits.
    const guards = typeof left === 'string' || left === match ? pipelineFor(match, listener, listener.guards) : pipelineWith(match, left, listener.guards);
    this.runGuards(ctx, listener, guards, 0);
  }

  /** Runs guards from `index` on; waits only for a guard that returned a promise. */
  private runGuards(ctx: Exchange, listener: ListenerInfo, guards: readonly RequestGuard[], index: number): void {
    for (let i = index; i < guards.length; i++) {
      const verdict = guards[i].check(ctx);
      if (verdict === null) continue;
      if (verdict instanceof Promise) {
        verdict.then(
          (answer) => {
            if (ctx.done) return;
            try {
              if (answer !== null) this.refuse(ctx, answer);
              else this.runGuards(ctx, listener, guards, i + 1);
            } catch (err) {
              this.internalError(ctx, err);
            }
          },
          (err: unknown) => this.internalError(ctx, new Error(`guard failed: ${(err as Error)?.message ?? err}`, { cause: err })),
        );
        return;
      }
      return this.refuse(ctx, verdict);
    }
    this.forward(ctx, listener);
  }

  /**
   * The forward phase allowed the destination (`ctx.pool` is it): a CONNECT gets its tunnel slot
   * and its connection (src/forward/forward-proxy.ts `connectTunnel`), the others go on to
   * forward-headers and send.
   */
  allowed(ctx: Exchange, listener: ListenerInfo): void {
    if (ctx.upgrade !== 'connect') return this.forward(ctx, listener);
    if (!this.reserveTunnel(ctx, listener)) return;
    const pool = ctx.pool!;
    ctx.countedPool = pool;
    pool.active++;
    const limit = pool.settings.timeouts.request;
    if (limit > 0) ctx.timer = setTimeout(onRequestTimeout, limit, this, ctx, limit);
    this.attempt(ctx);
  }

  /** Phase forward-headers, then the first attempt. */
  private forward(ctx: Exchange, listener: ListenerInfo): void {
    // A forward-proxy exchange is decided first (target, credentials, destination); `allowed` comes back here.
    if (ctx.forward !== null && ctx.forward.decision === null) return decideForward(this, ctx, listener);
    const req = ctx.req;
    if (ctx.upgrade !== null && !this.reserveTunnel(ctx, listener)) return;
    const pool = ctx.pool!;
    ctx.countedPool = pool;
    pool.active++;
    const headers = buildUpstreamHeaders(ctx, req.rawHeaders, listener.forwarding, pool.hostRewrite);
    if (headers === null) return this.fail(ctx, new FulcrumError(ErrorCode.BadRequest, 'more than one Host header', 'client', 400, false));
    // Proxy-Authorization, Proxy-Connection and the rest are this proxy's, never the destination's;
    // on the `/forward?url=` route, so are the site's own Cookie and Authorization.
    if (ctx.forward !== null) {
      dropProxyHeaders(headers);
      if (ctx.forward.kind === 'route') dropSiteCredentials(headers);
    }
    // Absolute-form: the target's authority is the host (RFC 9112 section 3.2.2).
    if (ctx.authority !== null && pool.hostRewrite.kind === 'preserve') headers[1] = ctx.authority;
    // The upgrade is asked again hop by hop (Connection and Upgrade are not forwarded as such).
    if (ctx.upgrade !== null) headers.push('connection', 'upgrade', 'upgrade', ctx.upgrade);
    if (ctx.downstream instanceof GrpcWebDownstream) toGrpcHeaders(headers, ctx.downstream.mode);
    ctx.upstreamHeaders = headers;
    const requestBody = ctx.downstream.requestBody;
    if (requestBody !== null) {
      const body = new CountingBody(ctx, pool.settings.retry.max_body_bytes, listener.maxBodyBytes);
      requestBody.on('error', (err) => body.destroy(clientBodyFailed(err)));
      // The body's own failures (over max_body_bytes, the client gone) end the request here; a
      // transport may listen too, but an 'error' nobody hears would take the process down.
      body.on('error', (err) => {
        try {
          if (!ctx.downstream.connected) this.clientClosed(ctx);
          else this.fail(ctx, err instanceof FulcrumError ? err : clientBodyFailed(err));
        } catch (thrown) {
          this.internalError(ctx, thrown, 502);
        }
      });
      requestBody.pipe(body);
      ctx.body = body;
      ctx.bodyStream = body;
    }
    // The upstream decides whether it wants the body: its 100 (or its final answer) is relayed.
    if (ctx.downstream.expectsContinue) headers.push('expect', '100-continue');
    let limit = pool.settings.timeouts.request;
    // A gRPC caller's deadline (grpc-timeout) bounds the call when it is the shorter; it still goes upstream as sent.
    const deadline = ctx.grpc ? grpcTimeoutMs(req.headers['grpc-timeout']) : null;
    if (deadline !== null) ctx.grpcDeadlineAt = ctx.start + deadline;
    if (deadline !== null && (limit === 0 || deadline < limit)) limit = deadline;
    if (limit > 0) ctx.timer = setTimeout(onRequestTimeout, limit, this, ctx, limit);
    this.attempt(ctx);
  }

  /** A guard's or the validator's answer: the status, its headers, nothing sent upstream. */
  refuse(ctx: Exchange, refusal: Refusal): void {
    ctx.extraHeaders = refusal.headers ?? null;
    this.fail(ctx, new FulcrumError(refusal.code, refusal.message, 'client', refusal.status, false));
  }

  /** Phases pick and send: one attempt on one upstream. */
  private attempt(ctx: Exchange, sameAllowed = false): void {
    let pool = ctx.pool!;
    // Panic (Envoy's healthy_panic_threshold): too few upstreams up and no backup that can serve: every one the operator allows may be picked.
    let upstream: Upstream | undefined;
    if (pool.inPanic()) {
      if (ctx.tried === null) ctx.panicked = true;
      upstream = pool.pickInPanic(ctx, ctx.tried);
    } else upstream = ctx.tried === null ? pool.pick(ctx) : pool.pickExcept(ctx, ctx.tried);
    // A stale keep-alive socket says nothing against its upstream: with no other, the same one may go again
    // (with a backup pool waiting, only once: a second reset sends the request there).
    const last = ctx.upstream;
    if (upstream === undefined && sameAllowed && last !== null && last.available() && (pool.backup === null || ctx.tried!.indexOf(last) === ctx.tried!.lastIndexOf(last))) {
      upstream = last;
    }
    if (upstream === undefined) {
      // Every primary upstream is down (or failed this request): the backup pool serves, if it can.
      upstream = pool.pickBackup(ctx, ctx.tried);
      if (upstream !== undefined) ctx.pool = pool = pool.backup!;
    }
    if (upstream === undefined) return this.fail(ctx, ctx.retryCause !== null ? panicAnswer(ctx, ctx.retryCause) : noUpstream(ctx.countedPool!.name));
    ctx.upstream = upstream;
    ctx.holding = true;
    ctx.attempts++;
    upstream.inFlight++;
    setUpstreamHost(ctx.upstreamHeaders, pool.hostRewrite, upstream.hostHeader);
    const attempt = new Attempt(this, ctx, upstream);
    ctx.attempt = attempt;
    pool.transport.forward(attempt);
  }

  /** An interim (1xx) answer from the upstream, relayed ahead of the final one where the downstream takes it. */
  onInformational(attempt: Attempt, status: number, reason: string, rawHeaders: readonly (Buffer | string)[]): void {
    const ctx = attempt.exchange;
    if (ctx.done || ctx.discarding) return;
    ctx.downstream.informational(status, reason, rawHeaders);
  }

  /** Phase respond: upstream headers to the client (or, for a status worth retrying, to the bin). */
  onResponse(attempt: Attempt, status: number, rawHeaders: readonly (Buffer | string)[], reason?: string): boolean {
    const ctx = attempt.exchange;
    ctx.lastStatus = status;
    if (upstreamResult.hasSubscribers) upstreamResult.publish({ upstream: attempt.upstream, status, failure: null });
    if (status >= 500 && retryReason(ctx, null, status, true) === 'status' && hasAlternative(ctx)) {
      const wait = retryAfterMs(findHeader(rawHeaders, 'retry-after'));
      if (wait <= ctx.pool!.settings.retry.max_retry_after) {
        // Read the answer to its end and drop it, so the socket stays reusable; retry in onEnd.
        ctx.discarding = true;
        ctx.retryDelay = wait;
        return true;
      }
    }
    ctx.status = status;
    if (ctx.grpc) ctx.grpcStatus = grpcStatusOf(rawHeaders);
    const bodyDone = requestBodyDone(ctx);
    let headers = buildResponseHeaders(ctx, rawHeaders, ctx.forwarding!, this.draining || !bodyDone || ctx.upgrade !== null);
    // 1xx and 204 carry no framing headers (RFC 9110 sections 8.6, 15.3.5); 304 and HEAD keep Content-Length.
    if (status === 204) headers = withoutFraming(headers);
    // A destination's answer on the `/forward?url=` route comes from the site's origin: it must not act as the site.
    if (ctx.forward !== null && ctx.forward.kind === 'route') confineRouteAnswer(headers);
    // The upstream answered before the upload ended (413, 401, a redirect): stop sending the body;
    // the upstream connection is dropped after this answer and the client's closed after it.
    if (!bodyDone && status >= 300) stopUpload(ctx);
    try {
      ctx.downstream.head(status, reason, headers);
    } catch (err) {
      // A header the downstream refuses to write (invalid characters): the response is unusable.
      this.onError(attempt, Object.assign(new Error(`invalid response header: ${(err as Error).message}`), { code: 'ERR_INVALID_CHAR' }), true);
      return false;
    }
    return true;
  }

  onData(attempt: Attempt, chunk: Buffer): boolean {
    const ctx = attempt.exchange;
    if (ctx.discarding) return true;
    ctx.bytesOut += chunk.length;
    return ctx.downstream.body(chunk);
  }

  onEnd(attempt: Attempt, trailers: readonly (Buffer | string)[] | null): void {
    const ctx = attempt.exchange;
    attempt.retire();
    if (ctx.discarding) {
      ctx.discarding = false;
      release(ctx);
      this.retry(ctx, attempt.upstream, 'status', `status ${ctx.lastStatus}`, ctx.retryDelay);
      return;
    }
    // A complete answer before the upload ended (a 2xx that did not read it all): the rest is not sent.
    if (!ctx.bodyAbandoned && !requestBodyDone(ctx)) stopUpload(ctx);
    if (ctx.grpc && trailers !== null) ctx.grpcStatus = grpcStatusOf(trailers);
    ctx.downstream.end(trailers);
    attempt.upstream.served++;
    this.finish(ctx);
  }

  /**
   * Phase retry, or the error answer: one decision per failed attempt. `cancel`: the failure was
   * found on this side (the transport still holds the upstream request, which is dropped).
   */
  onError(attempt: Attempt, err: unknown, cancel = false): void {
    const ctx = attempt.exchange;
    attempt.retire(cancel ? (err as Error) : undefined);
    if (ctx.done) return;
    const upstream = attempt.upstream;
    const sent = attempt.sent;
    const failure = upstreamFailure(err, sent);
    // A reused socket reset before any response byte: most likely closed by the upstream while idle (the keep-alive race).
    const stale = attempt.reused && sent && !ctx.discarding && !ctx.downstream.headSent && failure.code === ErrorCode.UpstreamReset;
    let reason = retryReason(ctx, failure, 0, sent, stale);
    // A forward destination is the only one: asked again only after a stale keep-alive socket.
    if (reason !== null && ctx.forward !== null && reason !== 'stale-connection') reason = null;
    // A stale socket that is retried is no failure at all; the other cases below still show (a client got an error) but say nothing about health.
    // A stream the upstream did not process says nothing against it, retried or not.
    if (failure.source === 'upstream' && reason !== 'stale-connection' && failure.code !== ErrorCode.UpstreamUnprocessed) {
      upstream.failures++;
      if (upstreamError.hasSubscribers) upstreamError.publish({ ctx, upstream, error: failure });
      // Published before the retry picks, so an upstream that refused is already out of its way.
      if (!stale && !clientsDoing(ctx, failure) && upstreamResult.hasSubscribers) upstreamResult.publish({ upstream, status: 0, failure });
    }
    ctx.discarding = false;
    release(ctx);
    if (reason !== null) {
      ctx.retryCause = failure;
      this.retry(ctx, upstream, reason, failure.message, 0);
      return;
    }
    this.fail(ctx, panicAnswer(ctx, failure));
  }

  /**
   * The upstream switched protocols on an upgrade request: after checking its 101 completes the
   * client's handshake, the 101 is relayed once and the exchange becomes a tunnel that counts as
   * in flight on its upstream until it closes.
   */
  onSwitched(attempt: Attempt, status: number, reason: string, rawHeaders: readonly (Buffer | string)[], socket: Socket, head: Buffer): void {
    const ctx = attempt.exchange;
    if (ctx.done) {
      socket.destroy();
      return;
    }
    const connect = ctx.upgrade === 'connect';
    const problem = connect ? null : switchProblem(ctx.req, rawHeaders);
    if (problem !== null) {
      socket.destroy();
      return this.onError(attempt, Object.assign(new Error(problem), { code: 'UND_ERR_INFO' }), true);
    }
    attempt.retire();
    const headers = buildResponseHeaders(ctx, rawHeaders, ctx.forwarding!, false);
    // A 2xx to CONNECT has no framing and no Upgrade (RFC 9110 section 9.3.6).
    if (!connect) headers.push('connection', 'upgrade', 'upgrade', ctx.upgrade!);
    const client = ctx.downstream.switchProtocols(status, reason, headers);
    if (client === null) {
      socket.destroy();
      return this.fail(ctx, new FulcrumError(ErrorCode.UpstreamProtocol, 'the connection could not switch protocols', 'upstream', 502, false));
    }
    if (upstreamResult.hasSubscribers) upstreamResult.publish({ upstream: attempt.upstream, status, failure: null });
    ctx.status = status;
    ctx.kind = 'tunnel';
    ctx.lastStatus = status;
    // The request timeout bounded the handshake; the tunnel has its own idle timeout.
    if (ctx.timer !== null) {
      clearTimeout(ctx.timer);
      ctx.timer = null;
    }
    attempt.upstream.served++;
    // The retry budget is a share of requests in flight: a long-lived tunnel is not one of them.
    const counted = ctx.countedPool!;
    counted.active--;
    if (ctx.retrying) counted.retrying--;
    ctx.countedPool = null;
    ctx.tunnel = new Tunnel(client, socket, head, ctx.pool!.settings.timeouts.tunnel_idle, {
      relayed: (bytes, fromClient) => {
        if (fromClient) ctx.bytesIn += bytes;
        else ctx.bytesOut += bytes;
      },
      closed: (why) => {
        try {
          this.tunnelClosed(ctx, why);
        } catch (err) {
          this.internalError(ctx, err, 502);
        }
      },
    }, ctx.upgrade === 'websocket');
    if (ctx.forward !== null) {
      // A destination is no pool's upstream: no drain or reload concerns it, only shutdown.
      this.forwardTunnels.add(ctx);
      if (tunnelOpen.hasSubscribers) tunnelOpen.publish({ ctx });
      return;
    }
    this.tunnels.add(ctx);
    // Drains and disables matter only while tunnels are open: listened to only then.
    if (this.tunnels.size === 1) upstreamState.subscribe(this.onUpstreamState);
    // A tunnel to an upstream that is draining already, or that a reload removed while the handshake ran, goes after the grace period too.
    const u = attempt.upstream;
    if (this.liveUpstreams !== null && !this.liveUpstreams.has(u)) this.tunnels.closeLater(u, this.graceMs, 'removed');
    else if (u.draining || !u.enabled) this.tunnels.closeLater(u, this.graceMs, 'drained');
    if (tunnelOpen.hasSubscribers) tunnelOpen.publish({ ctx });
  }

  private tunnelClosed(ctx: Exchange, reason: TunnelCloseReason): void {
    if (ctx.forward !== null) this.forwardTunnels.delete(ctx);
    else {
      this.tunnels.delete(ctx);
      if (this.tunnels.size === 0) upstreamState.unsubscribe(this.onUpstreamState);
    }
    ctx.tunnelClose = reason;
    if (tunnelClose.hasSubscribers) tunnelClose.publish({ ctx, reason });
    this.finish(ctx);
  }

  /** Phase retry: the next attempt, on another upstream when there is one. */
  private retry(ctx: Exchange, upstream: Upstream, reason: RetryReason, why: string, delay: number): void {
    ctx.attempt = null;
    (ctx.tried ??= []).push(upstream);
    if (reason === 'unprocessed') ctx.unprocessedRetries++;
    if (!ctx.retrying && usesBudget(reason)) {
      ctx.retrying = true;
      ctx.countedPool!.retrying++;
    }
    // A body the upstream may have read goes again from the kept copy.
    if (reason !== 'connect-failure' && ctx.bodyStream !== null) ctx.body = Buffer.concat(ctx.bodyKept!);
    if (requestRetry.hasSubscribers) requestRetry.publish({ ctx, upstream, reason: `${reason}: ${why}` });
    // After a reset the same upstream may go again when it is the only one (nothing says it is down).
    const sameAllowed = reason === 'reset' || reason === 'stale-connection' || reason === 'unprocessed';
    if (delay > 0) ctx.timerRetry = setTimeout(retryLater, delay, this, ctx, sameAllowed);
    else this.attempt(ctx, sameAllowed);
  }

  /** Runs a delayed retry unless the request ended meanwhile. */
  retryNow(ctx: Exchange, sameAllowed: boolean): void {
    ctx.timerRetry = null;
    if (ctx.done) return;
    try {
      this.attempt(ctx, sameAllowed);
    } catch (err) {
      this.internalError(ctx, err);
    }
  }

  /** The error answer: a status and a short text body, or a cut exchange once bytes were sent. */
  fail(ctx: Exchange, error: FulcrumError): void {
    if (ctx.done) return;
    ctx.error = error;
    const downstream = ctx.downstream;
    if (ctx.clientGone || error.status === 499) {
      ctx.status = 499;
      // A gRPC caller that went away at its own deadline (its timer and ours race) ended DEADLINE_EXCEEDED; before it, it cancelled.
      if (ctx.grpc) ctx.grpcStatus = ctx.grpcDeadlineAt > 0 && performance.now() >= ctx.grpcDeadlineAt - DEADLINE_SLACK_MS ? GrpcStatus.DEADLINE_EXCEEDED : GrpcStatus.CANCELLED;
    } else if (ctx.grpc && (downstream.protocol === 'h2' || downstream instanceof GrpcWebDownstream)) {
      this.failGrpc(ctx, error);
    } else if (downstream.headSent) {
      cutDownstream(downstream);
    } else {
      ctx.status = error.status;
      const body = `${error.status} ${statusText(error.status)}: ${error.message}\nrequest id: ${ctx.requestIdForUpstream ?? ctx.id}\n`;
      const headers: string[] = ['content-type', 'text/plain; charset=utf-8', 'content-length', String(Buffer.byteLength(body)), 'x-request-id', ctx.requestIdForUpstream ?? ctx.id];
      if (ctx.extraHeaders !== null) headers.push(...ctx.extraHeaders);
      else if (error.status === 503) headers.push('retry-after', '1');
      // Fulcrum's own answers on an https listener with hsts carry it too (nginx's `add_header ... always`).
      const hsts = ctx.forwarding?.hsts;
      if (hsts !== undefined) headers.push('strict-transport-security', hsts);
      // A malformed request or an unread body leaves the connection in doubt: close it.
      // After a refused upgrade the parser has stopped reading HTTP (what follows may be another protocol).
      const close = this.draining || error.status === 400 || error.status === 501 || ctx.upgrade !== null || !requestBodyDone(ctx);
      try {
        downstream.fail(error.status, headers, body, close);
      } catch {
        cutDownstream(downstream);
      }
    }
    if (ctx.bodyStream !== null && !ctx.bodyStream.destroyed) {
      ctx.downstream.requestBody?.unpipe(ctx.bodyStream);
      ctx.bodyStream.destroy();
    }
    this.finish(ctx, error);
  }

  /**
   * The error answer to a gRPC caller: HTTP 200 with `grpc-status` and `grpc-message` in one
   * HEADERS frame (trailers-only); once the head went out, the status goes in the trailers, so
   * a call cut by its upstream ends UNAVAILABLE (or DEADLINE_EXCEEDED) rather than as a reset stream.
   */
  private failGrpc(ctx: Exchange, error: FulcrumError): void {
    const downstream = ctx.downstream;
    const code = grpcStatusFor(error);
    ctx.grpcStatus = code;
    const status = ['grpc-status', String(code), 'grpc-message', encodeGrpcMessage(`fulcrum: ${error.message} (request id ${ctx.requestIdForUpstream ?? ctx.id})`)];
    try {
      if (downstream.headSent) {
        downstream.end(status);
        return;
      }
      ctx.status = 200;
      // Content-Length 0 frames the empty body for an HTTP/1.1 (gRPC-Web) caller.
      const headers = ['content-type', 'application/grpc', 'content-length', '0', 'x-request-id', ctx.requestIdForUpstream ?? ctx.id, ...status];
      if (ctx.extraHeaders !== null) headers.push(...ctx.extraHeaders);
      downstream.fail(200, headers, '', false);
    } catch {
      cutDownstream(downstream);
    }
  }

  /**
   * Phase finish: exactly once per exchange. An attempt still in flight is cancelled with
   * `reason` (its transport drops the upstream request) after the exchange is marked done.
   */
  private finish(ctx: Exchange, reason?: Error): void {
    if (ctx.done) return;
    ctx.done = true;
    const attempt = ctx.attempt;
    ctx.attempt = null;
    if (ctx.timer !== null) clearTimeout(ctx.timer);
    if (ctx.timerRetry !== null) clearTimeout(ctx.timerRetry);
    ctx.tunnelSlot?.release();
    release(ctx);
    const pool = ctx.countedPool;
    if (pool !== null) {
      pool.active--;
      if (ctx.retrying) pool.retrying--;
    }
    ctx.duration = performance.now() - ctx.start;
    if (attempt !== null && attempt.live) attempt.retire(reason ?? new Error('the exchange ended'));
    if (requestEnd.hasSubscribers) requestEnd.publish({ ctx });
  }

  /** The client went away before the response was complete. */
  clientClosed(ctx: Exchange): void {
    if (ctx.done || ctx.tunnel !== null) return;
    ctx.clientGone = true;
    this.fail(ctx, clientGone());
  }
}

/** Cuts the exchange on the client's side (the head went out, or the answer could not be written). */
function cutDownstream(downstream: Downstream): void {
  try {
    downstream.cut();
  } catch {
    // Nothing more can be done for this client; the exchange still finishes.
  }
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

function retryLater(proxy: HttpProxy, ctx: Exchange, sameAllowed: boolean): void {
  proxy.retryNow(ctx, sameAllowed);
}

/**
 * True when a failure came from how the client's body was going, not from the upstream's health:
 * reset while the body was still on its way (the upstream answered early, a 413 or 401, and
 * closed without reading the rest: the kernel then resets and the answer may be lost, or cut
 * while it is read), or no response headers in time while the client had not finished sending
 * the body.
 */
function clientsDoing(ctx: Exchange, failure: FulcrumError): boolean {
  // It answered before the upload ended (bodyAbandoned): a reset while that answer is read comes from the same early close.
  if (ctx.bodyAbandoned) return failure.code === ErrorCode.UpstreamReset;
  if (ctx.bodyStream === null || ctx.bodyEnded || ctx.discarding || ctx.downstream.headSent) return false;
  return failure.code === ErrorCode.UpstreamReset || failure.code === ErrorCode.HeadersTimeout;
}

/**
 * The answer for a failure that ends a request. In panic mode upstreams known to be down are
 * tried too; when a request that came while the pool was in panic found none that even took
 * the connection, it gets what it would have had without panic: 503, nothing available.
 */
function panicAnswer(ctx: Exchange, failure: FulcrumError): FulcrumError {
  if (failure.source !== 'upstream' || !failure.retryable || !ctx.panicked) return failure;
  const name = ctx.countedPool!.name;
  return new FulcrumError(ErrorCode.NoUpstream, `no available upstream in pool "${name}" (too few up: panic mode tried them anyway; last: ${failure.message})`, 'upstream', 503, false, failure);
}

/** True when an upstream not tried yet (or the backup pool) could take a retry: else the answer in hand is kept. */
function hasAlternative(ctx: Exchange): boolean {
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

function onRequestTimeout(proxy: HttpProxy, ctx: Exchange, limit: number): void {
  ctx.timer = null;
  try {
    proxy.fail(ctx, requestTimedOut(limit));
  } catch (err) {
    proxy.internalError(ctx, err, 502);
  }
}

/** True when the client's request body was read to its end (or there was none). */
function requestBodyDone(ctx: Exchange): boolean {
  const body = ctx.downstream.requestBody;
  return body === null || body.readableEnded;
}

/** The upstream answered before the client's body ended: nothing more of it is read or sent upstream. */
function stopUpload(ctx: Exchange): void {
  ctx.bodyAbandoned = true;
  if (ctx.bodyStream !== null) ctx.downstream.requestBody?.unpipe(ctx.bodyStream);
}

/** Stops counting the request against its upstream (once). */
function release(ctx: Exchange): void {
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
