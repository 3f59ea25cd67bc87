/**
 * Fulcrum's own HTTP/1.1 client toward one upstream, on raw keep-alive sockets (the default
 * transport, `transport: http1`). It writes each request head (and a small body) in one write,
 * parses answers with the strict parsers of src/http1/, hands body bytes to the attempt as they
 * come in (the first ones in the same tick as the head) and keeps sockets for reuse only when
 * the exchange left them clean.
 *
 * Sockets: idle ones are reused most recently used first (LIFO), so surplus sockets age out;
 * each is kept `keepalive.idle_timeout - safety_margin`, or less when the upstream advertised
 * `Keep-Alive: timeout=N` (N s less the margin; nothing left: not reused), checked when a socket
 * is taken. Beyond `maxSockets` attempts wait in a bounded FIFO queue. Timeouts (connect,
 * response headers, idle body) are deadlines on each connection checked by one sweep timer per
 * client on a coarse clock (undici's FastTimer idea, lib/util/timers.js): no timer per socket
 * or request; a deadline fires between its time and a quarter of it (at most 250 ms) later.
 *
 * An `https://` upstream is reached with `tls.connect` (upstream-tls.ts: SNI, verification,
 * ALPN http/1.1, the last session resumed); the request is written once the handshake is done,
 * and the connect timeout covers TCP and the handshake together. A failure before that is marked
 * as a handshake failure (`duringHandshake`): the request never left, it may go elsewhere.
 *
 * With the pool's `proxy_protocol`, a new socket starts with the attempt's PROXY header, in the
 * same write as its first request head, and is bound to the attempt's client connection
 * (`connectionKey`): it is reused only for that client's later requests (idle ones are kept per
 * key), and gives up its slot under `maxSockets` to another client's request rather than make it
 * wait. When that client connection closes, its idle sockets close with it, and a busy one closes
 * when its exchange ends (HAProxy does the same with a session's private connections): a client
 * that opens and closes connections leaves no sockets behind that nobody may use.
 *
 * A request body of unknown length goes chunked, with the client's trailers in its last chunk
 * (read from the attempt when the body ended); a kept body (a retry) goes with its length, or
 * chunked when it has trailers. TE goes with `Connection: te`.
 *
 * Errors reach the attempt with the codes src/proxy/status.ts maps: Node's socket codes
 * (ECONNREFUSED, ECONNRESET, ...), Node's and OpenSSL's TLS codes (CERT_HAS_EXPIRED,
 * ERR_TLS_CERT_ALTNAME_INVALID, ERR_SSL_*), llhttp's `HPE_*` for a malformed answer, and undici's
 * names for the timeouts and request-side refusals, so every transport reads the same in logs.
 */
import net, { type Socket } from 'node:net';
import { http } from '../node-builtins.ts';
import { ChunkedDecoder, lastChunk } from '../http1/chunked.ts';
import { append } from '../http1/bytes.ts';
import { ResponseHead, parseResponseHead } from '../http1/response-head.ts';
import type { Upstream } from '../upstream/upstream.ts';
import { RequestUpload, type UploadSink } from './request-upload.ts';
import { heldWriteError, keepReadingAfterWriteError } from './upstream-socket.ts';
import { duringHandshake, UpstreamTlsConnector } from './upstream-tls.ts';
import { effectiveIdle, socketReusableAfter, type ClientSettings, type UpstreamAttempt, type UpstreamClient } from './transport.ts';
import { AttemptQueue } from './attempt-queue.ts';
import { clientConnectionGone, watchClientConnection, type ClientConnectionWatcher } from '../proxy/upstream-proxy-header.ts';

// Phases of a connection.
/** Connecting (TCP, and the TLS handshake to an https upstream); `attempt` waits for the socket. */
const CONNECTING = 0;
/** In the idle list, waiting for the next request. */
const IDLE = 1;
/** The request was written (or is being written); no final answer head yet. */
const WAITING = 2;
/** The final head was relayed; its body is read. */
const BODY = 3;
/** Destroyed, or handed over after a 101: nothing more happens here. */
const CLOSED = 4;

// How the answer's body is delimited (RFC 9112 section 6.3).
const NO_BODY = 0;
const LENGTH = 1;
const CHUNKED = 2;
const UNTIL_CLOSE = 3;

