/**
 * Fulcrum's own HTTP/1.1 server (src/downstream/http1-connection.ts, http1-response.ts): what
 * node:http did for the listener and the rest of the suite does not already pin down — keep-alive
 * deadlines kept by one clock, pipelining under a flood, heads split at every byte, framing of
 * answers to HTTP/1.0 clients, expectations, and a client's FIN in each state.
 * The engine under test is forced here, whatever FULCRUM_ENGINE says.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { setImmediate as tick } from 'node:timers/promises';
import { startBackend, startBalancer, rawExchange } from '../helpers/servers.ts';
import { rawClient } from '../helpers/websocket.ts';
import { eventually } from '../helpers/eventually.ts';
import { Http1Server, LINGER_IDLE_MS } from '../../src/downstream/http1-connection.ts';

const listener = (extra: Record<string, unknown> = {}) => ({ listeners: [{ host: '127.0.0.1', port: 0, engine: 'fulcrum' as const, ...extra }] });

/** Status codes of the responses in a raw byte stream, in order. */
function statuses(raw: string): string[] {
  return [...raw.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1]);
}

describe('own HTTP/1.1 server', () => {
  test('an idle keep-alive connection is closed after keepalive_timeout (plus a margin), announced in Keep-Alive', async (t) => {
    const backend = await startBackend(t, (_req, res) => res.end('ok'));
    const lb = await startBalancer(t, { ...listener({ keepalive_timeout: '1s' }), pools: { app: { upstreams: [backend.url] } } });
    const client = rawClient(t, lb.port, 'GET / HTTP/1.1\r\nHost: a\r\n\r\n');
    await eventually(() => client.received().toString('latin1').endsWith('ok'));
    assert.match(client.received().toString('latin1'), /\r\nkeep-alive: timeout=1\r\n/i);
    const answered = performance.now();
    await eventually(() => client.closed(), { what: 'the idle connection to be closed', timeout: 6000 });
    // Closed by the listener's clock: never before the announced timeout, and within a margin and a tick after it.
    const after = performance.now() - answered;
    assert.ok(after >= 950 && after < 4000, `closed after ${after} ms`);
  });

  test('keepalive_timeout 0 turns keep-alive off: every answer says Connection: close and closes', async (t) => {
    const backend = await startBackend(t, (_req, res) => res.end('ok'));
    const lb = await startBalancer(t, { ...listener({ keepalive_timeout: 0 }), pools: { app: { upstreams: [backend.url] } } });
    const raw = await rawExchange(lb.port, 'GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n', 5000);
    assert.deepEqual(statuses(raw), ['200']);
    assert.match(raw, /\r\nconnection: close\r\n/i);
  });

  test('a client slower than the lingering time still gets the whole answer: the close waits while it leaves', async (t) => {
    // The server alone, with a handler that answers 8 MiB at once: the answer is handed over whole while the client reads nothing.
    const big = Buffer.alloc(8 * 1024 * 1024, 97);
    const server = new Http1Server({ keepAliveMs: 100, headersTimeoutMs: 10_000, requestTimeoutMs: 300_000, limits: { maxHeadBytes: 16_384, maxHeaders: 100 } }, {
      request(_head, response) {
        response.head(200, undefined, ['content-length', String(big.length), 'connection', 'close']);
        response.body(big);
        response.end(null);
      },
      refused() {},
    });
    const acceptor = net.createServer({ pauseOnConnect: true, allowHalfOpen: true }, (socket) => {
      server.accept(socket);
      socket.resume();
    });
    await new Promise<void>((resolve) => acceptor.listen(0, '127.0.0.1', resolve));
    t.after(() => {
      server.closeAll();
      server.stop();
      acceptor.close();
    });
    const client = net.connect((acceptor.address() as net.AddressInfo).port, '127.0.0.1');
    t.after(() => client.destroy());
    client.pause();
    client.write('GET /big HTTP/1.1\r\nHost: a\r\n\r\n');
    // The wait is the point: the client reads nothing for longer than lingering lasts (LINGER_IDLE_MS).
    await new Promise((resolve) => setTimeout(resolve, LINGER_IDLE_MS + 1500));
    let received = 0;
    client.on('data', (c: Buffer) => (received += c.length));
    const ended = new Promise((resolve) => client.once('end', resolve));
    client.resume();
    await ended;
    assert.ok(received > big.length, `${received} bytes: the whole answer arrived, then the close`);
  });

  test('an early answer larger than the socket buffers reaches a client that writes its whole body before reading', async (t) => {
    const answer = Buffer.alloc(32 * 1024 * 1024, 98);
    // The upstream refuses at once, with a large body, without reading the upload.
    const backend = await startBackend(t, (_req, res) => res.writeHead(413, { 'content-length': answer.length }).end(answer));
    const lb = await startBalancer(t, { ...listener(), pools: { app: { upstreams: [backend.url] } } });
    const total = 16 * 1024 * 1024;
    const client = net.connect(lb.port, '127.0.0.1');
    t.after(() => client.destroy());
    client.pause();
    client.write(`POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: ${total}\r\n\r\n`);
    // Like a blocking client: nothing is read until the whole body was written (Fulcrum reads and drops what is no longer wanted).
    let written = false;
    client.write(Buffer.alloc(total, 120), () => (written = true));
    await eventually(() => written, { timeout: 20_000, what: 'the whole upload to be taken (a paused socket would never take it)' });
    let received = 0;
    client.on('data', (c: Buffer) => (received += c.length));
    client.resume();
    await eventually(() => received > answer.length, { timeout: 20_000, what: 'the whole early answer' });
  });

  test('a busy connection is not closed by the keep-alive clock while its answer is slow', async (t) => {
    const backend = await startBackend(t, (_req, res) => setTimeout(() => res.end('late'), 600));
    const lb = await startBalancer(t, { ...listener({ keepalive_timeout: '200ms' }), pools: { app: { upstreams: [backend.url] } } });
    const raw = await rawExchange(lb.port, 'GET / HTTP/1.1\r\nHost: a\r\n\r\n', 5000);
    assert.deepEqual(statuses(raw), ['200']);
    assert.ok(raw.endsWith('late'), raw);
  });

  test('a head split at every byte parses as one request', async (t) => {
    const backend = await startBackend(t, (req, res) => res.end(`${req.method} ${req.url} ${req.headers['x-split']}`));
    const lb = await startBalancer(t, { ...listener(), pools: { app: { upstreams: [backend.url] } } });
    const text = 'GET /split?q=1 HTTP/1.1\r\nHost: a\r\nX-Split: yes\r\nConnection: close\r\n\r\n';
    const socket = net.connect(lb.port, '127.0.0.1');
    t.after(() => socket.destroy());
    let data = '';
    socket.on('data', (c: Buffer) => (data += c.toString('latin1')));
    await new Promise((resolve) => socket.once('connect', resolve));
    socket.setNoDelay(true);
    for (const ch of text) {
      socket.write(ch, 'latin1');
      await tick();
    }
    await eventually(() => data.endsWith('GET /split?q=1 yes'), { what: 'the answer' });
    assert.deepEqual(statuses(data), ['200']);
  });

  test('pipelined requests with Content-Length and chunked bodies are answered in order, each body to its request', async (t) => {
    const backend = await startBackend(t, (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => setTimeout(() => res.end(`${req.url}=${Buffer.concat(chunks).toString()};`), req.url === '/1' ? 100 : 0));
    });
    const lb = await startBalancer(t, { ...listener(), pools: { app: { upstreams: [backend.url] } } });
    const text =
      'GET /1 HTTP/1.1\r\nHost: a\r\n\r\n' +
      'POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello' +
      'POST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n' +
      'GET /4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n';
    const raw = await rawExchange(lb.port, text, 5000);
    assert.deepEqual(statuses(raw), ['200', '200', '200', '200']);
    const bodies = [...raw.matchAll(/(\/\d=[a-z]*;)/g)].map((m) => m[1]);
    assert.deepEqual(bodies, ['/1=;', '/2=hello;', '/3=abcde;', '/4=;']);
  });

  test('a pipelined flood is answered whole and in order, read as fast as it is answered', async (t) => {
    const backend = await startBackend(t, (req, res) => res.end(`<${req.url}>`));
    const lb = await startBalancer(t, { ...listener(), pools: { app: { upstreams: [backend.url] } } });
    const n = 2000;
    let text = '';
    for (let i = 0; i < n; i++) text += `GET /${i} HTTP/1.1\r\nHost: a\r\n${i === n - 1 ? 'Connection: close\r\n' : ''}\r\n`;
    const raw = await rawExchange(lb.port, text, 30_000);
    const order = [...raw.matchAll(/<\/(\d+)>/g)].map((m) => Number(m[1]));
    assert.equal(order.length, n);
    assert.ok(order.every((v, i) => v === i), 'answers in request order');
  });

  test('HTTP/1.0: an answer without a length is close-delimited; HEAD gets no body; keep-alive only when asked', async (t) => {
    const backend = await startBackend(t, (req, res) => {
      if (req.url === '/sized') return void res.end('sized');
      res.write('part1-');
      res.end('part2');
    });
    const lb = await startBalancer(t, { ...listener(), pools: { app: { upstreams: [backend.url] } } });
    const raw = await rawExchange(lb.port, 'GET / HTTP/1.0\r\nHost: a\r\n\r\n', 5000);
    assert.deepEqual(statuses(raw), ['200']);
    assert.doesNotMatch(raw, /transfer-encoding/i, 'no chunked coding for an HTTP/1.0 client');
    assert.match(raw, /\r\nconnection: close\r\n/i);
    assert.ok(raw.endsWith('\r\n\r\npart1-part2'), raw);
    const head = await rawExchange(lb.port, 'HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n', 5000);
    assert.deepEqual(statuses(head), ['200']);
    assert.ok(head.endsWith('\r\n\r\n'), `no body after a HEAD answer: ${JSON.stringify(head)}`);
    // HTTP/1.0 with keep-alive asked and a sized answer: the connection stays for the next request.
    const kept = rawClient(t, lb.port, 'GET /sized HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n');
    await eventually(() => kept.received().toString('latin1').endsWith('sized'));
    assert.match(kept.received().toString('latin1'), /\r\nconnection: keep-alive\r\n/i);
    kept.socket.write('GET /sized HTTP/1.0\r\nHost: a\r\n\r\n');
    await eventually(() => kept.closed(), { what: 'the second answer, without keep-alive, to close the connection' });
    assert.deepEqual(statuses(kept.received().toString('latin1')), ['200', '200']);
  });

  test('an Expect other than 100-continue is 417 and never reaches the backend', async (t) => {
    const backend = await startBackend(t, (_req, res) => res.end('ok'));
    const lb = await startBalancer(t, { ...listener(), pools: { app: { upstreams: [backend.url] } } });
    const raw = await rawExchange(lb.port, 'GET / HTTP/1.1\r\nHost: a\r\nExpect: something-else\r\nConnection: close\r\n\r\n', 5000);
    assert.deepEqual(statuses(raw), ['417']);
    assert.equal(backend.requests.length, 0);
  });

  test("a client's FIN: mid-head is a 400, between requests a quiet close, mid-body a client gone (499)", async (t) => {
    const backend = await startBackend(t, (req, res) => {
      req.resume();
      req.on('end', () => res.end('ok'));
    });
    const lb = await startBalancer(t, { ...listener(), pools: { app: { upstreams: [backend.url] } } });
    const halfOpen = (text: string) =>
      new Promise<string>((resolve) => {
        const socket = net.connect({ port: lb.port, host: '127.0.0.1', allowHalfOpen: true });
        let data = '';
        socket.on('data', (c: Buffer) => (data += c.toString('latin1')));
        socket.on('error', () => {});
        socket.on('close', () => resolve(data));
        socket.end(text, 'latin1');
      });
    assert.deepEqual(statuses(await halfOpen('GET / HTTP/1.1\r\nHost: a\r\n')), ['400']);
    assert.equal(await halfOpen(''), '');
    await halfOpen('POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly a part');
    await eventually(() => lb.ended.some((c) => c.req.url === '/upload'));
    assert.equal(lb.ended.find((c) => c.req.url === '/upload')!.status, 499);
    assert.equal(lb.balancer.pools().get('app')!.upstreams[0].inFlight, 0);
  });

  test('a head that never ends is a 408 after headers_timeout; one over the size limit a 431', async (t) => {
    const backend = await startBackend(t, (_req, res) => res.end('ok'));
    const lb = await startBalancer(t, { ...listener({ limits: { headers_timeout: '300ms', max_header_bytes: 2048 } }), pools: { app: { upstreams: [backend.url] } } });
    const slow = rawClient(t, lb.port, 'GET / HTTP/1.1\r\nHost: a\r\n');
    await eventually(() => slow.closed(), { what: 'the slow head to be answered and closed' });
    assert.deepEqual(statuses(slow.received().toString('latin1')), ['408']);
    // A head that is still incomplete past the raw bound is refused without waiting for its end.
    const big = rawClient(t, lb.port, `GET / HTTP/1.1\r\nHost: a\r\nX-Big: ${'b'.repeat(4000)}`);
    await eventually(() => big.closed(), { what: 'the oversized head to be answered' });
    assert.deepEqual(statuses(big.received().toString('latin1')), ['431']);
    assert.equal(backend.requests.length, 0);
  });

  test('a request body streams with backpressure: a slow upstream reader holds the client, nothing piles up', async (t) => {
    let received = 0;
    let release: (() => void) | null = null;
    const backend = await startBackend(t, (req, res) => {
      req.pause();
      release = () => {
        req.on('data', (c: Buffer) => (received += c.length));
        req.on('end', () => res.end(`got ${received}`));
        req.resume();
      };
    });
    const lb = await startBalancer(t, { ...listener(), pools: { app: { upstreams: [backend.url] } } });
    const total = 32 * 1024 * 1024;
    const socket = net.connect(lb.port, '127.0.0.1');
    t.after(() => socket.destroy());
    let answer = '';
    socket.on('data', (c: Buffer) => (answer += c.toString('latin1')));
    socket.write(`POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: ${total}\r\nConnection: close\r\n\r\n`);
    const block = Buffer.alloc(64 * 1024, 120);
    let sent = 0;
    const pump = (): void => {
      while (sent < total) {
        sent += block.length;
        if (!socket.write(block)) return void socket.once('drain', pump);
      }
    };
    pump();
    await eventually(() => release !== null);
    // While the upstream reads nothing, the client is held back: what it got into the kernel stops growing well short of the body.
    let last = -1;
    let still = 0;
    await eventually(() => {
      still = socket.bytesWritten === last ? still + 1 : 0;
      last = socket.bytesWritten;
      return still >= 25;
    }, { what: 'the upload to stall' });
    assert.ok(socket.bytesWritten < total / 2, `${socket.bytesWritten} of ${total} bytes taken while the upstream read nothing`);
    release!();
    await eventually(() => answer.endsWith(`got ${total}`), { timeout: 20_000, what: 'the whole body to arrive' });
  });
});
