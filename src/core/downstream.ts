/**
 * The downstream interface: how the exchange core answers "the side that asked", whatever its
 * protocol. The core (src/proxy/http-proxy.ts) never names a protocol; it calls these methods
 * and hears back through `DownstreamOwner`. HTTP/1.1 is the first implementation
 * (src/downstream/http1.ts); a WebSocket tunnel is what an HTTP/1.1 downstream becomes after a
 * relayed 101 (src/downstream/tunnel.ts); HTTP/2 streams and TCP connections come next.
 * The split follows Pingora's `ProxyHttp` phases and Caddy's reverseproxy.go / streaming.go.
 */
import type { ConnectionTls } from '../tls/connection-tls.ts';
import type { Duplex, Readable } from 'node:stream';
import type { Socket } from 'node:net';

/** What a downstream tells the exchange it carries. */
export interface DownstreamOwner {
  /** The client went away before the answer was complete. */
  onClientGone(): void;
  /** The client's side of the request failed under it: a malformed body (`status` 400) or one too slow (408). */
  onRequestBroken(status: number, message: string): void;
}

/** The side that asked, as the exchange core sees it. */
export interface Downstream {
  /** The peer's address as the socket reports it (undefined once the socket is gone). */
  readonly remoteAddress: string | undefined;
  /**
   * The request body as a stream (the client's bytes, de-chunked), or null for a request without
   * one (RFC 9112 section 6.3). It ends when the body is complete; a client going away destroys it.
   */
  readonly requestBody: Readable | null;
  /**
   * The request's trailer fields, flat `[name, value, ...]` (HTTP/1.1 chunked trailers, HTTP/2
   * trailing HEADERS), or null when there were none. Known once `requestBody` has ended.
   */
  readonly requestTrailers: readonly string[] | null;
  /** The protocol the client speaks: `'h1'` or `'h2'` (labels, access log, gRPC answers). */
  readonly protocol: 'h1' | 'h2';
  /** False once the client's connection is gone. */
  readonly connected: boolean;
  /** What the connection's TLS handshake settled (version, ALPN, client subject), or null for plaintext. */
  readonly tls: ConnectionTls | null;
  /**
   * The client connection's socket (an HTTP/2 stream's: its session's), the same object for every
   * exchange on that connection, or null when there is none: its two ends go into a PROXY header
   * toward upstreams, and it is the key that keeps such an upstream connection to that client.
   */
  readonly socket: Socket | null;
  /** Told of the client's failures; set once by the core when the exchange starts. */
  owner: DownstreamOwner | null;
  /** True once the final response head went out: after that an error can only cut the exchange. */
  readonly headSent: boolean;
  /** True when the client waits for `100 Continue` before it sends the body (the upstream is asked and its 100 relayed). */
  readonly expectsContinue: boolean;
  /**
   * An interim (1xx, not 101) answer from the upstream: relayed where the protocol and the
   * client take it (RFC 9110 section 15.2), else dropped. `rawHeaders` flat `[name, value, ...]`.
   */
  informational(status: number, reason: string, rawHeaders: readonly (Buffer | string)[]): void;
  /**
   * The final response head; `headers` flat `[name, value, ...]`, hop-by-hop fields already
   * removed. Throws, with nothing written, when the protocol refuses a header.
   */
  head(status: number, reason: string | undefined, headers: string[]): void;
  /** A body chunk; false when the client is slow: wait for `whenWritable` before the next. */
  body(chunk: Buffer): boolean;
  /** Calls `resume` once, when the client has taken what was written. */
  whenWritable(resume: () => void): void;
  /** The answer is complete; `trailers` flat `[name, value, ...]` or null. */
  end(trailers: readonly (Buffer | string)[] | null): void;
  /**
   * Fulcrum's own answer (an error or a refusal): `status`, `headers` (flat) and a text `body`,
   * written whole when nothing was sent yet; `close` asks that the connection not be reused.
   * Once the head went out it cuts the exchange instead (`cut`).
   */
  fail(status: number, headers: string[], body: string, close: boolean): void;
  /** Ends the exchange on the client's side so that a partial answer never looks complete. */
  cut(): void;
  /**
   * Switches protocols (HTTP/1.1 `101`): writes the head, hands back the client's byte stream
   * and stops being an HTTP exchange. Null when this downstream cannot switch.
   */
  switchProtocols(status: number, reason: string, headers: string[]): Duplex | null;
}
