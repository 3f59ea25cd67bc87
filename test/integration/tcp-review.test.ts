/**
 * Review of issue 14's TCP balancing, PROXY protocol and TLS passthrough, with real sockets on
 * 127.0.0.1 (port 0). Tests named after a bug failed before its fix (an https upstream's PROXY
 * header, a tcp upstream's max_connections with max_pending, the ClientHello deadline at drain,
 * a backup of the other protocol, health checks without a PROXY header, idle upstream connections
 * outliving their client, a passthrough SNI with its trailing dot); the others pin down paths the
 * review checked and found right (PROXY then TLS and h2, engine node, a 16 KiB ClientHello, v2
 * LOCAL and a TCP6 header on an IPv4 socket).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import net, { type AddressInfo } from 'node:net';
import tls from 'node:tls';
import { encodeProxyV1, encodeProxyV2, parseProxyHeader, readProxyHeader, type ProxyHeader } from '../../src/listeners/proxy-protocol.ts';
import { closedPort, configProblems, get, startBackend, startBalancer } from '../helpers/servers.ts';
import { makeTestCa } from '../helpers/tls.ts';
import { eventually } from '../helpers/eventually.ts';
import { backendOf, connect, recordCloses, startEcho } from '../helpers/tcp.ts';
import { capturedLogger } from '../helpers/captured-logger.ts';
import { ListenerConfig } from '../../src/config/schema.ts';
import { TcpListener } from '../../src/listeners/tcp-listener.ts';
import { TcpProxy } from '../../src/proxy/tcp-proxy.ts';

/** Writes a v1 header naming 203.0.113.7:4242 -> 198.51.100.1:443 on a new connection to `port`. */
function proxiedSocket(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port }, () => {
      socket.write(encodeProxyV1({ address: '203.0.113.7', port: 4242 }, { address: '198.51.100.1', port: 443 }));
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

test('an https listener behind a trusted PROXY header: HTTP/1.1 and HTTP/2 over TLS see the client the header named', async (t) => {
  const ca = await makeTestCa(t);
  const site = await ca.issue('site');
  const backend = await startBackend(t, (req, res) => res.end(String(req.headers['x-forwarded-for'])));
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'https', proxy_protocol: { trusted: ['127.0.0.1'] }, tls: { certificates: [{ cert: site.certPath, key: site.keyPath }], alpn: ['h2', 'http/1.1'] } }],
    pools: { web: { upstreams: [backend.url] } },
  } as never);
  // HTTP/1.1 over TLS.
  const raw1 = await proxiedSocket(lb.port);
  const h1 = await new Promise<string>((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port: lb.port, path: '/', ca: ca.ca.cert, servername: 'localhost', createConnection: () => tls.connect({ socket: raw1, ca: ca.ca.cert, servername: 'localhost', ALPNProtocols: ['http/1.1'] }) }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve(body));
    });
    req.on('error', reject);
    req.end();
  });
  assert.equal(h1, '203.0.113.7');
  // HTTP/2 over TLS.
  const raw2 = await proxiedSocket(lb.port);
  const session = http2.connect(`https://localhost:${lb.port}`, { createConnection: () => tls.connect({ socket: raw2, ca: ca.ca.cert, servername: 'localhost', ALPNProtocols: ['h2'] }) });
  t.after(() => session.close());
  const h2 = await new Promise<string>((resolve, reject) => {
    const stream = session.request({ ':path': '/' });
    let body = '';
    stream.on('data', (d) => (body += d));
    stream.on('end', () => resolve(body));
    stream.on('error', reject);
    stream.end();
  });
  assert.equal(h2, '203.0.113.7');
});

test('engine node: a trusted PROXY header names the client for X-Forwarded-For', async (t) => {
  const backend = await startBackend(t, (req, res) => res.end(String(req.headers['x-forwarded-for'])));
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, engine: 'node', proxy_protocol: { trusted: ['127.0.0.1'] } }],
    pools: { web: { upstreams: [backend.url] } },
  } as never);
  const raw = await proxiedSocket(lb.port);
  raw.write('GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n');
  let text = '';
  raw.on('data', (d) => (text += d));
  await eventually(() => text.includes('\r\n\r\n') && text.endsWith('203.0.113.7'), { what: 'the answer' });
});

