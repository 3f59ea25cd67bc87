/**
 * Review of the HTTP/2 upstream client (src/transport/http2.ts): the faults found by reading it,
 * each kept as a regression test against a raw HTTP/2 backend (test/helpers/h2-frames.ts) or a
 * node:http2 one (a RST_STREAM(NO_ERROR) mid-body, an early answer while flow control holds a
 * retried body, SETTINGS_MAX_CONCURRENT_STREAMS 0, session-fatal protocol errors and what a retry
 * after them may pick), and the behaviour checked on the way that holds (counters after failed
 * connects, a peer lowering its stream limit mid-session, a client that leaves mid-upload, TLS
 * session resumption for h2). Cases already covered by http2-upstream.test.ts are not repeated.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { closedPort, get, startBalancer, startRawBackend, type TestBalancer } from '../helpers/servers.ts';
import { startBlackhole } from '../helpers/blackhole.ts';
import { makeTestCa } from '../helpers/tls.ts';
import { eventually } from '../helpers/eventually.ts';
import { ErrorCode as H2Code, FrameReader, FrameType, Flag, PREFACE, Setting, data, headers, hpackLiteral, rstStream, settings, settingsAck, type Frame } from '../helpers/h2-frames.ts';
import { http2UpstreamStats } from '../../src/transport/http2.ts';

const bounded = 20_000;
/** HPACK `:status: 200` from the static table (RFC 7541 appendix A). */
const STATUS_200 = Buffer.from([0x88]);

async function balancerFor(t: TestContext, pool: Record<string, unknown>): Promise<TestBalancer> {
  return startBalancer(t, { pools: { web: pool }, routes: [{ pool: 'web' }] } as unknown as Parameters<typeof startBalancer>[1]);
}

/**
 * A raw HTTP/2 server: sends `opening` SETTINGS, acknowledges the client's, and hands every frame
 * after the preface to `onFrame` with its socket.
 */
async function startRawH2(t: TestContext, onFrame: (socket: net.Socket, f: Frame) => void, opening: readonly (readonly [number, number])[] = []) {
  return startRawBackend(t, (socket) => {
    const reader = new FrameReader();
    let preface = Buffer.alloc(0);
    let afterPreface = false;
    socket.write(settings(opening));
    socket.on('data', (d: Buffer) => {
      if (!afterPreface) {
        preface = Buffer.concat([preface, d]);
        if (preface.length < PREFACE.length) return;
        d = preface.subarray(PREFACE.length);
        afterPreface = true;
      }
      for (const f of reader.push(d)) {
        if (f.type === FrameType.SETTINGS && (f.flags & Flag.ACK) === 0) socket.write(settingsAck());
        onFrame(socket, f);
      }
    });
  });
}

/** A GET whose answer is read to its close: status, body, and whether HTTP/1.1 framing said it was complete. */
function fetchWhole(url: string): Promise<{ status: number; body: string; complete: boolean }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent: false }, (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('error', () => {});
        res.on('close', () => resolve({ status: res.statusCode!, body, complete: res.complete }));
      })
      .on('error', reject);
  });
}

test('an upstream that resets with NO_ERROR mid-body (no Content-Length): the answer is cut, not passed on as complete', { timeout: bounded }, async (t) => {
  // HEADERS 200 without Content-Length, half the body, then RST_STREAM(NO_ERROR): the answer was cut (RFC 9113 section 8.1 allows NO_ERROR only after END_STREAM).
  const raw = await startRawH2(t, (socket, f) => {
    if (f.type !== FrameType.HEADERS) return;
    socket.write(Buffer.concat([headers(f.streamId, STATUS_200), data(f.streamId, Buffer.from('first half')), rstStream(f.streamId, H2Code.NO_ERROR)]));
  });
  const lb = await balancerFor(t, { protocol: 'h2c', upstreams: [raw.url] });
  const r = await fetchWhole(`${lb.url}/cut`);
  assert.equal(r.status, 200);
  assert.equal(r.body, 'first half');
  // No terminal chunk: a client (or a cache) must not take half an answer for a whole one.
  assert.equal(r.complete, false, 'the client was told the answer is complete although the upstream cut it');
  await eventually(() => lb.ended.length === 1, { what: 'the exchange ended' });
  assert.ok(lb.ended[0].error !== null, 'the access log records the truncation as an error');
});

