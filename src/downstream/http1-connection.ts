/**
 * Fulcrum's own HTTP/1.1 server side, on raw sockets (RFC 9112): what node:http did for the
 * listener, in one small object per connection and one timer per listener.
 *
 * - Requests are parsed by src/http1/request-head.ts (strict; a refusal is answered with its
 *   status and the connection closes) and taken one at a time, in order: the next head is parsed
 *   only once the answer to the previous one is complete, so pipelined requests are answered as
 *   sent and nothing after an answer that closes the connection ever reaches an upstream
 *   (nginx's way). Bytes that arrive meanwhile wait in memory up to `PIPELINE_BUFFER`, then in
 *   the kernel (the socket is paused).
 * - Bodies: Content-Length or chunked (src/http1/chunked.ts), streamed to the exchange as a
 *   Readable with backpressure (a full stream pauses the socket). Chunked trailers are bounded as
 *   the head is (`max_header_bytes`, `max_headers`: 431 past them) and, less the fields that may
 *   not come from trailers, become the response's `requestTrailers` before the body's end.
 * - Timeouts (keep-alive idle, headers, whole request, lingering close) are deadlines on the
 *   connection, checked by one interval per listener (`Http1Server`), not one timer per socket.
 * - An answer that closes the connection closes it gracefully (nginx's lingering close): FIN
 *   after the answer, then what the client still sends is read and dropped for a while, so a
 *   client still uploading reads the 4xx instead of a reset.
 * - A WebSocket handshake leaves the parser: the bytes after its head are the tunnel's, and its
 *   connection closes after any answer but a relayed 101 (then the socket is the tunnel's). So
 *   does a CONNECT on a forward-proxy listener (`connect`), whose tunnel opens with a 200.
 */
import { STATUS_CODES } from '../node-builtins.ts';
import { Readable } from 'node:stream';
import type { Socket } from 'node:net';
import { headEnd, isHeadError, maxRawHeadBytes, parseRequestHead, skipEmptyLines, type HeadLimits, type RequestHead } from '../http1/request-head.ts';
import { ChunkedDecoder } from '../http1/chunked.ts';
import { append } from '../http1/bytes.ts';
import { Http1Response, type ResponseConnection } from './http1-response.ts';
import { relayableTrailers } from './http1.ts';
import { asksWebSocket } from '../proxy/websocket.ts';

/** Bytes of pipelined requests held in memory while an answer is in progress; past this the socket pauses. */
export const PIPELINE_BUFFER = 64 * 1024;
/** How long a closing connection drops what the client still sends after the last byte (nginx's lingering_timeout). */
export const LINGER_IDLE_MS = 5000;
/** The most a closing connection is kept for reading and dropping (nginx's lingering_time). */
export const LINGER_MAX_MS = 30_000;
/**
 * An answer the client takes nothing of for this long is cut (nginx's send_timeout: the time
 * between two successful writes, not the whole answer). The clocks that end a connection (keep-alive,
 * lingering) wait while an answer is still leaving and moving.
 */
export const SEND_TIMEOUT_MS = 60_000;
/** How often a connection whose answer is being sent checks that it moves. */
const SEND_CHECK_MS = 1000;
/** The keep-alive timeout announced to clients is this much shorter than the one kept (Node 24's keepAliveTimeoutBuffer), so a client never reuses a connection as it closes. */
const KEEPALIVE_MARGIN_MS = 1000;

