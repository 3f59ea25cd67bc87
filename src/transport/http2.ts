/**
 * Fulcrum's HTTP/2 client toward one upstream, on node:http2: `protocol: h2` (HTTP/2 over TLS,
 * ALPN h2, to an `https://` upstream) or `h2c` (cleartext with prior knowledge, to an `http://`
 * one). node:http2 was chosen over undici's HTTP/2 client by bench/h2-client-choice.ts: it sends
 * request trailers, hands response trailers over as raw pairs, finishes the streams at or below
 * a GOAWAY's last stream id and reports the refused ones with their RST_STREAM code; undici 7
 * fails every in-flight stream on any GOAWAY and has no request trailers.
 *
 * Sessions: a stream goes to the oldest session with room (streams open below the smaller of
 * `http2.max_concurrent_streams` and the peer's SETTINGS_MAX_CONCURRENT_STREAMS), so surplus
 * sessions go idle and close. When every session is full another is opened, up to the smaller
 * of `http2.max_sessions` and `ClientSettings.maxSockets` (draining sessions, those that got a
 * GOAWAY, do not count); beyond that attempts wait in a bounded FIFO queue (cancellable). A new
 * session takes streams only once the peer's first SETTINGS arrived (grpc-go waits for the
 * server preface the same way), so its stream limit is never guessed. A session without
 * streams for `keepalive.idle_timeout` (less the safety margin) is closed; one that has heard
 * nothing from the peer for `http2.ping_interval` is sent a PING and destroyed when no ack
 * comes within `http2.ping_timeout` (its streams fail as resets).
 *
 * A peer that allows no streams (SETTINGS_MAX_CONCURRENT_STREAMS 0, RFC 9113 section 6.5.2) gets
 * no other session while it says so: the attempts fail as unprocessed (below) until it raises the
 * limit or its session idles out. An attempt opens at most one session (Http2Client.dispatch), so
 * no path opens sessions in a loop: the proxy's retry policy bounds the attempts.
 *
 * GOAWAY: the session takes no new streams; node:http2 lets the streams at or below its last
 * stream id finish, and those above it (and any refused with RST_STREAM REFUSED_STREAM) are
 * reported as `FUL_UPSTREAM_UNPROCESSED`, which the retry policy sends again for any method
 * (RFC 9113 section 8.7). A GOAWAY with an error code ends the session at once (node:http2). A
 * session node:http2 destroyed (a session-fatal protocol error, a dropped connection) takes no
 * stream from then on, before its 'close' comes, so a retry never lands on it. A stream is
 * reported `reused` (the keep-alive race the proxy may retry as a stale connection) only on a
 * session idle past a second (Session.mayBeStale), never on a busy multiplexed one.
 *
 * A response is complete on END_STREAM; a RST_STREAM(NO_ERROR) before it (RFC 9113 section 8.1
 * allows NO_ERROR only after a complete response) cuts it, unless its Content-Length arrived in
 * full. node:http2 does not say which of the two ended a stream: watchEnd tells them apart. A
 * complete answer while the request is still going out (flow control holding DATA the upstream
 * never reads) ends the exchange and cancels the upload (CANCEL).
 *
 * Timeouts, as in http1.ts and on the same coarse clock (one sweep timer per client, undici's
 * FastTimer idea): connect (TCP, TLS and the peer's SETTINGS), response headers (from the end of
 * the upload; an upload still moving extends it), idle body (between DATA frames; not while the
 * client is slow). Response bodies are read with backpressure: while the client is slow the
 * stream is paused and node:http2 stops widening its flow-control window, so at most
 * `http2.initial_window_bytes` per stream waits in Fulcrum. The connection window is set to hold
 * every stream's window at once (node:http2 gives connection credit back as soon as data
 * arrives, so it only bounds throughput, never memory).
 *
 * Errors reach the attempt with codes src/proxy/status.ts maps: Node's socket and TLS codes,
 * undici's names for the timeouts and request-side refusals (as the HTTP/1.1 clients), and
 * `ERR_HTTP2_STREAM_ERROR` / `ERR_HTTP2_SESSION_ERROR` carrying `http2Code` (the RFC 9113 error
 * code); refused streams as FulcrumErrors. A session-fatal error reaches a stream as node:http2
 * gave it to that stream (it does so before the session's own 'error'), so a protocol error is
 * reported as one, not as a closed connection. Nothing a session or stream emits can throw out of
 * this file: every session and stream has an `error` listener, and a throw in a handler ends
 * that exchange (a 502), never the process.
 *
 * Requests: Host becomes `:authority`; connection-specific fields (RFC 9113 section 8.2.2) are
 * left out, `te` unless it is `trailers`; request trailers follow the body (waitForTrailers). An
 * `Expect: 100-continue` is answered by Fulcrum and not passed on (Envoy's default): HTTP/2
 * servers that take raw streams, node:http2's among them, never send a 100. Upgrades (WebSocket)
 * and CONNECT are refused (501, 400).
 *
 * Counters: `http2UpstreamStats` (process-wide: sessions open, streams in flight, GOAWAY frames
 * received by error code name, PING timeouts, unprocessed streams), read by metrics at scrape
 * time; each GOAWAY frame received is also published on the `fulcrum:http2:goaway` channel.
 */
import net from 'node:net';
import type * as Http2 from 'node:http2';
import type { TLSSocket } from 'node:tls';
import { ErrorCode, FulcrumError } from '../errors.ts';
import type { Upstream } from '../upstream/upstream.ts';
import { RequestUpload, type UploadSink } from './request-upload.ts';
import { duringHandshake, UpstreamTlsConnector } from './upstream-tls.ts';
import { effectiveIdle, type ClientSettings, type UpstreamAttempt, type UpstreamClient } from './transport.ts';
import { http2ErrorLabel, http2ErrorName } from '../http2/error-codes.ts';
import { AttemptQueue } from './attempt-queue.ts';
import { http2Goaway, type Http2GoawayEvent } from '../core/events.ts';

let http2Module: typeof Http2 | null = null;

/** node:http2, loaded by the first HTTP/2 client: a configuration without h2 pools never loads it. */
function http2(): typeof Http2 {
  return (http2Module ??= process.getBuiltinModule('node:http2'));
}

