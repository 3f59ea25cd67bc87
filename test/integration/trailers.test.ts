/**
 * HTTP/1.1 trailers end to end, on the listener engine FULCRUM_ENGINE names (Fulcrum's own by
 * default; `npm run test:node-engine` runs this file on node:http's) and over each transport:
 * request trailers reach the upstream in the last chunk (a retry's kept body too), response
 * trailers reach the client on a chunked answer, fields that may not come from trailers are
 * dropped both ways (framing fields refused), TE: trailers is the only TE that passes, and
 * trailers over the limits or malformed are refused before the request completes upstream.
 */
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { rawExchange, startBackend, startBalancer, startRawBackend, type TestBackend } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';

const engine = process.env.FULCRUM_ENGINE === 'node' ? 'node' : 'fulcrum';
const transports = ['http1', 'undici', 'node-http'] as const;

/** What a node:http backend saw of each request: its headers, body, trailers, and whether it completed. */
interface Seen {
  headers: http.IncomingHttpHeaders;
  body: string;
  trailers: string[];
  complete: boolean;
}

/**
 * A node:http backend that records every request and answers it with `answer` once its body
 * ended (200 "ok" by default); `open()` counts its connections still open.
 */
async function recordingBackend(t: TestContext, answer?: (req: http.IncomingMessage, res: http.ServerResponse, seen: Seen) => void): Promise<TestBackend & { seen: Seen[]; open: () => number }> {
  const seen: Seen[] = [];
  let open = 0;
  const backend = await startBackend(t, (req, res) => {
    const record: Seen = { headers: req.headers, body: '', trailers: [], complete: false };
    seen.push(record);
    req.setEncoding('latin1');
    req.on('data', (c: string) => (record.body += c));
    req.on('error', () => {});
    req.on('end', () => {
      record.complete = true;
      record.trailers = req.rawTrailers;
      if (answer !== undefined) answer(req, res, record);
      else res.end('ok');
    });
  });
  backend.server.on('connection', (socket) => {
    open++;
    socket.on('close', () => open--);
  });
  return { ...backend, seen, open: () => open };
}

/** A chunked request's raw text: `chunks` as its body, then `trailerLines` (each without its CRLF). */
function chunkedRequest(method: string, path: string, chunks: string[], trailerLines: string[], extraHeaders = ''): string {
  let text = `${method} ${path} HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n${extraHeaders}\r\n`;
  for (const chunk of chunks) text += `${chunk.length.toString(16)}\r\n${chunk}\r\n`;
  text += '0\r\n';
  for (const line of trailerLines) text += `${line}\r\n`;
  return `${text}\r\n`;
}

/** The status code of a raw answer. */
function statusOf(raw: string): number {
  return Number(/^HTTP\/1\.1 (\d{3})/.exec(raw)?.[1] ?? 0);
}

/** Flat [name, value, ...] as lowercase-name pairs, for comparing trailers whatever the case of the names. */
function pairs(flat: readonly string[]): [string, string][] {
  const out: [string, string][] = [];
  for (let i = 0; i < flat.length; i += 2) out.push([flat[i].toLowerCase(), flat[i + 1]]);
  return out;
}

/** Trailers of every kind a client or an upstream might send: two to relay, the rest never relayed (RFC 9110 section 6.5.1). */
const relayed = ['X-Checksum: abc123', 'Server-Timing: db;dur=53'];
const forbidden = ['Host: evil.test', 'Authorization: Basic eA==', 'Content-Type: text/evil', 'Content-Encoding: gzip', 'TE: trailers', 'Trailer: X-Checksum', 'Connection: close', 'Keep-Alive: timeout=1', 'Upgrade: websocket', 'Expect: 100-continue', 'If-Match: *', 'Range: bytes=0-1', 'Cache-Control: no-store', 'Set-Cookie: a=b', 'Cookie: a=b', 'Proxy-Authorization: x', 'Max-Forwards: 0'];
const relayedPairs: [string, string][] = [['x-checksum', 'abc123'], ['server-timing', 'db;dur=53']];

