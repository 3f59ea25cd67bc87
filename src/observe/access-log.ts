/**
 * The access log: one line per finished request (a WebSocket tunnel: one line when it closes), written by a subscriber of
 * `fulcrum:request:end`, never by the proxy itself.
 */
import { requestEnd, type RequestEndEvent } from '../core/events.ts';
import type { Logger } from './logger.ts';

/**
 * Subscribes the access log for the exchanges `carrier` carries (null: every exchange in the
 * process); returns the function that unsubscribes it.
 */
export function startAccessLog(logger: Logger, carrier: object | null = null): () => void {
  const log = logger.child({ log: 'access' });
  const onEnd = (message: unknown): void => {
    const { ctx } = message as RequestEndEvent;
    if (carrier !== null && ctx.carrier !== carrier) return;
    if (ctx.droppedHeaders !== null && log.isLevelEnabled('debug')) {
      log.debug({ request_id: ctx.requestIdForUpstream ?? ctx.id, listener: ctx.listener, headers: ctx.droppedHeaders }, `dropped request header(s) with "_" in the name: ${ctx.droppedHeaders.join(', ')}`);
    }
    const level = ctx.status >= 500 ? 'warn' : 'info';
    if (!log.isLevelEnabled(level)) return;
    const line = {
      request_id: ctx.requestIdForUpstream ?? ctx.id,
      method: ctx.req.method,
      path: ctx.req.url,
      status: ctx.status,
      upstream: ctx.upstream?.id ?? null,
      pool: ctx.pool?.name ?? null,
      duration_ms: Math.round(ctx.duration * 100) / 100,
      bytes_in: ctx.bytesIn,
      bytes_out: ctx.bytesOut,
      client: ctx.clientAddress,
      listener: ctx.listener,
      attempts: ctx.attempts,
      error: ctx.error ? ctx.error.code : undefined,
      reason: ctx.error ? ctx.error.message : undefined,
      // A WebSocket tunnel logs once, when it ends: how long it was open and why it closed.
      tunnel_close: ctx.tunnelClose ?? undefined,
    };
    const text = ctx.tunnelClose === null ? `${ctx.req.method} ${ctx.req.url} ${ctx.status}` : `${ctx.req.method} ${ctx.req.url} ${ctx.status} tunnel closed (${ctx.tunnelClose}) after ${(ctx.duration / 1000).toFixed(1)}s`;
    log[level](line, text);
  };
  requestEnd.subscribe(onEnd);
  return () => requestEnd.unsubscribe(onEnd);
}
