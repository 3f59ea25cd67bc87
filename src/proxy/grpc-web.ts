/**
 * gRPC-Web (github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md): browsers cannot read HTTP
 * trailers, so a gRPC-Web call carries its trailers as a last length-prefixed frame of the body
 * (flag 0x80), over HTTP/1.1 or HTTP/2. Fulcrum translates at the edge, as Envoy's grpc_web filter
 * does: the upstream sees a plain gRPC call (`application/grpc`, over the pool's h2 or h2c), the
 * caller gets gRPC-Web back. `application/grpc-web-text` is the same, base64-encoded both ways.
 *
 * `GrpcWebDownstream` wraps the client's own downstream, so the core needs to know only that the
 * call is gRPC (its errors become `grpc-status`, which this wrapper turns into a trailer frame
 * when the head already went out).
 */
import { Transform, type Duplex, type Readable, type TransformCallback } from 'node:stream';
import type { RequestHead } from '../core/context.ts';
import type { Downstream, DownstreamOwner } from '../core/downstream.ts';
import type { ConnectionTls } from '../tls/connection-tls.ts';
import type { Socket } from 'node:net';

/**
 * The request headers for the upstream (flat, as built by the core), in place: content-type
 * `application/grpc-web[-text][+x]` becomes `application/grpc[+x]`, `te: trailers` is asked, and
 * a text call's Content-Length (of the base64, not of what goes upstream) is left out.
 */
export function toGrpcHeaders(headers: string[], mode: 'binary' | 'text'): void {
  let te = false;
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i].toLowerCase();
    if (name === 'content-type') headers[i + 1] = headers[i + 1].replace(/^application\/grpc-web(-text)?/i, 'application/grpc');
    else if (name === 'te') te = true;
    else if (name === 'content-length' && mode === 'text') {
      headers.splice(i, 2);
      i -= 2;
    }
  }
  if (!te) headers.push('te', 'trailers');
}

/** Decodes a base64 request body as it streams (4-character groups; whitespace dropped). */
class Base64Decoder extends Transform {
  private carry = '';
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    const text = this.carry + chunk.toString('latin1').replace(/\s+/g, '');
    const whole = text.length - (text.length % 4);
    this.carry = text.slice(whole);
    callback(null, whole > 0 ? decodeBase64(text.slice(0, whole)) : undefined);
  }
  override _flush(callback: TransformCallback): void {
    if (this.carry.length > 0) return callback(new Error('gRPC-Web text body is not whole base64 (its length is not a multiple of 4)'));
    callback();
  }
}

/** Base64 groups, each possibly padded (a client may send every frame padded on its own). */
function decodeBase64(text: string): Buffer {
  if (text.indexOf('=') === -1 || text.indexOf('=') >= text.length - 2) return Buffer.from(text, 'base64');
  const parts: Buffer[] = [];
  for (let i = 0; i < text.length; i += 4) parts.push(Buffer.from(text.slice(i, i + 4), 'base64'));
  return Buffer.concat(parts);
}

/** A gRPC-Web call's answering side, on top of the client's own downstream. */
export class GrpcWebDownstream implements Downstream {
  private readonly inner: Downstream;
  readonly mode: 'binary' | 'text';
  private readonly text: boolean;
  /** The content-type the caller used, answered back with its suffix (`+proto`). */
  private readonly contentType: string;
  readonly requestBody: Readable | null;
  /** Bytes (text mode) not yet a multiple of 3, held for the next chunk. */
  private carry: Buffer | null = null;

  constructor(inner: Downstream, mode: 'binary' | 'text', req: RequestHead) {
    this.inner = inner;
    this.mode = mode;
    this.text = mode === 'text';
    this.contentType = String(req.headers['content-type']).split(';')[0].trim().toLowerCase();
    const body = inner.requestBody;
    if (body !== null && this.text) {
      const decoder = new Base64Decoder();
      body.on('error', (err) => decoder.destroy(err));
      this.requestBody = body.pipe(decoder);
    } else this.requestBody = body;
  }

  get owner(): DownstreamOwner | null {
    return this.inner.owner;
  }
  set owner(owner: DownstreamOwner | null) {
    this.inner.owner = owner;
  }
  get remoteAddress(): string | undefined {
    return this.inner.remoteAddress;
  }
  get requestTrailers(): readonly string[] | null {
    return this.inner.requestTrailers;
  }
  get protocol(): 'h1' | 'h2' {
    return this.inner.protocol;
  }
  get connected(): boolean {
    return this.inner.connected;
  }
  get tls(): ConnectionTls | null {
    return this.inner.tls;
  }
  get socket(): Socket | null {
    return this.inner.socket;
  }
  get headSent(): boolean {
    return this.inner.headSent;
  }
  get expectsContinue(): boolean {
    return this.inner.expectsContinue;
  }

  informational(status: number, reason: string, rawHeaders: readonly (Buffer | string)[]): void {
    this.inner.informational(status, reason, rawHeaders);
  }

  /** The gRPC answer's head with the caller's gRPC-Web content-type. */
  head(status: number, reason: string | undefined, headers: string[]): void {
    this.inner.head(status, reason, this.webHeaders(headers));
  }

  body(chunk: Buffer): boolean {
    if (!this.text) return this.inner.body(chunk);
    let bytes = this.carry === null ? chunk : Buffer.concat([this.carry, chunk]);
    const whole = bytes.length - (bytes.length % 3);
    this.carry = whole < bytes.length ? bytes.subarray(whole) : null;
    bytes = bytes.subarray(0, whole);
    return bytes.length === 0 ? true : this.inner.body(Buffer.from(bytes.toString('base64'), 'latin1'));
  }

  whenWritable(resume: () => void): void {
    this.inner.whenWritable(resume);
  }

  /** The trailers go as the body's last frame (flag 0x80, `name:value\r\n` lines); HTTP trailers are not used. */
  end(trailers: readonly (Buffer | string)[] | null): void {
    if (trailers !== null && trailers.length > 0) {
      let block = '';
      for (let i = 0; i < trailers.length; i += 2) block += `${trailers[i].toString().toLowerCase()}:${trailers[i + 1].toString()}\r\n`;
      const payload = Buffer.from(block, 'latin1');
      const frame = Buffer.allocUnsafe(5 + payload.length);
      frame[0] = 0x80;
      frame.writeUInt32BE(payload.length, 1);
      payload.copy(frame, 5);
      this.body(frame);
    }
    if (this.text && this.carry !== null) {
      const rest = this.carry;
      this.carry = null;
      this.inner.body(Buffer.from(rest.toString('base64'), 'latin1'));
    }
    this.inner.end(null);
  }

  fail(status: number, headers: string[], body: string, close: boolean): void {
    this.inner.fail(status, this.webHeaders(headers), body, close);
  }

  cut(): void {
    this.inner.cut();
  }

  switchProtocols(): Duplex | null {
    return null;
  }

  /** `content-type: application/grpc[+x]` back to the caller's gRPC-Web type. */
  private webHeaders(headers: string[]): string[] {
    const out = headers.slice();
    for (let i = 0; i < out.length; i += 2) {
      if (out[i].toLowerCase() === 'content-type' && /^application\/grpc/i.test(out[i + 1])) out[i + 1] = this.contentType;
    }
    return out;
  }
}
