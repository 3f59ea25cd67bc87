/**
 * A backend in its own process, so a test can kill -9 it: answers GET / with its id after a
 * short delay, POST / after reading the body, /health with 200. Every POST's X-Test-Id goes to
 * stdout ("POST <id>"), so the test can see each POST that reached any backend. A WebSocket
 * handshake is accepted: the backend sends its id first, then echoes every message.
 * Usage: node backend-child.ts ID PORT
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer } from 'ws';

const [id, portText] = process.argv.slice(2);
const server = http.createServer((req, res) => {
  if (req.url === '/health') return void res.end('ok');
  if (req.method === 'POST') {
    process.stdout.write(`POST ${req.headers['x-test-id']}\n`);
    req.resume();
    req.on('end', () => setTimeout(() => res.end(id), 5));
    return;
  }
  setTimeout(() => res.end(id), 5 + Math.random() * 10);
});
const webSockets = new WebSocketServer({ noServer: true });
server.on('upgrade', (req, socket, head) =>
  webSockets.handleUpgrade(req, socket, head, (ws) => {
    ws.on('error', () => {});
    ws.send(id);
    ws.on('message', (data, isBinary) => ws.send(data as Buffer, { binary: isBinary }));
  }),
);
server.listen(Number(portText), '127.0.0.1', () => {
  process.stdout.write(`PORT ${(server.address() as AddressInfo).port}\n`);
});
