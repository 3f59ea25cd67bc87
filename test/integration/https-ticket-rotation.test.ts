/**
 * The session ticket key rotation (a timer) never reads files: a client CA file that disappears
 * (a bundle being replaced, a permissions change) cannot crash the process at rotation time; the
 * CA loaded at start or the last reload stays in use and the listener goes on serving.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { makeTestCa, httpsGet } from '../helpers/tls.ts';
import { startBackend, startBalancer } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';
import tls from 'node:tls';

test('a client CA file that disappears does not crash the process at the next ticket key rotation', async (t) => {
  const ca = await makeTestCa(t);
  const server = await ca.issue('server');
  const alice = await ca.issue('alice', { names: [], commonName: 'alice', usage: 'client' });
  const caCopy = `${ca.dir}/clients-ca.pem`;
  fs.copyFileSync(ca.caPath, caCopy);
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'https', tls: { ticket_key_rotation: '200ms', certificates: [{ cert: server.certPath, key: server.keyPath }], client_auth: { mode: 'required', ca: caCopy } } }],
    pools: { web: { upstreams: [backend.url] } },
  } as never);
  const uncaught: Error[] = [];
  const onUncaught = (err: Error): void => void uncaught.push(err);
  // Listened for here so the failure is this assertion, not the runner's crash report.
  process.prependListener('uncaughtException', onUncaught);
  t.after(() => process.off('uncaughtException', onUncaught));
  // A session made before the rotations: once it no longer resumes, a rotation has run without the file.
  const session = await new Promise<Buffer>((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port: lb.port, ca: ca.ca.cert, cert: alice.cert, key: alice.key, maxVersion: 'TLSv1.2' }, () => {
      const kept = s.getSession()!;
      s.end();
      resolve(kept);
    });
    s.on('error', reject);
  });
  fs.rmSync(caCopy);
  await eventually(
    () =>
      new Promise<boolean>((resolve, reject) => {
        const s = tls.connect({ host: '127.0.0.1', port: lb.port, ca: ca.ca.cert, cert: alice.cert, key: alice.key, maxVersion: 'TLSv1.2', session }, () => {
          const reused = s.isSessionReused();
          s.end();
          resolve(!reused);
        });
        s.on('error', reject);
      }),
    { what: 'a ticket key rotation after the CA file was removed', interval: 50 },
  );
  assert.deepEqual(uncaught.map((e) => e.message), [], 'the ticket key rotation threw out of its timer');
  const r = await httpsGet(`https://127.0.0.1:${lb.port}/`, { ca: ca.ca.cert, cert: alice.cert, key: alice.key });
  assert.equal(r.status, 200);
});
