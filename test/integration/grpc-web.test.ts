/**
 * gRPC-Web through Fulcrum: HTTP/1.1 (and HTTP/2) callers speaking `application/grpc-web` and
 * `application/grpc-web-text` reach real @grpc/grpc-js backends over h2c, and get the trailers
 * back as the body's last frame (PROTOCOL-WEB.md). Requests are built by hand, as a browser's
 * gRPC-Web library would send them.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import { startBalancer } from '../helpers/servers.ts';
import { startEchoBackend } from '../helpers/grpc.ts';

/** One length-prefixed message frame (flag 0) holding `value` as JSON (the Echo service's encoding). */
function messageFrame(value: unknown): Buffer {
  const payload = Buffer.from(JSON.stringify(value));
  const frame = Buffer.alloc(5 + payload.length);
  frame.writeUInt32BE(payload.length, 1);
  payload.copy(frame, 5);
  return frame;
}

/** The frames of a gRPC-Web answer body: messages (parsed JSON) and the trailer block (`name:value` lines). */
function parseFrames(body: Buffer): { messages: Record<string, unknown>[]; trailers: Record<string, string> | null } {
  const messages: Record<string, unknown>[] = [];
  let trailers: Record<string, string> | null = null;
  let at = 0;
  while (at + 5 <= body.length) {
    const flag = body[at];
    const length = body.readUInt32BE(at + 1);
    const payload = body.subarray(at + 5, at + 5 + length);
    at += 5 + length;
    if ((flag & 0x80) !== 0) {
      trailers = {};
      for (const line of payload.toString('latin1').split('\r\n')) {
        const colon = line.indexOf(':');
        if (colon > 0) trailers[line.slice(0, colon)] = line.slice(colon + 1).trim();
      }
    } else messages.push(JSON.parse(payload.toString()) as Record<string, unknown>);
  }
  assert.equal(at, body.length, 'the body is whole frames');
  return { messages, trailers };
}

/** A POST over HTTP/1.1; resolves with status, headers and the whole body. */
function post(url: string, path: string, contentType: string, body: Buffer): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${url}${path}`, { method: 'POST', headers: { 'content-type': contentType, 'x-grpc-web': '1', 'content-length': body.length } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function webBalancer(t: TestContext, upstreams: string[]) {
  return startBalancer(t, { listeners: [{ host: '127.0.0.1', port: 0, http2: { h2c: true } }], pools: { g: { protocol: 'h2c', upstreams } } } as never);
}

test('gRPC-Web (binary) over HTTP/1.1: unary and server streaming, trailers as the last frame', { timeout: 10_000 }, async (t) => {
  const backend = await startEchoBackend(t, 'a');
  const lb = await webBalancer(t, [backend.url]);
  const unary = await post(lb.url, '/fulcrum.test.Echo/Unary', 'application/grpc-web+proto', messageFrame({ text: 'hi' }));
  assert.equal(unary.status, 200);
  assert.equal(unary.headers['content-type'], 'application/grpc-web+proto');
  const u = parseFrames(unary.body);
  assert.deepEqual(u.messages.map((m) => [m.backend, m.text]), [['a', 'hi']]);
  assert.equal(u.trailers?.['grpc-status'], '0');
  assert.equal(u.trailers?.['x-trailer'], 'from a');
  const stream = await post(lb.url, '/fulcrum.test.Echo/ServerStream', 'application/grpc-web', messageFrame({ text: 's', count: 4 }));
  const s = parseFrames(stream.body);
  assert.deepEqual(s.messages.map((m) => m.index), [0, 1, 2, 3]);
  assert.equal(s.trailers?.['grpc-status'], '0');
});

test('gRPC-Web text (base64 both ways), and a backend error status in the trailer frame', { timeout: 10_000 }, async (t) => {
  const backend = await startEchoBackend(t, 'b');
  const lb = await webBalancer(t, [backend.url]);
  const text = await post(lb.url, '/fulcrum.test.Echo/ServerStream', 'application/grpc-web-text', Buffer.from(messageFrame({ text: 't', count: 3 }).toString('base64')));
  assert.equal(text.status, 200);
  assert.equal(text.headers['content-type'], 'application/grpc-web-text');
  assert.match(text.body.toString('latin1'), /^[A-Za-z0-9+/=]+$/, 'the body is base64');
  const t3 = parseFrames(Buffer.from(text.body.toString('latin1'), 'base64'));
  assert.deepEqual(t3.messages.map((m) => m.index), [0, 1, 2]);
  assert.equal(t3.trailers?.['grpc-status'], '0');
  const failed = await post(lb.url, '/fulcrum.test.Echo/Unary', 'application/grpc-web+proto', messageFrame({ fail: { code: 5, details: 'no such thing' } }));
  assert.equal(failed.status, 200);
  // An error is a trailers-only answer: its status may come in the headers or in a trailer frame.
  const f = parseFrames(failed.body);
  const status = f.trailers?.['grpc-status'] ?? failed.headers['grpc-status'];
  const message = f.trailers?.['grpc-message'] ?? failed.headers['grpc-message'];
  assert.equal(status, '5');
  assert.equal(message, 'no%20such%20thing', 'grpc-message as the backend percent-encoded it');
});

test("gRPC-Web: Fulcrum's own errors are grpc-status answers with the caller's content-type (UNAVAILABLE, UNIMPLEMENTED)", { timeout: 10_000 }, async (t) => {
  const lb = await startBalancer(t, { listeners: [{ host: '127.0.0.1', port: 0 }], routes: [{ path_prefix: '/fulcrum.test.Echo/', pool: 'g' }], pools: { g: { protocol: 'h2c', upstreams: ['http://127.0.0.1:1'] } } } as never);
  const down = await post(lb.url, '/fulcrum.test.Echo/Unary', 'application/grpc-web+proto', messageFrame({ text: 'x' }));
  assert.equal(down.status, 200);
  assert.equal(down.headers['content-type'], 'application/grpc-web+proto');
  assert.equal(down.headers['grpc-status'], '14');
  const nowhere = await post(lb.url, '/other.Service/Call', 'application/grpc-web', messageFrame({}));
  assert.equal(nowhere.headers['grpc-status'], '12');
  const ended = lb.ended.filter((c) => c.grpc);
  assert.deepEqual(ended.map((c) => c.grpcStatus).sort(), [12, 14]);
});

test('gRPC-Web over HTTP/2 (h2c) too', { timeout: 10_000 }, async (t) => {
  const backend = await startEchoBackend(t, 'c');
  const lb = await webBalancer(t, [backend.url]);
  const session = http2.connect(lb.url);
  t.after(() => session.destroy());
  const answer = await new Promise<{ headers: http2.IncomingHttpHeaders; body: Buffer; trailers: boolean }>((resolve, reject) => {
    const req = session.request({ ':method': 'POST', ':path': '/fulcrum.test.Echo/Unary', 'content-type': 'application/grpc-web+proto' });
    let headers: http2.IncomingHttpHeaders = {};
    let trailers = false;
    const chunks: Buffer[] = [];
    req.on('response', (h) => (headers = h));
    req.on('trailers', () => (trailers = true));
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve({ headers, body: Buffer.concat(chunks), trailers }));
    req.on('error', reject);
    req.end(messageFrame({ text: 'over h2' }));
  });
  assert.equal(answer.headers['content-type'], 'application/grpc-web+proto');
  const f = parseFrames(answer.body);
  assert.deepEqual(f.messages.map((m) => m.text), ['over h2']);
  assert.equal(f.trailers?.['grpc-status'], '0');
  assert.equal(answer.trailers, false, 'no HTTP trailers: they are in the body');
});
