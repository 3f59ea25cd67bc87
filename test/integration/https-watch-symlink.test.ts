/**
 * Certificates renewed by swapping a `..data` symlink (a Kubernetes Secret volume, cert-manager)
 * are picked up by the watcher, though no event names the certificate file itself.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { makeTestCa, handshake } from '../helpers/tls.ts';
import { startBackend, startBalancer } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';

test('a certificate renewed by swapping a ..data symlink (Kubernetes Secret volume) is picked up by the watcher', async (t) => {
  const ca = await makeTestCa(t);
  const first = await ca.issue('first');
  const volume = path.join(ca.dir, 'secret');
  fs.mkdirSync(path.join(volume, '..v1'), { recursive: true });
  fs.copyFileSync(first.certPath, path.join(volume, '..v1', 'tls.crt'));
  fs.copyFileSync(first.keyPath, path.join(volume, '..v1', 'tls.key'));
  fs.symlinkSync('..v1', path.join(volume, '..data'));
  fs.symlinkSync('..data/tls.crt', path.join(volume, 'tls.crt'));
  fs.symlinkSync('..data/tls.key', path.join(volume, 'tls.key'));
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'https', tls: { certificates: [{ cert: path.join(volume, 'tls.crt'), key: path.join(volume, 'tls.key') }] } }],
    pools: { web: { upstreams: [backend.url] } },
  });
  assert.equal((await handshake(lb.port)).serial, first.serial);
  // The kubelet's atomic writer: a new directory, a ..data_tmp link to it renamed over ..data.
  const renewed = await ca.issue('renewed');
  fs.mkdirSync(path.join(volume, '..v2'));
  fs.copyFileSync(renewed.certPath, path.join(volume, '..v2', 'tls.crt'));
  fs.copyFileSync(renewed.keyPath, path.join(volume, '..v2', 'tls.key'));
  fs.symlinkSync('..v2', path.join(volume, '..data_tmp'));
  fs.renameSync(path.join(volume, '..data_tmp'), path.join(volume, '..data'));
  fs.rmSync(path.join(volume, '..v1'), { recursive: true });
  try {
    await eventually(async () => (await handshake(lb.port)).serial === renewed.serial, { timeout: 3000, what: 'the renewed certificate' });
  } catch {
    assert.fail(`3 s after the ..data swap new handshakes still get serial ${(await handshake(lb.port)).serial}, not the renewed ${renewed.serial}`);
  }
});
