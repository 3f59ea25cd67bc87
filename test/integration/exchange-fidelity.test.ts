/**
 * Every exchange reaches the other side as it was meant (issue 9, points 1-3), on real sockets:
 * pipelined requests answered in order and never past a closing answer; bodiless and interim
 * responses relayed as HTTP says; an upstream that answers before the upload ends; Expect.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { Readable } from 'node:stream';
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { get, rawExchange, startBackend, startBalancer, startRawBackend } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';

/** Status lines of the responses in a raw capture, in order. */
function statusLines(raw: string): string[] {
  return [...raw.matchAll(/HTTP\/1\.[01] \d{3}[^\r\n]*/g)].map((m) => m[0]);
}

/** Uploads `size` bytes with node:http in 64 KiB chunks; resolves with what the client saw. */
function upload(port: number, path: string, size: number, headers: Record<string, string | number | null> = {}): Promise<string> {
  return new Promise((resolve) => {
    // content-length: null sends the body chunked.
    const framing = headers['content-length'] === null ? {} : { 'content-length': size };
    delete headers['content-length'];
    const req = http.request({ port, host: '127.0.0.1', method: 'POST', path, agent: false, headers: { host: 'app.test', ...framing, ...headers } }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve(`${res.statusCode} ${text.trim()}${res.headers.connection === 'close' ? ' [closed]' : ''}`));
      res.on('error', (e: NodeJS.ErrnoException) => resolve(`response error ${e.code}`));
    });
    req.on('error', (e: NodeJS.ErrnoException) => resolve(`error ${e.code}`));
    const chunk = Buffer.alloc(64 * 1024, 97);
    let left = size;
    Readable.from(
      (function* () {
        while (left > 0) {
          const n = Math.min(left, chunk.length);
          left -= n;
          yield chunk.subarray(0, n);
        }
      })(),
    ).pipe(req);
  });
}