/** An upstream that requires a PROXY header (see headerFirstUpstream). */
interface HeaderFirstUpstream {
  port: number;
  /** The headers connections started with, in order. */
  headers: ProxyHeader[];
  /** Why connections were refused (ProxyProtocolError reasons: no valid header first). */
  refusals: string[];
  /** Connections open now. */
  open: () => number;
}

/**
 * An upstream that, like HAProxy's `bind ... accept-proxy` or nginx's `listen ... proxy_protocol`,
 * reads a PROXY header in clear text first (Fulcrum's own reader, over parseProxyHeader) and closes
 * a connection that does not start with a valid one; after the header the socket, paused, goes to
 * `serve` (an HTTP or HTTPS server's 'connection', or a script of the test's own), then resumes.
 */
async function headerFirstUpstream(t: TestContext, serve: (socket: net.Socket) => void): Promise<HeaderFirstUpstream> {
  const headers: ProxyHeader[] = [];
  const refusals: string[] = [];
  const sockets = new Set<net.Socket>();
  const front = net.createServer({ pauseOnConnect: true }, (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    readProxyHeader(socket, { timeoutMs: 2000 }).then(
      (header) => {
        headers.push(header);
        serve(socket);
        socket.resume();
      },
      (err: { reason: string }) => {
        refusals.push(err.reason);
        socket.destroy();
      },
    );
  });
  await new Promise<void>((resolve) => front.listen(0, '127.0.0.1', resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        front.close(() => resolve());
        for (const s of sockets) s.destroy();
      }),
  );
  return { port: (front.address() as AddressInfo).port, headers, refusals, open: () => sockets.size };
}

/**
 * An https upstream that, like HAProxy's `bind ... ssl accept-proxy` or nginx's `listen ... ssl
 * proxy_protocol`, reads a PROXY header in clear text first, then TLS, then HTTP.
 */
async function proxyThenTlsBackend(t: TestContext, cert: { cert: string; key: string }): Promise<{ url: string; headers: ProxyHeader[]; refused: () => number }> {
  const server = https.createServer({ cert: cert.cert, key: cert.key }, (_req, res) => res.end('ok'));
  const upstream = await headerFirstUpstream(t, (socket) => server.emit('connection', socket));
  return { url: `https://127.0.0.1:${upstream.port}`, headers: upstream.headers, refused: () => upstream.refusals.length };
}

test('proxy_protocol toward an https:// upstream: the header goes in clear text before the TLS handshake, not inside TLS', async (t) => {
  const ca = await makeTestCa(t);
  const leaf = await ca.issue('upstream');
  const upstream = await proxyThenTlsBackend(t, leaf);
  const lb = await startBalancer(t, { pools: { web: { upstreams: [upstream.url], proxy_protocol: 'v1', tls: { ca: ca.caPath } } } } as never);
  const answer = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    http.get(`${lb.url}/`, { agent: false }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    }).on('error', reject);
  });
  assert.equal(upstream.refused(), 0, 'the upstream found no PROXY header in clear text');
  assert.deepEqual(answer, { status: 200, body: 'ok' });
  assert.equal(upstream.headers[0].source?.address, '127.0.0.1');
});

test('proxy_protocol toward two https:// upstreams, one refusing the connect: every request is served by the other', async (t) => {
  const ca = await makeTestCa(t);
  const leaf = await ca.issue('upstream');
  const upstream = await proxyThenTlsBackend(t, leaf);
  const refusing = await closedPort();
  const lb = await startBalancer(t, { pools: { web: { upstreams: [`https://127.0.0.1:${refusing}`, upstream.url], policy: 'round_robin', proxy_protocol: 'v2', tls: { ca: ca.caPath } } } } as never);
  const statuses: number[] = [];
  for (let i = 0; i < 4; i++) statuses.push((await get(`${lb.url}/`)).status);
  assert.deepEqual(statuses, [200, 200, 200, 200]);
  assert.ok(upstream.headers.length >= 1);
});

