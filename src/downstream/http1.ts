/**
 * The HTTP/1.1 downstream: answers one request on a node:http `ServerResponse` (the listener's
 * parser made both). Everything HTTP/1-specific about answering lives here: interim answers
 * and who may get them, reason phrases, trailers only on chunked answers, `Connection: close`,
 * and the switch to a byte pipe after a relayed `101`.
 */
import { connectionTls, type ConnectionTls } from '../tls/connection-tls.ts';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex, Readable } from 'node:stream';
import type { Socket } from 'node:net';
import type { Downstream, DownstreamOwner } from '../core/downstream.ts';
import { forbiddenTrailer, hopByHop } from '../proxy/headers.ts';
import { writableField } from '../http1/chunked.ts';

const kDownstream = Symbol('fulcrum.downstream');
/** Client sockets that switched protocols (tunnels), so shutdown can tell them from HTTP connections. */
const switchedSockets = new WeakSet<object>();
type Tracked = ServerResponse & { [kDownstream]?: Http1Downstream };
/** Node internals used for interim answers (as `writeContinue` and `writeEarlyHints` do). */
type Internals = ServerResponse & { _writeRaw?: (data: string, encoding: BufferEncoding) => boolean; _sent100?: boolean };

/** One HTTP/1.x request's answering side. */
export class Http1Downstream implements Downstream {
  owner: DownstreamOwner | null = null;
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly expectsContinue: boolean;
  /** True for a request that came through the server's upgrade path: its connection may switch protocols. */
  private readonly upgradable: boolean;
  /** The client socket once the connection switched protocols (no HTTP exchange any more), else null. */
  private switchedSocket: Duplex | null = null;
  /** `requestTrailers` once worked out ([] when none was left). */
  private trailers: string[] | null = null;

  /**
   * `expectsContinue`: the client sent `Expect: 100-continue`; `upgradable`: the request came
   * through the listener's upgrade path (its socket is Fulcrum's, not the parser's, after the head).
   */
  constructor(req: IncomingMessage, res: ServerResponse, expectsContinue: boolean, upgradable = false) {
    this.req = req;
    this.res = res;
    this.expectsContinue = expectsContinue;
    this.upgradable = upgradable;
    (res as Tracked)[kDownstream] = this;
    res.on('close', onResponseClose);
    // Node's server closes after an answer it made itself; this one (built for a handshake) closes here.
    if (upgradable) res.once('finish', closeAfterAnswer);
  }

  get remoteAddress(): string | undefined {
    return this.req.socket.remoteAddress;
  }

  get requestBody(): Readable | null {
    const req = this.req;
    return req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0') ? req : null;
  }

  readonly protocol = 'h1';

  /** The request's chunked trailers, less the fields that may not come from trailers (null: none left). */
  get requestTrailers(): readonly string[] | null {
    const raw = this.req.rawTrailers;
    if (raw.length === 0) return null;
    return (this.trailers ??= relayableTrailers(raw) ?? []).length > 0 ? this.trailers : null;
  }

  get connected(): boolean {
    return !this.req.socket.destroyed;
  }

  get tls(): ConnectionTls | null {
    return connectionTls(this.req.socket);
  }

  get socket(): Socket | null {
    return this.req.socket;
  }

  /** True for a client socket that became a tunnel. */
  static isTunnel(socket: object): boolean {
    return switchedSockets.has(socket);
  }

  /** The downstream answering `res`, if it is one of these. */
  static of(res: ServerResponse): Http1Downstream | undefined {
    return (res as Tracked)[kDownstream];
  }

  /** True once the connection switched protocols. */
  get switched(): boolean {
    return this.switchedSocket !== null;
  }

  get headSent(): boolean {
    return this.switched || this.res.headersSent;
  }

  /** Never to an HTTP/1.0 client, 100 only to a client that asked for it and only once (RFC 9110 section 15.2). */
  informational(status: number, reason: string, rawHeaders: readonly (Buffer | string)[]): void {
    const res = this.res as Internals;
    if (res.headersSent || this.switched || this.req.httpVersionMinor === 0 || status === 101) return;
    if (status === 100) {
      if (!this.expectsContinue || res._sent100 === true) return;
      res.writeContinue();
      return;
    }
    if (typeof res._writeRaw !== 'function') return;
    res._writeRaw(headBytes(status, reason, rawHeaders, true), 'latin1');
  }

  head(status: number, reason: string | undefined, headers: string[]): void {
    const res = this.res;
    try {
      // The reason phrase as sent (RFC 9112 section 4: HTAB, SP, VCHAR, obs-text), else the standard one.
      if (reason !== undefined && validReason(reason)) res.writeHead(status, reason, headers);
      else res.writeHead(status, headers);
    } catch (err) {
      // writeHead keeps what it refused: the error answer must not trip over it again.
      res.statusMessage = '';
      throw err;
    }
  }

