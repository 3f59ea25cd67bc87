/**
 * HTTP/2 upstreams (`protocol: h2c` and `h2`) through a real balancer, against node:http2
 * backends on 127.0.0.1 (and one raw TCP backend speaking just enough HTTP/2 frames to stop
 * answering PINGs). Clients are HTTP/1.1 (the HTTP/2 downstream is separate work).
 *
 * Bodies both ways and request headers as HTTP/2 wants them; TLS with ALPN h2 (and an
 * HTTP/1.1-only https backend refused clearly); response trailers to a chunked HTTP/1.1
 * client, a trailers-only answer, request trailers; backpressure (a slow client holds the
 * upstream, measured in bytes); more sessions when the backend allows 2 streams each, and a
 * queue under max_sessions that a cancelled request leaves; a graceful GOAWAY under load (no
 * request fails, none is processed twice); REFUSED_STREAM retried for a POST; PING keepalive
 * (acked: the session stays; unanswered: it is closed); idle sessions closed; a backend killed
 * mid-answer (cut or 502, no hang); connect refused retried on another upstream; timeouts;
 * a client that leaves resets the stream.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import https from 'node:https';
import tls from 'node:tls';
import diagnosticsChannel from 'node:diagnostics_channel';
import { createHash } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { closedPort, get, startBackend, startBalancer, startRawBackend, type TestBalancer } from '../helpers/servers.ts';
import { makeTestCa, type CertFiles } from '../helpers/tls.ts';
import { startBlackhole } from '../helpers/blackhole.ts';
import { eventually } from '../helpers/eventually.ts';
import { ErrorCode } from '../../src/errors.ts';
import { upstreamFailure } from '../../src/proxy/status.ts';
import { http2UpstreamStats } from '../../src/transport/http2.ts';
import type { Http2GoawayEvent } from '../../src/core/events.ts';

const { NGHTTP2_REFUSED_STREAM, NGHTTP2_NO_ERROR } = http2.constants;
/** Per-test limits: a regression (a stream that never completes) fails its test instead of hanging the run. */
const bounded = 20_000;
const slow = 60_000;

/** A node:http2 backend on 127.0.0.1:0: every session and stream it saw, closed after the test. */
interface H2Backend {
  url: string;
  port: number;
  server: http2.Http2Server | http2.Http2SecureServer;
  /** Every session accepted, in order. */
  sessions: http2.ServerHttp2Session[];
  /** Sessions not closed yet. */
  open(): number;
  /** Streams seen, and the most open at once on one session. */
  streams: number;
  maxConcurrentPerSession: number;
  /** PING frames received, over all sessions. */
  pings: number;
}

type StreamHandler = (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, raw: string[]) => void;

async function startH2Backend(t: TestContext, handler: StreamHandler, options: { tls?: CertFiles; settings?: http2.Settings; alpn?: string[] } = {}): Promise<H2Backend> {
  const server = options.tls
    ? http2.createSecureServer({ cert: options.tls.cert, key: options.tls.key, settings: options.settings, ...(options.alpn ? { ALPNProtocols: options.alpn } : {}) })
    : http2.createServer({ settings: options.settings });
  const backend: H2Backend = {
    url: '',
    port: 0,
    server,
    sessions: [],
    open: () => backend.sessions.filter((s) => !s.closed && !s.destroyed).length,
    streams: 0,
    maxConcurrentPerSession: 0,
    pings: 0,
  };
  const active = new Map<http2.Http2Session, number>();
  server.on('session', (session: http2.ServerHttp2Session) => {
    backend.sessions.push(session);
    active.set(session, 0);
    session.on('error', () => {});
    session.on('ping', () => backend.pings++);
  });
  server.on('stream', (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, _flags: number, raw: string[]) => {
    backend.streams++;
    const session = stream.session!;
    const n = (active.get(session) ?? 0) + 1;
    active.set(session, n);
    backend.maxConcurrentPerSession = Math.max(backend.maxConcurrentPerSession, n);
    stream.on('close', () => active.set(session, (active.get(session) ?? 1) - 1));
    stream.on('error', () => {});
    handler(stream, headers, raw);
  });
  if (options.tls) (server as http2.Http2SecureServer).on('tlsClientError', () => {});
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  backend.port = (server.address() as AddressInfo).port;
  backend.url = `${options.tls ? 'https' : 'http'}://127.0.0.1:${backend.port}`;
  t.after(
    () =>
      new Promise<void>((resolve) => {
        for (const s of backend.sessions) s.destroy();
        server.close(() => resolve());
      }),
  );
  return backend;
}

/** Reads the whole request body of a backend stream. */
function readBody(stream: http2.ServerHttp2Stream): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => resolve(Buffer.concat(chunks)));
    // A stream reset before its end never answers: nothing to resolve.
  });
}

/** Answers `method path body-length` and echoes the body. */
const echo: StreamHandler = (stream, headers) => {
  void readBody(stream).then((body) => {
    if (stream.destroyed) return;
    stream.respond({ ':status': 200, 'x-method': String(headers[':method']), 'x-body-length': String(body.length) });
    stream.end(body);
  });
};

function h2cPool(upstreams: string[], extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { protocol: 'h2c', upstreams, ...extra };
}

async function balancerFor(t: TestContext, pool: Record<string, unknown>): Promise<TestBalancer> {
  return startBalancer(t, { pools: { web: pool }, routes: [{ pool: 'web' }] } as unknown as Parameters<typeof startBalancer>[1]);
}

/** A request with a keep-alive agent (several at once share the agent's sockets). */
function request(url: string, options: http.RequestOptions & { body?: string | Buffer } = {}): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, options, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
      res.on('aborted', () => reject(new Error('response aborted')));
    });
    req.on('error', reject);
    req.end(options.body);
  });
}

