/**
 * Exchange: the proxy's state for one exchange, on top of the protocol-free RequestContext
 * (src/core/context.ts) that guards and observers see. It is the downstream's owner: the client
 * going away or its body breaking reaches the proxy through it.
 */
import type { Readable, Transform } from 'node:stream';
import { RequestContext, type RequestHead } from '../core/context.ts';
import type { Downstream, DownstreamOwner } from '../core/downstream.ts';
import type { FulcrumError } from '../errors.ts';
import type { Upstream } from '../upstream/upstream.ts';
import type { CompiledRoute } from '../router/router.ts';
import type { ForwardingSettings, HostRewrite } from './headers.ts';
import type { Attempt } from './attempt.ts';
import type { Tunnel, TunnelSlot } from '../downstream/tunnel.ts';
import type { PoolSettings } from '../config/schema.ts';
import type { Transport } from '../transport/transport.ts';
import type { PickContext } from '../balancer/policy.ts';
import type { ForwardProxy, ForwardTarget } from '../forward/forward-proxy.ts';

/**
 * Where the core sends an exchange: a configured `Pool` (src/upstream/pool.ts), or for the
 * forward proxy the one destination its rules allowed (`ForwardDestination`,
 * src/forward/forward-proxy.ts). The core asks only these.
 */
export interface ExchangePool {
  readonly name: string;
  readonly settings: { readonly retry: PoolSettings['retry']; readonly timeouts: PoolSettings['timeouts']; readonly proxy_protocol?: PoolSettings['proxy_protocol'] };
  readonly hostRewrite: HostRewrite;
  readonly transport: Transport;
  readonly backup: ExchangePool | null;
  /** Requests in flight, and how many of them are retries (the retry budget). */
  active: number;
  retrying: number;
  pick(ctx: PickContext): Upstream | undefined;
  pickExcept(ctx: PickContext, tried: readonly Upstream[]): Upstream | undefined;
  pickInPanic(ctx: PickContext, tried: readonly Upstream[] | null): Upstream | undefined;
  /** One of the backup pool's upstreams when this pool has none for the exchange (src/upstream/pool.ts). */
  pickBackup(ctx: PickContext, tried: readonly Upstream[] | null): Upstream | undefined;
  inPanic(): boolean;
  eligible(): readonly Upstream[];
}

/** What an exchange needs from the proxy that carries it. */
export interface ExchangeCore {
  clientClosed(ex: Exchange): void;
  requestBroken(ex: Exchange, status: number, message: string): void;
  internalError(ex: Exchange, err: unknown, status: number): void;
}

/** One proxied exchange: a request and its answer, or a tunnel. */
export class Exchange extends RequestContext implements DownstreamOwner {
  declare route: CompiledRoute | null;
  declare pool: ExchangePool | null;
  declare upstream: Upstream | null;
  readonly core: ExchangeCore;
  /** The attempt in progress (null between attempts): only it can report into the exchange. */
  attempt: Attempt | null = null;
  /** True while this exchange counts in `upstream.inFlight` (a tunnel: for its whole life). */
  holding = false;
  /** Why the previous attempt failed, answered if no other upstream is left to try. */
  retryCause: FulcrumError | null = null;
  /** The listener's forwarding settings (Via token, scheme). */
  forwarding: ForwardingSettings | null = null;
  /** Upstreams tried so far, in order (only kept once a second attempt is needed). */
  tried: Upstream[] | null = null;
  /** The protocol the client asked to switch to (`websocket`), or null. */
  upgrade: string | null = null;
  /** The listener's tunnel slot, held from the upgrade request until the tunnel ends. */
  tunnelSlot: TunnelSlot | null = null;
  /** The open tunnel once a 101 was relayed. */
  tunnel: Tunnel | null = null;
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
  /** The pool whose active and retry counts this exchange is in (the routed one, even on backup). */
  countedPool: ExchangePool | null = null;
  /** True once the request counts as a retry in its pool's budget. */
  retrying = false;
  /** Set while an upstream answer is read and dropped because the request goes elsewhere. */
  discarding = false;
  /** Wait before the retry that follows a discarded answer (its Retry-After). */
  retryDelay = 0;
  timer: NodeJS.Timeout | null = null;
  /** A retry waiting out a Retry-After. */
  timerRetry: NodeJS.Timeout | null = null;
  /** The status of the last upstream answer (also a discarded one). */
  lastStatus = 0;
  /** The first pick was made in panic mode. */
  panicked = false;
  /** Attempts sent again because an HTTP/2 upstream did not process them (not counted against max_attempts). */
  unprocessedRetries = 0;
  /** `performance.now()` when the gRPC caller's deadline (`grpc-timeout`) passes, or 0. */
  grpcDeadlineAt = 0;
  /** The forward proxy serving this exchange (the listener's or the route's), or null. */
  forwarder: ForwardProxy | null = null;
  /** The destination the client asked the forward proxy for, once parsed. */
  forwardTarget: ForwardTarget | null = null;

  constructor(core: ExchangeCore, req: RequestHead, downstream: Downstream, listener: string, peerAddress: string) {
    super(req, downstream, listener, peerAddress, core);
    this.core = core;
  }

  // Downstream events enter the core here (socket events): a throw ends this exchange, not the process.
  onClientGone(): void {
    try {
      this.core.clientClosed(this);
    } catch (err) {
      this.core.internalError(this, err, 502);
    }
  }

  onRequestBroken(status: number, message: string): void {
    try {
      this.core.requestBroken(this, status, message);
    } catch (err) {
      this.core.internalError(this, err, 502);
    }
  }
}
