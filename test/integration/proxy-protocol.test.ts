/**
 * The PROXY protocol with real peers. Received: Fulcrum behind HAProxy (Debian's, `send-proxy-v2`
 * in mode tcp, `send-proxy` in mode http), curl connecting from another loopback address
 * (127.0.0.5, 127.0.0.6) so the client HAProxy saw differs from HAProxy itself (127.0.0.1): the
 * access log and X-Forwarded-For show curl's address, and through a tcp listener the port too.
 * Sent: a tcp pool with `proxy_protocol: v1` / `v2` to a backend that parses the header (the
 * codec's parseProxyHeader) and to HAProxy with `accept-proxy` (an independent parser), v2
 * carrying the SNI of a TLS-passthrough connection. Refused: a trusted peer's missing, late or
 * malformed header; a header from an untrusted peer; and a trusted header's address is what the
 * listener firewall and per-client limits judge. HAProxy tests skip without haproxy unless CI is set.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { Duplex } from 'node:stream';
import { execFile } from 'node:child_process';
import { freePort, haproxySendProxyV2Config, haproxySkip, startHaproxy } from '../helpers/haproxy.ts';
import { startBackend, startBalancer, rawExchange, type TestBalancer } from '../helpers/servers.ts';
import { makeTestCa } from '../helpers/tls.ts';
import { eventually } from '../helpers/eventually.ts';
import { startEcho } from '../helpers/tcp.ts';
import { parseProxyHeader, PP2_TYPE, type ProxyHeader } from '../../src/listeners/proxy-protocol.ts';

/** What curl did: exit code, body, and the local address and port it connected from. */
interface Curled {
  code: number;
  body: string;
  local: string;
  stderr: string;
}

const MARK = '\n--curl-w--\n';

/** curl `url` from `interfaceAddress` (a loopback address other than 127.0.0.1: the client's own address); never throws. */
function curl(url: string, interfaceAddress: string, extra: string[] = []): Promise<Curled> {
  const args = ['-sS', '--max-time', '10', '--interface', interfaceAddress, '-w', `${MARK}%{local_ip}:%{local_port}`, ...extra, url];
  return new Promise((resolve) => {
    execFile('curl', args, { encoding: 'utf8' }, (err, stdout, stderr) => {
      const at = stdout.lastIndexOf(MARK);
      resolve({
        code: err === null ? 0 : typeof err.code === 'number' ? err.code : -1,
        body: at === -1 ? stdout : stdout.slice(0, at),
        local: at === -1 ? '' : stdout.slice(at + MARK.length),
        stderr: stderr.trim(),
      });
    });
  });
}