/** Buffer bodies up to this size go out in the head's write (one copy); larger ones in a second write of the same batch. */
const coalesceBytes = 16 * 1024;
/** Bytes a header value may not hold (RFC 9110 section 5.5; Node's and undici's check), and a request-target. */
const invalidValue = /[^\t\x20-\x7e\x80-\xff]/;
const invalidTarget = /[^\x21-\x7e\x80-\xff]/;
const LF = 10;
const empty = Buffer.alloc(0);
const noop = (): void => {};

const kConnection = Symbol('fulcrum.http1.connection');
type OwnedSocket = Socket & { [kConnection]: Connection };

function uncork(socket: Socket): void {
  socket.uncork();
}

function codeError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

/** Methods whose request without a body still says `Content-Length: 0` (RFC 9110 section 8.6; what undici and Node send). */
function expectsPayload(method: string): boolean {
  return method === 'POST' || method === 'PUT' || method === 'PATCH';
}

/** One socket to the upstream and the exchange it carries. */
class Connection implements UploadSink {
  readonly client: Http1Client;
  readonly socket: Socket;
  /** Closes after its exchange (a straggler on a closed client). */
  readonly oneOff: boolean;
  /** A TLS socket: ready on `secureConnect`, not `connect`. */
  readonly secure: boolean;
  /** The socket listeners it added (a socket handed to a tunnel loses them). */
  private readonly listeners: typeof socketListeners;
  /** The client connection this socket is bound to (its PROXY header names that client), or null: any attempt without a key. */
  readonly key: object | null;
  /** The PROXY header not written yet: it goes out with the first request head. */
  private prelude: Buffer | null;
  phase = CONNECTING;
  /** The attempt this socket serves now (null when idle, and once its outcome was reported). */
  attempt: UpstreamAttempt | null = null;
  /** Exchanges completed on this socket (more than 0: a reused socket). */
  served = 0;
  /** While idle: when it stops being reusable (epoch ms). */
  expires = 0;
  /** In the client's idle list. */
  inIdle = false;
  /** When the running timeout fires (client clock, ms; 0: none). */
  deadline = 0;
  // The answer.
  readonly head = new ResponseHead();
  /** A head not complete yet. */
  private pending: Buffer | null = null;
  private framing = NO_BODY;
  private remaining = 0;
  private decoder: ChunkedDecoder | null = null;
  /** The answer allows reuse (persistent, delimited, not in doubt). */
  private keep = false;
  /** How long the socket may stay idle after this answer. */
  keepMs = 0;
  /** Reading stopped while the client is slow. */
  private paused = false;
  // The request.
  /** A streamed body's upload (one for every request on this socket); no declared length: chunked. */
  private readonly upload = new RequestUpload(this);
  /** The whole request was handed to the socket. */
  private requestSent = false;

  /** The proxy gave up on the attempt: whatever the socket holds is dropped with it. */
  readonly cancel = (): void => {
    this.attempt = null;
    this.destroy();
  };
  readonly onChunk = (chunk: Buffer): void => this.deliver(chunk);

  constructor(client: Http1Client, socket: Socket, oneOff: boolean, secure: boolean, key: object | null, prelude: Buffer | null) {
    this.client = client;
    this.socket = socket;
    this.oneOff = oneOff;
    this.secure = secure;
    this.key = key;
    this.prelude = prelude;
    this.keepMs = client.idleMs;
    (socket as OwnedSocket)[kConnection] = this;
    this.listeners = secure ? tlsSocketListeners : socketListeners;
    for (const [event, listener] of this.listeners) socket.on(event, listener);
  }

