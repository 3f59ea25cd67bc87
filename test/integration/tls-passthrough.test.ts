/**
 * TLS passthrough by SNI with curl: three TLS backends, each with its own certificate from a
 * test CA (a.test, b.test, *.c.test), behind one tcp listener that reads the ClientHello and
 * never terminates TLS (its config holds no certificate and no key). curl verifies each
 * backend's certificate through Fulcrum, so the handshake ran end to end: a byte changed on the
 * way would break the Finished check. Routing by ALPN, the default route, names without a route,
 * and what is not TLS at all (plain HTTP, garbage, silence) closed within `client_hello_timeout`.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import https from 'node:https';
import http2 from 'node:http2';
import tls from 'node:tls';
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { handshake, makeTestCa, type CertFiles, type TestCa } from '../helpers/tls.ts';
import { startBalancer, type TestBalancer } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';
import type { FulcrumConfigInput } from '../../src/index.ts';

/** A TLS backend holding its own certificate: answers `backend <name> (<protocol>)`, counts TCP connections, keeps the SNI it saw. */
interface TlsBackend {
  name: string;
  port: number;
  cert: CertFiles;
  connections: () => number;
  serverNames: string[];
}

async function startTlsBackend(t: TestContext, ca: TestCa, name: string, names: string[], protocol: 'http/1.1' | 'h2' = 'http/1.1'): Promise<TlsBackend> {
  const cert = await ca.issue(name, { names });
  const serverNames: string[] = [];
  const answer = (servername: string | false | null | undefined, httpVersion: string): string => {
    serverNames.push(String(servername));
    return `backend ${name} (HTTP/${httpVersion})\n`;
  };
  const server =
    protocol === 'h2'
      ? http2.createSecureServer({ cert: cert.cert, key: cert.key }, (req, res) => res.end(answer((req.socket as tls.TLSSocket).servername, req.httpVersion)))
      : https.createServer({ cert: cert.cert, key: cert.key }, (req, res) => res.end(answer((req.socket as tls.TLSSocket).servername, req.httpVersion)));
  let connections = 0;
  server.on('connection', () => connections++);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => {
    (server as https.Server).closeAllConnections?.();
    server.close(() => resolve());
  }));
  return { name, port: (server.address() as net.AddressInfo).port, cert, connections: () => connections, serverNames };
}

/** What curl did: exit code (0: fetched and verified), body, the peer certificate's serial as curl printed it, stderr, time taken. */
interface Curled {
  code: number;
  body: string;
  serial: string | null;
  httpVersion: string;
  stderr: string;
  ms: number;
}

/** Separates the body from curl's -w fields. */
const MARK = '\n--curl-w--\n';

/** `curl --resolve NAME:PORT:127.0.0.1 --cacert CA https://NAME:PORT/` (more options in `extra`); never throws. */
function curl(name: string, port: number, caPath: string, extra: string[] = [], url = `https://${name}:${port}/`): Promise<Curled> {
  const args = ['-sS', '--max-time', '10', '--cacert', caPath, '--resolve', `${name}:${port}:127.0.0.1`, '-w', `${MARK}%{http_version}\n%{certs}`, ...extra, url];
  const began = performance.now();
  return new Promise((resolve) => {
    execFile('curl', args, { encoding: 'utf8' }, (err, stdout, stderr) => {
      const ms = performance.now() - began;
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1;
      const at = stdout.lastIndexOf(MARK);
      const body = at === -1 ? stdout : stdout.slice(0, at);
      const [httpVersion = '', ...certs] = at === -1 ? [] : stdout.slice(at + MARK.length).split('\n');
      // %{certs} (curl 7.88): "Serial Number:<hex, maybe with colons>" per certificate, the leaf first.
      const serial = /Serial Number:\s*([0-9a-fA-F:]+)/.exec(certs.join('\n'))?.[1].replaceAll(':', '').toUpperCase() ?? null;
      resolve({ code, body, serial, httpVersion, stderr: stderr.trim(), ms });
    });
  });
}

