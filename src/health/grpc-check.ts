/**
 * The gRPC health check: one `grpc.health.v1.Health/Check` call per probe over HTTP/2 (h2c for
 * an `http://` upstream, h2 over TLS for an `https://` one), healthy only when the answer is
 * `SERVING`. The protocol is the one in grpc/grpc `doc/health-checking.md` and
 * `src/proto/grpc/health/v1/health.proto`, framed as `doc/PROTOCOL-HTTP2.md` says:
 *
 *     HealthCheckRequest  { string service = 1; }
 *     HealthCheckResponse { ServingStatus status = 1; }   // UNKNOWN 0, SERVING 1, NOT_SERVING 2, SERVICE_UNKNOWN 3
 *
 * Both messages are encoded and decoded here by hand (protobuf's wire format, no compiler): the
 * decoder walks any bytes without throwing, skips unknown fields, and says what is wrong with
 * malformed ones. Each probe opens its own session and closes it after the answer, like the
 * HTTP probes' `Connection: close`: a probe sees what a new connection would (refused, TLS,
 * ALPN), and nothing stays open between probes or after the checker stops.
 *
 * node:http2 is loaded on the first probe, so a process without gRPC checks never loads it.
 * This file does not use the HTTP/2 request transport (src/transport/): the check is its own
 * small client, as the HTTP probes are.
 */
import type * as Http2 from 'node:http2';
import tls from 'node:tls';
import { formatDuration } from '../config/duration.ts';
import type { Upstream } from '../upstream/upstream.ts';
import { duringHandshake, upstreamTlsOptions, type UpstreamTls } from '../transport/upstream-tls.ts';
import { http2ErrorName } from '../http2/error-codes.ts';

/** The method path of the health check call. */
export const healthCheckPath = '/grpc.health.v1.Health/Check';

/** `HealthCheckResponse.ServingStatus` by number (health.proto). */
export const servingStatusNames: readonly string[] = ['UNKNOWN', 'SERVING', 'NOT_SERVING', 'SERVICE_UNKNOWN'];

/** gRPC status codes by number (grpc/grpc `doc/statuscodes.md`). */
export const grpcStatusNames: readonly string[] = [
  'OK',
  'CANCELLED',
  'UNKNOWN',
  'INVALID_ARGUMENT',
  'DEADLINE_EXCEEDED',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'PERMISSION_DENIED',
  'RESOURCE_EXHAUSTED',
  'FAILED_PRECONDITION',
  'ABORTED',
  'OUT_OF_RANGE',
  'UNIMPLEMENTED',
  'INTERNAL',
  'UNAVAILABLE',
  'DATA_LOSS',
  'UNAUTHENTICATED',
];

/**
 * The largest HealthCheckResponse accepted, in bytes. A real one is 2 bytes (11 with a negative
 * status); the room is for fields a later health.proto may add.
 */
export const maxResponseMessageBytes = 4096;

/** A decoded message, or why the bytes are not one. */
export type Decoded<T> = { ok: true; value: T } | { ok: false; malformed: string };

// ---------------------------------------------------------------------------------------------
// Protobuf wire format (protobuf.dev/programming-guides/encoding): just what the two messages need.

const wireVarint = 0;
const wireFixed64 = 1;
const wireLengthDelimited = 2;
const wireFixed32 = 5;
const maxFieldNumber = 2 ** 29 - 1;

/** A varint's bytes (base 128, least significant group first). `value` is below 2^53 here. */
function varint(value: number): number[] {
  const out: number[] = [];
  while (value > 0x7f) {
    out.push((value % 0x80) | 0x80);
    value = Math.floor(value / 0x80);
  }
  out.push(value);
  return out;
}

/** A varint at `pos`: its 64-bit value and where the next byte starts; null when it runs past the end or past 10 bytes. */
function readVarint(bytes: Uint8Array, pos: number): { value: bigint; next: number } | null {
  let value = 0n;
  for (let i = 0; i < 10; i++) {
    if (pos + i >= bytes.length) return null;
    const b = bytes[pos + i];
    value |= BigInt(b & 0x7f) << BigInt(7 * i);
    if ((b & 0x80) === 0) return { value: BigInt.asUintN(64, value), next: pos + i + 1 };
  }
  return null;
}

