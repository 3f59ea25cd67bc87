/**
 * mTLS and session resumption: after a reload changes client_auth.ca, a session verified under
 * the old CA cannot be resumed (the session id context carries the CA), so a client the new CA
 * does not vouch for is refused rather than let through on its old ticket.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import type tls from 'node:tls';
import { makeTestCa } from '../helpers/tls.ts';
import { startBackend, startBalancer } from '../helpers/servers.ts';

function get(port: number, agent: https.Agent): Promise<{ body: string; reused: boolean }> {
  return new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port, path: '/', agent, headers: { connection: 'close' } }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ body, reused: (res.socket as tls.TLSSocket).isSessionReused() }));
    });
    req.on('error', reject);
  });
}

test('a client CA removed by a reload no longer vouches for resumed sessions', async (t) => {
  const ca = await makeTestCa(t);
  const other = await makeTestCa(t, 'Other CA');
  const server = await ca.issue('server', { names: ['localhost'] });
  const alice = await ca.issue('alice', { names: [], commonName: 'alice', usage: 'client' });
  const backend = await startBackend(t, (req, res) => res.end(String(req.headers['x-client-subject'] ?? '(none)')));
  const config = (clientCa: string, port = 0) => ({
    listeners: [{ host: '127.0.0.1', port, protocol: 'https', tls: { certificates: [{ cert: server.certPath, key: server.keyPath }], client_auth: { mode: 'optional', ca: clientCa, subject_header: 'X-Client-Subject' } } }],
    pools: { web: { upstreams: [backend.url] } },
  });
  const lb = await startBalancer(t, config(ca.caPath) as never);
  const agent = new https.Agent({ keepAlive: false, ca: ca.ca.cert, cert: alice.cert, key: alice.key, servername: 'localhost' });
  t.after(() => agent.destroy());
  assert.equal((await get(lb.port, agent)).body, 'CN=alice');
  assert.deepEqual(await get(lb.port, agent), { body: 'CN=alice', reused: true }, 'sessions resume (the premise)');
  await lb.balancer.reload(config(other.caPath, lb.port) as never);
  const after = await get(lb.port, agent);
  assert.equal(after.body, '(none)', `alice's CA is no longer trusted, yet a ${after.reused ? 'resumed' : 'new'} session passed her subject upstream`);
});