/** Serial of a PEM certificate as curl prints it (hex, upper case, no leading zero byte). */
function serialOf(cert: CertFiles): string {
  return new X509Certificate(cert.cert).serialNumber.replace(/^(00)+/, '').toUpperCase();
}

interface Site {
  ca: TestCa;
  backends: Record<'a' | 'b' | 'c' | 'h2' | 'h1' | 'fallback', TlsBackend>;
  pools: FulcrumConfigInput['pools'];
  routes: { server_names: string[]; alpn?: string[]; pool: string }[];
}

/** The test CA and six TLS backends: a.test, b.test, *.c.test, alpn.test twice (h2 only; HTTP/1.1 only), other.test (the default route's). */
async function startSite(t: TestContext): Promise<Site> {
  const ca = await makeTestCa(t);
  const backends = {
    a: await startTlsBackend(t, ca, 'a', ['a.test']),
    b: await startTlsBackend(t, ca, 'b', ['b.test']),
    c: await startTlsBackend(t, ca, 'c', ['*.c.test']),
    h2: await startTlsBackend(t, ca, 'h2', ['alpn.test'], 'h2'),
    h1: await startTlsBackend(t, ca, 'h1', ['alpn.test']),
    fallback: await startTlsBackend(t, ca, 'fallback', ['other.test']),
  };
  const pools = Object.fromEntries(Object.entries(backends).map(([name, b]) => [name, { protocol: 'tcp', upstreams: [`tcp://127.0.0.1:${b.port}`] }])) as FulcrumConfigInput['pools'];
  const routes = [
    { server_names: ['a.test'], pool: 'a' },
    { server_names: ['b.test'], pool: 'b' },
    { server_names: ['*.c.test'], pool: 'c' },
    // Same name twice: a client offering h2 takes the first, any other the second.
    { server_names: ['alpn.test'], alpn: ['h2'], pool: 'h2' },
    { server_names: ['alpn.test'], pool: 'h1' },
  ];
  return { ca, backends, pools, routes };
}

/** A tcp listener with `tls_passthrough` over the site's routes; `listener` merged in (e.g. a default `pool`). No `tls` anywhere: Fulcrum has no key. */
function startPassthrough(t: TestContext, site: Site, listener: Record<string, unknown> = {}, timeout = '1s'): Promise<TestBalancer> {
  const config = {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'tcp', tls_passthrough: { routes: site.routes, client_hello_timeout: timeout }, ...listener }],
    pools: site.pools,
  } as FulcrumConfigInput;
  assert.doesNotMatch(JSON.stringify(config), /"(tls|cert|key|certificates)"/, 'the balancer is given no certificate and no key');
  return startBalancer(t, config);
}

const total = (site: Site): number => Object.values(site.backends).reduce((n, b) => n + b.connections(), 0);

test('curl --resolve to a.test, b.test and x.c.test: each reaches its own backend and verifies that backend\'s certificate', async (t) => {
  const site = await startSite(t);
  const lb = await startPassthrough(t, site);
  for (const [host, key] of [['a.test', 'a'], ['b.test', 'b'], ['x.c.test', 'c'], ['A.TEST', 'a']] as const) {
    const backend = site.backends[key];
    const out = await curl(host, lb.port, site.ca.caPath);
    assert.equal(out.code, 0, `curl https://${host}: ${out.stderr}`);
    assert.equal(out.body, `backend ${key} (HTTP/1.1)\n`, `https://${host} reached its backend`);
    assert.equal(out.serial, serialOf(backend.cert), `curl saw backend ${key}'s own certificate for ${host}`);
    assert.equal(backend.serverNames.at(-1), host.toLowerCase(), 'the backend read the SNI itself: the ClientHello reached it unchanged');
  }
  assert.deepEqual(lb.balancer.status().certificates, [], 'Fulcrum serves no certificate of its own');
  // The route takes any depth under c.test; a wildcard certificate covers one label, so only the route is checked here.
  const deep = await handshake(lb.port, { servername: 'deep.x.c.test' });
  assert.equal(deep.serial, new X509Certificate(site.backends.c.cert.cert).serialNumber);
  // *.c.test covers one label or more below c.test under the route's rules, but not c.test itself (nor does its certificate).
  const bare = await curl('c.test', lb.port, site.ca.caPath);
  assert.notEqual(bare.code, 0, 'c.test has no route and the listener no default pool');
});

