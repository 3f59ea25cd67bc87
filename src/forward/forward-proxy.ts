/**
 * The forward proxy in the HTTP path: what the exchange core (src/proxy/http-proxy.ts) asks when
 * an exchange is not for a route's pool but for a destination the client names:
 *
 * - `GET http://host:port/path` (absolute-form) on a listener with `forward_proxy`;
 * - `CONNECT host:port` on such a listener (with `connect: true`): a tunnel after `200`;
 * - `GET /forward?url=http%3A%2F%2Fhost%2Fpath` on a route with `forward_proxy` (seed
 *   LeanBalancer's shape).
 *
 * Its phase sits between the guards and forward-headers (docs/forward-proxy.md):
 *
 *   validate -> firewall -> (route's rate limits) -> request-limits
 *     -> forward target (400) -> Proxy-Authorization (407) -> destination decision (403, 400, 502)
 *     -> forward-headers -> send to the resolved address   (absolute-form, route)
 *     -> TCP connect to the resolved address -> 200 -> tunnel   (CONNECT)
 *
 * The destination is decided by `ForwardPolicy` (destination-policy.ts), which resolves the name
 * once; the address it checked is the one connected to (an `Upstream` of that IP address, never
 * a name), so DNS rebinding gains nothing. Denied destinations are never contacted.
 */
import net from 'node:net';
import type { PoolSettings, RouteSettings, ListenerSettings } from '../config/schema.ts';
import { RetryConfig } from '../config/schema.ts';
import type { Refusal } from '../core/pipeline.ts';
import type { RequestHead } from '../core/context.ts';
import { forwardDecision } from '../core/events.ts';
import { ErrorCode, FulcrumError } from '../errors.ts';
import type { ExchangePool, Exchange } from '../proxy/exchange.ts';
import type { HostRewrite } from '../proxy/headers.ts';
import type { PickContext } from '../balancer/policy.ts';
import type { Transport, UpstreamAttempt } from '../transport/transport.ts';
import { Upstream } from '../upstream/upstream.ts';
import { ForwardPolicy, type ForwardDecision, type ForwardResolver } from './destination-policy.ts';
import { ProxyAuthenticator, type ProxyAuthOptions } from './proxy-auth.ts';
import type { DestinationClients } from './destination-clients.ts';

/** A listener's `forward_proxy` as the schema gives it. */
export type ListenerForwardSettings = NonNullable<ListenerSettings['forward_proxy']>;
/** A route's `forward_proxy` (no `auth`, no `connect`). */
export type RouteForwardSettings = NonNullable<RouteSettings['forward_proxy']>;

/**
 * The pool name forward exchanges carry (access log `pool`, metrics `pool` label). Pool names
 * in the configuration are `[A-Za-z0-9_.-]+`, so this one can never be a configured pool's.
 */
export const FORWARD_POOL_NAME = '(forward)';

/**
 * Retries toward a destination: a second attempt goes only after a stale keep-alive socket (the
 * core drops every other retry reason for forward exchanges: there is no other destination to
 * try, and a destination that refused or timed out is not asked again). No status is retried.
 */
const forwardRetry: PoolSettings['retry'] = RetryConfig.parse({ max_attempts: 2, on_status: [] });

/** A destination as the client named it. */
export interface ForwardTarget {
  /** The host as written (lower case), IPv6 literals without brackets: what the policy decides on. */
  host: string;
  port: number;
  /** `host[:port]` as written (IPv6 in brackets): the Host header sent to the destination. */
  authority: string;
  /** The origin-form request-target sent to the destination (absolute-form and route form; `''` for CONNECT). */
  path: string;
}

function badRequest(message: string): Refusal {
  return { status: 400, code: ErrorCode.BadRequest, message };
}

const refusals = {
  connectTarget: badRequest('CONNECT needs a target of the form host:port (an IPv6 address in brackets)'),
  https: badRequest('https:// targets are not fetched by the proxy: ask for a tunnel with CONNECT (curl does this for https URLs through a proxy)'),
  routeMethod: { status: 405, code: ErrorCode.BadRequest, message: 'the /forward?url= route takes GET and HEAD only', headers: ['allow', 'GET, HEAD'] } satisfies Refusal,
  routeUrl: badRequest('expected ?url=<an absolute http:// URL, percent-encoded>'),
  routeHttps: badRequest('only http:// URLs are fetched through ?url='),
  authority: badRequest('malformed host or port in the destination'),
};