test('control: RST_STREAM(NO_ERROR) after END_STREAM (RFC 9113 section 8.1) is a complete answer', { timeout: bounded }, async (t) => {
  const raw = await startRawH2(t, (socket, f) => {
    if (f.type !== FrameType.HEADERS) return;
    socket.write(Buffer.concat([headers(f.streamId, STATUS_200), data(f.streamId, Buffer.from('whole'), true), rstStream(f.streamId, H2Code.NO_ERROR)]));
  });
  const lb = await balancerFor(t, { protocol: 'h2c', upstreams: [raw.url] });
  assert.deepEqual(await fetchWhole(`${lb.url}/`), { status: 200, body: 'whole', complete: true });
});

test('a retried (Buffer) body the upstream does not read, answered in full early: the exchange ends at the answer, the upload is cancelled', { timeout: bounded }, async (t) => {
  const size = 60_000;
  let streamsSeen = 0;
  const raw = await startRawH2(t, (socket, f) => {
    if (f.type === FrameType.HEADERS) streamsSeen++;
    // Stream 1: read the whole body (so Fulcrum kept and ended it), then refuse it: unprocessed, sent again as a Buffer.
    if (f.streamId === 1 && f.type === FrameType.DATA && (f.flags & Flag.END_STREAM) !== 0) socket.write(rstStream(1, H2Code.REFUSED_STREAM));
    // Stream 3: the connection window (65535 less the first 60000) cannot carry the retried body and no WINDOW_UPDATE comes;
    // the upstream answers in full at once (a 200 with END_STREAM), as a server that did not want the body may.
    if (f.streamId === 3 && f.type === FrameType.HEADERS) socket.write(Buffer.concat([headers(3, STATUS_200), data(3, Buffer.from('early answer'), true)]));
  });
  const lb = await balancerFor(t, { protocol: 'h2c', upstreams: [raw.url] });
  const before = http2UpstreamStats.streamsInFlight;
  const answer = new Promise<{ status: number; body: string; complete: boolean }>((resolve, reject) => {
    const req = http.request(`${lb.url}/upload`, { method: 'POST', agent: false, headers: { 'content-length': String(size) } }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('error', () => {});
      res.on('close', () => resolve({ status: res.statusCode!, body, complete: res.complete }));
    });
    req.on('error', reject);
    t.after(() => req.destroy());
    req.end(Buffer.alloc(size, 'b'));
  });
  await eventually(() => streamsSeen === 2, { what: 'the retry reached the backend' });
  // The answer was complete at the backend's END_STREAM: the exchange should end now, not at shutdown.
  await eventually(() => lb.ended.length === 1, { timeout: 3000, what: 'the exchange ended after the complete answer (it waits for a stream close that never comes)' });
  assert.deepEqual(await answer, { status: 200, body: 'early answer', complete: true });
  await eventually(() => http2UpstreamStats.streamsInFlight === before, { what: 'no stream left in flight' });
});

test('a peer that allows 0 concurrent streams: one connection for the request, which fails as unprocessed (no storm of connects)', { timeout: bounded }, async (t) => {
  // SETTINGS_MAX_CONCURRENT_STREAMS 0 is legal (RFC 9113 section 6.5.2: no new streams for now), e.g. a server shedding load.
  const raw = await startRawH2(t, () => {}, [[Setting.MAX_CONCURRENT_STREAMS, 0]]);
  const lb = await balancerFor(t, { protocol: 'h2c', upstreams: [raw.url], timeouts: { request: 1000 } });
  const r = await get(`${lb.url}/`);
  t.diagnostic(`status ${r.status}; connections opened for one request in 1s: ${raw.sockets.length}`);
  assert.ok(r.status >= 500, `status ${r.status}`);
  // One connection (or a few, with backoff) would do; an unbounded loop of connects is a storm toward an upstream that asked for less load.
  assert.ok(raw.sockets.length <= 3, `${raw.sockets.length} connections opened for one request`);
  assert.equal(lb.ended[0].error?.code, 'FUL_UPSTREAM_UNPROCESSED');
});

