/**
 * Every timeout and the status it maps to, plus a client that leaves (499), on real sockets.
 * Timeouts are short here; assertions use generous upper bounds, never exact times.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { get, startBackend, startBalancer } from '../helpers/servers.ts';
import { startBlackhole } from '../helpers/blackhole.ts';
import { eventually } from '../helpers/eventually.ts';

for (const transport of ['http1', 'undici', 'node-http'] as const) {
  describe(`timeouts over ${transport}`, () => {
    test('connect timeout: 504 when the only upstream never completes the handshake', async (t) => {
      const port = await startBlackhole(t);
      const lb = await startBalancer(t, { pools: { web: { transport, upstreams: [`http://127.0.0.1:${port}`], timeouts: { connect: '300ms' } } } });
      const started = performance.now();
      const res = await get(`${lb.url}/`);
      const took = performance.now() - started;
      assert.equal(res.status, 504);
      assert.ok(took >= 250 && took < 3000, `took ${took}ms`);
      await eventually(() => lb.ended.length === 1);
      assert.equal(lb.ended[0].error?.code, 'FUL_UPSTREAM_CONNECT_TIMEOUT');
    });

    test('connect timeout on one upstream: the request goes to the other', async (t) => {
      const port = await startBlackhole(t);
      const backend = await startBackend(t, (_req, res) => res.end('alive'));
      const lb = await startBalancer(t, { pools: { web: { transport, upstreams: [`http://127.0.0.1:${port}`, backend.url], timeouts: { connect: '200ms' } } } });
      const res = await get(`${lb.url}/`, { method: 'POST', body: 'x' });
      assert.equal(res.status, 200);
      assert.equal(res.body, 'alive');
    });

    test('response headers timeout: 504', async (t) => {
      const backend = await startBackend(t, () => {});
      const lb = await startBalancer(t, { pools: { web: { transport, upstreams: [backend.url], timeouts: { response_headers: '300ms' } } } });
      const started = performance.now();
      const res = await get(`${lb.url}/`);
      assert.equal(res.status, 504);
      assert.ok(performance.now() - started < 3000);
      await eventually(() => lb.ended.length === 1);
      assert.equal(lb.ended[0].error?.code, 'FUL_UPSTREAM_HEADERS_TIMEOUT');
      assert.equal(backend.requests.length, 1, 'a request the upstream saw is not retried');
    });

    test('idle body timeout: a stalled body is cut, never completed', async (t) => {
      const backend = await startBackend(t, (_req, res) => {
        res.writeHead(200, { 'content-length': '1000' });
        res.write('x'.repeat(10));
      });
      const lb = await startBalancer(t, { pools: { web: { transport, upstreams: [backend.url], timeouts: { idle_body: '300ms' } } } });
      await assert.rejects(get(`${lb.url}/`), /aborted|socket hang up|ECONNRESET/);
      await eventually(() => lb.ended.length === 1);
      assert.equal(lb.ended[0].error?.code, 'FUL_UPSTREAM_BODY_TIMEOUT');
    });

    test('whole-request timeout: 504 before headers', async (t) => {
      const backend = await startBackend(t, (_req, res) => setTimeout(() => res.end('late'), 2000).unref());
      const lb = await startBalancer(t, { pools: { web: { transport, upstreams: [backend.url], timeouts: { request: '300ms' } } } });
      const started = performance.now();
      const res = await get(`${lb.url}/`);
      assert.equal(res.status, 504);
      assert.ok(performance.now() - started < 1500);
      await eventually(() => lb.ended.length === 1);
      assert.equal(lb.ended[0].error?.code, 'FUL_REQUEST_TIMEOUT');
    });

    test('client gone: logged as 499, the upstream request is cancelled', async (t) => {
      let upstreamClosed = false;
      const backend = await startBackend(t, (req) => req.socket.once('close', () => (upstreamClosed = true)));
      const lb = await startBalancer(t, { pools: { web: { transport, upstreams: [backend.url] } } });
      const req = http.request(`${lb.url}/`, { agent: false });
      req.on('error', () => {});
      req.end();
      await eventually(() => backend.requests.length === 1);
      req.destroy();
      await eventually(() => lb.ended.length === 1);
      assert.equal(lb.ended[0].status, 499);
      assert.equal(lb.ended[0].error?.code, 'FUL_CLIENT_ABORTED');
      await eventually(() => upstreamClosed, { what: 'the upstream socket to close' });
      assert.equal(lb.balancer.pools().get('web')!.upstreams[0].inFlight, 0);
    });
  });
}

test('a whole-request timeout answers 504 and keeps the client connection usable', async (t) => {
  const { startRawBackend } = await import('../helpers/servers.ts');
  const net = await import('node:net');
  const hang = await startRawBackend(t, () => {});
  const lb = await startBalancer(t, { pools: { web: { upstreams: [hang.url], timeouts: { request: '300ms' }, outlier_detection: { enabled: false } } } });
  const socket = net.connect(lb.port, '127.0.0.1');
  t.after(() => socket.destroy());
  let data = '';
  socket.on('data', (d) => (data += d));
  socket.write('GET / HTTP/1.1\r\nHost: a\r\n\r\n');
  await eventually(() => /^HTTP\/1\.1 504 /.test(data) && data.includes('request id'), { what: 'the 504' });
  assert.doesNotMatch(data, /connection: close/i);
  data = '';
  socket.write('GET / HTTP/1.1\r\nHost: a\r\n\r\n');
  await eventually(() => /^HTTP\/1\.1 504 /.test(data), { what: 'a second answer on the same connection' });
  assert.equal(lb.balancer.pools().get('web')!.upstreams[0].inFlight, 0);
});

test('node-http: an unasked-for 101 from the upstream is a 502, not a hang', async (t) => {
  const { startRawBackend } = await import('../helpers/servers.ts');
  const raw = await startRawBackend(t, (socket) => socket.once('data', () => socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n')));
  const lb = await startBalancer(t, { pools: { web: { transport: 'node-http', upstreams: [raw.url], outlier_detection: { enabled: false } } } });
  const res = await get(`${lb.url}/`);
  assert.equal(res.status, 502);
  const pool = lb.balancer.pools().get('web')!;
  assert.equal(pool.upstreams[0].inFlight, 0);
  assert.equal(pool.active, 0);
});
