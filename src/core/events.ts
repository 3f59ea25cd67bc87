/**
 * The data path publishes; metrics, logs, passive health and the dashboard subscribe.
 * Channels are `node:diagnostics_channel` channels (undici's habit): publishing to a channel
 * with no subscriber costs one property read, so the proxy never knows who listens.
 */
import diagnosticsChannel from 'node:diagnostics_channel';
import type { RequestContext, UpstreamRef } from './context.ts';
import type { FulcrumError } from '../errors.ts';

/** Published once per finished request (served, failed or aborted). */
export const requestEnd = diagnosticsChannel.channel('fulcrum:request:end');
/** Published when an attempt against an upstream fails (before any retry decision). */
export const upstreamError = diagnosticsChannel.channel('fulcrum:upstream:error');
/** Published when an attempt against an upstream ends: a response (any status) or a failure. */
export const upstreamResult = diagnosticsChannel.channel('fulcrum:upstream:result');
/** Published when a request is sent again (another attempt), with why. */
export const requestRetry = diagnosticsChannel.channel('fulcrum:request:retry');
/** Published when an upstream's health, enabled or draining state changes. */
export const upstreamState = diagnosticsChannel.channel('fulcrum:upstream:state');
/** Published after a configuration was (or failed to be) applied. */
export const configReload = diagnosticsChannel.channel('fulcrum:config:reload');

/** Published when an exchange became a tunnel (a relayed 101). */
export const tunnelOpen = diagnosticsChannel.channel('fulcrum:tunnel:open');
/** Published when a tunnel closed (both sockets), before its `fulcrum:request:end`. */
export const tunnelClose = diagnosticsChannel.channel('fulcrum:tunnel:close');

/** Message of `fulcrum:tunnel:open` and `fulcrum:tunnel:close` (`reason` on close: client, upstream, error, idle, drained, removed, shutdown). */
export interface TunnelEvent { ctx: RequestContext; reason?: string }
/** Message of `fulcrum:request:end`. */
export interface RequestEndEvent { ctx: RequestContext }
/** Message of `fulcrum:upstream:error`. */
export interface UpstreamErrorEvent<U extends UpstreamRef = UpstreamRef> { ctx: RequestContext; upstream: U; error: Error }
/** Message of `fulcrum:upstream:result`: `failure` is set for connect errors, resets and timeouts. */
export interface UpstreamResultEvent<U extends UpstreamRef = UpstreamRef> { upstream: U; status: number; failure: FulcrumError | null }
/** Message of `fulcrum:request:retry`. */
export interface RequestRetryEvent<U extends UpstreamRef = UpstreamRef> { ctx: RequestContext; upstream: U; reason: string }
/** Message of `fulcrum:upstream:state`. */
export interface UpstreamStateEvent<U extends UpstreamRef = UpstreamRef> {
  upstream: U;
  field: 'health' | 'enabled' | 'draining' | 'ejected' | 'circuit';
  from: string | boolean;
  to: string | boolean;
  reason: string;
  pool: string;
}
/** Message of `fulcrum:pool:panic`: a pool entered or left panic mode. */
export interface PoolPanicEvent<U extends UpstreamRef = UpstreamRef> {
  pool: string;
  /** The pool's upstreams, so a balancer logs only its own pools (channels are process-wide). */
  upstreams: readonly U[];
  panic: boolean;
  available: number;
  allowed: number;
  threshold: number;
}
/** Published when a pool enters or leaves panic mode (Envoy's healthy_panic_threshold). */
export const poolPanic = diagnosticsChannel.channel('fulcrum:pool:panic');
/** Message of `fulcrum:config:reload`. */
export interface ConfigReloadEvent { ok: boolean; source: string; error?: Error }

/** Published for each GOAWAY an HTTP/2 upstream sends Fulcrum (src/transport/http2.ts). */
export const http2Goaway = diagnosticsChannel.channel('fulcrum:http2:goaway');
/** Message of `fulcrum:http2:goaway` (`direction` is `'upstream'`: the upstream sent it). */
export interface Http2GoawayEvent {
  direction: 'upstream';
  /** The upstream's id (`host:port`). */
  upstream: string;
  errorCode: number;
  /** RFC 9113 name of `errorCode`. */
  errorName: string;
  lastStreamId: number;
}

/** Published when a TCP listener's connection was admitted and routed to a pool (before the upstream connect). */
export const tcpOpen = diagnosticsChannel.channel('fulcrum:tcp:open');
/** Published once when a TCP connection ended (both sockets closed, the upstream released). */
export const tcpClose = diagnosticsChannel.channel('fulcrum:tcp:close');
/** Message of `fulcrum:tcp:open` and `fulcrum:tcp:close` (src/proxy/tcp-proxy.ts `TcpConnection`). */
export interface TcpConnectionEvent<U extends UpstreamRef = UpstreamRef> {
  /** The TcpProxy that carries it (channels are process-wide: a balancer counts only its own). */
  readonly carrier: object;
  readonly id: number;
  readonly listener: string;
  readonly client: { readonly address: string; readonly port: number; readonly sni: string | null };
  readonly pool: { readonly name: string };
  readonly upstream: U | null;
  /** Bytes client to upstream, and upstream to client. */
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly attempts: number;
  /** Accept to close (or to now), in ms. */
  readonly durationMs: number;
  /** `performance.now()` when the upstream connected (0: never). */
  readonly connectedAt: number;
  readonly startedAt: number;
  /** Set on close: client, upstream, client_error, upstream_error, idle, connect_failed, no_upstream, drained, removed, shutdown. */
  readonly reason: string | null;
  readonly error: string | null;
}

/** Published once per forward-proxy exchange whose destination was decided, and for each refused Proxy-Authorization (src/forward/forward-proxy.ts). */
export const forwardDecision = diagnosticsChannel.channel('fulcrum:forward:decision');
/**
 * Message of `fulcrum:forward:decision`: `ctx.forward` holds the kind, the decision, the rule
 * (null: none matched) and the reason of a denial (`no_rule`, `denied_by_rule`, `special_address`,
 * `port`, `bad_host`, `resolve_failed`, or `auth`), all from fixed sets or the configuration.
 */
export interface ForwardDecisionEvent { ctx: RequestContext }
