/**
 * The benchmark backend, run as its own process by bench/run.ts: the smallest useful
 * node:http server, so the figures measure the proxies rather than the backend's work.
 * Reports its port over IPC once it listens; exits when the parent goes away.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';

const body = Buffer.from('hello world\n');
const headers = { 'content-type': 'text/plain', 'content-length': String(body.length) };

const server = http.createServer((_req, res) => {
  res.writeHead(200, headers);
  res.end(body);
});
// Longer than any benchmark pause, so pooled upstream sockets are never closed under a proxy.
server.keepAliveTimeout = 60_000;

server.listen(0, '127.0.0.1', () => {
  process.send?.({ port: (server.address() as AddressInfo).port });
});

// If bench/run.ts dies without killing us, the IPC channel closing is our cue.
process.on('disconnect', () => process.exit(0));