/** Access-log records (parsed) in a test balancer's log. */
function accessRecords(lb: TestBalancer): Record<string, unknown>[] {
  return lb.logs
    .join('')
    .split('\n')
    .filter((l) => l.includes('"log":"access"'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** An HTTP backend answering with the X-Forwarded-For it got; keeps every request's. */
async function startXffBackend(t: TestContext) {
  const seen: string[] = [];
  const backend = await startBackend(t, (req, res) => {
    const xff = String(req.headers['x-forwarded-for']);
    seen.push(xff);
    res.end(`xff=${xff}`);
  });
  return { ...backend, seen };
}

/** An HTTP listener on 127.0.0.1:0 accepting the PROXY protocol from 127.0.0.1, in front of `upstream`. */
function startHttpBehindProxy(t: TestContext, upstream: string, proxyProtocol: Record<string, unknown> = { trusted: ['127.0.0.1/32'] }): Promise<TestBalancer> {
  return startBalancer(t, {
    listeners: [{ name: 'behind-haproxy', host: '127.0.0.1', port: 0, proxy_protocol: proxyProtocol } as never],
    pools: { web: { upstreams: [upstream] } },
  });
}

test('behind HAProxy mode tcp with send-proxy-v2: the access log and X-Forwarded-For show the client HAProxy saw, not HAProxy', { skip: haproxySkip() }, async (t) => {
  const backend = await startXffBackend(t);
  const lb = await startHttpBehindProxy(t, backend.url);
  const haproxy = await startHaproxy(t, haproxySendProxyV2Config({ listenPort: await freePort(), backendPort: lb.port, mode: 'tcp' }));

  const out = await curl(`http://127.0.0.1:${haproxy.port}/who`, '127.0.0.5');
  assert.equal(out.code, 0, `${out.stderr}\nHAProxy: ${haproxy.output()}`);
  assert.equal(out.body, 'xff=127.0.0.5');
  assert.match(out.local, /^127\.0\.0\.5:\d+$/);
  const record = (await eventually(() => accessRecords(lb).find((r) => r.path === '/who'), { what: 'the access line', timeout: 5000 }))!;
  assert.equal(record.client, '127.0.0.5', 'the access log names the client, not HAProxy (127.0.0.1)');
  assert.equal(record.status, 200);
  // Without the PROXY protocol (straight to Fulcrum, not through HAProxy) a trusted peer must send a header: refused.
  const direct = await curl(`http://127.0.0.1:${lb.port}/direct`, '127.0.0.1');
  assert.notEqual(direct.code, 0, 'a trusted peer without a header is not served');
  assert.deepEqual(backend.seen, ['127.0.0.5']);
});

test('behind HAProxy mode http with send-proxy (v1): each client connection carries its own address', { skip: haproxySkip() }, async (t) => {
  const backend = await startXffBackend(t);
  const lb = await startHttpBehindProxy(t, backend.url);
  const config = haproxySendProxyV2Config({ listenPort: await freePort(), backendPort: lb.port, mode: 'http' }).replace(/send-proxy-v2$/m, 'send-proxy');
  assert.match(config, / send-proxy$/m);
  const haproxy = await startHaproxy(t, config);
  const five = await curl(`http://127.0.0.1:${haproxy.port}/five`, '127.0.0.5');
  const six = await curl(`http://127.0.0.1:${haproxy.port}/six`, '127.0.0.6');
  assert.equal(five.code, 0, `${five.stderr}\nHAProxy: ${haproxy.output()}`);
  assert.equal(five.body, 'xff=127.0.0.5');
  assert.equal(six.body, 'xff=127.0.0.6', 'a second client gets its own address (HAProxy does not reuse the first one\'s connection)');
  const records = (await eventually(() => {
    const r = accessRecords(lb).filter((x) => x.path === '/five' || x.path === '/six');
    return r.length === 2 ? r : null;
  }, { what: 'two access lines' }))!;
  assert.deepEqual(Object.fromEntries(records.map((r) => [r.path, r.client])), { '/five': '127.0.0.5', '/six': '127.0.0.6' });
});

/**
 * HAProxy in mode http as an independent PROXY-protocol receiver: `accept-proxy` on its bind,
 * answering every request with the source, destination and AUTHORITY TLV it read from the header
 * (`ssl crt` with `tlsPem`: it terminates TLS too, for a passthrough test).
 */
function acceptProxyConfig(port: number, tlsPem?: string): string {
  return [
    'global',
    '  maxconn 256',
    'defaults',
    '  mode http',
    '  timeout connect 5s',
    '  timeout client 10s',
    '  timeout server 10s',
    'frontend receiver',
    `  bind 127.0.0.1:${port} accept-proxy${tlsPem === undefined ? '' : ` ssl crt ${tlsPem}`}`,
    '  http-request return status 200 content-type text/plain lf-string "src=%[src]:%[src_port] dst=%[dst]:%[dst_port] authority=%[fc_pp_authority]"',
    '',
  ].join('\n');
}

test('behind HAProxy, a tcp listener passes the client address and port on: HAProxy (send-proxy-v2) -> Fulcrum tcp -> v1 -> HAProxy (accept-proxy)', { skip: haproxySkip() }, async (t) => {
  const receiverPort = await freePort();
  const receiver = await startHaproxy(t, acceptProxyConfig(receiverPort));
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'tcp', pool: 'receiver', proxy_protocol: { trusted: ['127.0.0.1/32'] } }],
    pools: { receiver: { protocol: 'tcp', proxy_protocol: 'v1', upstreams: [`tcp://127.0.0.1:${receiver.port}`] } },
  });
  const front = await startHaproxy(t, haproxySendProxyV2Config({ listenPort: await freePort(), backendPort: lb.port, mode: 'tcp' }));
  const out = await curl(`http://127.0.0.1:${front.port}/`, '127.0.0.5');
  assert.equal(out.code, 0, `${out.stderr}\n${front.output()}\n${receiver.output()}`);
  // The source is curl's own address and port; the destination the address curl connected to (HAProxy's frontend).
  assert.equal(out.body, `src=${out.local} dst=127.0.0.1:${front.port} authority=`);
  // Fulcrum's own access line for the TCP connection (written when it closes) names curl, address and port.
  const record = (await eventually(() => accessRecords(lb).find((r) => r.protocol === 'tcp'), { what: 'the tcp access line' }))!;
  assert.equal(`${String(record.client)}:${String(record.client_port)}`, out.local);
});