  body(chunk: Buffer): boolean {
    return this.res.write(chunk);
  }

  whenWritable(resume: () => void): void {
    this.res.once('drain', resume);
  }

  /** Trailers go only on a chunked answer, less forbidden and unwritable fields (see Http1Response.end for why a Content-Length answer loses them). */
  end(trailers: readonly (Buffer | string)[] | null): void {
    const res = this.res;
    const relayed = trailers !== null && trailers.length > 0 && res.chunkedEncoding ? relayableTrailers(trailers) : null;
    if (relayed !== null) {
      const list: [string, string][] = [];
      // Checked as node:http checks them (addTrailers throws at the first bad one, after keeping those before it).
      for (let i = 0; i < relayed.length; i += 2) if (writableField(relayed[i], relayed[i + 1])) list.push([relayed[i], relayed[i + 1]]);
      try {
        res.addTrailers(list);
      } catch {
        // Trailers are advisory; a bad one is dropped rather than failing a complete response.
      }
    }
    res.end();
  }

  fail(status: number, headers: string[], body: string, close: boolean): void {
    const res = this.res;
    if (this.headSent) return this.cut();
    if (close) headers.push('connection', 'close');
    try {
      res.statusMessage = '';
      res.writeHead(status, headers);
      res.end(this.req.method === 'HEAD' ? undefined : body);
    } catch {
      // Never a crash for an answer that cannot be written: the connection is cut instead.
      res.destroy();
    }
  }

  /** Never lets a cut answer look complete: the client socket goes mid-body (after a 101: the tunnel's socket). */
  cut(): void {
    if (this.switchedSocket !== null) this.switchedSocket.destroy();
    else this.res.destroy();
  }

  /** Writes the `101` head on the raw socket and hands the socket over; null when this request cannot switch. */
  switchProtocols(status: number, reason: string, headers: string[]): Duplex | null {
    const res = this.res;
    const socket = res.socket;
    if (!this.upgradable || this.switched || res.headersSent || socket === null || socket.destroyed) return null;
    this.switchedSocket = socket;
    switchedSockets.add(socket);
    res.detachSocket(socket);
    socket.write(headBytes(status, validReason(reason) && reason !== '' ? reason : 'Switching Protocols', headers, false), 'latin1');
    return socket;
  }
}

function onResponseClose(this: Tracked): void {
  const downstream = this[kDownstream];
  if (downstream === undefined || downstream.switched || this.writableFinished) return;
  downstream.owner?.onClientGone();
}

function closeAfterAnswer(this: ServerResponse): void {
  const socket = this.socket;
  if (socket === null) return;
  this.detachSocket(socket);
  // For a tracked client socket this is the listener's lingering close (src/listeners/client-connection.ts).
  socket.destroySoon();
}

/** A status line and headers as raw text; `filter` leaves out hop-by-hop fields and Content-Length (a relayed 1xx). */
export function headBytes(status: number, reason: string, raw: readonly (Buffer | string)[], filter: boolean): string {
  let head = `HTTP/1.1 ${status} ${reason}\r\n`;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i].toString('latin1');
    if (filter) {
      const lower = name.toLowerCase();
      if (hopByHop.has(lower) || lower === 'content-length') continue;
    }
    head += `${name}: ${raw[i + 1].toString('latin1')}\r\n`;
  }
  return head + '\r\n';
}

/** True for a reason phrase Node will write as is: HTAB, SP, VCHAR and obs-text (RFC 9112 section 4). */
export function validReason(reason: string): boolean {
  for (let i = 0; i < reason.length; i++) {
    const c = reason.charCodeAt(i);
    if (c > 0xff || c === 0x7f || (c < 0x20 && c !== 0x09)) return false;
  }
  return true;
}

/**
 * Trailer fields as strings, flat `[name, value, ...]`, without those that must not be taken from
 * trailers (`forbiddenTrailer`, src/proxy/headers.ts: framing, routing, authentication, ...), or
 * null when none is left. Both directions of both HTTP/1.1 downstreams go through it: the
 * client's request trailers as they come in, the upstream's response trailers as they go out.
 */
export function relayableTrailers(trailers: readonly (Buffer | string)[]): string[] | null {
  let out: string[] | null = null;
  for (let i = 0; i + 1 < trailers.length; i += 2) {
    const name = trailers[i].toString('latin1');
    if (forbiddenTrailer(name.toLowerCase())) continue;
    (out ??= []).push(name, trailers[i + 1].toString('latin1'));
  }
  return out;
}
