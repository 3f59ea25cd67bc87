/**
 * The demo's WebSocket echo as its banner tells a user to try it: the printed `node -e` commands
 * are run as printed (Node 24's built-in WebSocket, nothing installed), through the balancer to
 * the sample backends' /ws.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { demoBanner, startDemo } from '../../src/demo/demo.ts';
import type { LiveSample } from '../../src/admin/types.ts';
import { eventually } from '../helpers/eventually.ts';

const run = promisify(execFile);

/** The JavaScript of each `node -e '...'` line of the banner. */
function printedScripts(banner: string): string[] {
  return [...banner.matchAll(/^ +node -e '([^']+)'$/gm)].map((m) => m[1]);
}

test('the demo banner\'s WebSocket commands reach each backend\'s echo through the balancer', { timeout: 30_000 }, async (t) => {
  const demo = await startDemo({ port: 0, adminPort: 0 });
  t.after(() => demo.close());
  const [once, interactive] = printedScripts(demoBanner(demo));
  assert.ok(once !== undefined && interactive !== undefined, 'two node -e commands in the banner');

  // The one-shot command, three times: round-robin gives each backend a turn.
  const seen: string[] = [];
  for (let i = 0; i < 3; i++) {
    const { stdout } = await run(process.execPath, ['-e', once], { timeout: 5000 });
    assert.match(stdout, /^backend [123]: hello\n$/);
    seen.push(stdout.slice(8, 9));
  }
  assert.deepEqual(seen.sort(), ['1', '2', '3']);

  // The interactive one: lines typed are echoed, the tunnel shows in the live samples, end of input closes it.
  const child = spawn(process.execPath, ['-e', interactive], { stdio: ['pipe', 'pipe', 'pipe'] });
  t.after(() => child.kill('SIGKILL'));
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  child.stdin.write('first line\nsecond line\n');
  await eventually(() => /^backend \d: first line\nbackend \d: second line\n$/.test(out), { what: `both lines echoed (got ${JSON.stringify(out)})` });
  const lastSample = async (): Promise<LiveSample | undefined> => ((await (await fetch(`${demo.adminUrl}/live`)).json()) as LiveSample[]).at(-1);
  const holder = `127.0.0.1:${demo.backends[Number(out.slice(8, 9)) - 1].port}`;
  // Samples are taken once a second: wait for one taken while only this tunnel was open (the one-shot ones closed).
  await eventually(
    async () => {
      const sample = await lastSample();
      return sample?.tunnels_open === 1 && sample.backends.find((b) => b.id === holder)?.tunnels_open === 1;
    },
    { timeout: 4000, what: 'one open tunnel in the live samples, on the backend that echoed' },
  );
  child.stdin.end();
  const code = await new Promise((resolve) => child.once('exit', resolve));
  assert.equal(code, 0, out);
  await eventually(async () => (await lastSample())?.tunnels_open === 0, { timeout: 4000, what: 'no open tunnel once it closed' });
});
