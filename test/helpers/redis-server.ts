/**
 * A real redis-server for integration tests (Debian package `redis-server`): no persistence,
 * loopback only, on a free port; stopped when the test ends.
 */
import type { ChildProcess } from 'node:child_process';
import { createConnection, createServer } from 'node:net';
import type { TestContext } from 'node:test';
import { spawnWatched } from './child-process.ts';

/** A running redis-server. */
export interface RedisServer {
  port: number;
  url: string;
  child: ChildProcess;
  /** Kills the server (SIGKILL: Redis vanishes as in a crash) and waits for it to exit. */
  stop(): Promise<void>;
}

/** A port nothing listens on right now (redis-server needs a concrete one: it has no port 0). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** Starts redis-server on `port` (default a free one); resolves once it answers PING. */
export async function startRedisServer(t: TestContext, port?: number): Promise<RedisServer> {
  port ??= await freePort();
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--loglevel', 'warning'];
  const server = spawnWatched('redis-server', args);
  const stop = async (): Promise<void> => {
    server.kill('SIGKILL');
    await server.exited;
  };
  t.after(stop);
  const deadline = Date.now() + 5000;
  for (;;) {
    if (await ping(port)) break;
    const spawnError = server.spawnError();
    if (spawnError) throw new Error(`cannot run redis-server (apt-get install redis-server): ${spawnError.message}`);
    if (!server.running() || Date.now() > deadline) throw new Error(`redis-server on port ${port} did not start:\n${server.output()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return { port, url: `redis://127.0.0.1:${port}`, child: server.child, stop };
}

/** True when a Redis on `port` answers PING. */
function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ port, host: '127.0.0.1' });
    let answer = '';
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.once('error', () => done(false));
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.on('data', (d: Buffer) => {
      answer += d;
      if (answer.includes('\r\n')) done(answer.startsWith('+PONG'));
    });
  });
}
