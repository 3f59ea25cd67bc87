/**
 * The one place where a failure becomes an HTTP status (Caddy's statusError): refused, reset or
 * a failed TLS handshake 502, any timeout 504, nothing available 503, client gone 499 (logged,
 * nothing sent).
 */
import { ErrorCode, FulcrumError } from '../errors.ts';
import { tlsFailureReason } from '../transport/upstream-tls.ts';

const connectCodes = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'EADDRNOTAVAIL', 'EHOSTDOWN', 'ENETDOWN']);
const resetCodes = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED', 'ERR_STREAM_PREMATURE_CLOSE']);
const protocolCodes = new Set(['UND_ERR_RES_CONTENT_LENGTH_MISMATCH', 'UND_ERR_HEADERS_OVERFLOW', 'UND_ERR_RES_EXCEEDED_MAX_SIZE', 'UND_ERR_INFO', 'ERR_INVALID_CHAR', 'ERR_INVALID_HTTP_TOKEN', 'ERR_HTTP_INVALID_HEADER_VALUE', 'ERR_INVALID_ARG_VALUE']);

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
  if (code === 'UND_ERR_INVALID_ARG' || code === 'UND_ERR_NOT_SUPPORTED') {
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
