/**
 * WebSocket edge cases: an answer pipelined ahead of a handshake, a handshake that completes
 * after a reload removed its upstream, a 101 without Upgrade, and Fulcrum's own closes (drain,
 * shutdown) in the middle of traffic: a Close frame between two frames, never a cut frame.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import http from 'node:http';
import { startBalancer, startRawBackend } from '../helpers/servers.ts';
import { acceptFor, handshakeRequest, rawClient, startWsBackend, wsOpen } from '../helpers/websocket.ts';
import type { WebSocket } from 'ws';
import { eventually } from '../helpers/eventually.ts';


test('a large answer pipelined ahead of a WebSocket handshake is delivered whole, then the 101', async (t) => {
  const SIZE = 8 * 1024 * 1024;
  const big = Buffer.alloc(SIZE, 0x61);
  const backend = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-length': SIZE });
    res.end(big);
  });
  await new Promise<void>((r) => backend.listen(0, '127.0.0.1', r));
  t.after(() => {
    backend.closeAllConnections();
    backend.close();
  });
  const lb = await startBalancer(t, { pools: { p: { upstreams: [`http://127.0.0.1:${(backend.address() as net.AddressInfo).port}`] } } });
  const c = rawClient(t, lb.port, 'GET /big HTTP/1.1\r\nHost: x\r\n\r\n' + handshakeRequest('/ws').text);
  await eventually(() => (c.received().length > SIZE ? true : null), { timeout: 5000, what: 'the whole pipelined answer' }).catch(() => {
    assert.fail(`only ${c.received().length} of ${SIZE}+ bytes arrived: the answer ahead of the handshake waits for a 'drain' nobody emits`);
  });
});

test('a tunnel whose handshake completes after a reload removed its upstream is closed after the grace period', async (t) => {
  const { text, key } = handshakeRequest('/ws');
  let asked = false;
  const slow = await startRawBackend(t, (s) => {
    s.once('data', () => {
      asked = true;
    });
    s.once('data', () => setTimeout(() => s.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptFor(key)}\r\n\r\n`), 400));
  });
  const other = await startRawBackend(t, () => {});
  const config = (url: string) => ({ listeners: [{ host: '127.0.0.1', port: 0 }], shutdown: { grace_period: 200 }, pools: { p: { upstreams: [url] } } });
  const lb = await startBalancer(t, config(slow.url));
  const c = rawClient(t, lb.port, text);
  await eventually(() => asked, { what: 'the handshake at the slow upstream' });
  await lb.balancer.reload(config(other.url));
  await eventually(() => (c.received().includes(' 101 ') ? true : null), { what: 'the 101' });
  // The grace period is 200 ms: well before 1.5 s the tunnel to the removed upstream must be gone.
  await eventually(() => c.closed(), { timeout: 1500, what: 'the tunnel to the removed upstream to close (grace period 200 ms)' });
});

for (const transport of ['http1', 'node-http', 'undici'] as const) {
  test(`${transport}: a bare 101 (no Upgrade header) to a request that asked for no upgrade is a 502, and its socket is not reused`, async (t) => {
    // Answers its first request on each connection with a bare 101, then speaks "another protocol".
    const backend = await startRawBackend(t, (s) => {
      s.once('data', () => {
        s.write('HTTP/1.1 101 Switching Protocols\r\n\r\n');
        s.on('data', () => s.write('HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nNOT-HTTP!'));
      });
    });
    const lb = await startBalancer(t, { pools: { p: { transport, upstreams: [backend.url] } } });
    // Over undici the fallback client (node:http) carries Expect: 100-continue.
    const headers = transport === 'undici' ? { expect: '100-continue', 'content-length': '0' } : {};
    const ask = () =>
      new Promise<number>((resolve, reject) => {
        const req = http.request(`${lb.url}/`, { agent: false, headers }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode!));
        });
        req.on('error', reject);
        req.end();
      });
    const first = await ask();
    const second = await ask();
    t.diagnostic(`first ${first}, second ${second}, backend connections ${backend.sockets.length}`);
    assert.equal(first, 502, 'the unasked 101 was relayed to the client');
    assert.equal(backend.sockets.length, 2, 'the switched upstream socket went back to the keep-alive pool and served another request');
  });
}

for (const how of ['drain', 'shutdown'] as const) {
  test(`a ${how} in the middle of traffic: every frame arrives whole, then both peers get Close 1001`, async (t) => {
    const backend = await startWsBackend(t);
    const lb = await startBalancer(t, { shutdown: { grace_period: '300ms' }, pools: { ws: { upstreams: [backend.url] } } });
    const ws = await wsOpen(t, lb.url);
    const errors: Error[] = [];
    ws.on('error', (err) => errors.push(err));
    await eventually(() => backend.sockets.length === 1, { what: 'the backend side' });
    const closes: { side: string; code: number; reason: string }[] = [];
    const onClose = (side: string, socket: WebSocket): void => void socket.on('close', (code, reason) => closes.push({ side, code, reason: reason.toString() }));
    onClose('client', ws);
    onClose('backend', backend.sockets[0]);
    backend.sockets[0].on('error', (err) => errors.push(err));
    // Large messages both ways without pause, so the close lands while frames are in flight.
    const payload = Buffer.alloc(256 * 1024, 7);
    let echoed = 0;
    ws.on('message', (data: Buffer) => {
      assert.ok(data.equals(payload), 'an echoed message is whole');
      echoed++;
    });
    const pump = setInterval(() => {
      if (ws.readyState === ws.OPEN && ws.bufferedAmount < 4 * payload.length) ws.send(payload);
    }, 1);
    t.after(() => clearInterval(pump));
    await eventually(() => echoed >= 5, { what: 'traffic to flow' });
    if (how === 'drain') await lb.balancer.updateBackend({ url: backend.url, draining: true });
    else void lb.balancer.close(300);
    await eventually(() => closes.length === 2, { what: 'both peers to see the close', timeout: 8000 });
    clearInterval(pump);
    const reason = how === 'drain' ? 'upstream drained' : 'proxy shutting down';
    assert.deepEqual(closes.map((c) => [c.code, c.reason]), [[1001, reason], [1001, reason]]);
    assert.deepEqual(errors, [], 'no peer saw a broken frame');
    assert.ok(echoed >= 5);
  });
}

test('a drain while a 16 MiB message is mid-way to the client: the message arrives whole, then Close 1001', async (t) => {
  const big = Buffer.alloc(16 * 1024 * 1024, 3);
  const backend = await startWsBackend(t, { onSocket: (socket) => socket.on('message', () => socket.send(big)) });
  const lb = await startBalancer(t, { shutdown: { grace_period: '10ms' }, pools: { ws: { upstreams: [backend.url] } } });
  const ws = await wsOpen(t, lb.url);
  const socket = (ws as unknown as { _socket: net.Socket })._socket;
  let message: Buffer | null = null;
  let close: [number, string] | null = null;
  ws.on('message', (data: Buffer) => (message = data));
  ws.on('close', (code, reason) => (close = [code, reason.toString()]));
  ws.on('error', () => {});
  ws.send('send the big one');
  // Part of the message is through: the tunnel is inside its frame when the drain closes it.
  await eventually(() => socket.bytesRead > 1024 * 1024, { what: 'the first megabyte' });
  assert.equal(message, null);
  await lb.balancer.updateBackend({ url: backend.url, draining: true });
  await eventually(() => close !== null, { what: 'the close', timeout: 8000 });
  assert.deepEqual(close, [1001, 'upstream drained']);
  assert.ok(message !== null && (message as Buffer).equals(big), 'the message in flight arrived whole before the Close frame');
});
