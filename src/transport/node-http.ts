/**
 * The node:http client toward one upstream: one keep-alive `http.Agent`. Kept beside http1
 * (the default) and undici so the benchmark can compare them on each machine; it also carries
 * what undici cannot: `Expect: 100-continue`, HEAD without closing the
 * socket, and protocol upgrades (WebSocket), whose socket leaves the agent after the 101.
 * The request body is piped only once the socket is connected, so a connect failure leaves it
 * unread and another upstream can be tried. An `https://` upstream gets TLS sockets from
 * upstream-tls.ts (SNI, verification, ALPN http/1.1, the last session resumed); for it
 * "connected" means the handshake is done, and the connect timeout covers both.
 */
import type * as http from 'node:http';
import { http as nodeHttp } from '../node-builtins.ts';
import net, { type Socket } from 'node:net';
import { heldWriteError, keepReadingAfterWriteError } from './upstream-socket.ts';
import { duringHandshake, UpstreamTlsConnector } from './upstream-tls.ts';
import type { Upstream } from '../upstream/upstream.ts';
import { effectiveIdle, socketReusableAfter, type ClientSettings, type UpstreamAttempt, type UpstreamClient } from './transport.ts';
import { writableField } from '../http1/chunked.ts';

function timeoutError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

/** Sockets that keep reading after a failed write: an answer sent before the upload ended is not lost. */
function createConnection(options: net.NetConnectOpts, callback?: () => void): Socket {
  return keepReadingAfterWriteError(net.createConnection(options, callback));
}

/** Set on a TLS socket once its handshake is done. */
const kSecure = Symbol('fulcrum.node-http.secure');
type TlsSocket = Socket & { [kSecure]?: true };

function onSecureConnect(this: TlsSocket): void {
  this[kSecure] = true;
}

/** True when `socket` can carry the request: connected, and for TLS with the handshake done. */
function ready(socket: TlsSocket, secure: boolean): boolean {
  return secure ? socket[kSecure] === true : !socket.connecting;
}

/**
 * The request head's fields as node:http is to write them, and whether the body goes chunked.
 * node:http frames a body of unknown length as chunked only for methods it expects one with
 * (not GET, DELETE, OPTIONS, ...): any other would go unframed, its bytes read by the upstream
 * as the next request. So the framing is always said: chunked for a streamed body without a
 * Content-Length; a kept body (a retry) with its length, or chunked when the client's trailers go
 * with it (as they went with the first attempt). `Connection: te` goes beside TE (RFC 9110
 * section 10.1.4). The attempt's own list is copied, never changed: a retry builds from it again.
 */
function requestFraming(attempt: UpstreamAttempt): { headers: string[]; chunked: boolean } {
  const original = attempt.headers;
  const body = attempt.body;
  let declared = false;
  let te = false;
  for (let i = 0; i < original.length; i += 2) {
    const name = original[i];
    if (name.length === 14 && name.toLowerCase() === 'content-length') declared = true;
    else if (name.length === 2 && name.toLowerCase() === 'te') te = true;
  }
  if (!te && (body === null || declared)) return { headers: original, chunked: false };
  const headers = original.slice();
  if (te) headers.push('connection', 'te');
  let chunked = false;
  if (body !== null && !declared) {
    const trailers = attempt.requestTrailers;
    if (!Buffer.isBuffer(body) || (trailers !== null && trailers.length > 0)) {
      headers.push('transfer-encoding', 'chunked');
      chunked = true;
    } else headers.push('content-length', String(body.length));
  }
  return { headers, chunked };
}

/** The client's trailers into the last chunk; a field node:http would refuse is left out (addTrailers throws at the first bad one). */
function addTrailers(creq: http.ClientRequest, trailers: readonly string[] | null): void {
  if (trailers === null) return;
  const list: [string, string][] = [];
  for (let i = 0; i + 1 < trailers.length; i += 2) if (writableField(trailers[i], trailers[i + 1])) list.push([trailers[i], trailers[i + 1]]);
  if (list.length > 0) creq.addTrailers(list);
}

