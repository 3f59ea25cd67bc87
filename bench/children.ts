/**
 * Child processes for the benchmark: servers that report their port over IPC, and one-shot
 * commands whose stdout is read back. Every child is tracked and SIGKILLed when this process
 * exits, however it exits, so no backend or proxy outlives a benchmark run.
 */
import { spawn, type ChildProcess } from 'node:child_process';

const live = new Set<ChildProcess>();

process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});
// A signal's default action skips 'exit' handlers; exiting explicitly runs them.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(signal, () => process.exit(128 + (signal === 'SIGINT' ? 2 : signal === 'SIGTERM' ? 15 : 1)));
}

function track(child: ChildProcess): ChildProcess {
  live.add(child);
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
 * Starts `node <script> ...args` and waits for it to send `{ port }` over IPC. Its stdout goes
 * to /dev/null (that is where the proxies' logs go); stderr is kept for error messages.
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
      const port = (message as { port?: unknown }).port;
      if (typeof port !== 'number') return fail(`sent ${JSON.stringify(message)} instead of { port }`);
      clearTimeout(timer);
      child.off('exit', onEarlyExit);
      resolve({
        name,
        pid: child.pid!,
        port,
        url: `http://127.0.0.1:${port}/`,
        alive: () => child.exitCode === null && child.signalCode === null,
        async stop() {
          if (child.exitCode !== null || child.signalCode !== null) return;
          child.kill('SIGTERM');
          const killer = setTimeout(() => child.kill('SIGKILL'), 1000);
          await exited;
          clearTimeout(killer);
        },
      });
    });
  });
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