/** One field as the wire carries it: a varint's value, or a length-delimited field's bytes (fixed fields are skipped unread). */
type Field = { number: number; wire: number; varint: bigint; bytes: Uint8Array | null };

/**
 * Calls `onField` for each field of a message, in order; returns null when every byte was
 * walked, else what is malformed (the walk stops there). Groups (wire types 3 and 4, deprecated
 * since proto2) and the unused wire types 6 and 7 are malformed here.
 */
function walkFields(bytes: Uint8Array, onField: (field: Field) => string | null): string | null {
  let pos = 0;
  while (pos < bytes.length) {
    const key = readVarint(bytes, pos);
    if (key === null) return `truncated field key at byte ${pos}`;
    if (key.value > BigInt(maxFieldNumber * 8 + 7)) return `field number out of range at byte ${pos}`;
    const number = Number(key.value >> 3n);
    const wire = Number(key.value & 7n);
    if (number === 0) return `field number 0 at byte ${pos}`;
    pos = key.next;
    let field: Field;
    if (wire === wireVarint) {
      const v = readVarint(bytes, pos);
      if (v === null) return `truncated varint in field ${number}`;
      field = { number, wire, varint: v.value, bytes: null };
      pos = v.next;
    } else if (wire === wireLengthDelimited) {
      const length = readVarint(bytes, pos);
      if (length === null) return `truncated length of field ${number}`;
      const left = bytes.length - length.next;
      if (length.value > BigInt(left)) return `field ${number} declares ${length.value} bytes, ${left} left`;
      const end = length.next + Number(length.value);
      field = { number, wire, varint: 0n, bytes: bytes.subarray(length.next, end) };
      pos = end;
    } else if (wire === wireFixed64 || wire === wireFixed32) {
      const size = wire === wireFixed64 ? 8 : 4;
      if (pos + size > bytes.length) return `truncated ${size * 8}-bit field ${number}`;
      field = { number, wire, varint: 0n, bytes: null };
      pos += size;
    } else {
      return `wire type ${wire} (${wire === 3 || wire === 4 ? 'group' : 'invalid'}) in field ${number}`;
    }
    const problem = onField(field);
    if (problem !== null) return problem;
  }
  return null;
}

const wireNames = ['varint', '64-bit', 'length-delimited', 'group start', 'group end', '32-bit'];

function wrongWire(field: Field, expected: number): string {
  return `field ${field.number} has wire type ${field.wire} (${wireNames[field.wire] ?? 'invalid'}), expected ${wireNames[expected]}`;
}

/** HealthCheckRequest's bytes (no gRPC frame): field 1 as UTF-8, omitted when `service` is "" (proto3 leaves defaults out). */
export function encodeHealthCheckRequest(service: string): Buffer {
  if (service === '') return Buffer.alloc(0);
  const text = Buffer.from(service, 'utf8');
  return Buffer.concat([Buffer.from([(1 << 3) | wireLengthDelimited, ...varint(text.length)]), text]);
}

/** HealthCheckRequest from its bytes: the service name ("" when absent; the last one wins, as in protobuf); unknown fields skipped; never throws. */
export function decodeHealthCheckRequest(bytes: Uint8Array): Decoded<{ service: string }> {
  let service = '';
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  const problem = walkFields(bytes, (field) => {
    if (field.number !== 1) return null;
    if (field.wire !== wireLengthDelimited) return wrongWire(field, wireLengthDelimited);
    try {
      service = utf8.decode(field.bytes!);
    } catch {
      return 'field 1 (service) is not valid UTF-8';
    }
    return null;
  });
  return problem === null ? { ok: true, value: { service } } : { ok: false, malformed: `HealthCheckRequest: ${problem}` };
}