const NO_ERROR = 0;
/** END_STREAM flag of a HEADERS frame (RFC 9113 section 6.2). */
const FLAG_END_STREAM = 0x1;
const REFUSED_STREAM = 7;
const CANCEL = 8;

/** Process-wide counts of the HTTP/2 upstream clients (every Http2Client adds to them). */
export interface Http2UpstreamStats {
  /** Sessions (connections) open now, connecting ones included. */
  sessionsOpen: number;
  /** Streams open now (requests sent, answer not finished). */
  streamsInFlight: number;
  /** GOAWAY frames received, by error code name (`NO_ERROR`, `ENHANCE_YOUR_CALM`, ...). */
  goawaysReceived: Record<string, number>;
  /** Sessions destroyed because a PING went unanswered past `ping_timeout`. */
  pingTimeouts: number;
  /** Streams the upstream did not process (REFUSED_STREAM, above a GOAWAY's last stream id, or not opened while it allowed none). */
  unprocessedStreams: number;
}

/** The counters of every HTTP/2 upstream client in this process, read by metrics at scrape time. */
export const http2UpstreamStats: Http2UpstreamStats = { sessionsOpen: 0, streamsInFlight: 0, goawaysReceived: {}, pingTimeouts: 0, unprocessedStreams: 0 };


/** A session idle (no stream open) at least this long may have been closed by the upstream for idleness (ms; see Session.mayBeStale). */
const staleAfterMs = 1000;
/** Request headers that are connection-specific in HTTP/1.1 and forbidden in HTTP/2 (RFC 9113 section 8.2.2); Host becomes `:authority`. */
const connectionHeaders = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'host', 'http2-settings']);
/** Bytes a header value may not hold (RFC 9110 section 5.5), and a request-target; as http1.ts. */
const invalidValue = /[^\t\x20-\x7e\x80-\xff]/;
const invalidTarget = /[^\x21-\x7e\x80-\xff]/;
/** Largest flow-control window (RFC 9113 section 6.9.1). */
const maxWindow = 2 ** 31 - 1;
const noop = (): void => {};

function codeError(code: string, message: string, http2Code?: number): Error {
  return Object.assign(new Error(message), http2Code === undefined ? { code } : { code, http2Code });
}

function unprocessed(message: string): FulcrumError {
  http2UpstreamStats.unprocessedStreams++;
  return new FulcrumError(ErrorCode.UpstreamUnprocessed, message, 'upstream', 502, true);
}

/** Flat `[name, value, ...]` without pseudo-headers (`:status`). */
function withoutPseudo(raw: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) if (raw[i].charCodeAt(0) !== 58) out.push(raw[i], raw[i + 1]);
  return out;
}

/** Request trailers as node:http2 sends them: an object, repeated names as arrays, connection-specific and pseudo fields left out. */
function trailerObject(flat: readonly string[] | null): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  if (flat === null) return out;
  for (let i = 0; i < flat.length; i += 2) {
    const name = flat[i].toLowerCase();
    const value = flat[i + 1];
    if (connectionHeaders.has(name) || name === 'te' || name.charCodeAt(0) === 58 || invalidValue.test(value)) continue;
    const had = out[name];
    out[name] = had === undefined ? value : Array.isArray(had) ? [...had, value] : [had, value];
  }
  return out;
}

// Phases of a stream.
/** Request sent or being sent; no final response headers yet. */
const WAITING = 0;
/** Final headers relayed; the body is read. */
const BODY = 1;
/** Reported (end or error) or cancelled: nothing more reaches the attempt. */
const DONE = 2;

/** One attempt on one HTTP/2 stream. */
class StreamExchange implements UploadSink {
  readonly session: Session;
  readonly attempt: UpstreamAttempt;
  stream: Http2.ClientHttp2Stream | null = null;
  phase = WAITING;
  /** When the running timeout fires (client clock, ms; 0: none). */
  deadline = 0;
  /** Reading stopped while the client is slow. */
  private paused = false;
  /** The response's readable side ended (END_STREAM, or node:http2 ending it on a reset: told apart on close). */
  private ended = false;
  /** node:http2 ended the readable side after the stream had closed: a RST_STREAM ended it, not END_STREAM (see watchEnd). */
  private cut = false;
  /** A HEADERS frame with END_STREAM arrived (trailers, or a trailers-only answer): the answer is complete for sure. */
  private endStream = false;
  private trailers: string[] | null = null;
  /** The response's Content-Length (-1: none) and the body bytes received. */
  private expected = -1;
  private received = 0;
  /** The error node:http2 emitted on the stream, if any. */
  private streamError: Error | null = null;
  // The request.
  /** A streamed body's upload (null: none, or the body was a Buffer). */
  private upload: RequestUpload | null = null;
  /** The whole request (and its trailers) was handed to the stream. */
  private requestSent = false;

  constructor(session: Session, attempt: UpstreamAttempt) {
    this.session = session;
    this.attempt = attempt;
  }

  /** The proxy gave up on the attempt: the stream is reset (CANCEL). */
  readonly cancel = (): void => {
    if (this.phase === DONE) return;
    this.phase = DONE;
    this.deadline = 0;
    this.upload?.detach();
    this.reset(CANCEL);
  };

