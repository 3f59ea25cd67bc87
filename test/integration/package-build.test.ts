/**
 * The package as an installer gets it: `npm run build`'s compiler settings into a temporary
 * directory, then the built JavaScript (no TypeScript stripping, as under node_modules) imported
 * and used: the typed admin client against a running balancer, and the main entry's exports.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startBackend, startBalancer } from '../helpers/servers.ts';

const root = path.resolve(import.meta.dirname, '../..');

test('package: the built client and entry point work as plain JavaScript', { timeout: 120_000 }, async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'fulcrum-pkg-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  execFileSync(path.join(root, 'node_modules/.bin/tsc'), ['-p', path.join(root, 'tsconfig.build.json'), '--outDir', path.join(dir, 'dist')], { stdio: 'pipe' });
  cpSync(path.join(root, 'package.json'), path.join(dir, 'package.json'));
  symlinkSync(path.join(root, 'node_modules'), path.join(dir, 'node_modules'));
  cpSync(path.join(root, 'src/admin/dashboard'), path.join(dir, 'dist/admin/dashboard'), { recursive: true });
  const token = 'package-build-test-token-0123';
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const lb = await startBalancer(t, { pools: { web: { upstreams: [backend.url] } }, admin: { host: '127.0.0.1', port: 0, token } });
  const adminUrl = lb.balancer.adminAddress()!.url;
  const script = `
    const { AdminClient } = await import(${JSON.stringify(path.join(dir, 'dist/admin/client.js'))});
    const main = await import(${JSON.stringify(path.join(dir, 'dist/index.js'))});
    const client = new AdminClient({ url: process.argv[1], token: process.argv[2] });
    const status = await client.status();
    const drained = await client.drain({ url: status.backends[0].url });
    console.log(JSON.stringify({ total: status.total_backends, draining: drained.backend.draining, exports: ['createBalancer', 'AdminClient', 'loadConfigFile', 'diffConfigs'].filter((n) => typeof main[n] === 'function') }));
  `;
  // Run without type stripping, the way Node treats files under node_modules.
  const out = await new Promise<string>((resolve, reject) => {
    import('node:child_process').then(({ execFile }) =>
      execFile(process.execPath, ['--no-experimental-strip-types', '--input-type=module', '-e', script, adminUrl, token], { cwd: dir, timeout: 30_000 }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout))),
    );
  });
  const result = JSON.parse(out.trim().split('\n').pop()!);
  assert.deepEqual(result, { total: 1, draining: true, exports: ['createBalancer', 'AdminClient', 'loadConfigFile', 'diffConfigs'] });
  assert.equal(lb.balancer.pools().get('web')!.upstreams[0].draining, true);
});
