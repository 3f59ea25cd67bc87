/**
 * RequestContext: one small object per request that every phase reads and writes. It is a
 * class with every field set in the constructor so V8 gives all contexts one shape.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Readable, Transform } from 'node:stream';
import type { FulcrumError } from '../errors.ts';
import type { Upstream } from '../upstream/upstream.ts';
import type { Pool } from '../upstream/pool.ts';
import type { CompiledRoute } from '../router/router.ts';
import type { ForwardingSettings } from '../proxy/headers.ts';

let sequence = 0;
const prefix = `${process.pid.toString(36)}-${Date.now().toString(36)}-`;

/** A request id that is unique per process run and cheap to make (no crypto per request). */
export function nextRequestId(): string {
  sequence = (sequence + 1) >>> 0;
  return prefix + sequence.toString(36);
}

/** The state of one proxied request, from accept to the access log. */
export class RequestContext {
  readonly id: string;
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly listener: string;
  /** `performance.now()` at accept. */
  readonly start: number;
  /** The socket peer. */
  readonly peerAddress: string;
  /** The client after trusted-proxy rules: the peer, or the right-most untrusted X-Forwarded-For hop. */
  clientAddress: string;
  /** True when the peer is a trusted proxy, so its X-Forwarded-* headers are believed. */
  trustedPeer: boolean;
  route: CompiledRoute | null = null;
  pool: Pool | null = null;
  /** The upstream of the current (or last) attempt. */
  upstream: Upstream | null = null;
  /** True while this request counts in `upstream.inFlight`. */
  holding = false;
  /** Why the previous attempt failed, answered if no other upstream is left to try. */
  retryCause: FulcrumError | null = null;
  /** The listener's forwarding settings (Via token, scheme). */
  forwarding: ForwardingSettings | null = null;
  /** The proxy handling this request (for socket events that only see the response). */
  proxy: { clientClosed(ctx: RequestContext): void } | null = null;
  /** Upstreams tried so far, in order (only kept once a second attempt is needed). */
  tried: Upstream[] | null = null;
  attempts = 0;
  /** The request-target sent upstream, origin-form: as the client sent it unless the route says otherwise. */
  upstreamPath = '';
  /** The fully normalised path routes matched: what every path rule must look at (src/proxy/request-target.ts). */
  path = '';
  /** Header names left out of the upstream request (names with `_`), or null: for metrics and the debug log. */
  droppedHeaders: string[] | null = null;
  /** The authority of an absolute-form request-target, else null. */
  authority: string | null = null;
  /** The client sent `Expect: 100-continue` and waits for it until the guards have passed. */
  expectContinue = false;
  /** Extra headers for a refusal (Retry-After, RateLimit-*). */
  extraHeaders: string[] | null = null;
  /** Headers sent upstream, flat `[name, value, ...]`. */
  upstreamHeaders: string[] = [];
  /** What the next attempt sends as body: the client's stream, a kept copy, or null. */
  body: Readable | Buffer | null = null;
  /** The client's body on its way through (null for requests without one). */
  bodyStream: Transform | null = null;
  /** The body's chunks while it fits in retry.max_body_bytes (null once it did not). */
  bodyKept: Buffer[] | null = null;
  bodyKeptBytes = 0;
  /** True once the client's body was read to its end. */
  bodyEnded = false;
  /** Set when the upstream answered before the upload ended: the rest of the body is not sent, the upstream connection not reused. */
  bodyAbandoned = false;
  /** The pool whose active and retry counts this request is in (the routed one, even on backup). */
  countedPool: Pool | null = null;
  /** True once the request counts as a retry in its pool's budget. */
  retrying = false;
  /** Set while an upstream answer is read and dropped because the request goes elsewhere. */
  discarding = false;
  /** Wait before the retry that follows a discarded answer (its Retry-After). */
  retryDelay = 0;
  status = 0;
  bytesIn = 0;
  bytesOut = 0;
  error: FulcrumError | null = null;
  /** Set when the client went away before the response was complete. */
  clientGone = false;
  /** Set once the response is complete or abandoned; guards against finishing twice. */
  done = false;
  /** Cancels the upstream exchange in flight (set by the transport). */
  abort: ((reason: Error) => void) | null = null;
  timer: NodeJS.Timeout | null = null;
  /** A retry waiting out a Retry-After. */
  timerRetry: NodeJS.Timeout | null = null;
  /** The status of the last upstream answer (also a discarded one). */
  lastStatus = 0;
  /** The X-Request-Id a trusted proxy sent, kept end to end instead of ours. */
  requestIdForUpstream: string | undefined = undefined;
  /** Milliseconds from accept to the end, set when done. */
  duration = 0;

  constructor(req: IncomingMessage, res: ServerResponse, listener: string, peerAddress: string) {
    this.id = nextRequestId();
    this.req = req;
    this.res = res;
    this.listener = listener;
    this.start = performance.now();
    this.peerAddress = peerAddress;
    this.clientAddress = peerAddress;
    this.trustedPeer = false;
  }
}