  /** Writes the attempt's request: head, framing and (a small) body in one write. */
  send(attempt: UpstreamAttempt): void {
    const client = this.client;
    this.attempt = attempt;
    this.phase = WAITING;
    this.deadline = 0;
    this.pending = null;
    this.requestSent = false;
    this.upload.moved = false;
    attempt.onCancel(this.cancel);
    const method = attempt.method;
    const path = attempt.path;
    if (invalidTarget.test(path)) return this.refuse('UND_ERR_INVALID_ARG', 'invalid request-target');
    const headers = attempt.headers;
    let head = `${method} ${path} HTTP/1.1\r\n`;
    let declared = -1;
    for (let i = 0; i < headers.length; i += 2) {
      const name = headers[i];
      const value = headers[i + 1];
      if (invalidValue.test(value)) return this.refuse('UND_ERR_INVALID_ARG', `invalid ${name} header value`);
      if (name.length === 14 && name.toLowerCase() === 'content-length') declared = Number(value);
      head += `${name}: ${value}\r\n`;
      // TE applies to this connection only: its sender names it in Connection too (RFC 9110 section 10.1.4).
      if (name.length === 2 && name.toLowerCase() === 'te') head += 'connection: te\r\n';
    }
    const body = attempt.body;
    const socket = this.socket;
    if (body === null) {
      head += declared === -1 && expectsPayload(method) ? 'content-length: 0\r\n\r\n' : '\r\n';
      attempt.sending(this.served > 0);
      this.requestSent = true;
      const prelude = this.prelude;
      if (prelude === null) socket.write(head, 'latin1');
      else {
        this.prelude = null;
        const out = Buffer.allocUnsafe(prelude.length + head.length);
        prelude.copy(out, 0);
        out.write(head, prelude.length, head.length, 'latin1');
        socket.write(out);
      }
    } else if (Buffer.isBuffer(body)) {
      // A kept body (a retry) was read whole, its trailers too: with trailers it goes chunked, as
      // the first attempt did, so the retry does not lose them; without, with its length. A
      // declared length (an HTTP/2 client's) stays: trailers cannot follow it, on any attempt.
      const trailers = attempt.requestTrailers;
      const chunked = declared === -1 && trailers !== null && trailers.length > 0;
      if (chunked) head += 'transfer-encoding: chunked\r\n';
      else if (declared === -1) head += `content-length: ${body.length}\r\n`;
      else if (declared !== body.length) return this.refuse('UND_ERR_REQ_CONTENT_LENGTH_MISMATCH', 'request body length does not match its Content-Length');
      head += chunked && body.length > 0 ? `\r\n${body.length.toString(16)}\r\n` : '\r\n';
      const tail = chunked ? (body.length > 0 ? `\r\n${lastChunk(trailers)}` : lastChunk(trailers)) : '';
      attempt.sending(this.served > 0);
      this.requestSent = true;
      const prelude = this.prelude;
      this.prelude = null;
      if (body.length <= coalesceBytes) {
        const at = prelude === null ? 0 : prelude.length;
        const out = Buffer.allocUnsafe(at + head.length + body.length + tail.length);
        if (prelude !== null) prelude.copy(out, 0);
        out.write(head, at, head.length, 'latin1');
        body.copy(out, at + head.length);
        if (tail.length > 0) out.write(tail, at + head.length + body.length, tail.length, 'latin1');
        socket.write(out);
      } else {
        socket.cork();
        if (prelude !== null) socket.write(prelude);
        socket.write(head, 'latin1');
        socket.write(body);
        if (tail.length > 0) socket.write(tail, 'latin1');
        socket.uncork();
      }
    } else {
      head += declared === -1 ? 'transfer-encoding: chunked\r\n\r\n' : '\r\n';
      attempt.sending(this.served > 0);
      // Held until the end of this tick: body bytes the client sent with its head go out in the same write.
      socket.cork();
      const prelude = this.prelude;
      if (prelude !== null) {
        this.prelude = null;
        socket.write(prelude);
      }
      const full = !socket.write(head, 'latin1');
      process.nextTick(uncork, socket);
      // A connect failure never gets here: the body stays unread and can go to another upstream.
      this.upload.attach(body, declared, full);
      if (declared === 0) this.requestSent = true;
    }
    this.deadline = client.headersMs > 0 ? client.now + client.headersMs + client.tick : 0;
  }

  /** The request cannot be written as asked (nothing was sent): the socket stays clean for the next one. */
  private refuse(code: string, message: string): void {
    const attempt = this.attempt!;
    this.attempt = null;
    attempt.onCancel(noop);
    this.client.release(this);
    attempt.error(codeError(code, message));
  }

  /** A body chunk, counted by the upload: as it is under a Content-Length, else as one chunk. */
  uploadChunk(chunk: Buffer): boolean {
    const socket = this.socket;
    if (this.upload.left >= 0) {
      const ok = socket.write(chunk);
      // Complete on the wire with its last byte, whenever the stream says it ended.
      if (this.upload.left === 0) this.requestSent = true;
      return ok;
    }
    socket.cork();
    socket.write(`${chunk.length.toString(16)}\r\n`, 'latin1');
    socket.write(chunk);
    const ok = socket.write('\r\n', 'latin1');
    socket.uncork();
    return ok;
  }

