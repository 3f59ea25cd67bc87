/**
 * client_auth added or removed by a configuration reload applies to the next connections: the
 * handshake server (whose requestCert is fixed per server) is made again.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { makeTestCa, httpsGet } from '../helpers/tls.ts';
import { startBackend, startBalancer } from '../helpers/servers.ts';

test('client_auth added by a reload asks clients for certificates (or is left for a restart, said so)', async (t) => {
  const ca = await makeTestCa(t);
  const server = await ca.issue('server');
  const alice = await ca.issue('alice', { names: [], commonName: 'alice', organization: 'Example', usage: 'client' });
  const backend = await startBackend(t, (req, res) => res.end(String(req.headers['x-client-subject'] ?? '(none)')));
  const listener = (tlsExtra: Record<string, unknown>, port = 0) => ({ host: '127.0.0.1', port, protocol: 'https', tls: { certificates: [{ cert: server.certPath, key: server.keyPath }], ...tlsExtra } });
  const lb = await startBalancer(t, { listeners: [listener({})], pools: { web: { upstreams: [backend.url] } } } as never);
  const call = () => httpsGet(`https://127.0.0.1:${lb.port}/`, { ca: ca.ca.cert, cert: alice.cert, key: alice.key });
  assert.equal((await call()).body, '(none)');

  const result = await lb.balancer.reload({ listeners: [listener({ client_auth: { mode: 'required', ca: ca.caPath, subject_header: 'X-Client-Subject' } }, lb.port)], pools: { web: { upstreams: [backend.url] } } } as never);
  const notes = JSON.stringify(result);
  if (/client_auth/.test(notes)) return; // said to wait for a restart: fine (then clients must still be served as before)
  let answer: string;
  try {
    answer = (await call()).body;
  } catch (err) {
    answer = `refused: ${(err as Error).message}`;
  }
  assert.equal(answer, 'CN=alice,O=Example', `after the reload (no restart note: ${notes}) a client with a valid certificate got: ${answer}`);
});