/** A TCP backend that reads a PROXY header with parseProxyHeader, then echoes; keeps each connection's header and raw bytes. */
interface ParsingBackend {
  port: number;
  url: string;
  connections: { raw: Buffer; header: ProxyHeader | null; error: string | null }[];
  /** Called with the socket (paused, the bytes after the header unshifted) once a header was read; default: echo. */
  onHeader: (socket: net.Socket) => void;
}

async function startParsingBackend(t: TestContext): Promise<ParsingBackend> {
  const backend: ParsingBackend = { port: 0, url: '', connections: [], onHeader: (socket) => socket.pipe(socket) };
  const server = net.createServer((socket) => {
    const record: ParsingBackend['connections'][number] = { raw: Buffer.alloc(0), header: null, error: null };
    backend.connections.push(record);
    socket.on('error', () => {});
    const onData = (chunk: Buffer): void => {
      record.raw = Buffer.concat([record.raw, chunk]);
      const parsed = parseProxyHeader(record.raw);
      if (parsed.kind === 'incomplete') return;
      socket.off('data', onData);
      socket.pause();
      if (parsed.kind === 'invalid') {
        record.error = `${parsed.reason}: ${parsed.detail}`;
        return void socket.destroy();
      }
      record.header = parsed.header;
      const rest = record.raw.subarray(parsed.header.length);
      if (rest.length > 0) socket.unshift(rest);
      backend.onHeader(socket);
      socket.resume();
    };
    socket.on('data', onData);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    server.close();
    // Sockets handed to the TLS server in a passthrough test close with it.
  });
  backend.port = (server.address() as net.AddressInfo).port;
  backend.url = `tcp://127.0.0.1:${backend.port}`;
  return backend;
}

/** Connects to `port`, sends `text`, waits for it to come back; resolves with the client's local port. */
async function echoThrough(port: number, text: string): Promise<number> {
  const socket = net.connect({ host: '127.0.0.1', port });
  let got = '';
  socket.on('data', (d: Buffer) => (got += d.toString('latin1')));
  socket.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const localPort = socket.localPort!;
  socket.write(text);
  try {
    await eventually(() => got === text, { what: `the echo of ${JSON.stringify(text)}` });
  } finally {
    socket.destroy();
  }
  return localPort;
}

for (const version of ['v1', 'v2'] as const) {
  test(`a tcp pool with proxy_protocol: ${version} sends the client's address and port and the listener's as destination, then the bytes unchanged`, async (t) => {
    const backend = await startParsingBackend(t);
    const lb = await startBalancer(t, {
      listeners: [{ host: '127.0.0.1', port: 0, protocol: 'tcp', pool: 'pp' }],
      pools: { pp: { protocol: 'tcp', proxy_protocol: version, upstreams: [backend.url] } },
    });
    const clientPort = await echoThrough(lb.port, 'PROXY is data here\r\n');
    const [c] = backend.connections;
    assert.equal(c.error, null);
    assert.equal(c.header!.version, version === 'v1' ? 1 : 2);
    assert.equal(c.header!.command, 'proxy');
    assert.equal(c.header!.family, 'tcp4');
    assert.deepEqual(c.header!.source, { address: '127.0.0.1', port: clientPort });
    assert.deepEqual(c.header!.destination, { address: '127.0.0.1', port: lb.port });
    assert.equal(c.header!.authority, null, 'no SNI on a plain tcp listener');
    if (version === 'v1') assert.equal(c.raw.subarray(0, c.header!.length).toString('latin1'), `PROXY TCP4 127.0.0.1 127.0.0.1 ${clientPort} ${lb.port}\r\n`);
    else assert.deepEqual([...c.raw.subarray(12, 14)], [0x21, 0x11], 'v2 PROXY command, TCP over IPv4');
  });

  test(`a tcp pool with proxy_protocol: ${version} to HAProxy accept-proxy: HAProxy reads curl's address and port`, { skip: haproxySkip() }, async (t) => {
    const receiver = await startHaproxy(t, acceptProxyConfig(await freePort()));
    const lb = await startBalancer(t, {
      listeners: [{ host: '127.0.0.1', port: 0, protocol: 'tcp', pool: 'pp' }],
      pools: { pp: { protocol: 'tcp', proxy_protocol: version, upstreams: [`tcp://127.0.0.1:${receiver.port}`] } },
    });
    const out = await curl(`http://127.0.0.1:${lb.port}/`, '127.0.0.6');
    assert.equal(out.code, 0, `${out.stderr}\n${receiver.output()}`);
    assert.equal(out.body, `src=${out.local} dst=127.0.0.1:${lb.port} authority=`);
  });
}

