/**
 * The node:http transport: one keep-alive `http.Agent` per upstream. Kept beside undici so the
 * benchmark can compare the two on each machine (undici measured faster and is the default).
 * The request body is piped only once the socket is connected, so a connect failure leaves it
 * unread and another upstream can be tried.
 */
import http from 'node:http';
import net, { type Socket } from 'node:net';
import { heldWriteError, keepReadingAfterWriteError } from './upstream-socket.ts';
import type { PoolSettings } from '../config/schema.ts';
import type { RequestContext } from '../core/context.ts';
import type { Upstream } from '../upstream/upstream.ts';
import { effectiveIdle, socketReusableAfter, type ExchangeSink, type Transport } from './transport.ts';

function timeoutError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

/** Keep-alive agents toward every upstream of one Fulcrum pool. */
export class NodeHttpTransport implements Transport {
  private readonly settings: PoolSettings;
  private readonly agents = new Map<Upstream, http.Agent>();

  constructor(settings: PoolSettings) {
    this.settings = settings;
  }

  private agentFor(upstream: Upstream): http.Agent {
    let agent = this.agents.get(upstream);
    if (agent) return agent;
    const { keepalive } = this.settings;
    agent = new http.Agent({
      keepAlive: true,
      // Most recently used first, so surplus idle sockets age out instead of being kept warm.
      scheduling: 'lifo',
      maxSockets: Math.min(keepalive.max_sockets > 0 ? keepalive.max_sockets : Infinity, upstream.maxConnections),
      // Idle sockets are closed this long after last use; an upstream's Keep-Alive hint (less the margin) can shorten it.
      timeout: effectiveIdle(keepalive.idle_timeout, keepalive.safety_margin),
      agentKeepAliveTimeoutBuffer: keepalive.safety_margin,
    } as http.AgentOptions);
    // Sockets that keep reading after a failed write: an answer sent before the upload ended is not lost.
    agent.createConnection = (options, callback) => keepReadingAfterWriteError(net.createConnection(options as net.NetConnectOpts, callback as () => void));
    this.agents.set(upstream, agent);
    return agent;
  }

  forward(ctx: RequestContext, upstream: Upstream, sink: ExchangeSink): void {
    const { timeouts } = this.settings;
    const attempt = ctx.attempts;
    const stale = (): boolean => ctx.done || ctx.attempts !== attempt;
    let sent = false;
    let failed = false;
    let connectTimer: NodeJS.Timeout | null = null;
    let ires: http.IncomingMessage | null = null;
    const fail = (err: Error): void => {
      if (failed) return;
      // A response read to its end stands (a 204 followed by stray bytes, a write that failed after the
      // answer): Node drops the socket, 'end' still comes. Destroying the request now would discard it.
      if (ires !== null && ires.complete) return;
      failed = true;
      if (connectTimer) clearTimeout(connectTimer);
      creq.destroy();
      if (ctx.attempts === attempt) sink.onError(ctx, err, sent, creq.reusedSocket);
    };
    const creq = http.request({
      agent: this.agentFor(upstream),
      host: upstream.hostname,
      port: upstream.port,
      method: ctx.req.method,
      path: ctx.upstreamPath,
      headers: ctx.upstreamHeaders as unknown as http.OutgoingHttpHeaders,
      setHost: false,
    });
    ctx.abort = (reason) => fail(reason);
    creq.on('error', fail);
    // Interim answers (100 Continue, 103 Early Hints, ...): relayed ahead of the final one.
    creq.on('information', (info: http.InformationEvent) => {
      if (!stale()) sink.onInformational(ctx, info.statusCode, info.statusMessage, info.rawHeaders);
    });
    // An unasked-for 101: Node destroys the socket and emits neither 'response' nor 'error'.
    creq.on('upgrade', (_res, socket: Socket) => {
      socket.destroy();
      fail(Object.assign(new Error('upstream switched protocols without being asked'), { code: 'UND_ERR_INFO' }));
    });
    // Whatever else ends the exchange without an answer must not leave the request hanging.
    creq.on('close', () => {
      if (!failed && ires === null) fail(Object.assign(new Error('upstream closed the connection'), { code: 'ECONNRESET' }));
    });
    // One socket timeout, re-armed per phase: response headers first, then body idleness.
    let waitingForHeaders = true;
    creq.on('timeout', () =>
      fail(waitingForHeaders ? timeoutError('UND_ERR_HEADERS_TIMEOUT', 'headers timeout') : timeoutError('UND_ERR_BODY_TIMEOUT', 'body timeout')),
    );
    const startBody = (): void => {
      sent = true;
      if (connectTimer) clearTimeout(connectTimer);
      creq.setTimeout(timeouts.response_headers);
      const body = ctx.body;
      if (body === null) creq.end();
      else if (Buffer.isBuffer(body)) creq.end(body);
      else body.pipe(creq);
    };
    creq.on('socket', (socket: Socket) => {
      if (stale()) return fail(new Error('request already finished'));
      if (!socket.connecting) return startBody();
      connectTimer = setTimeout(() => fail(timeoutError('UND_ERR_CONNECT_TIMEOUT', `connect timeout after ${timeouts.connect}ms`)), timeouts.connect);
      socket.once('connect', startBody);
    });
    creq.on('response', (response: http.IncomingMessage) => {
      ires = response;
      if (stale()) return fail(new Error('request already finished'));
      waitingForHeaders = false;
      creq.setTimeout(timeouts.idle_body);
      // Node then closes the socket after this answer instead of handing it back to the agent.
      if (!socketReusableAfter(response.statusCode!, response.rawHeaders)) creq.shouldKeepAlive = false;
      if (!sink.onResponse(ctx, response.statusCode!, response.rawHeaders, response.statusMessage)) {
        ires = null;
        return fail(new Error('response not writable'));
      }
      const res = ctx.res;
      // While the client is slow the upstream is not idle: the body timer stops until drain.
      const resume = (): void => {
        creq.setTimeout(timeouts.idle_body);
        response.resume();
      };
      response.on('data', (chunk: Buffer) => {
        if (stale()) return;
        if (!sink.onData(ctx, chunk)) {
          creq.setTimeout(0);
          response.pause();
          res.once('drain', resume);
        }
      });
      response.on('end', () => {
        if (failed || stale()) return;
        if (!response.complete) return fail(Object.assign(new Error('upstream closed mid-body'), { code: 'ECONNRESET' }));
        failed = true;
        sink.onEnd(ctx, response.rawTrailers);
        // The upload was cut short (the upstream answered first): this socket is mid-request, never reused;
        // nor one whose writes failed (the upstream reset it, its answer was still read).
        if (!creq.writableFinished) creq.destroy();
        else if (heldWriteError(creq.socket) !== undefined) creq.socket?.destroy();
      });
      response.on('aborted', () => fail(Object.assign(new Error('upstream closed mid-body'), { code: 'ECONNRESET' })));
      response.on('error', fail);
    });
  }

  /** node:http passes `Expect: 100-continue` and relays the upstream's 100 ('information'). */
  readonly relaysContinue = true;

  async close(): Promise<void> {
    // Idle sockets go now; busy ones when their request ends, so a reload cuts nothing.
    for (const agent of this.agents.values()) {
      for (const list of Object.values(agent.freeSockets)) for (const socket of list ?? []) socket.destroy();
      agent.on('free', (socket: Socket) => socket.destroy());
    }
    this.agents.clear();
  }
}
