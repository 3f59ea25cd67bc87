/**
 * The HTTP/2 downstream: one client stream is one exchange (RFC 9113). Everything HTTP/2-specific
 * about answering lives here: pseudo-header fields, connection-specific fields left out
 * (section 8.2.2), interim answers with `additionalHeaders`, trailers as a trailing HEADERS
 * frame, trailers-only answers (a HEADERS frame with END_STREAM, as gRPC errors are sent), and a
 * cut answer as RST_STREAM. The session it belongs to (limits, abuse counting, GOAWAY) is
 * src/downstream/http2-server.ts.
 */
import http2 from 'node:http2';
import { validateHeaderName, validateHeaderValue } from 'node:http';
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';
import type { Duplex, Readable } from 'node:stream';
import type { ServerHttp2Stream } from 'node:http2';
import type { Socket } from 'node:net';
import type { Downstream, DownstreamOwner } from '../core/downstream.ts';
import type { RequestHead } from '../core/context.ts';
import { connectionTls, type ConnectionTls } from '../tls/connection-tls.ts';
import { forbiddenTrailer } from '../proxy/headers.ts';

const { NGHTTP2_INTERNAL_ERROR, NGHTTP2_CANCEL, NGHTTP2_NO_ERROR } = http2.constants;

/** Fields HTTP/2 forbids (RFC 9113 section 8.2.2): never written to an HTTP/2 peer. */
const connectionSpecific: ReadonlySet<string> = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'host', 'http2-settings']);

/** The request head of one HTTP/2 stream, shaped as every downstream's (src/core/context.ts). */
export class Http2RequestHead implements RequestHead {
  readonly method: string;
  readonly url: string;
  readonly httpVersion = '2.0';
  readonly httpVersionMajor = 2;
  readonly httpVersionMinor = 0;
  readonly headers: IncomingHttpHeaders;
  readonly rawHeaders: string[];

  /**
   * From the stream's header block: `:authority` becomes Host (it wins over a Host field, RFC
   * 9113 section 8.3.1), several `cookie` fields are joined with "; " (section 8.2.3), pseudo-header
   * fields are left out of `headers` and `rawHeaders`.
   */
  constructor(headers: http2.IncomingHttpHeaders, rawHeaders: readonly string[]) {
    this.method = headers[':method'] ?? '';
    this.url = headers[':path'] ?? '';
    const authority = headers[':authority'];
    const raw: string[] = [];
    // No prototype: a field named `constructor` or `__proto__` is just a field.
    const plain = Object.create(null) as IncomingHttpHeaders;
    let host: string | undefined = authority;
    let cookie: string | undefined;
    for (let i = 0; i < rawHeaders.length; i += 2) {
      const name = rawHeaders[i];
      if (name.charCodeAt(0) === 58 /* : */) continue;
      const value = rawHeaders[i + 1];
      if (name === 'host') {
        host ??= value;
        continue;
      }
      if (name === 'cookie') {
        cookie = cookie === undefined ? value : `${cookie}; ${value}`;
        continue;
      }
      raw.push(name, value);
    }
    if (cookie !== undefined) raw.push('cookie', cookie);
    if (host !== undefined) raw.unshift('host', host);
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i];
      const value = raw[i + 1];
      const had = plain[name];
      if (had === undefined) plain[name] = name === 'set-cookie' ? [value] : value;
      else if (Array.isArray(had)) had.push(value);
      else plain[name] = `${had}, ${value}`;
    }
    this.headers = plain;
    this.rawHeaders = raw;
  }
}

/** Counts a downstream reports to its session (src/downstream/http2-server.ts). */
export interface StreamWatcher {
  /** The client reset a stream before its answer was complete (rapid reset counts these). */
  streamAborted(): void;
  streamClosed(): void;
}

/** One HTTP/2 stream's answering side. */
export class Http2Downstream implements Downstream {
  owner: DownstreamOwner | null = null;
  readonly protocol = 'h2';
  readonly stream: ServerHttp2Stream;
  readonly requestBody: Readable | null;
  requestTrailers: readonly string[] | null = null;
  readonly expectsContinue: boolean;
  /** The final head handed over and not written yet: it goes out with the first body chunk, the end, or on the next tick. */
  private pending: OutgoingHttpHeaders | null = null;
  private committed = false;
  private trailers: OutgoingHttpHeaders | null = null;
  private readonly method: string;
  /** Set when Fulcrum itself resets the stream: node:http2 then emits 'aborted' too, which is no client reset. */
  private selfClosed = false;
  /** Read at the start: node:http2 clears `stream.session` before the stream's 'close', where a cancelled exchange ends. */
  readonly tls: ConnectionTls | null;
  readonly remoteAddress: string | undefined;
  /** The session's socket (node:http2's proxy of it: one object per session). */
  readonly socket: Socket | null;

