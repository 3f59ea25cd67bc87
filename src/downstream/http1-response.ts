/**
 * The answering side of one request on Fulcrum's own HTTP/1.1 connection
 * (src/downstream/http1-connection.ts): the `Downstream` the exchange core writes into.
 *
 * Writes are built by hand as latin1 text and go out in as few socket writes as possible: what
 * is written in one tick (the head, the first body bytes, the end, as a transport delivers them
 * from one read) is gathered and leaves in one write at the end of the tick or at `end`, so a
 * small response is one write (nginx's way; node:http corks its first chunk the same way), and
 * a cut in that tick sends nothing of it. Framing follows RFC 9112 section 6: the upstream's Content-Length when it gave
 * one, else chunked for HTTP/1.1 clients and close-delimited for HTTP/1.0; HEAD, 1xx, 204 and 304
 * answers carry no body. Header names and values are checked as node:http checks them (a refused
 * one throws with `code` ERR_INVALID_HTTP_TOKEN / ERR_INVALID_CHAR and nothing is written).
 */
import { connectionTls, type ConnectionTls } from '../tls/connection-tls.ts';
import { STATUS_CODES } from '../node-builtins.ts';
import type { Readable } from 'node:stream';
import type { Socket } from 'node:net';
import type { Downstream, DownstreamOwner } from '../core/downstream.ts';
import type { RequestHead } from '../http1/request-head.ts';
import { headBytes, relayableTrailers, validReason } from './http1.ts';
import { lastChunk } from '../http1/chunked.ts';

/** What the response needs from its connection. */
export interface ResponseConnection {
  readonly socket: Socket;
  /** The client's connection allows another request after this one (keep-alive asked, not draining). */
  keepAlive(): boolean;
  /** The keep-alive timeout announced in `Keep-Alive: timeout=N` (whole seconds; 0: not announced). */
  readonly keepAliveSeconds: number;
  /** The answer is complete (`close`: the connection closes after it); or it was cut (`cut`). */
  responseDone(response: Http1Response, close: boolean, cut: boolean): void;
  /** Hands the socket to a tunnel after a relayed 101: the connection stops reading HTTP. */
  switched(response: Http1Response): Socket;
}

const tokenChars = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const invalidValueChar = /[^\t\x20-\x7e\x80-\xff]/;

/** Bytes gathered before they leave without waiting for the end of the tick. */
const GATHER_MAX = 64 * 1024;

let dateSecond = -1;
let dateLine = '';

/** `date: <IMF-fixdate>\r\n`, rebuilt at most once a second (as nginx caches its time). */
function dateHeader(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateLine = `date: ${new Date(now).toUTCString()}\r\n`;
  }
  return dateLine;
}

function invalid(code: string, message: string): Error {
  return Object.assign(new TypeError(message), { code });
}

/** One request's answer on an HTTP/1.1 connection of Fulcrum's own. */
export class Http1Response implements Downstream {
  owner: DownstreamOwner | null = null;
  readonly request: RequestHead;
  readonly requestBody: Readable | null;
  /** The request's chunked trailers less forbidden fields, set by the connection when the body ends (null: none). */
  requestTrailers: readonly string[] | null = null;
  readonly protocol = 'h1';
  readonly expectsContinue: boolean;
  private readonly connection: ResponseConnection;
  /** The request came as a WebSocket handshake: its connection may switch protocols. */
  private readonly upgradable: boolean;
  /** What was written this tick and not handed to the socket yet (latin1 strings and body bytes), or null. */
  private parts: (string | Buffer)[] | null = null;
  private partsBytes = 0;
  private sent = false;
  /** Set once the answer is complete or cut. */
  finished = false;
  private chunked = false;
  /** The answer has no body (HEAD, 204, 304): body bytes are dropped. */
  private bodiless = false;
  /** The connection closes after this answer (it said `Connection: close`, or is close-delimited). */
  private closeAfter = false;
  private sent100 = false;
  private switchedSocket: Socket | null = null;

  constructor(connection: ResponseConnection, head: RequestHead, body: Readable | null, upgradable: boolean) {
    this.connection = connection;
    this.request = head;
    this.requestBody = body;
    this.expectsContinue = head.expectContinue;
    this.upgradable = upgradable;
  }