test('a tcp upstream\'s max_connections caps its open connections, also with circuit_breaker.max_pending set (no TCP connection ever waits)', async (t) => {
  const backend = await startEcho(t, 'a');
  const closes = recordCloses(t);
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'tcp', pool: 'db' }],
    pools: { db: { protocol: 'tcp', upstreams: [{ url: backend.url, max_connections: 2 }], circuit_breaker: { max_pending: 3 } } },
  } as never);
  const first = await connect(lb.port);
  const second = await connect(lb.port);
  assert.equal(await backendOf(first), 'a');
  assert.equal(await backendOf(second), 'a');
  const third = await connect(lb.port);
  let thirdClosed = false;
  void third.closed.then(() => (thirdClosed = true));
  t.after(() => third.socket.destroy());
  await eventually(() => thirdClosed, { what: 'the third connection closed', timeout: 3000 });
  assert.equal(backend.accepted, 2);
  await eventually(() => closes.some((c) => c.reason === 'no_upstream'), { what: 'the third connection refused' });
});

/**
 * A ClientHello handshake message of exactly `size` bytes (RFC 8446 section 4.1.2) naming
 * `serverName` by SNI, padded with the padding extension (RFC 7685), cut into records of at
 * most `recordBytes` bytes each.
 */
function clientHello(serverName: string, size: number, recordBytes = 16_384): Buffer {
  const name = Buffer.from(serverName, 'latin1');
  const sniList = Buffer.concat([Buffer.from([0]), u16(name.length), name]);
  const sni = Buffer.concat([u16(0), u16(sniList.length + 2), u16(sniList.length), sniList]);
  const fixed = Buffer.concat([Buffer.from([3, 3]), Buffer.alloc(32, 7), Buffer.from([0]), u16(2), Buffer.from([0x13, 0x01]), Buffer.from([1, 0])]);
  // 4 (message header) + fixed + 2 (extensions length) + sni + 4 (padding extension header) + padding = size
  const padding = size - 4 - fixed.length - 2 - sni.length - 4;
  assert.ok(padding >= 0);
  const extensions = Buffer.concat([sni, u16(21), u16(padding), Buffer.alloc(padding)]);
  const body = Buffer.concat([fixed, u16(extensions.length), extensions]);
  const message = Buffer.concat([Buffer.from([1, body.length >> 16, (body.length >> 8) & 0xff, body.length & 0xff]), body]);
  assert.equal(message.length, size);
  const records: Buffer[] = [];
  for (let at = 0; at < message.length; at += recordBytes) {
    const part = message.subarray(at, Math.min(message.length, at + recordBytes));
    records.push(Buffer.from([22, 3, 1]), u16(part.length), part);
  }
  return Buffer.concat(records);
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}

test('TLS passthrough: a 16 KiB ClientHello over two records, sent in small pieces with bytes after it, reaches the routed upstream byte for byte', async (t) => {
  const received: Buffer[] = [];
  const backend = await startEcho(t, 'big', (socket) => socket.on('data', (d: Buffer) => received.push(d)));
  const other = await startEcho(t, 'other');
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'tcp', pool: 'other', tls_passthrough: { routes: [{ server_names: ['*.Big.TEST'], pool: 'big' }] } }],
    pools: { big: { protocol: 'tcp', upstreams: [backend.url] }, other: { protocol: 'tcp', upstreams: [other.url] } },
  } as never);
  const hello = clientHello('WWW.big.test.', 16 * 1024, 10_000);
  const after = Buffer.from('application bytes after the hello');
  const sent = Buffer.concat([hello, after]);
  const c = await connect(lb.port);
  t.after(() => c.socket.destroy());
  // Pieces of 1000 bytes, each written on its own turn of the event loop.
  for (let at = 0; at < sent.length; at += 1000) {
    c.socket.write(sent.subarray(at, at + 1000));
    await new Promise((resolve) => setImmediate(resolve));
  }
  await eventually(() => Buffer.concat(received).length >= sent.length, { what: 'the hello and the bytes after it at the upstream' });
  assert.ok(Buffer.concat(received).equals(sent));
  assert.equal(other.accepted, 0);
});

