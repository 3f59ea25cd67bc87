/**
 * The benchmark backend, run as its own process by bench/run.ts: the smallest useful server, so
 * the figures measure the proxies rather than the backend's work.
 *   node bench/backend.ts          node:http, HTTP/1.1 with keep-alive
 *   node bench/backend.ts h2c      node:http2 in cleartext (prior knowledge only), the same answer
 * Reports its port over IPC once it listens; exits when the parent goes away.
 */
import http from 'node:http';
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';

const body = Buffer.from('hello world\n');
const headers = { 'content-type': 'text/plain', 'content-length': String(body.length) };

const mode = process.argv[2] ?? 'http1';
if (mode !== 'http1' && mode !== 'h2c') {
  console.error('usage: node bench/backend.ts [http1|h2c]');
  process.exit(2);
}

let server: http.Server | http2.Http2Server;
if (mode === 'h2c') {
  // The stream API rather than the compatibility one: less per-request work, as for node:http below.
  const h2 = http2.createServer({ settings: { maxConcurrentStreams: 1000 } });
  h2.on('stream', (stream) => {
    stream.on('error', () => {});
    stream.respond({ ':status': 200, ...headers });
    stream.end(body);
  });
  // node:http2 closes no idle session by default (server.timeout 0), so a proxy's pooled sessions outlast benchmark pauses.
  server = h2;
} else {
  const h1 = http.createServer((_req, res) => {
    res.writeHead(200, headers);
    res.end(body);
  });
  // Longer than any benchmark pause, so pooled upstream sockets are never closed under a proxy.
  h1.keepAliveTimeout = 60_000;
  server = h1;
}

server.listen(0, '127.0.0.1', () => {
  process.send?.({ port: (server.address() as AddressInfo).port });
});

// If bench/run.ts dies without killing us, the IPC channel closing is our cue.
process.on('disconnect', () => process.exit(0));