test('counters: sessionsOpen and streamsInFlight come back after connect refused, a connect timeout, an h2 handshake refused by ALPN', { timeout: bounded }, async (t) => {
  const dead = await closedPort();
  const hole = await startBlackhole(t);
  const ca = await makeTestCa(t);
  const cert = await ca.issue('h1only');
  const https = await import('node:https');
  const h1only = https.createServer({ cert: cert.cert, key: cert.key }, (_req, res) => res.end('h1'));
  h1only.on('tlsClientError', () => {});
  await new Promise<void>((resolve) => h1only.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => (h1only.closeAllConnections(), h1only.close(() => resolve()))));
  const before = { sessions: http2UpstreamStats.sessionsOpen, streams: http2UpstreamStats.streamsInFlight };
  const lb = await startBalancer(t, {
    pools: {
      refused: { protocol: 'h2c', upstreams: [`http://127.0.0.1:${dead}`] },
      hole: { protocol: 'h2c', upstreams: [`http://127.0.0.1:${hole}`], timeouts: { connect: 150 } },
      alpn: { protocol: 'h2', upstreams: [`https://127.0.0.1:${(h1only.address() as AddressInfo).port}`], tls: { ca: ca.caPath } },
    },
    routes: [
      { path_prefix: '/refused', pool: 'refused' },
      { path_prefix: '/hole', pool: 'hole' },
      { pool: 'alpn' },
    ],
  } as never);
  assert.equal((await get(`${lb.url}/refused`)).status, 502);
  assert.equal((await get(`${lb.url}/hole`)).status, 504);
  assert.equal((await get(`${lb.url}/alpn`)).status, 502);
  await eventually(() => http2UpstreamStats.sessionsOpen === before.sessions && http2UpstreamStats.streamsInFlight === before.streams, {
    what: `counters back (sessions ${http2UpstreamStats.sessionsOpen} vs ${before.sessions})`,
  });
});

test('a peer lowering SETTINGS_MAX_CONCURRENT_STREAMS mid-session: the next stream goes to a new session, none is refused', { timeout: bounded }, async (t) => {
  const sessions: http2.ServerHttp2Session[] = [];
  const held: http2.ServerHttp2Stream[] = [];
  const server = http2.createServer({ settings: { maxConcurrentStreams: 2 } });
  server.on('session', (s) => (sessions.push(s), s.on('error', () => {})));
  server.on('stream', (stream) => {
    stream.on('error', () => {});
    held.push(stream);
    if (held.length === 2) stream.session!.settings({ maxConcurrentStreams: 1 });
    if (held.length === 3) for (const s of held) (s.respond({ ':status': 200 }), s.end('ok'));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => (sessions.forEach((s) => s.destroy()), server.close(() => resolve()))));
  const lb = await balancerFor(t, { protocol: 'h2c', upstreams: [`http://127.0.0.1:${(server.address() as AddressInfo).port}`] });
  const first = [get(`${lb.url}/1`), get(`${lb.url}/2`)];
  await eventually(() => held.length === 2, { what: 'two streams on the first session' });
  // The lowered limit has reached Fulcrum once the SETTINGS ack is back at the server.
  await eventually(() => sessions[0].localSettings.maxConcurrentStreams === 1 && !sessions[0].pendingSettingsAck, { what: 'SETTINGS acked' });
  const third = get(`${lb.url}/3`);
  const all = await Promise.all([...first, third]);
  assert.deepEqual(all.map((r) => r.status), [200, 200, 200]);
  assert.equal(sessions.length, 2);
  assert.deepEqual(lb.ended.map((c) => c.attempts), [1, 1, 1]);
});