  /** The body ended: the last chunk with the client's trailers when chunked, and the wait for the answer starts. */
  uploadEnd(): void {
    // The client's trailers are known now that its body ended (RFC 9112 section 7.1.2).
    if (this.upload.left === -1) this.socket.write(lastChunk(this.attempt?.requestTrailers ?? null), 'latin1');
    this.requestSent = true;
    this.upload.moved = false;
    // The wait for the answer starts when the request is all out.
    const client = this.client;
    if (this.phase === WAITING && client.headersMs > 0) this.deadline = client.now + client.headersMs + client.tick;
  }

  /** The upload failed: the exchange fails with `err` (the socket is destroyed). */
  uploadFailed(err: Error): void {
    this.fail(err);
  }

  /** The socket drained: a paused upload goes on. */
  drained(): void {
    this.upload.drained();
  }

  /** Bytes from the upstream. */
  read(chunk: Buffer): void {
    if (this.phase === BODY) this.bodyBytes(chunk, 0);
    else if (this.phase === WAITING) this.headBytes(chunk);
    // Bytes while idle (nobody asked): the socket can no longer be trusted.
    else this.destroy();
  }

  private headBytes(chunk: Buffer): void {
    let buf = chunk;
    if (this.pending !== null) {
      buf = append(this.pending, chunk);
      this.pending = null;
      // A head split over reads is parsed again only once a line may have ended.
      if (chunk.indexOf(LF) === -1 && buf.length <= http.maxHeaderSize) {
        this.pending = buf;
        return;
      }
    }
    const head = this.head;
    let start = 0;
    for (;;) {
      const n = parseResponseHead(buf, start, buf.length, http.maxHeaderSize, head);
      if (n === 0) {
        this.pending = buf.subarray(start);
        return;
      }
      if (n < 0) return this.fail(codeError(head.error!, `${head.message} (${head.error})`));
      start += n;
      const status = head.status;
      if (status >= 200) return this.startBody(buf, start);
      if (status === 101) return this.switchProtocols(buf, start);
      // An interim answer (100 Continue, 103 Early Hints, ...): relayed; the final one follows.
      this.attempt!.informational(status, head.reason, head.rawHeaders);
      if (this.phase !== WAITING || start === buf.length) return;
    }
  }

  private startBody(buf: Buffer, start: number): void {
    const attempt = this.attempt!;
    const client = this.client;
    const head = this.head;
    const status = head.status;
    this.phase = BODY;
    this.deadline = 0;
    let framing: number;
    if (status === 204 || status === 304 || attempt.method === 'HEAD') framing = NO_BODY;
    else if (head.chunked) {
      framing = CHUNKED;
      (this.decoder ??= new ChunkedDecoder()).reset();
    } else if (head.contentLength !== -1) {
      framing = LENGTH;
      this.remaining = head.contentLength;
    } else framing = UNTIL_CLOSE;
    this.framing = framing;
    let keepMs = client.idleMs;
    if (head.keepAliveTimeout !== -1) keepMs = Math.min(keepMs, head.keepAliveTimeout * 1000 - client.margin);
    this.keepMs = keepMs;
    this.keep = keepMs > 0 && framing !== UNTIL_CLOSE && head.persistent && (status !== 204 && status !== 304 ? true : socketReusableAfter(status, head.rawHeaders));
    if (!attempt.response(status, head.rawHeaders, head.reason)) {
      if (this.phase === BODY) this.cancel();
      return;
    }
    if (this.phase !== BODY) return;
    if (framing === NO_BODY || (framing === LENGTH && this.remaining === 0)) return this.complete(buf, start);
    if (client.bodyMs > 0) this.deadline = client.now + client.bodyMs + client.tick;
    // The first body bytes of the same read go out in this tick, behind the head.
    if (start < buf.length) this.bodyBytes(buf, start);
  }

  private bodyBytes(buf: Buffer, start: number): void {
    switch (this.framing) {
      case LENGTH: {
        const n = Math.min(this.remaining, buf.length - start);
        this.remaining -= n;
        this.deliver(start === 0 && n === buf.length ? buf : buf.subarray(start, start + n));
        if (this.phase === BODY && this.remaining === 0) this.complete(buf, start + n);
        return;
      }
      case CHUNKED: {
        const decoder = this.decoder!;
        const n = decoder.feed(buf, start, buf.length, this.onChunk);
        if (this.phase !== BODY) return;
        if (n < 0) return this.fail(codeError(decoder.error!, `${decoder.message} (${decoder.error})`));
        if (decoder.done) this.complete(buf, start + n);
        return;
      }
      default:
        this.deliver(start === 0 ? buf : buf.subarray(start));
    }
  }