test('v2 from a TLS-passthrough listener carries the SNI (AUTHORITY TLV); the TLS handshake behind it still verifies', async (t) => {
  const ca = await makeTestCa(t);
  const cert = await ca.issue('pp', { names: ['pp.test'] });
  const backend = await startParsingBackend(t);
  const tlsServer = tls.createServer({ cert: cert.cert, key: cert.key }, (socket) => socket.end('hello over TLS'));
  // After the header, the rest of the stream is the client's TLS, handed to a TLS server that never listened. Through a
  // plain Duplex: a net.Socket given to TLS is read from its handle, which would skip the bytes unshifted after the header.
  backend.onHeader = (socket) => {
    const duplex = new Duplex({
      read: () => socket.resume(),
      write: (chunk: Buffer, _encoding, callback) => void socket.write(chunk, callback),
      final: (callback) => void socket.end(callback),
    });
    socket.on('data', (d: Buffer) => void (duplex.push(d) || socket.pause()));
    socket.on('end', () => duplex.push(null));
    socket.on('close', () => duplex.destroy());
    tlsServer.emit('connection', duplex);
  };
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'tcp', tls_passthrough: { routes: [{ server_names: ['pp.test'], pool: 'pp' }] } }],
    pools: { pp: { protocol: 'tcp', proxy_protocol: 'v2', upstreams: [backend.url] } },
  });
  const socket = tls.connect({ host: '127.0.0.1', port: lb.port, servername: 'pp.test', ca: ca.ca.cert });
  t.after(() => socket.destroy());
  let text = '';
  socket.on('data', (d: Buffer) => (text += d));
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', resolve);
    socket.once('error', reject);
  });
  assert.equal(socket.authorized, true, String(socket.authorizationError));
  const clientPort = socket.localPort;
  await eventually(() => text === 'hello over TLS', { what: 'the answer over TLS' });
  const [c] = backend.connections;
  assert.equal(c.header!.authority, 'pp.test');
  assert.deepEqual(c.header!.tlvs.filter((x) => x.type === PP2_TYPE.AUTHORITY).map((x) => x.value.toString()), ['pp.test']);
  assert.deepEqual(c.header!.source, { address: '127.0.0.1', port: clientPort });
});

test('v2 SNI to HAProxy: curl through a passthrough listener to HAProxy (accept-proxy, ssl): fc_pp_authority is the name curl asked for', { skip: haproxySkip() }, async (t) => {
  const ca = await makeTestCa(t);
  const cert = await ca.issue('receiver', { names: ['sni.test'] });
  const receiver = await startHaproxy(t, acceptProxyConfig(await freePort(), cert.bothPath));
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'tcp', tls_passthrough: { routes: [{ server_names: ['*.test'], pool: 'pp' }] } }],
    pools: { pp: { protocol: 'tcp', proxy_protocol: 'v2', upstreams: [`tcp://127.0.0.1:${receiver.port}`] } },
  });
  const out = await curl(`https://sni.test:${lb.port}/`, '127.0.0.5', ['--cacert', ca.caPath, '--resolve', `sni.test:${lb.port}:127.0.0.1`]);
  assert.equal(out.code, 0, `${out.stderr}\n${receiver.output()}`);
  assert.equal(out.body, `src=${out.local} dst=127.0.0.1:${lb.port} authority=sni.test`);
});

// ---- Refusals ----

/** An echo backend (test/helpers/tcp.ts) that also counts the bytes it received. */
async function startCountingBackend(t: TestContext): Promise<{ url: string; accepted: () => number; bytes: () => number }> {
  let bytes = 0;
  const echo = await startEcho(t, 'counting', (socket) => {
    socket.on('data', (d: Buffer) => {
      bytes += d.length;
      socket.write(d);
    });
    // The helper's server is half-open: a client's FIN is answered with ours, so the connection (and its slot) ends.
    socket.on('end', () => socket.end());
  });
  return { url: echo.url, accepted: () => echo.accepted, bytes: () => bytes };
}