/** Sends raw bytes and collects the answer until `done(text)` says it is complete (or the server closes). */
function rawRequest(port: number, text: string | Buffer, done: (answer: string) => boolean, timeout = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let answer = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no complete answer within ${timeout}ms: ${JSON.stringify(answer.slice(0, 300))}`));
    }, timeout);
    const finish = (): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(answer);
    };
    socket.on('data', (d) => {
      answer += d.toString('latin1');
      if (done(answer)) finish();
    });
    socket.on('close', finish);
    socket.on('error', () => {});
    socket.write(text);
  });
}

test('h2c: GET and POST with bodies both ways, one session reused, Host as :authority, connection-specific headers dropped', { timeout: bounded }, async (t) => {
  const seen: string[][] = [];
  const backend = await startH2Backend(t, (stream, headers, raw) => {
    seen.push(raw);
    echo(stream, headers, raw);
  });
  const before = { ...http2UpstreamStats };
  const lb = await balancerFor(t, h2cPool([backend.url]));
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.after(() => agent.destroy());
  const got = await request(`${lb.url}/a?b=c`, { agent, headers: { host: 'example.test', te: 'trailers', 'x-custom': 'one' } });
  assert.equal(got.status, 200);
  assert.equal(got.headers['x-method'], 'GET');
  assert.equal(got.body.length, 0);
  // 2 MiB up, echoed 2 MiB down, streamed (chunked from the client).
  const big = Buffer.alloc(2 * 1024 * 1024, 'abcdefgh');
  const posted = await new Promise<{ status: number; digest: string; length: number }>((resolve, reject) => {
    const req = http.request(`${lb.url}/upload`, { method: 'POST', agent }, (res) => {
      const hash = createHash('sha256');
      let length = 0;
      res.on('data', (c: Buffer) => {
        hash.update(c);
        length += c.length;
      });
      res.on('end', () => resolve({ status: res.statusCode!, digest: hash.digest('hex'), length }));
    });
    req.on('error', reject);
    for (let i = 0; i < 8; i++) req.write(big.subarray(i * 256 * 1024, (i + 1) * 256 * 1024));
    req.end();
  });
  assert.deepEqual(posted, { status: 200, digest: createHash('sha256').update(big).digest('hex'), length: big.length });
  const small = await request(`${lb.url}/small`, { agent, method: 'PUT', body: 'hello' });
  assert.equal(small.headers['x-body-length'], '5');
  assert.equal(small.body.toString(), 'hello');
  // One session carried all three.
  assert.equal(backend.sessions.length, 1);
  const first = seen[0];
  const pairs = (raw: string[]): [string, string][] => raw.flatMap((v, i) => (i % 2 === 0 ? [[v, raw[i + 1]] as [string, string]] : []));
  const names = pairs(first).map(([n]) => n);
  assert.deepEqual(pairs(first).slice(0, 4), [
    [':method', 'GET'],
    [':scheme', 'http'],
    [':path', '/a?b=c'],
    [':authority', 'example.test'],
  ]);
  assert.ok(!names.includes('host'), 'no host header next to :authority');
  assert.ok(!names.includes('connection') && !names.includes('keep-alive') && !names.includes('transfer-encoding'), names.join(','));
  assert.deepEqual(pairs(first).filter(([n]) => n === 'te' || n === 'x-custom').sort(), [['te', 'trailers'], ['x-custom', 'one']]);
  // The streamed upload arrived without a Content-Length, the PUT with its own.
  assert.equal(pairs(seen[2]).find(([n]) => n === 'content-length')?.[1], '5');
  assert.equal(http2UpstreamStats.sessionsOpen - before.sessionsOpen, 1);
  await eventually(() => http2UpstreamStats.streamsInFlight === before.streamsInFlight, { what: 'no stream left in flight' });
  // Shutdown closes the session (the counters go back).
  await lb.balancer.close(1000);
  assert.equal(http2UpstreamStats.sessionsOpen, before.sessionsOpen);
  await eventually(() => backend.open() === 0, { what: 'the backend saw the session close' });
});

test('Expect: 100-continue is answered by Fulcrum (HTTP/2 servers that take raw streams never send a 100) and not passed on', { timeout: bounded }, async (t) => {
  const expects: unknown[] = [];
  const backend = await startH2Backend(t, (stream, headers, raw) => {
    expects.push(headers.expect);
    echo(stream, headers, raw);
  });
  const lb = await balancerFor(t, h2cPool([backend.url]));
  const answer = await new Promise<string>((resolve, reject) => {
    const socket = net.connect(lb.port, '127.0.0.1');
    let text = '';
    let sent = false;
    const timer = setTimeout(() => (socket.destroy(), reject(new Error(`no answer: ${JSON.stringify(text)}`))), 5000);
    socket.on('data', (d) => {
      text += d.toString('latin1');
      // The body goes only after the 100, as a client that asked would.
      if (!sent && text.startsWith('HTTP/1.1 100 Continue\r\n\r\n')) {
        sent = true;
        socket.write('hello');
      }
      if (text.endsWith('\r\n0\r\n\r\n')) (clearTimeout(timer), socket.destroy(), resolve(text));
    });
    socket.on('error', reject);
    socket.write('POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n');
  });
  assert.match(answer, /^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 OK\r\n[^]*\r\n\r\n5\r\nhello\r\n0\r\n\r\n$/);
  assert.deepEqual(expects, [undefined]);
});

test('h2 over TLS: ALPN h2, SNI, bodies both ways; an https backend without h2 is a 502 that says so', { timeout: bounded }, async (t) => {
  const ca = await makeTestCa(t);
  const cert = await ca.issue('h2');
  const servernames: (string | false)[] = [];
  const backend = await startH2Backend(t, echo, { tls: cert });
  backend.server.on('secureConnection', (socket: import('node:tls').TLSSocket) => servernames.push(socket.servername ?? false));
  // An HTTP/1.1 https server (ALPN http/1.1 only: it refuses h2 with an alert), and a TLS server that ignores ALPN.
  const h1only = https.createServer({ cert: cert.cert, key: cert.key }, (_req, res) => res.end('h1'));
  const noAlpn = tls.createServer({ cert: cert.cert, key: cert.key }, (socket) => socket.on('error', () => {}).end('HTTP/1.1 400 Bad Request\r\n\r\n'));
  for (const server of [h1only, noAlpn]) {
    server.on('tlsClientError', () => {});
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  }
  t.after(() => h1only.closeAllConnections());
  const lb = await startBalancer(t, {
    pools: {
      tls: { protocol: 'h2', upstreams: [`https://localhost:${backend.port}`], tls: { ca: ca.caPath } },
      h1: { protocol: 'h2', upstreams: [`https://127.0.0.1:${(h1only.address() as AddressInfo).port}`], tls: { ca: ca.caPath } },
      none: { protocol: 'h2', upstreams: [`https://127.0.0.1:${(noAlpn.address() as AddressInfo).port}`], tls: { ca: ca.caPath } },
    },
    routes: [
      { path_prefix: '/h1', pool: 'h1' },
      { path_prefix: '/none', pool: 'none' },
      { pool: 'tls' },
    ],
  });
  const r = await get(`${lb.url}/x`, { method: 'POST', body: 'over tls', headers: { 'content-length': '8' } });
  assert.equal(r.status, 200);
  assert.equal(r.body, 'over tls');
  assert.equal((await get(`${lb.url}/y`)).status, 200);
  assert.equal(backend.sessions.length, 1);
  assert.equal(backend.sessions[0].alpnProtocol, 'h2');
  assert.deepEqual(servernames, ['localhost']);
  const refused = await get(`${lb.url}/h1`);
  assert.equal(refused.status, 502);
  assert.match(refused.body, /^502 Bad Gateway: TLS handshake with upstream failed: no ALPN protocol in common: Fulcrum offers h2 and the upstream does not serve HTTP\/2 over TLS/);
  assert.equal(lb.ended.at(-1)?.error?.code, ErrorCode.UpstreamTls);
  const ignored = await get(`${lb.url}/none`);
  assert.equal(ignored.status, 502);
  assert.match(ignored.body, /^502 Bad Gateway: upstream did not agree to HTTP\/2 in the TLS handshake \(ALPN: none\)/);
  assert.equal(lb.ended.at(-1)?.error?.code, ErrorCode.UpstreamProtocol);
});