/** Keep-alive sockets toward one upstream over node:http. */
export class NodeHttpClient implements UpstreamClient {
  private readonly upstream: Upstream;
  private readonly settings: ClientSettings;
  private readonly agent: http.Agent;
  /** TLS sockets for an https upstream (null for http). */
  readonly tls: UpstreamTlsConnector | null;
  /** Makes each socket: plain, or TLS with the last session. */
  private readonly connect: (options: net.NetConnectOpts, callback?: () => void) => Socket;
  private closed = false;

  constructor(upstream: Upstream, settings: ClientSettings) {
    this.upstream = upstream;
    this.settings = settings;
    const { keepalive } = settings;
    this.agent = new nodeHttp.Agent({
      keepAlive: true,
      // Most recently used first, so surplus idle sockets age out instead of being kept warm.
      scheduling: 'lifo',
      maxSockets: settings.maxSockets ?? Infinity,
      // Idle sockets are closed this long after last use; an upstream's Keep-Alive hint (less the margin) can shorten it.
      timeout: effectiveIdle(keepalive.idle_timeout, keepalive.safety_margin),
      agentKeepAliveTimeoutBuffer: keepalive.safety_margin,
    } as http.AgentOptions);
    const connector = (this.tls = settings.tls !== null ? new UpstreamTlsConnector(upstream, settings.tls) : null);
    this.connect =
      connector === null
        ? createConnection
        : () => {
            const socket = connector.connect();
            socket.once('secureConnect', onSecureConnect);
            return keepReadingAfterWriteError(socket);
          };
    this.agent.createConnection = this.connect as unknown as typeof this.agent.createConnection;
  }

