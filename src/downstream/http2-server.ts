/**
 * HTTP/2 from clients: a node:http2 server that never binds (the listener's acceptor admits
 * sockets, the TLS termination hands over those whose ALPN chose `h2`, and h2c connections are
 * recognised by their preface). Each stream becomes an `Http2Downstream` exchange.
 *
 * Protection (RFC 9113 section 10.5, and the 2023-2024 HTTP/2 attacks):
 * - concurrent streams, header list size and pairs are SETTINGS and nghttp2 limits;
 * - rapid reset (CVE-2023-44487): streams the client resets before their answer are counted per
 *   session; beyond `max_resets` within `reset_window` the session gets GOAWAY ENHANCE_YOUR_CALM
 *   and is closed (HAProxy's glitch counting, nginx's limit on streams per session). nghttp2's own
 *   reset rate limit (1.57+) stays on underneath;
 * - PING and SETTINGS floods: counted the same way (`max_control_frames`);
 * - CONTINUATION floods (CVE-2024-27316 and kin) are refused by nghttp2 1.61+ itself (bounded
 *   header blocks); the session error is counted as `protocol_error`;
 * - a client that never reads gets flow control: a stream's writes stop at its window and its
 *   write buffer, and backpressure reaches the upstream read.
 */
import http2 from 'node:http2';
import type { Socket } from 'node:net';
import type { ServerHttp2Session, ServerHttp2Stream } from 'node:http2';
import { Http2Downstream, Http2RequestHead, type StreamWatcher } from './http2.ts';
import type { Logger } from '../observe/logger.ts';
import { http2ErrorLabel } from '../http2/error-codes.ts';

const { NGHTTP2_ENHANCE_YOUR_CALM, NGHTTP2_NO_ERROR } = http2.constants;

/** The limits of an HTTP/2 listener (from `listeners[].http2` and `listeners[].limits`). */
export interface Http2ServerSettings {
  maxConcurrentStreams: number;
  /** Bytes a client may send on a stream ahead of Fulcrum reading it. */
  initialWindowSize: number;
  /** SETTINGS_MAX_HEADER_LIST_SIZE, bytes (limits.max_header_bytes). */
  maxHeaderListSize: number;
  /** Header fields per request (limits.max_headers). */
  maxHeaders: number;
  maxResets: number;
  resetWindowMs: number;
  maxControlFrames: number;
  /** A session with no open stream for this long is closed with GOAWAY (keepalive_timeout), ms. */
  idleTimeoutMs: number;
  /** A request body must arrive whole within this (limits.request_timeout; 0: no limit), ms. */
  requestTimeoutMs: number;
}

/** What the listener does with a stream's request. */
export interface Http2Handler {
  request(head: Http2RequestHead, downstream: Http2Downstream): void;
}

/** Counts of one listener's HTTP/2 side, read by metrics and /status. */
export class Http2Stats {
  sessions = 0;
  streams = 0;
  /** GOAWAY frames sent to clients, by error code name. */
  readonly goawaySent = new Map<string, number>();
  /** GOAWAY frames received from clients, by error code name. */
  readonly goawayReceived = new Map<string, number>();
  /** Abuse seen, by kind: rapid_reset, control_flood, protocol_error, refused_stream. */
  readonly glitches = new Map<string, number>();
}

function bump(map: Map<string, number>, key: string): void {
  map.set(key, (map.get(key) ?? 0) + 1);
}

/** One client session's bookkeeping: open streams, idle timer, abuse window. */
class SessionGuard implements StreamWatcher {
  readonly session: ServerHttp2Session;
  private readonly front: Http2Front;
  open = 0;
  private windowStart = performance.now();
  private resets = 0;
  private control = 0;
  private idle: NodeJS.Timeout | null = null;
  /** Set once the session was told to go (GOAWAY sent): counted once. */
  closing = false;

  constructor(front: Http2Front, session: ServerHttp2Session) {
    this.front = front;
    this.session = session;
    this.armIdle();
  }

  streamOpened(): void {
    this.open++;
    if (this.idle !== null) {
      clearTimeout(this.idle);
      this.idle = null;
    }
  }

  streamClosed(): void {
    this.open--;
    this.front.stats.streams--;
    if (this.open === 0) this.armIdle();
  }