/** HealthCheckResponse's bytes (no gRPC frame): field 1 as a varint, omitted for UNKNOWN (0). `status` is an int32. */
export function encodeHealthCheckResponse(status: number): Buffer {
  if (status === 0) return Buffer.alloc(0);
  // A negative enum is sign-extended to 64 bits on the wire, 10 bytes.
  const wire = BigInt.asUintN(64, BigInt(status));
  const out = [(1 << 3) | wireVarint];
  let v = wire;
  while (v > 0x7fn) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
  return Buffer.from(out);
}

/**
 * HealthCheckResponse from its bytes: `status` as an int32 (UNKNOWN, 0, when absent; the last
 * one wins; a number health.proto does not name is kept as it is); unknown fields skipped;
 * never throws.
 */
export function decodeHealthCheckResponse(bytes: Uint8Array): Decoded<{ status: number }> {
  let status = 0;
  const problem = walkFields(bytes, (field) => {
    if (field.number !== 1) return null;
    if (field.wire !== wireVarint) return wrongWire(field, wireVarint);
    // Enums are int32: the low 32 bits, signed.
    status = Number(BigInt.asIntN(32, field.varint));
    return null;
  });
  return problem === null ? { ok: true, value: { status } } : { ok: false, malformed: `HealthCheckResponse: ${problem}` };
}

// ---------------------------------------------------------------------------------------------
// gRPC over HTTP/2 (grpc/grpc doc/PROTOCOL-HTTP2.md).

/** A message in its gRPC frame: the compressed flag (0) and the length, 4 bytes big-endian, then the bytes. */
export function frameGrpcMessage(message: Uint8Array): Buffer {
  const out = Buffer.alloc(5 + message.length);
  out.writeUInt32BE(message.length, 1);
  out.set(message, 5);
  return out;
}

/** One message of a gRPC body, with its compressed flag. */
export interface GrpcMessage {
  compressed: boolean;
  bytes: Buffer;
}

/**
 * The messages of a whole gRPC body, each at most `maxMessage` bytes; malformed when a frame
 * is cut short, its flag is neither 0 nor 1, or it declares more than `maxMessage`. Never throws.
 */
export function readGrpcMessages(body: Buffer, maxMessage = maxResponseMessageBytes): Decoded<GrpcMessage[]> {
  const messages: GrpcMessage[] = [];
  let pos = 0;
  while (pos < body.length) {
    if (body.length - pos < 5) return { ok: false, malformed: `a gRPC frame cut short: ${body.length - pos} of its 5 header bytes` };
    const flag = body[pos];
    const length = body.readUInt32BE(pos + 1);
    if (flag > 1) return { ok: false, malformed: `a gRPC frame with compressed flag ${flag} (0 or 1 expected)` };
    if (length > maxMessage) return { ok: false, malformed: `a gRPC message of ${length} bytes (at most ${maxMessage} expected)` };
    if (body.length - pos - 5 < length) return { ok: false, malformed: `a gRPC message cut short: ${body.length - pos - 5} of ${length} bytes` };
    messages.push({ compressed: flag === 1, bytes: body.subarray(pos + 5, pos + 5 + length) });
    pos += 5 + length;
  }
  return { ok: true, value: messages };
}

/**
 * `grpc-timeout` for `ms` milliseconds: at most 8 digits and a unit, the finest unit that fits
 * (`1500m`, `200000S`), rounded up so the server never gets less time than the probe.
 */
export function grpcTimeout(ms: number): string {
  const units: [string, number][] = [
    ['m', 1],
    ['S', 1000],
    ['M', 60_000],
    ['H', 3_600_000],
  ];
  for (const [unit, size] of units) {
    const n = Math.max(1, Math.ceil(ms / size));
    if (n <= 99_999_999) return `${n}${unit}`;
  }
  return '99999999H';
}

/** HTTP/2 headers as node:http2 gives them (`:status` is a number). */
export type GrpcHeaders = Readonly<Record<string, string | string[] | number | undefined>>;

/** An HTTP/2 answer to the Check call as received: the response headers, the body, the trailers. */
export interface GrpcAnswer {
  /** The response headers (`:status`, `content-type`, and `grpc-status` in a trailers-only answer). */
  headers: GrpcHeaders;
  /** True when the headers ended the stream (a trailers-only answer: they carry grpc-status). */
  headersOnly: boolean;
  body: Buffer;
  /** The trailers; null when none came. */
  trailers: GrpcHeaders | null;
}

