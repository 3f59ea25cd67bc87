/**
 * The peer: a plain `http-proxy` server, run as its own process by bench/run.ts:
 *   node bench/proxy-http-proxy.ts <backend-url>
 * It gets a keep-alive http.Agent. Without one, http-proxy opens a new upstream connection per
 * request (it sends `connection: close`), which would make the comparison unfair to it. No
 * logging: this is the bare-minimum proxy Fulcrum is measured against.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import httpProxy from 'http-proxy';

const backendUrl = process.argv[2];
if (!backendUrl) {
  console.error('usage: node bench/proxy-http-proxy.ts <backend-url>');
  process.exit(2);
}

const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
const proxy = httpProxy.createProxyServer({ target: backendUrl, agent, xfwd: true });

// Without an error listener http-proxy throws; a failed exchange should show up as a 502.
proxy.on('error', (_err, _req, res) => {
  if (res instanceof http.ServerResponse && !res.headersSent) {
    res.writeHead(502, { 'content-type': 'text/plain' });
    res.end('bad gateway\n');
  } else {
    res.destroy();
  }
});

const server = http.createServer((req, res) => proxy.web(req, res));
server.listen(0, '127.0.0.1', () => {
  process.send?.({ port: (server.address() as AddressInfo).port });
});

process.on('disconnect', () => process.exit(0));
