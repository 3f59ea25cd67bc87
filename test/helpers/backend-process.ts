/** Backends in child processes (test/helpers/backend-child.ts), for kill -9 and restart. */
import { spawn, type ChildProcess } from 'node:child_process';
import type { TestContext } from 'node:test';

const script = new URL('./backend-child.ts', import.meta.url).pathname;

/** A backend process and the POST ids it has received. */
export interface BackendProcess {
  child: ChildProcess;
  port: number;
  url: string;
  posts: string[];
}

/** Starts a backend process on `port` (0: any); resolves once it listens. */
export function startBackendProcess(t: TestContext, id: string, port = 0, posts: string[] = []): Promise<BackendProcess> {
  const child = spawn(process.execPath, [script, id, String(port)], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => child.kill('SIGKILL'));
  return new Promise((resolve, reject) => {
    let buffered = '';
    let started = false;
    child.stdout!.on('data', (d: Buffer) => {
      buffered += d;
      let nl: number;
      while ((nl = buffered.indexOf('\n')) !== -1) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (line.startsWith('PORT ') && !started) {
          started = true;
          const p = Number(line.slice(5));
          resolve({ child, port: p, url: `http://127.0.0.1:${p}`, posts });
        } else if (line.startsWith('POST ')) posts.push(line.slice(5));
      }
    });
    child.once('exit', (code) => {
      if (!started) reject(new Error(`backend ${id} exited with ${code} before listening`));
    });
  });
}
