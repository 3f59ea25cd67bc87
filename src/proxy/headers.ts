/**
 * Header rules at the proxy boundary. Hop-by-hop headers (RFC 9110 section 7.6.1) and every
 * header named in `Connection` are dropped in both directions; Node regenerates framing.
 * Forwarding headers are set by Fulcrum and believed from trusted proxies only. Header names
 * with `_` are dropped by default: CGI, WSGI, PHP and many frameworks read `X_Forwarded_For`
 * as `X-Forwarded-For` (nginx's `underscores_in_headers off`, Envoy's
 * `headers_with_underscores_action`).
 */
import type { RequestContext } from '../core/context.ts';

/** Headers that describe one connection, never forwarded (Go's net/http/httputil list). */
/** Hop-by-hop header names (RFC 9110 section 7.6.1, plus the legacy ones): never relayed either way. */
export const hopByHop: ReadonlySet<string> = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'transfer-encoding', 'upgrade', 'trailer', 'proxy-authenticate', 'proxy-authorization']);

/**
 * Fields that must not be taken from trailers (RFC 9110 section 6.5.1): message framing, routing,
 * request modifiers, authentication, response control and content handling; plus hop-by-hop
 * fields. One list for both directions and every protocol (HTTP/1.1 chunked trailers, HTTP/2).
 */
const forbiddenInTrailers: ReadonlySet<string> = new Set([
  ...hopByHop, 'content-length', 'host', 'expect', 'max-forwards', 'range', 'if-match', 'if-none-match', 'if-modified-since', 'if-unmodified-since', 'if-range',
  'authorization', 'www-authenticate', 'set-cookie', 'cookie', 'cache-control', 'age', 'expires', 'date', 'location', 'retry-after', 'vary', 'warning',
  'content-encoding', 'content-type', 'content-range', 'trailer',
  // What Fulcrum sets or believes only from trusted peers: a backend merging trailers into headers must not be fed them late.
  'forwarded', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-port', 'x-real-ip', 'via', 'x-request-id', 'pragma',
]);

/** True when a trailer field of this (lower-case) name is dropped rather than relayed. */
export function forbiddenTrailer(lowerName: string): boolean {
  return forbiddenInTrailers.has(lowerName);
}

/** How a pool sets the Host header: keep the client's, the upstream's, or a fixed value. */
export type HostRewrite = { kind: 'preserve' } | { kind: 'upstream' } | { kind: 'fixed'; value: string };

/**
 * What a listener does with a request header whose name has `_`: forward it, drop it (the
 * default), or refuse the request with 400 (`listeners[].headers_with_underscores`).
 */
export type UnderscoreAction = 'allow' | 'drop' | 'reject';

/** Per-listener and per-pool settings the header rules need, compiled once per config. */
export interface ForwardingSettings {
  /** `http` or `https`: what X-Forwarded-Proto says when Fulcrum sets it. */
  proto: string;
  /** The listener's port: what X-Forwarded-Port says when Fulcrum sets it. */
  port?: string;
  /** Strict-Transport-Security added to answers (https listeners with `hsts`), or undefined. */
  hsts?: string;
  /** Lower-case header that carries the verified client certificate subject upstream (mTLS), or undefined. */
  clientSubjectHeader?: string;
  /** The Via token, e.g. `1.1 fulcrum`. */
  via: string;
  /** Header names with `_` (default drop; `reject` is answered by request validation). */
  underscores?: UnderscoreAction;
}

/** The lowercase names listed in a Connection header value. */
function connectionTokens(value: string): string[] {
  return value.toLowerCase().split(',').map((t) => t.trim()).filter(Boolean);
}

/**
 * Builds the header list sent upstream from the client's raw headers. Returns null (and
 * nothing is sent) when the request carries more than one Host header, a smuggling vector.
 * Names with `_` are left out unless `settings.underscores` is `allow`; their names are kept in
 * `ctx.droppedHeaders` for the metrics and the debug log.
 */