test('a client that leaves mid-upload: the upstream stream is reset (CANCEL), nothing left in flight', { timeout: bounded }, async (t) => {
  const codes: number[] = [];
  let received = 0;
  const server = http2.createServer();
  const sessions: http2.ServerHttp2Session[] = [];
  server.on('session', (s) => (sessions.push(s), s.on('error', () => {})));
  server.on('stream', (stream) => {
    stream.on('error', () => {});
    stream.on('data', (c: Buffer) => (received += c.length));
    stream.on('close', () => codes.push(stream.rstCode));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => (sessions.forEach((s) => s.destroy()), server.close(() => resolve()))));
  const lb = await balancerFor(t, { protocol: 'h2c', upstreams: [`http://127.0.0.1:${(server.address() as AddressInfo).port}`] });
  const before = http2UpstreamStats.streamsInFlight;
  const socket = net.connect(lb.port, '127.0.0.1');
  socket.on('error', () => {});
  socket.write('POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n');
  await eventually(() => received === 5, { what: 'the first chunk at the backend' });
  socket.destroy();
  await eventually(() => codes.length === 1, { what: 'the backend stream closed' });
  assert.deepEqual(codes, [http2.constants.NGHTTP2_CANCEL]);
  await eventually(() => http2UpstreamStats.streamsInFlight === before, { what: 'no stream in flight' });
});

test('an upstream Content-Length its DATA does not match: cut either way, and logged as a protocol error both ways (the longer one is a session error in node:http2)', { timeout: bounded }, async (t) => {
  const raw = await startRawH2(t, (socket, f) => {
    if (f.type !== FrameType.HEADERS) return;
    const length = f.streamId === 1 ? '10' : '3';
    socket.write(Buffer.concat([headers(f.streamId, Buffer.concat([STATUS_200, hpackLiteral('content-length', length)])), data(f.streamId, Buffer.from('12345'), true)]));
  });
  const lb = await balancerFor(t, { protocol: 'h2c', upstreams: [raw.url] });
  for (const path of ['/short', '/long']) {
    const r = await new Promise<{ status: number; complete: boolean }>((resolve, reject) => {
      http.get(`${lb.url}${path}`, { agent: false }, (res) => {
        res.resume();
        res.on('error', () => {});
        res.on('close', () => resolve({ status: res.statusCode!, complete: res.complete }));
      }).on('error', reject);
    });
    // Either a 502 before the head or a cut answer; never a complete one.
    assert.ok(r.status === 502 || !r.complete, `${path}: ${JSON.stringify(r)}`);
  }
  assert.equal(lb.ended.length, 2);
  for (const c of lb.ended) t.diagnostic(`${c.status} ${c.error?.code} ${c.error?.message} / ${(c.error?.cause as Error)?.message}`);
  for (const c of lb.ended) assert.equal(c.error?.code, 'FUL_UPSTREAM_PROTOCOL_ERROR');
});

test('h2 over TLS: a second session resumes the TLS session of the first', { timeout: bounded }, async (t) => {
  const ca = await makeTestCa(t);
  const cert = await ca.issue('localhost');
  const reused: boolean[] = [];
  const sessions: http2.ServerHttp2Session[] = [];
  const server = http2.createSecureServer({ cert: cert.cert, key: cert.key });
  server.on('secureConnection', (s: TLSSocket) => reused.push(s.isSessionReused()));
  server.on('session', (s) => (sessions.push(s), s.on('error', () => {})));
  server.on('stream', (stream) => (stream.on('error', () => {}), stream.respond({ ':status': 200 }), stream.end('ok')));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => (sessions.forEach((s) => s.destroy()), server.close(() => resolve()))));
  const lb = await balancerFor(t, { protocol: 'h2', upstreams: [`https://localhost:${(server.address() as AddressInfo).port}`], tls: { ca: ca.caPath }, keepalive: { idle_timeout: 200, safety_margin: 50 }, http2: { ping_interval: 0 } });
  assert.equal((await get(`${lb.url}/`)).status, 200);
  await eventually(() => sessions.length === 1 && sessions[0].closed, { what: 'the idle session closed' });
  assert.equal((await get(`${lb.url}/`)).status, 200);
  assert.deepEqual(reused, [false, true]);
});

