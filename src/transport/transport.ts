/**
 * The transport interface: how a request reaches an upstream over a keep-alive pool and how
 * the response comes back. Fulcrum's own HTTP/1.1 client (http1.ts) is the default; undici and
 * node:http are kept as options so `npm run bench` can compare them on every machine; HTTP/2
 * upstreams (`protocol: h2 | h2c`) go through http2.ts, on node:http2.
 */
import type { Readable } from 'node:stream';
import type { Socket } from 'node:net';
import type { Upstream } from '../upstream/upstream.ts';
import type { PoolSettings } from '../config/schema.ts';
import type { UpstreamTls } from './upstream-tls.ts';

/**
 * One attempt of one exchange on one upstream, as a transport sees it (src/proxy/attempt.ts is
 * the proxy's side). The transport reads the request from it and reports into it, once per event;
 * after the proxy has moved on (a retry, an error answer, the client gone) `live` is false and
 * every report is ignored, so a late event from an old attempt can never touch the exchange.
 */
export interface UpstreamAttempt {
  readonly upstream: Upstream;
  readonly method: string;
  /** The request-target, origin-form. */
  readonly path: string;
  /** Request headers, flat `[name, value, ...]`, Host first. */
  readonly headers: string[];
  /** The body to send: the client's stream, a kept copy, or null. */
  readonly body: Readable | Buffer | null;
  /**
   * The client's request trailers, flat `[name, value, ...]`, or null: read once the body has
   * ended, and sent after it where the upstream protocol carries them (HTTP/1.1 chunked, HTTP/2).
   */
  readonly requestTrailers: readonly string[] | null;
  /** The client sent `Expect: 100-continue`: the transport passes it on and relays the upstream's 100. */
  readonly expectContinue: boolean;
  /** The client asked to switch protocols (`Connection: upgrade`; WebSocket): a 101 is expected, not an error. */
  readonly upgrade: boolean;
  /** False once the proxy has moved on from this attempt. */
  readonly live: boolean;
  /**
   * The PROXY protocol header (pool `proxy_protocol`) a new upstream connection for this attempt
   * starts with; absent or null: none. Read only when a connection is opened.
   */
  readonly proxyHeader?: Buffer | null;
  /**
   * The client connection an upstream connection opened for this attempt is bound to (its PROXY
   * header names that client): an idle connection is reused only for an attempt with the same key.
   * Absent or null: unbound, reusable by any attempt without a key.
   */
  readonly connectionKey?: object | null;
  /** How the proxy cancels the attempt (the transport destroys what it holds); called at most once. */
  onCancel(cancel: (reason: Error) => void): void;
  /** The request is being written to a socket (`reused`: one that carried an earlier exchange). */
  sending(reused: boolean): void;
  /** An interim 1xx (not 101) answer arrived; `reason` as the upstream sent it. */
  informational(status: number, reason: string, rawHeaders: readonly (Buffer | string)[]): void;
  /** Final response headers. Returns false when they could not be written (the attempt ends). */
  response(status: number, rawHeaders: readonly (Buffer | string)[], reason?: string): boolean;
  /** A body chunk; false when the client is slow: pause and wait for `whenWritable`. */
  data(chunk: Buffer): boolean;
  /** Calls `resume` once the client has taken what was written. */
  whenWritable(resume: () => void): void;
  /** The response is complete. */
  end(trailers: readonly (Buffer | string)[] | null): void;
  /** The attempt failed (`sending` tells whether the upstream may have seen the request). */
  error(err: unknown): void;
  /** The upstream switched protocols (101) on an upgrade request: `socket` and the bytes already read past the head are the tunnel's. */
  switched(status: number, reason: string, rawHeaders: readonly (Buffer | string)[], socket: Socket, head: Buffer): void;
}

/** What a client toward one upstream is built from (its key in ConnectionPools). */
export interface ClientSettings {
  keepalive: PoolSettings['keepalive'];
  timeouts: PoolSettings['timeouts'];
  /** Most sockets to the upstream (null: no limit): the smaller of keepalive.max_sockets and the upstream's max_connections. */
  maxSockets: number | null;
  /** The pool's TLS for an `https://` upstream (read once when the pool was built); null for `http://`. */
  tls: UpstreamTls | null;
  /** The pool's HTTP/2 client settings (streams per session, sessions, PING keepalive, window); read by `protocol: h2 | h2c` clients only. */
  http2: PoolSettings['http2'];
}

/** A client toward one upstream over one protocol (keep-alive sockets), kept across configuration changes. */
export interface UpstreamClient {
  /** Sends the attempt's request; reports into the attempt. */
  forward(attempt: UpstreamAttempt): void;
  /** Idle sockets close now, busy ones when their exchange ends; a closed client never opens a socket again. */
  close(): Promise<void>;
}

/** A client toward the upstreams of one pool. */
export interface Transport {
  /** Sends the attempt's request to `attempt.upstream`; reports through the attempt. */
  forward(attempt: UpstreamAttempt): void;
}

/** Keep-alive idle time actually used: the configured limit less the safety margin. */
export function effectiveIdle(idleTimeout: number, margin: number): number {
  return idleTimeout > margin ? idleTimeout - margin : Math.max(1, Math.floor(idleTimeout / 2));
}

/**
 * False when a complete answer leaves its upstream connection in doubt: a 204 that declared a
 * body (`Transfer-Encoding`, or a `Content-Length` other than 0), or a 304 with
 * `Transfer-Encoding`. Those bytes, if the upstream sends them, would be read as the start of
 * the next answer on that socket, so it is not reused. (A 304 may carry the `Content-Length` of
 * the full answer, and a HEAD answer its framing: both normal, both keep the socket.)
 */
export function socketReusableAfter(status: number, rawHeaders: readonly (Buffer | string)[]): boolean {
  if (status !== 204 && status !== 304) return true;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i].toString('latin1').toLowerCase();
    if (name === 'transfer-encoding') return false;
    if (name === 'content-length' && status === 204 && rawHeaders[i + 1].toString('latin1').trim() !== '0') return false;
  }
  return true;
}