test('trailers: response trailers reach a chunked HTTP/1.1 client, a trailers-only answer is headers and an empty body, request trailers reach the backend', { timeout: bounded }, async (t) => {
  let requestTrailers: Record<string, unknown> | null = null;
  const backend = await startH2Backend(t, (stream, headers) => {
    const path = String(headers[':path']);
    if (path === '/trailers') {
      stream.respond({ ':status': 200, 'content-type': 'text/plain' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'x-checksum': 'abc123', 'grpc-status': '0' }));
      stream.end('body-bytes');
      return;
    }
    if (path === '/trailers-only') {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '5', 'grpc-message': 'not found' }, { endStream: true });
      return;
    }
    stream.on('trailers', (trailers) => (requestTrailers = { ...trailers }));
    void readBody(stream).then((body) => {
      stream.respond({ ':status': 200 });
      stream.end(`got ${body.length}`);
    });
  });
  const lb = await balancerFor(t, h2cPool([backend.url]));
  const answer = await rawRequest(lb.port, 'GET /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n', (a) => a.includes('\r\n0\r\n') && a.endsWith('\r\n\r\n'));
  const [head, body] = [answer.slice(0, answer.indexOf('\r\n\r\n')), answer.slice(answer.indexOf('\r\n\r\n') + 4)];
  assert.match(head, /^HTTP\/1\.1 200 /);
  assert.match(head, /\r\ntransfer-encoding: chunked/i);
  assert.equal(body, 'a\r\nbody-bytes\r\n0\r\nx-checksum: abc123\r\ngrpc-status: 0\r\n\r\n');

  const only = await get(`${lb.url}/trailers-only`);
  assert.equal(only.status, 200);
  assert.equal(only.headers['grpc-status'], '5');
  assert.equal(only.headers['grpc-message'], 'not found');
  assert.equal(only.body, '');

  const withTrailers = await rawRequest(
    lb.port,
    'POST /upload HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-request-sum: 42\r\n\r\n',
    (a) => a.includes('got 5'),
  );
  assert.match(withTrailers, /^HTTP\/1\.1 200 /);
  assert.deepEqual(requestTrailers === null ? null : { 'x-request-sum': (requestTrailers as Record<string, unknown>)['x-request-sum'] }, { 'x-request-sum': '42' });
});