  /**
   * Opens the stream and writes the request. False when the session could not take it (it is
   * going away): the attempt was not sent and goes back to the client.
   */
  open(): boolean {
    const attempt = this.attempt;
    const session = this.session;
    const client = session.client;
    const path = attempt.path;
    if (invalidTarget.test(path)) return this.refuse('UND_ERR_INVALID_ARG', 'invalid request-target');
    if (attempt.method === 'CONNECT') return this.refuse('UND_ERR_NOT_SUPPORTED', 'CONNECT is not forwarded to an HTTP/2 upstream');
    const headers = attempt.headers;
    const pseudo = [':method', attempt.method, ':scheme', client.scheme, ':path', path];
    const fields: string[] = [];
    let authority = false;
    let declared = -1;
    for (let i = 0; i < headers.length; i += 2) {
      const value = headers[i + 1];
      const name = headers[i].toLowerCase();
      if (invalidValue.test(value)) return this.refuse('UND_ERR_INVALID_ARG', `invalid ${headers[i]} header value`);
      if (name === 'host') {
        if (!authority) pseudo.push(':authority', value);
        authority = true;
        continue;
      }
      if (connectionHeaders.has(name) || name.charCodeAt(0) === 58) continue;
      if (name === 'te' && value.trim().toLowerCase() !== 'trailers') continue;
      // Answered here (below), not passed on: HTTP/2 servers that take streams raw (node:http2's) never send a 100.
      if (name === 'expect') continue;
      if (name === 'content-length') declared = Number(value);
      fields.push(name, value);
    }
    if (!authority) pseudo.push(':authority', client.authority);
    const body = attempt.body;
    let hasTrailers = false;
    if (Buffer.isBuffer(body)) {
      if (declared === -1) fields.push('content-length', String(body.length));
      else if (declared !== body.length) return this.refuse('UND_ERR_REQ_CONTENT_LENGTH_MISMATCH', 'request body length does not match its Content-Length');
      const trailers = attempt.requestTrailers;
      hasTrailers = trailers !== null && trailers.length > 0;
    }
    let stream: Http2.ClientHttp2Stream;
    try {
      // A streamed body's trailers are known only once it ended: the stream always waits for them (none: an empty DATA with END_STREAM).
      stream = session.h2.request(pseudo.concat(fields), { endStream: body === null, waitForTrailers: body !== null && (!Buffer.isBuffer(body) || hasTrailers) });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // The session is going away or out of stream ids: the request never left, another session takes it.
      if (code === 'ERR_HTTP2_GOAWAY_SESSION' || code === 'ERR_HTTP2_INVALID_SESSION' || code === 'ERR_HTTP2_OUT_OF_STREAMS') {
        session.drain();
        return false;
      }
      // node:http2 refused a header (a duplicate of a single-value field, an invalid name): the client's request, never retried.
      return this.refuse('UND_ERR_INVALID_ARG', `request cannot be sent over HTTP/2: ${(err as Error).message}`);
    }
    this.stream = stream;
    this.watchEnd(stream);
    attempt.onCancel(this.cancel);
    attempt.sending(session.mayBeStale(client.now));
    session.streamOpened(this);
    stream.on('headers', this.onInformational);
    stream.on('response', this.onResponse);
    stream.on('data', this.onData);
    stream.on('trailers', this.onTrailers);
    stream.on('end', this.onEnd);
    stream.on('error', this.onError);
    stream.on('close', this.onClose);
    // Envoy's default for Expect (proxy_100_continue off): the client is told to go on as soon as a stream is open for its body.
    if (attempt.expectContinue && body !== null && !Buffer.isBuffer(body)) attempt.informational(100, 'Continue', []);
    if (body === null) this.requestSent = true;
    else if (Buffer.isBuffer(body)) {
      if (hasTrailers) stream.on('wantTrailers', this.onWantTrailers);
      stream.end(body);
      this.requestSent = !hasTrailers;
    } else {
      const upload = (this.upload = new RequestUpload(this));
      stream.on('wantTrailers', this.onWantTrailers);
      stream.on('drain', upload.drained);
      upload.attach(body, declared, false);
    }
    if (client.headersMs > 0) this.deadline = client.now + client.headersMs + client.tick;
    return true;
  }

  /**
   * Notes in `cut` whether the response's end comes from a RST_STREAM. node:http2 ends the
   * readable side and leaves `rstCode` 0 both on END_STREAM and on RST_STREAM(NO_ERROR), and has
   * no event that tells them apart; but its first end (push(null)) comes before it marks the
   * stream closed on END_STREAM (onStreamRead, then onStreamClose), and after it on a reset
   * (onStreamClose: closeStream, then push(null)). Only the first counts: _destroy pushes another
   * after every close. A Content-Length, when there is one, is checked as well (closed());
   * without one this is the only sign. Should node:http2 stop ending the stream through push(),
   * `cut` stays false and a reset reads as an end again: the review test of this case fails then.
   */
  private watchEnd(stream: Http2.ClientHttp2Stream): void {
    const push = stream.push;
    stream.push = (chunk: unknown, encoding?: BufferEncoding): boolean => {
      if (chunk === null) {
        stream.push = push;
        this.cut = stream.closed;
      }
      return push.call(stream, chunk, encoding);
    };
  }

  /** The request cannot be written as asked (nothing was sent). Returns true: the attempt is settled. */
  private refuse(code: string, message: string): true {
    this.phase = DONE;
    this.attempt.error(codeError(code, message));
    return true;
  }

  /** A body chunk, counted by the upload: DATA on the stream. */
  uploadChunk(chunk: Buffer): boolean {
    return this.stream!.write(chunk);
  }

  /** The body ended: the stream's writable side ends; its trailers follow on 'wantTrailers', after the last DATA frame. */
  uploadEnd(): void {
    this.stream!.end();
  }

  /** The upload failed: the exchange fails with `err` (the stream is reset). */
  uploadFailed(err: Error): void {
    this.fail(err);
  }

  /** The body's last DATA frame is out: its trailers go now (none: node:http2 ends the stream with an empty DATA frame). */
  private readonly onWantTrailers = (): void => {
    const stream = this.stream!;
    try {
      stream.sendTrailers(trailerObject(this.attempt.requestTrailers));
    } catch (err) {
      return this.fail(err as Error);
    }
    this.requestSent = true;
    if (this.upload !== null) this.upload.moved = false;
    // The wait for the answer starts when the request is all out.
    const client = this.session.client;
    if (this.phase === WAITING && client.headersMs > 0) this.deadline = client.now + client.headersMs + client.tick;
  };

  /** An interim (1xx) answer: relayed; the final one follows. */
  private readonly onInformational = (headers: Http2.IncomingHttpHeaders, _flags: number, raw: string[]): void => {
    if (this.phase !== WAITING) return;
    const status = Number(headers[':status']);
    if (status >= 200 || status === 101) return;
    this.session.heard();
    try {
      this.attempt.informational(status, '', withoutPseudo(raw));
    } catch (err) {
      this.fail(err as Error);
    }
  };