test('a name with no route and no default pool is closed before any backend is contacted; with a default pool it goes there', async (t) => {
  const site = await startSite(t);
  const strict = await startPassthrough(t, site);
  const before = total(site);
  const refused = await curl('other.test', strict.port, site.ca.caPath);
  assert.equal(refused.code, 35, `curl: TLS connect error expected, got ${refused.code}: ${refused.stderr}`);
  // No SNI at all (curl sends none for an IP address): no name to route by, closed too.
  const noSni = await curl('127.0.0.1', strict.port, site.ca.caPath, [], `https://127.0.0.1:${strict.port}/`);
  assert.equal(noSni.code, 35, `curl without SNI: ${noSni.stderr}`);
  assert.equal(total(site), before, 'no backend saw a connection');

  const withDefault = await startPassthrough(t, site, { pool: 'fallback' });
  const out = await curl('other.test', withDefault.port, site.ca.caPath);
  assert.equal(out.code, 0, out.stderr);
  assert.equal(out.body, 'backend fallback (HTTP/1.1)\n');
  assert.equal(out.serial, serialOf(site.backends.fallback.cert));
  // A routed name still takes its route on a listener with a default.
  assert.equal((await curl('b.test', withDefault.port, site.ca.caPath)).body, 'backend b (HTTP/1.1)\n');
});

test('ALPN routing: curl --http2 takes the alpn: [h2] route, curl --http1.1 the route without alpn, for the same name', async (t) => {
  const site = await startSite(t);
  const lb = await startPassthrough(t, site);
  const h2 = await curl('alpn.test', lb.port, site.ca.caPath, ['--http2']);
  assert.equal(h2.code, 0, h2.stderr);
  assert.equal(h2.body, 'backend h2 (HTTP/2.0)\n');
  assert.equal(h2.httpVersion, '2');
  assert.equal(h2.serial, serialOf(site.backends.h2.cert));
  const h1 = await curl('alpn.test', lb.port, site.ca.caPath, ['--http1.1']);
  assert.equal(h1.code, 0, h1.stderr);
  assert.equal(h1.body, 'backend h1 (HTTP/1.1)\n');
  assert.equal(h1.httpVersion, '1.1');
  assert.equal(h1.serial, serialOf(site.backends.h1.cert));
  assert.equal(site.backends.h2.connections(), 1);
  assert.equal(site.backends.h1.connections(), 1);
});

/** Connects, sends `bytes` (if any) and resolves with how long the server took to close, and what it sent back. */
function closedAfter(port: number, bytes: Buffer | null): Promise<{ ms: number; received: number; how: string }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let received = 0;
    let how = 'close';
    let began = 0;
    socket.on('data', (d: Buffer) => (received += d.length));
    socket.on('error', (err: NodeJS.ErrnoException) => (how = err.code ?? err.message));
    socket.on('end', () => (how = 'FIN'));
    // A bound for a listener that never closes: the assertion on `ms` fails then.
    socket.setTimeout(10_000, () => socket.destroy(new Error('still open after 10 s')));
    socket.once('connect', () => {
      began = performance.now();
      if (bytes !== null) socket.write(bytes);
    });
    socket.once('close', () => (began === 0 ? reject(new Error(`no connection: ${how}`)) : resolve({ ms: performance.now() - began, received, how })));
  });
}

