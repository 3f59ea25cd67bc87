/**
 * HTTP/2 from clients: h2 by ALPN on https listeners, h2c with prior knowledge on http ones,
 * each stream one exchange through the core (balanced per stream), driven by curl and Node's
 * http2 client.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startBackend, startBalancer } from '../helpers/servers.ts';
import { makeTestCa } from '../helpers/tls.ts';

const run = promisify(execFile);

/** One request over an HTTP/2 session; resolves with status, headers and body. */
function h2Request(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders, body?: string): Promise<{ status: number; headers: http2.IncomingHttpHeaders; body: string; trailers: http2.IncomingHttpHeaders | null }> {
  return new Promise((resolve, reject) => {
    const req = session.request(headers, { endStream: body === undefined });
    let head: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders | null = null;
    const chunks: Buffer[] = [];
    req.on('response', (h) => (head = h));
    req.on('trailers', (t) => (trailers = t));
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve({ status: Number(head[':status']), headers: head, body: Buffer.concat(chunks).toString(), trailers }));
    req.on('error', reject);
    if (body !== undefined) req.end(body);
  });
}

async function threeBackends(t: import('node:test').TestContext) {
  return Promise.all(
    ['a', 'b', 'c'].map((name) =>
      startBackend(t, (req, res) => {
        const chunks: Buffer[] = [];
        req.on('data', (c: Buffer) => chunks.push(c));
        req.on('end', () => {
          res.setHeader('x-backend', name);
          res.setHeader('set-cookie', ['a=1', 'b=2']);
          res.end(JSON.stringify({ backend: name, method: req.method, url: req.url, host: req.headers.host, cookie: req.headers.cookie ?? null, body: Buffer.concat(chunks).toString(), proto: req.headers['x-forwarded-proto'], via: req.headers.via }));
        });
      }),
    ),
  );
}

test('h2c with prior knowledge: streams of one connection are balanced across upstreams', async (t) => {
  const backends = await threeBackends(t);
  const lb = await startBalancer(t, { listeners: [{ host: '127.0.0.1', port: 0, http2: { h2c: true } }], pools: { web: { upstreams: backends.map((b) => b.url) } } });
  const session = http2.connect(lb.url);
  t.after(() => session.close());
  const seen = new Set<string>();
  for (let i = 0; i < 6; i++) {
    const r = await h2Request(session, { ':path': `/x?i=${i}`, ':method': 'GET', cookie: ['k=1', 'j=2'] });
    assert.equal(r.status, 200);
    let body; try { body = JSON.parse(r.body); } catch { throw new Error(`status ${r.status} body ${r.body}`); }
    seen.add(body.backend);
    assert.equal(body.url, `/x?i=${i}`);
    assert.equal(body.cookie, 'k=1; j=2');
    assert.deepEqual(r.headers['set-cookie'], ['a=1', 'b=2']);
  }
  assert.equal(seen.size, 3, 'one connection, three upstreams');
  const posted = await h2Request(session, { ':path': '/p', ':method': 'POST' }, 'hello');
  assert.equal(JSON.parse(posted.body).body, 'hello');
  // HTTP/1.1 on the same listener still works.
  const h1 = await run('curl', ['-s', '--http1.1', `${lb.url}/h1`]);
  assert.equal(JSON.parse(h1.stdout).url, '/h1');
  assert.equal(JSON.parse(h1.stdout).via, '1.1 fulcrum');
  const prior = await run('curl', ['-s', '--http2-prior-knowledge', '-w', '\n%{http_version}', `${lb.url}/c`]);
  assert.match(prior.stdout, /\n2$/);
});

test('https listener: ALPN h2 and http/1.1 on one port (curl --http2)', async (t) => {
  const backends = await threeBackends(t);
  const ca = await makeTestCa(t);
  const cert = await ca.issue('site');
  const lb = await startBalancer(t, { listeners: [{ host: '127.0.0.1', port: 0, protocol: 'https', tls: { certificates: [{ cert: cert.certPath, key: cert.keyPath }] } }], pools: { web: { upstreams: backends.map((b) => b.url) } } });
  const url = `https://localhost:${lb.port}/s`;
  const h2 = await run('curl', ['-s', '--http2', '--cacert', ca.caPath, '--resolve', `localhost:${lb.port}:127.0.0.1`, '-w', '\n%{http_version}', url]);
  assert.match(h2.stdout, /\n2$/);
  assert.equal(JSON.parse(h2.stdout.split('\n')[0]).proto, 'https');
  const h1 = await run('curl', ['-s', '--http1.1', '--cacert', ca.caPath, '--resolve', `localhost:${lb.port}:127.0.0.1`, '-w', '\n%{http_version}', url]);
  assert.match(h1.stdout, /\n1\.1$/);
});