  /**
   * `bodyTimeoutMs`: the whole request body must arrive within it (limits.request_timeout; 0: no
   * limit), else 408. Not for gRPC calls, whose client streams may rightly last.
   */
  constructor(stream: ServerHttp2Stream, head: RequestHead, watcher: StreamWatcher, bodyTimeoutMs = 0) {
    this.stream = stream;
    this.method = head.method;
    this.requestBody = stream.endAfterHeaders ? null : stream;
    if (this.requestBody !== null && bodyTimeoutMs > 0 && !head.headers['content-type']?.startsWith('application/grpc')) {
      const timer = setTimeout(bodyTooSlow, bodyTimeoutMs, this);
      const clear = (): void => clearTimeout(timer);
      stream.once('end', clear);
      stream.once('close', clear);
    }
    this.expectsContinue = head.headers.expect?.toLowerCase() === '100-continue';
    stream.on('trailers', (fields: http2.IncomingHttpHeaders) => (this.requestTrailers = flatTrailers(fields)));
    stream.on('wantTrailers', () => {
      const trailers = this.trailers;
      this.trailers = null;
      // An empty trailer block is sent by Node as an empty DATA frame with END_STREAM.
      stream.sendTrailers(trailers ?? {});
      this.stopUpload();
    });
    const socket = stream.session?.socket;
    this.tls = connectionTls(socket);
    this.remoteAddress = socket?.remoteAddress;
    this.socket = socket ?? null;
    stream.once('aborted', () => {
      if (!this.selfClosed) watcher.streamAborted();
    });
    stream.once('close', () => {
      watcher.streamClosed();
      // After a complete answer the owner finished already and ignores this.
      this.owner?.onClientGone();
    });
    // A stream error (RST from the client, a session torn down) closes it; 'close' above reports it.
    stream.on('error', ignore);
  }

  get connected(): boolean {
    return !this.stream.destroyed;
  }

  get headSent(): boolean {
    return this.committed;
  }

  /** 1xx before the final answer (`100` only when the client asked for it), as an extra HEADERS frame. */
  informational(status: number, _reason: string, rawHeaders: readonly (Buffer | string)[]): void {
    if (this.committed || status === 101 || this.stream.destroyed || this.stream.headersSent) return;
    if (status === 100 && !this.expectsContinue) return;
    const headers: OutgoingHttpHeaders = { ':status': status };
    try {
      addFields(headers, rawHeaders, true);
      this.stream.additionalHeaders(headers);
    } catch {
      // An interim answer is advisory: one that cannot be written is dropped.
    }
  }

  /** Validates now (throws with nothing written); writes on the next tick, or with the first chunk or the end. */
  head(status: number, _reason: string | undefined, headers: string[]): void {
    const out: OutgoingHttpHeaders = { ':status': status };
    addFields(out, headers, false);
    this.pending = out;
    this.committed = true;
    process.nextTick(flushHead, this);
  }

  /** Writes the pending head (with END_STREAM when `endStream`: a trailers-only or empty answer). */
  flush(endStream = false): void {
    const head = this.pending;
    if (head === null) return;
    this.pending = null;
    const stream = this.stream;
    if (stream.destroyed || stream.closed) return;
    try {
      stream.respond(head, endStream ? { endStream: true } : { waitForTrailers: true });
    } catch {
      this.cut();
    }
  }

  body(chunk: Buffer): boolean {
    this.flush();
    if (this.stream.destroyed) return true;
    return this.stream.write(chunk);
  }

  whenWritable(resume: () => void): void {
    this.stream.once('drain', resume);
  }

  end(trailers: readonly (Buffer | string)[] | null): void {
    const stream = this.stream;
    const fields = trailers === null ? null : trailerFields(trailers);
    if (this.pending !== null) {
      // Nothing of the body went out: no trailers is an answer in one HEADERS frame; with
      // trailers, HEADERS then trailers (a gRPC status stays in the trailers where it came).
      if (fields === null) {
        this.flush(true);
        this.stopUpload();
        return;
      }
      this.flush();
    }
    if (stream.destroyed) return;
    this.trailers = fields;
    stream.end();
  }

