/**
 * Nothing async escapes: a throw from Fulcrum's own code on any asynchronous path (a guard's
 * continuation, a delayed retry, a transport callback, a body event, a request timer, a WebSocket
 * switch) ends that one exchange with a 500/502 (or a cut, once the answer started) and an error
 * log line; the process and the next request carry on. The faults are injected into the real
 * objects of a running balancer (its pool's transport, the exchange's downstream).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { WebSocketServer } from 'ws';
import { startBackend, startBalancer, get, type TestBalancer } from '../helpers/servers.ts';
import { startRedisServer } from '../helpers/redis-server.ts';
import { eventually } from '../helpers/eventually.ts';
import type { Transport, UpstreamAttempt } from '../../src/transport/transport.ts';
import type { Attempt } from '../../src/proxy/attempt.ts';

/** Counts uncaught errors while a test runs (there must be none). */
function watchUncaught(t: TestContext): () => number {
  let count = 0;
  const onError = (): void => void count++;
  process.on('uncaughtException', onError);
  process.on('unhandledRejection', onError);
  t.after(() => {
    process.off('uncaughtException', onError);
    process.off('unhandledRejection', onError);
  });
  return () => count;
}

/** Runs `inject` on every attempt of pool `name` before the transport gets it (`calls` counts them). */
function injectInto(lb: TestBalancer, name: string, inject: (attempt: Attempt, call: number) => void): void {
  const transport = lb.balancer.pools().get(name)!.transport as Transport & { forward(a: UpstreamAttempt): void };
  const real = transport.forward.bind(transport);
  let calls = 0;
  transport.forward = (attempt) => {
    inject(attempt as Attempt, ++calls);
    real(attempt);
  };
}

const boom = (where: string) => (): never => {
  throw new Error(`injected fault in ${where}`);
};

/** An error log line naming the injected fault. */
async function loggedFault(lb: TestBalancer, where: string): Promise<void> {
  await eventually(() => lb.logs.some((l) => l.includes('"level":50') && l.includes(`injected fault in ${where}`)), { what: `an error log line for ${where}` });
}

/** After the fault: the next request is served and the upstream holds nothing. */
async function carriesOn(lb: TestBalancer, pool = 'app'): Promise<void> {
  const transport = lb.balancer.pools().get(pool)!.transport as Transport & { forward?: unknown };
  delete (transport as { forward?: unknown }).forward; // the prototype's forward again
  assert.equal((await get(`${lb.url}/next`)).status, 200);
  await eventually(() => lb.balancer.pools().get(pool)!.upstreams.every((u) => u.inFlight === 0), { what: 'no request held on an upstream' });
}

test('a throw in a guard continuation (a Redis rate limit answered) ends that request with 500', async (t) => {
  const uncaught = watchUncaught(t);
  const redis = await startRedisServer(t);
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const lb = await startBalancer(t, {
    rate_limit: { redis: { url: redis.url, timeout: '1s' } },
    routes: [{ pool: 'app', rate_limits: [{ name: 'g', rate: 1000, per: '1s', key: ['ip'], store: 'redis' }] }],
    pools: { app: { upstreams: [backend.url] } },
  });
  injectInto(lb, 'app', boom('forward after the guard'));
  const res = await get(`${lb.url}/`);
  assert.equal(res.status, 500);
  assert.match(res.body, /internal error: injected fault in forward after the guard/);
  await loggedFault(lb, 'forward after the guard');
  await carriesOn(lb);
  assert.equal(uncaught(), 0);
});

test('a throw in a delayed retry (after Retry-After) ends that request with 500', async (t) => {
  const uncaught = watchUncaught(t);
  const busy = await startBackend(t, (_req, res) => res.writeHead(503, { 'retry-after': '1' }).end('busy'));
  const ok = await startBackend(t, (_req, res) => res.end('ok'));
  const lb = await startBalancer(t, { pools: { app: { upstreams: [busy.url, ok.url], policy: 'round-robin' } } });
  injectInto(lb, 'app', (_attempt, call) => {
    if (call === 2) boom('the delayed retry')();
  });
  // Round-robin: the first attempt goes to `busy` (503 with Retry-After: 1), the retry waits a second, then throws.
  const res = await get(`${lb.url}/`);
  assert.equal(res.status, 500);
  assert.equal(busy.requests.length, 1);
  assert.equal(ok.requests.length, 0);
  await loggedFault(lb, 'the delayed retry');
  await carriesOn(lb);
  assert.equal(uncaught(), 0);
});