/** A plain h2c listener in front of `upstreams` (extra config merged in). */
async function h2cBalancer(t: import('node:test').TestContext, upstreams: string[], extra: Record<string, unknown> = {}) {
  const lb = await startBalancer(t, { listeners: [{ host: '127.0.0.1', port: 0, http2: { h2c: true } }], pools: { web: { upstreams, ...(extra.pool as object) } }, ...(extra.top as object) });
  const session = http2.connect(lb.url);
  session.on('error', () => {});
  t.after(() => session.destroy());
  return { lb, session };
}

test('nghttp: frames, status and the request as the upstream saw it', async (t) => {
  const backends = await threeBackends(t);
  const { lb } = await h2cBalancer(t, [backends[0].url]);
  const out = await run('nghttp', ['-nv', `${lb.url}/n?q=1`]);
  assert.match(out.stdout, /recv HEADERS frame/);
  assert.match(out.stdout, /:status: 200/);
  const body = await run('nghttp', [`${lb.url}/n?q=1`]);
  const seen = JSON.parse(body.stdout);
  assert.equal(seen.url, '/n?q=1');
  assert.equal(seen.host, `127.0.0.1:${lb.port}`, ':authority becomes Host');
  assert.equal(seen.proto, 'http');
  assert.equal(seen.via, '2 fulcrum', 'Via names the protocol the request came in on');
});

test('response trailers from an HTTP/1.1 upstream reach an HTTP/2 client, also with no body', async (t) => {
  const backend = await startBackend(t, (req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', trailer: 'x-checksum' });
    if (req.url !== '/empty') res.write('some body');
    res.addTrailers({ 'x-checksum': 'abc123', 'set-cookie': 'late=1' });
    res.end();
  });
  const { session } = await h2cBalancer(t, [backend.url]);
  const r = await h2Request(session, { ':path': '/t', te: 'trailers' });
  assert.equal(r.body, 'some body');
  assert.equal(r.trailers?.['x-checksum'], 'abc123');
  assert.equal(r.trailers?.['set-cookie'], undefined, 'fields that must not come late are dropped');
  const e = await h2Request(session, { ':path': '/empty', te: 'trailers' });
  assert.equal(e.body, '');
  assert.equal(e.trailers?.['x-checksum'], 'abc123');
});