/** A tcp listener accepting the PROXY protocol from `trusted`, with `listener` merged in, in front of `upstream`. */
function startTcpBehindProxy(t: TestContext, upstream: string, trusted: string[], listener: Record<string, unknown> = {}): Promise<TestBalancer> {
  return startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'tcp', pool: 'db', proxy_protocol: { trusted, timeout: '500ms' }, ...listener } as never],
    pools: { db: { protocol: 'tcp', upstreams: [upstream] } },
  });
}

/** A client connection: sends `chunks` in order (each its own write, a turn of the event loop apart), then reports what came back and when it closed. */
async function session(port: number, chunks: (string | Buffer)[], { waitClose = true, echo = '' } = {}): Promise<{ socket: net.Socket; received: () => string; ms: number; closed: boolean }> {
  const socket = net.connect({ host: '127.0.0.1', port });
  let received = '';
  let closed = false;
  socket.on('data', (d: Buffer) => (received += d.toString('latin1')));
  socket.on('error', () => {});
  socket.once('close', () => (closed = true));
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const began = performance.now();
  for (const c of chunks) {
    socket.write(c);
    // Separate TCP segments: with Nagle off (setNoDelay) and a pause, the receiver reads them apart.
    await new Promise((r) => setTimeout(r, 30));
  }
  if (echo !== '') await eventually(() => received.includes(echo) || closed, { what: 'the echo or the close' });
  // Up to 5 s for the close; the caller judges `closed` either way.
  if (waitClose) await eventually(() => closed, { what: 'the close', timeout: 5000 }).catch(() => {});
  return { socket, received: () => received, ms: performance.now() - began, closed };
}

const v1Line = (source: string, sourcePort = 40000): string => `PROXY TCP4 ${source} 127.0.0.1 ${sourcePort} 5432\r\n`;

test('a trusted peer that sends no header, a late one, or a malformed one is closed and never reaches the upstream', async (t) => {
  const backend = await startCountingBackend(t);
  const lb = await startTcpBehindProxy(t, backend.url, ['127.0.0.1/32']);
  const silent = await session(lb.port, []);
  assert.ok(silent.closed && silent.ms >= 450 && silent.ms < 2500, `a silent trusted peer closed after ${silent.ms} ms (timeout 500 ms)`);
  const partial = await session(lb.port, ['PROXY TCP4 198.51.100.1 ']);
  assert.ok(partial.closed && partial.ms >= 450, `half a header closed after ${partial.ms} ms`);
  for (const bad of [
    'GET / HTTP/1.1\r\nHost: x\r\n\r\n',
    'PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\n',
    'PROXY TCP6 198.51.100.1 127.0.0.1 1 2\r\n',
    'PROXY TCP4 198.51.100.1 127.0.0.1 65536 2\r\n',
    Buffer.concat([Buffer.from('\r\n\r\n\0\r\nQUIT\n', 'latin1'), Buffer.from([0x21, 0x77, 0x00, 0x0c]), Buffer.alloc(12)]),
  ]) {
    const s = await session(lb.port, [bad]);
    assert.ok(s.closed && s.ms < 450, `${JSON.stringify(bad.toString())} closed after ${s.ms} ms: malformed headers close at once`);
    assert.equal(s.received(), '');
  }
  assert.equal(backend.accepted(), 0, 'no connection reached the upstream');
  // A good header from the same peer is served, with the bytes after it.
  const good = await session(lb.port, [`${v1Line('198.51.100.1')}ping`], { waitClose: false, echo: 'ping' });
  assert.equal(good.received(), 'ping');
  good.socket.destroy();
});

test('an untrusted peer that sends a PROXY header to a tcp listener is closed; without one it is served as itself', async (t) => {
  const backend = await startCountingBackend(t);
  const lb = await startTcpBehindProxy(t, backend.url, ['10.9.9.9/32']);
  const plain = await session(lb.port, ['hello'], { waitClose: false, echo: 'hello' });
  assert.equal(plain.received(), 'hello', 'a peer outside trusted is served without a header');
  plain.socket.destroy();
  const bytesBefore = backend.bytes();
  for (const header of [v1Line('203.0.113.7'), Buffer.concat([Buffer.from('\r\n\r\n\0\r\nQUIT\n', 'latin1'), Buffer.from([0x21, 0x11, 0x00, 0x0c, 203, 0, 113, 7, 127, 0, 0, 1, 0x9c, 0x40, 0x15, 0x38])])]) {
    const s = await session(lb.port, [Buffer.concat([Buffer.from(header), Buffer.from('payload')])]);
    assert.ok(s.closed, `the untrusted ${typeof header === 'string' ? 'v1' : 'v2'} header was not refused`);
    assert.equal(s.received(), '');
  }
  assert.equal(backend.bytes(), bytesBefore, 'not a byte of the spoofed header reached the upstream');
});

