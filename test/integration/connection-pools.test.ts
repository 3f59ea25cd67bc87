/**
 * Upstream connection pools belong to the balancer, not to one configuration: a weight change,
 * a drain, an added upstream or a reload keeps every surviving upstream's warm keep-alive
 * sockets; a client no pool uses any more is closed, and a closed one never opens a pooled
 * socket again (a straggler gets a one-off connection that closes with its exchange).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { get, startBalancer } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';

const transports = ['http1', 'undici', 'node-http'] as const;

/** A backend that counts the connections it accepted and knows which are open; `/slow` answers once `release` is called. */
async function countingBackend(t: import('node:test').TestContext): Promise<{ url: string; accepted: () => number; open: () => number; release: () => void }> {
  const sockets = new Set<Socket>();
  let accepted = 0;
  let release: () => void = () => {};
  const held = new Promise<void>((resolve) => (release = resolve));
  const server = http.createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
    if (req.url === '/slow') void held.then(() => res.end('slow'));
    else res.end('ok');
  });
  server.on('connection', (socket: Socket) => {
    accepted++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => (server.closeAllConnections(), server.close(() => resolve()))));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, accepted: () => accepted, open: () => sockets.size, release: () => release() };
}

for (const transport of transports) {
  test(`${transport}: a weight change, a drain and undrain, an added upstream and a reload keep the warm socket`, async (t) => {
    const a = await countingBackend(t);
    const b = await countingBackend(t);
    const keepalive = { idle_timeout: '30s' };
    const lb = await startBalancer(t, { pools: { web: { transport, keepalive, upstreams: [a.url] } } });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    t.after(() => agent.destroy());
    const hit = async (): Promise<void> => assert.equal((await get(`${lb.url}/`, { agent })).status, 200);
    await hit();
    assert.equal(a.accepted(), 1);
    await lb.balancer.updateBackend({ url: a.url, weight: 5 });
    await hit();
    await lb.balancer.updateBackend({ url: a.url, draining: true });
    await lb.balancer.updateBackend({ url: a.url, draining: false });
    await hit();
    await lb.balancer.addBackend({ url: b.url, weight: 1 });
    await lb.balancer.removeBackend({ url: b.url });
    await hit();
    // A reload that changes something else about the pool (its policy) and the listener.
    await lb.balancer.reload({ listeners: [{ host: '127.0.0.1', port: lb.port, keepalive_timeout: '40s' }], pools: { web: { transport, keepalive, policy: 'least-connections', upstreams: [a.url] } } });
    await hit();
    assert.equal(a.accepted(), 1, 'every request went over the one socket opened first');
  });

  test(`${transport}: an upstream removed by a reload has its sockets closed; new connection settings get a new client`, async (t) => {
    const a = await countingBackend(t);
    const b = await countingBackend(t);
    const keepalive = { idle_timeout: '30s' };
    const lb = await startBalancer(t, { pools: { web: { transport, keepalive, policy: 'round-robin', upstreams: [a.url, b.url] } } });
    for (let i = 0; i < 4; i++) assert.equal((await get(`${lb.url}/`)).status, 200);
    assert.equal(a.open(), 1);
    assert.equal(b.open(), 1);
    await lb.balancer.reload({ listeners: [{ host: '127.0.0.1', port: lb.port }], pools: { web: { transport, keepalive, upstreams: [a.url] } } });
    await eventually(() => b.open() === 0, { what: "the removed upstream's idle socket to close" });
    assert.equal(a.open(), 1, "the surviving upstream's socket stays");
    // Other connection settings (a connect timeout): a new client; the old one's socket closes.
    await lb.balancer.reload({ listeners: [{ host: '127.0.0.1', port: lb.port }], pools: { web: { transport, keepalive, timeouts: { connect: '3s' }, upstreams: [a.url] } } });
    assert.equal((await get(`${lb.url}/`)).status, 200);
    assert.equal(a.accepted(), 2);
    await eventually(() => a.open() === 1, { what: "the old client's socket to close" });
  });

  test(`${transport}: a request in flight on a removed upstream finishes, then its socket closes; nothing reopens`, async (t) => {
    const a = await countingBackend(t);
    const b = await countingBackend(t);
    const lb = await startBalancer(t, { pools: { web: { transport, keepalive: { idle_timeout: '30s' }, upstreams: [a.url] } } });
    const slow = get(`${lb.url}/slow`);
    await eventually(() => a.open() === 1, { what: 'the slow request to reach the upstream' });
    await lb.balancer.reload({ listeners: [{ host: '127.0.0.1', port: lb.port }], pools: { web: { transport, upstreams: [b.url] } } });
    assert.equal(a.open(), 1, 'the busy socket is not cut');
    a.release();
    assert.equal((await slow).body, 'slow');
    await eventually(() => a.open() === 0, { what: "the closed client's busy socket to close after its request" });
    assert.equal((await get(`${lb.url}/`)).status, 200);
    assert.equal(a.accepted(), 1, 'nothing opened a socket to the removed upstream again');
  });
}