test('a session-level protocol error on a reused session: a 502 protocol error, one attempt, held against the upstream (not a stale connection)', { timeout: bounded }, async (t) => {
  // Per connection: stream 1 answered well, any later stream answered with an invalid HPACK block
  // (index 0, RFC 7541 section 6.1: a COMPRESSION_ERROR, fatal to the connection).
  const raw = await startRawH2(t, (socket, f) => {
    if (f.type !== FrameType.HEADERS) return;
    socket.write(f.streamId === 1 ? Buffer.concat([headers(1, STATUS_200), data(1, Buffer.from('ok'), true)]) : headers(f.streamId, Buffer.from([0x80]), { endStream: true }));
  });
  const lb = await balancerFor(t, { protocol: 'h2c', upstreams: [raw.url], outlier_detection: { enabled: false } });
  assert.equal((await get(`${lb.url}/first`)).status, 200);
  const second = await get(`${lb.url}/second`);
  for (const l of lb.logs) if (/retr/i.test(l)) t.diagnostic(l.slice(0, 300));
  t.diagnostic(`streams seen ${raw.sockets.length} connections; second: ${second.status}, attempts ${lb.ended[1]?.attempts}, error ${lb.ended[1]?.error?.code}, failures ${lb.balancer.status().backends[0].failures}`);
  // The upstream broke the protocol: a 502 protocol error, one attempt, held against the upstream (as on HTTP/1.1).
  assert.equal(second.status, 502);
  assert.equal(lb.ended[1].error?.code, 'FUL_UPSTREAM_PROTOCOL_ERROR');
  assert.equal(lb.ended[1].attempts, 1);
  assert.equal(lb.balancer.status().backends[0].failures, 1);
});

/** A raw backend that answers stream 1 of each connection and drops the connection (no GOAWAY) at any later stream. */
async function startDroppingH2(t: TestContext) {
  return startRawH2(t, (socket, f) => {
    if (f.type !== FrameType.HEADERS) return;
    if (f.streamId === 1) socket.write(Buffer.concat([headers(1, STATUS_200), data(1, Buffer.from('ok'), true)]));
    else socket.destroy();
  });
}

/** The retry reasons the proxy logged (`reset`, `stale-connection`, ...). */
function retryReasons(lb: TestBalancer): string[] {
  const out: string[] = [];
  for (const line of lb.logs) {
    const m = /"reason":"([a-z-]+):/.exec(line);
    if (m !== null) out.push(m[1]);
  }
  return out;
}

test('a connection dropped under a stream of a session just used: the retry gets a new session, never the dying one, and the reset is no stale connection', { timeout: bounded }, async (t) => {
  const raw = await startDroppingH2(t);
  const lb = await balancerFor(t, { protocol: 'h2c', upstreams: [raw.url], outlier_detection: { enabled: false } });
  assert.equal((await get(`${lb.url}/first`)).status, 200);
  const second = await get(`${lb.url}/second`);
  assert.equal(second.status, 200);
  // One retry, on a second connection: node:http2 had destroyed the first before it emitted 'close', and it took no stream meanwhile.
  assert.equal(lb.ended[1].attempts, 2);
  assert.equal(raw.sockets.length, 2);
  // A stream ended on that session a moment ago: the upstream cannot have closed it for idleness (the keep-alive race).
  assert.deepEqual(retryReasons(lb), ['reset']);
  assert.equal(lb.balancer.status().backends[0].failures, 1);
});