  fail(status: number, headers: string[], body: string, _close: boolean): void {
    if (this.committed) return this.cut();
    this.committed = true;
    const stream = this.stream;
    if (stream.destroyed || stream.closed) return;
    const out: OutgoingHttpHeaders = { ':status': status };
    try {
      addFields(out, headers, false);
      if (body === '' || this.method === 'HEAD') {
        stream.respond(out, { endStream: true });
      } else {
        stream.respond(out);
        stream.end(body);
      }
      this.stopUpload();
    } catch {
      this.selfClosed = true;
      stream.close(NGHTTP2_INTERNAL_ERROR);
    }
  }

  /**
   * The answer is complete while the client is still sending its body (an early 404, 413, 401):
   * RST_STREAM NO_ERROR asks it to stop without error (RFC 9113 section 8.1), after the answer's frames.
   */
  private stopUpload(): void {
    const stream = this.stream;
    if (this.requestBody === null || stream.readableEnded || stream.destroyed) return;
    stream.close(NGHTTP2_NO_ERROR);
    // node:http2 destroys a closed stream only once its readable side ended: DATA already on its way
    // is read and dropped. On the next tick, since the proxy unpipes the body (pausing it) after the answer.
    process.nextTick(discardRequestData, stream);
  }

  /** RST_STREAM: a cut answer never looks complete. */
  cut(): void {
    this.pending = null;
    const stream = this.stream;
    if (stream.destroyed || stream.closed) return;
    this.selfClosed = true;
    stream.close(this.committed ? NGHTTP2_INTERNAL_ERROR : NGHTTP2_CANCEL);
  }

  /** HTTP/2 has no 101 (RFC 9113 section 8.6): never switches. */
  switchProtocols(): Duplex | null {
    return null;
  }
}

function discardRequestData(stream: ServerHttp2Stream): void {
  if (stream.destroyed || stream.readableEnded) return;
  stream.on('data', ignore);
  stream.resume();
}

function bodyTooSlow(downstream: Http2Downstream): void {
  if (!downstream.stream.readableEnded) downstream.owner?.onRequestBroken(408, 'request body not received in time');
}

function flushHead(downstream: Http2Downstream): void {
  downstream.flush();
}

function ignore(): void {}

/**
 * Adds flat `[name, value, ...]` fields to an HTTP/2 header object: names lower case,
 * connection-specific fields left out, repeated fields joined with ", " (Set-Cookie kept apart).
 * Throws (ERR_INVALID_HTTP_TOKEN, ERR_INVALID_CHAR) on a name or value HTTP cannot carry.
 */
function addFields(out: OutgoingHttpHeaders, raw: readonly (Buffer | string)[], interim: boolean): void {
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i].toString().toLowerCase();
    if (connectionSpecific.has(name) || name === 'te' || name.charCodeAt(0) === 58) continue;
    if (interim && name === 'content-length') continue;
    const value = raw[i + 1].toString();
    validateHeaderName(name);
    validateHeaderValue(name, value);
    const had = out[name];
    if (had === undefined) out[name] = name === 'set-cookie' ? [value] : value;
    else if (Array.isArray(had)) had.push(value);
    else out[name] = `${String(had)}, ${value}`;
  }
}

/** Trailer fields fit to send, as an HTTP/2 header object, or null when none is left. */
function trailerFields(raw: readonly (Buffer | string)[]): OutgoingHttpHeaders | null {
  const out: OutgoingHttpHeaders = {};
  let any = false;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i].toString().toLowerCase();
    if (forbiddenTrailer(name) || connectionSpecific.has(name) || name.charCodeAt(0) === 58) continue;
    const value = raw[i + 1].toString();
    try {
      validateHeaderName(name);
      validateHeaderValue(name, value);
    } catch {
      continue; // trailers are advisory: a bad one is dropped
    }
    const had = out[name];
    out[name] = had === undefined ? value : `${String(had)}, ${value}`;
    any = true;
  }
  return any ? out : null;
}

/** A client's trailing HEADERS as a flat list without pseudo-header and forbidden fields, or null. */
function flatTrailers(fields: http2.IncomingHttpHeaders): readonly string[] | null {
  const out: string[] = [];
  for (const name of Object.keys(fields)) {
    if (name.charCodeAt(0) === 58 || forbiddenTrailer(name)) continue;
    const value = fields[name];
    if (Array.isArray(value)) for (const v of value) out.push(name, v);
    else if (value !== undefined) out.push(name, String(value));
  }
  return out.length > 0 ? out : null;
}