test('an untrusted peer cannot slip a PROXY header past the check by splitting it across writes', async (t) => {
  const backend = await startCountingBackend(t);
  const lb = await startTcpBehindProxy(t, backend.url, ['10.9.9.9/32']);
  const bytesBefore = backend.bytes();
  const s = await session(lb.port, ['PRO', `XY TCP4 203.0.113.7 127.0.0.1 40000 5432\r\npayload`]);
  assert.ok(s.closed, 'the split header was not refused');
  assert.equal(backend.bytes(), bytesBefore, `the upstream got ${backend.bytes() - bytesBefore} bytes of a spoofed header`);
  // First bytes that only began like a signature are the client's own: they reach the upstream whole, in order.
  const notHeader = await session(lb.port, ['\r\n', 'PRO', 'XIMA\r\n'], { waitClose: false, echo: 'XIMA\r\n' });
  assert.equal(notHeader.received(), '\r\nPROXIMA\r\n');
  notHeader.socket.destroy();
  const shortThenFin = net.connect({ host: '127.0.0.1', port: lb.port, allowHalfOpen: true });
  let echoed = '';
  shortThenFin.on('data', (d: Buffer) => (echoed += d));
  shortThenFin.on('error', () => {});
  shortThenFin.end('PRO');
  await eventually(() => echoed === 'PRO', { what: 'a lone "PRO" before the FIN to reach the upstream' });
  shortThenFin.destroy();
});

test('a trusted header\'s client address is what the listener firewall and per-client connection limits judge', async (t) => {
  const backend = await startCountingBackend(t);
  const lb = await startTcpBehindProxy(t, backend.url, ['127.0.0.1/32'], { firewall: { deny: ['203.0.113.0/24'] }, limits: { max_connections_per_ip: 1 } });
  const denied = await session(lb.port, [`${v1Line('203.0.113.7')}payload`]);
  assert.ok(denied.closed, 'a client in a denied range was let in');
  assert.equal(backend.accepted(), 0, 'the denied client never reached the upstream');
  assert.equal(lb.balancer.status().listeners[0].refused_connections, 1);

  // 127.0.0.1 itself is not the one counted: two different clients behind it each get their slot.
  const first = await session(lb.port, [`${v1Line('198.51.100.8', 40001)}one`], { waitClose: false, echo: 'one' });
  const other = await session(lb.port, [`${v1Line('198.51.100.9', 40002)}two`], { waitClose: false, echo: 'two' });
  assert.equal(first.received(), 'one');
  assert.equal(other.received(), 'two');
  const second = await session(lb.port, [`${v1Line('198.51.100.8', 40003)}three`]);
  assert.ok(second.closed, 'a second connection of 198.51.100.8 went over max_connections_per_ip: 1');
  assert.equal(second.received(), '');
  assert.equal(backend.accepted(), 2);
  first.socket.destroy();
  await eventually(() => lb.balancer.status().listeners[0].open_connections === 1, { what: "198.51.100.8's slot to free" });
  const again = await session(lb.port, [`${v1Line('198.51.100.8', 40004)}four`], { waitClose: false, echo: 'four' });
  assert.equal(again.received(), 'four');
  for (const s of [other, again]) s.socket.destroy();
});

test('an HTTP listener: an untrusted peer\'s PROXY header is a bad request (400); a trusted peer without one is closed unanswered', async (t) => {
  const backend = await startXffBackend(t);
  const untrusted = await startHttpBehindProxy(t, backend.url, { trusted: ['10.9.9.9/32'] });
  const answer = await rawExchange(untrusted.port, `${v1Line('203.0.113.7')}GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
  assert.match(answer, /^HTTP\/1\.1 400 /);
  const trusted = await startHttpBehindProxy(t, backend.url, { trusted: ['127.0.0.1/32'], timeout: '500ms' });
  const began = performance.now();
  const none = await rawExchange(trusted.port, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  assert.equal(none, '', 'a trusted peer must send a header: no answer at all');
  assert.ok(performance.now() - began < 450, 'a request line where a header belongs is malformed: closed at once');
  const ok = await rawExchange(trusted.port, `${v1Line('203.0.113.7')}GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
  assert.match(ok, /^HTTP\/1\.1 200 [\s\S]*xff=203\.0\.113\.7$/);
  assert.deepEqual(backend.seen, ['203.0.113.7']);
});