  streamAborted(): void {
    this.tick();
    if (++this.resets > this.front.settings.maxResets) this.front.calm(this, 'rapid_reset');
  }

  controlFrame(): void {
    this.tick();
    if (++this.control > this.front.settings.maxControlFrames) this.front.calm(this, 'control_flood');
  }

  /** Starts a new abuse window once the current one is over. */
  private tick(): void {
    const now = performance.now();
    if (now - this.windowStart > this.front.settings.resetWindowMs) {
      this.windowStart = now;
      this.resets = 0;
      this.control = 0;
    }
  }

  private armIdle(): void {
    const ms = this.front.settings.idleTimeoutMs;
    if (ms > 0 && !this.closing) this.idle = setTimeout(idleSession, ms, this.front, this);
  }

  stop(): void {
    if (this.idle !== null) clearTimeout(this.idle);
    this.idle = null;
  }
}

function idleSession(front: Http2Front, guard: SessionGuard): void {
  if (guard.open === 0) front.goaway(guard);
}

/** The HTTP/2 side of one listener. */
export class Http2Front {
  settings: Http2ServerSettings;
  readonly stats = new Http2Stats();
  private readonly server: http2.Http2Server;
  private readonly guards = new Map<ServerHttp2Session, SessionGuard>();
  private readonly logger: Logger;
  private readonly listener: string;
  private draining = false;

  constructor(settings: Http2ServerSettings, handler: Http2Handler, logger: Logger, listener: string) {
    this.settings = settings;
    this.logger = logger;
    this.listener = listener;
    this.server = http2.createServer({
      settings: serverSettings(settings),
      maxHeaderListPairs: settings.maxHeaders + 8,
      // Node's defaults, named: a session whose buffered frames pass 10 MB refuses new streams.
      maxSessionMemory: 10,
      maxOutstandingPings: 10,
      maxSettings: 32,
      // Frames nghttp2 finds invalid and streams it had to refuse (beyond max_concurrent_streams): past these the session is closed.
      maxSessionInvalidFrames: 100,
      maxSessionRejectedStreams: 100,
    });
    this.server.on('session', (session: ServerHttp2Session) => this.onSession(session));
    this.server.on('stream', (stream: ServerHttp2Stream, headers: http2.IncomingHttpHeaders, _flags: number, rawHeaders: string[]) => {
      // A session destroyed in the read that opened this stream (too many invalid frames or refused
      // streams) destroyed it with the session's error before this event: unheard, that error would end the process.
      stream.on('error', ignoreError);
      const guard = this.guards.get(stream.session as ServerHttp2Session);
      if (guard === undefined) {
        stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
        return;
      }
      guard.streamOpened();
      this.stats.streams++;
      try {
        const head = new Http2RequestHead(headers, rawHeaders);
        const downstream = new Http2Downstream(stream, head, guard, this.settings.requestTimeoutMs);
        if (head.method === 'CONNECT') {
          // Extended CONNECT is not announced (SETTINGS_ENABLE_CONNECT_PROTOCOL 0): a plain CONNECT is a forward-proxy tunnel, not served here.
          downstream.fail(501, ['content-type', 'text/plain'], 'CONNECT tunnels are not supported on this listener\n', false);
          return;
        }
        handler.request(head, downstream);
      } catch (err) {
        this.logger.error({ listener, err }, `HTTP/2 stream failed: ${(err as Error).message}`);
        if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
      }
    });
    // A session error (a protocol violation nghttp2 caught, a reset socket) ends that session only.
    this.server.on('sessionError', (err: NodeJS.ErrnoException) => {
      if (err instanceof CalmError) return;
      this.logger.debug({ listener, err: err.message, code: err.code }, 'HTTP/2 session error');
    });
  }

  /** Serves HTTP/2 on an admitted socket (a TLS socket whose ALPN chose h2, or an h2c one). */
  accept(socket: Socket): void {
    if (this.draining) {
      socket.destroy();
      return;
    }
    // The acceptor's sockets are half-open for the HTTP/1.1 server; HTTP/2 has no use for a half-closed
    // connection, and node:http2 ends a session only when its socket closes: a client's FIN closes it.
    socket.allowHalfOpen = false;
    this.server.emit('connection', socket);
  }

