/**
 * Fulcrum as users run it: `node src/cli.ts start -c FILE` in its own process, for tests that
 * measure its memory or send it signals.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { spawnWatched, type ChildExit } from './child-process.ts';

const cli = new URL('../../src/cli.ts', import.meta.url).pathname;

/** A started Fulcrum process. */
export interface FulcrumProcess {
  child: ChildProcess;
  port: number;
  url: string;
  output: () => string;
  exited: Promise<ChildExit>;
}

/** Writes the YAML to a temp file, starts Fulcrum on it, resolves once it listens. */
export async function startFulcrumProcess(t: TestContext, yaml: string): Promise<FulcrumProcess> {
  const dir = mkdtempSync(join(tmpdir(), 'fulcrum-test-'));
  const file = join(dir, 'fulcrum.yaml');
  writeFileSync(file, yaml);
  // The V8 flags bin/fulcrum.js gives `fulcrum start`.
  const fulcrum = spawnWatched(process.execPath, ['--max-semi-space-size=8', cli, 'start', '-c', file], { env: { ...process.env, FULCRUM_LOG_FORMAT: 'json' } });
  const { child, exited, output } = fulcrum;
  t.after(() => fulcrum.kill('SIGKILL'));
  const deadline = Date.now() + 15_000;
  for (;;) {
    const m = /listening on (https?):\/\/[^:]+:(\d+)/.exec(output());
    if (m) return { child, port: Number(m[2]), url: `${m[1]}://127.0.0.1:${m[2]}`, output, exited };
    if (child.exitCode !== null || Date.now() > deadline) {
      const spawnError = fulcrum.spawnError();
      throw new Error(`fulcrum did not start${spawnError ? ` (cannot run ${process.execPath}: ${spawnError.message})` : ''}:\n${output()}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Peak resident memory (VmHWM) of a process, in bytes, from /proc. */
export function peakRss(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error('no VmHWM in /proc status');
  return Number(m[1]) * 1024;
}
