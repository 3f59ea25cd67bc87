/**
 * A real HAProxy for the TCP-balancing tests (Debian package `haproxy`), mostly as a client that
 * sends the PROXY protocol: a config written to a temp dir, `haproxy -f FILE -db` in the
 * foreground, killed when the test ends. Run as root without a `user` line it stays root,
 * which these tests do not mind.
 */
import type { ChildProcess } from 'node:child_process';
import { accessSync, constants, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import type { TestContext } from 'node:test';
import { spawnWatched, type ChildExit } from './child-process.ts';
import { eventually } from './eventually.ts';

// HAProxy needs concrete ports in its config: the caller takes one with freePort() and writes it in.
export { freePort } from './redis-server.ts';

const installHint = 'apt-get install haproxy';

/** A running HAProxy. */
export interface Haproxy {
  /** The first port the config binds (the frontend, in the configs of haproxySendProxyV2Config). */
  port: number;
  /** Every port the config binds, all listening by the time startHaproxy resolves. */
  ports: number[];
  /** The config file HAProxy runs (in a temp dir removed after the test). */
  configPath: string;
  child: ChildProcess;
  /** Resolves when HAProxy exits. */
  exited: Promise<ChildExit>;
  /** What HAProxy printed so far (alerts and warnings; for failure messages). */
  output(): string;
  /** Hard stop (SIGTERM: every connection closed at once); SIGKILL if still running after 5 s. Resolves once it exited. */
  stop(): Promise<void>;
  /** SIGKILL, as in a crash. Returns at once; await `exited`. */
  kill(): void;
}

/** How to start HAProxy. */
export interface HaproxyOptions {
  /** How long to wait for every bound port to listen, in ms (default 10 000). */
  startTimeoutMs?: number;
}

/** How haproxySendProxyV2Config builds its config. */
export interface SendProxyV2Options {
  /** The frontend's port on 127.0.0.1. */
  listenPort: number;
  /** The backend's address (default 127.0.0.1). */
  backendHost?: string;
  backendPort: number;
  /**
   * `tcp` (default): bytes relayed both ways, the backend connection opened when a client
   * connects. `http`: HAProxy parses the requests, and opens the backend connection with the
   * first one.
   */
  mode?: 'tcp' | 'http';
  /** `timeout client` and `timeout server`, in ms (default 30 000); `timeout connect` is 5 s. */
  timeoutMs?: number;
}

/** The haproxy program on PATH (or in /usr/sbin, which a non-root PATH may lack), or null. */
export function haproxyProgram(): string | null {
  for (const dir of [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin']) {
    if (dir === '') continue;
    try {
      accessSync(join(dir, 'haproxy'), constants.X_OK);
      return join(dir, 'haproxy');
    } catch {
      // not here
    }
  }
  return null;
}

/**
 * Why a test needing HAProxy cannot run here (for `test(name, { skip: haproxySkip() })`), or
 * false. With CI set it is always false: on CI a missing HAProxy fails the test (through
 * `startHaproxy`'s error) instead of hiding it behind a skip.
 */
export function haproxySkip(): string | false {
  if (process.env.CI && process.env.CI !== 'false') return false;
  return haproxyProgram() === null ? `haproxy is not on PATH (Debian: ${installHint}; .ci/run does)` : false;
}

/**
 * A minimal HAProxy config: a frontend on 127.0.0.1:`listenPort` and one backend server that
 * HAProxy greets with a PROXY protocol version 2 header (`send-proxy-v2`) on every connection it
 * opens, before any byte of the client's.
 */
export function haproxySendProxyV2Config({ listenPort, backendHost = '127.0.0.1', backendPort, mode = 'tcp', timeoutMs = 30_000 }: SendProxyV2Options): string {
  return [
    'global',
    // Without it HAProxy sizes its connection limit (and memory) from the open-files limit.
    '  maxconn 1024',
    'defaults',
    `  mode ${mode}`,
    '  timeout connect 5s',
    `  timeout client ${timeoutMs}ms`,
    `  timeout server ${timeoutMs}ms`,
    'frontend front',
    `  bind 127.0.0.1:${listenPort}`,
    '  default_backend back',
    'backend back',
    `  server upstream ${backendHost}:${backendPort} send-proxy-v2`,
    '',
  ].join('\n');
}

/**
 * Writes `config` to a temp dir and runs `haproxy -f FILE -db` (foreground, no daemon, no
 * master-worker). Resolves once every port of the config's `bind` lines (at least one) listens
 * in this HAProxy process. Throws, with HAProxy's output, when the config binds no port, HAProxy
 * cannot be run, exits (a config error, a port in use) or does not listen within
 * `startTimeoutMs`.
 */
export async function startHaproxy(t: TestContext, config: string, options: HaproxyOptions = {}): Promise<Haproxy> {
  const ports = [...config.matchAll(/^\s*bind\s+\S*:(\d+)\b/gm)].map((m) => Number(m[1]));
  if (ports.length === 0) throw new Error(`the HAProxy config binds no port (a "bind ADDRESS:PORT" line):\n${config}`);
  const program = haproxyProgram();
  if (program === null) throw new Error(`haproxy is not on PATH (${installHint})`);
  const dir = mkdtempSync(join(tmpdir(), 'fulcrum-haproxy-'));
  const configPath = join(dir, 'haproxy.cfg');
  writeFileSync(configPath, config);

  const haproxy = spawnWatched(program, ['-f', configPath, '-db'], { cwd: dir });
  const { child, exited, running } = haproxy;
  const kill = (): void => haproxy.kill('SIGKILL');
  const stop = async (): Promise<void> => {
    haproxy.kill('SIGTERM');
    const timer = setTimeout(kill, 5000);
    await exited;
    clearTimeout(timer);
  };
  t.after(async () => {
    await stop();
    rmSync(dir, { recursive: true, force: true });
  });

  // Listening is read from /proc, not probed with a connection: in tcp mode a probe would open a backend connection, which the test would see.
  let failure: string | undefined;
  try {
    await eventually(() => !running() || ports.every((port) => listeningPorts(child.pid!).has(port)), {
      timeout: options.startTimeoutMs ?? 10_000,
      interval: 20,
      what: `HAProxy to listen on ${ports.join(', ')}`,
    });
    const spawnError = haproxy.spawnError();
    if (spawnError) failure = `cannot run ${program}: ${spawnError.message}`;
    else if (!running()) failure = `haproxy exited (${child.exitCode ?? child.signalCode})`;
  } catch (err) {
    failure = (err as Error).message;
  }
  if (failure !== undefined) {
    await stop();
    throw new Error(`HAProxy did not start: ${failure}\n${haproxy.output()}\nconfig:\n${config}`);
  }
  return { port: ports[0], ports, configPath, child, exited, output: haproxy.output, stop, kill };
}

/**
 * The TCP ports process `pid` has listening sockets on: the inodes of its socket descriptors
 * (/proc/PID/fd) looked up among the LISTEN sockets of /proc/net/tcp and tcp6. Linux only.
 */
function listeningPorts(pid: number): Set<number> {
  const inodes = new Set<string>();
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (m) inodes.add(m[1]);
      } catch {
        // closed meanwhile
      }
    }
  } catch {
    return new Set();
  }
  const ports = new Set<number>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue;
    }
    // Columns: sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...; st 0A is LISTEN.
    for (const line of text.split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields.length < 10 || fields[3] !== '0A' || !inodes.has(fields[9])) continue;
      ports.add(parseInt(fields[1].split(':')[1], 16));
    }
  }
  return ports;
}
