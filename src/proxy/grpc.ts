/**
 * gRPC over the proxy (the protocol: github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md).
 * A gRPC caller reads its outcome from `grpc-status`, not from the HTTP status, so the answers
 * Fulcrum makes itself for gRPC requests are HTTP 200 with `grpc-status` and `grpc-message` in a
 * trailers-only answer, and `grpc-timeout` is the request's deadline.
 */
import type { RequestHead } from '../core/context.ts';
import { ErrorCode, type FulcrumError } from '../errors.ts';

/** gRPC status codes Fulcrum answers with (grpc/doc/statuscodes.md). */
export const GrpcStatus = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
} as const;

/** Names of the codes 0-16, for labels and logs. */
export const grpcStatusNames = ['OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND', 'ALREADY_EXISTS', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION', 'ABORTED', 'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS', 'UNAUTHENTICATED'];

/** What a request's content-type says of gRPC: 'grpc', 'web' (gRPC-Web, binary), 'web-text' (gRPC-Web, base64), or null. */
export type GrpcKind = 'grpc' | 'web' | 'web-text' | null;

/** True when `c` ends a media type's subtype: the end, `+suffix` or `;parameters`. */
function subtypeEnds(c: number): boolean {
  return Number.isNaN(c) || c === 43 /* + */ || c === 59 /* ; */;
}

/**
 * The gRPC kind of a request from its content-type: `application/grpc[+x]`, `application/grpc-web[+x]`,
 * `application/grpc-web-text[+x]` (parameters allowed). Other types cost one character test.
 */
export function grpcKind(req: RequestHead): GrpcKind {
  const type = req.headers['content-type'];
  if (type === undefined || type.length < 16 || (type.charCodeAt(12) | 0x20) !== 103 /* g */) return null;
  const lower = type.toLowerCase();
  if (!lower.startsWith('application/grpc')) return null;
  if (subtypeEnds(lower.charCodeAt(16))) return 'grpc';
  if (!lower.startsWith('-web', 16)) return null;
  if (subtypeEnds(lower.charCodeAt(20))) return 'web';
  return lower.startsWith('-text', 20) && subtypeEnds(lower.charCodeAt(25)) ? 'web-text' : null;
}

const timeoutUnits: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000001 };

/**
 * The deadline a `grpc-timeout` value asks for, in milliseconds (at least 1), or null when the
 * value is absent or malformed (`TimeoutValue` is 1-8 digits, then one of H M S m u n).
 */
export function grpcTimeoutMs(value: string | string[] | undefined): number | null {
  if (typeof value !== 'string') return null;
  const m = /^(\d{1,8})([HMSmun])$/.exec(value);
  if (m === null) return null;
  return Math.max(1, Math.ceil(Number(m[1]) * timeoutUnits[m[2]]));
}

/**
 * The gRPC status for an error Fulcrum answers itself: no upstream, a connect failure or a reset
 * is UNAVAILABLE (14, which clients may retry); a timeout DEADLINE_EXCEEDED (4); a rate limit or a
 * body over the limit RESOURCE_EXHAUSTED (8); a refusal by the firewall PERMISSION_DENIED (7); no
 * route UNIMPLEMENTED (12); a malformed request INTERNAL (13, as gRPC maps HTTP 400).
 */
export function grpcStatusFor(error: FulcrumError): number {
  switch (error.code) {
    case ErrorCode.RequestTimeout:
    case ErrorCode.HeadersTimeout:
    case ErrorCode.BodyTimeout:
    case ErrorCode.UpstreamTimeout:
      return GrpcStatus.DEADLINE_EXCEEDED;
    case ErrorCode.RateLimited:
    case ErrorCode.BodyTooLarge:
    case ErrorCode.TunnelLimit:
      return GrpcStatus.RESOURCE_EXHAUSTED;
    case ErrorCode.FirewallDenied:
      return GrpcStatus.PERMISSION_DENIED;
    case ErrorCode.NoRoute:
    case ErrorCode.UpgradeNotSupported:
      return GrpcStatus.UNIMPLEMENTED;
    case ErrorCode.ClientAborted:
      return GrpcStatus.CANCELLED;
    default:
      break;
  }
  if (error.status === 401) return GrpcStatus.UNAUTHENTICATED;
  if (error.status === 403) return GrpcStatus.PERMISSION_DENIED;
  if (error.status === 429) return GrpcStatus.RESOURCE_EXHAUSTED;
  if (error.status === 502 || error.status === 503 || error.status === 421) return GrpcStatus.UNAVAILABLE;
  if (error.status === 504) return GrpcStatus.DEADLINE_EXCEEDED;
  return GrpcStatus.INTERNAL;
}

/** `grpc-message` is percent-encoded: bytes outside 0x20-0x7E, and `%`, as %XX of their UTF-8 (PROTOCOL-HTTP2.md). */
export function encodeGrpcMessage(message: string): string {
  let out = '';
  for (const byte of Buffer.from(message, 'utf8')) {
    out += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** The `grpc-status` of a header or trailer list (flat), or -1 when it carries none. */
export function grpcStatusOf(raw: readonly (Buffer | string)[] | null): number {
  if (raw === null) return -1;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i].toString();
    if (name.length === 11 && name.toLowerCase() === 'grpc-status') {
      const code = Number(raw[i + 1].toString());
      return Number.isInteger(code) && code >= 0 ? code : -1;
    }
  }
  return -1;
}