test('a connection dropped under the first stream of a session idle past a second: retried as a stale connection, not held against the upstream', { timeout: bounded }, async (t) => {
  const raw = await startDroppingH2(t);
  const lb = await balancerFor(t, { protocol: 'h2c', upstreams: [raw.url], outlier_detection: { enabled: false }, http2: { ping_interval: 0 } });
  assert.equal((await get(`${lb.url}/first`)).status, 200);
  // The wait is the point: the session must have been idle for longer than src/transport/http2.ts's staleAfterMs (1 s).
  await new Promise((resolve) => setTimeout(resolve, 1200));
  assert.equal((await get(`${lb.url}/second`)).status, 200);
  assert.equal(raw.sockets.length, 2);
  assert.deepEqual(retryReasons(lb), ['stale-connection']);
  assert.equal(lb.balancer.status().backends[0].failures, 0);
});

test('a peer lowering SETTINGS_MAX_CONCURRENT_STREAMS to 0 mid-session: new requests fail as unprocessed without a new connection; raised again, the session takes them', { timeout: bounded }, async (t) => {
  const sessions: http2.ServerHttp2Session[] = [];
  const held: http2.ServerHttp2Stream[] = [];
  const server = http2.createServer();
  server.on('session', (s) => (sessions.push(s), s.on('error', () => {})));
  server.on('stream', (stream, head) => {
    stream.on('error', () => {});
    if (head[':path'] === '/held') return void held.push(stream);
    stream.respond({ ':status': 200 });
    stream.end('ok');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => (sessions.forEach((s) => s.destroy()), server.close(() => resolve()))));
  const lb = await balancerFor(t, { protocol: 'h2c', upstreams: [`http://127.0.0.1:${(server.address() as AddressInfo).port}`] });
  const first = get(`${lb.url}/held`);
  await eventually(() => held.length === 1, { what: 'the first stream at the backend' });
  const acked = (limit: number) => () => sessions[0].localSettings.maxConcurrentStreams === limit && !sessions[0].pendingSettingsAck;
  sessions[0].settings({ maxConcurrentStreams: 0 });
  await eventually(acked(0), { what: 'SETTINGS 0 acked' });
  const refused = await get(`${lb.url}/refused`);
  assert.equal(refused.status, 502);
  assert.equal(lb.ended[0].error?.code, 'FUL_UPSTREAM_UNPROCESSED');
  assert.equal(sessions.length, 1, 'no other connection opened while the upstream allows no streams');
  sessions[0].settings({ maxConcurrentStreams: 10 });
  await eventually(acked(10), { what: 'SETTINGS 10 acked' });
  assert.equal((await get(`${lb.url}/after`)).status, 200);
  held[0].respond({ ':status': 200 });
  held[0].end('held');
  assert.equal((await first).status, 200);
  assert.equal(sessions.length, 1);
});

test('a trailers-only answer while flow control holds a retried (Buffer) body: the exchange ends, the stream is cancelled, nothing left in flight', { timeout: bounded }, async (t) => {
  const size = 60_000;
  let streamsSeen = 0;
  const raw = await startRawH2(t, (socket, f) => {
    if (f.type === FrameType.HEADERS) streamsSeen++;
    if (f.streamId === 1 && f.type === FrameType.DATA && (f.flags & Flag.END_STREAM) !== 0) socket.write(rstStream(1, H2Code.REFUSED_STREAM));
    // As above, but the answer is one HEADERS frame with END_STREAM (how gRPC answers an error).
    if (f.streamId === 3 && f.type === FrameType.HEADERS) socket.write(headers(3, STATUS_200, { endStream: true }));
  });
  const lb = await balancerFor(t, { protocol: 'h2c', upstreams: [raw.url] });
  const before = http2UpstreamStats.streamsInFlight;
  const answer = new Promise<number>((resolve, reject) => {
    const req = http.request(`${lb.url}/upload`, { method: 'POST', agent: false, headers: { 'content-length': String(size) } }, (res) => {
      res.resume();
      res.on('close', () => resolve(res.statusCode!));
    });
    req.on('error', reject);
    t.after(() => req.destroy());
    req.end(Buffer.alloc(size, 'b'));
  });
  assert.equal(await answer, 200);
  assert.equal(streamsSeen, 2);
  await eventually(() => http2UpstreamStats.streamsInFlight === before, { what: 'no stream left in flight (the held upload cancelled)' });
});
