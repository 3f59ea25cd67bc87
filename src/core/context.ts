/**
 * RequestContext: the small object every downstream builds per exchange (a request and its
 * response, a tunnel, later a stream or a TCP connection) and every phase, guard and observer
 * reads. It names no protocol and no proxy part: the route, pool and upstream are seen here
 * only by name (the proxy's `Exchange` in src/proxy/exchange.ts narrows them to its own types).
 * It is a class with every field set in the constructor so V8 gives all contexts one shape.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Downstream } from './downstream.ts';
import type { FulcrumError } from '../errors.ts';

let sequence = 0;
const prefix = `${process.pid.toString(36)}-${Date.now().toString(36)}-`;

/** A request id that is unique per process run and cheap to make (no crypto per request). */
export function nextRequestId(): string {
  sequence = (sequence + 1) >>> 0;
  return prefix + sequence.toString(36);
}

/**
 * A request head as parsed, whatever parsed it: Fulcrum's own HTTP/1.1 parser
 * (src/http1/request-head.ts) or node:http's `IncomingMessage` (the `engine: node` listener).
 */
export interface RequestHead {
  readonly method: string;
  /** The request-target as sent. */
  readonly url: string;
  /** `'1.1'` or `'1.0'`. */
  readonly httpVersion: string;
  readonly httpVersionMajor: number;
  readonly httpVersionMinor: number;
  /** Lower-cased names; duplicates joined by node:http's rules. */
  readonly headers: IncomingHttpHeaders;
  /** Flat `[name, value, ...]` as sent. */
  readonly rawHeaders: string[];
}

/** A route as the core and observers see it. */
export interface RouteRef {
  readonly name: string;
}
/** A pool as the core and observers see it. */
export interface PoolRef {
  readonly name: string;
}
/** An upstream as the core and observers see it (`host:port`). */
export interface UpstreamRef {
  readonly id: string;
}

/**
 * What the forward proxy made of an exchange (src/forward/forward-proxy.ts): how the client
 * asked (`absolute`: `GET http://host/...`; `connect`: `CONNECT host:port`; `route`: a route's
 * `/forward?url=...`), and once decided, the decision and the rule that made it. Every value is
 * from a fixed set or the configuration, never from the client, so observers may use them as labels.
 */
export interface ForwardInfo {
  readonly kind: 'absolute' | 'connect' | 'route';
  /** Null until the destination was decided (a request refused before, for a bad target or no credentials, keeps null). */
  decision: 'allowed' | 'denied' | null;
  /** The configured rule that decided; null when none did (nothing matched, or no decision yet). */
  rule: string | null;
  /** Why it was denied: a policy reason (`no_rule`, `special_address`, ...) or `auth`; null when allowed. */
  reason: string | null;
}

/** What kind of exchange a context carries: one request and its answer, or a tunnel (WebSocket) that outlived its request. */
export type ExchangeKind = 'request' | 'tunnel';

/** The state of one exchange, from accept to the access log. */
export class RequestContext {
  readonly id: string;
  /** The request head as parsed (method, target, headers). */
  readonly req: RequestHead;
  /** The side that asked: how answers go back (src/core/downstream.ts). */
  readonly downstream: Downstream;
  /**
   * What carries this exchange (its balancer's proxy). Event channels are process-wide: a
   * subscriber of one balancer (access log, metrics) keeps only the exchanges whose carrier is its own.
   */
  readonly carrier: object | null;
  readonly listener: string;
  /** `performance.now()` at accept. */
  readonly start: number;
  /** The socket peer. */
  readonly peerAddress: string;
  /** The client after trusted-proxy rules: the peer, or the right-most untrusted X-Forwarded-For hop. */
  clientAddress: string;
  /** True when the peer is a trusted proxy, so its X-Forwarded-* headers are believed. */
  trustedPeer: boolean;
  /** 'tunnel' once a protocol switch (101) was relayed: the exchange then lasts as long as the tunnel. */
  kind: ExchangeKind = 'request';
  route: RouteRef | null = null;
  pool: PoolRef | null = null;
  /** The upstream of the current (or last) attempt. */
  upstream: UpstreamRef | null = null;
  /** Attempts made so far (1 without retries). */
  attempts = 0;
  /** The request-target sent upstream, origin-form: as the client sent it unless the route says otherwise. */
  upstreamPath = '';
  /** The fully normalised path routes matched: what every path rule must look at (src/proxy/request-target.ts). */
  path = '';
  /** Header names left out of the upstream request (names with `_`), or null: for metrics and the debug log. */
  droppedHeaders: string[] | null = null;
  /** The authority of an absolute-form request-target, else null. */
  authority: string | null = null;
  /** Extra headers for a refusal (Retry-After, RateLimit-*). */
  extraHeaders: string[] | null = null;
  status = 0;
  /** Bytes of request body (for a tunnel: bytes the client sent through it). */
  bytesIn = 0;
  /** Bytes of response body (for a tunnel: bytes the upstream sent through it). */
  bytesOut = 0;
  error: FulcrumError | null = null;
  /** Set when the client went away before the response was complete. */
  clientGone = false;
  /** Set once the exchange is complete or abandoned; guards against finishing twice. */
  done = false;
  /** The X-Request-Id a trusted proxy sent, kept end to end instead of ours. */
  requestIdForUpstream: string | undefined = undefined;
  /** Why a tunnel ended (client, upstream, error, idle, drained, removed, shutdown); null for other exchanges. */
  tunnelClose: string | null = null;
  /** Milliseconds from accept to the end, set when done (for a tunnel: until it closed). */
  duration = 0;
  /** A gRPC call (`content-type: application/grpc...`): Fulcrum's own answers are gRPC statuses. */
  grpc = false;
  /** The call's `grpc-status` (the upstream's trailers or headers, or Fulcrum's own), -1 when none. */
  grpcStatus = -1;
  /** Set for an exchange the forward proxy carries (absolute-form, CONNECT, a `/forward?url=` route); null otherwise. */
  forward: ForwardInfo | null = null;

  constructor(req: RequestHead, downstream: Downstream, listener: string, peerAddress: string, carrier: object | null = null) {
    this.id = nextRequestId();
    this.req = req;
    this.downstream = downstream;
    this.carrier = carrier;
    this.listener = listener;
    this.start = performance.now();
    this.peerAddress = peerAddress;
    this.clientAddress = peerAddress;
    this.trustedPeer = false;
  }
}