/** `host[:port]` (IPv6 in brackets), the port defaulting to `defaultPort`; null when malformed or the port is out of range. */
function splitAuthority(authority: string, defaultPort: number | null): ForwardTarget | null {
  const m = /^(\[[0-9A-Fa-f:.]+\]|[^:[\]@/?#\s]+)(?::(\d{0,5}))?$/.exec(authority);
  if (m === null) return null;
  const written = m[1];
  let port: number;
  if (m[2] === undefined || m[2] === '') {
    if (defaultPort === null) return null;
    port = defaultPort;
  } else port = Number(m[2]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) return null;
  const host = written.startsWith('[') ? written.slice(1, -1).toLowerCase() : written.toLowerCase();
  // An empty port (`host:`) means the default: sent as the host alone.
  return { host, port, authority: m[2] === '' ? written : authority, path: '' };
}

/** The destination of `CONNECT host:port` (RFC 9110 section 9.3.6: authority-form, the port required). */
export function connectTarget(url: string): ForwardTarget | Refusal {
  return splitAuthority(url, null) ?? refusals.connectTarget;
}

/**
 * The destination of an absolute-form request (`GET http://host[:port]/path`): the authority of
 * the URI (RFC 9112 section 3.2.2: it wins over a Host header) and the origin-form `path` to send.
 * `https://` targets are refused: a client reaches them through a CONNECT tunnel.
 */
export function absoluteTarget(url: string, authority: string, path: string): ForwardTarget | Refusal {
  if ((url.charCodeAt(4) | 32) === 115 /* https */) return refusals.https;
  const target = splitAuthority(authority, 80);
  if (target === null) return refusals.authority;
  target.path = path;
  return target;
}

/** Bytes a request-target may hold (visible ASCII): a decoded `url` with others is refused. */
const targetChars = /^[\x21-\x7e]+$/;

/**
 * The destination of `GET /forward?url=<percent-encoded http URL>` (seed LeanBalancer's shape):
 * GET and HEAD only (others 405), one `url` parameter holding an absolute `http://` URL.
 */
export function routeTarget(req: RequestHead, query: string): ForwardTarget | Refusal {
  if (req.method !== 'GET' && req.method !== 'HEAD') return refusals.routeMethod;
  let url: string | null;
  try {
    url = new URLSearchParams(query.startsWith('?') ? query.slice(1) : query).get('url');
  } catch {
    url = null;
  }
  if (url === null || !targetChars.test(url)) return refusals.routeUrl;
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)([^#]*)$/.exec(url);
  if (m === null) return refusals.routeUrl;
  const scheme = m[1].toLowerCase();
  if (scheme !== 'http') return scheme === 'https' ? refusals.routeHttps : refusals.routeUrl;
  const target = splitAuthority(m[2], 80);
  if (target === null) return refusals.authority;
  const rest = m[3];
  target.path = rest === '' ? '/' : rest.startsWith('?') ? `/${rest}` : rest;
  return target;
}

/** True for a request-target in absolute-form (`scheme://...`), which a forward-proxy listener serves. */
export function isAbsoluteForm(url: string): boolean {
  return url.charCodeAt(0) !== 47 /* / */ && url !== '*' && url.includes('://');
}

/** The same settings as JSON: what decides whether an authenticator (and its cache of verified credentials) is kept across a reload. */
function authKey(settings: ListenerForwardSettings['auth']): string {
  return settings === undefined ? '' : JSON.stringify(settings);
}

/** Options for tests: a resolver, and the authenticator's tuning. */
export interface ForwardProxyOptions {
  resolve?: ForwardResolver;
  auth?: ProxyAuthOptions;
}

/**
 * One forward proxy as configured: a listener's `forward_proxy` or a route's. Compiled once per
 * configuration (rules, ports, CIDRs, password hashes); throws an Error naming the problem when
 * a rule or a password hash cannot be used.
 */
export class ForwardProxy {
  readonly policy: ForwardPolicy;
  /** Null: no Proxy-Authorization asked for (always for a route). */
  readonly auth: ProxyAuthenticator | null;
  /** CONNECT tunnels served (a listener's `connect`; false for a route). */
  readonly connect: boolean;
  /** Toward destinations: connect, response headers, idle body, the whole request, a tunnel's idle time. */
  readonly timeouts: PoolSettings['timeouts'];
  private readonly authSettings: string;

  /** `previous`: the same listener's forward proxy before a reload; its authenticator is kept when `auth` did not change. */
  constructor(settings: ListenerForwardSettings | RouteForwardSettings, previous: ForwardProxy | null = null, options: ForwardProxyOptions = {}) {
    // Named as the schema documents (`rule-<n>`, from 0 as routes are): the name is a metrics label and a log field.
    const rules = settings.rules.map((r, i) => ({ ...r, name: r.name ?? `rule-${i}` }));
    this.policy = new ForwardPolicy({ rules }, options.resolve);
    const auth = 'auth' in settings ? settings.auth : undefined;
    this.authSettings = authKey(auth);
    this.auth = auth === undefined ? null : previous !== null && previous.auth !== null && previous.authSettings === this.authSettings ? previous.auth : new ProxyAuthenticator(auth, options.auth);
    this.connect = 'connect' in settings ? settings.connect : false;
    this.timeouts = settings.timeouts;
  }
}

/**
 * What makes `settings` unusable (a rule's host pattern, CIDR or port range, a password hash
 * that is not one `fulcrum hash-password` writes), or null: the config loader's check, so a
 * reload never commits a forward proxy that cannot be built.
 */
export function forwardSettingsProblem(settings: ListenerForwardSettings | RouteForwardSettings): string | null {
  try {
    new ForwardProxy(settings);
    return null;
  } catch (err) {
    return (err as Error).message;
  }
}

/**
 * The core's "pool" for a forward exchange: the one destination the policy allowed, as an
 * `Upstream` of its resolved address. Made per exchange (a few fields); no retry goes elsewhere.
 */
export class ForwardDestination implements ExchangePool {
  readonly name = FORWARD_POOL_NAME;
  readonly settings: { readonly retry: PoolSettings['retry']; readonly timeouts: PoolSettings['timeouts'] };
  readonly hostRewrite: HostRewrite;
  readonly transport: Transport;
  readonly backup = null;
  readonly upstream: Upstream;
  active = 0;
  retrying = 0;
  private readonly only: readonly Upstream[];

  /** `authority`: the Host header to send (the target as the client wrote it). */
  constructor(timeouts: PoolSettings['timeouts'], authority: string, upstream: Upstream, transport: Transport) {
    this.settings = { retry: forwardRetry, timeouts };
    this.hostRewrite = { kind: 'fixed', value: authority };
    this.upstream = upstream;
    this.transport = transport;
    this.only = [upstream];
  }

  pick(_ctx: PickContext): Upstream | undefined {
    return this.upstream.available() ? this.upstream : undefined;
  }

  pickExcept(ctx: PickContext, tried: readonly Upstream[]): Upstream | undefined {
    return tried.includes(this.upstream) ? undefined : this.pick(ctx);
  }

  pickInPanic(): Upstream | undefined {
    return undefined;
  }

  inPanic(): boolean {
    return false;
  }

  /** A destination has no backup. */
  pickBackup(): Upstream | undefined {
    return undefined;
  }

  eligible(): readonly Upstream[] {
    return this.only;
  }
}

/** What the forward phase needs from the exchange core (HttpProxy); `L` is the listener it hands back. */
export interface ForwardCore<L> {
  /** The balancer's destination clients (bounded). */
  readonly destinations: DestinationClients;
  refuse(ctx: Exchange, refusal: Refusal): void;
  fail(ctx: Exchange, error: FulcrumError): void;
  internalError(ctx: Exchange, err: unknown, status?: number): void;
  /** The destination was allowed and `ctx.pool` set: forward-headers and send, or the tunnel's connect. */
  allowed(ctx: Exchange, listener: L): void;
}

/** The target of the exchange by its kind, or the refusal (400, 405). */
function targetOf(ctx: Exchange): ForwardTarget | Refusal {
  const req = ctx.req;
  switch (ctx.forward!.kind) {
    case 'connect':
      return connectTarget(req.url);
    case 'absolute': {
      // upstreamPath: the target's path and query as sent (set at validate).
      return absoluteTarget(req.url, ctx.authority ?? '', ctx.upstreamPath);
    }
    case 'route': {
      const q = req.url.indexOf('?');
      return routeTarget(req, q === -1 ? '' : req.url.slice(q));
    }
  }
}

function publish(ctx: Exchange): void {
  if (forwardDecision.hasSubscribers) forwardDecision.publish({ ctx });
}

/**
 * The forward phase: the target (400 when malformed), Proxy-Authorization where asked (407),
 * then the policy's decision (403 denied, 400 not a host, 502 not resolvable). An allowed
 * destination becomes `ctx.pool` and the core goes on (`core.allowed`). Nothing is contacted
 * before the decision allowed it. Async steps end in this exchange only (never the process).
 */
export function decideForward<L>(core: ForwardCore<L>, ctx: Exchange, listener: L): void {
  const forwarder = ctx.forwarder!;
  const target = targetOf(ctx);
  if ('status' in target) return core.refuse(ctx, target);
  ctx.forwardTarget = target;
  // The route form's destination path comes from its `url` (absolute-form: the same as set at validate).
  if (target.path !== '') ctx.upstreamPath = target.path;
  if (forwarder.auth === null) return resolveDestination(core, ctx, listener, forwarder, target);
  const header = ctx.req.headers['proxy-authorization'];
  forwarder.auth.check(Array.isArray(header) ? header[0] : header).then(
    (result) => {
      if (ctx.done) return;
      try {
        if (result.ok) return resolveDestination(core, ctx, listener, forwarder, target);
        const info = ctx.forward!;
        info.decision = 'denied';
        info.reason = 'auth';
        publish(ctx);
        core.refuse(ctx, {
          status: 407,
          code: ErrorCode.ProxyAuthRequired,
          message: result.reason === 'missing' ? 'this proxy asks for Proxy-Authorization (Basic)' : 'the Proxy-Authorization credentials were not accepted',
          headers: ['proxy-authenticate', forwarder.auth!.challenge],
        });
      } catch (err) {
        core.internalError(ctx, err);
      }
    },
    (err: unknown) => core.internalError(ctx, err),
  );
}

/** Words for a denial, from the reason only (never the client's host, which may be hostile). */
const denialText: Record<string, string> = {
  no_rule: 'no rule allows this destination',
  denied_by_rule: 'a rule denies this destination',
  special_address: 'the destination is a private, loopback, link-local or other special-purpose address',
  port: 'this port is not allowed',
};

/** The error for a refused destination: 400 for a host that is no host, 502 for one that does not resolve, else 403. */
export function denialError(decision: Extract<ForwardDecision, { allowed: false }>): FulcrumError {
  if (decision.reason === 'bad_host') return new FulcrumError(ErrorCode.BadRequest, 'the destination is not a host name or IP address', 'client', 400, false);
  if (decision.reason === 'resolve_failed') return new FulcrumError(ErrorCode.ForwardResolveFailed, "the destination's name could not be resolved", 'upstream', 502, false);
  return new FulcrumError(ErrorCode.ForwardDenied, `destination refused by the forward proxy (${decision.reason}: ${denialText[decision.reason] ?? 'denied'})`, 'client', 403, false);
}

function resolveDestination<L>(core: ForwardCore<L>, ctx: Exchange, listener: L, forwarder: ForwardProxy, target: ForwardTarget): void {
  forwarder.policy.decide(target.host, target.port).then(
    (decision) => {
      if (ctx.done) return;
      try {
        const info = ctx.forward!;
        info.rule = decision.rule;
        if (!decision.allowed) {
          info.decision = 'denied';
          info.reason = decision.reason;
          publish(ctx);
          return core.fail(ctx, denialError(decision));
        }
        info.decision = 'allowed';
        publish(ctx);
        const { address, family, port } = decision;
        let upstream: Upstream;
        let transport: Transport;
        if (info.kind === 'connect') {
          upstream = new Upstream({ url: `http://${family === 6 ? `[${address}]` : address}:${port}`, weight: 1, maxConnections: 0 });
          const connectMs = forwarder.timeouts.connect;
          transport = { forward: (attempt) => connectTunnel(attempt, connectMs) };
        } else ({ upstream, transport } = core.destinations.lease(address, family, port, forwarder.timeouts));
        ctx.pool = new ForwardDestination(forwarder.timeouts, target.authority, upstream, transport);
        core.allowed(ctx, listener);
      } catch (err) {
        core.internalError(ctx, err);
      }
    },
    (err: unknown) => core.internalError(ctx, err),
  );
}

const noHead = Buffer.alloc(0);

/**
 * The "transport" of a CONNECT: a TCP connection to the attempt's upstream (an IP address, as
 * decided), within `connectMs`. Connected, it reports `switched(200)` with the socket (the core
 * answers `200 Connection Established` and opens the tunnel); a failure reports an error with
 * the codes src/proxy/status.ts maps (ECONNREFUSED 502, UND_ERR_CONNECT_TIMEOUT 504).
 */
export function connectTunnel(attempt: UpstreamAttempt, connectMs: number): void {
  if (!attempt.live) return;
  const upstream = attempt.upstream;
  const host = upstream.hostname.startsWith('[') ? upstream.hostname.slice(1, -1) : upstream.hostname;
  const socket = net.connect({ host, port: upstream.port, noDelay: true });
  let timer: NodeJS.Timeout | null = null;
  const done = (): void => {
    if (timer !== null) clearTimeout(timer);
    timer = null;
  };
  if (connectMs > 0) {
    timer = setTimeout(() => {
      timer = null;
      socket.destroy();
      attempt.error(Object.assign(new Error(`no connection to ${upstream.id} within ${connectMs}ms`), { code: 'UND_ERR_CONNECT_TIMEOUT' }));
    }, connectMs);
  }
  attempt.onCancel(() => {
    done();
    socket.destroy();
  });
  // After the switch the tunnel listens too; a report to a retired attempt is dropped.
  socket.on('error', (err) => {
    done();
    socket.destroy();
    attempt.error(err);
  });
  socket.once('connect', () => {
    done();
    attempt.switched(200, 'Connection Established', [], socket, noHead);
  });
}

/**
 * Drops every `Proxy-*` field from a flat header list (they are for this proxy, never for the
 * destination), and `Proxy` itself, which CGI programs read as HTTP_PROXY (httpoxy, CVE-2016-5385).
 */
export function dropProxyHeaders(headers: string[]): void {
  let w = 0;
  for (let r = 0; r < headers.length; r += 2) {
    const name = headers[r];
    if (name.length >= 5 && (name.charCodeAt(0) | 32) === 112 && (name.length === 5 ? name.toLowerCase() === 'proxy' : name.slice(0, 6).toLowerCase() === 'proxy-')) continue;
    headers[w++] = name;
    headers[w++] = headers[r + 1];
  }
  headers.length = w;
}

/**
 * Drops `Cookie` and `Authorization` from a flat header list: on the `/forward?url=` route the
 * request was addressed to the site that serves the route, so these are that site's credentials
 * (a browser sends the site's session cookie along), never the destination's, which is any host
 * the rules allow.
 */
export function dropSiteCredentials(headers: string[]): void {
  let w = 0;
  for (let r = 0; r < headers.length; r += 2) {
    const name = headers[r].toLowerCase();
    if (name === 'cookie' || name === 'authorization') continue;
    headers[w++] = headers[r];
    headers[w++] = headers[r + 1];
  }
  headers.length = w;
}

/** Response fields that act on the origin they arrive from: on the route they would act on the site's. */
const originStateFields = new Set(['set-cookie', 'set-cookie2', 'clear-site-data']);

/**
 * Confines a destination's answer on the `/forward?url=` route (a flat header list, changed in
 * place). It is served from the site's own origin, so the fields that would write that origin's
 * state (`Set-Cookie`, `Clear-Site-Data`) are dropped, and `Content-Security-Policy: sandbox` with
 * `X-Content-Type-Options: nosniff` keep a fetched page or script from running as the site (the
 * way user-content proxies such as GitHub's camo serve third-party bytes). The body is untouched.
 */
export function confineRouteAnswer(headers: string[]): void {
  let w = 0;
  for (let r = 0; r < headers.length; r += 2) {
    if (originStateFields.has(headers[r].toLowerCase())) continue;
    headers[w++] = headers[r];
    headers[w++] = headers[r + 1];
  }
  headers.length = w;
  headers.push('content-security-policy', 'sandbox', 'x-content-type-options', 'nosniff');
}