  private readonly onResponse = (headers: Http2.IncomingHttpHeaders, flags: number, raw: string[]): void => {
    if (this.phase !== WAITING) return;
    const client = this.session.client;
    this.session.heard();
    try {
      const status = Number(headers[':status']);
      const length = headers['content-length'];
      // A HEAD answer, a 204 and a 304 carry no body whatever their Content-Length says.
      const bodyless = status === 204 || status === 304 || this.attempt.method === 'HEAD';
      this.expected = length !== undefined && !bodyless && /^\d+$/.test(length) ? Number(length) : -1;
      this.phase = BODY;
      this.deadline = client.bodyMs > 0 ? client.now + client.bodyMs + client.tick : 0;
      if (!this.attempt.response(status, withoutPseudo(raw))) return this.cancel();
      // A trailers-only answer (HEADERS with END_STREAM, how gRPC sends errors) ends in the same
      // tick: a downstream that holds the head for a tick sends both as one HEADERS frame.
      if ((flags & FLAG_END_STREAM) !== 0 && this.phase === BODY) {
        this.endStream = true;
        this.complete(this.uploading());
      }
    } catch (err) {
      this.fail(err as Error);
    }
  };

  private readonly onData = (chunk: Buffer): void => {
    if (this.phase !== BODY) return;
    const session = this.session;
    const client = session.client;
    session.heard();
    this.received += chunk.length;
    if (client.bodyMs > 0) this.deadline = client.now + client.bodyMs + client.tick;
    const attempt = this.attempt;
    let more: boolean;
    try {
      more = attempt.data(chunk);
    } catch (err) {
      return this.fail(err as Error);
    }
    if (more || this.paused || this.phase !== BODY || !attempt.live) return;
    this.paused = true;
    this.deadline = 0;
    this.stream!.pause();
    attempt.whenWritable(this.onWritable);
  };

  private readonly onWritable = (): void => {
    if (!this.paused || this.phase !== BODY) return;
    this.paused = false;
    const client = this.session.client;
    // While the client was slow the upstream was not idle: the body timer starts again.
    if (client.bodyMs > 0) this.deadline = client.now + client.bodyMs + client.tick;
    this.stream!.resume();
  };

  private readonly onTrailers = (_headers: Http2.IncomingHttpHeaders, _flags: number, raw: string[]): void => {
    this.session.heard();
    // Held until 'end': body bytes the client has not taken yet go first.
    this.trailers = withoutPseudo(raw);
    this.endStream = true;
  };

  private readonly onEnd = (): void => {
    if (this.phase !== BODY) return;
    this.ended = true;
    this.deadline = 0;
    // Trailers carry END_STREAM themselves: complete. Else node:http2 also ends the readable side
    // when the stream is reset or the session dies, and tells only on 'close' (rstCode): the
    // answer is complete there. An upload not finished (the upstream answered before reading it
    // all, or flow control holds DATA it never makes room for) would hold 'close' back: complete
    // now and cancel the upload (a complete answer ends the exchange, RFC 9113 section 8.1).
    const uploading = this.uploading();
    if (this.endStream || uploading) this.complete(uploading);
  };

  /**
   * The request is still going out: its end not handed to the stream yet, or handed over but not
   * written (a Buffer body is ended at once while flow control may hold its DATA frames; 'finish'
   * comes only once node:http2 wrote them all). Never on a closed stream: a reset (RST_STREAM,
   * NO_ERROR included) closes the stream before it ends the readable side, and its 'close',
   * which closed() judges, is on its way.
   */
  private uploading(): boolean {
    const stream = this.stream;
    return stream !== null && !stream.closed && (!this.requestSent || !stream.writableFinished);
  }

  private readonly onError = (err: Error): void => {
    this.streamError ??= err;
  };

  private readonly onClose = (): void => {
    const session = this.session;
    try {
      if (this.phase !== DONE) this.closed();
    } catch (err) {
      this.fail(err as Error);
    } finally {
      session.streamClosed(this);
    }
  };

  /** The stream closed before its outcome was reported: complete, unprocessed, or failed. */
  private closed(): void {
    const stream = this.stream!;
    const session = this.session;
    const rstCode = stream.rstCode ?? NO_ERROR;
    const id = stream.id;
    if (session.goawayLast !== -1 && (id === undefined || id > session.goawayLast) && this.phase === WAITING) {
      return this.fail(unprocessed(`upstream sent GOAWAY (last stream ${session.goawayLast}) before processing stream ${id ?? '(not sent)'}`));
    }
    if (rstCode === REFUSED_STREAM && this.phase === WAITING) return this.fail(unprocessed('upstream refused the stream (REFUSED_STREAM): not processed'));
    // A reset or a dead session ends the readable side too, but leaves a non-zero rstCode (CANCEL when the session died).
    if (this.ended && rstCode === NO_ERROR) {
      // RST_STREAM(NO_ERROR) mid-body reads as an end too: a declared length tells the truth.
      if (this.expected !== -1) {
        if (this.received !== this.expected) return this.fail(codeError('UND_ERR_RES_CONTENT_LENGTH_MISMATCH', `upstream ended the stream after ${this.received} of ${this.expected} body bytes`));
        return this.complete(false);
      }
      // Without one, only END_STREAM ends an answer: NO_ERROR is for a reset after it (RFC 9113 section 8.1).
      if (this.cut) return this.fail(codeError('ERR_HTTP2_STREAM_ERROR', `upstream reset the stream mid-body (NO_ERROR) after ${this.received} body bytes`, NO_ERROR));
      return this.complete(false);
    }
    const streamCode = (this.streamError as NodeJS.ErrnoException | null)?.code;
    // The peer reset this stream (node:http2 says so with ERR_HTTP2_STREAM_ERROR and the code); else a dead session is why.
    if (session.h2.destroyed && !(streamCode === 'ERR_HTTP2_STREAM_ERROR' && rstCode !== CANCEL)) {
      // Out of the way before the failure is reported: a retry must not be offered the dying session.
      session.drain();
      // node:http2 gives the streams the session's error before it emits it on the session (a protocol error, a socket error).
      return this.fail(session.failure ?? this.streamError ?? codeError('ECONNRESET', 'upstream closed the connection'));
    }
    if (this.streamError !== null && streamCode !== 'ERR_HTTP2_STREAM_ERROR') return this.fail(this.streamError);
    const name = http2ErrorName(rstCode);
    const when = this.phase === WAITING ? 'before its response headers' : 'mid-body';
    this.fail(codeError('ERR_HTTP2_STREAM_ERROR', `upstream reset the stream ${when} (${name})`, rstCode));
  }