  get remoteAddress(): string | undefined {
    return this.connection.socket.remoteAddress;
  }

  get connected(): boolean {
    return !this.connection.socket.destroyed;
  }

  get tls(): ConnectionTls | null {
    return connectionTls(this.connection.socket);
  }

  get socket(): Socket | null {
    return this.connection.socket;
  }

  get headSent(): boolean {
    return this.sent;
  }

  /** Never to an HTTP/1.0 client, 100 only to a client that asked for it and only once (RFC 9110 section 15.2). */
  informational(status: number, reason: string, rawHeaders: readonly (Buffer | string)[]): void {
    if (this.sent || this.finished || this.request.httpVersionMinor === 0 || status === 101) return;
    if (status === 100) {
      if (!this.expectsContinue || this.sent100) return;
      this.sent100 = true;
      this.connection.socket.write('HTTP/1.1 100 Continue\r\n\r\n', 'latin1');
      return;
    }
    this.connection.socket.write(headBytes(status, validReason(reason) ? reason : '', rawHeaders, true), 'latin1');
  }

  head(status: number, reason: string | undefined, headers: string[]): void {
    if (this.sent || this.finished) throw invalid('ERR_HTTP_HEADERS_SENT', 'the response head was already sent');
    const text = this.buildHead(status, reason !== undefined && validReason(reason) ? reason : undefined, headers, false);
    this.sent = true;
    this.queue(text);
  }

  /** Adds to what leaves at the end of this tick; a large gathering leaves at once. */
  private queue(part: string | Buffer): void {
    if (this.parts === null) {
      this.parts = [part];
      this.partsBytes = part.length;
      process.nextTick(flushParts, this);
    } else {
      this.parts.push(part);
      this.partsBytes += part.length;
    }
    if (this.partsBytes >= GATHER_MAX) this.flush();
  }

  /** Hands what was gathered to the socket in one write. */
  flush(): void {
    const parts = this.parts;
    if (parts === null) return;
    this.parts = null;
    const socket = this.connection.socket;
    if (socket.destroyed) return;
    if (parts.length === 1) {
      const only = parts[0];
      if (typeof only === 'string') socket.write(only, 'latin1');
      else socket.write(only);
      return;
    }
    const out = Buffer.allocUnsafe(this.partsBytes);
    let at = 0;
    for (const part of parts) {
      if (typeof part === 'string') at += out.write(part, at, 'latin1');
      else at += part.copy(out, at);
    }
    socket.write(out);
  }

  /** The head line and fields, with framing, Connection and Date added as needed. Throws on a field node:http would refuse. */
  private buildHead(status: number, reason: string | undefined, headers: readonly string[], close: boolean): string {
    const request = this.request;
    let text = `HTTP/1.1 ${status} ${reason ?? STATUS_CODES[status] ?? ''}\r\n`;
    let length = false;
    let date = false;
    let closing = close;
    for (let i = 0; i < headers.length; i += 2) {
      const name = headers[i];
      const value = headers[i + 1];
      if (!tokenChars.test(name)) throw invalid('ERR_INVALID_HTTP_TOKEN', `Header name must be a valid HTTP token ["${name}"]`);
      if (invalidValueChar.test(value)) throw invalid('ERR_INVALID_CHAR', `Invalid character in header content ["${name}"]`);
      if (name.length === 14 && name.toLowerCase() === 'content-length') length = true;
      else if (name.length === 4 && name.toLowerCase() === 'date') date = true;
      else if (name.length === 10 && name.toLowerCase() === 'connection') {
        if (value.toLowerCase().includes('close')) closing = true;
        continue;
      } else if (name.length === 17 && name.toLowerCase() === 'transfer-encoding') continue;
      text += `${name}: ${value}\r\n`;
    }
    this.bodiless = request.method === 'HEAD' || status === 204 || status === 304 || status < 200;
    if (!this.bodiless && !length) {
      if (request.httpVersionMinor === 1) {
        this.chunked = true;
        text += 'transfer-encoding: chunked\r\n';
      } else closing = true; // HTTP/1.0: the end of the body is the end of the connection
    }
    if (!date) text += dateHeader();
    if (!closing && !this.connection.keepAlive()) closing = true;
    this.closeAfter = closing;
    if (closing) text += 'connection: close\r\n';
    else {
      const seconds = this.connection.keepAliveSeconds;
      text += seconds > 0 ? `connection: keep-alive\r\nkeep-alive: timeout=${seconds}\r\n` : 'connection: keep-alive\r\n';
    }
    return text + '\r\n';
  }

