/**
 * Attempt: one try of one exchange on one upstream, owned by the proxy (undici's one handler
 * per dispatch). The transport reads the request from it and reports into it. When the proxy
 * moves on (a retry, an error answer, the client gone) it retires the attempt: every later
 * report from that transport is dropped here, so a stale attempt cannot reach the exchange by
 * construction, with no counters to compare.
 *
 * It is also where transport callbacks (socket and undici events) enter the core: a report
 * that throws ends its exchange with a 502 and never reaches the event loop as an uncaught error.
 */
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import type { UpstreamAttempt } from '../transport/transport.ts';
import type { Upstream } from '../upstream/upstream.ts';
import type { Exchange } from './exchange.ts';
import { clientConnectionKey, upstreamProxyHeader } from './upstream-proxy-header.ts';

/** What the proxy does with an attempt's reports (src/proxy/http-proxy.ts). */
export interface AttemptHandler {
  onInformational(attempt: Attempt, status: number, reason: string, rawHeaders: readonly (Buffer | string)[]): void;
  onResponse(attempt: Attempt, status: number, rawHeaders: readonly (Buffer | string)[], reason: string | undefined): boolean;
  onData(attempt: Attempt, chunk: Buffer): boolean;
  onEnd(attempt: Attempt, trailers: readonly (Buffer | string)[] | null): void;
  onError(attempt: Attempt, err: unknown): void;
  onSwitched(attempt: Attempt, status: number, reason: string, rawHeaders: readonly (Buffer | string)[], socket: Socket, head: Buffer): void;
  /** A report that threw: the exchange ends with a 502 (or is cut) and the failure is logged; never the process. */
  internalError(ex: Exchange, err: unknown, status: number): void;
}

export class Attempt implements UpstreamAttempt {
  readonly exchange: Exchange;
  readonly upstream: Upstream;
  private readonly handler: AttemptHandler;
  /** False once the proxy has moved on: reports are dropped. */
  live = true;
  /** The request was (being) written to a socket: the upstream may have seen it. */
  sent = false;
  /** It went out on a keep-alive socket that had carried an earlier exchange. */
  reused = false;
  private cancelHook: ((reason: Error) => void) | null = null;

  constructor(handler: AttemptHandler, exchange: Exchange, upstream: Upstream) {
    this.handler = handler;
    this.exchange = exchange;
    this.upstream = upstream;
  }

  get method(): string {
    return this.exchange.req.method!;
  }
  get path(): string {
    return this.exchange.upstreamPath;
  }
  get headers(): string[] {
    return this.exchange.upstreamHeaders;
  }
  get body(): Readable | Buffer | null {
    return this.exchange.body;
  }
  get requestTrailers(): readonly string[] | null {
    return this.exchange.downstream.requestTrailers;
  }
  get expectContinue(): boolean {
    return this.exchange.downstream.expectsContinue;
  }
  get upgrade(): boolean {
    return this.exchange.upgrade !== null;
  }
  /** With the pool's `proxy_protocol`: the header a new upstream connection starts with (built when read: only on a connect). */
  get proxyHeader(): Buffer | null {
    const version = this.exchange.pool?.settings.proxy_protocol;
    return version === undefined ? null : upstreamProxyHeader(version, this.exchange.downstream);
  }
  /** With the pool's `proxy_protocol`: the client connection upstream connections are bound to; else null (any). */
  get connectionKey(): object | null {
    const version = this.exchange.pool?.settings.proxy_protocol;
    return version === undefined ? null : clientConnectionKey(version, this.exchange.downstream);
  }

  /**
   * The proxy is done with this attempt. With `reason` the transport is told to cancel (it
   * destroys what it holds); without, the attempt already ended on the transport's side.
   */
  retire(reason?: Error): void {
    if (!this.live) return;
    this.live = false;
    const cancel = this.cancelHook;
    this.cancelHook = null;
    if (reason !== undefined && cancel !== null) cancel(reason);
  }

  onCancel(cancel: (reason: Error) => void): void {
    this.cancelHook = cancel;
  }

  sending(reused: boolean): void {
    this.sent = true;
    if (reused) this.reused = true;
  }

  informational(status: number, reason: string, rawHeaders: readonly (Buffer | string)[]): void {
    if (!this.live) return;
    try {
      this.handler.onInformational(this, status, reason, rawHeaders);
    } catch (err) {
      this.failed(err);
    }
  }

  response(status: number, rawHeaders: readonly (Buffer | string)[], reason?: string): boolean {
    if (!this.live) return false;
    try {
      return this.handler.onResponse(this, status, rawHeaders, reason);
    } catch (err) {
      this.failed(err);
      return false;
    }
  }

  data(chunk: Buffer): boolean {
    if (!this.live) return false;
    try {
      return this.handler.onData(this, chunk);
    } catch (err) {
      this.failed(err);
      return false;
    }
  }

  whenWritable(resume: () => void): void {
    if (this.live) this.exchange.downstream.whenWritable(resume);
  }

  end(trailers: readonly (Buffer | string)[] | null): void {
    if (!this.live) return;
    try {
      this.handler.onEnd(this, trailers);
    } catch (err) {
      this.failed(err);
    }
  }

  error(err: unknown): void {
    if (!this.live) return;
    try {
      this.handler.onError(this, err);
    } catch (thrown) {
      this.failed(thrown);
    }
  }

  switched(status: number, reason: string, rawHeaders: readonly (Buffer | string)[], socket: Socket, head: Buffer): void {
    if (!this.live) {
      socket.destroy();
      return;
    }
    try {
      this.handler.onSwitched(this, status, reason, rawHeaders, socket, head);
    } catch (err) {
      socket.destroy();
      this.failed(err);
    }
  }

  /** A report threw: the exchange ends (502, or cut once the head went out). */
  private failed(err: unknown): void {
    this.handler.internalError(this.exchange, err, 502);
  }
}