export function buildUpstreamHeaders(ctx: RequestContext, rawHeaders: readonly string[], settings: ForwardingSettings, host: HostRewrite): string[] | null {
  let named: string[] | null = null;
  let clientHost: string | undefined;
  let forwardedFor: string | undefined;
  let forwardedProto: string | undefined;
  let forwardedHost: string | undefined;
  let forwardedPort: string | undefined;
  let requestId: string | undefined;
  let via: string | undefined;
  let te = false;
  const trusted = ctx.trustedPeer;
  const dropUnderscores = settings.underscores !== 'allow';
  // Host goes first so each attempt can set it in place (`setUpstreamHost`).
  const out: string[] = ['host', ''];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i];
    if (name.length === 10 && name.toLowerCase() === 'connection') {
      named = named ? named.concat(connectionTokens(rawHeaders[i + 1])) : connectionTokens(rawHeaders[i + 1]);
    }
  }
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i];
    const value = rawHeaders[i + 1];
    const lower = name.toLowerCase();
    switch (lower) {
      case 'host':
        if (clientHost !== undefined) return null;
        clientHost = value;
        continue;
      case 'te':
        if (connectionTokens(value).includes('trailers')) te = true;
        continue;
      case 'x-forwarded-for':
        if (trusted) forwardedFor = forwardedFor === undefined ? value : `${forwardedFor}, ${value}`;
        continue;
      case 'x-forwarded-proto':
        if (trusted) forwardedProto = value;
        continue;
      case 'x-forwarded-host':
        if (trusted) forwardedHost = value;
        continue;
      case 'x-forwarded-port':
        if (trusted) forwardedPort = value;
        continue;
      case 'x-request-id':
        if (trusted) requestId = value;
        continue;
      case 'forwarded':
      case 'x-real-ip':
        if (trusted) out.push(name, value);
        continue;
      case 'via':
        via = via === undefined ? value : `${via}, ${value}`;
        continue;
      case 'expect':
        // Node's server already answered 100-continue; upstream gets the body straight away.
        continue;
      case 'proxy':
        // httpoxy (CVE-2016-5385 and kin): CGI turns `Proxy` into HTTP_PROXY, which many HTTP clients take as their outbound proxy. No standard header is named so.
        continue;
      default:
        if (hopByHop.has(lower) || (named !== null && named.includes(lower))) continue;
        // The verified client subject is Fulcrum's to set: a client's own is dropped, also spelled with `_` (CGI reads both alike).
        if (settings.clientSubjectHeader !== undefined && (lower === settings.clientSubjectHeader || (name.indexOf('_') !== -1 && lower.replace(/_/g, '-') === settings.clientSubjectHeader))) continue;
        // Only names the cases above do not know can hold `_`: the check costs nothing for them.
        if (dropUnderscores && name.indexOf('_') !== -1) {
          (ctx.droppedHeaders ??= []).push(name);
          continue;
        }
        out.push(name, value);
    }
  }
  // Empty until an upstream is picked when the pool sends the upstream's own host (or the client sent none).
  out[1] = host.kind === 'preserve' ? (clientHost ?? '') : host.kind === 'fixed' ? host.value : '';
  out.push('x-forwarded-for', forwardedFor === undefined ? ctx.clientAddress : `${forwardedFor}, ${ctx.peerAddress}`);
  out.push('x-forwarded-proto', forwardedProto ?? settings.proto);
  if (forwardedPort !== undefined || settings.port !== undefined) out.push('x-forwarded-port', forwardedPort ?? settings.port!);
  if (settings.clientSubjectHeader !== undefined) {
    const subject = ctx.downstream.tls?.clientSubject;
    if (subject != null) out.push(settings.clientSubjectHeader, subject);
  }
  // The host the request was routed on: an absolute-form target's authority wins over Host (RFC 9112 section 3.2.2).
  const routedHost = ctx.authority ?? clientHost;
  if (forwardedHost !== undefined || routedHost !== undefined) out.push('x-forwarded-host', forwardedHost ?? routedHost!);
  // Via names the protocol the request came in on (RFC 9110 section 7.6.3): "2" for an HTTP/2 stream.
  const own = ctx.downstream.protocol === 'h2' ? VIA_H2 : settings.via;
  out.push('via', via === undefined ? own : `${via}, ${own}`);
  if (requestId !== undefined && requestId.length <= 200) ctx.requestIdForUpstream = requestId;
  out.push('x-request-id', ctx.requestIdForUpstream ?? ctx.id);
  if (te) out.push('te', 'trailers');
  return out;
}

/** Sets the Host header of an attempt when the pool sends the upstream's own `host:port`. */
export function setUpstreamHost(headers: string[], host: HostRewrite, upstreamHost: string): void {
  if (host.kind === 'upstream' || headers[1] === '') headers[1] = upstreamHost;
}

/** The Via entry of a request that came over HTTP/2. */
const VIA_H2 = '2 fulcrum';

/**
 * Filters an upstream's raw response headers (latin1 buffers from undici, or strings) into the
 * flat list written to the client, adding Via and X-Request-Id.
 */
export function buildResponseHeaders(ctx: RequestContext, raw: readonly (Buffer | string)[], settings: ForwardingSettings, closeConnection: boolean): string[] {
  const out: string[] = [];
  let named: string[] | null = null;
  let via: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i].toString('latin1');
    const lower = name.toLowerCase();
    const value = raw[i + 1].toString('latin1');
    if (lower === 'connection') {
      named = named ? named.concat(connectionTokens(value)) : connectionTokens(value);
      continue;
    }
    if (lower === 'via') {
      via = via === undefined ? value : `${via}, ${value}`;
      continue;
    }
    // Ours is added below; an upstream that echoes the id would otherwise send it twice (and HSTS when the listener sets it).
    if (hopByHop.has(lower) || lower === 'x-request-id' || (settings.hsts !== undefined && lower === 'strict-transport-security')) continue;
    out.push(name, value);
  }
  if (named !== null) {
    const filtered: string[] = [];
    for (let i = 0; i < out.length; i += 2) if (!named.includes(out[i].toLowerCase())) filtered.push(out[i], out[i + 1]);
    out.length = 0;
    out.push(...filtered);
  }
  out.push('via', via === undefined ? settings.via : `${via}, ${settings.via}`);
  out.push('x-request-id', ctx.requestIdForUpstream ?? ctx.id);
  if (settings.hsts !== undefined) out.push('strict-transport-security', settings.hsts);
  if (closeConnection) out.push('connection', 'close');
  return out;
}