  body(chunk: Buffer): boolean {
    if (this.finished || this.bodiless || chunk.length === 0) return true;
    const socket = this.connection.socket;
    if (socket.destroyed) return true;
    if (this.chunked) {
      this.queue(`${chunk.length.toString(16)}\r\n`);
      this.queue(chunk);
      this.queue('\r\n');
    } else this.queue(chunk);
    return !socket.writableNeedDrain;
  }

  whenWritable(resume: () => void): void {
    const socket = this.connection.socket;
    if (!socket.writableNeedDrain || socket.destroyed) process.nextTick(resume);
    else socket.once('drain', resume);
  }

  /**
   * Trailers go only on a chunked answer (RFC 9112 section 7.1.2), less the fields that may not
   * come from trailers and any that cannot be written (dropped, not the answer). An answer sent
   * with the upstream's Content-Length loses its trailers (an HTTP/2 upstream's; an HTTP/1.1 one
   * cannot send both), even to a client that sent `TE: trailers`: the length is not traded for
   * chunked framing on the chance that trailers follow, as nginx and Envoy's HTTP/1 codec
   * (`encodeTrailersBase`: "trailers only matter if it is a chunk transfer encoding") do too.
   * The client keeps the length it may rely on (progress, a body read to a known end), and the
   * answer does not change shape with the upstream's protocol.
   */
  end(trailers: readonly (Buffer | string)[] | null): void {
    if (this.finished) return;
    this.finish(this.chunked ? lastChunk(trailers === null ? null : relayableTrailers(trailers)) : '', '');
  }

  fail(status: number, headers: string[], body: string, close: boolean): void {
    if (this.sent) return this.cut();
    if (this.finished) return;
    let text: string;
    try {
      text = this.buildHead(status, undefined, headers, close);
    } catch {
      // Never a crash for an answer that cannot be written: the connection is cut instead.
      return this.cut();
    }
    this.sent = true;
    if (this.bodiless) return this.finish(text, '');
    // Fulcrum's own bodies are UTF-8 (the Content-Length the core computed counts UTF-8 bytes).
    if (isAscii(body)) return this.finish(text + body, '');
    this.finish(text, body);
  }

  /** Writes what is left (`text` latin1, then `utf8` as UTF-8) and tells the connection the answer is complete. */
  private finish(text: string, utf8: string): void {
    this.finished = true;
    if (this.parts !== null) {
      if (text.length > 0) this.queue(text);
      text = '';
      this.flush();
    }
    const socket = this.connection.socket;
    if (!socket.destroyed) {
      if (utf8.length === 0) {
        if (text.length > 0) socket.write(text, 'latin1');
      } else {
        socket.cork();
        socket.write(text, 'latin1');
        socket.write(utf8, 'utf8');
        socket.uncork();
      }
    }
    this.connection.responseDone(this, this.closeAfter, false);
  }

  /** Never lets a cut answer look complete: the client socket goes mid-body (after a 101: the tunnel's socket). */
  cut(): void {
    if (this.switchedSocket !== null) {
      this.switchedSocket.destroy();
      return;
    }
    if (this.finished) return;
    this.finished = true;
    this.parts = null;
    this.connection.responseDone(this, true, true);
  }

  /** Writes the `101` head and hands the socket over; null when this request cannot switch. */
  switchProtocols(status: number, reason: string, headers: string[]): Socket | null {
    if (!this.upgradable || this.sent || this.finished || this.connection.socket.destroyed) return null;
    this.sent = true;
    this.finished = true;
    const socket = this.connection.switched(this);
    this.switchedSocket = socket;
    socket.write(headBytes(status, validReason(reason) && reason !== '' ? reason : 'Switching Protocols', headers, false), 'latin1');
    return socket;
  }

}

function flushParts(response: Http1Response): void {
  response.flush();
}

/** True when every character is ASCII (then latin1 and UTF-8 are the same bytes). */
function isAscii(text: string): boolean {
  for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) > 0x7f) return false;
  return true;
}