  /** The answer is complete: trailers (or null) to the attempt. `reset`: the upload is cut (CANCEL). */
  private complete(reset: boolean): void {
    const attempt = this.attempt;
    this.phase = DONE;
    this.deadline = 0;
    this.upload?.detach();
    attempt.onCancel(noop);
    if (reset) this.reset(CANCEL);
    attempt.end(this.trailers);
  }

  /** A deadline passed (`now` on the client clock). */
  timedOut(now: number): void {
    const client = this.session.client;
    if (this.phase === WAITING) {
      // An upload still moving is the client's pace, not the upstream's silence (undici's rule).
      const upload = this.upload;
      if (upload !== null && upload.moved && this.stream !== null && !this.stream.writableNeedDrain) {
        upload.moved = false;
        this.deadline = now + client.headersMs;
        return;
      }
      return this.fail(codeError('UND_ERR_HEADERS_TIMEOUT', `no response headers within ${client.headersMs}ms`));
    }
    if (this.phase === BODY && !this.paused && !this.ended) this.fail(codeError('UND_ERR_BODY_TIMEOUT', `no response body bytes for ${client.bodyMs}ms`));
  }

  /** The exchange failed: reported once, the stream reset. */
  fail(err: unknown): void {
    if (this.phase === DONE) return;
    this.phase = DONE;
    this.deadline = 0;
    this.upload?.detach();
    this.attempt.onCancel(noop);
    this.reset(CANCEL);
    this.attempt.error(err);
  }

  private reset(code: number): void {
    const stream = this.stream;
    if (stream !== null && !stream.destroyed && !stream.closed) stream.close(code);
  }
}

// Phases of a session.
/** Connecting (TCP, TLS) or waiting for the peer's first SETTINGS; attempts wait on it. */
const CONNECTING = 0;
/** Takes new streams up to its capacity. */
const READY = 1;
/** GOAWAY received, or closing: its streams finish, it takes no new ones. */
const DRAINING = 2;
/** Closed. */
const CLOSED = 3;

/** One HTTP/2 connection to the upstream and the streams it carries. */
class Session {
  readonly client: Http2Client;
  readonly h2: Http2.ClientHttp2Session;
  /** Closes as soon as it carries no stream (a straggler on a closed client, or every session once the client closed). */
  oneOff: boolean;
  phase = CONNECTING;
  /** Attempts waiting for the session to be ready. */
  waiting: UpstreamAttempt[] = [];
  /** Streams open now. */
  readonly streams = new Set<StreamExchange>();
  /** Streams opened on it so far (more than 0: a reused session). */
  started = 0;
  /** Most streams at once: the smaller of max_concurrent_streams and the peer's limit (0 until its SETTINGS). */
  capacity = 0;
  /** Connect deadline while CONNECTING, PING-ack deadline once ready (client clock; 0: none). */
  deadline = 0;
  /** Last time the peer was heard from (a frame of a stream, a PING ack, a stream's end; client clock): the PING keepalive's clock. */
  lastHeard = 0;
  /** Since when no stream is open (client clock): the idle close's clock. */
  idleSince = 0;
  /** A PING is out, not acked yet. */
  pinging = false;
  /** A GOAWAY's last stream id (-1: none received). */
  goawayLast = -1;
  /** Why the session ended, once known (what its streams and waiting attempts fail with). */
  failure: Error | null = null;
  /** The session's socket: node:http2 does not destroy one still connecting, so the session does. */
  private readonly socket: import('node:stream').Duplex;
  /** The TLS socket of an h2 session (null for h2c), and whether its handshake finished. */
  private readonly tlsSocket: TLSSocket | null;
  private secure = false;

  constructor(client: Http2Client, oneOff: boolean) {
    this.client = client;
    this.oneOff = oneOff;
    const connector = client.tls;
    let tlsSocket: TLSSocket | null = null;
    let socket: import('node:stream').Duplex | null = null;
    const createConnection = (): import('node:stream').Duplex => {
      if (connector === null) return (socket = net.connect({ host: client.host, port: client.port, noDelay: true, keepAlive: true, keepAliveInitialDelay: 60_000 }));
      tlsSocket = connector.connect();
      tlsSocket.setNoDelay(true);
      tlsSocket.setKeepAlive(true, 60_000);
      tlsSocket.once('secureConnect', this.onSecureConnect);
      return (socket = tlsSocket);
    };
    this.h2 = http2().connect(client.origin, {
      createConnection,
      settings: { enablePush: false, initialWindowSize: client.windowSize },
      maxOutstandingPings: 2,
    });
    this.tlsSocket = tlsSocket;
    // createConnection runs inside connect(), synchronously.
    this.socket = socket!;
    http2UpstreamStats.sessionsOpen++;
    this.lastHeard = this.idleSince = client.now;
    this.deadline = client.connectMs > 0 ? client.now + client.connectMs + client.tick : 0;
    const h2 = this.h2;
    h2.on('error', this.onError);
    h2.on('remoteSettings', this.onRemoteSettings);
    h2.on('goaway', this.onGoaway);
    h2.on('close', this.onClose);
    // A frame that could not be sent is reported on its stream as well; nothing more to do here.
    h2.on('frameError', noop);
  }

  /** A TLS session came up: anything but h2 by ALPN is no HTTP/2 upstream (HTTP/2 frames would reach an HTTP/1.1 server). */
  private readonly onSecureConnect = (): void => {
    this.secure = true;
    const alpn = this.tlsSocket?.alpnProtocol;
    if (alpn === 'h2') return;
    this.destroy(
      new FulcrumError(
        ErrorCode.UpstreamProtocol,
        `upstream did not agree to HTTP/2 in the TLS handshake (ALPN: ${alpn || 'none'}): use protocol http1 for this pool`,
        'upstream',
        502,
        true,
      ),
    );
  };