describe(`request trailers (engine ${engine})`, () => {
  for (const transport of transports) {
    test(`${transport}: a chunked request's trailers reach the upstream in its last chunk, forbidden fields dropped`, async (t) => {
      const backend = await recordingBackend(t);
      const lb = await startBalancer(t, { pools: { app: { transport, upstreams: [backend.url] } } });
      const raw = await rawExchange(lb.port, chunkedRequest('POST', '/up', ['hello', ' world'], [...relayed, ...forbidden], 'Trailer: X-Checksum, Server-Timing\r\n'));
      assert.equal(statusOf(raw), 200, raw);
      assert.equal(backend.seen.length, 1);
      const [seen] = backend.seen;
      assert.equal(seen.body, 'hello world');
      if (transport === 'undici') {
        // undici cannot send request trailers on a streamed body (src/transport/undici.ts, `forward`): dropped, the body
        // intact (sent with a Content-Length when the stream had ended before undici wrote it).
        assert.deepEqual(seen.trailers, []);
      } else {
        assert.equal(seen.headers['transfer-encoding'], 'chunked');
        assert.deepEqual(pairs(seen.trailers), relayedPairs);
      }
    });

    test(`${transport}: a retried request's kept body goes chunked with its trailers, and with its length without them`, async (t) => {
      const order: Seen[] = [];
      // Whichever upstream gets the first attempt answers 503 (retried on the other); the retry is answered 200.
      const answer = (_req: http.IncomingMessage, res: http.ServerResponse, seen: Seen): void => {
        res.statusCode = order.push(seen) % 2 === 1 ? 503 : 200;
        res.end('done');
      };
      const a = await recordingBackend(t, answer);
      const b = await recordingBackend(t, answer);
      const lb = await startBalancer(t, { pools: { app: { transport, upstreams: [a.url, b.url], retry: { max_attempts: 2 } } } });
      const raw = await rawExchange(lb.port, chunkedRequest('PUT', '/kept', ['abc', 'def'], [...relayed, 'Host: evil.test']));
      assert.equal(statusOf(raw), 200, raw);
      assert.equal(order.length, 2, 'the first attempt and its retry');
      assert.equal(a.seen.length, 1, 'one attempt on each upstream');
      const retry = order[1];
      assert.ok(order.every((s) => s.body === 'abcdef'), 'both attempts carried the whole body');
      // The retry sends what the first attempt would: chunked, trailers in the last chunk (also over undici: the kept body goes over node:http).
      assert.equal(retry.headers['transfer-encoding'], 'chunked');
      assert.equal(retry.headers['content-length'], undefined);
      assert.deepEqual(pairs(retry.trailers), relayedPairs);

      // Without trailers a retry keeps its Content-Length.
      const plain = await rawExchange(lb.port, chunkedRequest('PUT', '/kept', ['abc', 'def'], []));
      assert.equal(statusOf(plain), 200, plain);
      assert.equal(order.length, 4);
      const last = order[3];
      assert.equal(last.headers['content-length'], '6');
      assert.equal(last.headers['transfer-encoding'], undefined);
      assert.deepEqual(last.trailers, []);
    });

    test(`${transport}: a chunked DELETE's body is framed upstream (never sent bare, where its bytes would read as the next request)`, async (t) => {
      const backend = await recordingBackend(t);
      const lb = await startBalancer(t, { pools: { app: { transport, upstreams: [backend.url] } } });
      const smuggled = 'GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n';
      const raw = await rawExchange(lb.port, chunkedRequest('DELETE', '/item', [smuggled], ['X-Checksum: 1']));
      assert.equal(statusOf(raw), 200, raw);
      assert.equal(backend.seen.length, 1, 'one request upstream, not two');
      assert.equal(backend.seen[0].body, smuggled);
      const headers = backend.seen[0].headers;
      // undici frames a stream that had ended before it wrote the request with its length.
      assert.ok(headers['transfer-encoding'] === 'chunked' || headers['content-length'] === String(smuggled.length), JSON.stringify(headers));
    });

    test(`${transport}: TE: trailers is forwarded (with Connection: te where the client library allows), TE: gzip is not`, async (t) => {
      const backend = await recordingBackend(t);
      const lb = await startBalancer(t, { pools: { app: { transport, upstreams: [backend.url] } } });
      const ask = (te: string): Promise<string> => rawExchange(lb.port, `GET /te HTTP/1.1\r\nHost: app.test\r\nTE: ${te}\r\nConnection: close\r\n\r\n`);
      assert.equal(statusOf(await ask('gzip, trailers')), 200);
      assert.equal(statusOf(await ask('gzip;q=0.5, deflate')), 200);
      const [withTrailers, without] = backend.seen;
      assert.equal(withTrailers.headers.te, 'trailers');
      assert.equal(without.headers.te, undefined);
      // undici refuses any Connection value but keep-alive and close (src/transport/undici.ts).
      if (transport === 'undici') assert.doesNotMatch(String(withTrailers.headers.connection), /\bte\b/);
      else assert.match(String(withTrailers.headers.connection), /\bte\b/i);
      assert.doesNotMatch(String(without.headers.connection), /\bte\b/i);
    });
  }

  test('a pipelined request after one with trailers is read from the right byte', async (t) => {
    const backend = await recordingBackend(t, (req, res, seen) => res.end(`[${req.url} ${seen.body} ${seen.trailers.join('=')}]`));
    const lb = await startBalancer(t, { pools: { app: { upstreams: [backend.url] } } });
    const first = chunkedRequest('POST', '/one', ['abc'], ['X-Checksum: 1']).replace('Connection: close\r\n', '');
    const second = chunkedRequest('POST', '/two', ['defg'], ['X-Checksum: 2']);
    const raw = await rawExchange(lb.port, first + second);
    assert.deepEqual([...raw.matchAll(/\[([^\]]*)\]/g)].map((m) => m[1]), ['/one abc X-Checksum=1', '/two defg X-Checksum=2']);
  });

  const framing: [string, string][] = [
    ['Content-Length', 'Content-Length: 5'],
    ['Transfer-Encoding', 'Transfer-Encoding: chunked'],
  ];
  for (const [what, line] of framing) {
    test(`a ${what} trailer is refused (400, as llhttp refuses it): framing after the body is a smuggling attempt`, async (t) => {
      const backend = await recordingBackend(t);
      const lb = await startBalancer(t, { pools: { app: { upstreams: [backend.url] } } });
      const raw = await rawExchange(lb.port, chunkedRequest('POST', '/framing', ['hello'], ['X-Checksum: 1', line]));
      assert.equal(statusOf(raw), 400, raw);
      await eventually(() => backend.open() === 0, { what: 'the upstream request to be dropped' });
      assert.ok(backend.seen.every((s) => !s.complete), 'no request completed upstream');
    });
  }

  const malformed: [string, string[]][] = [
    ['a folded trailer line (obs-fold)', ['X-Checksum: abc', ' continued']],
    ['a bare LF ending a trailer line', ['X-Checksum: abc\nX-Other: 1']],
    ['a trailer name with a space', ['X Checksum: abc']],
    ['a NUL in a trailer value', ['X-Checksum: a\0c']],
  ];
  for (const [what, lines] of malformed) {
    test(`${what} is refused with 400 and the request never completes upstream`, async (t) => {
      const backend = await recordingBackend(t);
      const lb = await startBalancer(t, { pools: { app: { upstreams: [backend.url] } } });
      const raw = await rawExchange(lb.port, chunkedRequest('POST', '/bad', ['hello'], lines));
      assert.equal(statusOf(raw), 400, raw);
      assert.match(raw, /\r\nconnection: close\r\n/i);
      await eventually(() => backend.open() === 0, { what: 'the upstream request to be dropped' });
      assert.ok(backend.seen.every((s) => !s.complete && s.trailers.length === 0), 'no request completed upstream, no trailer seen');
    });
  }

  test('trailers larger than max_header_bytes are refused with 431 before the request completes upstream', async (t) => {
    const backend = await recordingBackend(t);
    const lb = await startBalancer(t, { listeners: [{ host: '127.0.0.1', port: 0, limits: { max_header_bytes: 2048 } }], pools: { app: { upstreams: [backend.url] } } });
    const under = await rawExchange(lb.port, chunkedRequest('POST', '/big', ['hello'], [`X-Big: ${'v'.repeat(1500)}`]));
    assert.equal(statusOf(under), 200, 'under the limit: relayed');
    assert.equal(backend.seen[0].trailers[1]?.length, 1500);
    const over = await rawExchange(lb.port, chunkedRequest('POST', '/big', ['hello'], [`X-Big: ${'v'.repeat(1500)}`, `X-Bigger: ${'v'.repeat(1000)}`]));
    assert.equal(statusOf(over), 431, over);
    await eventually(() => backend.open() === 0, { what: 'the upstream request to be dropped' });
    assert.equal(backend.seen.filter((s) => s.complete).length, 1, 'only the request under the limit completed upstream');
  });

  test('more trailer fields than max_headers are refused with 431', async (t) => {
    const backend = await recordingBackend(t);
    const lb = await startBalancer(t, { listeners: [{ host: '127.0.0.1', port: 0, limits: { max_headers: 10 } }], pools: { app: { upstreams: [backend.url] } } });
    const lines = (n: number): string[] => Array.from({ length: n }, (_, i) => `X-T${i}: ${i}`);
    // A head may have max_headers + 1 fields before the parser refuses (one over is the guard's, for headers); trailers take
    // the same count on both engines (node:http's maxHeadersCount counts trailers too).
    assert.equal(statusOf(await rawExchange(lb.port, chunkedRequest('POST', '/many', ['a'], lines(11)))), 200);
    assert.equal(backend.seen[0].trailers.length, 22);
    assert.equal(statusOf(await rawExchange(lb.port, chunkedRequest('POST', '/many', ['a'], lines(12)))), 431);
    await eventually(() => backend.open() === 0, { what: 'the upstream request to be dropped' });
    assert.equal(backend.seen.filter((s) => s.complete).length, 1);
  });
});