  /** New limits apply to sessions that start after; window and abuse limits also to open ones. */
  configure(settings: Http2ServerSettings): void {
    this.settings = settings;
    this.server.updateSettings(serverSettings(settings));
  }

  private onSession(session: ServerHttp2Session): void {
    const guard = new SessionGuard(this, session);
    this.guards.set(session, guard);
    this.stats.sessions++;
    // A stream reset in the same read as its HEADERS (the rapid-reset pattern) is aborted before its
    // 'stream' event, so Http2Downstream never hears 'aborted': counted here.
    session.on('stream', (stream: ServerHttp2Stream) => {
      if (stream.aborted && !guard.closing && !session.destroyed) guard.streamAborted();
    });
    session.on('ping', () => guard.controlFrame());
    session.on('remoteSettings', () => guard.controlFrame());
    session.on('goaway', (code: number) => bump(this.stats.goawayReceived, http2ErrorLabel(code)));
    session.on('frameError', () => bump(this.stats.glitches, 'frame_error'));
    session.on('error', (err: NodeJS.ErrnoException) => {
      // calm()'s own ending comes back here: counted there already.
      if (err instanceof CalmError) return;
      bump(this.stats.glitches, 'protocol_error');
      this.logger.debug({ listener: this.listener, err: err.message, code: err.code }, 'HTTP/2 session closed on an error');
    });
    session.once('close', () => {
      guard.stop();
      this.guards.delete(session);
      this.stats.sessions--;
    });
    if (this.draining) this.goaway(guard);
  }

  /**
   * Graceful GOAWAY (NO_ERROR) naming the last stream taken: streams in flight finish, the session
   * closes after them; a stream the client opened before it read the GOAWAY is above that id, so
   * the client knows to send it again. (RFC 9113 section 6.8's first GOAWAY with 2^31-1 needs
   * nghttp2_submit_shutdown_notice, which node:http2 does not expose: a plain GOAWAY with that id
   * would make nghttp2 drop such streams while the client believes them taken.)
   */
  goaway(guard: SessionGuard): void {
    if (guard.closing || guard.session.destroyed) return;
    guard.closing = true;
    guard.stop();
    bump(this.stats.goawaySent, http2ErrorLabel(NGHTTP2_NO_ERROR));
    guard.session.close();
  }

  /** GOAWAY ENHANCE_YOUR_CALM and the session closed now: the client went past an abuse limit. */
  calm(guard: SessionGuard, kind: string): void {
    if (guard.closing && guard.session.destroyed) return;
    bump(this.stats.glitches, kind);
    if (guard.session.destroyed) return;
    guard.closing = true;
    guard.stop();
    bump(this.stats.goawaySent, http2ErrorLabel(NGHTTP2_ENHANCE_YOUR_CALM));
    this.logger.warn({ listener: this.listener, kind, peer: guard.session.socket?.remoteAddress }, `HTTP/2 session closed: ${kind.replace('_', ' ')} (GOAWAY ENHANCE_YOUR_CALM)`);
    // An error must go with the code: destroy(undefined, code) takes the default NO_ERROR for `undefined` and sends that.
    guard.session.destroy(new CalmError(`HTTP/2 ${kind}`), NGHTTP2_ENHANCE_YOUR_CALM);
  }

  /** Shutdown: every session gets GOAWAY, streams in flight finish; new sockets are refused. */
  drain(): void {
    this.draining = true;
    for (const guard of this.guards.values()) this.goaway(guard);
  }

  /** Sessions open now. */
  get sessions(): number {
    return this.guards.size;
  }

  /** The grace period is over: every session is closed now. */
  closeAll(): void {
    for (const guard of this.guards.values()) guard.session.destroy();
  }
}

function ignoreError(): void {}

/** What calm() ends a session with; its code (ENHANCE_YOUR_CALM) goes out in the GOAWAY. */
class CalmError extends Error {}

function serverSettings(s: Http2ServerSettings): http2.Settings {
  return {
    maxConcurrentStreams: s.maxConcurrentStreams,
    initialWindowSize: s.initialWindowSize,
    maxHeaderListSize: s.maxHeaderListSize,
    enablePush: false,
    enableConnectProtocol: false,
  };
}