  forward(attempt: UpstreamAttempt): void {
    const { timeouts } = this.settings;
    const upstream = this.upstream;
    const secure = this.tls !== null;
    /** The request is on a ready socket (for TLS: handshake done); before that a failure is the connect's or the handshake's. */
    let connected = false;
    let failed = false;
    let connectTimer: NodeJS.Timeout | null = null;
    let ires: http.IncomingMessage | null = null;
    const framed = requestFraming(attempt);
    const fail = (err: Error): void => {
      if (failed) return;
      if (secure && !connected) duringHandshake(err);
      // A response read to its end stands (a 204 followed by stray bytes, a write that failed after the
      // answer): Node drops the socket, 'end' still comes. Destroying the request now would discard it.
      if (ires !== null && ires.complete) return;
      failed = true;
      if (connectTimer) clearTimeout(connectTimer);
      creq.destroy();
      attempt.error(err);
    };
    const creq = nodeHttp.request({
      // A closed client never opens a pooled socket again: a straggler (a retry on a replaced pool) gets a one-off
      // connection (no agent at all: with `agent: false` node:http would ignore createConnection).
      ...(this.closed ? { createConnection: this.connect as unknown as http.RequestOptions['createConnection'] } : { agent: this.agent }),
      host: upstream.hostname,
      port: upstream.port,
      method: attempt.method,
      path: attempt.path,
      headers: framed.headers as unknown as http.OutgoingHttpHeaders,
      setHost: false,
    });
    // Cancelled by the proxy: the exchange is over, whatever the upstream still sends (a complete
    // answer waiting for a slow client too): the socket goes, it is never handed back half-read.
    attempt.onCancel((reason) => {
      if (failed) return;
      if (ires !== null && ires.complete) {
        failed = true;
        creq.destroy();
        return;
      }
      fail(reason);
    });
    creq.on('error', fail);
    // Interim answers (100 Continue, 103 Early Hints, ...): relayed ahead of the final one.
    creq.on('information', (info: http.InformationEvent) => attempt.informational(info.statusCode, info.statusMessage, info.rawHeaders));
    // A 101: the tunnel's, if the client asked for it; else Node has nothing to hand it to.
    creq.on('upgrade', (response: http.IncomingMessage, socket: Socket, head: Buffer) => {
      if (!attempt.upgrade || failed) {
        socket.destroy();
        fail(Object.assign(new Error('upstream switched protocols without being asked'), { code: 'UND_ERR_INFO' }));
        return;
      }
      failed = true;
      if (connectTimer) clearTimeout(connectTimer);
      attempt.switched(response.statusCode!, response.statusMessage ?? '', response.rawHeaders, socket, head);
    });
    // Whatever else ends the exchange without an answer must not leave the request hanging.
    creq.on('close', () => {
      if (!failed && ires === null) fail(Object.assign(new Error('upstream closed the connection'), { code: 'ECONNRESET' }));
    });
    // One socket timeout, re-armed per phase: response headers first, then body idleness.
    let waitingForHeaders = true;
    creq.on('timeout', () =>
      fail(waitingForHeaders ? timeoutError('UND_ERR_HEADERS_TIMEOUT', 'headers timeout') : timeoutError('UND_ERR_BODY_TIMEOUT', 'body timeout')),
    );
    const startBody = (): void => {
      connected = true;
      attempt.sending(creq.reusedSocket);
      if (connectTimer) clearTimeout(connectTimer);
      creq.setTimeout(timeouts.response_headers);
      const body = attempt.body;
      if (body === null) creq.end();
      else if (Buffer.isBuffer(body)) {
        if (framed.chunked) addTrailers(creq, attempt.requestTrailers);
        creq.end(body);
      } else {
        // Ended here rather than by pipe: the client's trailers are known once its body ended, and go in the last chunk.
        body.pipe(creq, { end: false });
        body.once('end', () => {
          if (failed || creq.destroyed) return;
          if (framed.chunked) addTrailers(creq, attempt.requestTrailers);
          creq.end();
        });
      }
    };
    creq.on('socket', (socket: Socket) => {
      if (!attempt.live) return fail(new Error('request already finished'));
      if (ready(socket, secure)) return startBody();
      connectTimer = setTimeout(() => {
        const handshaking = secure && !socket.connecting;
        fail(timeoutError('UND_ERR_CONNECT_TIMEOUT', `connect timeout after ${timeouts.connect}ms${handshaking ? ' (connected, TLS handshake not finished)' : ''}`));
      }, timeouts.connect);
      socket.once(secure ? 'secureConnect' : 'connect', startBody);
    });
    creq.on('response', (response: http.IncomingMessage) => {
      ires = response;
      if (!attempt.live) return fail(new Error('request already finished'));
      if (response.statusCode! < 200) {
        // A 101 without Upgrade comes here, not as 'upgrade': the connection switched to something else, never reuse it.
        creq.shouldKeepAlive = false;
        ires = null;
        creq.socket?.destroy();
        return fail(Object.assign(new Error(`upstream answered ${response.statusCode} without switching protocols`), { code: 'UND_ERR_INFO' }));
      }
      waitingForHeaders = false;
      creq.setTimeout(timeouts.idle_body);
      // Node then closes the socket after this answer instead of handing it back to the agent.
      if (!socketReusableAfter(response.statusCode!, response.rawHeaders)) creq.shouldKeepAlive = false;
      if (!attempt.response(response.statusCode!, response.rawHeaders, response.statusMessage)) {
        ires = null;
        return fail(new Error('response not writable'));
      }
      // While the client is slow the upstream is not idle: the body timer stops until drain.
      const resume = (): void => {
        creq.setTimeout(timeouts.idle_body);
        response.resume();
      };
      response.on('data', (chunk: Buffer) => {
        if (!attempt.data(chunk) && attempt.live) {
          creq.setTimeout(0);
          response.pause();
          attempt.whenWritable(resume);
        }
      });
      response.on('end', () => {
        if (failed || !attempt.live) return;
        if (!response.complete) return fail(Object.assign(new Error('upstream closed mid-body'), { code: 'ECONNRESET' }));
        failed = true;
        attempt.end(response.rawTrailers);
        // The upload was cut short (the upstream answered first): this socket is mid-request, never reused;
        // nor one whose writes failed (the upstream reset it, its answer was still read).
        if (!creq.writableFinished) creq.destroy();
        else if (heldWriteError(creq.socket) !== undefined) creq.socket?.destroy();
      });
      response.on('aborted', () => fail(Object.assign(new Error('upstream closed mid-body'), { code: 'ECONNRESET' })));
      response.on('error', fail);
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Idle sockets go now; busy ones when their request ends (requests queued behind max_sockets
    // still get them: with keepAlive off the agent itself closes a socket nobody waits for).
    (this.agent as http.Agent & { keepAlive: boolean }).keepAlive = false;
    for (const list of Object.values(this.agent.freeSockets)) for (const socket of list ?? []) socket.destroy();
  }
}