  private readonly onError = (err: Error): void => {
    if (this.failure !== null) return;
    if (this.phase === CONNECTING) {
      if (this.tlsSocket !== null && !this.secure) {
        // Offered h2 only: an upstream without HTTP/2 over TLS refuses by alert (src/transport/upstream-tls.ts words it for http/1.1).
        if ((err as NodeJS.ErrnoException).code === 'ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL') {
          err = new FulcrumError(ErrorCode.UpstreamTls, 'TLS handshake with upstream failed: no ALPN protocol in common: Fulcrum offers h2 and the upstream does not serve HTTP/2 over TLS (use protocol http1 for this pool) (ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL)', 'upstream', 502, true, err);
        }
        duringHandshake(err);
      } else if ((err as NodeJS.ErrnoException).code === 'ERR_HTTP2_ERROR') {
        // Connected, then no HTTP/2 came back (an HTTP/1.1 server answering the preface): nothing was sent.
        err = new FulcrumError(ErrorCode.UpstreamProtocol, `upstream does not speak HTTP/2 (${this.client.scheme === 'http' ? 'h2c, prior knowledge' : 'h2'}): ${err.message}`, 'upstream', 502, true, err);
      }
    }
    this.failure = err;
    // node:http2 destroyed the session (it emits 'error' on the way to 'close'): no new stream may pick it meanwhile.
    if (this.phase === READY) this.phase = DRAINING;
  };

  private readonly onRemoteSettings = (settings: Http2.Settings): void => {
    const client = this.client;
    this.heard();
    const peer = settings.maxConcurrentStreams ?? Infinity;
    this.capacity = Math.min(client.maxStreams, peer);
    if (this.phase !== CONNECTING) {
      // A later SETTINGS may raise the limit: waiting attempts may fit now.
      if (this.phase === READY) client.pump();
      return;
    }
    this.phase = READY;
    this.deadline = 0;
    this.idleSince = client.now;
    try {
      this.h2.setLocalWindowSize(client.connectionWindow);
    } catch {
      // Not fatal: the default connection window only slows a busy session down.
    }
    const waiting = this.waiting;
    this.waiting = [];
    // Those that do not fit may open another session; none opens while this one allows no streams (dispatch): they fail as unprocessed.
    for (const attempt of waiting) if (attempt.live) client.forward(attempt);
    client.pump();
    this.closeIfDone();
  };

  private readonly onGoaway = (errorCode: number, lastStreamID: number): void => {
    const name = http2ErrorName(errorCode);
    this.goawayLast = lastStreamID;
    const stats = http2UpstreamStats.goawaysReceived;
    const label = http2ErrorLabel(errorCode);
    stats[label] = (stats[label] ?? 0) + 1;
    if (http2Goaway.hasSubscribers) http2Goaway.publish({ direction: 'upstream', upstream: this.client.upstreamId, errorCode, errorName: name, lastStreamId: lastStreamID } satisfies Http2GoawayEvent);
    // With an error code node:http2 destroys the session now: its streams fail with this.
    if (errorCode !== NO_ERROR) this.failure ??= codeError('ERR_HTTP2_SESSION_ERROR', `upstream ended the session with GOAWAY (${name})`, errorCode);
    this.drain();
  };

  private readonly onClose = (): void => {
    const client = this.client;
    const wasConnecting = this.phase === CONNECTING;
    this.phase = CLOSED;
    this.deadline = 0;
    http2UpstreamStats.sessionsOpen--;
    let err = this.failure;
    if (err === null) {
      err = wasConnecting ? codeError('ECONNRESET', 'upstream closed the connection before its HTTP/2 SETTINGS') : codeError('ECONNRESET', 'upstream closed the connection');
      if (wasConnecting && this.tlsSocket !== null && !this.secure) duringHandshake(err);
    }
    const waiting = this.waiting;
    this.waiting = [];
    client.forget(this);
    // Attempts that waited for a session that never came up were not sent: they may go elsewhere.
    for (const attempt of waiting) if (attempt.live) attempt.error(err);
  };

  /** Takes no new streams from now on; its streams finish (node:http2 closes it after them on a GOAWAY). */
  drain(): void {
    if (this.phase === CLOSED || this.phase === DRAINING) return;
    const wasConnecting = this.phase === CONNECTING;
    this.phase = DRAINING;
    if (wasConnecting) this.deadline = 0;
    const waiting = this.waiting;
    this.waiting = [];
    const client = this.client;
    // A session going away before it was ready opens no other for its attempts (an upstream that sends GOAWAY on every connection would be met by a loop of connects): they go back to the proxy, whose retries are bounded.
    for (const attempt of waiting) if (attempt.live) client.dispatch(attempt, 'upstream sent GOAWAY before the session was ready: not sent');
    client.pump();
    this.closeIfDone();
  }

  /** Queues `attempt` until the session is ready (cancellable). */
  wait(attempt: UpstreamAttempt): void {
    this.waiting.push(attempt);
    attempt.onCancel(() => {
      const i = this.waiting.indexOf(attempt);
      if (i !== -1) this.waiting.splice(i, 1);
    });
  }

  /** Opens a stream for `attempt`; false when the session turned out unable to take it (the attempt was not sent). */
  start(attempt: UpstreamAttempt): boolean {
    return new StreamExchange(this, attempt).open();
  }

  streamOpened(s: StreamExchange): void {
    this.started++;
    this.streams.add(s);
    http2UpstreamStats.streamsInFlight++;
  }

  streamClosed(s: StreamExchange): void {
    if (!this.streams.delete(s)) return;
    http2UpstreamStats.streamsInFlight--;
    this.lastHeard = this.idleSince = this.client.now = Date.now();
    if (this.phase === READY) this.client.pump();
    this.closeIfDone();
  }

  /** The peer was heard from: the keepalive PING waits. */
  heard(): void {
    this.lastHeard = this.client.now;
  }

  /** Free stream slots now (0 unless ready; 0 once node:http2 destroyed or closed the session, before its 'close' comes). */
  get room(): number {
    const h2 = this.h2;
    return this.phase === READY && !h2.destroyed && !h2.closed ? this.capacity - this.streams.size : 0;
  }

  /** Ready, and the peer allows no streams now (SETTINGS_MAX_CONCURRENT_STREAMS 0, RFC 9113 section 6.5.2). */
  get refusing(): boolean {
    return this.phase === READY && this.capacity === 0 && !this.h2.destroyed;
  }

