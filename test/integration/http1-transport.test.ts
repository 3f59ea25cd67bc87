/**
 * Fulcrum's own upstream client (src/transport/http1.ts), on what is its own: Keep-Alive
 * timeouts, LIFO reuse, the queue beyond max_sockets, one write per request head, stale sockets,
 * HEAD on a kept socket, trailers, and malformed answers (502, the process lives). What every
 * transport must do is tested for all three in the other integration tests.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { get, rawExchange, startBalancer, startRawBackend } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';

/** One request as a raw backend saw it: its head, its body, the socket it came on and the reads it took. */
interface SeenRequest {
  method: string;
  path: string;
  head: string;
  body: string;
  socket: net.Socket;
  /** The socket's 'data' events that carried this request. */
  reads: string[];
}

/**
 * A raw backend that parses requests (Content-Length bodies only) and lets `answer` write
 * whatever it likes; it records every request and read.
 */
async function scriptedBackend(t: TestContext, answer: (req: SeenRequest, n: number) => void): Promise<{ url: string; sockets: net.Socket[]; requests: SeenRequest[]; open: () => number }> {
  const requests: SeenRequest[] = [];
  let open = 0;
  const raw = await startRawBackend(t, (socket) => {
    open++;
    socket.on('close', () => open--);
    let buffered = '';
    let reads: string[] = [];
    socket.on('data', (d) => {
      reads.push(d.toString('latin1'));
      buffered += d.toString('latin1');
      for (;;) {
        const end = buffered.indexOf('\r\n\r\n');
        if (end === -1) return;
        const head = buffered.slice(0, end);
        const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
        if (buffered.length < end + 4 + length) return;
        const [method, path] = head.split(' ');
        const req: SeenRequest = { method, path, head, body: buffered.slice(end + 4, end + 4 + length), socket, reads };
        reads = [];
        buffered = buffered.slice(end + 4 + length);
        requests.push(req);
        answer(req, requests.length);
      }
    });
  });
  return { url: raw.url, sockets: raw.sockets, requests, open: () => open };
}

