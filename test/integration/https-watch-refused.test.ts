/**
 * A certificate file that parses but OpenSSL will not serve (a 512-bit RSA key) replaced under a
 * watched listener: the certificate loaded before stays, the failure is logged with its file, and
 * nothing throws out of the watcher's timer. Needs the `openssl` command to make the weak key.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { handshake, startHttpsSite } from '../helpers/tls.ts';
import { eventually } from '../helpers/eventually.ts';

test('a replaced certificate OpenSSL refuses (512-bit RSA) keeps the old one; the watcher does not crash the process', async (t) => {
  const { ca, site: first, lb } = await startHttpsSite(t);
  const uncaught: Error[] = [];
  const onUncaught = (err: Error): void => void uncaught.push(err);
  process.prependListener('uncaughtException', onUncaught);
  t.after(() => process.off('uncaughtException', onUncaught));
  const weakKey = path.join(ca.dir, 'weak.key');
  const weakCert = path.join(ca.dir, 'weak.crt');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:512', '-nodes', '-keyout', weakKey, '-out', weakCert, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: 'ignore' });
  // Put in place as a renewal would (renamed over the old files).
  fs.renameSync(weakKey, first.keyPath);
  fs.renameSync(weakCert, first.certPath);
  await eventually(() => lb.logs.some((l) => l.includes('OpenSSL refuses to serve it')), { what: 'the watcher to read the refused files' });
  assert.deepEqual(uncaught.map((e) => e.message), [], 'the certificate watcher threw out of its timer');
  assert.equal((await handshake(lb.port)).serial, first.serial, 'the certificate loaded before stays in use');
  assert.ok(lb.logs.some((l) => l.includes(first.certPath) || l.includes(first.keyPath)), 'the failure is logged with its file');
});
