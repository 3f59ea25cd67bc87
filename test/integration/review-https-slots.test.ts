/**
 * Review of the HTTPS listener (issue 12): every kind of TLS connection is closed in time and
 * gives its connection slot back (open_connections returns to 0). Fails today: a client that
 * sends a whole ClientHello and then nothing is never closed (Node's handshake timeout only emits
 * 'tlsClientError'; TlsTermination's handler counts it and never destroys the socket).
 * Right behaviour: the connection is closed at `handshake_timeout` and its slot freed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { makeTestCa, httpsGet, type TestCa, type CertFiles } from '../helpers/tls.ts';
import { startBackend, startBalancer, rawExchange, type TestBalancer } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';

function tlsAttempt(port: number, options: tls.ConnectionOptions, after?: (s: tls.TLSSocket) => void): Promise<string> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...options }, () => {
      if (after) after(s);
      else s.end();
    });
    s.on('error', (e) => resolve(`error ${e.message}`));
    s.on('close', () => resolve('closed'));
    s.setTimeout(4000, () => s.destroy());
  });
}

/** The bytes of a real ClientHello (SNI localhost), captured from Node's TLS client. */
function captureHello(servername = 'localhost'): Promise<Buffer> {
  return new Promise((resolve) => {
    const srv = net.createServer((sock) => {
      sock.once('data', (d) => {
        resolve(d);
        sock.destroy();
        srv.close();
      });
    });
    srv.listen(0, '127.0.0.1', () => {
      const s = tls.connect({ host: '127.0.0.1', port: (srv.address() as net.AddressInfo).port, servername, rejectUnauthorized: false });
      s.on('error', () => {});
    });
  });
}

/** Sends `bytes`, then nothing; resolves with how long the server took to close (or that it did not within `wait`). */
function stall(port: number, bytes: Buffer, wait = 3000): Promise<string> {
  return new Promise((resolve) => {
    const started = Date.now();
    const raw = net.connect(port, '127.0.0.1', () => raw.write(bytes));
    raw.on('close', () => resolve(`closed after ${Date.now() - started} ms`));
    raw.on('error', () => {});
    raw.resume();
    setTimeout(() => {
      resolve(`still open after ${wait} ms`);
      raw.destroy();
    }, wait);
  });
}

async function setup(t: import('node:test').TestContext): Promise<{ lb: TestBalancer; ca: TestCa; alice: CertFiles; plain: number; mtls: number }> {
  const ca = await makeTestCa(t);
  const server = await ca.issue('server');
  const alice = await ca.issue('alice', { names: [], commonName: 'alice', usage: 'client' });
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const lb = await startBalancer(t, {
    listeners: [
      { host: '127.0.0.1', port: 0, protocol: 'https', name: 'plain', tls: { handshake_timeout: '300ms', unknown_name: 'reject', certificates: [{ cert: server.certPath, key: server.keyPath }] } },
      { host: '127.0.0.1', port: 0, protocol: 'https', name: 'mtls', tls: { handshake_timeout: '300ms', certificates: [{ cert: server.certPath, key: server.keyPath }], client_auth: { mode: 'required', ca: ca.caPath } } },
    ],
    pools: { web: { upstreams: [backend.url] } },
  } as never);
  const [plain, mtls] = lb.balancer.addresses();
  return { lb, ca, alice, plain: plain.port, mtls: mtls.port };
}

function openCount(lb: TestBalancer, name: string): number {
  return lb.balancer.status().listeners.find((l) => l.name === name)!.open_connections;
}

async function settles(lb: TestBalancer, name: string, what: string): Promise<void> {
  try {
    await eventually(() => openCount(lb, name) === 0, { what, timeout: 3000 });
  } catch {
    assert.fail(`${what}: ${openCount(lb, name)} connection(s) still counted on listener ${name} (expected 0)`);
  }
}

test('a client that sends a whole ClientHello and then nothing is closed at handshake_timeout and its slot freed', async (t) => {
  const { lb, plain } = await setup(t);
  const result = await stall(plain, await captureHello());
  assert.match(result, /^closed after \d+ ms$/, `handshake_timeout is 300ms; the connection was ${result}`);
  await settles(lb, 'plain', 'ClientHello then silence');
});

test('refusals and failures before, during and after the handshake all free their slots', async (t) => {
  const { lb, ca, alice, plain, mtls } = await setup(t);
  await rawExchange(plain, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  await settles(lb, 'plain', 'plain HTTP answered 400');
  await rawExchange(plain, '', 1000);
  await settles(lb, 'plain', 'a silent client');
  await stall(plain, Buffer.from('\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03', 'latin1'), 1500);
  await settles(lb, 'plain', 'half a ClientHello');
  await tlsAttempt(plain, { servername: 'nobody.test' });
  await settles(lb, 'plain', 'an unknown name refused');
  await tlsAttempt(plain, { servername: 'localhost', maxVersion: 'TLSv1.1', minVersion: 'TLSv1' });
  await settles(lb, 'plain', 'no shared version');
  await tlsAttempt(plain, { servername: 'localhost', ALPNProtocols: ['h2'] });
  await settles(lb, 'plain', 'no shared ALPN protocol');
  await tlsAttempt(plain, { servername: 'localhost' }, (s) => s.destroy());
  await settles(lb, 'plain', 'a reset right after the handshake');
  await tlsAttempt(plain, { servername: 'localhost' }, (s) => s.write('GET / HTTP/1.1\r\nHost: x\r\n'));
  await settles(lb, 'plain', 'half a request then silence (headers timeout)');
  await tlsAttempt(mtls, { servername: 'localhost' });
  await settles(lb, 'mtls', 'a client without a certificate refused (mTLS required)');
  const ok = await httpsGet(`https://127.0.0.1:${mtls}/`, { ca: ca.ca.cert, cert: alice.cert, key: alice.key, headers: { connection: 'close' } });
  assert.equal(ok.status, 200);
  await settles(lb, 'mtls', 'an mTLS request with connection: close');
});