test('backpressure: a client that stops reading holds the HTTP/2 upstream; the gap stays far below the body (measured), then the rest arrives', { timeout: slow }, async (t) => {
  const size = 64 * 1024 * 1024;
  const chunk = Buffer.alloc(64 * 1024, 'z');
  const progress = { written: 0, blocked: false };
  const backend = await startH2Backend(t, (stream) => {
    stream.respond({ ':status': 200, 'content-length': String(size) });
    const pump = (): void => {
      while (progress.written < size) {
        progress.written += chunk.length;
        if (!stream.write(chunk)) {
          progress.blocked = true;
          stream.once('drain', () => {
            progress.blocked = false;
            pump();
          });
          return;
        }
      }
      stream.end();
    };
    pump();
  });
  // Fulcrum's own share grows with the stream window, not with the body: kernel buffers are the same in every run.
  const gaps: number[] = [];
  const windows = [65_535, 1_048_576, 8 * 1_048_576];
  for (const window of windows) {
    progress.written = 0;
    const lb = await balancerFor(t, h2cPool([backend.url], { http2: { initial_window_bytes: window } }));
    const socket = net.connect(lb.port, '127.0.0.1');
    t.after(() => socket.destroy());
    let received = 0;
    socket.on('data', (d: Buffer) => {
      received += d.length;
      socket.pause();
    });
    socket.write('GET /big HTTP/1.1\r\nHost: x\r\n\r\n');
    // Wait until the backend is blocked on flow control and nothing moves for 5 polls in a row (the state being measured).
    let last = -1;
    let still = 0;
    await eventually(
      () => {
        still = progress.blocked && progress.written === last ? still + 1 : 0;
        last = progress.written;
        return still >= 5;
      },
      { interval: 100, timeout: 10_000, what: 'the backend stalled on flow control' },
    );
    const gap = progress.written - received;
    t.diagnostic(`initial_window_bytes ${window}: backend wrote ${(progress.written / 1048576).toFixed(1)} MiB, client read ${(received / 1048576).toFixed(2)} MiB: ${(gap / 1048576).toFixed(1)} MiB between them (kernel buffers included) of a ${size / 1048576} MiB body`);
    gaps.push(gap);
    assert.ok(progress.written < size / 2, `the backend was held back (wrote ${progress.written} of ${size})`);
    // Over the smallest window's run (kernel buffers and that window): at most the difference of windows, plus 1 MiB of slack.
    assert.ok(gap - gaps[0] <= window - windows[0] + 1_048_576, `window ${window}: ${gap} bytes in flight, ${gaps[0]} with ${windows[0]}`);
    if (window === 1_048_576) assert.ok(gap < 16 * 1_048_576, `default window: ${gap} bytes in flight`);
    // The client reads again: the rest arrives whole.
    socket.removeAllListeners('data');
    let body = received;
    socket.on('data', (d: Buffer) => (body += d.length));
    socket.resume();
    await eventually(() => body >= size, { timeout: 20_000, what: 'the whole body' });
    socket.destroy();
  }
});

test('several sessions: a backend allowing 2 streams each gets 5 sessions for 10 concurrent requests, all 200', { timeout: bounded }, async (t) => {
  const held: http2.ServerHttp2Stream[] = [];
  const backend = await startH2Backend(
    t,
    (stream) => {
      held.push(stream);
      // All ten are open at once before any is answered: that needs five sessions of two streams.
      if (held.length === 10) for (const s of held) (s.respond({ ':status': 200 }), s.end(`stream ${s.id}`));
    },
    { settings: { maxConcurrentStreams: 2 } },
  );
  const lb = await balancerFor(t, h2cPool([backend.url]));
  const agent = new http.Agent({ keepAlive: true, maxSockets: 10 });
  t.after(() => agent.destroy());
  const answers = await Promise.all(Array.from({ length: 10 }, (_, i) => request(`${lb.url}/${i}`, { agent })));
  assert.deepEqual(answers.map((a) => a.status), Array(10).fill(200));
  assert.equal(backend.sessions.length, 5);
  assert.equal(backend.maxConcurrentPerSession, 2);
  assert.deepEqual(lb.ended.map((ctx) => ctx.attempts), Array(10).fill(1), 'no stream was refused and retried');
});

test('max_sessions: streams beyond every session wait in the queue; a queued request the client abandons never reaches the backend', { timeout: bounded }, async (t) => {
  const paths: string[] = [];
  const release: (() => void)[] = [];
  const backend = await startH2Backend(
    t,
    (stream, headers) => {
      paths.push(String(headers[':path']));
      const answer = (): void => {
        if (!stream.destroyed) (stream.respond({ ':status': 200 }), stream.end('ok'));
      };
      if (headers[':path'] === '/hold') release.push(answer);
      else answer();
    },
    { settings: { maxConcurrentStreams: 1 } },
  );
  const lb = await balancerFor(t, h2cPool([backend.url], { http2: { max_sessions: 1 } }));
  const inFlight = (): number => lb.balancer.status().backends[0].current_connections;
  const holding = get(`${lb.url}/hold`);
  await eventually(() => release.length === 1, { what: 'the first request at the backend' });
  // The session's only stream is busy and no other session may open: this one waits, then its client leaves.
  const abandoned = http.request(`${lb.url}/abandoned`, { agent: false });
  abandoned.on('error', () => {});
  abandoned.end();
  await eventually(() => inFlight() === 2, { what: 'the second request waiting for a stream' });
  abandoned.destroy();
  await eventually(() => lb.ended.length === 1, { what: 'the abandoned request ended' });
  assert.equal(lb.ended[0].status, 499);
  const queued = get(`${lb.url}/queued`);
  await eventually(() => inFlight() === 2, { what: 'the third request waiting for a stream' });
  assert.deepEqual(paths, ['/hold']);
  release[0]();
  assert.equal((await holding).status, 200);
  assert.equal((await queued).status, 200);
  assert.deepEqual(paths, ['/hold', '/queued']);
  assert.equal(backend.sessions.length, 1);
});