/** A complete HTTP/1.1 answer that closes the connection, as raw text. */
export function closingAnswer(status: number, text: string, detail: string): string {
  const body = `${status} ${text}${detail ? `: ${detail}` : ''}\n`;
  return `HTTP/1.1 ${status} ${text}\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
}

/** What the server does with what it parsed (the listener). */
export interface Http1Handler {
  /** A request head parsed and admitted: start the exchange, answering through `response`. */
  request(head: RequestHead, response: Http1Response): void;
  /** A request refused before it started (malformed, too large, too slow, CONNECT): for counting and the debug log. */
  refused(status: number, code: string, reason: string): void;
}

/** The server's settings (a listener's limits), changed in place on reload. */
export interface Http1Settings {
  keepAliveMs: number;
  /** Time from a request's first byte to the end of its head (0: none). */
  headersTimeoutMs: number;
  /** Time from a request's first byte to the end of its body (0: none). */
  requestTimeoutMs: number;
  limits: HeadLimits;
  /** CONNECT requests go to the handler (a forward-proxy listener with `connect: true`); false or absent: 501. */
  connect?: boolean;
}

/** Where a connection is (numbers: one small shape per connection). */
const State = {
  /** Waiting for (or reading) a request head. */
  Head: 0,
  /** Reading the body of the request in progress. */
  Body: 1,
  /** The request was read; its answer is in progress. */
  Answering: 2,
  /** Closing: FIN sent (or about to be), what comes is dropped. */
  Closing: 3,
  /** Handed to a tunnel: not HTTP any more. */
  Switched: 4,
} as const;
type State = (typeof State)[keyof typeof State];

/** Which deadline a connection has: Send while an answer is in progress (it must keep moving). */
const Timing = { None: 0, Idle: 1, Head: 2, Body: 3, Linger: 4, Send: 5 } as const;
type Timing = (typeof Timing)[keyof typeof Timing];

const kConnection = Symbol('fulcrum.http1');
type TrackedSocket = Socket & { [kConnection]?: Http1Connection };

/** The HTTP/1.1 server of one listener: its connections and the one timer that checks their deadlines. */
export class Http1Server {
  readonly settings: Http1Settings;
  readonly handler: Http1Handler;
  readonly connections = new Set<Http1Connection>();
  /** Set during graceful shutdown: no connection is kept alive after its answer. */
  draining = false;
  private clock: NodeJS.Timeout | null = null;
  private tickMs = 0;

  constructor(settings: Http1Settings, handler: Http1Handler) {
    this.settings = settings;
    this.handler = handler;
  }

  /** Takes an admitted socket (paused; nothing read yet, or only what an h2c sniff put back); `since`: when it was accepted. */
  accept(socket: Socket, since = performance.now()): Http1Connection {
    const connection = new Http1Connection(this, socket, since);
    this.connections.add(connection);
    this.startClock();
    return connection;
  }

  /** The connection state of a socket this server serves, if any. */
  static of(socket: object): Http1Connection | undefined {
    return (socket as TrackedSocket)[kConnection];
  }

  /** Applies changed settings: the deadlines already set stay, the next ones follow the new values. */
  configure(settings: Http1Settings): void {
    Object.assign(this.settings, settings);
    if (this.clock !== null) {
      clearInterval(this.clock);
      this.clock = null;
      this.startClock();
    }
  }

  /**
   * The clock ticks a quarter of the shortest timeout (50 ms to 1 s), as node:http's
   * connectionsCheckingInterval does: a 408 comes at most a quarter late.
   */
  private startClock(): void {
    if (this.clock !== null) return;
    const s = this.settings;
    const shortest = Math.min(...[s.keepAliveMs, s.headersTimeoutMs, s.requestTimeoutMs, LINGER_IDLE_MS].filter((v) => v > 0));
    this.tickMs = Math.max(50, Math.min(1000, Math.floor(shortest / 4)));
    this.clock = setInterval(tick, this.tickMs, this);
    this.clock.unref();
  }

  /** Checks every connection's deadline (one pass per tick). */
  checkDeadlines(): void {
    if (this.connections.size === 0) {
      clearInterval(this.clock!);
      this.clock = null;
      return;
    }
    const now = performance.now();
    for (const connection of this.connections) if (connection.timing !== Timing.None && now >= connection.deadline) connection.timedOut(now);
  }

  /** Closes the connections with no request in progress (shutdown; node:http's closeIdleConnections). */
  closeIdle(): void {
    for (const connection of this.connections) connection.closeIfIdle();
  }

  /** Cuts every connection still open, tunnels aside (they were handed over). */
  closeAll(): void {
    for (const connection of this.connections) connection.socket.destroy();
  }

  /** Stops the clock (the listener is closed). */
  stop(): void {
    if (this.clock !== null) clearInterval(this.clock);
    this.clock = null;
  }
}

function tick(server: Http1Server): void {
  server.checkDeadlines();
}

/** One client connection: everything it needs between requests is in this object. */
export class Http1Connection implements ResponseConnection {
  readonly socket: Socket;
  private readonly server: Http1Server;
  private state: State = State.Head;
  /** Bytes read and not consumed yet (a partial head, body bytes, pipelined requests), or null. */
  private pending: Buffer | null = null;
  /** Where the search for the end of the head resumes in `pending`. */
  private scanFrom = 0;
  /** The answer in progress, or null. */
  private response: Http1Response | null = null;
  /** The request body being read, or null. */
  private body: RequestBody | null = null;
  /** Content-Length bytes still to read (when not chunked). */
  private bodyLeft = 0;
  private decoder: ChunkedDecoder | null = null;
  /** The request in progress keeps the connection open after its answer. */
  private keepAliveAsked = true;
  /** The client shut its side (FIN). */
  private readEnded = false;
  private parsing = false;
  /** The head being parsed waited behind an earlier answer (its bytes came while that was in progress). */
  private queued = false;
  /** `performance.now()` of the first byte of the request being read. */
  private requestStart = 0;
  /** When lingering ends at the latest. */
  private lingerEnd = 0;
  /** Bytes the kernel took from this socket at the last send check, and when they last grew. */
  private sentMark = 0;
  private sendProgress = 0;
  /** The request body is no longer wanted (the exchange unpiped it): what comes of it is read and dropped. */
  private discarding = false;
  timing: Timing = Timing.Head;
  deadline = 0;

  /** `since`: when the connection was accepted (the first head's deadline counts from it, also across an h2c sniff). */
  constructor(server: Http1Server, socket: Socket, since: number) {
    this.server = server;
    this.socket = socket;
    (socket as TrackedSocket)[kConnection] = this;
    socket.setNoDelay(true);
    socket.on('data', onSocketData);
    socket.on('end', onSocketEnd);
    socket.on('error', onSocketError);
    socket.on('close', onSocketClose);
    // A connection that sends nothing is bounded like a slow head (node:http counts from accept too).
    this.requestStart = since;
    this.setTiming(Timing.Head);
  }

  get keepAliveSeconds(): number {
    return Math.floor(this.server.settings.keepAliveMs / 1000);
  }

  /** `keepalive_timeout: 0` turns keep-alive off (nginx's meaning): every answer closes its connection. */
  keepAlive(): boolean {
    return this.keepAliveAsked && !this.server.draining && !this.readEnded && this.server.settings.keepAliveMs > 0;
  }

  /** True while the connection only reads and drops (an answer that closed it was sent). */
  get isLingering(): boolean {
    return this.state === State.Closing;
  }

  /** True once the connection was handed to a tunnel. */
  get isSwitched(): boolean {
    return this.state === State.Switched;
  }

  private setTiming(timing: Timing): void {
    this.timing = timing;
    const s = this.server.settings;
    switch (timing) {
      case Timing.Idle:
        this.deadline = performance.now() + s.keepAliveMs + KEEPALIVE_MARGIN_MS;
        break;
      case Timing.Head: {
        // Without a headers timeout the whole-request one still bounds the head.
        const limit = s.headersTimeoutMs > 0 ? s.headersTimeoutMs : s.requestTimeoutMs;
        if (limit > 0) this.deadline = this.requestStart + limit;
        else this.timing = Timing.None;
        break;
      }
      case Timing.Send: {
        const now = performance.now();
        this.deadline = now + SEND_CHECK_MS;
        // Unknown until the first check (which then counts as progress): no socket getter per request.
        this.sentMark = -1;
        this.sendProgress = now;
        break;
      }
      case Timing.Body:
        if (s.requestTimeoutMs > 0) this.deadline = this.requestStart + s.requestTimeoutMs;
        else this.timing = Timing.None;
        break;
      case Timing.Linger:
        this.deadline = Math.min(performance.now() + LINGER_IDLE_MS, this.lingerEnd);
        break;
    }
  }

  onData(chunk: Buffer): void {
    if (this.state === State.Closing) {
      // Lingering: dropped; each read buys another idle period (up to LINGER_MAX_MS).
      this.setTiming(Timing.Linger);
      return;
    }
    if (this.state === State.Switched) return;
    if (this.state === State.Head) this.queued = false;
    if (this.pending === null) {
      this.pending = chunk;
      if (this.state === State.Head) {
        if (this.timing !== Timing.Head) {
          this.requestStart = performance.now();
          this.setTiming(Timing.Head);
        }
      } else if (this.state === State.Answering) {
        // A pipelined request's clock starts with its first byte, as node:http's does, not when its turn comes.
        this.requestStart = performance.now();
      }
    } else this.pending = append(this.pending, chunk);
    this.process();
  }

  /** Parses and feeds what is pending, as far as the state allows. */
  process(): void {
    if (this.parsing) return;
    this.parsing = true;
    try {
      for (;;) {
        if (this.state === State.Head) {
          if (!this.readHead()) break;
        } else if (this.state === State.Body) {
          if (!this.readBody()) break;
        } else {
          // An answer is in progress: pipelined bytes wait, in memory up to a bound, then in the kernel.
          if (this.state === State.Answering && this.pending !== null && this.pending.length > PIPELINE_BUFFER) this.socket.pause();
          break;
        }
      }
    } finally {
      this.parsing = false;
    }
  }

  /** Reads one request head from `pending` and starts it; false when more bytes are needed (or the connection closed). */
  private readHead(): boolean {
    const buf = this.pending;
    if (buf === null) return false;
    const start = skipEmptyLines(buf, 0, buf.length);
    if (start === buf.length) {
      this.pending = null;
      return false;
    }
    const limits = this.server.settings.limits;
    const end = headEnd(buf, start, Math.max(start, this.scanFrom));
    if (end === -1) {
      if (buf.length - start > maxRawHeadBytes(limits)) {
        this.refuse(431, 'HPE_HEADER_OVERFLOW', 'request head larger than the limit');
        return false;
      }
      this.scanFrom = Math.max(start, buf.length - 3);
      return false;
    }
    this.scanFrom = 0;
    const head = parseRequestHead(buf, start, end, limits);
    this.pending = end < buf.length ? buf.subarray(end) : null;
    if (isHeadError(head)) {
      this.refuse(head.status, head.code, head.reason);
      return false;
    }
    this.begin(head);
    return true;
  }

  /** A parsed head: the body framing, the answer, the exchange. */
  private begin(head: RequestHead): void {
    head.socket = this.socket;
    if (head.method === 'CONNECT') {
      if (this.server.settings.connect !== true) {
        this.refuse(501, 'CONNECT', 'CONNECT tunnels are not supported on this listener (see docs/errors.md)');
        return;
      }
      // A CONNECT has no content (RFC 9110 section 9.3.6): the bytes after its head are the tunnel's, not parsed,
      // and its connection closes after any answer but the 200 that opens the tunnel.
      this.keepAliveAsked = false;
      this.state = State.Answering;
      this.setTiming(Timing.Send);
      const tunnel = new Http1Response(this, head, null, true);
      this.response = tunnel;
      this.server.handler.request(head, tunnel);
      return;
    }
    const upgradable = head.upgrade && asksWebSocket(head);
    this.keepAliveAsked = head.keepAlive && !upgradable;
    let body: RequestBody | null = null;
    if (upgradable) {
      // The bytes after a handshake's head belong to the tunnel (a client may send frames early): not parsed.
      this.state = State.Answering;
      this.setTiming(Timing.Send);
    } else if (head.chunked || head.contentLength > 0) {
      // A pipelined request that waited its turn past request_timeout with its body still incomplete never starts.
      const timeout = this.server.settings.requestTimeoutMs;
      if (timeout > 0 && performance.now() >= this.requestStart + timeout && (head.chunked || (this.pending?.length ?? 0) < head.contentLength)) {
        this.refuse(408, 'ERR_HTTP_REQUEST_TIMEOUT', 'request not received in time');
        return;
      }
      body = new RequestBody(this);
      this.body = body;
      this.bodyLeft = head.chunked ? 0 : head.contentLength;
      // Trailers are bounded as a head is (Node counts them against maxHeaderSize too).
      const limits = this.server.settings.limits;
      this.decoder = head.chunked ? new ChunkedDecoder({ maxTrailerBytes: limits.maxHeadBytes, maxTrailers: limits.maxHeaders }) : null;
      this.state = State.Body;
      this.setTiming(Timing.Body);
    } else {
      this.state = State.Answering;
      this.setTiming(Timing.Send);
    }
    const response = new Http1Response(this, head, body, upgradable);
    this.response = response;
    // An expectation other than 100-continue cannot be met (RFC 9110 section 10.1.1), as node:http answers.
    if (head.httpVersionMinor === 1 && !head.expectContinue && head.headers.expect !== undefined) {
      response.fail(417, ['content-length', '0'], '', body !== null);
      return;
    }
    // A pipelined request's body bytes that came while it waited its turn are checked before anything
    // goes upstream: one already known to be malformed is refused (400) without reaching an upstream
    // (node:http parsed queued requests whole too). A request that did not wait starts at its head.
    if (body !== null && this.pending !== null && this.queued) {
      this.readBody();
      if (this.response !== response) return;
    }
    this.server.handler.request(head, response);
  }

  /** Feeds body bytes from `pending`; true once the body is complete. */
  private readBody(): boolean {
    const buf = this.pending;
    if (buf === null) return false;
    const body = this.body!;
    const decoder = this.decoder;
    if (decoder !== null) {
      const used = decoder.feed(buf, 0, buf.length, body.onChunk);
      if (used < 0) {
        // Too many or too large trailers are fields over the limits, as node:http's server answers them (431).
        if (decoder.error === 'HPE_HEADER_OVERFLOW') this.bodyBroken(431, `request trailers over the limits (${decoder.message})`);
        else this.bodyBroken(400, `malformed request body (${decoder.error ?? 'chunked encoding'})`);
        return false;
      }
      this.pending = used < buf.length ? buf.subarray(used) : null;
      if (!decoder.done) return false;
      // Known before the body's end is pushed: the transport reads them when it sees that end.
      if (decoder.trailers !== null && this.response !== null) this.response.requestTrailers = relayableTrailers(decoder.trailers);
    } else {
      const n = Math.min(this.bodyLeft, buf.length);
      this.bodyLeft -= n;
      this.pending = n < buf.length ? buf.subarray(n) : null;
      body.onChunk(n === buf.length ? buf : buf.subarray(0, n));
      if (this.bodyLeft > 0) return false;
    }
    // The body is complete: what follows is the next request, parsed after this answer.
    this.body = null;
    this.decoder = null;
    body.push(null);
    if (this.state === State.Body) {
      this.state = State.Answering;
      this.setTiming(Timing.Send);
      if (this.pending !== null) this.requestStart = performance.now();
      // Paused for a slow body consumer: nothing more goes to it, and reading on notices the client leaving.
      if (this.socket.isPaused()) this.socket.resume();
    }
    return true;
  }

  /** The body cannot complete (malformed, too slow, the client shut its side): the exchange answers, then the connection closes. */
  private bodyBroken(status: number, message: string): void {
    const body = this.body;
    this.body = null;
    this.decoder = null;
    this.pending = null;
    this.keepAliveAsked = false;
    const response = this.response;
    if (response !== null && response.owner !== null && !response.finished) {
      this.state = State.Answering;
      this.setTiming(Timing.Send);
      response.owner.onRequestBroken(status, message);
    } else this.refuse(status, status === 408 ? 'ERR_HTTP_REQUEST_TIMEOUT' : status === 431 ? 'HPE_HEADER_OVERFLOW' : 'HPE_INVALID_CHUNK_SIZE', message);
    body?.destroy();
  }

  /** A request refused before it started: the answer (after nothing, since requests go one at a time), then a graceful close. */
  private refuse(status: number, code: string, reason: string): void {
    this.server.handler.refused(status, code, reason);
    const text = STATUS_CODES[status] ?? 'Bad Request';
    const detail = status === 501 ? reason : '';
    this.response = null;
    this.pending = null;
    if (this.socket.writable) this.socket.write(closingAnswer(status, text, detail), 'latin1');
    this.close();
  }

  /** Resumes reading once the body's consumer wants more. */
  bodyWanted(): void {
    if (this.state === State.Body && this.socket.isPaused()) this.socket.resume();
  }

  responseDone(response: Http1Response, close: boolean, cut: boolean): void {
    if (this.response !== response) return;
    this.response = null;
    if (cut) {
      this.socket.destroy();
      return;
    }
    if (close || !this.keepAlive() || this.state !== State.Answering) {
      this.close();
      return;
    }
    this.state = State.Head;
    if (this.pending === null) this.setTiming(Timing.Idle);
    else {
      this.setTiming(Timing.Head);
      if (this.socket.isPaused()) this.socket.resume();
      this.queued = true;
      // Pipelined requests go on after this call returns (the transport that ended this answer is still on the stack).
      if (!this.parsing) process.nextTick(processLater, this);
    }
  }

  switched(response: Http1Response): Socket {
    const socket = this.socket;
    this.response = null;
    this.state = State.Switched;
    this.timing = Timing.None;
    this.server.connections.delete(this);
    socket.off('data', onSocketData);
    socket.off('end', onSocketEnd);
    socket.off('close', onSocketClose);
    // What the client sent after its handshake (early frames) is the tunnel's first bytes.
    if (this.pending !== null) socket.unshift(this.pending);
    this.pending = null;
    void response;
    return socket;
  }

  /** Graceful close: FIN after what was written, then read and drop until the client closes or lingering ends. */
  close(): void {
    if (this.state === State.Closing || this.state === State.Switched) return;
    this.state = State.Closing;
    this.pending = null;
    const body = this.body;
    this.body = null;
    body?.destroy();
    const socket = this.socket;
    if (socket.destroyed) return;
    // Bounded in every case: lingering ends by its clock, and an answer still leaving must keep moving.
    this.lingerEnd = performance.now() + LINGER_MAX_MS;
    this.setTiming(Timing.Linger);
    if (this.readEnded || !socket.writable) {
      socket.end();
      socket.destroySoon();
      return;
    }
    socket.end();
    if (socket.isPaused()) socket.resume();
  }

  /** A deadline passed. */
  timedOut(now: number): void {
    const socket = this.socket;
    if (this.timing === Timing.Send || ((this.timing === Timing.Idle || this.timing === Timing.Linger) && socket.writableLength > 0)) {
      // An answer in progress, or one still leaving a slow reader: it must move (nginx's send_timeout),
      // and the keep-alive and lingering clocks start only once it has left.
      const sent = socket.bytesWritten - socket.writableLength;
      if (socket.writableLength === 0 || sent > this.sentMark) {
        this.sentMark = sent;
        this.sendProgress = now;
      } else if (now - this.sendProgress >= SEND_TIMEOUT_MS) {
        socket.destroy();
        return;
      }
      if (this.timing === Timing.Send) this.deadline = now + SEND_CHECK_MS;
      else if (socket.writableLength > 0) {
        this.deadline = now + SEND_CHECK_MS;
        this.lingerEnd = Math.max(this.lingerEnd, now + LINGER_IDLE_MS);
      } else this.setTiming(this.timing);
      return;
    }
    switch (this.timing) {
      case Timing.Idle:
        this.timing = Timing.None;
        this.close();
        return;
      case Timing.Head:
        this.timing = Timing.None;
        this.refuse(408, 'ERR_HTTP_REQUEST_TIMEOUT', 'request head not received in time');
        return;
      case Timing.Body:
        this.timing = Timing.None;
        this.bodyBroken(408, 'request not received in time');
        return;
      case Timing.Linger:
        if (now >= this.deadline) this.socket.destroy();
        return;
    }
  }

  /** Closes the connection if no request is in progress (a partial head counts as none). */
  closeIfIdle(): void {
    if (this.state === State.Head && this.response === null) this.close();
  }

  onEnd(): void {
    this.readEnded = true;
    switch (this.state) {
      case State.Closing:
        // Once the answer has left; until then the lingering clock bounds it.
        if (this.socket.writableLength === 0) this.socket.destroy();
        return;
      case State.Head:
        // A partial head cut by the client's FIN is malformed (llhttp: HPE_INVALID_EOF_STATE); none at all is a plain close.
        if (this.pending !== null && skipEmptyLines(this.pending, 0, this.pending.length) < this.pending.length) this.refuse(400, 'HPE_INVALID_EOF_STATE', 'the client closed in the middle of a request head');
        else this.close();
        return;
      default:
        // A FIN while a request is in progress is the client giving up (499), as node:http and nginx
        // take it: the upstream request is cancelled rather than finished for nobody.
        this.socket.destroy();
        return;
    }
  }

  onClose(): void {
    this.server.connections.delete(this);
    this.timing = Timing.None;
    this.pending = null;
    const response = this.response;
    this.response = null;
    const body = this.body;
    this.body = null;
    if (body !== null && !body.destroyed) {
      // Heard by the exchange when it streams the body; without a listener an error event would be uncaught.
      if (body.listenerCount('error') > 0) body.destroy(Object.assign(new Error('aborted'), { code: 'ECONNRESET' }));
      else body.destroy();
    }
    if (response !== null && !response.finished) response.owner?.onClientGone();
  }
}

function processLater(connection: Http1Connection): void {
  connection.process();
}


function onSocketData(this: TrackedSocket, chunk: Buffer): void {
  this[kConnection]?.onData(chunk);
}

function onSocketEnd(this: TrackedSocket): void {
  this[kConnection]?.onEnd();
}

function onSocketError(this: Socket): void {
  // A reset or a write to a closed peer: the 'close' that follows ends whatever was in progress.
  this.destroy();
}

function onSocketClose(this: TrackedSocket): void {
  this[kConnection]?.onClose();
}

/** The request body as the exchange reads it: bytes pushed by the connection, reading paused while the stream is full. */
class RequestBody extends Readable {
  private readonly connection: Http1Connection;
  /** Set once the exchange stopped reading the body (unpiped it): the rest is read and dropped, never paused on. */
  private unwanted = false;
  /** Pushes one chunk; a full stream pauses the socket until `_read`. */
  readonly onChunk = (chunk: Buffer): void => {
    if (chunk.length === 0 || this.unwanted) return;
    // A small view would keep its whole read buffer alive while it waits (chunk extensions can make many): copied.
    if (chunk.length < 1024 && chunk.buffer.byteLength > 8 * chunk.length) chunk = Buffer.from(chunk);
    if (!this.push(chunk)) this.connection.socket.pause();
  };

  constructor(connection: Http1Connection) {
    super();
    this.connection = connection;
  }

  /**
   * The exchange stopped reading the body (an upstream that answered before the upload ended, a
   * body over the limit): a client that writes its whole body before it reads must not block on a
   * paused socket while the answer waits behind it.
   */
  override unpipe(destination?: NodeJS.WritableStream): this {
    super.unpipe(destination);
    this.unwanted = true;
    this.connection.bodyWanted();
    return this;
  }

  override _read(): void {
    this.connection.bodyWanted();
  }
}