test('Fulcrum\'s own answers to gRPC callers: HTTP 200, grpc-status in one HEADERS frame (trailers-only)', async (t) => {
  const slow = await startBackend(t, (req, res) => {
    req.resume();
    const timer = setTimeout(() => res.end(), 5000);
    res.on('close', () => clearTimeout(timer));
  });
  const grpcHeaders = (path: string, extra: http2.OutgoingHttpHeaders = {}): http2.OutgoingHttpHeaders => ({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', ...extra });
  /** Sends one empty gRPC message and reads the answer: its headers and whether trailers came apart. */
  const call = (session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders) =>
    new Promise<{ headers: http2.IncomingHttpHeaders; trailers: http2.IncomingHttpHeaders | null; endWithHeaders: boolean; ms: number }>((resolve, reject) => {
      const start = performance.now();
      const req = session.request(headers);
      let head: http2.IncomingHttpHeaders = {};
      let trailers: http2.IncomingHttpHeaders | null = null;
      let endWithHeaders = false;
      req.on('response', (h, flags) => {
        head = h;
        endWithHeaders = (flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0;
      });
      req.on('trailers', (tr) => (trailers = tr));
      req.on('error', reject);
      req.resume();
      req.on('close', () => resolve({ headers: head, trailers, endWithHeaders, ms: performance.now() - start }));
      req.end(Buffer.from([0, 0, 0, 0, 0]));
    });
  const down = await h2cBalancer(t, [`http://127.0.0.1:1`]);
  const unavailable = await call(down.session, grpcHeaders('/svc.Echo/Say'));
  assert.equal(unavailable.headers[':status'], 200);
  assert.equal(unavailable.headers['grpc-status'], '14');
  assert.match(String(unavailable.headers['grpc-message']), /connect failed|no available upstream/);
  assert.ok(unavailable.endWithHeaders, 'trailers-only: the status is in the HEADERS frame that ends the stream');

  const deadline = await h2cBalancer(t, [slow.url]);
  const late = await call(deadline.session, grpcHeaders('/svc.Echo/Say', { 'grpc-timeout': '150m' }));
  assert.equal(late.headers['grpc-status'], '4', 'DEADLINE_EXCEEDED');
  assert.ok(late.ms >= 140 && late.ms < 3000, `answered after the deadline, not the backend (${late.ms} ms)`);

  const limited = await h2cBalancer(t, [slow.url], { top: { routes: [{ path_prefix: '/', pool: 'web', rate_limits: [{ rate: 1, per: '1h', burst: 1 }] }] } });
  const calls = await Promise.all([1, 2].map(() => call(limited.session, grpcHeaders('/svc.Echo/Say', { 'grpc-timeout': '100m' }))));
  assert.deepEqual(calls.map((c) => c.headers['grpc-status']).sort(), ['4', '8'], 'one over the limit: RESOURCE_EXHAUSTED');
});

test('an early answer while the client still uploads ends the stream without error; CONNECT is refused', async (t) => {
  const backends = await threeBackends(t);
  const { session } = await h2cBalancer(t, [backends[0].url], { top: { routes: [{ path_prefix: '/api', pool: 'web' }] } });
  const answer = await new Promise<{ status: number; rst: number }>((resolve, reject) => {
    const req = session.request({ ':method': 'POST', ':path': '/nowhere' });
    let status = 0;
    req.on('response', (h) => (status = Number(h[':status'])));
    req.on('error', reject);
    req.resume();
    req.on('close', () => resolve({ status, rst: req.rstCode ?? -1 }));
    req.write(Buffer.alloc(1024)); // the body never ends
  });
  assert.equal(answer.status, 404);
  assert.equal(answer.rst, http2.constants.NGHTTP2_NO_ERROR);
  const connect = await new Promise<number>((resolve, reject) => {
    const req = session.request({ ':method': 'CONNECT', ':authority': '127.0.0.1:22' });
    req.on('response', (h) => resolve(Number(h[':status'])));
    req.on('error', reject);
  });
  assert.equal(connect, 501);
  // The session is still good for the next stream.
  assert.equal((await h2Request(session, { ':path': '/api/ok' })).status, 200);
});

test('too many header fields: refused before any upstream sees the request', async (t) => {
  let reached = 0;
  const backend = await startBackend(t, (_req, res) => {
    reached++;
    res.end('ok');
  });
  const { session, lb } = await h2cBalancer(t, [backend.url]);
  const headers: http2.OutgoingHttpHeaders = { ':path': '/many' };
  for (let i = 0; i < 101; i++) headers[`x-h${i}`] = 'v';
  const r = await h2Request(session, headers).catch((err: Error) => ({ status: 0, error: err.message }));
  assert.ok(r.status === 431 || r.status === 0, `431 or the stream refused (${JSON.stringify(r).slice(0, 120)})`);
  assert.equal(reached, 0);
  // Other streams and connections go on.
  const fresh = http2.connect(lb.url);
  t.after(() => fresh.destroy());
  assert.equal((await h2Request(fresh, { ':path': '/fine' })).status, 200);
});


test('Expect: 100-continue over HTTP/2: the upstream\'s 100 reaches the client before it sends the body; 103 Early Hints too', async (t) => {
  const backend = await startBackend(t, (req, res) => {
    if (req.url === '/hints') {
      res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' });
      res.end('after hints');
      return;
    }
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => res.end(`got ${Buffer.concat(chunks).length} bytes`));
  });
  const { session } = await h2cBalancer(t, [backend.url]);
  const answer = await new Promise<{ continued: boolean; body: string }>((resolve, reject) => {
    const req = session.request({ ':method': 'POST', ':path': '/upload', expect: '100-continue' });
    let continued = false;
    const chunks: Buffer[] = [];
    // The body goes only once the 100 came: without it this request would never complete.
    req.on('continue', () => {
      continued = true;
      req.end(Buffer.alloc(2048));
    });
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve({ continued, body: Buffer.concat(chunks).toString() }));
    req.on('error', reject);
  });
  assert.deepEqual(answer, { continued: true, body: 'got 2048 bytes' });
  const hints = await new Promise<{ early: http2.IncomingHttpHeaders | null; status: number }>((resolve, reject) => {
    const req = session.request({ ':path': '/hints' });
    let early: http2.IncomingHttpHeaders | null = null;
    req.on('headers', (h) => (early = h));
    req.on('response', (h) => resolve({ early, status: Number(h[':status']) }));
    req.on('error', reject);
  });
  assert.equal(hints.status, 200);
  assert.equal(hints.early?.[':status'], 103);
  assert.equal(hints.early?.link, '</style.css>; rel=preload; as=style');
});

test('h2load: 600 requests on 4 connections with 10 streams each, every one answered, spread over the three upstreams', async (t) => {
  const counts = new Map<string, number>();
  const backends = await Promise.all(
    ['a', 'b', 'c'].map((name) =>
      startBackend(t, (_req, res) => {
        counts.set(name, (counts.get(name) ?? 0) + 1);
        res.end(name);
      }),
    ),
  );
  const { lb } = await h2cBalancer(t, backends.map((b) => b.url));
  const out = await run('h2load', ['-n', '600', '-c', '4', '-m', '10', `${lb.url}/load`]);
  assert.match(out.stdout, /requests: 600 total, 600 started, 600 done, 600 succeeded, 0 failed, 0 errored, 0 timeout/);
  assert.match(out.stdout, /status codes: 600 2xx/);
  assert.match(out.stdout, /Application protocol: h2c/);
  assert.deepEqual([...counts.values()].sort(), [200, 200, 200], 'round-robin per stream, not per connection');
});
