/**
 * Child processes for the benchmark: servers that report their port over IPC, and one-shot
 * commands whose stdout is read back. Every child is tracked and SIGKILLed when this process
 * exits, however it exits, so no backend or proxy outlives a benchmark run.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/** Every running child, with the signal that ends it when this process exits. */
const live = new Map<ChildProcess, NodeJS.Signals>();

process.on('exit', () => {
  for (const [child, signal] of live) child.kill(signal);
});
// A signal's default action skips 'exit' handlers; exiting explicitly runs them.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(signal, () => process.exit(128 + (signal === 'SIGINT' ? 2 : signal === 'SIGTERM' ? 15 : 1)));
}

/** `finalSignal` ends it if this process exits first: SIGKILL, or SIGTERM for a master that must stop its workers (nginx). */
function track(child: ChildProcess, finalSignal: NodeJS.Signals = 'SIGKILL'): ChildProcess {
  live.set(child, finalSignal);
  child.once('exit', () => live.delete(child));
  return child;
}

/** The last few KB a child wrote to a stream, for error messages. */
function tail(stream: NodeJS.ReadableStream | null): () => string {
  let text = '';
  stream?.setEncoding('utf8');
  stream?.on('data', (chunk: string) => {
    text = (text + chunk).slice(-4096);
  });
  return () => text.trim();
}

/** A server running in a child process. */
export interface ChildServer {
  name: string;
  pid: number;
  port: number;
  url: string;
  /** Whether it is still running (a proxy that crashed mid-run should not pass silently). */
  alive(): boolean;
  /** SIGTERM, then SIGKILL if it has not gone within a second. */
  stop(): Promise<void>;
}

/**
 * Starts `node <script> ...args` and waits for it to send `{ port, scheme? }` over IPC (scheme
 * "http" unless it says "https"). Its stdout goes to /dev/null (that is where the proxies' logs
 * go); stderr is kept for error messages.
 */
export function startServer(name: string, script: string, args: string[], timeoutMs = 10_000, nodeArgs: string[] = []): Promise<ChildServer> {
  const child = track(spawn(process.execPath, [...nodeArgs, script, ...args], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] }));
  const stderr = tail(child.stderr);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return new Promise((resolve, reject) => {
    const fail = (why: string): void => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      const details = stderr();
      reject(new Error(`${name}: ${why}${details ? `\n${details}` : ''}`));
    };
    const timer = setTimeout(() => fail(`did not report a port within ${timeoutMs} ms`), timeoutMs);
    child.once('error', (err) => fail(err.message));
    const onEarlyExit = (code: number | null, signal: NodeJS.Signals | null): void => fail(`exited (${signal ?? `code ${code}`}) before reporting a port`);
    child.once('exit', onEarlyExit);
    child.once('message', (message) => {
      const { port, scheme = 'http' } = message as { port?: unknown; scheme?: unknown };
      if (typeof port !== 'number' || (scheme !== 'http' && scheme !== 'https')) return fail(`sent ${JSON.stringify(message)} instead of { port, scheme? }`);
      clearTimeout(timer);
      child.off('exit', onEarlyExit);
      resolve(childServer(name, child, exited, port, scheme));
    });
  });
}

/** SIGTERM, then SIGKILL if it has not gone within a second. */
async function stopChild(child: ChildProcess, exited: Promise<void>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const killer = setTimeout(() => child.kill('SIGKILL'), 1000);
  await exited;
  clearTimeout(killer);
}

/** A port free on 127.0.0.1 right now (for servers that cannot listen on port 0 and say which they got). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/**
 * Starts a server that is not a Node script of ours (nginx): `command ...args`, told to listen on
 * `port`, ready once that port accepts a connection (polled, within `timeoutMs`). It is ended with
 * SIGTERM, also when this process exits, so a master process stops its workers itself.
 */
export async function startExternalServer(name: string, command: string, args: string[], port: number, scheme: 'http' | 'https', timeoutMs = 10_000): Promise<ChildServer> {
  const child = track(spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] }), 'SIGTERM');
  const stderr = tail(child.stderr);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let failure: string | null = null;
  child.once('error', (err) => (failure = err.message));
  child.once('exit', (code, signal) => (failure ??= `exited (${signal ?? `code ${code}`}) before listening`));
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (failure !== null) {
      const details = stderr();
      throw new Error(`${name}: ${failure}${details ? `\n${details}` : ''}`);
    }
    if (await accepts(port)) break;
    if (Date.now() > deadline) {
      await stopChild(child, exited);
      throw new Error(`${name}: not listening on 127.0.0.1:${port} within ${timeoutMs} ms\n${stderr()}`);
    }
    await sleep(20);
  }
  return childServer(name, child, exited, port, scheme);
}

/** The handle of a started child listening on 127.0.0.1:`port`. */
function childServer(name: string, child: ChildProcess, exited: Promise<void>, port: number, scheme: 'http' | 'https'): ChildServer {
  return {
    name,
    pid: child.pid!,
    port,
    url: `${scheme}://127.0.0.1:${port}/`,
    alive: () => child.exitCode === null && child.signalCode === null,
    stop: () => stopChild(child, exited),
  };
}

/**
 * Runs a command to completion and resolves with its stdout; rejects on a non-zero exit or when
 * it overruns `timeoutMs` (it is killed then).
 */
export function runCommand(name: string, command: string, args: string[], timeoutMs: number): Promise<string> {
  const child = track(spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
  let stdout = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (chunk: string) => (stdout += chunk));
  const stderr = tail(child.stderr);
  return new Promise((resolve, reject) => {
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`${name}: ${err.message}`));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) return resolve(stdout);
      const why = timedOut ? `killed after ${timeoutMs} ms` : `exited (${signal ?? `code ${code}`})`;
      const details = stderr();
      reject(new Error(`${name}: ${why}${details ? `\n${details}` : ''}`));
    });
  });
}
