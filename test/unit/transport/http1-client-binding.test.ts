/**
 * Fulcrum's own HTTP/1.1 client with upstream connections bound to client connections (pool
 * `proxy_protocol`), driven directly with a minimal attempt: a connection whose client connection
 * closed while its exchange ran is closed at release instead of parked; the keys of
 * src/proxy/upstream-proxy-header.ts say when their client is gone. Real sockets on 127.0.0.1.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import net, { type AddressInfo } from 'node:net';
import { Http1Client } from '../../../src/transport/http1.ts';
import type { UpstreamAttempt } from '../../../src/transport/transport.ts';
import { Upstream } from '../../../src/upstream/upstream.ts';
import { KeepAliveConfig, TimeoutsConfig, UpstreamHttp2Config } from '../../../src/config/schema.ts';
import { clientConnectionGone, clientConnectionKey, watchClientConnection } from '../../../src/proxy/upstream-proxy-header.ts';
import type { Downstream } from '../../../src/core/downstream.ts';
import { startRawBackend } from '../../helpers/servers.ts';
import { eventually } from '../../helpers/eventually.ts';

/** A client connection: our end of a TCP connection to a local listener (both ends closed after the test). */
async function clientSocket(t: TestContext): Promise<net.Socket> {
  const accepted: net.Socket[] = [];
  const server = net.createServer((s) => accepted.push(s.on('error', () => {})));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const socket = net.connect({ host: '127.0.0.1', port: (server.address() as AddressInfo).port });
  socket.on('error', () => {});
  await new Promise((resolve) => socket.once('connect', resolve));
  t.after(() => {
    socket.destroy();
    for (const s of accepted) s.destroy();
    server.close();
  });
  return socket;
}

/** The downstream of an exchange on `socket`, as far as the keys look at it. */
function downstreamOn(socket: net.Socket | null): Downstream {
  return { socket } as Downstream;
}

/** A GET attempt bound to `key`, reporting what happened into `seen`. */
function attemptOf(upstream: Upstream, key: object, seen: { ended: number; errors: unknown[] }): UpstreamAttempt {
  return {
    upstream,
    method: 'GET',
    path: '/',
    headers: ['host', upstream.hostHeader],
    body: null,
    requestTrailers: null,
    expectContinue: false,
    upgrade: false,
    live: true,
    proxyHeader: Buffer.from('PROXY UNKNOWN\r\n', 'latin1'),
    connectionKey: key,
    onCancel: () => {},
    sending: () => {},
    informational: () => {},
    response: () => true,
    data: () => true,
    whenWritable: (resume) => resume(),
    end: () => void seen.ended++,
    error: (err) => void seen.errors.push(err),
    switched: () => assert.fail('no upgrade here'),
  };
}

test('keys: one per client socket and version; gone once the socket is destroyed; a socketless exchange\'s is gone from the start', async (t) => {
  const socket = await clientSocket(t);
  const v1 = clientConnectionKey('v1', downstreamOn(socket));
  assert.equal(clientConnectionKey('v1', downstreamOn(socket)), v1);
  assert.notEqual(clientConnectionKey('v2', downstreamOn(socket)), v1);
  assert.equal(clientConnectionGone(v1), false);
  assert.equal(clientConnectionGone(clientConnectionKey('v2', downstreamOn(null))), true);
  assert.equal(watchClientConnection(clientConnectionKey('v1', downstreamOn(null)), { clientConnectionClosed: () => assert.fail('never') }), false);
  // Two watchers, one of them twice: each told once, from one 'close' listener on the socket.
  const told: string[] = [];
  const a = { clientConnectionClosed: (key: object) => void told.push(key === v1 ? 'a' : '?') };
  const b = { clientConnectionClosed: () => void told.push('b') };
  const before = socket.listenerCount('close');
  assert.equal(watchClientConnection(v1, a), true);
  assert.equal(watchClientConnection(v1, a), true);
  assert.equal(watchClientConnection(v1, b), true);
  assert.equal(socket.listenerCount('close'), before + 1);
  socket.destroy();
  assert.equal(clientConnectionGone(v1), true);
  await eventually(() => told.length === 2, { what: 'the watchers told' });
  assert.deepEqual(told.sort(), ['a', 'b']);
  assert.equal(watchClientConnection(v1, a), false);
});

test('a bound upstream connection whose client connection closed during its exchange is closed at release, not parked', async (t) => {
  let held: net.Socket | null = null;
  let open = 0;
  const backend = await startRawBackend(t, (socket) => {
    open++;
    socket.on('close', () => open--);
    socket.on('data', () => (held = socket));
  });
  const upstream = new Upstream({ url: backend.url, weight: 1, maxConnections: 0 });
  const client = new Http1Client(upstream, {
    keepalive: KeepAliveConfig.parse({ idle_timeout: '60s' }),
    timeouts: TimeoutsConfig.parse({}),
    maxSockets: null,
    tls: null,
    http2: UpstreamHttp2Config.parse({}),
  });
  t.after(() => client.close());
  const seen = { ended: 0, errors: [] as unknown[] };
  // A client that stays: its connection is parked for its next request.
  const staying = await clientSocket(t);
  client.forward(attemptOf(upstream, clientConnectionKey('v1', downstreamOn(staying)), seen));
  await eventually(() => held !== null, { what: 'the first request at the upstream' });
  held!.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok');
  await eventually(() => seen.ended === 1, { what: 'the first answer' });
  // A client that leaves while its request is answered (the transport was not told: release must see it).
  held = null;
  const leaving = await clientSocket(t);
  client.forward(attemptOf(upstream, clientConnectionKey('v1', downstreamOn(leaving)), seen));
  await eventually(() => held !== null, { what: 'the second request at the upstream' });
  assert.equal(open, 2);
  leaving.destroy();
  held!.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok');
  await eventually(() => seen.ended === 2, { what: 'the second answer' });
  await eventually(() => open === 1, { what: 'the leaving client\'s upstream connection closed' });
  assert.deepEqual(seen.errors, []);
  // The staying client's connection is still parked for it, and goes when it leaves.
  staying.destroy();
  await eventually(() => open === 0, { what: 'the staying client\'s upstream connection closed with it' });
});