  /**
   * Whether a stream opened now may meet HTTP/1.1's keep-alive race (reported as `reused`, which
   * lets the proxy retry a reset as a stale connection): only when the session carried streams
   * before and has carried none for `staleAfterMs`, the one state in which an upstream may have
   * closed it for idleness while the stream was on its way. A busy multiplexed session is never
   * in that race: a reset there is the upstream's doing and counts against it, and a session a
   * stream ended on within the last second cannot have been idle past any server's timeout. The
   * other ways an HTTP/2 upstream turns away a request it did not process (GOAWAY, REFUSED_STREAM)
   * are reported as unprocessed on their own.
   */
  mayBeStale(now: number): boolean {
    return this.started > 0 && this.streams.size === 0 && now - this.idleSince >= staleAfterMs;
  }

  /** A one-off session with nothing left to carry closes; so does a draining one (node:http2 would, after a GOAWAY). */
  closeIfDone(): void {
    if (this.streams.size > 0 || this.waiting.length > 0 || this.phase === CLOSED) return;
    if (this.oneOff || this.phase === DRAINING) this.close();
  }

  /** Graceful close: streams open finish, none start. A session still connecting carries nothing: it goes now. */
  close(): void {
    if (this.phase === CLOSED) return;
    if (this.phase === CONNECTING) return this.destroy(codeError('ECONNRESET', 'session closed before it was ready'));
    this.phase = DRAINING;
    if (!this.h2.closed) this.h2.close();
  }

  destroy(err: Error): void {
    if (this.phase === CLOSED) return;
    this.failure ??= err;
    this.phase = DRAINING;
    this.h2.destroy();
    if (!this.socket.destroyed) this.socket.destroy();
  }

  /** One sweep tick for this session: connect deadline, PING keepalive, idle close, stream deadlines. */
  sweep(now: number): void {
    const client = this.client;
    if (this.deadline !== 0 && this.deadline <= now) {
      if (this.phase === CONNECTING) {
        const handshaking = this.tlsSocket !== null && !this.tlsSocket.connecting && !this.secure;
        const settings = this.tlsSocket === null ? !(this.h2.socket?.connecting ?? true) : this.secure;
        const why = handshaking ? ' (connected, TLS handshake not finished)' : settings ? ' (connected, no HTTP/2 SETTINGS from the upstream)' : '';
        const err = codeError('UND_ERR_CONNECT_TIMEOUT', `connect timeout after ${client.connectMs}ms${why}`);
        return this.destroy(this.tlsSocket !== null && !this.secure ? duringHandshake(err) : err);
      }
      if (this.pinging) {
        http2UpstreamStats.pingTimeouts++;
        return this.destroy(codeError('ERR_HTTP2_PING_TIMEOUT', `upstream did not answer a PING within ${client.pingTimeoutMs}ms: connection presumed dead`));
      }
    }
    if (this.phase === CONNECTING || this.phase === CLOSED) return;
    if (this.streams.size === 0 && this.phase === READY && this.waiting.length === 0 && now - this.idleSince >= client.idleMs) return this.close();
    if (client.pingMs > 0 && !this.pinging && now - this.lastHeard >= client.pingMs) this.ping(now);
    for (const s of this.streams) {
      if (s.deadline === 0 || s.deadline > now) continue;
      try {
        s.timedOut(now);
      } catch (err) {
        s.fail(err as Error);
      }
    }
  }

  private ping(now: number): void {
    const client = this.client;
    let sent: boolean;
    try {
      sent = this.h2.ping(this.onPingAck);
    } catch {
      sent = false;
    }
    if (!sent) return;
    this.pinging = true;
    this.deadline = now + client.pingTimeoutMs + client.tick;
  }

  private readonly onPingAck = (err: Error | null): void => {
    if (err !== null || this.phase === CLOSED) return;
    this.pinging = false;
    this.deadline = 0;
    this.lastHeard = this.client.now = Date.now();
  };
}

function sweep(client: Http2Client): void {
  client.sweep();
}

/** HTTP/2 sessions toward one upstream (see the file comment). */
export class Http2Client implements UpstreamClient {
  readonly upstreamId: string;
  /** Where to connect: the upstream's host without IPv6 brackets, and its port. */
  readonly host: string;
  readonly port: number;
  /** `http` (h2c) or `https` (h2): the `:scheme` sent. */
  readonly scheme: 'http' | 'https';
  /** The session's origin, and the `:authority` of a request without Host. */
  readonly origin: string;
  readonly authority: string;
  /** TLS sockets and the session they resume, for h2; null for h2c. */
  readonly tls: UpstreamTlsConnector | null;
  /** Streams per session we open at most (the peer's limit may be lower). */
  readonly maxStreams: number;
  /** Sessions at most, draining ones not counted (Infinity: no limit). */
  private readonly maxSessions: number;
  readonly windowSize: number;
  readonly connectionWindow: number;
  readonly idleMs: number;
  readonly connectMs: number;
  readonly headersMs: number;
  readonly bodyMs: number;
  readonly pingMs: number;
  readonly pingTimeoutMs: number;
  /** The sweep's period; deadlines are set one tick late so they never fire early. */
  readonly tick: number;
  /** The coarse clock (epoch ms): set by each sweep and when sessions open. */
  now = Date.now();
  /** Open sessions, oldest first (streams go to the oldest with room). */
  private sessions: Session[] = [];
  /** Attempts waiting for room, oldest first. */
  private readonly queue = new AttemptQueue();
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private closeWaiters: (() => void)[] = [];