  /** A body chunk to the attempt; reading stops while the client is slow. */
  private deliver(chunk: Buffer): void {
    if (this.phase !== BODY) return;
    const attempt = this.attempt!;
    const client = this.client;
    if (client.bodyMs > 0) this.deadline = client.now + client.bodyMs + client.tick;
    if (attempt.data(chunk) || this.paused || this.phase !== BODY || !attempt.live) return;
    this.paused = true;
    this.deadline = 0;
    this.socket.pause();
    // Bound to this exchange: a late resume after the socket moved on is ignored.
    attempt.whenWritable(() => this.resumeFor(attempt));
  }

  private resumeFor(attempt: UpstreamAttempt): void {
    if (this.attempt !== attempt || !this.paused || this.phase !== BODY) return;
    this.paused = false;
    const client = this.client;
    // While the client was slow the upstream was not idle: the body timer starts again.
    if (client.bodyMs > 0) this.deadline = client.now + client.bodyMs + client.tick;
    this.socket.resume();
  }

  /** The answer is complete: the socket goes back to the pool when nothing about it is in doubt. */
  private complete(buf: Buffer, next: number): void {
    const attempt = this.attempt!;
    const trailers = this.framing === CHUNKED ? this.decoder!.trailers : null;
    this.attempt = null;
    this.deadline = 0;
    this.served++;
    attempt.onCancel(noop);
    if (this.paused) {
      this.paused = false;
      this.socket.resume();
    }
    // Not reused: an upload cut short (the upstream answered first), bytes past the answer, a failed write.
    const reuse = this.keep && this.requestSent && next === buf.length && !this.oneOff && heldWriteError(this.socket) === undefined;
    this.upload.detach();
    if (reuse) this.client.release(this);
    else this.destroy();
    attempt.end(trailers);
  }

  /** A 101 to an upgrade request: the socket and the bytes past the head are the tunnel's. */
  private switchProtocols(buf: Buffer, start: number): void {
    const attempt = this.attempt!;
    if (!attempt.upgrade) return this.fail(codeError('UND_ERR_INFO', 'upstream switched protocols without being asked'));
    const socket = this.socket;
    const head = this.head;
    this.attempt = null;
    this.phase = CLOSED;
    this.deadline = 0;
    this.upload.detach();
    socket.pause();
    for (const [event, listener] of this.listeners) socket.off(event, listener);
    attempt.onCancel(noop);
    this.client.forget(this);
    attempt.switched(head.status, head.reason, head.rawHeaders, socket, buf.subarray(start));
  }

  /** The upstream closed its side. */
  ended(): void {
    if (this.phase === BODY) {
      // A body delimited by the close is complete now.
      if (this.framing === UNTIL_CLOSE) return this.complete(empty, 0);
      return this.fail(codeError('ECONNRESET', 'upstream closed the connection mid-body'));
    }
    // Before any byte of an answer: a reset (on a reused socket, most likely its idle close, retried);
    // after part of a head, a broken answer (the upstream did see the request).
    if (this.phase === WAITING || this.phase === CONNECTING) return this.fail(this.pending === null ? codeError('ECONNRESET', 'upstream closed the connection') : codeError('HPE_INVALID_EOF_STATE', 'upstream closed the connection mid-head'));
    this.destroy();
  }

  /** A deadline passed (`now` on the client clock). */
  timedOut(now: number): void {
    const client = this.client;
    if (this.phase === CONNECTING) {
      const handshaking = this.secure && !this.socket.connecting;
      return this.fail(codeError('UND_ERR_CONNECT_TIMEOUT', `connect timeout after ${client.connectMs}ms${handshaking ? ' (connected, TLS handshake not finished)' : ''}`));
    }
    if (this.phase === WAITING) {
      // An upload still moving is the client's pace, not the upstream's silence (undici's rule).
      if (this.upload.moved && !this.socket.writableNeedDrain) {
        this.upload.moved = false;
        this.deadline = now + client.headersMs;
        return;
      }
      return this.fail(codeError('UND_ERR_HEADERS_TIMEOUT', `no response headers within ${client.headersMs}ms`));
    }
    if (this.phase === BODY && !this.paused) this.fail(codeError('UND_ERR_BODY_TIMEOUT', `no response body bytes for ${client.bodyMs}ms`));
  }

