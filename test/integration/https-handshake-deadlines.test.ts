/**
 * Every kind of TLS connection is closed in time and gives its connection slot back
 * (open_connections returns to 0): a whole ClientHello then silence (cut at handshake_timeout),
 * a client that closes right after its Finished without close_notify, and the others.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { startHttpsSite } from '../helpers/tls.ts';
import type { TestBalancer } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';

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

async function setup(t: import('node:test').TestContext): Promise<{ lb: TestBalancer; plain: number }> {
  const { lb } = await startHttpsSite(t, { listener: { name: 'plain' }, tls: { handshake_timeout: '300ms', unknown_name: 'reject' } });
  return { lb, plain: lb.port };
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

test('a client that closes right after its Finished (no close_notify) is closed and its slot freed', async (t) => {
  // With engine fulcrum the acceptor is allowHalfOpen, the TLSSocket inherits it, the client's FIN
  // (sent with or just after its Finished) leaves the server handshake waiting half-open, and the
  // handshake timeout does not close it: each such client costs a socket in CLOSE-WAIT forever.
  const { lb, plain } = await setup(t);
  for (let i = 0; i < 3; i++) {
    await new Promise<void>((resolve) => {
      const s = tls.connect({ host: '127.0.0.1', port: plain, rejectUnauthorized: false, servername: 'localhost' }, () => s.destroy());
      s.on('close', () => resolve());
      s.on('error', () => {});
    });
  }
  await settles(lb, 'plain', 'three clients that closed right after the handshake (handshake_timeout 300ms)');
});
