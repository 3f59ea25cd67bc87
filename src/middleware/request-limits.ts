/**
 * The request-limits phase: what Node's parser does not already refuse. Header count (431),
 * request-target length (414), declared body size (413; an oversized chunked body is cut by the
 * body stream as it arrives). Header bytes and slow clients are Node's, configured on the server
 * (src/listeners/http-listener.ts).
 */
import type { RequestContext } from '../core/context.ts';
import type { Refusal, RequestGuard } from '../core/pipeline.ts';
import type { ListenerSettings } from '../config/schema.ts';
import { ErrorCode } from '../errors.ts';

/** The request-limits guard of one listener. */
export function requestLimitsGuard(limits: ListenerSettings['limits']): RequestGuard {
  const tooManyHeaders: Refusal = { status: 431, code: ErrorCode.TooManyHeaders, message: `more than ${limits.max_headers} header fields` };
  const urlTooLong: Refusal = { status: 414, code: ErrorCode.UriTooLong, message: `request-target longer than ${limits.max_url_bytes} bytes` };
  const bodyTooLarge: Refusal = { status: 413, code: ErrorCode.BodyTooLarge, message: `request body larger than ${limits.max_body_bytes} bytes` };
  return {
    phase: 'request-limits',
    check(ctx: RequestContext): Refusal | null {
      const req = ctx.req;
      if (req.rawHeaders.length > limits.max_headers * 2) return tooManyHeaders;
      if (req.url!.length > limits.max_url_bytes) return urlTooLong;
      if (limits.max_body_bytes > 0 && declaredBodyTooLarge(req.headers['content-length'], limits.max_body_bytes)) return bodyTooLarge;
      return null;
    },
  };
}

/** True when a Content-Length header announces more than `max` bytes. */
export function declaredBodyTooLarge(contentLength: string | undefined, max: number): boolean {
  return contentLength !== undefined && Number(contentLength) > max;
}
