/**
 * A long-running child process that a test starts as a real peer (HAProxy, PostgreSQL,
 * redis-server, Fulcrum itself): its output gathered for failure messages, its end awaitable
 * whether it exits or never starts.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';

/** How a child ended: its exit code, or the signal that ended it; both null when it could not be spawned. */
export interface ChildExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A child started by `spawnWatched`. */
export interface WatchedChild {
  child: ChildProcess;
  /** Everything it wrote to stdout and stderr so far, in the order it arrived (for failure messages). */
  output(): string;
  /**
   * Resolves when it exits, or at once with `{ code: null, signal: null }` when it could not be
   * spawned (a program that is missing or not executable emits 'error' and never 'exit'). Never rejects.
   */
  exited: Promise<ChildExit>;
  /** Why it could not be spawned (ENOENT, EACCES, ...), or undefined. */
  spawnError(): Error | undefined;
  /** True from a successful spawn until it exits or a signal ends it. */
  running(): boolean;
  /** Sends `signal` to the child alone (not its process group) if it is running; a no-op otherwise. */
  kill(signal: NodeJS.Signals): void;
}

/**
 * Spawns `program` with `args` and `options` (stdin ignored, stdout and stderr piped and
 * gathered into `output()`). A spawn failure is not thrown and not left as an unhandled
 * 'error': it resolves `exited` and is kept for `spawnError()`, so the caller's start-up wait
 * ends and can name the reason. The caller stops the child (`kill`, `t.after`).
 */
export function spawnWatched(program: string, args: readonly string[], options: Omit<SpawnOptions, 'stdio'> = {}): WatchedChild {
  const child = spawn(program, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d));
  child.stderr!.on('data', (d: Buffer) => (out += d));
  let spawnError: Error | undefined;
  const exited = new Promise<ChildExit>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
    child.once('error', (err) => {
      spawnError = err;
      resolve({ code: null, signal: null });
    });
  });
  const running = (): boolean => child.pid !== undefined && child.exitCode === null && child.signalCode === null;
  return {
    child,
    output: () => out,
    exited,
    spawnError: () => spawnError,
    running,
    kill: (signal) => {
      if (running()) child.kill(signal);
    },
  };
}