test('TLS passthrough: a connection still sending its ClientHello when the listener drains leaves no timer behind and is not counted as a timeout', async (t) => {
  const { logger } = capturedLogger();
  const proxy = new TcpProxy(null);
  t.after(() => proxy.shutdown(0));
  const settings = ListenerConfig.parse({ host: '127.0.0.1', port: 0, protocol: 'tcp', tls_passthrough: { routes: [{ server_names: ['a.test'], pool: 'a' }], client_hello_timeout: '30s' } });
  const listener = new TcpListener(settings, proxy, () => new Map(), logger);
  const { port } = await listener.listen();
  const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
  const before = timers();
  const c = await connect(port);
  t.after(() => c.socket.destroy());
  c.socket.write(clientHello('a.test', 512).subarray(0, 20));
  // The listener's ClientHello deadline is the one timer the connection adds.
  await eventually(() => timers() === before + 1, { what: 'the ClientHello deadline' });
  await listener.drain(1000);
  await c.closed;
  assert.equal(timers(), before, 'the ClientHello deadline of a closed connection is cleared');
  assert.equal(listener.passthroughRefused.get('timeout'), undefined);
});

test('config: a pool\'s backup speaks its protocol (a tcp pool\'s backup is a tcp pool, an HTTP pool\'s an HTTP pool)', () => {
  const tcpPool = { protocol: 'tcp', upstreams: ['tcp://127.0.0.1:6380'] };
  const httpPool = { upstreams: ['http://127.0.0.1:8081'] };
  assert.match(configProblems({ listeners: [{ protocol: 'tcp', port: 6379, pool: 'db' }], pools: { db: { ...tcpPool, backup: 'web' }, web: httpPool } }), /pool web is an HTTP pool; a tcp pool's backup is a tcp pool/);
  assert.match(configProblems({ listeners: [{ port: 8080 }], routes: [{ pool: 'web' }], pools: { web: { ...httpPool, backup: 'db' }, db: tcpPool } }), /pool db is a tcp pool; an HTTP pool's backup is an HTTP pool/);
  assert.equal(configProblems({ listeners: [{ protocol: 'tcp', port: 6379, pool: 'db' }], pools: { db: { ...tcpPool, backup: 'spare' }, spare: { protocol: 'tcp', upstreams: ['tcp://127.0.0.1:6381'] } } }), '');
});

// HAProxy sends the PROXY header on the health checks of a server with send-proxy ("check-send-proxy"
// is implied); a probe has no client, so its header is v1 UNKNOWN or v2 LOCAL.
const fastChecks = { interval: '100ms', fast_interval: '100ms', fall: 1 };

/** The header a health probe sends: no client named (v1 UNKNOWN, v2 LOCAL). */
function assertProbeHeader(header: ProxyHeader, version: 'v1' | 'v2'): void {
  if (version === 'v1') assert.deepEqual([header.version, header.family], [1, 'unknown']);
  else assert.deepEqual([header.version, header.command], [2, 'local']);
  assert.equal(header.source, null);
}

for (const version of ['v1', 'v2'] as const) {
  test(`a pool with proxy_protocol ${version} health-checks an http upstream that requires the header: the probes send one too, naming no client`, async (t) => {
    let probes = 0;
    const server = http.createServer((req, res) => {
      if (req.headers['user-agent'] === 'fulcrum-health-check') probes++;
      res.end('ok');
    });
    const upstream = await headerFirstUpstream(t, (socket) => server.emit('connection', socket));
    const lb = await startBalancer(t, { pools: { web: { upstreams: [`http://127.0.0.1:${upstream.port}`], proxy_protocol: version, health_check: fastChecks } } } as never);
    const target = lb.balancer.pools().get('web')!.upstreams[0];
    await eventually(() => probes >= 2 || upstream.refusals.length > 0, { what: 'two probes answered (or one refused)' });
    assert.deepEqual(upstream.refusals, [], 'probes without a valid PROXY header were refused');
    assert.equal(target.health, 'healthy');
    for (const header of upstream.headers) assertProbeHeader(header, version);
  });
}

test('a pool without proxy_protocol still probes without a header: an upstream that requires one refuses the probes and is marked unhealthy', async (t) => {
  const server = http.createServer((_req, res) => res.end('ok'));
  const upstream = await headerFirstUpstream(t, (socket) => server.emit('connection', socket));
  const lb = await startBalancer(t, { pools: { web: { upstreams: [`http://127.0.0.1:${upstream.port}`], health_check: fastChecks } } } as never);
  const target = lb.balancer.pools().get('web')!.upstreams[0];
  await eventually(() => target.health === 'unhealthy', { what: 'the upstream marked unhealthy' });
  assert.deepEqual(upstream.headers, []);
  assert.ok(upstream.refusals.length >= 1);
});

test('a pool with proxy_protocol health-checks an https upstream that requires the header: it goes in clear text before the probe\'s TLS handshake', async (t) => {
  const ca = await makeTestCa(t);
  const leaf = await ca.issue('upstream');
  const upstream = await proxyThenTlsBackend(t, leaf);
  const lb = await startBalancer(t, { pools: { web: { upstreams: [upstream.url], proxy_protocol: 'v2', tls: { ca: ca.caPath }, health_check: fastChecks } } } as never);
  const target = lb.balancer.pools().get('web')!.upstreams[0];
  // No request is sent: every connection is a probe's.
  await eventually(() => upstream.headers.length >= 2 || upstream.refused() > 0, { what: 'two probes at the upstream (or one refused)' });
  assert.equal(upstream.refused(), 0, 'a probe sent no PROXY header in clear text');
  for (const header of upstream.headers) assertProbeHeader(header, 'v2');
  // The header was read before the TLS handshake: a probe whose handshake or answer failed would have marked it unhealthy.
  await eventually(() => upstream.headers.length >= 3, { what: 'a third probe' });
  assert.equal(target.health, 'healthy');
});

test('a tcp pool with proxy_protocol and a send/expect health check: the header goes before `send`, the upstream that requires it stays healthy', async (t) => {
  let pongs = 0;
  const upstream = await headerFirstUpstream(t, (socket) => {
    let text = '';
    socket.on('data', (d: Buffer) => {
      text += d.toString('latin1');
      if (text.includes('PING\r\n')) {
        pongs++;
        socket.end('+PONG\r\n');
      }
    });
  });
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'tcp', pool: 'db' }],
    pools: { db: { protocol: 'tcp', proxy_protocol: 'v1', upstreams: [`tcp://127.0.0.1:${upstream.port}`], health_check: { ...fastChecks, send: 'PING\r\n', expect: '+PONG' } } },
  } as never);
  const target = lb.balancer.pools().get('db')!.upstreams[0];
  await eventually(() => pongs >= 2 || upstream.refusals.length > 0, { what: 'two probes answered (or one refused)' });
  assert.deepEqual(upstream.refusals, [], 'probes without a valid PROXY header were refused');
  for (const header of upstream.headers) assertProbeHeader(header, 'v1');
  assert.equal(target.health, 'healthy');
});

