/**
 * Plain TCP peers on 127.0.0.1 for tests of `protocol: tcp` listeners: an echo backend that
 * greets with its name, a client that keeps what it received, and a recorder of the closes a
 * balancer publishes. Everything is closed after the test that made it.
 */
import net, { type AddressInfo } from 'node:net';
import type { TestContext } from 'node:test';
import { tcpClose, type TcpConnectionEvent } from '../../src/core/events.ts';
import { eventually } from './eventually.ts';

/** A TCP backend that greets with its name, then echoes what it gets; counts its connections. */
export interface EchoBackend {
  name: string;
  port: number;
  /** `tcp://127.0.0.1:<port>`, as a tcp pool's upstream. */
  url: string;
  sockets: net.Socket[];
  accepted: number;
  /** Connections open now. */
  open: () => number;
  close: () => Promise<void>;
}

/**
 * Starts an echo backend (allowHalfOpen, so a half-close is seen as it is); `onConnection`
 * replaces the greeting and echo with a script of the test's own.
 */
export async function startEcho(t: TestContext, name: string, onConnection?: (socket: net.Socket) => void): Promise<EchoBackend> {
  const sockets: net.Socket[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    backend.accepted++;
    sockets.push(socket);
    socket.on('error', () => {});
    if (onConnection) return onConnection(socket);
    socket.write(`${name}\n`);
    socket.pipe(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const close = (): Promise<void> =>
    new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
  const backend: EchoBackend = { name, port, url: `tcp://127.0.0.1:${port}`, sockets, accepted: 0, open: () => sockets.filter((s) => !s.destroyed).length, close };
  t.after(close);
  return backend;
}

/** A client connection; `text()` is what it received so far. */
export interface TcpClient {
  socket: net.Socket;
  received: Buffer[];
  text: () => string;
  /** Bytes received so far. */
  length: () => number;
  ended: Promise<void>;
  /** Resolves with `hadError` once the socket closed. */
  closed: Promise<boolean>;
}

/** Connects to 127.0.0.1:`port`; rejects when the connect fails. */
export function connect(port: number, options: { allowHalfOpen?: boolean } = {}): Promise<TcpClient> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port, allowHalfOpen: options.allowHalfOpen ?? false });
    const received: Buffer[] = [];
    socket.on('data', (d: Buffer) => received.push(d));
    const ended = new Promise<void>((r) => socket.once('end', () => r()));
    const closed = new Promise<boolean>((r) => socket.once('close', (hadError) => r(hadError)));
    socket.on('error', () => {});
    socket.once('connect', () =>
      resolve({ socket, received, text: () => Buffer.concat(received).toString('latin1'), length: () => received.reduce((n, b) => n + b.length, 0), ended, closed }),
    );
    socket.once('error', reject);
  });
}

/** The greeting line of an echo backend: which one took the connection. */
export async function backendOf(client: TcpClient): Promise<string> {
  await eventually(() => client.text().includes('\n'), { what: 'the backend greeting' });
  return client.text().split('\n')[0];
}

/** TCP connection closes published during the test (by every balancer of the process). */
export function recordCloses(t: TestContext): TcpConnectionEvent[] {
  const closes: TcpConnectionEvent[] = [];
  const on = (m: unknown): void => void closes.push(m as TcpConnectionEvent);
  tcpClose.subscribe(on);
  t.after(() => void tcpClose.unsubscribe(on));
  return closes;
}
