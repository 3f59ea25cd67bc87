/**
 * Review of HTTP/2 from clients and gRPC in the core: each test pins one behaviour of
 * src/downstream/http2.ts, src/downstream/http2-server.ts and the h2c side of
 * src/listeners/http-listener.ts (preface sniffing, drain, idle GOAWAY), against a real balancer
 * on 127.0.0.1 with node:http2 clients or raw frames.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import net from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import { startBackend, startBalancer, type TestBalancer } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';
import { makeTestCa } from '../helpers/tls.ts';
import { requestEnd, type RequestEndEvent } from '../../src/core/events.ts';
import { RawH2Connection, headers as headersFrame, requestBlock, rstStream, FrameReader, FrameType, Flag, PREFACE, settings as settingsFrame, settingsAck } from '../helpers/h2-frames.ts';
import type { FulcrumConfigInput } from '../../src/config/schema.ts';

type Listener = NonNullable<FulcrumConfigInput['listeners']>[number];

interface H2Answer {
  status: number;
  headers: http2.IncomingHttpHeaders;
  endStreamOnHeaders: boolean;
  body: string;
  trailers: http2.IncomingHttpHeaders | null;
  rstCode: number;
  error: string | null;
}

/** One request on a session; resolves on the stream's close, whatever happened (never rejects). */
function h2(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders, body?: string | Buffer): Promise<H2Answer> {
  return new Promise((resolve) => {
    const req = session.request(headers, { endStream: body === undefined });
    const out: H2Answer = { status: 0, headers: {}, endStreamOnHeaders: false, body: '', trailers: null, rstCode: -1, error: null };
    const chunks: Buffer[] = [];
    req.on('response', (h, flags) => {
      out.headers = h;
      out.status = Number(h[':status']);
      out.endStreamOnHeaders = (flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0;
    });
    req.on('trailers', (t) => (out.trailers = t));
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('error', (err: NodeJS.ErrnoException) => (out.error = err.code ?? err.message));
    req.on('close', () => {
      out.body = Buffer.concat(chunks).toString();
      out.rstCode = req.rstCode ?? -1;
      resolve(out);
    });
    if (body !== undefined) req.end(body);
  });
}

function h2cListener(extra: Partial<Listener> = {}): Listener {
  return { host: '127.0.0.1', port: 0, http2: { h2c: true }, ...extra } as Listener;
}

function connect(t: TestContext, lb: TestBalancer): http2.ClientHttp2Session {
  const session = http2.connect(lb.url);
  session.on('error', () => {});
  t.after(() => session.destroy());
  return session;
}

function listenerStats(lb: TestBalancer): { http2_sessions?: number; http2_streams?: number } {
  return lb.balancer.status().listeners[0];
}

/** Everything a server sends on a raw socket until it closes or `timeoutMs` passes. */
function collect(socket: net.Socket, timeoutMs: number): Promise<{ text: string; closed: boolean }> {
  return new Promise((resolve) => {
    let text = '';
    const timer = setTimeout(() => resolve({ text, closed: false }), timeoutMs);
    socket.on('data', (c: Buffer) => (text += c.toString('latin1')));
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ text, closed: true });
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

test('answers Fulcrum cuts (upstream died mid-body) are not counted as the client\'s rapid resets', { timeout: 15_000 }, async (t) => {
  // The backend sends its head and part of the body, then dies: Fulcrum must RST_STREAM the client's
  // stream, but that is the upstream's fault, not the client resetting streams.
  const backend = await startBackend(t, (req, res) => {
    if (req.url === '/ok') return void res.end('fine');
    res.writeHead(200, { 'content-length': '1000' });
    res.write('partial', () => res.socket?.destroy());
  });
  const lb = await startBalancer(t, {
    listeners: [h2cListener({ http2: { h2c: true, max_resets: 2 } })],
    pools: { web: { upstreams: [backend.url], retry: { max_attempts: 1 } } },
  });
  const session = connect(t, lb);
  let goaway: number | null = null;
  session.on('goaway', (code) => (goaway = code));
  for (let i = 0; i < 4; i++) {
    const cut = await h2(session, { ':path': `/cut${i}` });
    assert.equal(cut.rstCode, http2.constants.NGHTTP2_INTERNAL_ERROR, `cut ${i} is a reset stream (${JSON.stringify(cut)})`);
  }
  const ok = session.destroyed ? null : await h2(session, { ':path': '/ok' });
  assert.equal(goaway, null, `an innocent client got GOAWAY ${goaway === null ? '' : goaway} (ENHANCE_YOUR_CALM is 11) after 4 upstream failures`);
  assert.equal(ok?.status, 200);
});

test('h2c sniffing: a client that connects and closes without a byte is let go at once, not after headers_timeout', { timeout: 15_000 }, async (t) => {
  // engine fulcrum: without h2c the same client is let go in about 2 ms (its parser sees the FIN).
  const lb = await startBalancer(t, { listeners: [h2cListener({ engine: 'fulcrum', limits: { headers_timeout: 8000 } } as Partial<Listener>)], pools: { web: { upstreams: ['http://127.0.0.1:1'] } } });
  for (const sent of ['']) {
    const socket = net.connect(lb.port, '127.0.0.1');
    await new Promise((resolve) => socket.once('connect', resolve));
    const seen = collect(socket, 3000);
    socket.end(sent);
    const started = performance.now();
    const { closed } = await seen;
    // The acceptor's sockets are half-open: only the sniffer's timer ends a socket whose client sent FIN before deciding.
    assert.ok(closed, `after ${JSON.stringify(sent)} and FIN the connection was still open ${Math.round(performance.now() - started)} ms later (headers_timeout 8 s)`);
  }
});

test('drain: a connection still being sniffed (no byte yet) does not hold shutdown to the grace period', { timeout: 20_000 }, async (t) => {
  // engine fulcrum: without h2c the same silent connection is closed by the drain in about 4 ms.
  const lb = await startBalancer(t, { listeners: [h2cListener({ engine: 'fulcrum', limits: { headers_timeout: 15_000 } } as Partial<Listener>)], pools: { web: { upstreams: ['http://127.0.0.1:1'] } } });
  const socket = net.connect(lb.port, '127.0.0.1');
  socket.on('error', () => {});
  await new Promise((resolve) => socket.once('connect', resolve));
  await eventually(() => lb.balancer.status().listeners[0].open_connections === 1, { what: 'the connection admitted' });
  const started = performance.now();
  await lb.balancer.close(4000);
  const ms = performance.now() - started;
  socket.destroy();
  // An HTTP/1.1 connection with no request yet is closed at once by the drain (closeIdle); a sniffed one is in no server's list.
  assert.ok(ms < 2000, `close() took ${Math.round(ms)} ms: the silent h2c-listener connection held it to the grace period`);
});

test('access log: a cancelled h2 stream on an https listener keeps tls_version and alpn', { timeout: 15_000 }, async (t) => {
  const backend = await startBackend(t, (req, res) => {
    if (req.url === '/hang') return; // never answers: the client cancels
    res.end('ok');
  });
  const ca = await makeTestCa(t);
  const cert = await ca.issue('localhost');
  const lb = await startBalancer(t, { listeners: [{ host: '127.0.0.1', port: 0, protocol: 'https', tls: { certificates: [{ cert: cert.certPath, key: cert.keyPath }] } }], pools: { web: { upstreams: [backend.url] } } });
  // What the access log reads, read when it does: at the request's end event.
  const alpnAtEnd: (string | null | undefined)[] = [];
  const onEnd = (m: unknown): void => void alpnAtEnd.push((m as RequestEndEvent).ctx.downstream.tls?.alpn);
  requestEnd.subscribe(onEnd);
  t.after(() => requestEnd.unsubscribe(onEnd));
  const session = http2.connect(`https://localhost:${lb.port}`, { ca: ca.ca.cert, host: '127.0.0.1', servername: 'localhost' } as http2.SecureClientSessionOptions);
  session.on('error', () => {});
  t.after(() => session.destroy());
  assert.equal((await h2(session, { ':path': '/ok' })).status, 200);
  const hang = session.request({ ':path': '/hang' });
  hang.on('error', () => {});
  await eventually(() => listenerStats(lb).http2_streams === 1, { what: 'the stream in flight' });
  hang.close(http2.constants.NGHTTP2_CANCEL);
  await eventually(() => alpnAtEnd.length === 2, { what: 'two exchanges ended' });
  assert.equal(alpnAtEnd[0], 'h2', 'the answered stream has its TLS details');
  assert.equal(alpnAtEnd[1], 'h2', `the cancelled stream (status ${lb.ended[1]?.status}) lost its TLS details at its end event: alpn ${alpnAtEnd[1]}`);
});

test('h2c sniffing does not stretch headers_timeout: "P", then the rest of a head too late, is cut at headers_timeout from the first byte', { timeout: 15_000 }, async (t) => {
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const lb = await startBalancer(t, { listeners: [h2cListener({ engine: 'fulcrum', limits: { headers_timeout: 1000 } } as Partial<Listener>)], pools: { web: { upstreams: [backend.url] } } });
  const socket = net.connect(lb.port, '127.0.0.1');
  socket.setNoDelay(true);
  await new Promise((resolve) => socket.once('connect', resolve));
  const started = performance.now();
  const seen = collect(socket, 5000);
  socket.write('P');
  // The wait is the point: a slow client's next byte, most of headers_timeout later.
  await delay(800);
  socket.write('UT / HTTP/1.1\r\nHost: x\r\n');
  const { text, closed } = await seen;
  const ms = performance.now() - started;
  assert.ok(closed, 'closed');
  // Without h2c the same client gets 408 about 1000 ms after its first byte.
  assert.ok(ms < 1400, `the head was allowed ${Math.round(ms)} ms (headers_timeout 1000 ms; answer ${JSON.stringify(text.slice(0, 20))})`);
});

// ---------------------------------------------------------------------------------------------
// Behaviour that holds (kept as regression tests)
// ---------------------------------------------------------------------------------------------

for (const engine of ['fulcrum', 'node'] as const) {
  test(`h2c sniffing (${engine} engine): PUT, PATCH and POST split after "P"/"PR" are served as HTTP/1.1; a slow preface gets HTTP/2`, { timeout: 15_000 }, async (t) => {
    const backend = await startBackend(t, (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => res.end(`${req.method} ${req.url} ${Buffer.concat(chunks).toString()}`));
    });
    const lb = await startBalancer(t, { listeners: [h2cListener({ engine } as Partial<Listener>)], pools: { web: { upstreams: [backend.url] } } });
    for (const [method, split] of [['PUT', 1], ['PATCH', 1], ['POST', 1], ['PRI', 2]] as const) {
      const socket = net.connect(lb.port, '127.0.0.1');
      socket.setNoDelay(true);
      await new Promise((resolve) => socket.once('connect', resolve));
      const seen = collect(socket, 3000);
      const text = `${method} /m HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi`;
      socket.write(text.slice(0, split));
      // The wait is the point: the first bytes must arrive in a TCP segment of their own.
      await delay(50);
      socket.write(text.slice(split));
      const { text: answer } = await seen;
      if (method === 'PRI') assert.match(answer, /^HTTP\/1\.1 (400|405|501|505)/, `"PRI /m HTTP/1.1" is HTTP/1.1, refused (${answer.slice(0, 40)})`);
      else assert.match(answer, new RegExp(`^HTTP/1\\.1 200[^]*${method} /m hi$`), `${method} split after ${split} byte(s): ${answer.slice(0, 80)}`);
    }
    // The preface in three segments, then a request.
    const socket = net.connect(lb.port, '127.0.0.1');
    socket.setNoDelay(true);
    socket.on('error', () => {});
    await new Promise((resolve) => socket.once('connect', resolve));
    const reader = new FrameReader();
    const frames: { type: number; flags: number; streamId: number }[] = [];
    socket.on('data', (c: Buffer) => {
      for (const f of reader.push(c)) {
        frames.push(f);
        if (f.type === FrameType.SETTINGS && (f.flags & Flag.ACK) === 0) socket.write(settingsAck());
      }
    });
    // The client's SETTINGS goes with the preface's last piece: it must be the first frame, ahead of any ACK.
    for (const piece of [PREFACE.subarray(0, 1), PREFACE.subarray(1, 10), Buffer.concat([PREFACE.subarray(10), settingsFrame()])]) {
      socket.write(piece);
      // As above: each piece in its own segment.
      await delay(30);
    }
    socket.write(headersFrame(1, requestBlock({ path: '/slow-preface' }), { endStream: true }));
    await eventually(() => frames.some((f) => f.type === FrameType.DATA && f.streamId === 1 && (f.flags & Flag.END_STREAM) !== 0), { what: 'the answer on stream 1' });
    socket.destroy();
  });
}

test('request body too slow on an h2 stream: 408 after limits.request_timeout, and the stream ends', { timeout: 10_000 }, async (t) => {
  const backend = await startBackend(t, (req, res) => {
    req.resume();
    req.on('end', () => res.end('ok'));
  });
  const lb = await startBalancer(t, { listeners: [h2cListener({ limits: { request_timeout: 300 } } as Partial<Listener>)], pools: { web: { upstreams: [backend.url] } } });
  const session = connect(t, lb);
  const req = session.request({ ':method': 'POST', ':path': '/up' });
  const answer = new Promise<{ status: number; rst: number }>((resolve) => {
    let status = 0;
    req.on('response', (h) => (status = Number(h[':status'])));
    req.on('error', () => {});
    req.resume();
    req.on('close', () => resolve({ status, rst: req.rstCode ?? -1 }));
  });
  req.write('a little');
  const started = performance.now();
  const { status } = await answer;
  assert.equal(status, 408);
  assert.ok(performance.now() - started < 3000);
  await eventually(() => listenerStats(lb).http2_streams === 0, { what: 'no stream left' });
});

test('a partial preface then garbage is handed to HTTP/1.1 (an error answer), and the listener goes on serving', async (t) => {
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const lb = await startBalancer(t, { listeners: [h2cListener()], pools: { web: { upstreams: [backend.url] } } });
  const socket = net.connect(lb.port, '127.0.0.1');
  await new Promise((resolve) => socket.once('connect', resolve));
  const seen = collect(socket, 3000);
  socket.write('PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n');
  const { text, closed } = await seen;
  assert.ok(closed, 'closed');
  assert.match(text, /^(HTTP\/1\.1 [45]\d\d|)/);
  const session = connect(t, lb);
  assert.equal((await h2(session, { ':path': '/' })).status, 200);
});

test('http2_streams and http2_sessions return to 0 after every way a stream can end', { timeout: 15_000 }, async (t) => {
  const backend = await startBackend(t, (req, res) => {
    if (req.url === '/hang') return; // never answers: the client leaves
    if (req.url === '/cut') {
      res.writeHead(200, { 'content-length': '100' });
      return void res.write('x', () => res.socket?.destroy());
    }
    req.resume();
    req.on('end', () => res.end('ok'));
  });
  const lb = await startBalancer(t, { listeners: [h2cListener({ metrics_path: '/metrics' } as Partial<Listener>)], pools: { web: { upstreams: [backend.url], retry: { max_attempts: 1 } } } });
  const session = connect(t, lb);
  assert.equal((await h2(session, { ':path': '/ok' })).status, 200);
  assert.equal((await h2(session, { ':method': 'HEAD', ':path': '/ok' })).status, 200);
  assert.equal((await h2(session, { ':path': '/metrics' })).status, 200);
  assert.equal((await h2(session, { ':method': 'CONNECT', ':authority': '127.0.0.1:1' })).status, 501);
  assert.equal((await h2(session, { ':path': '/cut' })).rstCode, http2.constants.NGHTTP2_INTERNAL_ERROR);
  // The client resets a stream in flight.
  const hang = session.request({ ':path': '/hang' });
  hang.on('error', () => {});
  await eventually(() => listenerStats(lb).http2_streams === 1, { what: 'the hanging stream open' });
  hang.close(http2.constants.NGHTTP2_CANCEL);
  // An early answer while the client is still uploading (no route: 404 before the body ends).
  const upload = session.request({ ':method': 'POST', ':path': '/ok', 'content-length': '100000' });
  upload.on('error', () => {});
  upload.write(Buffer.alloc(10));
  // The rapid-reset pattern: HEADERS and RST_STREAM in one read.
  const raw = await RawH2Connection.connect(lb.port, { opening: Buffer.concat([headersFrame(1, requestBlock({ path: '/hang' }), { endStream: true }), rstStream(1)]) });
  // A client that drops its connection with a stream in flight.
  const dropped = http2.connect(lb.url);
  dropped.on('error', () => {});
  const r = dropped.request({ ':path': '/hang' });
  r.on('error', () => {});
  await eventually(() => (listenerStats(lb).http2_streams ?? 0) >= 2, { what: 'streams in flight' });
  dropped.socket.destroy();
  raw.close();
  upload.close(http2.constants.NGHTTP2_CANCEL);
  await eventually(() => listenerStats(lb).http2_streams === 0, { what: `http2_streams back to 0 (${JSON.stringify(listenerStats(lb))})` });
  session.close();
  await eventually(() => listenerStats(lb).http2_sessions === 0, { what: `http2_sessions back to 0 (${JSON.stringify(listenerStats(lb))})` });
});

test('graceful shutdown: a session with a stream in flight gets GOAWAY NO_ERROR, the stream finishes, close() does not wait for the grace period', { timeout: 15_000 }, async (t) => {
  let release: (() => void) | null = null;
  const backend = await startBackend(t, (_req, res) => {
    release = () => res.end('late but whole');
  });
  const lb = await startBalancer(t, { listeners: [h2cListener()], pools: { web: { upstreams: [backend.url] } } });
  const session = connect(t, lb);
  const goaways: number[] = [];
  session.on('goaway', (code) => goaways.push(code));
  const inFlight = h2(session, { ':path': '/slow' });
  await eventually(() => release !== null, { what: 'the request at the backend' });
  const started = performance.now();
  const closing = lb.balancer.close(8000);
  await eventually(() => goaways.length > 0, { what: 'GOAWAY' });
  assert.equal(goaways[0], http2.constants.NGHTTP2_NO_ERROR);
  release!();
  const answer = await inFlight;
  assert.equal(answer.status, 200);
  assert.equal(answer.body, 'late but whole');
  await closing;
  assert.ok(performance.now() - started < 4000, `close() took ${Math.round(performance.now() - started)} ms`);
});

test('an idle session gets GOAWAY NO_ERROR after keepalive_timeout and closes', { timeout: 10_000 }, async (t) => {
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const lb = await startBalancer(t, { listeners: [h2cListener({ keepalive_timeout: 200 } as Partial<Listener>)], pools: { web: { upstreams: [backend.url] } } });
  const session = connect(t, lb);
  const goaways: number[] = [];
  session.on('goaway', (code) => goaways.push(code));
  assert.equal((await h2(session, { ':path': '/' })).status, 200);
  await eventually(() => session.closed || session.destroyed, { what: 'the idle session closed' });
  // node:http2 sends a second GOAWAY (same code, same last stream) when it destroys the session: allowed (RFC 9113 section 6.8).
  assert.ok(goaways.length >= 1 && goaways.every((c) => c === http2.constants.NGHTTP2_NO_ERROR), `GOAWAY codes ${goaways}`);
  await eventually(() => listenerStats(lb).http2_sessions === 0, { what: 'no session left' });
});

test('END_STREAM on the response HEADERS for HEAD, 204 and 304; :authority wins over host; cookies joined', async (t) => {
  const backend = await startBackend(t, (req, res) => {
    if (req.url === '/204') return void res.writeHead(204).end();
    if (req.url === '/304') return void res.writeHead(304, { etag: '"a"' }).end();
    res.end(JSON.stringify({ host: req.headers.host, cookie: req.headers.cookie }));
  });
  const lb = await startBalancer(t, { listeners: [h2cListener()], pools: { web: { upstreams: [backend.url] } } });
  const session = connect(t, lb);
  for (const [method, path, status] of [['HEAD', '/', 200], ['GET', '/204', 204], ['GET', '/304', 304]] as const) {
    const r = await h2(session, { ':method': method, ':path': path });
    assert.equal(r.status, status);
    assert.ok(r.endStreamOnHeaders, `${method} ${path}: one HEADERS frame with END_STREAM`);
    assert.equal(r.rstCode, http2.constants.NGHTTP2_NO_ERROR);
  }
  const r = await h2(session, { ':path': '/', ':authority': 'good.example', host: 'evil.example', cookie: ['a=1', 'b=2'] });
  assert.deepEqual(JSON.parse(r.body), { host: 'good.example', cookie: 'a=1; b=2' });
});