describe(`response trailers (engine ${engine})`, () => {
  for (const transport of transports) {
    test(`${transport}: an upstream's trailers reach a client on a chunked answer, forbidden fields dropped`, async (t) => {
      const backend = await recordingBackend(t, (_req, res) => {
        res.writeHead(200, { 'content-type': 'text/plain', trailer: 'X-Checksum, Server-Timing' });
        res.write('hello');
        const list: [string, string][] = [...relayed, ...forbidden].map((line) => line.split(': ') as [string, string]);
        res.addTrailers(list);
        res.end();
      });
      const lb = await startBalancer(t, { pools: { app: { transport, upstreams: [backend.url] } } });
      const raw = await rawExchange(lb.port, 'GET /down HTTP/1.1\r\nHost: app.test\r\nTE: trailers\r\nConnection: close\r\n\r\n');
      assert.equal(statusOf(raw), 200, raw);
      const head = raw.slice(0, raw.indexOf('\r\n\r\n') + 4);
      assert.match(head, /\r\ntransfer-encoding: chunked\r\n/i);
      const body = raw.slice(head.length);
      // The last chunk and exactly the relayable trailers, in order.
      assert.ok(body.endsWith('0\r\nX-Checksum: abc123\r\nServer-Timing: db;dur=53\r\n\r\n'), JSON.stringify(body));
      assert.match(body, /^5\r\nhello\r\n/);
    });

    test(`${transport}: an upstream's Content-Length trailer cuts the answer (never a complete-looking one)`, async (t) => {
      const upstream = await startRawBackend(t, (socket) => {
        socket.once('data', () => socket.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 0\r\n\r\n'));
      });
      const lb = await startBalancer(t, { pools: { app: { transport, upstreams: [upstream.url], retry: { max_attempts: 1 } } } });
      const raw = await rawExchange(lb.port, 'GET /cl HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
      assert.ok(!raw.includes('0\r\n\r\n') && !/content-length: 0/i.test(raw.slice(raw.indexOf('hello'))), JSON.stringify(raw));
    });
  }

  test('an HTTP/1.0 client gets the body without trailers (no chunked coding to carry them)', async (t) => {
    const backend = await recordingBackend(t, (_req, res) => {
      res.write('hello');
      res.addTrailers({ 'x-checksum': 'abc' });
      res.end();
    });
    const lb = await startBalancer(t, { pools: { app: { upstreams: [backend.url] } } });
    const raw = await rawExchange(lb.port, 'GET /old HTTP/1.0\r\nHost: app.test\r\n\r\n');
    assert.equal(Number(/^HTTP\/1\.[01] (\d{3})/.exec(raw)?.[1]), 200, raw);
    assert.equal(raw.slice(raw.indexOf('\r\n\r\n') + 4), 'hello');
  });
});