test('GOAWAY under load: a backend that sends a graceful GOAWAY every 25 streams loses no POST, processes none twice', { timeout: bounded }, async (t) => {
  const answered = new Map<string, number>();
  let goaways = 0;
  let refusedByBackend = 0;
  /** Streams at or below a GOAWAY's lastStreamID answered after it was sent. */
  let afterGoaway = 0;
  const perSession = new Map<http2.Http2Session, { count: number; last: number }>();
  const backend = await startH2Backend(t, (stream, headers) => {
    const session = stream.session!;
    const state = perSession.get(session) ?? { count: 0, last: -1 };
    perSession.set(session, state);
    if (state.last !== -1 && stream.id! > state.last) {
      // Past the GOAWAY's last stream: not processed, as RFC 9113 section 6.8 asks.
      refusedByBackend++;
      stream.close(NGHTTP2_REFUSED_STREAM);
      return;
    }
    state.count++;
    if (state.count === 25 && state.last === -1) {
      // Graceful: every stream received so far is processed; those Fulcrum sent meanwhile are above lastStreamID.
      state.last = stream.id!;
      goaways++;
      session.goaway(NGHTTP2_NO_ERROR, state.last);
    }
    const id = String(headers['x-id']);
    void readBody(stream).then((body) => {
      // The delay is the point: answers are still in flight when a GOAWAY goes out, and finished after it.
      setTimeout(() => {
        if (stream.destroyed) return;
        answered.set(id, (answered.get(id) ?? 0) + 1);
        if (state.last !== -1) afterGoaway++;
        stream.respond({ ':status': 200 });
        stream.end(`${id}:${body.toString()}`);
      }, 5);
    });
  });
  const published: Http2GoawayEvent[] = [];
  const onGoaway = (m: unknown): void => void published.push(m as Http2GoawayEvent);
  diagnosticsChannel.subscribe('fulcrum:http2:goaway', onGoaway);
  t.after(() => diagnosticsChannel.unsubscribe('fulcrum:http2:goaway', onGoaway));
  const before = { unprocessed: http2UpstreamStats.unprocessedStreams, noError: http2UpstreamStats.goawaysReceived.NO_ERROR ?? 0 };
  const lb = await balancerFor(t, h2cPool([backend.url]));
  const agent = new http.Agent({ keepAlive: true, maxSockets: 20 });
  t.after(() => agent.destroy());
  const total = 300;
  let next = 0;
  const failures: string[] = [];
  const worker = async (): Promise<void> => {
    while (next < total) {
      const id = String(next++);
      try {
        const r = await request(`${lb.url}/order`, { agent, method: 'POST', headers: { 'x-id': id, 'content-type': 'text/plain' }, body: `payload-${id}` });
        if (r.status !== 200 || r.body.toString() !== `${id}:payload-${id}`) failures.push(`${id}: ${r.status} ${r.body.toString().slice(0, 100)}`);
      } catch (err) {
        failures.push(`${id}: ${(err as Error).message}`);
      }
    }
  };
  await Promise.all(Array.from({ length: 20 }, worker));
  t.diagnostic(`${total} POSTs, ${goaways} GOAWAYs, ${afterGoaway} in-flight streams finished after their GOAWAY, ${refusedByBackend} streams past lastStreamID seen by the backend, ${backend.sessions.length} sessions, retried: ${lb.ended.filter((c) => c.attempts > 1).length}`);
  for (const c of lb.ended.filter((c) => c.error !== null)) t.diagnostic(`failed: ${c.status} ${c.attempts} ${c.error?.code} ${c.error?.message} ${(c.error?.cause as Error | undefined)?.message ?? ''}`);
  assert.deepEqual(failures, []);
  assert.equal(answered.size, total, 'every request processed');
  assert.deepEqual([...answered.values()].filter((n) => n !== 1), [], 'none processed twice');
  assert.ok(goaways >= 5, `${goaways} GOAWAYs`);
  assert.ok(afterGoaway > goaways, `streams in flight at a GOAWAY were finished (${afterGoaway})`);
  // Counted per GOAWAY frame: node:http2 sends one more as it closes a session that already went away.
  const counted = (http2UpstreamStats.goawaysReceived.NO_ERROR ?? 0) - before.noError;
  assert.ok(counted >= goaways, `${counted} GOAWAY frames counted for ${goaways} sessions told to go away`);
  assert.equal(published.filter((e) => e.direction === 'upstream' && e.errorName === 'NO_ERROR' && e.upstream === `127.0.0.1:${backend.port}`).length, counted);
  // Every stream the backend did not process was sent again, and counted as unprocessed.
  const retried = lb.ended.reduce((n, c) => n + c.attempts - 1, 0);
  assert.equal(http2UpstreamStats.unprocessedStreams - before.unprocessed, retried);
  assert.ok(lb.ended.every((c) => c.status === 200));
});

test('GOAWAY with an error code (ENHANCE_YOUR_CALM): the stream it processed fails (a POST: 502), the one above lastStreamID goes again on a new session; counted by code name', { timeout: bounded }, async (t) => {
  const held: http2.ServerHttp2Stream[] = [];
  const backend = await startH2Backend(t, (stream) => {
    if (backend.sessions.length > 1) return void (stream.respond({ ':status': 200 }), stream.end('second session'));
    held.push(stream);
    // node:http2 sends the last processed stream id for a lastStreamID of 0: the first stream is "processed", the second not.
    if (held.length === 2) stream.session!.goaway(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM, Math.min(held[0].id!, held[1].id!));
  });
  const before = http2UpstreamStats.goawaysReceived.ENHANCE_YOUR_CALM ?? 0;
  const lb = await balancerFor(t, h2cPool([backend.url]));
  const post = (): Promise<{ status: number; body: string }> => get(`${lb.url}/`, { method: 'POST', body: 'x', headers: { 'content-length': '1' } });
  const answers = await Promise.all([post(), post()]);
  assert.deepEqual(answers.map((a) => a.status).sort(), [200, 502]);
  assert.equal(answers.find((a) => a.status === 200)?.body, 'second session');
  const failed = lb.ended.find((c) => c.status === 502)!;
  assert.equal(failed.error?.code, ErrorCode.UpstreamReset);
  assert.match(failed.error!.message, /ENHANCE_YOUR_CALM/);
  assert.equal(failed.attempts, 1, 'a processed POST is not sent again');
  assert.equal(lb.ended.find((c) => c.status === 200)?.attempts, 2);
  assert.equal(backend.sessions.length, 2);
  assert.ok((http2UpstreamStats.goawaysReceived.ENHANCE_YOUR_CALM ?? 0) > before);
});