describe('pipelined requests on one client connection (RFC 9112 section 9.3)', () => {
  const closingRefusals: [string, string][] = [
    ['a malformed Host', 'GET /a HTTP/1.1\r\nHost: a b\r\n\r\n'],
    ['a bad %-escape', 'GET /a%zz HTTP/1.1\r\nHost: app.test\r\n\r\n'],
    ['Transfer-Encoding: gzip, chunked', 'POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n'],
    ['a body over max_body_bytes', 'POST /a HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5000\r\n\r\n' + 'x'.repeat(5000)],
    ['the client\'s own Connection: close', 'GET /a HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n'],
    ['HTTP/1.0 without keep-alive', 'GET /a HTTP/1.0\r\nHost: app.test\r\n\r\n'],
  ];
  for (const [what, first] of closingRefusals) {
    test(`after an answer that closes (${what}), nothing later on the connection reaches an upstream`, async (t) => {
      const backend = await startBackend(t, (req, res) => {
        req.resume();
        req.on('end', () => res.end(`saw ${req.method} ${req.url}`));
      });
      const lb = await startBalancer(t, { listeners: [{ host: '127.0.0.1', port: 0, limits: { max_body_bytes: 1000 } }], pools: { app: { upstreams: [backend.url] } } });
      // A warm upstream socket, so a leak would reach the backend at once.
      assert.equal((await get(`${lb.url}/warm`)).status, 200);
      const raw = await rawExchange(lb.port, `${first}POST /second HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabc`);
      const lines = statusLines(raw);
      assert.equal(lines.length, 1, `one answer only: ${JSON.stringify(raw)}`);
      assert.match(raw, /\r\nconnection: close\r\n/i);
      // Give a leak every chance to show: a request after this one on a new connection is answered first.
      assert.equal((await get(`${lb.url}/after`)).status, 200);
      assert.deepEqual(
        backend.requests.map((r) => r.url).filter((u) => u === '/second'),
        [],
        'the pipelined POST never reached the backend',
      );
    });
  }

  test('responses leave in request order: a broken later request is answered after the earlier ones', async (t) => {
    const backend = await startBackend(t, (req, res) => {
      req.resume();
      // Slow enough that the parser meets the broken request long before this answer exists.
      req.on('end', () => setTimeout(() => res.end(`ran ${req.method} ${req.url}`), 50));
    });
    const lb = await startBalancer(t, { pools: { app: { upstreams: [backend.url] } } });
    const cases = [
      'GET /x HTTP/1.1\r\nHost: app.test\r\nBad Header: x\r\n\r\n',
      `GET /x HTTP/1.1\r\nHost: app.test\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`,
      'BLAH\r\n\r\n',
      'GET /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n',
    ];
    for (const broken of cases) {
      const before = backend.requests.length;
      const raw = await rawExchange(lb.port, `POST /p HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabcGET /q HTTP/1.1\r\nHost: app.test\r\n\r\n${broken}`);
      const lines = statusLines(raw);
      assert.equal(lines.length, 3, JSON.stringify(raw));
      assert.match(lines[0], /^HTTP\/1\.1 200 /);
      assert.match(lines[1], /^HTTP\/1\.1 200 /);
      assert.match(lines[2], /^HTTP\/1\.1 4(00|31) /);
      assert.ok(raw.indexOf('ran POST /p') < raw.indexOf('ran GET /q'), 'the POST answer first, then the GET');
      assert.equal(backend.requests.length - before, 2, 'the broken request never reached the backend');
    }
  });

  test('pipelined requests are answered one by one, in order, on a kept-alive connection', async (t) => {
    let n = 0;
    const backend = await startBackend(t, (req, res) => {
      // Later requests answer faster: order must still hold.
      const delay = 40 - 10 * n++;
      setTimeout(() => res.end(`answer ${req.url}`), Math.max(0, delay));
    });
    const lb = await startBalancer(t, { pools: { app: { upstreams: [backend.url] } } });
    const raw = await rawExchange(lb.port, ['/1', '/2', '/3', '/4'].map((p, i) => `GET ${p} HTTP/1.1\r\nHost: app.test\r\n${i === 3 ? 'Connection: close\r\n' : ''}\r\n`).join(''));
    assert.deepEqual([...raw.matchAll(/answer (\/\d)/g)].map((m) => m[1]), ['/1', '/2', '/3', '/4']);
    assert.equal(statusLines(raw).length, 4);
  });

  test('a request that is not a refusal (404) keeps the connection and the next one is served', async (t) => {
    const backend = await startBackend(t, (_req, res) => res.end('ok'));
    const lb = await startBalancer(t, { pools: { app: { upstreams: [backend.url] } }, routes: [{ path_prefix: '/api', pool: 'app' }] });
    const raw = await rawExchange(lb.port, 'GET /nothing HTTP/1.1\r\nHost: app.test\r\n\r\nGET /api/x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
    assert.deepEqual(statusLines(raw).map((l) => l.slice(9, 12)), ['404', '200']);
  });

  test('a deep pipeline is served in full, in order (the connection pauses, it does not drop)', async (t) => {
    const backend = await startBackend(t, (req, res) => res.end(`n${req.url!.slice(1)};`));
    const lb = await startBalancer(t, { pools: { app: { upstreams: [backend.url] } } });
    const count = 200;
    let text = '';
    for (let i = 0; i < count; i++) text += `GET /${i} HTTP/1.1\r\nHost: app.test\r\n${i === count - 1 ? 'Connection: close\r\n' : ''}\r\n`;
    const raw = await rawExchange(lb.port, text, 10_000);
    const seen = [...raw.matchAll(/n(\d+);/g)].map((m) => Number(m[1]));
    assert.deepEqual(seen, Array.from({ length: count }, (_, i) => i));
  });

  test('after a refusal the connection closes gracefully: a client still uploading reads the 4xx', async (t) => {
    const backend = await startBackend(t, (_req, res) => res.end('ok'));
    const lb = await startBalancer(t, { listeners: [{ host: '127.0.0.1', port: 0, limits: { max_body_bytes: 1024 } }], pools: { app: { upstreams: [backend.url] } } });
    const results: string[] = [];
    for (let i = 0; i < 8; i++) results.push(await upload(lb.port, '/big', 8 * 1024 * 1024));
    // Chunked: the limit is met mid-upload, the 413 goes out while the client is still sending.
    for (let i = 0; i < 8; i++) results.push(await upload(lb.port, '/big', 8 * 1024 * 1024, { 'content-length': null }));
    // A malformed Host: refused before the body is read at all.
    for (let i = 0; i < 4; i++) results.push(await upload(lb.port, '/big', 8 * 1024 * 1024, { host: 'a b' }));
    assert.deepEqual(results.map((r) => r.slice(0, 3)), [...Array(16).fill('413'), ...Array(4).fill('400')], results.join('\n'));
    assert.equal(backend.requests.length, 0);
  });
});

for (const transport of ['http1', 'undici', 'node-http'] as const) {
  describe(`responses relayed as sent, over ${transport}`, () => {
    test('304 with Content-Length and no body: relayed, Content-Length kept, the connection still usable', async (t) => {
      const upstream = await startRawBackend(t, (socket) => {
        socket.on('data', () => socket.write('HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: "v1"\r\n\r\n'));
      });
      const lb = await startBalancer(t, { pools: { app: { transport, upstreams: [upstream.url] } } });
      const raw = await rawExchange(lb.port, 'GET /a HTTP/1.1\r\nHost: app.test\r\nIf-None-Match: "v1"\r\n\r\nGET /b HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
      const lines = statusLines(raw);
      assert.deepEqual(lines, ['HTTP/1.1 304 Not Modified', 'HTTP/1.1 304 Not Modified'], JSON.stringify(raw));
      assert.equal([...raw.matchAll(/Content-Length: 1234\r\n/gi)].length, 2);
      assert.match(raw, /\r\n\r\n$/, 'no body after the last head');
    });

    test('204 with Content-Length and stray bytes: relayed without framing or bytes; that upstream socket is dropped', async (t) => {
      let connections = 0;
      const upstream = await startRawBackend(t, (socket) => {
        connections++;
        socket.on('data', () => socket.write('HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-Kind: empty\r\n\r\nhello'));
      });
      const lb = await startBalancer(t, { pools: { app: { transport, upstreams: [upstream.url] } } });
      for (let i = 0; i < 3; i++) {
        const raw = await rawExchange(lb.port, 'GET /a HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
        assert.deepEqual(statusLines(raw), ['HTTP/1.1 204 No Content'], JSON.stringify(raw));
        assert.match(raw, /X-Kind: empty/i);
        assert.doesNotMatch(raw, /hello|content-length/i);
      }
      // The socket that sent the stray bytes was never reused.
      assert.equal(connections, 3);
      assert.equal(lb.balancer.pools().get('app')!.upstreams[0].failures, 0);
    });

    test('HEAD: headers relayed, no body, even when the upstream sends one; the connection still usable', async (t) => {
      const upstream = await startRawBackend(t, (socket) => {
        socket.on('data', (d) => {
          if (d.toString().startsWith('HEAD')) socket.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello');
          else socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
        });
      });
      const lb = await startBalancer(t, { pools: { app: { transport, upstreams: [upstream.url] } } });
      const raw = await rawExchange(lb.port, 'HEAD /a HTTP/1.1\r\nHost: app.test\r\n\r\nGET /b HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
      assert.deepEqual(statusLines(raw), ['HTTP/1.1 200 OK', 'HTTP/1.1 200 OK'], JSON.stringify(raw));
      assert.match(raw, /Content-Length: 5\r\n/i);
      assert.doesNotMatch(raw, /hello/);
      assert.match(raw, /\r\n\r\nok$/);
    });

    test('1xx answers (103 Early Hints, 102) are relayed before the final one, never to HTTP/1.0 clients', async (t) => {
      const upstream = await startRawBackend(t, (socket) => {
        socket.on('data', () =>
          socket.write('HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'),
        );
      });
      const lb = await startBalancer(t, { pools: { app: { transport, upstreams: [upstream.url] } } });
      const raw = await rawExchange(lb.port, 'GET /a HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
      assert.deepEqual(statusLines(raw), ['HTTP/1.1 102 Processing', 'HTTP/1.1 103 Early Hints', 'HTTP/1.1 200 OK'], JSON.stringify(raw));
      assert.match(raw, /^HTTP\/1\.1 102 Processing\r\n\r\nHTTP\/1\.1 103 Early Hints\r\nLink: <\/style\.css>; rel=preload\r\n\r\nHTTP\/1\.1 200 OK\r\n/);
      // Node's client sees the hint as an 'information' event, the way browsers use it.
      const hints: number[] = [];
      await new Promise<void>((resolve, reject) => {
        const req = http.get(`${lb.url}/a`, { agent: false }, (res) => {
          res.resume();
          res.on('end', resolve);
        });
        req.on('information', (info) => hints.push(info.statusCode));
        req.on('error', reject);
      });
      assert.deepEqual(hints, [102, 103]);
      const old = await rawExchange(lb.port, 'GET /a HTTP/1.0\r\nHost: app.test\r\n\r\n');
      assert.deepEqual(statusLines(old), ['HTTP/1.1 200 OK'], 'an HTTP/1.0 client gets no 1xx');
    });

    test('an unsolicited 100 Continue is not relayed (the client did not ask); the final answer is', { skip: transport === 'undici' ? 'undici refuses an unasked-for 100 (502): a documented limit of that transport (docs/errors.md)' : false }, async (t) => {
      const upstream = await startRawBackend(t, (socket) => {
        socket.on('data', () => socket.write('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'));
      });
      const lb = await startBalancer(t, { pools: { app: { transport, upstreams: [upstream.url] } } });
      const raw = await rawExchange(lb.port, 'GET /a HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
      assert.deepEqual(statusLines(raw), ['HTTP/1.1 200 OK'], JSON.stringify(raw));
    });

    test('the reason phrase is relayed as the upstream sent it', async (t) => {
      const reasons = ['599 Network Timeout', '200 Everything Fine', '404 Nope', '201 '];
      let i = 0;
      const upstream = await startRawBackend(t, (socket) => {
        socket.on('data', () => socket.write(`HTTP/1.1 ${reasons[i++ % reasons.length]}\r\nContent-Length: 2\r\n\r\nok`));
      });
      const lb = await startBalancer(t, { pools: { app: { transport, upstreams: [upstream.url] } } });
      for (const reason of reasons) {
        const raw = await rawExchange(lb.port, 'GET /a HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
        assert.equal(statusLines(raw)[0], `HTTP/1.1 ${reason}`);
      }
    });
  });

  describe(`an upstream that answers before the upload ends, over ${transport}`, () => {
    for (const [status, extra] of [
      ['413 Payload Too Large', 'Connection: close\r\n'],
      ['401 Unauthorized', ''],
      ['302 Found', 'Location: /elsewhere\r\n'],
    ] as const) {
      test(`a ${status} without reading a 20 MiB body reaches the client, every time; no failure is counted`, async (t) => {
        const upstream = await startRawBackend(t, (socket) => {
          let answered = false;
          socket.on('data', () => {
            if (answered) return;
            answered = true;
            socket.write(`HTTP/1.1 ${status}\r\n${extra}Content-Length: 4\r\n\r\nnope`);
            if (extra.includes('close')) socket.end();
          });
        });
        const lb = await startBalancer(t, { pools: { app: { transport, upstreams: [upstream.url] } } });
        const results: string[] = [];
        for (let i = 0; i < 6; i++) results.push(await upload(lb.port, '/upload', 20 * 1024 * 1024));
        // The body was not read to its end: the client connection closes after the answer.
        assert.deepEqual(results, Array(6).fill(`${status.slice(0, 3)} nope [closed]`));
        const u = lb.balancer.pools().get('app')!.upstreams[0];
        assert.equal(u.failures, 0);
        assert.equal(u.eligible(), true, 'the only upstream is still in rotation');
      });
    }

    test('a node:http backend that answers 413 with Connection: close at once (its kernel resets the upload): the client gets the 413', async (t) => {
      const backend = await startBackend(t, (_req, res) => {
        res.writeHead(413, { connection: 'close', 'content-length': 4 });
        res.end('nope');
      });
      const lb = await startBalancer(t, { pools: { app: { transport, upstreams: [backend.url] } } });
      const results: string[] = [];
      for (let i = 0; i < 6; i++) results.push(await upload(lb.port, '/upload', 20 * 1024 * 1024));
      assert.deepEqual(results, Array(6).fill('413 nope [closed]'));
      const u = lb.balancer.pools().get('app')!.upstreams[0];
      assert.equal(u.failures, 0);
    });

    test('an upstream that resets the upload without answering is still a 502, at once', async (t) => {
      const upstream = await startRawBackend(t, (socket) => {
        socket.once('data', () => socket.resetAndDestroy());
      });
      const lb = await startBalancer(t, { pools: { app: { transport, upstreams: [upstream.url], retry: { max_attempts: 1 } } } });
      const result = await upload(lb.port, '/upload', 20 * 1024 * 1024);
      assert.match(result, /^502 502 Bad Gateway: upstream closed the connection/);
    });

    test('Expect: 100-continue goes to the upstream: its 100 is relayed, then the body', async (t) => {
      const seen: string[] = [];
      const backend = await startBackend(t, (req, res) => {
        seen.push(String(req.headers.expect));
        let n = 0;
        req.on('data', (c: Buffer) => (n += c.length));
        req.on('end', () => res.end(`got ${n}`));
      });
      const lb = await startBalancer(t, { pools: { app: { transport, upstreams: [backend.url] } } });
      const outcome = await new Promise<{ continued: boolean; status: number; body: string }>((resolve, reject) => {
        let continued = false;
        const req = http.request(`${lb.url}/up`, { method: 'POST', agent: false, headers: { expect: '100-continue', 'content-length': 5 } }, (res) => {
          let body = '';
          res.on('data', (c) => (body += c));
          res.on('end', () => resolve({ continued, status: res.statusCode!, body }));
        });
        req.on('continue', () => {
          continued = true;
          req.end('hello');
        });
        req.on('error', reject);
      });
      assert.deepEqual(outcome, { continued: true, status: 200, body: 'got 5' });
      assert.deepEqual(seen, ['100-continue']);
    });

    test("Expect: 100-continue answered by the upstream's final status (417, 401): relayed, no 100, no body sent", async (t) => {
      let bodies = 0;
      const backend = await startBackend(t, () => {});
      backend.server.on('checkContinue', (req, res) => {
        backend.requests.push(req);
        req.on('data', () => bodies++);
        res.writeHead(req.url === '/auth' ? 401 : 417, { 'content-length': 0 });
        res.end();
      });
      const lb = await startBalancer(t, { pools: { app: { transport, upstreams: [backend.url] } } });
      for (const [path, status] of [['/auth', 401], ['/other', 417]] as const) {
        const raw = await rawExchange(lb.port, `POST ${path} HTTP/1.1\r\nHost: app.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n`);
        assert.deepEqual(statusLines(raw).map((l) => Number(l.slice(9, 12))), [status], JSON.stringify(raw));
      }
      assert.equal(bodies, 0);
    });

    test("Fulcrum's own limit refuses first: 413 without a 100 and without asking the upstream", async (t) => {
      const backend = await startBackend(t, (_req, res) => res.end('ok'));
      const lb = await startBalancer(t, { listeners: [{ host: '127.0.0.1', port: 0, limits: { max_body_bytes: 10 } }], pools: { app: { transport, upstreams: [backend.url] } } });
      const raw = await rawExchange(lb.port, 'POST /a HTTP/1.1\r\nHost: app.test\r\nExpect: 100-continue\r\nContent-Length: 50\r\n\r\n');
      assert.deepEqual(statusLines(raw).map((l) => l.slice(9, 12)), ['413']);
      assert.equal(backend.requests.length, 0);
    });
  });
}

describe('upgrades and tunnels Fulcrum does not relay get a clear answer', () => {
  test('a WebSocket upgrade the backend does not take: its answer is relayed as is, then the connection closes', async (t) => {
    const backend = await startBackend(t, (_req, res) => res.end('plain'));
    const lb = await startBalancer(t, { pools: { app: { upstreams: [backend.url] } } });
    const raw = await rawExchange(
      lb.port,
      'GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nGET /next HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n',
    );
    const lines = statusLines(raw);
    assert.equal(lines[0], 'HTTP/1.1 200 OK');
    assert.match(raw, /\r\n\r\nplain$/);
    assert.match(raw, /\r\nconnection: close\r\n/i, 'what follows an upgrade offer may be another protocol: the connection closes');
    assert.equal(lines.length, 1, 'nothing after the handshake is read as HTTP');
    assert.equal(backend.requests.length, 1);
    assert.equal(backend.requests[0].url, '/ws');
  });

  test('an upgrade to a protocol other than WebSocket gets 501 (connection closed) and never reaches the backend', async (t) => {
    const backend = await startBackend(t, (_req, res) => res.end('plain'));
    const lb = await startBalancer(t, { pools: { app: { upstreams: [backend.url] } } });
    const raw = await rawExchange(lb.port, 'GET /x HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: foo/2\r\n\r\nGET /next HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
    const lines = statusLines(raw);
    assert.equal(lines[0], 'HTTP/1.1 501 Not Implemented');
    assert.match(raw, /upgrade to "foo\/2" is not supported/);
    assert.match(raw, /\r\nconnection: close\r\n/i);
    assert.equal(lines.length, 1);
    assert.equal(backend.requests.length, 0);
    await eventually(() => lb.ended.some((c) => c.error?.code === 'FUL_UPGRADE_NOT_SUPPORTED'));
  });

  test('an h2c upgrade offer (curl --http2) is ignored as RFC 9113 allows: served over HTTP/1.1', async (t) => {
    const backend = await startBackend(t, (req, res) => res.end(`upgrade header: ${req.headers.upgrade ?? 'none'}`));
    const lb = await startBalancer(t, { pools: { app: { upstreams: [backend.url] } } });
    const raw = await rawExchange(lb.port, 'GET / HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: close\r\n\r\n');
    assert.match(raw, /^HTTP\/1\.1 200 OK/);
    assert.match(raw, /upgrade header: none/);
  });

  test('CONNECT gets 501 with a reason instead of a silent close', async (t) => {
    const backend = await startBackend(t, (_req, res) => res.end('ok'));
    const lb = await startBalancer(t, { pools: { app: { upstreams: [backend.url] } } });
    const raw = await rawExchange(lb.port, 'CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n');
    assert.match(raw, /^HTTP\/1\.1 501 Not Implemented\r\n/);
    assert.match(raw, /CONNECT tunnels are not supported/);
    assert.equal(backend.requests.length, 0);
    assert.equal((await get(`${lb.url}/`)).status, 200);
  });
});

describe('a malformed body in the request in progress', () => {
  test('is a 400 for that request (not a second answer ahead of it), and the upstream attempt is dropped', async (t) => {
    const backend = await startBackend(t, (req, res) => {
      req.on('data', () => {});
      req.on('end', () => res.end('complete'));
      req.on('error', () => {});
    });
    const lb = await startBalancer(t, { pools: { app: { upstreams: [backend.url] } } });
    const raw = await rawExchange(lb.port, 'POST /c HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n');
    const lines = statusLines(raw);
    assert.equal(lines.length, 1, JSON.stringify(raw));
    assert.match(lines[0], /^HTTP\/1\.1 400 /);
  });
});

describe('with curl, as a user would', () => {
  const run = promisify(execFile);
  test('curl uploading 20 MiB reads the upstream\'s early 413; curl -v shows the 103 Early Hints', async (t) => {
    const upstream = await startRawBackend(t, (socket) => {
      let answered = false;
      socket.on('data', (d) => {
        if (answered) return;
        answered = true;
        if (d.toString().startsWith('GET')) socket.write('HTTP/1.1 103 Early Hints\r\nLink: </app.js>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
        else socket.end('HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 9\r\n\r\ntoo large');
      });
    });
    const lb = await startBalancer(t, { pools: { app: { upstreams: [upstream.url] } } });
    const dir = mkdtempSync(path.join(tmpdir(), 'fulcrum-upload-'));
    const file = path.join(dir, 'big.bin');
    writeFileSync(file, Buffer.alloc(20 * 1024 * 1024, 1));
    for (let i = 0; i < 3; i++) {
      const { stdout } = await run('curl', ['-sS', '--max-time', '20', '-o', '-', '-w', ' %{http_code}', '--data-binary', `@${file}`, `${lb.url}/upload`]);
      assert.equal(stdout, 'too large 413');
    }
    const { stderr } = await run('curl', ['-sS', '-v', '--max-time', '5', `${lb.url}/page`]);
    assert.match(stderr, /< HTTP\/1\.1 103 Early Hints/);
    assert.match(stderr, /< Link: <\/app\.js>; rel=preload/);
    assert.match(stderr, /< HTTP\/1\.1 200 OK/);
  });
});