const grpcContentType = /^application\/grpc(\+proto)?(;|$)/i;
const maxDetail = 200;

/** A header's one value (the first of a repeated one). */
function headerValue(headers: GrpcHeaders, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v === undefined ? v : String(v);
}

/** `grpc-message`, percent-decoded (PROTOCOL-HTTP2.md), shortened for a log line. */
function grpcMessageOf(headers: GrpcHeaders): string {
  const raw = headerValue(headers, 'grpc-message') ?? '';
  let text: string;
  try {
    text = decodeURIComponent(raw);
  } catch {
    text = raw;
  }
  return text.length > maxDetail ? `${text.slice(0, maxDetail)}...` : text;
}

/**
 * The verdict on one answer to `Check(service)`: null when it says SERVING, else why not, in
 * words for the log and the upstream's state change: `HTTP status 404 (not a gRPC answer)`,
 * `grpc-status 12 (UNIMPLEMENTED): ...`, `grpc health: NOT_SERVING`,
 * `grpc health: SERVICE_UNKNOWN "foo"`. Never throws.
 */
export function grpcHealthVerdict(answer: GrpcAnswer, service: string): string | null {
  const { headers } = answer;
  const status = Number(headerValue(headers, ':status'));
  const contentType = headerValue(headers, 'content-type') ?? '';
  if (status !== 200) return `HTTP status ${status} (not a gRPC answer${contentType !== '' ? `, content-type ${JSON.stringify(contentType)}` : ''})`;
  if (!grpcContentType.test(contentType)) return `not a gRPC answer: content-type ${contentType !== '' ? JSON.stringify(contentType) : 'missing'}`;
  const statusHeaders = answer.headersOnly ? headers : answer.trailers;
  const grpcStatus = statusHeaders === null ? undefined : headerValue(statusHeaders, 'grpc-status');
  if (grpcStatus === undefined) return answer.trailers === null && !answer.headersOnly ? 'the answer ended without trailers (no grpc-status)' : 'no grpc-status in the trailers';
  const code = /^\d{1,3}$/.test(grpcStatus) ? Number(grpcStatus) : NaN;
  if (code !== 0) {
    const message = grpcMessageOf(statusHeaders!);
    const name = grpcStatusNames[code] ?? 'not a gRPC status code';
    return `grpc-status ${Number.isNaN(code) ? JSON.stringify(grpcStatus) : code} (${name})${message !== '' ? `: ${message}` : ''}`;
  }
  const messages = readGrpcMessages(answer.body);
  if (!messages.ok) return `grpc health: ${messages.malformed}`;
  if (messages.value.length !== 1) return `grpc health: ${messages.value.length} messages in the answer (1 expected)`;
  const [message] = messages.value;
  if (message.compressed) return `grpc health: a compressed answer (grpc-encoding ${headerValue(headers, 'grpc-encoding') ?? 'not given'}), which was not asked for`;
  const decoded = decodeHealthCheckResponse(message.bytes);
  if (!decoded.ok) return `grpc health: ${decoded.malformed}`;
  const serving = decoded.value.status;
  if (serving === 1) return null;
  const name = servingStatusNames[serving] ?? `status ${serving} (not a ServingStatus)`;
  return `grpc health: ${name}${service !== '' || serving === 3 ? ` ${JSON.stringify(service)}` : ''}`;
}

// ---------------------------------------------------------------------------------------------
// The probe.

/** What one probe needs: where, how (TLS for an https upstream), what to ask, how long. */
export interface GrpcProbeOptions {
  upstream: Upstream;
  /** The pool's TLS for an https upstream (ALPN h2 is offered instead of http/1.1); null for h2c. */
  tls: UpstreamTls | null;
  /** `:authority` (the upstream's host:port, or the check's `host`). */
  authority: string;
  /** The service asked about; "" for the server as a whole. */
  service: string;
  /** The whole probe, connect to trailers, in milliseconds; also sent as `grpc-timeout`. */
  timeout: number;
}

