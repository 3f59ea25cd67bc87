/**
 * The sample backend: a small HTTP server that says which backend answered, for the demo and
 * for trying failover by hand. It can be told to be slow or to fail, at start or while running:
 *   GET  /            {"backend":"1", ...}        GET /health   200 ok (503 while failing)
 *                     (with the X-Forwarded-For and -Proto the balancer sent)
 *   GET  /slow?ms=N   answers after N ms           GET /bytes?n=N streams N bytes
 *   POST /echo        echoes the body              GET /status/N  answers status N
 *   POST /control?fail=1&delay=300   switch failing on, add 300 ms to every answer
 *   GET  /ws          a WebSocket echo: a text message comes back as "backend 1: <message>" (binary as sent)
 */
import type * as http from 'node:http';
import { http as nodeHttp } from '../node-builtins.ts';
import type { AddressInfo, Socket } from 'node:net';
import { WebSocketServer } from 'ws';

/** How a sample backend behaves. */
export interface SampleBackendOptions {
  id: string;
  port: number;
  host?: string;
  /** Extra latency for every answer, in ms (default 0). */
  delay?: number;
  /** Answer 500 to everything (and 503 to /health) (default false). */
  fail?: boolean;
}

/** A started sample backend. */
export interface SampleBackend {
  id: string;
  port: number;
  url: string;
  server: http.Server;
  close(): Promise<void>;
}

const chunk = Buffer.alloc(64 * 1024, 'x');

/** Starts a sample backend; resolves once it listens. */
export function startSampleBackend(options: SampleBackendOptions): Promise<SampleBackend> {
  const state = { delay: options.delay ?? 0, fail: options.fail ?? false, served: 0 };
  // Only WebSocket handshakes leave the request path (an `Upgrade: h2c` offer stays a plain request).
  const server = nodeHttp.createServer({ shouldUpgradeCallback: (req) => /\bwebsocket\b/i.test(req.headers.upgrade ?? '') }, (req, res) => {
    const url = new URL(req.url ?? '/', 'http://backend');
    const answer = (): void => route(req, res, url, options.id, state);
    if (state.delay > 0 && url.pathname !== '/control') setTimeout(answer, state.delay);
    else answer();
  });
  server.keepAliveTimeout = 5000;
  // WebSocket handshakes on /ws take the same delay and failing switch as every other answer.
  const sockets = new WebSocketServer({ noServer: true });
  sockets.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => ws.send(isBinary ? data : `backend ${options.id}: ${String(data)}`, { binary: isBinary }));
  });
  server.on('upgrade', (req: http.IncomingMessage, socket: Socket, head: Buffer) => {
    socket.on('error', () => socket.destroy());
    const answer = (): void => {
      const path = new URL(req.url ?? '/', 'http://backend').pathname;
      if (path !== '/ws' || state.fail) {
        const status = state.fail ? '500 Internal Server Error' : '404 Not Found';
        socket.end(`HTTP/1.1 ${status}\r\nx-backend: ${options.id}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`);
        return;
      }
      state.served++;
      sockets.handleUpgrade(req, socket, head, (ws) => sockets.emit('connection', ws, req));
    };
    if (state.delay > 0) setTimeout(answer, state.delay);
    else answer();
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host ?? '127.0.0.1', () => {
      const port = (server.address() as AddressInfo).port;
      resolve({
        id: options.id,
        port,
        url: `http://${options.host ?? '127.0.0.1'}:${port}`,
        server,
        close: () =>
          new Promise<void>((done) => {
            server.close(() => done());
            server.closeAllConnections();
            // Upgraded sockets are no longer the HTTP server's to close.
            for (const ws of sockets.clients) ws.terminate();
            sockets.close();
          }),
      });
    });
  });
}

function route(req: http.IncomingMessage, res: http.ServerResponse, url: URL, id: string, state: { delay: number; fail: boolean; served: number }): void {
  state.served++;
  res.setHeader('x-backend', id);
  const path = url.pathname;
  if (path === '/control') {
    if (url.searchParams.has('fail')) state.fail = url.searchParams.get('fail') === '1' || url.searchParams.get('fail') === 'true';
    if (url.searchParams.has('delay')) state.delay = Math.max(0, Number(url.searchParams.get('delay')) || 0);
    return json(res, 200, { backend: id, fail: state.fail, delay: state.delay });
  }
  if (path === '/health') {
    res.writeHead(state.fail ? 503 : 200, { 'content-type': 'text/plain' });
    res.end(state.fail ? 'failing\n' : 'ok\n');
    return;
  }
  if (state.fail) return json(res, 500, { backend: id, error: 'told to fail (POST /control?fail=0 to recover)' });
  if (path === '/slow') {
    setTimeout(() => json(res, 200, { backend: id, slept_ms: Number(url.searchParams.get('ms')) || 0 }), Number(url.searchParams.get('ms')) || 0);
    return;
  }
  if (path === '/echo') {
    res.writeHead(200, { 'content-type': req.headers['content-type'] ?? 'application/octet-stream', 'x-backend': id });
    req.pipe(res);
    return;
  }
  if (path.startsWith('/status/')) return json(res, Number(path.slice(8)) || 200, { backend: id });
  if (path === '/bytes') {
    let left = Math.max(0, Number(url.searchParams.get('n')) || 0);
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(left) });
    const pump = (): void => {
      while (left > 0) {
        const piece = left >= chunk.length ? chunk : chunk.subarray(0, left);
        left -= piece.length;
        if (!res.write(piece)) return void res.once('drain', pump);
      }
      res.end();
    };
    pump();
    return;
  }
  json(res, 200, { backend: id, method: req.method, path: req.url, served: state.served, forwarded_for: req.headers['x-forwarded-for'] ?? null, forwarded_proto: req.headers['x-forwarded-proto'] ?? null, request_id: req.headers['x-request-id'] ?? null });
}

function json(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body) + '\n';
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