test('REFUSED_STREAM: a refused POST is sent again (same upstream, the only one) and processed once; not counted against the upstream', { timeout: bounded }, async (t) => {
  let refused = 0;
  const bodies: string[] = [];
  const backend = await startH2Backend(t, (stream) => {
    if (refused === 0) {
      refused++;
      stream.close(NGHTTP2_REFUSED_STREAM);
      return;
    }
    void readBody(stream).then((body) => {
      bodies.push(body.toString());
      stream.respond({ ':status': 201 });
      stream.end('created');
    });
  });
  const lb = await balancerFor(t, h2cPool([backend.url]));
  const r = await get(`${lb.url}/orders`, { method: 'POST', body: 'one order', headers: { 'content-length': '9' } });
  assert.equal(r.status, 201);
  assert.equal(r.body, 'created');
  assert.deepEqual(bodies, ['one order']);
  assert.equal(lb.ended[0].attempts, 2);
  assert.equal(lb.balancer.status().backends[0].failures, 0);
});

test('PING keepalive: an acked PING keeps a quiet session; a backend that stops answering PINGs has its session closed', { timeout: bounded }, async (t) => {
  // A node:http2 backend acks PINGs: the session outlives many ping intervals.
  const backend = await startH2Backend(t, (stream) => (stream.respond({ ':status': 200 }), stream.end('ok')));
  const lb = await balancerFor(t, h2cPool([backend.url], { http2: { ping_interval: 50, ping_timeout: 500 }, keepalive: { idle_timeout: 60_000 } }));
  assert.equal((await get(`${lb.url}/`)).status, 200);
  await eventually(() => backend.pings >= 4, { what: 'four PINGs at the backend' });
  assert.equal(backend.open(), 1);
  assert.equal((await get(`${lb.url}/`)).status, 200);
  assert.equal(backend.sessions.length, 1, 'the same session carried the second request');

  // A raw HTTP/2 backend: SETTINGS, answers HEADERS with ":status 200" and END_STREAM, ignores PINGs.
  const pingsIgnored: number[] = [];
  const closedAt: number[] = [];
  const raw = await startRawBackend(t, (socket) => {
    const index = pingsIgnored.push(0) - 1;
    let buffered = Buffer.alloc(0);
    let preface = false;
    socket.write(frame(4, 0, 0, Buffer.alloc(0)));
    socket.on('close', () => closedAt.push(Date.now()));
    socket.on('data', (d: Buffer) => {
      buffered = Buffer.concat([buffered, d]);
      if (!preface) {
        if (buffered.length < 24) return;
        buffered = buffered.subarray(24);
        preface = true;
      }
      while (buffered.length >= 9) {
        const length = buffered.readUIntBE(0, 3);
        if (buffered.length < 9 + length) return;
        const type = buffered[3];
        const flags = buffered[4];
        const stream = buffered.readUInt32BE(5) & 0x7fffffff;
        buffered = buffered.subarray(9 + length);
        if (type === 4 && (flags & 1) === 0) socket.write(frame(4, 1, 0, Buffer.alloc(0)));
        // HPACK: 0x88 is ":status: 200" from the static table (RFC 7541 appendix A).
        if (type === 1) socket.write(frame(1, 0x5, stream, Buffer.from([0x88])));
        if (type === 6 && (flags & 1) === 0) pingsIgnored[index]++;
      }
    });
  });
  const lb2 = await balancerFor(t, h2cPool([raw.url], { http2: { ping_interval: 100, ping_timeout: 200 }, keepalive: { idle_timeout: 60_000 } }));
  const started = Date.now();
  assert.equal((await get(`${lb2.url}/`)).status, 200);
  await eventually(() => closedAt.length === 1, { what: 'the session closed by Fulcrum' });
  t.diagnostic(`unanswered PING: session closed ${closedAt[0] - started} ms after the request (ping_interval 100ms, ping_timeout 200ms)`);
  assert.ok(pingsIgnored[0] >= 1, 'a PING was sent');
  // The next request gets a new session.
  assert.equal((await get(`${lb2.url}/`)).status, 200);
  assert.equal(raw.sockets.length, 2);
});

/** One HTTP/2 frame (RFC 9113 section 4.1). */
function frame(type: number, flags: number, stream: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(stream, 5);
  return Buffer.concat([head, payload]);
}

test('idle sessions close after keepalive.idle_timeout (less the margin)', { timeout: bounded }, async (t) => {
  const backend = await startH2Backend(t, (stream) => (stream.respond({ ':status': 200 }), stream.end('ok')));
  const lb = await balancerFor(t, h2cPool([backend.url], { keepalive: { idle_timeout: 300, safety_margin: 100 }, http2: { ping_interval: 0 } }));
  const started = Date.now();
  assert.equal((await get(`${lb.url}/`)).status, 200);
  await eventually(() => backend.open() === 0 && backend.sessions.length === 1, { what: 'the idle session closed' });
  t.diagnostic(`closed ${Date.now() - started} ms after the request`);
  assert.equal((await get(`${lb.url}/`)).status, 200);
  assert.equal(backend.sessions.length, 2);
});