test('a trusted peer\'s v2 LOCAL keeps the peer as the client; a TCP6 header on an IPv4 socket makes an IPv6 client; both reach a v1 pool unchanged', async (t) => {
  const headers: (ProxyHeader | null)[] = [];
  const payloads: string[] = [];
  const backend = await startEcho(t, 'pp', (socket) => {
    let buffered = Buffer.alloc(0);
    let done = false;
    socket.on('data', (d: Buffer) => {
      buffered = Buffer.concat([buffered, d]);
      if (!done) {
        const parsed = parseProxyHeader(buffered);
        if (parsed.kind === 'incomplete') return;
        done = true;
        headers.push(parsed.kind === 'header' ? parsed.header : null);
        buffered = parsed.kind === 'header' ? buffered.subarray(parsed.header.length) : buffered;
      }
      if (buffered.includes('\n')) {
        payloads.push(buffered.toString('latin1'));
        socket.end('ok\n');
      }
    });
  });
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'tcp', pool: 'db', proxy_protocol: { trusted: ['127.0.0.1'] } }],
    pools: { db: { protocol: 'tcp', proxy_protocol: 'v1', upstreams: [backend.url] } },
  } as never);
  const send = async (header: Buffer): Promise<void> => {
    const c = await connect(lb.port);
    t.after(() => c.socket.destroy());
    c.socket.write(Buffer.concat([header, Buffer.from('hello\n')]));
    await eventually(() => c.text() === 'ok\n', { what: 'the answer' });
  };
  await send(encodeProxyV2(null, null));
  await send(encodeProxyV1({ address: '2001:db8::7', port: 5555 }, { address: '2001:db8::1', port: 6379 }));
  assert.deepEqual(payloads, ['hello\n', 'hello\n']);
  assert.equal(headers[0]?.source?.address, '127.0.0.1');
  assert.equal(headers[1]?.family, 'tcp6');
  assert.deepEqual(headers[1]?.source, { address: '2001:db8::7', port: 5555 });
  assert.deepEqual(headers[1]?.destination, { address: '2001:db8::1', port: 6379 });
});