  /** The exchange failed: reported once, the socket destroyed. */
  fail(err: Error): void {
    // Before the handshake ended nothing was sent: status.ts reads a reset here as a TLS failure.
    if (this.phase === CONNECTING && this.secure) duringHandshake(err);
    const attempt = this.attempt;
    this.attempt = null;
    this.destroy();
    if (attempt !== null) {
      attempt.onCancel(noop);
      attempt.error(err);
    }
  }

  destroy(): void {
    if (this.phase === CLOSED) return;
    this.phase = CLOSED;
    this.deadline = 0;
    this.upload.detach();
    this.socket.destroy();
  }

  /** The socket closed: the client forgets it; an exchange still on it failed. */
  closed(): void {
    this.phase = CLOSED;
    this.upload.detach();
    this.client.forget(this);
    if (this.attempt !== null) this.fail(codeError('ECONNRESET', 'upstream closed the connection'));
  }
}

// Socket listeners, shared by every connection (`this` is the socket). A throw in this file's
// own code ends that exchange (a 502) and the socket, never the process.
function onSocketConnect(this: OwnedSocket): void {
  const c = this[kConnection];
  try {
    if (c.phase === CONNECTING && c.attempt !== null) c.send(c.attempt);
  } catch (err) {
    c.fail(err as Error);
  }
}
function onSocketData(this: OwnedSocket, chunk: Buffer): void {
  const c = this[kConnection];
  try {
    c.read(chunk);
  } catch (err) {
    c.fail(err as Error);
  }
}
function onSocketEnd(this: OwnedSocket): void {
  const c = this[kConnection];
  try {
    c.ended();
  } catch (err) {
    c.fail(err as Error);
  }
}
function onSocketError(this: OwnedSocket, err: Error): void {
  this[kConnection].fail(err);
}
function onSocketClose(this: OwnedSocket): void {
  this[kConnection].closed();
}
function onSocketDrain(this: OwnedSocket): void {
  const c = this[kConnection];
  try {
    c.drained();
  } catch (err) {
    c.fail(err as Error);
  }
}

/** The socket listeners every connection adds, and a socket handed to a tunnel loses (typed as EventEmitter types listeners). */
const socketListeners: readonly (readonly [string, (...args: any[]) => void])[] = [
  ['connect', onSocketConnect],
  ['data', onSocketData],
  ['end', onSocketEnd],
  ['error', onSocketError],
  ['close', onSocketClose],
  ['drain', onSocketDrain],
];
/** The same for a TLS socket: the request goes out once the handshake is done. */
const tlsSocketListeners: typeof socketListeners = socketListeners.map(([event, listener]) => (event === 'connect' ? ['secureConnect', listener] : [event, listener]));

function sweep(client: Http1Client): void {
  client.sweep();
}

/** Keep-alive sockets toward one upstream, Fulcrum's own HTTP/1.1 (see the file comment). */
export class Http1Client implements UpstreamClient, ClientConnectionWatcher {
  private readonly upstream: Upstream;
  /** Where to connect: the upstream's host without IPv6 brackets, and its port. */
  private readonly host: string;
  private readonly port: number;
  /** TLS sockets and the session they resume, for an https upstream; null for http. */
  readonly tls: UpstreamTlsConnector | null;
  /** Most sockets at once (Infinity: no limit). */
  private readonly maxSockets: number;
  readonly idleMs: number;
  readonly margin: number;
  readonly connectMs: number;
  readonly headersMs: number;
  readonly bodyMs: number;
  /** The sweep's period; deadlines are set one tick late so they never fire early. */
  readonly tick: number;
  /** The coarse clock (epoch ms): set by each sweep and whenever a socket is taken. */
  now = 0;
  /** Idle sockets without a key, the most recently used last. */
  private idle: Connection[] = [];
  /** Idle sockets bound to a client connection, by its key, the most recently used last; null until one is. */
  private keyed: Map<object, Connection[]> | null = null;
  /** Every open socket: connecting, busy and idle. */
  private readonly connections = new Set<Connection>();
  /** Attempts waiting for a socket, oldest first. */
  private readonly queue = new AttemptQueue();
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private closeWaiters: (() => void)[] = [];