test('a throw while relaying the response body (a transport callback) cuts that response, nothing else', async (t) => {
  for (const transport of ['http1', 'undici', 'node-http'] as const) {
    await t.test(transport, async (t) => {
      const uncaught = watchUncaught(t);
      const backend = await startBackend(t, (_req, res) => {
        res.writeHead(200, { 'content-length': '10' });
        res.write('hello');
        setTimeout(() => res.end('world'), 20);
      });
      const lb = await startBalancer(t, { pools: { app: { upstreams: [backend.url], transport } } });
      injectInto(lb, 'app', (attempt) => {
        attempt.exchange.downstream.body = boom('the response body');
      });
      await assert.rejects(get(`${lb.url}/`), /aborted|socket hang up|ECONNRESET/, 'the client sees the response cut, never complete');
      await loggedFault(lb, 'the response body');
      await carriesOn(lb);
      assert.equal(uncaught(), 0);
    });
  }
});

test('a throw when the response ends or its head is written gives 502, never a crash', async (t) => {
  const uncaught = watchUncaught(t);
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const lb = await startBalancer(t, { pools: { app: { upstreams: [backend.url] } } });
  injectInto(lb, 'app', (attempt) => {
    attempt.exchange.downstream.head = boom('the response head');
  });
  const res = await get(`${lb.url}/`);
  assert.equal(res.status, 502);
  await carriesOn(lb);
  injectInto(lb, 'app', (attempt) => {
    attempt.exchange.downstream.end = boom('the response end');
  });
  // The head and body went out; the end threw: the response is cut rather than left hanging.
  await assert.rejects(get(`${lb.url}/`), /aborted|socket hang up|ECONNRESET/);
  await loggedFault(lb, 'the response end');
  await carriesOn(lb);
  assert.equal(uncaught(), 0);
});

test('a throw in a request-body event (the client gives up mid-upload) still ends the request and releases the upstream', async (t) => {
  const uncaught = watchUncaught(t);
  const backend = await startBackend(t, (req, res) => {
    req.resume();
    req.on('end', () => res.end('ok'));
  });
  const lb = await startBalancer(t, { pools: { app: { upstreams: [backend.url] } } });
  let started = false;
  injectInto(lb, 'app', (attempt) => {
    started = true;
    attempt.exchange.downstream.fail = boom('the error answer');
  });
  const socket = net.connect(lb.port, '127.0.0.1');
  socket.on('error', () => {});
  socket.write('POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n');
  await eventually(() => started, { what: 'the upload to start' });
  socket.destroy();
  await eventually(() => lb.ended.length === 1, { what: 'the request to end' });
  await carriesOn(lb);
  assert.equal(uncaught(), 0);
});

test('a throw in the request timer (timeouts.request) still answers and releases the upstream', async (t) => {
  const uncaught = watchUncaught(t);
  const backend = await startBackend(t, (req, res) => {
    if (req.url === '/slow') setTimeout(() => res.end('late'), 2000);
    else res.end('ok');
  });
  const lb = await startBalancer(t, { pools: { app: { upstreams: [backend.url], timeouts: { request: '100ms' } } } });
  injectInto(lb, 'app', (attempt) => {
    const downstream = attempt.exchange.downstream;
    const real = downstream.fail.bind(downstream);
    let first = true;
    // The timeout's own answer throws once; the error path then answers 502.
    downstream.fail = (...args) => {
      if (first) {
        first = false;
        boom('the timeout answer')();
      }
      real(...args);
    };
  });
  const res = await get(`${lb.url}/slow`).catch((err: Error) => err);
  assert.ok(res instanceof Error || res.status === 502 || res.status === 504, `an answer or a cut, got ${res instanceof Error ? res.message : res.status}`);
  await eventually(() => lb.ended.some((c) => c.req.url === '/slow'), { what: 'the timed-out request to end' });
  await carriesOn(lb);
  assert.equal(uncaught(), 0);
});

test('a throw while switching protocols (WebSocket 101) gives 502 and closes both sides', async (t) => {
  const uncaught = watchUncaught(t);
  const upstreamSockets: net.Socket[] = [];
  const server = http.createServer((_req, res) => res.end('ok'));
  const wss = new WebSocketServer({ server });
  wss.on('connection', (_ws, req) => upstreamSockets.push(req.socket));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => { wss.close(); server.close(() => resolve()); server.closeAllConnections(); }));
  const lb = await startBalancer(t, { pools: { app: { upstreams: [`http://127.0.0.1:${(server.address() as net.AddressInfo).port}`] } } });
  injectInto(lb, 'app', (attempt) => {
    attempt.exchange.downstream.switchProtocols = boom('the protocol switch');
  });
  const key = 'dGhlIHNhbXBsZSBub25jZQ==';
  const answer = await new Promise<string>((resolve) => {
    const socket = net.connect(lb.port, '127.0.0.1', () => socket.write(`GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`));
    let text = '';
    socket.on('data', (d) => (text += d));
    socket.on('close', () => resolve(text));
    socket.on('error', () => {});
  });
  assert.match(answer, /^HTTP\/1\.1 502 /);
  await eventually(() => upstreamSockets.length === 1 && upstreamSockets[0].destroyed, { what: 'the upstream side of the tunnel to close' });
  await loggedFault(lb, 'the protocol switch');
  await carriesOn(lb);
  assert.equal(uncaught(), 0);
});
