/**
 * WebSocket test helpers on real sockets (127.0.0.1, port 0): an echo backend built on the `ws`
 * package, `ws` clients that report a refused handshake's status, and a raw handshake with just
 * enough RFC 6455 framing to talk through a tunnel byte by byte.
 */
import http from 'node:http';
import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { TestContext } from 'node:test';
import { WebSocket, WebSocketServer, type ClientOptions } from 'ws';

/** RFC 6455 section 1.3: appended to the key before hashing. */
const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/** The `Sec-WebSocket-Accept` that answers `key` (RFC 6455 section 4.2.2). */
export function acceptFor(key: string): string {
  return createHash('sha1').update(key + GUID).digest('base64');
}

/** A `ws` backend started for a test. */
export interface WsBackend {
  url: string;
  port: number;
  server: http.Server;
  wss: WebSocketServer;
  /** Upgrade requests that reached it, in order. */
  upgrades: http.IncomingMessage[];
  /** Plain (non-upgrade) requests that reached it. */
  requests: http.IncomingMessage[];
  /** Its side of every WebSocket opened, in order. */
  sockets: WebSocket[];
}

/** What a `ws` backend does beyond echoing every message back as it came (text or binary). */
export interface WsBackendOptions {
  /** Answers plain requests (default: 200 with the text `plain`). */
  http?: http.RequestListener;
  /** Picks the subprotocol from those offered (default: none). */
  protocol?: (offered: Set<string>) => string | false;
  /** Extra header lines (`Name: value`) added to its 101. */
  headers?: string[];
  /** Replaces the echo: what it does with each new WebSocket. */
  onSocket?: (ws: WebSocket, req: http.IncomingMessage) => void;
}

/** A WebSocket echo backend (also answers plain HTTP), closed after the test. */
export async function startWsBackend(t: TestContext, options: WsBackendOptions = {}): Promise<WsBackend> {
  const upgrades: http.IncomingMessage[] = [];
  const requests: http.IncomingMessage[] = [];
  const sockets: WebSocket[] = [];
  const plain = options.http ?? ((_req, res) => res.end('plain'));
  const server = http.createServer((req, res) => {
    requests.push(req);
    plain(req, res);
  });
  const wss = new WebSocketServer({ noServer: true, ...(options.protocol ? { handleProtocols: options.protocol } : {}) });
  if (options.headers) wss.on('headers', (headers) => headers.push(...options.headers!));
  server.on('upgrade', (req, socket, head) => {
    upgrades.push(req);
    wss.handleUpgrade(req, socket, head, (ws) => {
      sockets.push(ws);
      ws.on('error', () => {});
      if (options.onSocket) return options.onSocket(ws, req);
      ws.on('message', (data, isBinary) => ws.send(data as Buffer, { binary: isBinary }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  t.after(
    () =>
      new Promise<void>((resolve) => {
        for (const ws of wss.clients) ws.terminate();
        wss.close();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return { url: `http://127.0.0.1:${port}`, port, server, wss, upgrades, requests, sockets };
}

/** A `ws` client once open; closed (terminated) after the test. */
export function wsOpen(t: TestContext, url: string, protocols?: string[], options: ClientOptions = {}): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url.replace(/^http/, 'ws'), protocols, { handshakeTimeout: 5000, ...options });
    t.after(() => ws.terminate());
    ws.once('open', () => resolve(ws));
    ws.once('unexpected-response', (_req, res) => reject(new Error(`handshake answered ${res.statusCode}`)));
    ws.on('error', reject);
  });
}

/** A handshake that must fail: the status, headers and body the client got. */
export function wsRefused(url: string): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url.replace(/^http/, 'ws'), { handshakeTimeout: 5000 });
    ws.on('error', reject);
    ws.once('open', () => {
      ws.terminate();
      reject(new Error('the handshake succeeded'));
    });
    ws.once('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => {
        ws.terminate();
        resolve({ status: res.statusCode!, headers: res.headers, body });
      });
    });
  });
}

