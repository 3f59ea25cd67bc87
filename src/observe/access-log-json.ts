/**
 * The `json` access-log format: the pino line Fulcrum always wrote (`level`, `time`, `pid`,
 * `log: "access"`, the request's fields, `msg`), built by string concatenation instead of
 * serialising an object per request. Same keys, same order, same value types; a field whose
 * value is undefined is left out, as pino does.
 */
import type { RequestContext } from '../core/context.ts';
import type { AccessLogFormat } from './access-log-formats.ts';

/**
 * `s` as a JSON string literal, byte for byte what `JSON.stringify(s)` gives. Plain text (no
 * quote, backslash, control character or surrogate) is quoted as it is; anything else goes to
 * JSON.stringify, which is the reference.
 */
export function jsonString(s: string): string {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x22 || c === 0x5c || (c >= 0xd800 && c <= 0xdfff)) return JSON.stringify(s);
  }
  return '"' + s + '"';
}

/** A number as JSON writes it: NaN and the infinities become null. */
export function jsonNumber(n: number): string {
  return Number.isFinite(n) ? '' + n : 'null';
}

let isoMillisecond = -1;
let isoText = '';

/** `new Date(now).toISOString()`, made once per millisecond. */
export function isoTime(now: number): string {
  if (now !== isoMillisecond) {
    isoMillisecond = now;
    isoText = new Date(now).toISOString();
  }
  return isoText;
}

/** The line's `msg`: `GET /x 200`, or for a tunnel `GET /chat 101 tunnel closed (client) after 93.4s`. */
export function accessMessage(ctx: RequestContext): string {
  const head = ctx.req.method + ' ' + ctx.req.url + ' ' + ctx.status;
  return ctx.tunnelClose === null ? head : `${head} tunnel closed (${ctx.tunnelClose}) after ${(ctx.duration / 1000).toFixed(1)}s`;
}

/**
 * The request's fields as an object, in the line's order (undefined: left out). The pino path
 * (a logger Fulcrum does not write for, or readable output) logs this object; tests compare with it.
 */
export function accessFields(ctx: RequestContext): Record<string, unknown> {
  return {
    request_id: ctx.requestIdForUpstream ?? ctx.id,
    method: ctx.req.method,
    path: ctx.req.url,
    status: ctx.status,
    upstream: ctx.upstream?.id ?? null,
    pool: ctx.pool?.name ?? null,
    duration_ms: Math.round(ctx.duration * 100) / 100,
    bytes_in: ctx.bytesIn,
    bytes_out: ctx.bytesOut,
    client: ctx.clientAddress,
    listener: ctx.listener,
    attempts: ctx.attempts,
    error: ctx.error ? ctx.error.code : undefined,
    reason: ctx.error ? ctx.error.message : undefined,
    // A WebSocket tunnel logs once, when it ends: how long it was open and why it closed.
    tunnel_close: ctx.tunnelClose ?? undefined,
    // TLS connections only: the protocol version and what ALPN chose (null: the client offered none).
    tls_version: ctx.downstream.tls?.version,
    alpn: ctx.downstream.tls == null ? undefined : ctx.downstream.tls.alpn,
    // HTTP/2 streams say so (HTTP/1.x lines stay as they were); gRPC calls carry their status.
    protocol: ctx.downstream.protocol === 'h2' ? 'h2' : undefined,
    grpc_status: ctx.grpc ? ctx.grpcStatus : undefined,
  };
}

const pidField = ',"pid":' + process.pid + ',"log":"access","request_id":';

/** A string field that may be null or undefined: `,"key":"value"`, `,"key":null`, or nothing (undefined, as pino leaves it out). */
function optional(key: string, value: string | null | undefined): string {
  if (value === undefined) return '';
  return value === null ? ',"' + key + '":null' : ',"' + key + '":' + jsonString(value);
}

/** The `json` format. */
export const jsonFormat: AccessLogFormat = {
  name: 'json',
  line(ctx, level, now) {
    const error = ctx.error;
    const tls = ctx.downstream.tls ?? null;
    return (
      '{"level":' + level +
      ',"time":"' + isoTime(now) + '"' +
      pidField + jsonString(ctx.requestIdForUpstream ?? ctx.id) +
      ',"method":' + jsonString(ctx.req.method) +
      ',"path":' + jsonString(ctx.req.url) +
      ',"status":' + jsonNumber(ctx.status) +
      optional('upstream', ctx.upstream?.id ?? null) +
      optional('pool', ctx.pool?.name ?? null) +
      ',"duration_ms":' + jsonNumber(Math.round(ctx.duration * 100) / 100) +
      ',"bytes_in":' + jsonNumber(ctx.bytesIn) +
      ',"bytes_out":' + jsonNumber(ctx.bytesOut) +
      ',"client":' + jsonString(ctx.clientAddress) +
      ',"listener":' + jsonString(ctx.listener) +
      ',"attempts":' + jsonNumber(ctx.attempts) +
      (error ? optional('error', error.code) + optional('reason', error.message) : '') +
      optional('tunnel_close', ctx.tunnelClose ?? undefined) +
      (tls === null ? '' : ',"tls_version":' + jsonString(tls.version) + optional('alpn', tls.alpn)) +
      (ctx.downstream.protocol === 'h2' ? ',"protocol":"h2"' : '') +
      (ctx.grpc ? ',"grpc_status":' + jsonNumber(ctx.grpcStatus) : '') +
      ',"msg":' + jsonString(accessMessage(ctx)) +
      '}\n'
    );
  },
};