test('backend killed mid-answer: a body cut off ends the client response (no hang); killed before the headers, a POST is a 502', { timeout: bounded }, async (t) => {
  const backend = await startH2Backend(t, (stream, headers) => {
    if (headers[':path'] === '/mid-body') {
      stream.respond({ ':status': 200 });
      stream.write(Buffer.alloc(1000, 'x'), () => stream.session!.socket.destroy());
      return;
    }
    void readBody(stream).then(() => stream.session!.socket.destroy());
  });
  const lb = await balancerFor(t, h2cPool([backend.url]));
  const cut = await new Promise<{ status: number; bytes: number; aborted: boolean }>((resolve, reject) => {
    http
      .get(`${lb.url}/mid-body`, { agent: false }, (res) => {
        let bytes = 0;
        let aborted = false;
        res.on('data', (c: Buffer) => (bytes += c.length));
        res.on('aborted', () => (aborted = true));
        res.on('error', () => (aborted = true));
        res.on('close', () => resolve({ status: res.statusCode!, bytes, aborted: aborted || !res.complete }));
      })
      .on('error', reject);
  });
  assert.deepEqual(cut, { status: 200, bytes: 1000, aborted: true });
  const r = await get(`${lb.url}/before-headers`, { method: 'POST', body: 'x', headers: { 'content-length': '1' } });
  assert.equal(r.status, 502);
  assert.equal(lb.ended.at(-1)?.error?.code, ErrorCode.UpstreamReset);
  assert.match(r.body, /upstream closed the connection/);
});

test('connect refused: the request goes to another upstream; a refused one alone is a 502 FUL_UPSTREAM_CONNECT_REFUSED', { timeout: bounded }, async (t) => {
  const backend = await startH2Backend(t, echo);
  const dead = await closedPort();
  const lb = await balancerFor(t, h2cPool([`http://127.0.0.1:${dead}`, backend.url], { outlier_detection: { enabled: false } }));
  for (let i = 0; i < 4; i++) {
    const r = await get(`${lb.url}/${i}`, { method: 'POST', body: 'post', headers: { 'content-length': '4' } });
    assert.equal(r.status, 200, `request ${i}`);
  }
  assert.ok(lb.ended.some((c) => c.attempts === 2), 'some went to the dead one first');
  const lone = await balancerFor(t, h2cPool([`http://127.0.0.1:${dead}`]));
  const r = await get(`${lone.url}/`);
  assert.equal(r.status, 502);
  assert.equal(lone.ended[0].error?.code, ErrorCode.ConnectRefused);
});

test('h2c toward an HTTP/1.1 server: 502 FUL_UPSTREAM_PROTOCOL_ERROR saying it does not speak HTTP/2, and the request goes to another upstream', { timeout: bounded }, async (t) => {
  const h1 = await startBackend(t, (_req, res) => res.end('h1'));
  const h2 = await startH2Backend(t, echo);
  const lone = await balancerFor(t, h2cPool([h1.url]));
  const r = await get(`${lone.url}/`);
  assert.equal(r.status, 502);
  assert.match(r.body, /^502 Bad Gateway: upstream does not speak HTTP\/2 \(h2c, prior knowledge\)/);
  assert.equal(lone.ended[0].error?.code, ErrorCode.UpstreamProtocol);
  const lb = await balancerFor(t, h2cPool([h1.url, h2.url], { outlier_detection: { enabled: false } }));
  for (let i = 0; i < 2; i++) assert.equal((await get(`${lb.url}/`, { method: 'POST', body: 'p', headers: { 'content-length': '1' } })).status, 200);
  assert.deepEqual(lb.ended.map((c) => c.attempts).sort(), [1, 2]);
});

test('reloads: the same pool keeps its HTTP/2 session; changed http2 settings get a new one and the old one closes', { timeout: bounded }, async (t) => {
  const backend = await startH2Backend(t, echo);
  const pool = (streams: number): Record<string, unknown> => h2cPool([backend.url], { http2: { max_concurrent_streams: streams } });
  const lb = await balancerFor(t, pool(100));
  const reload = (streams: number) => lb.balancer.reload({ listeners: [{ host: '127.0.0.1', port: lb.port }], pools: { web: pool(streams) }, routes: [{ pool: 'web' }] } as never);
  assert.equal((await get(`${lb.url}/`)).status, 200);
  await reload(100);
  assert.equal((await get(`${lb.url}/`)).status, 200);
  assert.equal(backend.sessions.length, 1, 'kept across a reload that changed nothing');
  await reload(50);
  assert.equal((await get(`${lb.url}/`)).status, 200);
  assert.equal(backend.sessions.length, 2, 'new settings, new session');
  await eventually(() => backend.open() === 1, { what: 'the old session closed' });
});