/** The opening handshake's request text, with a fresh key; `extra` header lines are added. */
export function handshakeRequest(path = '/', extra: string[] = []): { text: string; key: string } {
  const key = randomBytes(16).toString('base64');
  const lines = [`GET ${path} HTTP/1.1`, 'Host: fulcrum.test', 'Upgrade: websocket', 'Connection: Upgrade', `Sec-WebSocket-Key: ${key}`, 'Sec-WebSocket-Version: 13', ...extra];
  return { text: `${lines.join('\r\n')}\r\n\r\n`, key };
}

/** A raw TCP client: everything it received so far, and whether the server closed. */
export interface RawClient {
  socket: net.Socket;
  /** Every byte received, in order. */
  received(): Buffer;
  closed(): boolean;
}

/** Connects, sends `text` (latin1), and records what comes back; destroyed after the test. */
export function rawClient(t: TestContext, port: number, text: string): RawClient {
  const socket = net.connect(port, '127.0.0.1');
  const chunks: Buffer[] = [];
  let closed = false;
  socket.on('data', (c: Buffer) => chunks.push(c));
  socket.on('error', () => {});
  socket.on('close', () => (closed = true));
  socket.write(text, 'latin1');
  t.after(() => socket.destroy());
  return {
    socket,
    received: () => Buffer.concat(chunks),
    closed: () => closed,
  };
}

/** An HTTP response head in a raw byte stream: the status line, header lines as sent, and where it ends. */
export interface RawHead {
  status: number;
  statusLine: string;
  /** `[name, value]` in order, names as sent. */
  headers: [string, string][];
  /** Offset of the first byte after the head. */
  end: number;
}

/** Parses the response head starting at `from`, or null while it is incomplete. */
export function parseHead(data: Buffer, from = 0): RawHead | null {
  const end = data.indexOf('\r\n\r\n', from, 'latin1');
  if (end === -1) return null;
  const [statusLine, ...lines] = data.toString('latin1', from, end).split('\r\n');
  const headers = lines.map((l): [string, string] => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1).trim()]);
  return { status: Number(statusLine.split(' ')[1]), statusLine, headers, end: end + 4 };
}

/** The values of header `name` (any case) in a parsed head. */
export function headerValues(head: RawHead, name: string): string[] {
  return head.headers.filter(([n]) => n.toLowerCase() === name).map(([, v]) => v);
}

/** One WebSocket frame (RFC 6455 section 5.2): FIN set, masked as a client must. */
export function encodeFrame(opcode: number, payload: Buffer, mask = true): Buffer {
  const length = payload.length;
  const lengthBytes = length < 126 ? 0 : length < 65536 ? 2 : 8;
  const head = Buffer.alloc(2 + lengthBytes + (mask ? 4 : 0));
  head[0] = 0x80 | opcode;
  head[1] = (mask ? 0x80 : 0) | (length < 126 ? length : length < 65536 ? 126 : 127);
  if (lengthBytes === 2) head.writeUInt16BE(length, 2);
  if (lengthBytes === 8) head.writeBigUInt64BE(BigInt(length), 2);
  if (!mask) return Buffer.concat([head, payload]);
  const key = randomBytes(4);
  key.copy(head, 2 + lengthBytes);
  const body = Buffer.from(payload);
  for (let i = 0; i < body.length; i++) body[i] ^= key[i & 3];
  return Buffer.concat([head, body]);
}

/** Unmasked frames (as a server sends them) from `from` on: opcode and payload of each complete one. */
export function decodeFrames(data: Buffer, from = 0): { opcode: number; payload: Buffer }[] {
  const frames: { opcode: number; payload: Buffer }[] = [];
  let at = from;
  while (at + 2 <= data.length) {
    let length = data[at + 1] & 0x7f;
    let start = at + 2;
    if (length === 126) {
      if (start + 2 > data.length) break;
      length = data.readUInt16BE(start);
      start += 2;
    } else if (length === 127) {
      if (start + 8 > data.length) break;
      length = Number(data.readBigUInt64BE(start));
      start += 8;
    }
    if (start + length > data.length) break;
    frames.push({ opcode: data[at] & 0x0f, payload: data.subarray(start, start + length) });
    at = start + length;
  }
  return frames;
}