const ok = (req: SeenRequest): void => void req.socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${req.path.length}\r\n\r\n${req.path}`);

test('Keep-Alive: timeout=N from the upstream is honoured less the margin; nothing left: not reused', async (t) => {
  let timeout = 1;
  const backend = await scriptedBackend(t, (req) => req.socket.write(`HTTP/1.1 200 OK\r\nKeep-Alive: timeout=${timeout}\r\nContent-Length: 2\r\n\r\nok`));
  const lb = await startBalancer(t, { pools: { web: { transport: 'http1', upstreams: [backend.url], keepalive: { idle_timeout: '30s', safety_margin: '1s' } } } });
  // timeout=1 less a 1 s margin leaves nothing: every request on a new socket, each closed after its answer.
  for (let i = 0; i < 3; i++) assert.equal((await get(`${lb.url}/`)).status, 200);
  assert.equal(backend.sockets.length, 3);
  await eventually(() => backend.open() === 0, { what: 'the sockets not kept to close' });
  // timeout=2 leaves 1 s: reused at once, then closed by Fulcrum about 1 s after its last use.
  timeout = 2;
  for (let i = 0; i < 3; i++) assert.equal((await get(`${lb.url}/`)).status, 200);
  assert.equal(backend.sockets.length, 4, 'one socket for three requests');
  const idleSince = performance.now();
  await eventually(() => backend.open() === 0, { timeout: 5000, what: 'the idle socket to be retired' });
  const kept = performance.now() - idleSince;
  t.diagnostic(`kept idle ${Math.round(kept)} ms`);
  assert.ok(kept > 700 && kept < 1800, `retired after ${Math.round(kept)} ms, expected about 1000`);
});

test('idle sockets are reused most recently used first (LIFO)', async (t) => {
  const held: SeenRequest[] = [];
  const backend = await scriptedBackend(t, (req) => {
    if (req.path.startsWith('/hold')) held.push(req);
    else ok(req);
  });
  const lb = await startBalancer(t, { pools: { web: { transport: 'http1', upstreams: [backend.url], keepalive: { idle_timeout: '30s' } } } });
  const answers = ['/hold1', '/hold2', '/hold3'].map((p) => get(`${lb.url}${p}`));
  await eventually(() => held.length === 3, { what: 'three requests on three sockets' });
  assert.equal(backend.sockets.length, 3);
  // Answered in the order 2, 3, 1: socket 1 becomes idle last.
  const order = [held[1], held[2], held[0]];
  for (const req of order) {
    ok(req);
    const i = held.indexOf(req);
    assert.equal((await answers[i]).body, req.path);
  }
  for (let i = 0; i < 3; i++) assert.equal((await get(`${lb.url}/next${i}`)).status, 200);
  const last = backend.requests.slice(-3).map((r) => backend.sockets.indexOf(r.socket));
  assert.deepEqual(last, [0, 0, 0], 'the socket freed last serves every request that follows');
  assert.equal(backend.sockets.length, 3, 'no new socket');
});

test('beyond max_sockets requests wait in order; one whose client leaves never reaches the upstream', async (t) => {
  const held: SeenRequest[] = [];
  const backend = await scriptedBackend(t, (req) => held.push(req));
  const lb = await startBalancer(t, { pools: { web: { transport: 'http1', upstreams: [backend.url], keepalive: { max_sockets: 2, idle_timeout: '30s' } } } });
  const answers: Promise<string>[] = [];
  for (let i = 1; i <= 3; i++) {
    answers.push(get(`${lb.url}/r${i}`).then((r) => r.body));
    await eventually(() => lb.balancer.pools().get('web')!.upstreams[0].inFlight === i, { what: `request ${i} in flight` });
  }
  // A fourth whose client leaves while it waits.
  const leaving = http.get(`${lb.url}/gone`, { agent: false });
  leaving.on('error', () => {});
  await eventually(() => lb.balancer.pools().get('web')!.upstreams[0].inFlight === 4, { what: 'the fourth queued' });
  for (let i = 5; i <= 6; i++) {
    answers.push(get(`${lb.url}/r${i}`).then((r) => r.body));
    await eventually(() => lb.balancer.pools().get('web')!.upstreams[0].inFlight === i, { what: `request ${i} queued` });
  }
  leaving.destroy();
  await eventually(() => lb.balancer.pools().get('web')!.upstreams[0].inFlight === 5, { what: 'the leaving request out of the queue' });
  assert.deepEqual(held.map((r) => r.path), ['/r1', '/r2'], 'two sockets, two requests at the upstream');
  // Each answer frees a socket for the oldest waiting request.
  for (let i = 0; i < 5; i++) {
    await eventually(() => held.length > i, { what: `request ${i + 1} at the upstream` });
    ok(held[i]);
  }
  assert.deepEqual(await Promise.all(answers), ['/r1', '/r2', '/r3', '/r5', '/r6']);
  assert.deepEqual(held.map((r) => r.path), ['/r1', '/r2', '/r3', '/r5', '/r6'], 'first come, first served; the one that left never sent');
  assert.equal(backend.sockets.length, 2);
});

test('the request head and a body the client sent with it reach the upstream in one read', async (t) => {
  const backend = await scriptedBackend(t, ok);
  const lb = await startBalancer(t, { pools: { web: { transport: 'http1', upstreams: [backend.url] } } });
  assert.equal((await get(`${lb.url}/warm`)).status, 200);
  const raw = await rawExchange(lb.port, 'POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello');
  assert.match(raw, /^HTTP\/1\.1 200 /);
  const req = backend.requests[1];
  assert.equal(req.body, 'hello');
  assert.equal(req.reads.length, 1, `one read: ${JSON.stringify(req.reads)}`);
  assert.match(req.head, /^POST \/up HTTP\/1\.1\r\nhost: a\r\n/i, 'Host first');
  // Bodiless: one read as well.
  assert.equal((await get(`${lb.url}/plain`)).status, 200);
  assert.equal(backend.requests[2].reads.length, 1);
});

test('a kept-alive socket the upstream dropped: the request goes again on a new one, body and all, in one write', async (t) => {
  const backend = await scriptedBackend(t, (req, n) => {
    // The second request is the first on a reused socket: the upstream closes it as if it had timed out.
    if (n === 2) req.socket.destroy();
    else ok(req);
  });
  const lb = await startBalancer(t, { pools: { web: { transport: 'http1', upstreams: [backend.url], keepalive: { idle_timeout: '30s' } } } });
  assert.equal((await get(`${lb.url}/first`)).status, 200);
  const res = await get(`${lb.url}/put`, { method: 'PUT', body: 'payload', headers: { 'content-length': '7' } });
  assert.equal(res.status, 200);
  assert.equal(res.body, '/put');
  assert.deepEqual(backend.requests.map((r) => `${r.method} ${r.path} ${r.body}`), ['GET /first ', 'PUT /put payload', 'PUT /put payload']);
  const retry = backend.requests[2];
  assert.equal(backend.sockets.indexOf(retry.socket), 1, 'the retry on a new socket');
  assert.equal(retry.reads.length, 1, 'head and kept body in one write');
  await eventually(() => lb.ended.length === 2);
  assert.equal(lb.ended[1].attempts, 2);
  assert.equal(lb.balancer.pools().get('web')!.upstreams[0].failures, 0, 'a stale socket is no failure');
});

test('HEAD keeps its socket; trailers are relayed; the first body bytes come with the head', async (t) => {
  const backend = await scriptedBackend(t, (req) => {
    if (req.method === 'HEAD') req.socket.write('HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n');
    else if (req.path === '/trailers') req.socket.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 42\r\n\r\n');
    else ok(req);
  });
  const lb = await startBalancer(t, { pools: { web: { transport: 'http1', upstreams: [backend.url], keepalive: { idle_timeout: '30s' } } } });
  const head = await get(`${lb.url}/h`, { method: 'HEAD' });
  assert.equal(head.headers['content-length'], '1000');
  assert.equal((await get(`${lb.url}/after-head`)).body, '/after-head');
  assert.equal(backend.sockets.length, 1, 'HEAD did not cost the socket');
  const trailers = await new Promise<{ body: string; trailers: NodeJS.Dict<string> }>((resolve, reject) => {
    http.get(`${lb.url}/trailers`, { agent: false, headers: { te: 'trailers' } }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ body, trailers: res.trailers }));
    }).on('error', reject);
  });
  assert.deepEqual(trailers, { body: 'hello', trailers: { 'x-sum': '42' } });
  // A raw client: the answer's head and its body arrive together.
  const first = await new Promise<string>((resolve, reject) => {
    const s = net.connect(lb.port, '127.0.0.1', () => s.write('GET /together HTTP/1.1\r\nHost: a\r\n\r\n'));
    s.once('data', (d) => {
      resolve(d.toString('latin1'));
      s.destroy();
    });
    s.on('error', reject);
  });
  assert.match(first, /\r\n\r\n\/together$/);
});

test('malformed answers are a 502 (or a cut once the head went out); the process and the next request carry on', async (t) => {
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown): void => void uncaught.push(err);
  process.on('uncaughtException', onUncaught);
  t.after(() => process.off('uncaughtException', onUncaught));
  const answers: [string, string, 'head' | 'cut'][] = [
    ['garbage', 'HELLO WORLD\r\n\r\n', 'head'],
    ['HTML without a head', '<html><body>hi</body></html>', 'head'],
    ['bare LFs', 'HTTP/1.1 200 OK\nContent-Length: 2\n\nok', 'head'],
    ['a space before a colon', 'HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok', 'head'],
    ['Content-Length with Transfer-Encoding', 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n', 'head'],
    ['two Content-Length values', 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok', 'head'],
    ['a NUL in a value', 'HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok', 'head'],
    ['a folded header', 'HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok', 'head'],
    ['a head over 16 KiB', `HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(20_000)}\r\nContent-Length: 2\r\n\r\nok`, 'head'],
    ['an unasked 101', 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n', 'head'],
    ['HTTP/2 bytes', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'head'],
    ['a bad chunk size mid-body', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n', 'cut'],
    ['chunk data longer than its size', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokay\r\n0\r\n\r\n', 'cut'],
  ];
  let current = '';
  const backend = await scriptedBackend(t, (req) => {
    if (req.path === '/good') return ok(req);
    req.socket.write(current, 'latin1');
    // A cut body: the upstream leaves it there and closes.
    req.socket.end();
  });
  const lb = await startBalancer(t, { pools: { web: { transport: 'http1', upstreams: [backend.url], outlier_detection: { enabled: false }, retry: { max_attempts: 1 } } } });
  const outcomes: string[] = [];
  for (const [what, answer, where] of answers) {
    current = answer;
    const raw = await rawExchange(lb.port, 'GET /bad HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n');
    outcomes.push(`${what}: ${raw.slice(0, 12)}`);
    if (where === 'head') assert.match(raw, /^HTTP\/1\.1 502 .*\r\n\r\n502 Bad Gateway: invalid response from upstream/s, `${what}: ${JSON.stringify(raw.slice(0, 300))}`);
    // The head went out (or was about to, with the first bytes): the client connection is cut, never completed.
    else assert.ok(raw === '' || (/^HTTP\/1\.1 200 /.test(raw) && !/\r\n0\r\n\r\n$/.test(raw)), `${what}: ${JSON.stringify(raw)}`);
    assert.equal((await get(`${lb.url}/good`)).body, '/good', `${what}: the next request is served`);
  }
  t.diagnostic(outcomes.join('; '));
  await eventually(() => lb.ended.length === answers.length * 2);
  for (const ctx of lb.ended.filter((c) => c.path === '/bad')) assert.equal(ctx.error?.code, 'FUL_UPSTREAM_PROTOCOL_ERROR', ctx.error?.message);
  assert.deepEqual(uncaught, []);
});

test('random bytes from the upstream never crash the process', async (t) => {
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown): void => void uncaught.push(err);
  process.on('uncaughtException', onUncaught);
  t.after(() => process.off('uncaughtException', onUncaught));
  let seed = 3;
  const random = (): number => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  const pieces = ['HTTP/1.1 200 OK\r\n', 'HTTP/1.0 ', '100 Continue\r\n\r\n', 'Content-Length: 3\r\n', 'Transfer-Encoding: chunked\r\n', '\r\n', '\n', '3\r\nabc\r\n', '0\r\n\r\n', 'X: y\r\n', '\x00', '\xff', ' ', 'ok'];
  const backend = await scriptedBackend(t, (req) => {
    // Mostly a valid head with random framing, then random pieces; sometimes random pieces only.
    const framings = ['Content-Length: 3\r\n', 'Transfer-Encoding: chunked\r\n', '', 'Content-Length: 0\r\n'];
    let text = random() < 0.7 ? `HTTP/1.1 200 OK\r\n${framings[Math.floor(random() * framings.length)]}\r\n` : '';
    const count = 1 + Math.floor(random() * 6);
    for (let j = 0; j < count; j++) text += pieces[Math.floor(random() * pieces.length)];
    // Split over two writes at a random point, then closed.
    const at = Math.floor(random() * text.length);
    req.socket.write(text.slice(0, at), 'latin1');
    setImmediate(() => req.socket.end(text.slice(at), 'latin1'));
  });
  const lb = await startBalancer(t, { pools: { web: { transport: 'http1', upstreams: [backend.url], outlier_detection: { enabled: false }, retry: { max_attempts: 1 }, timeouts: { response_headers: '500ms', idle_body: '500ms' } } } });
  const statuses = new Map<string, number>();
  for (let i = 0; i < 60; i++) {
    const raw = await rawExchange(lb.port, 'GET /r HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n', 3000);
    const status = raw.slice(9, 12) || 'cut';
    statuses.set(status, (statuses.get(status) ?? 0) + 1);
  }
  t.diagnostic(JSON.stringify([...statuses]));
  await eventually(() => lb.balancer.pools().get('web')!.upstreams[0].inFlight === 0, { what: 'nothing held' });
  assert.deepEqual(uncaught, []);
});

test('response_headers runs from the end of the upload: a slow upload that moves is not cut; a silent upstream is', async (t) => {
  const backend = await scriptedBackend(t, (req) => {
    if (req.path !== '/never') ok(req);
  });
  const lb = await startBalancer(t, { pools: { web: { transport: 'http1', upstreams: [backend.url], timeouts: { response_headers: '300ms' }, retry: { max_attempts: 1 } } } });
  // 10 pieces 100 ms apart: a second of upload against a 300 ms limit.
  const slow = await new Promise<number>((resolve, reject) => {
    const req = http.request(`${lb.url}/slow`, { method: 'POST', agent: false, headers: { 'content-length': 10 } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode!));
    });
    req.on('error', reject);
    let sent = 0;
    const timer = setInterval(() => {
      req.write('x');
      if (++sent === 10) {
        clearInterval(timer);
        req.end();
      }
    }, 100);
  });
  assert.equal(slow, 200);
  assert.equal(backend.requests[0].body, 'x'.repeat(10));
  // Expect: 100-continue to an upstream that never answers: the client waits, the upload never moves.
  const started = performance.now();
  const raw = await rawExchange(lb.port, 'POST /never HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n', 3000);
  assert.match(raw, /^HTTP\/1\.1 504 /);
  const took = performance.now() - started;
  assert.ok(took >= 280 && took < 1500, `504 after ${Math.round(took)} ms`);
  await eventually(() => lb.ended.length === 2);
  assert.equal(lb.ended[1].error?.code, 'FUL_UPSTREAM_HEADERS_TIMEOUT');
});
