/**
 * The transport interface: how a request reaches an upstream over a keep-alive pool and how
 * the response comes back. Two implementations (undici, node:http) are kept so `npm run bench`
 * can compare them on every machine; undici is the default because it measured faster.
 */
import type { RequestContext } from '../core/context.ts';
import type { Upstream } from '../upstream/upstream.ts';

/** What a transport reports back to the proxy, once per event, for one attempt. */
export interface ExchangeSink {
  /** An interim 1xx answer (not 101) arrived before the final one; `reason` as the upstream sent it. */
  onInformational(ctx: RequestContext, status: number, reason: string, rawHeaders: readonly (Buffer | string)[]): void;
  /** Final response headers arrived (`reason`: the upstream's reason phrase). Returns false when they could not be written (attempt ends). */
  onResponse(ctx: RequestContext, status: number, rawHeaders: readonly (Buffer | string)[], reason?: string): boolean;
  /** A body chunk; returns false when the client is slow (the transport pauses until `resume`). */
  onData(ctx: RequestContext, chunk: Buffer): boolean;
  /** The response is complete. */
  onEnd(ctx: RequestContext, trailers: readonly (Buffer | string)[] | null): void;
  /** The attempt failed; `sent` is false when the upstream never saw the request. */
  /**
   * The attempt failed; `sent` is false when the upstream never saw the request, `reused` true
   * when it went out on a keep-alive socket that had carried an earlier exchange.
   */
  onError(ctx: RequestContext, err: unknown, sent: boolean, reused?: boolean): void;
}

/** A client toward the upstreams of one pool. */
export interface Transport {
  /** True when `Expect: 100-continue` goes to the upstream and its 100 comes back (else Fulcrum sends 100 itself). */
  readonly relaysContinue: boolean;
  /** Sends ctx's request to the upstream; reports through the sink, for attempt `ctx.attempts`. */
  forward(ctx: RequestContext, upstream: Upstream, sink: ExchangeSink): void;
  /** Closes idle sockets now and the rest once their requests finish. */
  close(): Promise<void>;
}

/** Keep-alive idle time actually used: the configured limit less the safety margin. */
export function effectiveIdle(idleTimeout: number, margin: number): number {
  return idleTimeout > margin ? idleTimeout - margin : Math.max(1, Math.floor(idleTimeout / 2));
}

/**
 * False when a complete answer leaves its upstream connection in doubt: a 204 that declared a
 * body (`Transfer-Encoding`, or a `Content-Length` other than 0), or a 304 with
 * `Transfer-Encoding`. Those bytes, if the upstream sends them, would be read as the start of
 * the next answer on that socket, so it is not reused. (A 304 may carry the `Content-Length` of
 * the full answer, and a HEAD answer its framing: both normal, both keep the socket.)
 */
export function socketReusableAfter(status: number, rawHeaders: readonly (Buffer | string)[]): boolean {
  if (status !== 204 && status !== 304) return true;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i].toString('latin1').toLowerCase();
    if (name === 'transfer-encoding') return false;
    if (name === 'content-length' && status === 204 && rawHeaders[i + 1].toString('latin1').trim() !== '0') return false;
  }
  return true;
}

