/**
 * The one place where a failure becomes an HTTP status (Caddy's statusError): refused, reset or
 * a failed TLS handshake 502, any timeout 504, nothing available 503, client gone 499 (logged,
 * nothing sent). HTTP/2: a stream the upstream did not process (REFUSED_STREAM, past a GOAWAY)
 * 502 `FUL_UPSTREAM_UNPROCESSED`, which may go again whatever the method; a protocol-class
 * RST_STREAM or GOAWAY code 502 protocol error; any other one a reset.
 */
import { ErrorCode, FulcrumError } from '../errors.ts';
import { tlsFailureReason } from '../transport/upstream-tls.ts';
import { http2ErrorName } from '../http2/error-codes.ts';

const connectCodes = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'EADDRNOTAVAIL', 'EHOSTDOWN', 'ENETDOWN']);
const resetCodes = new Set([
  'ECONNRESET', 'EPIPE', 'ECONNABORTED', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED', 'ERR_STREAM_PREMATURE_CLOSE',
  // node:http2: a stream or session torn down under a request (RST_STREAM and GOAWAY codes are read in upstreamFailure).
  'ERR_HTTP2_STREAM_CANCEL', 'ERR_HTTP2_INVALID_SESSION', 'ERR_HTTP2_SOCKET_UNBOUND', 'ERR_HTTP2_PING_CANCEL',
  // src/transport/http2.ts: a PING unanswered past ping_timeout, the connection presumed dead.
  'ERR_HTTP2_PING_TIMEOUT',
]);
const protocolCodes = new Set([
  'UND_ERR_RES_CONTENT_LENGTH_MISMATCH', 'UND_ERR_HEADERS_OVERFLOW', 'UND_ERR_RES_EXCEEDED_MAX_SIZE', 'UND_ERR_INFO', 'ERR_INVALID_CHAR', 'ERR_INVALID_HTTP_TOKEN', 'ERR_HTTP_INVALID_HEADER_VALUE', 'ERR_INVALID_ARG_VALUE',
  // node:http2: nghttp2 refused what the upstream sent (a bad frame, an invalid header block).
  'ERR_HTTP2_ERROR', 'ERR_HTTP2_INVALID_HEADERS', 'ERR_HTTP2_INVALID_INFO_STATUS', 'ERR_HTTP2_STATUS_INVALID', 'ERR_HTTP2_TOO_MANY_INVALID_FRAMES',
]);
/** node:http2 refusing a request header while sending it (the client's request cannot be expressed in HTTP/2). */
const http2RequestCodes = new Set(['ERR_HTTP2_INVALID_HEADER_VALUE', 'ERR_HTTP2_INVALID_CONNECTION_HEADERS', 'ERR_HTTP2_HEADER_SINGLE_VALUE', 'ERR_HTTP2_INVALID_PSEUDOHEADER', 'ERR_HTTP2_PSEUDOHEADER_NOT_ALLOWED']);
/** HTTP/2 error codes (RFC 9113 section 7) that say the upstream broke the protocol rather than went away. */
const http2ProtocolErrors = new Set(['PROTOCOL_ERROR', 'FLOW_CONTROL_ERROR', 'FRAME_SIZE_ERROR', 'COMPRESSION_ERROR', 'STREAM_CLOSED', 'HTTP_1_1_REQUIRED']);

/**
 * The RFC 9113 error code name an HTTP/2 failure carries, or null: `http2Code` (set by
 * src/transport/http2.ts), else node:http2's own messages ("Stream closed with error code
 * NGHTTP2_PROTOCOL_ERROR", "Session closed with error code 1").
 */
function http2CodeName(e: { http2Code?: unknown; message?: string } | null | undefined): string | null {
  if (e === null || e === undefined) return null;
  if (typeof e.http2Code === 'number') return http2ErrorName(e.http2Code);
  const message = e.message ?? '';
  const named = /NGHTTP2_([A-Z0-9_]+)/.exec(message);
  if (named !== null) return named[1];
  const numbered = /error code (\d+)/.exec(message);
  return numbered !== null ? http2ErrorName(Number(numbered[1])) : null;
}

/**
 * A FulcrumError for anything thrown while talking to an upstream. `sent` is false when the
 * request never reached a socket: then the upstream never saw it and it may go elsewhere.
 */