let http2Module: typeof Http2 | null = null;

function http2(): typeof Http2 {
  return (http2Module ??= process.getBuiltinModule('node:http2'));
}

/** What an authority (RFC 3986 section 3.2) may hold: visible ASCII, no space. */
const authorityChars = /^[!-~]+$/;

const requestMessages = new Map<string, Buffer>();

/** The framed request for `service`, built once per service name. */
function requestFor(service: string): Buffer {
  let framed = requestMessages.get(service);
  if (framed === undefined) {
    framed = frameGrpcMessage(encodeHealthCheckRequest(service));
    // Bounded: a checker asks about one service; a long-lived process sees a few through reloads.
    if (requestMessages.size < 64) requestMessages.set(service, framed);
  }
  return framed;
}

/**
 * One health check call on a session of its own. Resolves null when the upstream answered
 * SERVING, or the reason it is not healthy (the gRPC answer, an HTTP/2 failure, a timeout,
 * the upstream not speaking HTTP/2); resolves `"stopped"` when `signal` aborts. Rejects with the
 * connection's own error when it could not be opened (refused, reset, DNS, a TLS handshake
 * failure, marked with `duringHandshake`), for the checker to put in words like its other
 * probes'. The session is closed before it settles.
 */
export function probeGrpcHealth(options: GrpcProbeOptions, signal: AbortSignal): Promise<string | null> {
  const { upstream, tls: secure, authority, service, timeout } = options;
  if (signal.aborted) return Promise.resolve('stopped');
  // Node sends such a value as it is and the upstream resets the stream (PROTOCOL_ERROR): say why instead.
  if (!authorityChars.test(authority)) return Promise.resolve(`${JSON.stringify(authority)} cannot be an HTTP/2 :authority (check the health check's host)`);
  const h2 = http2();
  return new Promise((resolve, reject) => {
    let settled = false;
    let session: Http2.ClientHttp2Session | null = null;
    let tlsSocket: tls.TLSSocket | null = null;
    let handshaken = secure === null;
    let settingsSeen = false;
    let answer: GrpcAnswer | null = null;
    let streamError: Error | null = null;
    const chunks: Buffer[] = [];
    let bodyBytes = 0;

    const finish = (): void => {
      settled = true;
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      session?.destroy();
    };
    const done = (verdict: string | null): void => {
      if (settled) return;
      finish();
      resolve(verdict);
    };
    const fail = (err: unknown): void => {
      if (settled) return;
      finish();
      const verdict = http2Failure(err, handshaken, settingsSeen);
      if (verdict !== null) resolve(verdict);
      else reject(handshaken ? err : duringHandshake(err));
    };
    const onAbort = (): void => done('stopped');
    signal.addEventListener('abort', onAbort, { once: true });
    const timer = setTimeout(() => {
      // Worded as the HTTP and TCP probes word theirs: nothing added while the TCP connect is unfinished.
      const connecting = tlsSocket !== null ? tlsSocket.connecting : session?.connecting !== false;
      const where = connecting ? '' : !handshaken ? ' (TLS handshake not finished)' : !settingsSeen ? ' (no HTTP/2 settings from the upstream)' : ' (no answer)';
      done(`timeout after ${formatDuration(timeout)}${where}`);
    }, timeout);

    try {
      session = h2.connect(upstream.origin, {
        ...(secure !== null
          ? {
              createConnection: (): tls.TLSSocket => {
                tlsSocket = tls.connect({ ...upstreamTlsOptions(upstream, secure), ALPNProtocols: ['h2'] });
                tlsSocket.once('secureConnect', () => (handshaken = true));
                return tlsSocket;
              },
            }
          : {}),
        settings: { enablePush: false },
      });
    } catch (err) {
      return fail(err);
    }
    const s = session;
    s.on('error', fail);
    s.once('remoteSettings', () => (settingsSeen = true));
    s.once('connect', () => {
      // A TLS server that ignores ALPN (no alert) would get HTTP/2 frames it cannot read.
      if (tlsSocket !== null && tlsSocket.alpnProtocol !== 'h2') {
        done(`the upstream did not agree to HTTP/2 in the TLS handshake (ALPN: ${tlsSocket.alpnProtocol || 'none'}; a gRPC server offers h2)`);
      }
    });
    s.once('goaway', (code: number) => {
      if (answer === null && code !== h2.constants.NGHTTP2_NO_ERROR) done(`the upstream closed the HTTP/2 connection (GOAWAY ${http2ErrorName(code)})`);
    });
    // Closed with no error and no answer: the peer hung up.
    s.once('close', () => fail(streamError ?? Object.assign(new Error('the connection closed before an answer'), { code: 'ECONNRESET' })));

    let stream: Http2.ClientHttp2Stream;
    try {
      stream = s.request({
        ':method': 'POST',
        ':path': healthCheckPath,
        ':authority': authority,
        'content-type': 'application/grpc',
        te: 'trailers',
        'grpc-timeout': grpcTimeout(timeout),
        'user-agent': 'fulcrum-health-check',
      });
    } catch (err) {
      // Not expected (every header is checked above); a throw here must still settle the probe.
      return fail(err);
    }
    stream.on('error', (err: Error & { code?: string; cause?: unknown }) => {
      // A stream cancelled because its session failed carries the session's error (a TLS alert, a refused connect) as its cause.
      streamError = err.code === 'ERR_HTTP2_STREAM_CANCEL' && err.cause instanceof Error ? err.cause : err;
    });
    stream.on('response', (headers, flags) => {
      answer = { headers, headersOnly: (flags & h2.constants.NGHTTP2_FLAG_END_STREAM) !== 0, body: Buffer.alloc(0), trailers: null };
    });
    stream.on('data', (chunk: Buffer) => {
      bodyBytes += chunk.length;
      // One frame header and the largest message; past that the answer is wrong whatever follows.
      if (bodyBytes > 5 + maxResponseMessageBytes) return done(`grpc health: an answer of more than ${5 + maxResponseMessageBytes} bytes`);
      chunks.push(chunk);
    });
    stream.on('trailers', (trailers) => {
      if (answer !== null) answer.trailers = trailers;
    });
    stream.on('close', () => {
      if (settled) return;
      if (answer !== null && (stream.rstCode === h2.constants.NGHTTP2_NO_ERROR || answer.trailers !== null || answer.headersOnly)) {
        answer.body = Buffer.concat(chunks);
        return done(grpcHealthVerdict(answer, service));
      }
      const sessionUp = !s.destroyed && !s.closed;
      if (sessionUp && (stream.rstCode ?? 0) !== h2.constants.NGHTTP2_NO_ERROR) {
        return done(`the upstream reset the stream (RST_STREAM ${http2ErrorName(stream.rstCode!)})${answer !== null ? ' before the trailers' : ''}`);
      }
      // The session's failure, as the stream saw it (the session itself may never report it: a TLS alert after the handshake).
      if (streamError !== null) return fail(streamError);
      // The session going down takes its stream with it; its error or close, coming next, says why.
      if (!sessionUp) return;
      done('the stream closed without an answer');
    });
    stream.end(requestFor(service));
  });
}


/**
 * Words for a failure that belongs to HTTP/2 or ALPN rather than to the connection (those are
 * left to the caller: null). The first frame an HTTP/2 server sends is SETTINGS, so a protocol
 * error before one means the upstream speaks something else.
 */
function http2Failure(err: unknown, handshaken: boolean, settingsSeen: boolean): string | null {
  const code = (err as { code?: unknown } | null)?.code;
  if (code === 'ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL') {
    return `TLS handshake failed: the upstream does not offer HTTP/2 (ALPN h2): not a gRPC server? (${code})`;
  }
  if (typeof code !== 'string' || !code.startsWith('ERR_HTTP2')) return null;
  if (handshaken && !settingsSeen) return 'not an HTTP/2 server: its first bytes were no HTTP/2 frames (an HTTP/1.1 server? a gRPC server speaks HTTP/2)';
  return `HTTP/2 failure: ${(err as Error).message} (${code})`;
}
