/**
 * Real servers on 127.0.0.1 port 0 for integration tests: scripted backends and a balancer
 * built through the public API, each closed by the test that made it.
 */
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import type { TestContext } from 'node:test';
import { createBalancer, validateConfig, type Balancer } from '../../src/index.ts';
import type { FulcrumConfigInput } from '../../src/config/schema.ts';
import { createLogger } from '../../src/observe/logger.ts';
import { requestEnd, type RequestEndEvent } from '../../src/core/events.ts';

/** A backend started for a test; `requests` counts what reached it. */
export interface TestBackend {
  url: string;
  port: number;
  server: http.Server;
  requests: http.IncomingMessage[];
  close(): Promise<void>;
}

/** An HTTP backend with a scripted handler, closed after the test. */
export async function startBackend(t: TestContext, handler: http.RequestListener, options: http.ServerOptions = {}): Promise<TestBackend> {
  const requests: http.IncomingMessage[] = [];
  const server = http.createServer(options, (req, res) => {
    requests.push(req);
    handler(req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const close = (): Promise<void> =>
    new Promise((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  t.after(close);
  return { url: `http://127.0.0.1:${port}`, port, server, requests, close };
}

/** A raw TCP backend (for garbage, resets and hand-written framing). */
export async function startRawBackend(t: TestContext, onConnection: (socket: net.Socket) => void): Promise<{ url: string; port: number; sockets: net.Socket[] }> {
  const sockets: net.Socket[] = [];
  const server = net.createServer((socket) => {
    sockets.push(socket);
    socket.on('error', () => {});
    onConnection(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  t.after(() => new Promise<void>((resolve) => {
    for (const s of sockets) s.destroy();
    server.close(() => resolve());
  }));
  return { url: `http://127.0.0.1:${port}`, port, sockets };
}

/**
 * A raw backend that answers `200 ok` to each request and keeps every byte it received (a
 * request body announced with Content-Length is skipped), for tests on exactly what was sent.
 */
export async function startRecordingBackend(t: TestContext): Promise<{ url: string; port: number; sockets: net.Socket[]; received: string[]; text: () => string }> {
  const received: string[] = [];
  const raw = await startRawBackend(t, (socket) => {
    let buffered = '';
    socket.on('data', (d) => {
      received.push(d.toString('latin1'));
      buffered += d.toString('latin1');
      let end: number;
      while ((end = buffered.indexOf('\r\n\r\n')) !== -1) {
        const head = buffered.slice(0, end);
        const length = /\r\ncontent-length: *(\d+)/i.exec(head);
        buffered = buffered.slice(end + 4 + (length ? Number(length[1]) : 0));
        socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
      }
    });
  });
  return { ...raw, received, text: () => received.join('') };
}

/**
 * A backend that speaks just enough HTTP/1.1 to answer "ok", and closes a connection `idleMs`
 * after its last response without announcing it (no Keep-Alive header).
 */
export async function startIdleClosingBackend(t: TestContext, idleMs: number): Promise<{ url: string; port: number; connections: () => number }> {
  let connections = 0;
  const raw = await startRawBackend(t, (socket) => {
    connections++;
    let idle: NodeJS.Timeout | undefined;
    let buffered = '';
    socket.on('data', (d) => {
      buffered += d.toString('latin1');
      while (buffered.includes('\r\n\r\n')) {
        buffered = buffered.slice(buffered.indexOf('\r\n\r\n') + 4);
        clearTimeout(idle);
        socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
        idle = setTimeout(() => socket.destroy(), idleMs);
      }
    });
    socket.on('close', () => clearTimeout(idle));
  });
  return { url: raw.url, port: raw.port, connections: () => connections };
}

/** A port nothing listens on (bound, then released). */
export async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A running balancer for a test, its URL and the access-log records it produced. */
export interface TestBalancer {
  balancer: Balancer;
  url: string;
  port: number;
  ended: RequestEndEvent['ctx'][];
  logs: string[];
}

/** Starts a balancer on 127.0.0.1:0 with the given pools/routes; closed after the test. */
export async function startBalancer(
  t: TestContext,
  config: Omit<FulcrumConfigInput, 'listeners'> & { listeners?: FulcrumConfigInput['listeners'] },
  options: { configFile?: string } = {},
): Promise<TestBalancer> {
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      logs.push(String(chunk));
      cb();
    },
  });
  const logger = createLogger({ level: 'info', format: 'json' }, { destination: sink });
  const full: FulcrumConfigInput = { listeners: config.listeners ?? [{ host: '127.0.0.1', port: 0 }], ...config };
  // FULCRUM_ENGINE=node runs a suite on node:http's server (the listener option kept while Fulcrum's own proves itself).
  const engine = process.env.FULCRUM_ENGINE;
  if (engine === 'node' || engine === 'fulcrum') full.listeners = full.listeners!.map((l) => (l.protocol === 'tcp' ? l : { engine, ...l }));
  const balancer = createBalancer(full, { logger, configFile: options.configFile });
  const [address] = await balancer.start();
  const ended: RequestEndEvent['ctx'][] = [];
  const onEnd = (m: unknown): void => void ended.push((m as RequestEndEvent).ctx);
  requestEnd.subscribe(onEnd);
  t.after(async () => {
    requestEnd.unsubscribe(onEnd);
    await balancer.close(1000);
  });
  return { balancer, url: `${address.url.startsWith("https:") ? "https" : "http"}://127.0.0.1:${address.port}`, port: address.port, ended, logs };
}

/**
 * What `validateConfig` says about `config` (taken as it stands, unchecked by the type system, as
 * a file would give it): the error's message, which names every problem, or '' when the config is
 * valid. Throws nothing.
 */
export function configProblems(config: unknown): string {
  try {
    validateConfig(config as FulcrumConfigInput);
    return '';
  } catch (err) {
    return (err as Error).message;
  }
}

/** A response read whole: status, headers, body text. */
export interface Fetched {
  status: number;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  body: string;
}

/** One request with node:http (a fresh connection unless an agent is given). */
export function get(url: string, options: http.RequestOptions & { body?: string | Buffer } = {}): Promise<Fetched> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { agent: false, ...options }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, rawHeaders: res.rawHeaders, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
      res.on('aborted', () => reject(new Error('response aborted')));
    });
    req.on('error', reject);
    req.end(options.body);
  });
}

/** Sends raw bytes on a new connection and returns everything the server sent until it closed. */
export function rawExchange(port: number, text: string, timeout = 3000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let data = '';
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(data);
    }, timeout);
    socket.on('data', (c) => (data += c.toString('latin1')));
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(data);
    });
    socket.on('error', (err) => {
      clearTimeout(timer);
      if (data) resolve(data);
      else reject(err);
    });
    socket.write(text, 'latin1');
  });
}
