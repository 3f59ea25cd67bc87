/**
 * bin/fulcrum.js in a clone runs the compiled dist/cli.js while it is newer than every file of
 * src/ (lighter at start than type stripping), and src/cli.ts as soon as a source is newer (never
 * stale code). A copy of the launcher with marker CLIs shows which one ran.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

test('the launcher runs dist/cli.js while it is up to date with src/, else src/cli.ts', (t) => {
  const root = mkdtempSync(path.join(tmpdir(), 'launcher-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  mkdirSync(path.join(root, 'bin'));
  mkdirSync(path.join(root, 'src', 'admin'), { recursive: true });
  mkdirSync(path.join(root, 'dist'));
  cpSync(new URL('../../bin/fulcrum.js', import.meta.url), path.join(root, 'bin', 'fulcrum.js'));
  writeFileSync(path.join(root, 'package.json'), '{"type":"module"}');
  writeFileSync(path.join(root, 'src', 'cli.ts'), "console.log('ran src');\n");
  writeFileSync(path.join(root, 'src', 'admin', 'server.ts'), 'export {};\n');
  writeFileSync(path.join(root, 'dist', 'cli.js'), "console.log('ran dist');\n");
  // Not as if under npm (the launcher would then watch npm's process).
  const env = { ...process.env };
  delete env.npm_lifecycle_event;
  const run = (): string => execFileSync(process.execPath, [path.join(root, 'bin', 'fulcrum.js')], { encoding: 'utf8', env, timeout: 10_000 }).trim();
  const at = (file: string, seconds: number): void => utimesSync(path.join(root, file), seconds, seconds);
  const now = Math.floor(Date.now() / 1000);
  at('src/cli.ts', now - 100);
  at('src/admin/server.ts', now - 100);
  at('dist/cli.js', now - 50);
  assert.equal(run(), 'ran dist');
  // One source edited after the build (in a subfolder): the sources run.
  at('src/admin/server.ts', now - 10);
  assert.equal(run(), 'ran src');
  at('dist/cli.js', now);
  assert.equal(run(), 'ran dist');
});