  constructor(upstream: Upstream, settings: ClientSettings) {
    const { keepalive, timeouts } = settings;
    this.upstream = upstream;
    const host = upstream.hostname;
    this.host = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
    this.port = upstream.port;
    this.tls = settings.tls !== null ? new UpstreamTlsConnector(upstream, settings.tls) : null;
    this.maxSockets = settings.maxSockets ?? Infinity;
    this.idleMs = effectiveIdle(keepalive.idle_timeout, keepalive.safety_margin);
    this.margin = keepalive.safety_margin;
    this.connectMs = timeouts.connect;
    this.headersMs = timeouts.response_headers;
    this.bodyMs = timeouts.idle_body;
    let shortest = 1000;
    for (const ms of [timeouts.connect, timeouts.response_headers, timeouts.idle_body]) if (ms > 0 && ms < shortest * 4) shortest = ms / 4;
    this.tick = Math.max(10, Math.min(250, Math.floor(shortest)));
  }

  forward(attempt: UpstreamAttempt): void {
    if (!attempt.live) return;
    // A closed client opens no pooled socket: a straggler gets one that closes with its exchange.
    if (this.closed) return this.open(attempt, true);
    const key = attempt.connectionKey ?? null;
    const idle = key === null ? this.take() : this.takeKeyed(key);
    if (idle !== null) return idle.send(attempt);
    if (this.connections.size < this.maxSockets) return this.open(attempt, false);
    // Full, with idle sockets bound to other clients (or unbound ones a bound attempt cannot use): the oldest makes room.
    if ((key !== null || this.keyed !== null) && this.evictIdle()) return this.open(attempt, false);
    this.queue.push(attempt, `a connection to ${this.upstream.id} (max_sockets ${this.maxSockets})`);
  }

  /** The most recently used idle socket that is still reusable, or null. */
  private take(): Connection | null {
    const idle = this.idle;
    if (idle.length === 0) return null;
    const now = (this.now = Date.now());
    while (idle.length > 0) {
      const c = idle.pop()!;
      c.inIdle = false;
      if (c.expires > now && c.phase === IDLE && !c.socket.destroyed) return c;
      c.destroy();
    }
    return null;
  }

  /** As take, among the idle sockets bound to `key`. */
  private takeKeyed(key: object): Connection | null {
    const keyed = this.keyed;
    const idle = keyed?.get(key);
    if (idle === undefined) return null;
    const now = (this.now = Date.now());
    let found: Connection | null = null;
    while (idle.length > 0) {
      const c = idle.pop()!;
      c.inIdle = false;
      if (c.expires > now && c.phase === IDLE && !c.socket.destroyed) {
        found = c;
        break;
      }
      c.destroy();
    }
    if (idle.length === 0) keyed!.delete(key);
    return found;
  }

  /**
   * Closes the idle socket that expires first (unbound or bound to any client) and gives its slot
   * up at once; false when none is idle. For an attempt that no idle socket can serve while
   * `maxSockets` are open.
   */
  private evictIdle(): boolean {
    let oldest: Connection | null = this.idle.length > 0 ? this.idle[0] : null;
    if (this.keyed !== null) for (const list of this.keyed.values()) if (oldest === null || list[0].expires < oldest.expires) oldest = list[0];
    if (oldest === null) return false;
    this.unlist(oldest);
    this.connections.delete(oldest);
    oldest.destroy();
    return true;
  }

  /** Takes an idle socket out of its idle list. */
  private unlist(c: Connection): void {
    c.inIdle = false;
    if (c.key === null) {
      const i = this.idle.lastIndexOf(c);
      if (i !== -1) this.idle.splice(i, 1);
      return;
    }
    const list = this.keyed?.get(c.key);
    if (list === undefined) return;
    const i = list.lastIndexOf(c);
    if (i !== -1) list.splice(i, 1);
    if (list.length === 0) this.keyed!.delete(c.key);
  }

  private open(attempt: UpstreamAttempt, oneOff: boolean): void {
    let socket: Socket;
    const tls = this.tls;
    const key = attempt.connectionKey ?? null;
    const header = key === null ? null : (attempt.proxyHeader ?? null);
    try {
      if (tls === null) socket = net.connect({ host: this.host, port: this.port, noDelay: true, keepAlive: true, keepAliveInitialDelay: 60_000 });
      else {
        // The PROXY header precedes the TLS handshake, in clear text (the upstream reads it before TLS).
        socket = tls.connect(header);
        socket.setNoDelay(true);
        socket.setKeepAlive(true, 60_000);
      }
    } catch (err) {
      attempt.error(tls === null ? err : duringHandshake(err));
      return;
    }
    // An answer sent before the upload ended is still read after our writes fail (upstream-socket.ts).
    keepReadingAfterWriteError(socket);
    const c = new Connection(this, socket, oneOff, tls !== null, key, tls === null ? header : null);
    this.connections.add(c);
    this.startSweep();
    c.attempt = attempt;
    attempt.onCancel(c.cancel);
    if (this.connectMs > 0) c.deadline = this.now + this.connectMs + this.tick;
  }

