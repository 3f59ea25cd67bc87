/**
 * The `json` access-log format: the pino line Fulcrum always wrote (`level`, `time`, `pid`,
 * `log: "access"`, the request's fields, `msg`), built by string concatenation instead of
 * serialising an object per request. Same keys, same order, same value types; a field whose
 * value is undefined is left out, as pino does.
 */
import type { RequestContext } from '../core/context.ts';
import type { TcpConnectionEvent } from '../core/events.ts';
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
    // Forward-proxy exchanges: how the client asked, the decision, the rule that made it and why a denial (`upstream` is the destination's address:port).
    forward: ctx.forward === null ? undefined : forwardFields(ctx.forward),
  };
}

/** The access log's `forward` object: `kind`, `decision`, `rule`, and `reason` for a denial (null values kept, as the JSON line writes them). */
function forwardFields(f: NonNullable<RequestContext['forward']>): Record<string, string | null> {
  const fields: Record<string, string | null> = { kind: f.kind, decision: f.decision, rule: f.rule };
  if (f.reason !== null) fields.reason = f.reason;
  return fields;
}

/** `,"forward":{...}` for a forward-proxy exchange, else nothing. Values come from fixed sets or the configuration; quoted all the same. */
function forwardJson(f: RequestContext['forward']): string {
  if (f === null) return '';
  return (
    ',"forward":{"kind":"' + f.kind + '"' +
    ',"decision":' + (f.decision === null ? 'null' : '"' + f.decision + '"') +
    ',"rule":' + (f.rule === null ? 'null' : jsonString(f.rule)) +
    (f.reason === null ? '' : ',"reason":' + jsonString(f.reason)) +
    '}'
  );
}

const pidField = ',"pid":' + process.pid + ',"log":"access","request_id":';
const tcpPidField = ',"pid":' + process.pid + ',"log":"access","protocol":"tcp","listener":';

/** Close reasons logged at warn (40): no upstream could be reached, or it failed mid-connection. */
const tcpWarnReasons = new Set(['connect_failed', 'no_upstream', 'upstream_error']);

/** pino's level for a TCP connection's line: 40 when the upstream side failed, else 30. */
export function tcpLevel(c: TcpConnectionEvent): number {
  return c.reason !== null && tcpWarnReasons.has(c.reason) ? 40 : 30;
}

/** A TCP line's `msg`: `TCP 127.0.0.1:50412 -> 127.0.0.1:6379 closed (client) after 93.4s`. */
export function tcpMessage(c: TcpConnectionEvent): string {
  return `TCP ${c.client.address}:${c.client.port} -> ${c.upstream?.id ?? 'no upstream'} closed (${c.reason ?? 'open'}) after ${(c.durationMs / 1000).toFixed(1)}s`;
}

/**
 * A TCP connection's fields as an object, in the line's order (undefined: left out): the pino
 * path logs this object; tests compare with it. `close` is why it ended (the reason label of
 * lb_tcp_connections_closed_total), `reason` what went wrong in words (as on HTTP lines).
 */
export function tcpFields(c: TcpConnectionEvent): Record<string, unknown> {
  return {
    protocol: 'tcp',
    listener: c.listener,
    client: c.client.address,
    client_port: c.client.port,
    sni: c.client.sni,
    pool: c.pool.name,
    upstream: c.upstream?.id ?? null,
    duration_ms: Math.round(c.durationMs * 100) / 100,
    bytes_in: c.bytesIn,
    bytes_out: c.bytesOut,
    attempts: c.attempts,
    close: c.reason,
    reason: c.error ?? undefined,
  };
}

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
      forwardJson(ctx.forward) +
      ',"msg":' + jsonString(accessMessage(ctx)) +
      '}\n'
    );
  },
  tcpLine(c, level, now) {
    return (
      '{"level":' + level +
      ',"time":"' + isoTime(now) + '"' +
      tcpPidField + jsonString(c.listener) +
      ',"client":' + jsonString(c.client.address) +
      ',"client_port":' + jsonNumber(c.client.port) +
      optional('sni', c.client.sni) +
      ',"pool":' + jsonString(c.pool.name) +
      optional('upstream', c.upstream?.id ?? null) +
      ',"duration_ms":' + jsonNumber(Math.round(c.durationMs * 100) / 100) +
      ',"bytes_in":' + jsonNumber(c.bytesIn) +
      ',"bytes_out":' + jsonNumber(c.bytesOut) +
      ',"attempts":' + jsonNumber(c.attempts) +
      optional('close', c.reason) +
      optional('reason', c.error ?? undefined) +
      ',"msg":' + jsonString(tcpMessage(c)) +
      '}\n'
    );
  },
};