test('timeouts: connect (a black hole; a silent TLS server; an h2c server that never sends SETTINGS) 504, response headers 504, idle body cuts the answer', { timeout: bounded }, async (t) => {
  const hole = await startBlackhole(t);
  // Accepts and never writes a byte: no ServerHello, no SETTINGS.
  const silent = await startRawBackend(t, () => {});
  const backend = await startH2Backend(t, (stream, headers) => {
    if (headers[':path'] === '/silent') return;
    stream.respond({ ':status': 200 });
    stream.write('first');
  });
  const lb = await startBalancer(t, {
    pools: {
      hole: { protocol: 'h2c', upstreams: [`http://127.0.0.1:${hole}`], timeouts: { connect: 200 } },
      tls: { protocol: 'h2', upstreams: [`https://127.0.0.1:${silent.port}`], timeouts: { connect: 200 } },
      settings: { protocol: 'h2c', upstreams: [silent.url], timeouts: { connect: 200 } },
      slow: { protocol: 'h2c', upstreams: [backend.url], timeouts: { response_headers: 200, idle_body: 200 } },
    },
    routes: [
      { path_prefix: '/hole', pool: 'hole' },
      { path_prefix: '/tls', pool: 'tls' },
      { path_prefix: '/settings', pool: 'settings' },
      { pool: 'slow' },
    ],
  });
  const connect = await get(`${lb.url}/hole`);
  assert.equal(connect.status, 504);
  assert.equal(lb.ended.at(-1)?.error?.code, ErrorCode.ConnectTimeout);
  for (const [path, why] of [['/tls', 'connected, TLS handshake not finished'], ['/settings', 'connected, no HTTP/2 SETTINGS from the upstream']]) {
    const r = await get(`${lb.url}${path}`);
    assert.equal(r.status, 504, path);
    assert.equal(lb.ended.at(-1)?.error?.code, ErrorCode.ConnectTimeout);
    assert.ok(String((lb.ended.at(-1)?.error?.cause as Error | undefined)?.message).includes(why), `${path}: ${(lb.ended.at(-1)?.error?.cause as Error | undefined)?.message}`);
  }
  const headers = await get(`${lb.url}/silent`, { method: 'POST', body: 'x', headers: { 'content-length': '1' } });
  assert.equal(headers.status, 504);
  assert.equal(lb.ended.at(-1)?.error?.code, ErrorCode.HeadersTimeout);
  const body = await new Promise<{ status: number; text: string; complete: boolean }>((resolve) => {
    http.get(`${lb.url}/stalls`, { agent: false }, (res) => {
      let text = '';
      res.on('data', (c) => (text += c));
      res.on('error', () => {});
      res.on('close', () => resolve({ status: res.statusCode!, text, complete: res.complete }));
    });
  });
  assert.deepEqual(body, { status: 200, text: 'first', complete: false });
  assert.equal(lb.ended.at(-1)?.error?.code, ErrorCode.BodyTimeout);
});

test('a client that leaves mid-answer resets the upstream stream (CANCEL); the session stays for the next request', { timeout: bounded }, async (t) => {
  const rst: number[] = [];
  const backend = await startH2Backend(t, (stream, headers) => {
    if (headers[':path'] === '/next') return void (stream.respond({ ':status': 200 }), stream.end('ok'));
    stream.on('close', () => rst.push(stream.rstCode));
    stream.respond({ ':status': 200 });
    stream.write('part');
  });
  const lb = await balancerFor(t, h2cPool([backend.url]));
  await new Promise<void>((resolve) => {
    const req = http.get(`${lb.url}/long`, { agent: false }, (res) => res.once('data', () => (req.destroy(), resolve())));
    req.on('error', () => {});
  });
  await eventually(() => rst.length === 1, { what: 'the backend stream closed' });
  assert.deepEqual(rst, [http2.constants.NGHTTP2_CANCEL]);
  assert.equal((await get(`${lb.url}/next`)).status, 200);
  assert.equal(backend.sessions.length, 1);
});

test('status: node:http2 failures map to the right answer (refused: unprocessed, any method; protocol-class codes 502 protocol; resets 502; request-side refusals 400)', { timeout: bounded }, () => {
  const h2error = (code: string, message: string, http2Code?: number): Error => Object.assign(new Error(message), { code }, http2Code === undefined ? {} : { http2Code });
  const cases: [Error, boolean, string, number, boolean][] = [
    [h2error('ERR_HTTP2_STREAM_ERROR', 'Stream closed with error code NGHTTP2_REFUSED_STREAM'), true, ErrorCode.UpstreamUnprocessed, 502, true],
    [h2error('ERR_HTTP2_GOAWAY_SESSION', 'New streams cannot be created after receiving a GOAWAY'), true, ErrorCode.UpstreamUnprocessed, 502, true],
    [h2error('ERR_HTTP2_STREAM_ERROR', 'Stream closed with error code NGHTTP2_PROTOCOL_ERROR'), true, ErrorCode.UpstreamProtocol, 502, false],
    [h2error('ERR_HTTP2_SESSION_ERROR', 'Session closed with error code 9'), true, ErrorCode.UpstreamProtocol, 502, false],
    [h2error('ERR_HTTP2_STREAM_ERROR', 'upstream reset the stream mid-body (INTERNAL_ERROR)', 2), true, ErrorCode.UpstreamReset, 502, false],
    [h2error('ERR_HTTP2_SESSION_ERROR', 'upstream ended the session with GOAWAY (ENHANCE_YOUR_CALM)', 11), true, ErrorCode.UpstreamReset, 502, false],
    [h2error('ERR_HTTP2_STREAM_CANCEL', 'The pending stream has been canceled'), false, ErrorCode.UpstreamReset, 502, true],
    [h2error('ERR_HTTP2_PING_TIMEOUT', 'upstream did not answer a PING'), true, ErrorCode.UpstreamReset, 502, false],
    [h2error('ERR_HTTP2_ERROR', 'Protocol error'), true, ErrorCode.UpstreamProtocol, 502, false],
    [h2error('ERR_HTTP2_INVALID_HEADER_VALUE', 'Invalid value "undefined" for header "x"'), false, ErrorCode.BadRequest, 400, false],
    [h2error('ERR_HTTP2_HEADER_SINGLE_VALUE', 'Header field "content-type" must only have a single value'), false, ErrorCode.BadRequest, 400, false],
    [h2error('UND_ERR_HEADERS_TIMEOUT', 'no response headers within 200ms'), true, ErrorCode.HeadersTimeout, 504, false],
  ];
  for (const [err, sent, code, status, retryable] of cases) {
    const f = upstreamFailure(err, sent);
    assert.deepEqual([f.code, f.status, f.retryable], [code, status, retryable], `${(err as NodeJS.ErrnoException).code}: ${err.message}`);
  }
  assert.match(upstreamFailure(h2error('ERR_HTTP2_SESSION_ERROR', 'x', 13), true).message, /HTTP_1_1_REQUIRED.*protocol http1/);
});
