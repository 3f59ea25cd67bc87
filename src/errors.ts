/**
 * Typed errors with a stable code, the side they came from, the HTTP status they map to and
 * whether a request that hit them may be tried again (undici's and Pingora's habit).
 */

/** Which side caused an error: the client, an upstream, or Fulcrum itself. */
export type ErrorSource = 'client' | 'upstream' | 'internal';

/** A Fulcrum error: `code` is stable and what tests and logs key on. */
export class FulcrumError extends Error {
  readonly code: string;
  readonly source: ErrorSource;
  /** HTTP status sent to the client when this error ends a request (0: nothing is sent). */
  readonly status: number;
  /** True when the upstream never saw the request, so another upstream may be tried. */
  readonly retryable: boolean;

  constructor(code: string, message: string, source: ErrorSource, status: number, retryable: boolean, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'FulcrumError';
    this.code = code;
    this.source = source;
    this.status = status;
    this.retryable = retryable;
  }
}

/** Stable codes, one per way a proxied request can fail. */
export const ErrorCode = {
  BadRequest: 'FUL_BAD_REQUEST',
  NoRoute: 'FUL_NO_ROUTE',
  MisdirectedHost: 'FUL_MISDIRECTED_HOST',
  NoUpstream: 'FUL_NO_AVAILABLE_UPSTREAM',
  ConnectRefused: 'FUL_UPSTREAM_CONNECT_REFUSED',
  ConnectTimeout: 'FUL_UPSTREAM_CONNECT_TIMEOUT',
  HeadersTimeout: 'FUL_UPSTREAM_HEADERS_TIMEOUT',
  UpstreamTimeout: 'FUL_UPSTREAM_TIMEOUT',
  BodyTimeout: 'FUL_UPSTREAM_BODY_TIMEOUT',
  RequestTimeout: 'FUL_REQUEST_TIMEOUT',
  UpstreamReset: 'FUL_UPSTREAM_RESET',
  /** An HTTP/2 upstream refused the stream (REFUSED_STREAM, or beyond its GOAWAY's last stream): it did not process it, any method may go again. */
  UpstreamUnprocessed: 'FUL_UPSTREAM_UNPROCESSED',
  UpstreamProtocol: 'FUL_UPSTREAM_PROTOCOL_ERROR',
  UpstreamTls: 'FUL_UPSTREAM_TLS',
  ClientAborted: 'FUL_CLIENT_ABORTED',
  ClientBody: 'FUL_CLIENT_BODY_ERROR',
  BodyTooLarge: 'FUL_BODY_TOO_LARGE',
  TooManyHeaders: 'FUL_TOO_MANY_HEADERS',
  UriTooLong: 'FUL_URI_TOO_LONG',
  HttpVersion: 'FUL_HTTP_VERSION',
  UpgradeNotSupported: 'FUL_UPGRADE_NOT_SUPPORTED',
  TunnelLimit: 'FUL_TUNNEL_LIMIT',
  ClientTimeout: 'FUL_CLIENT_TIMEOUT',
  FirewallDenied: 'FUL_FIREWALL_DENIED',
  RateLimited: 'FUL_RATE_LIMITED',
  RateLimitStoreDown: 'FUL_RATE_LIMIT_STORE_DOWN',
  /** The forward proxy's rules refuse the destination (403; docs/forward-proxy.md). */
  ForwardDenied: 'FUL_FORWARD_DENIED',
  /** The forward proxy could not resolve the destination's name (502). */
  ForwardResolveFailed: 'FUL_FORWARD_RESOLVE_FAILED',
  /** The forward proxy asks for Proxy-Authorization and got none, or wrong credentials (407). */
  ProxyAuthRequired: 'FUL_PROXY_AUTH_REQUIRED',
  Internal: 'FUL_INTERNAL',
} as const;

/** A problem found in a configuration: where it is and what is wrong. */
export interface ConfigProblem {
  /** The file (or `env FULCRUM_PORT`, `<inline>`) the problem is in. */
  file: string;
  line: number;
  column: number;
  /** The key path, e.g. `pools.web.upstreams[0].weight`. */
  path: string;
  message: string;
}

/** Thrown when a configuration cannot be used; carries every problem found, not the first only. */
export class ConfigError extends Error {
  readonly problems: ConfigProblem[];
  constructor(problems: ConfigProblem[]) {
    super(problems.map(formatProblem).join('\n'));
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

/** `file:line:column: path: message`, the shape editors and terminals link. */
export function formatProblem(p: ConfigProblem): string {
  const where = p.line > 0 ? `${p.file}:${p.line}:${p.column}` : p.file;
  return p.path ? `${where}: ${p.path}: ${p.message}` : `${where}: ${p.message}`;
}