  constructor(upstream: Upstream, settings: ClientSettings) {
    const { keepalive, timeouts, http2: h } = settings;
    this.upstreamId = upstream.id;
    const host = upstream.hostname;
    this.host = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
    this.port = upstream.port;
    this.scheme = upstream.secure ? 'https' : 'http';
    this.authority = `${host}:${upstream.port}`;
    this.origin = `${this.scheme}://${this.authority}`;
    this.tls = settings.tls !== null ? new UpstreamTlsConnector(upstream, settings.tls, ['h2']) : null;
    this.maxStreams = h.max_concurrent_streams;
    const sessions = Math.min(h.max_sessions > 0 ? h.max_sessions : Infinity, settings.maxSockets ?? Infinity);
    this.maxSessions = sessions;
    this.windowSize = h.initial_window_bytes;
    this.connectionWindow = Math.min(maxWindow, h.initial_window_bytes * h.max_concurrent_streams);
    this.idleMs = effectiveIdle(keepalive.idle_timeout, keepalive.safety_margin);
    this.connectMs = timeouts.connect;
    this.headersMs = timeouts.response_headers;
    this.bodyMs = timeouts.idle_body;
    this.pingMs = h.ping_interval;
    this.pingTimeoutMs = h.ping_timeout;
    let shortest = 1000;
    for (const ms of [timeouts.connect, timeouts.response_headers, timeouts.idle_body, h.ping_interval, h.ping_timeout, this.idleMs]) if (ms > 0 && ms < shortest * 4) shortest = ms / 4;
    this.tick = Math.max(10, Math.min(250, Math.floor(shortest)));
  }

  forward(attempt: UpstreamAttempt): void {
    this.dispatch(attempt, null);
  }

  /**
   * Gives `attempt` a stream: on a ready session with room, else on a connecting one, else on a
   * new session, else it queues. `noOpen` (a reason) when the attempt comes back from a session
   * that went away before it was ready: it opens no other and fails as unprocessed. No session
   * opens while the peer allows no streams on a ready one (refusing): the attempt fails as
   * unprocessed. So an attempt opens at most one session: once ready, that session has room for
   * it (it waits first in line), or it sends it back to the proxy (no streams allowed, gone
   * before ready, connect failed). Sessions opened are bounded by the proxy's attempts, which its
   * retry policy bounds (`max_attempts`, MAX_UNPROCESSED_RETRIES in src/proxy/retry.ts).
   */
  dispatch(attempt: UpstreamAttempt, noOpen: string | null): void {
    if (!attempt.live) return;
    if (attempt.upgrade) {
      attempt.error(new FulcrumError(ErrorCode.UpgradeNotSupported, 'protocol upgrades (WebSocket) are not forwarded to an HTTP/2 upstream (pool protocol h2/h2c)', 'internal', 501, false));
      return;
    }
    this.now = Date.now();
    for (;;) {
      const ready = this.withRoom();
      if (ready === null) break;
      if (ready.start(attempt)) return;
      // That session is going away (drained by start): try the next.
    }
    const connecting = this.connectingWithRoom();
    if (connecting !== null) return connecting.wait(attempt);
    if (noOpen !== null) return attempt.error(unprocessed(noOpen));
    // The upstream allows no streams now: another connection would be told the same (a server shedding load would get a storm of connects).
    if (this.refusing()) return attempt.error(unprocessed(`upstream allows no streams now (SETTINGS_MAX_CONCURRENT_STREAMS 0): not sent`));
    // A closed client keeps no session: a straggler gets one that closes behind it.
    if (this.closed || this.counted() < this.maxSessions) {
      let session: Session;
      try {
        session = this.open(this.closed);
      } catch (err) {
        // tls.connect or http2.connect refused their options synchronously: nothing was sent.
        attempt.error(this.tls !== null ? duringHandshake(err) : err);
        return;
      }
      return session.wait(attempt);
    }
    this.queue.push(attempt, `an HTTP/2 stream to ${this.upstreamId} (max_sessions ${this.maxSessions})`);
  }

  /** The oldest ready session with a free stream slot, or null. */
  private withRoom(): Session | null {
    for (const s of this.sessions) if (s.room > 0) return s;
    return null;
  }

  /** A connecting session whose waiting attempts fit in the streams it will likely allow, or null. */
  private connectingWithRoom(): Session | null {
    for (const s of this.sessions) if (s.phase === CONNECTING && s.waiting.length < this.maxStreams) return s;
    return null;
  }

  /** A ready session whose peer allows no streams now (it idles out after keepalive.idle_timeout, and a new one is tried then). */
  private refusing(): boolean {
    for (const s of this.sessions) if (s.refusing) return true;
    return false;
  }

  /** Sessions that count against max_sessions (not draining). */
  private counted(): number {
    let n = 0;
    for (const s of this.sessions) if (s.phase === CONNECTING || s.phase === READY) n++;
    return n;
  }

  private open(oneOff: boolean): Session {
    const s = new Session(this, oneOff);
    this.sessions.push(s);
    this.startSweep();
    return s;
  }

  /** Room appeared (a stream ended, a session came up or left): waiting attempts move on. */
  pump(): void {
    for (let attempt = this.queue.peek(); attempt !== null; attempt = this.queue.peek()) {
      if (this.withRoom() === null && this.connectingWithRoom() === null && this.counted() >= this.maxSessions) return;
      this.queue.next();
      this.forward(attempt);
    }
  }

  /** A session closed: forgotten; its slot may serve a waiting attempt. */
  forget(s: Session): void {
    const i = this.sessions.indexOf(s);
    if (i === -1) return;
    this.sessions.splice(i, 1);
    this.pump();
    if (this.sessions.length === 0) {
      if (this.timer !== null) {
        clearInterval(this.timer);
        this.timer = null;
      }
      if (this.closed) for (const resolve of this.closeWaiters.splice(0)) resolve();
    }
  }

  private startSweep(): void {
    if (this.timer !== null) return;
    this.now = Date.now();
    this.timer = setInterval(sweep, this.tick, this);
    this.timer.unref();
  }

  /** One tick: the clock advances, deadlines that passed fire, idle sessions close, quiet ones are pinged. */
  sweep(): void {
    const now = (this.now = Date.now());
    for (const s of [...this.sessions]) {
      try {
        s.sweep(now);
      } catch (err) {
        s.destroy(err as Error);
      }
    }
  }

  /** Sessions open now, connecting and draining ones included (for tests and status). */
  get sessionCount(): number {
    return this.sessions.length;
  }

  close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      // Idle sessions go now; busy ones when their streams end; waiting attempts still get theirs.
      for (const s of [...this.sessions]) {
        s.oneOff = true;
        s.closeIfDone();
      }
    }
    if (this.sessions.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.closeWaiters.push(resolve));
  }
}
