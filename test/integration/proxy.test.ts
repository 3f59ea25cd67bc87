/**
 * The reverse proxy end to end, on real sockets, for both transports: routing, header rules,
 * streaming bodies, error statuses.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { get, rawExchange, startBackend, startBalancer, closedPort } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';

for (const transport of ['http1', 'undici', 'node-http'] as const) {
  describe(`proxy over ${transport}`, () => {
    test('spreads GETs round-robin and says which backend answered', async (t) => {
      const backends = await Promise.all(['a', 'b', 'c'].map((id) => startBackend(t, (_req, res) => res.end(id))));
      const lb = await startBalancer(t, { pools: { web: { transport, upstreams: backends.map((b) => b.url) } } });
      const seen: string[] = [];
      for (let i = 0; i < 6; i++) seen.push((await get(`${lb.url}/`)).body);
      assert.deepEqual(seen, ['a', 'b', 'c', 'a', 'b', 'c']);
    });

    test('drops hop-by-hop headers both ways and sets forwarding headers', async (t) => {
      const backend = await startBackend(t, (_req, res) => {
        res.writeHead(200, [
          'Connection', 'X-Secret',
          'X-Secret', 'hidden',
          'Keep-Alive', 'timeout=5',
          'Proxy-Connection', 'keep-alive',
          'Upgrade', 'h2c',
          'X-Kept', 'yes',
          'Set-Cookie', 'a=1',
          'Set-Cookie', 'b=2',
        ]);
        res.end('ok');
      });
      const lb = await startBalancer(t, { pools: { web: { transport, upstreams: [backend.url] } } });
      const res = await get(`${lb.url}/path?q=1`, {
        headers: {
          Connection: 'keep-alive, X-Hop',
          'X-Hop': 'drop me',
          'Keep-Alive': 'timeout=100',
          'Proxy-Connection': 'keep-alive',
          TE: 'trailers, deflate',
          Upgrade: 'websocket',
          'X-Forwarded-For': '6.6.6.6',
          'X-Forwarded-Proto': 'https',
          'X-Forwarded-Host': 'evil.example',
          'X-Request-Id': 'client-chosen',
          Forwarded: 'for=6.6.6.6',
          'X-End-To-End': 'kept',
          Host: 'shop.example:8443',
        },
      });
      assert.equal(res.status, 200);
      const seen = backend.requests[0].headers;
      assert.equal(seen['x-hop'], undefined);
      assert.equal(seen['keep-alive'], undefined);
      assert.equal(seen['proxy-connection'], undefined);
      assert.equal(seen['upgrade'], undefined);
      assert.equal(seen['te'], 'trailers');
      assert.equal(seen['forwarded'], undefined);
      assert.equal(seen['x-end-to-end'], 'kept');
      assert.equal(seen.host, 'shop.example:8443');
      assert.equal(seen['x-forwarded-for'], '127.0.0.1');
      assert.equal(seen['x-forwarded-proto'], 'http');
      assert.equal(seen['x-forwarded-host'], 'shop.example:8443');
      assert.equal(seen.via, '1.1 fulcrum');
      assert.match(String(seen['x-request-id']), /^[0-9a-z]+-[0-9a-z]+-[0-9a-z]+$/);
      assert.notEqual(seen['x-request-id'], 'client-chosen');
      assert.equal(backend.requests[0].url, '/path?q=1');
      // Response side.
      assert.equal(res.headers['x-secret'], undefined);
      assert.equal(res.headers['proxy-connection'], undefined);
      assert.equal(res.headers['upgrade'], undefined);
      assert.equal(res.headers['x-kept'], 'yes');
      assert.deepEqual(res.headers['set-cookie'], ['a=1', 'b=2']);
      assert.equal(res.headers['x-request-id'], seen['x-request-id']);
      assert.equal(res.headers.via, '1.1 fulcrum');
    });

    test('believes forwarding headers only from trusted proxies', async (t) => {
      const backend = await startBackend(t, (_req, res) => res.end('ok'));
      const lb = await startBalancer(t, {
        listeners: [{ host: '127.0.0.1', port: 0, trusted_proxies: ['127.0.0.0/8'] }],
        pools: { web: { transport, upstreams: [backend.url] } },
      });
      await get(`${lb.url}/`, { headers: { 'X-Forwarded-For': '203.0.113.7, 10.1.1.1', 'X-Forwarded-Proto': 'https', 'X-Request-Id': 'edge-42' } });
      const seen = backend.requests[0].headers;
      assert.equal(seen['x-forwarded-for'], '203.0.113.7, 10.1.1.1, 127.0.0.1');
      assert.equal(seen['x-forwarded-proto'], 'https');
      assert.equal(seen['x-request-id'], 'edge-42');
      assert.equal(lb.ended[0].clientAddress, '10.1.1.1');
    });

    test('keeps Host by default and rewrites it when the pool says so', async (t) => {
      const backend = await startBackend(t, (req, res) => res.end(req.headers.host));
      const lb = await startBalancer(t, {
        routes: [
          { path_prefix: '/up', pool: 'up' },
          { path_prefix: '/fixed', pool: 'fixed' },
          { pool: 'keep' },
        ],
        pools: {
          keep: { transport, upstreams: [backend.url] },
          up: { transport, upstreams: [backend.url], host_header: 'upstream' },
          fixed: { transport, upstreams: [backend.url], host_header: 'internal.svc' },
        },
      });
      assert.equal((await get(`${lb.url}/`, { headers: { host: 'public.example' } })).body, 'public.example');
      assert.equal((await get(`${lb.url}/up/x`, { headers: { host: 'public.example' } })).body, `127.0.0.1:${backend.port}`);
      assert.equal((await get(`${lb.url}/fixed`, { headers: { host: 'public.example' } })).body, 'internal.svc');
    });

    test('routes by host and path prefix; 404 for an unknown path, 421 for a foreign host', async (t) => {
      const api = await startBackend(t, (_req, res) => res.end('api'));
      const www = await startBackend(t, (_req, res) => res.end('www'));
      const lb = await startBalancer(t, {
        routes: [
          { host: 'api.example', path_prefix: '/v1', pool: 'api' },
          { host: ['www.example', '*.cdn.example'], pool: 'www' },
        ],
        pools: { api: { transport, upstreams: [api.url] }, www: { transport, upstreams: [www.url] } },
      });
      assert.equal((await get(`${lb.url}/v1/users`, { headers: { host: 'api.example' } })).body, 'api');
      assert.equal((await get(`${lb.url}/v1`, { headers: { host: 'API.example:80' } })).body, 'api');
      assert.equal((await get(`${lb.url}/x`, { headers: { host: 'img.cdn.example' } })).body, 'www');
      const notFound = await get(`${lb.url}/v2`, { headers: { host: 'api.example' } });
      assert.equal(notFound.status, 404);
      assert.equal((await get(`${lb.url}/v1x`, { headers: { host: 'api.example' } })).status, 404);
      const foreign = await get(`${lb.url}/`, { headers: { host: 'other.example' } });
      assert.equal(foreign.status, 421);
      assert.match(foreign.body, /no route for host "other.example"/);
      assert.equal(api.requests.length + www.requests.length, 3);
    });

    test('streams a request body to the backend and the response back', async (t) => {
      const backend = await startBackend(t, (req, res) => {
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        req.pipe(res);
      });
      const lb = await startBalancer(t, { pools: { web: { transport, upstreams: [backend.url] } } });
      const body = Buffer.alloc(3 * 1024 * 1024 + 7, 'z');
      const res = await get(`${lb.url}/echo`, { method: 'POST', body });
      assert.equal(res.status, 200);
      assert.equal(res.body.length, body.length);
      await eventually(() => lb.ended.length === 1);
      assert.equal(lb.ended[0].bytesIn, body.length);
      assert.equal(lb.ended[0].bytesOut, body.length);
    });

    test('malformed requests get a 4xx and never reach a backend', async (t) => {
      const backend = await startBackend(t, (_req, res) => res.end('ok'));
      const lb = await startBalancer(t, { pools: { web: { transport, upstreams: [backend.url] } } });
      assert.match(await rawExchange(lb.port, 'GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n'), /^HTTP\/1\.1 400 /);
      assert.match(await rawExchange(lb.port, 'GET / HTTP/1.1\r\n\r\n'), /^HTTP\/1\.1 400 /);
      assert.match(await rawExchange(lb.port, 'BLAH\r\n\r\n'), /^HTTP\/1\.1 400 /);
      assert.match(await rawExchange(lb.port, 'GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'), /^HTTP\/1\.1 400 /);
      assert.match(await rawExchange(lb.port, `GET / HTTP/1.1\r\nHost: a\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`), /^HTTP\/1\.1 431 /);
      assert.equal(backend.requests.length, 0);
      // obs-text in a header value: forwarded as is or refused with 400, never a 5xx.
      assert.match(await rawExchange(lb.port, 'GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Name: caf\xe9\r\n\r\n'), /^HTTP\/1\.1 (200|400) /);
      assert.equal((await get(`${lb.url}/`)).status, 200, 'the listener still serves after bad input');
    });

    test('a refused connection goes to another upstream; all refused is 502', async (t) => {
      const backend = await startBackend(t, (_req, res) => res.end('alive'));
      const dead = `http://127.0.0.1:${await closedPort()}`;
      const lb = await startBalancer(t, { pools: { web: { transport, upstreams: [dead, backend.url] } } });
      for (let i = 0; i < 4; i++) {
        const res = await get(`${lb.url}/`, { method: 'POST', body: 'payload' });
        assert.equal(res.status, 200);
        assert.equal(res.body, 'alive');
      }
      assert.equal(backend.requests.length, 4);
      const only = await startBalancer(t, { pools: { web: { transport, upstreams: [dead] } } });
      const res = await get(`${only.url}/`);
      assert.equal(res.status, 502);
      assert.match(res.body, /connect failed \(ECONNREFUSED\)/);
      await eventually(() => only.ended.length === 1);
      assert.equal(only.ended[0].error?.code, 'FUL_UPSTREAM_CONNECT_REFUSED');
    });

    test('no available upstream is a fast 503 with a clear body', async (t) => {
      const backend = await startBackend(t, (_req, res) => res.end('ok'));
      const lb = await startBalancer(t, { pools: { web: { transport, upstreams: [backend.url] } } });
      lb.balancer.pools().get('web')!.upstreams[0].setEnabled(false, 'test');
      const started = performance.now();
      const res = await get(`${lb.url}/`);
      assert.equal(res.status, 503);
      assert.ok(performance.now() - started < 1000);
      assert.match(res.body, /no available upstream in pool "web"/);
      assert.equal(res.headers['retry-after'], '1');
      assert.equal(backend.requests.length, 0);
    });

    test('garbage from the backend is a 502 and the process stays up', async (t) => {
      const { startRawBackend } = await import('../helpers/servers.ts');
      const raw = await startRawBackend(t, (socket) => socket.once('data', () => socket.end('NOT HTTP AT ALL\r\n\r\n')));
      const lb = await startBalancer(t, { pools: { web: { transport, upstreams: [raw.url] } } });
      const res = await get(`${lb.url}/`);
      assert.equal(res.status, 502);
      await eventually(() => lb.ended.length === 1);
      assert.equal(lb.ended[0].error?.code, 'FUL_UPSTREAM_PROTOCOL_ERROR');
    });

    test('a reset mid-body cuts the response instead of completing it', async (t) => {
      const { startRawBackend } = await import('../helpers/servers.ts');
      const raw = await startRawBackend(t, (socket) =>
        socket.once('data', () => {
          socket.write('HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n' + 'x'.repeat(1000), () => socket.resetAndDestroy());
        }),
      );
      const lb = await startBalancer(t, { pools: { web: { transport, upstreams: [raw.url] } } });
      await assert.rejects(get(`${lb.url}/`), /aborted|socket hang up|ECONNRESET/);
      await eventually(() => lb.ended.length === 1);
      assert.equal(lb.ended[0].status, 200);
      assert.equal(lb.ended[0].error?.source, 'upstream');
    });
  });
}