  /**
   * A socket whose exchange ended cleanly: to the oldest waiting attempt, else to the idle list;
   * closed when it is bound to a client connection that is gone (its close frees the slot).
   */
  release(c: Connection): void {
    if (c.key !== null && clientConnectionGone(c.key)) return c.destroy();
    const next = this.queue.next();
    if (next !== null) {
      if ((next.connectionKey ?? null) === c.key) return c.send(next);
      // Bound to another client (or to one when the attempt is not): its slot goes to a new socket for the attempt.
      this.connections.delete(c);
      c.destroy();
      return this.open(next, this.closed);
    }
    if (this.closed) return c.destroy();
    c.phase = IDLE;
    c.expires = Date.now() + c.keepMs;
    c.inIdle = true;
    if (c.key === null) this.idle.push(c);
    else {
      const keyed = (this.keyed ??= new Map());
      const list = keyed.get(c.key);
      if (list === undefined) {
        keyed.set(c.key, [c]);
        // Told when the client connection closes (once however often this runs): its idle sockets go then.
        watchClientConnection(c.key, this);
      } else list.push(c);
    }
  }

  /** The client connection of `key` closed: its idle sockets can serve nobody, they close now. */
  clientConnectionClosed(key: object): void {
    const list = this.keyed?.get(key);
    if (list === undefined) return;
    this.keyed!.delete(key);
    for (const c of list) {
      c.inIdle = false;
      c.destroy();
    }
  }

  /** A socket closed or was handed over: its slot may serve a waiting attempt. */
  forget(c: Connection): void {
    if (!this.connections.delete(c)) return;
    if (c.inIdle) this.unlist(c);
    while (this.connections.size < this.maxSockets) {
      const next = this.queue.next();
      if (next === null) break;
      this.open(next, this.closed);
    }
    if (this.closed && this.connections.size === 0) {
      for (const resolve of this.closeWaiters.splice(0)) resolve();
    }
  }

  private startSweep(): void {
    if (this.timer !== null) return;
    this.now = Date.now();
    this.timer = setInterval(sweep, this.tick, this);
    this.timer.unref();
  }

  /** One tick: the clock advances, deadlines that passed fire, expired idle sockets close. */
  sweep(): void {
    const now = (this.now = Date.now());
    if (this.connections.size === 0) {
      clearInterval(this.timer!);
      this.timer = null;
      return;
    }
    // The oldest idle sockets are at the bottom of the list.
    const idle = this.idle;
    let expired = 0;
    while (expired < idle.length && idle[expired].expires <= now) expired++;
    if (expired > 0) {
      for (const c of idle.splice(0, expired)) {
        c.inIdle = false;
        c.destroy();
      }
    }
    if (this.keyed !== null) this.sweepKeyed(now);
    for (const c of this.connections) {
      if (c.deadline === 0 || c.deadline > now) continue;
      try {
        c.timedOut(now);
      } catch (err) {
        c.fail(err as Error);
      }
    }
  }

  /** Closes the expired idle sockets bound to client connections. */
  private sweepKeyed(now: number): void {
    const keyed = this.keyed!;
    for (const [key, list] of keyed) {
      let expired = 0;
      while (expired < list.length && list[expired].expires <= now) expired++;
      if (expired === 0) continue;
      for (const c of list.splice(0, expired)) {
        c.inIdle = false;
        c.destroy();
      }
      if (list.length === 0) keyed.delete(key);
    }
  }

  close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      // Idle sockets go now; busy ones when their exchange ends (release destroys them).
      const idle = this.idle;
      this.idle = [];
      for (const c of idle) {
        c.inIdle = false;
        c.destroy();
      }
      const keyed = this.keyed;
      this.keyed = null;
      if (keyed !== null) {
        for (const list of keyed.values()) {
          for (const c of list) {
            c.inIdle = false;
            c.destroy();
          }
        }
      }
    }
    if (this.connections.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.closeWaiters.push(resolve));
  }
}