export function upstreamFailure(err: unknown, sent: boolean): FulcrumError {
  if (err instanceof FulcrumError) return err;
  const e = err as NodeJS.ErrnoException & { code?: string };
  const code = e?.code ?? '';
  const message = e?.message ?? String(err);
  if (code === 'UND_ERR_CONNECT_TIMEOUT' || (code === 'ETIMEDOUT' && !sent)) {
    return new FulcrumError(ErrorCode.ConnectTimeout, `connect timeout: ${message}`, 'upstream', 504, true, err);
  }
  if (code === 'ETIMEDOUT') return new FulcrumError(ErrorCode.UpstreamTimeout, 'upstream connection timed out', 'upstream', 504, false, err);
  if (connectCodes.has(code)) return new FulcrumError(ErrorCode.ConnectRefused, `connect failed (${code})`, 'upstream', 502, !sent, err);
  // A certificate that does not verify, a TLS alert, a close during the handshake (never a timeout: 504 above).
  const tls = tlsFailureReason(err);
  if (tls !== null) return new FulcrumError(ErrorCode.UpstreamTls, `TLS handshake with upstream failed: ${tls}`, 'upstream', 502, !sent, err);
  if (code === 'UND_ERR_HEADERS_TIMEOUT') return new FulcrumError(ErrorCode.HeadersTimeout, 'upstream sent no response headers in time', 'upstream', 504, false, err);
  if (code === 'UND_ERR_BODY_TIMEOUT') return new FulcrumError(ErrorCode.BodyTimeout, 'upstream body stalled past idle_body', 'upstream', 504, false, err);
  if (code.startsWith('HPE_') || protocolCodes.has(code) || e?.name === 'HTTPParserError') {
    return new FulcrumError(ErrorCode.UpstreamProtocol, `invalid response from upstream: ${message}`, 'upstream', 502, false, err);
  }
  if (code === 'ERR_HTTP2_STREAM_ERROR' || code === 'ERR_HTTP2_SESSION_ERROR' || code === 'ERR_HTTP2_GOAWAY_SESSION') {
    const name = code === 'ERR_HTTP2_GOAWAY_SESSION' ? 'REFUSED_STREAM' : http2CodeName(e);
    // Not processed by the upstream (RFC 9113 section 8.7): safe to send again whatever the method.
    if (name === 'REFUSED_STREAM') return new FulcrumError(ErrorCode.UpstreamUnprocessed, `upstream did not process the request (${message})`, 'upstream', 502, true, err);
    if (name !== null && http2ProtocolErrors.has(name)) {
      const hint = name === 'HTTP_1_1_REQUIRED' ? ': the upstream asks for HTTP/1.1 (protocol http1)' : '';
      return new FulcrumError(ErrorCode.UpstreamProtocol, `invalid HTTP/2 from upstream (${name})${hint}: ${message}`, 'upstream', 502, false, err);
    }
    const what = code === 'ERR_HTTP2_STREAM_ERROR' ? 'reset the HTTP/2 stream' : 'ended the HTTP/2 session';
    return new FulcrumError(ErrorCode.UpstreamReset, `upstream ${what} (${name ?? code}): ${message}`, 'upstream', 502, !sent, err);
  }
  if (code === 'UND_ERR_INVALID_ARG' || code === 'UND_ERR_NOT_SUPPORTED' || http2RequestCodes.has(code)) {
    // undici refused to send what the client asked for (a header value it will not write): the client's fault, never retried.
    return new FulcrumError(ErrorCode.BadRequest, `request cannot be forwarded: ${message}`, 'client', 400, false, err);
  }
  if (code === 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH') {
    return new FulcrumError(ErrorCode.ClientBody, 'request body did not match its Content-Length', 'client', 400, false, err);
  }
  if (resetCodes.has(code) || message === 'socket hang up') {
    return new FulcrumError(ErrorCode.UpstreamReset, `upstream closed the connection (${code || message})`, 'upstream', 502, !sent, err);
  }
  return new FulcrumError(ErrorCode.UpstreamReset, `upstream failure: ${message}`, 'upstream', 502, !sent, err);
}

/** The client left before the response was complete: logged as 499, nothing sent. */
export const clientGone = (): FulcrumError => new FulcrumError(ErrorCode.ClientAborted, 'client closed the connection', 'client', 499, false);

/** The whole-request timeout of the pool fired. */
export const requestTimedOut = (ms: number): FulcrumError => new FulcrumError(ErrorCode.RequestTimeout, `request took longer than ${ms}ms`, 'upstream', 504, false);

/** No upstream of the pool is available. */
export const noUpstream = (pool: string): FulcrumError => new FulcrumError(ErrorCode.NoUpstream, `no available upstream in pool "${pool}"`, 'upstream', 503, false);

/** The request body stream failed on the client side (it went away mid-upload). */
export const clientBodyFailed = (err: unknown): FulcrumError =>
  new FulcrumError(ErrorCode.ClientBody, `client request body failed: ${(err as Error)?.message ?? err}`, 'client', 400, false, err);