test('not TLS: plain HTTP (curl http://) and garbage are closed at once, before client_hello_timeout, and reach no backend', async (t) => {
  const site = await startSite(t);
  const lb = await startPassthrough(t, site, {}, '3s');
  const began = performance.now();
  const plain = await curl('a.test', lb.port, site.ca.caPath, [], `http://a.test:${lb.port}/`);
  const plainMs = performance.now() - began;
  assert.ok(plain.code === 52 || plain.code === 56, `curl http:// should fail with an empty reply or a reset, got ${plain.code}: ${plain.stderr}`);
  assert.ok(plainMs < 3000, `plain HTTP closed after ${plainMs} ms`);
  const garbage = await closedAfter(lb.port, Buffer.from('\x00\x01\x02 this is not a TLS record at all\r\n', 'latin1'));
  assert.equal(garbage.received, 0);
  assert.ok(garbage.ms < 3000, `garbage closed after ${garbage.ms} ms`);
  // A TLS record header with a handshake body that is no ClientHello (type 0x02, ServerHello): malformed, closed at once.
  const malformed = await closedAfter(lb.port, Buffer.from([0x16, 0x03, 0x01, 0x00, 0x08, 0x02, 0x00, 0x00, 0x04, 0x03, 0x03, 0x00, 0x00]));
  assert.ok(malformed.ms < 3000, `a malformed handshake closed after ${malformed.ms} ms`);
  t.diagnostic(`closed after: plain HTTP ${plainMs.toFixed(0)} ms (curl exit ${plain.code}), garbage ${garbage.ms.toFixed(0)} ms, malformed handshake ${malformed.ms.toFixed(0)} ms (client_hello_timeout 3 s)`);
  assert.equal(total(site), 0, 'no backend saw a connection');
});

test('a client that sends nothing, or only part of a ClientHello, is closed after client_hello_timeout', async (t) => {
  const site = await startSite(t);
  const lb = await startPassthrough(t, site, {}, '1500ms');
  const [silent, partial] = await Promise.all([
    closedAfter(lb.port, null),
    // A record header announcing 512 bytes, then 5 of them: it could still be a ClientHello, so Fulcrum waits.
    closedAfter(lb.port, Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03])),
  ]);
  t.diagnostic(`closed after: silent ${silent.ms.toFixed(0)} ms, partial ClientHello ${partial.ms.toFixed(0)} ms (client_hello_timeout 1500 ms)`);
  for (const [what, r] of [['silent', silent], ['partial', partial]] as const) {
    assert.ok(r.ms >= 1450, `${what} client closed after ${r.ms} ms, before the timeout`);
    assert.ok(r.ms < 3500, `${what} client closed after ${r.ms} ms, more than 2 s past the timeout`);
    assert.equal(r.received, 0);
  }
  assert.equal(total(site), 0, 'no backend saw a connection');
});

test('the bytes after the ClientHello flow both ways unchanged: a 2 MiB upload echoed back over TLS through the passthrough', async (t) => {
  const ca = await makeTestCa(t);
  const cert = await ca.issue('echo', { names: ['echo.test'] });
  const server = tls.createServer({ cert: cert.cert, key: cert.key }, (socket) => socket.pipe(socket));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => server.close());
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'tcp', tls_passthrough: { routes: [{ server_names: ['echo.test'], pool: 'echo' }] } }],
    pools: { echo: { protocol: 'tcp', upstreams: [`tcp://127.0.0.1:${(server.address() as net.AddressInfo).port}`] } },
  });
  const socket = tls.connect({ host: '127.0.0.1', port: lb.port, servername: 'echo.test', ca: ca.ca.cert });
  t.after(() => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', resolve);
    socket.once('error', reject);
  });
  assert.equal(socket.authorized, true, String(socket.authorizationError));
  const payload = Buffer.alloc(2 * 1024 * 1024);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 31 + (i >> 11)) & 0xff;
  const received: Buffer[] = [];
  let length = 0;
  socket.on('data', (d: Buffer) => {
    received.push(d);
    length += d.length;
  });
  socket.write(payload);
  await eventually(() => length >= payload.length, { what: 'the 2 MiB echo', timeout: 20_000 });
  assert.ok(Buffer.concat(received).equals(payload));
});
