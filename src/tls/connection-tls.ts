/**
 * What a client connection's TLS handshake settled, kept on its socket for the requests on it:
 * the access log's `tls_version` and `alpn`, and the verified client subject that mTLS passes
 * upstream. A module of its own with no imports, so the request path reaches it cheaply.
 */
import type { Socket } from 'node:net';

/** The TLS side of one client connection. */
export interface ConnectionTls {
  /** `TLSv1.3` or `TLSv1.2`. */
  version: string;
  /** The protocol ALPN chose (`http/1.1`), or null when the client offered none. */
  alpn: string | null;
  /** The server name the client asked for (SNI), lower case, or null. */
  serverName: string | null;
  /** The negotiated cipher (`TLS_AES_128_GCM_SHA256`). */
  cipher: string;
  /** The verified client certificate's subject (RFC 4514, `CN=alice,O=Example`), or null. */
  clientSubject: string | null;
}

const kTls = Symbol('fulcrum.tls');

/** The TLS details of `socket`, or null for a plaintext connection. */
export function connectionTls(socket: Socket | null | undefined): ConnectionTls | null {
  return (socket as (Socket & { [kTls]?: ConnectionTls }) | null | undefined)?.[kTls] ?? null;
}

/** Records the TLS details of a connection once its handshake is done. */
export function setConnectionTls(socket: Socket, details: ConnectionTls): void {
  (socket as Socket & { [kTls]?: ConnectionTls })[kTls] = details;
}