// HAProxy makes a server connection that carries a PROXY header private to its client session and
// closes it with it.
for (const version of ['v1', 'v2'] as const) {
  test(`proxy_protocol ${version} on an http1 pool: an idle upstream connection bound to a client connection closes when that client leaves`, async (t) => {
    const server = http.createServer({ keepAliveTimeout: 60_000 }, (_req, res) => res.end('ok'));
    const upstream = await headerFirstUpstream(t, (socket) => server.emit('connection', socket));
    const lb = await startBalancer(t, { pools: { web: { upstreams: [`http://127.0.0.1:${upstream.port}`], proxy_protocol: version, keepalive: { idle_timeout: '60s' } } } } as never);
    // A client that stays reuses its upstream connection.
    const staying = new http.Agent({ keepAlive: true });
    t.after(() => staying.destroy());
    for (let i = 0; i < 2; i++) assert.equal((await get(`${lb.url}/`, { agent: staying })).status, 200);
    assert.equal(upstream.headers.length, 1);
    for (let i = 0; i < 5; i++) {
      const agent = new http.Agent({ keepAlive: true });
      assert.equal((await get(`${lb.url}/`, { agent })).status, 200);
      agent.destroy();
    }
    assert.equal(upstream.headers.length, 6);
    // Each of the five client connections is gone; the upstream connections only they could use go too, the staying client's stays.
    await eventually(() => upstream.open() === 1, { what: 'the upstream connections of clients that left closed', timeout: 2000 });
    assert.equal((await get(`${lb.url}/`, { agent: staying })).status, 200);
    assert.equal(upstream.headers.length, 6, 'the staying client still reuses its connection');
  });
}

test('TLS passthrough: a server name with the root\'s trailing dot and capitals reaches the access log and the v2 AUTHORITY sent upstream as www.big.test', async (t) => {
  const headers: ProxyHeader[] = [];
  const backend = await startEcho(t, 'big', (socket) => {
    let buffered: Buffer | null = Buffer.alloc(0);
    socket.on('data', (d: Buffer) => {
      if (buffered === null) return;
      buffered = Buffer.concat([buffered, d]);
      const parsed = parseProxyHeader(buffered);
      if (parsed.kind === 'incomplete') return;
      buffered = null;
      if (parsed.kind === 'header') headers.push(parsed.header);
      socket.end();
    });
  });
  const closes = recordCloses(t);
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'tcp', tls_passthrough: { routes: [{ server_names: ['*.big.test'], pool: 'big' }] } }],
    pools: { big: { protocol: 'tcp', proxy_protocol: 'v2', upstreams: [backend.url] } },
  } as never);
  const c = await connect(lb.port);
  t.after(() => c.socket.destroy());
  c.socket.write(clientHello('WWW.Big.Test.', 512));
  await eventually(() => headers.length === 1, { what: 'the PROXY header at the upstream' });
  assert.equal(headers[0].authority, 'www.big.test');
  await eventually(() => closes.length === 1, { what: 'the connection\'s close event (what the access log writes)' });
  assert.equal(closes[0].client.sni, 'www.big.test');
});

test('an https listener: a server name with the root\'s trailing dot and capitals goes to a v2 pool\'s AUTHORITY as a.test', async (t) => {
  const ca = await makeTestCa(t);
  const site = await ca.issue('a', { names: ['a.test'] });
  const server = http.createServer((_req, res) => res.end('ok'));
  const upstream = await headerFirstUpstream(t, (socket) => server.emit('connection', socket));
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'https', tls: { certificates: [{ cert: site.certPath, key: site.keyPath }], alpn: ['http/1.1'] } }],
    pools: { web: { upstreams: [`http://127.0.0.1:${upstream.port}`], proxy_protocol: 'v2' } },
  } as never);
  const status = await new Promise<number>((resolve, reject) => {
    https.get({ host: '127.0.0.1', port: lb.port, path: '/', agent: false, ca: ca.ca.cert, servername: 'A.Test.' }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode!));
    }).on('error', reject);
  });
  assert.equal(status, 200);
  assert.equal(upstream.headers.length, 1);
  assert.equal(upstream.headers[0].authority, 'a.test');
});
