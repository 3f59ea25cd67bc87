/**
 * The mTLS subject header cannot be forged: a client's own header of that name is removed, and
 * so is its underscore twin (`X_Client_Subject`, which CGI, WSGI, PHP and Rack read alike).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { makeTestCa, httpsGet } from '../helpers/tls.ts';
import { startBackend, startBalancer } from '../helpers/servers.ts';

test('the underscore twin of the client subject header is removed too', async (t) => {
  const ca = await makeTestCa(t);
  const server = await ca.issue('server');
  const backend = await startBackend(t, (req, res) => res.end(JSON.stringify(req.rawHeaders.filter((_h, i) => i % 2 === 0 && /client.subject/i.test(req.rawHeaders[i])))));
  const lb = await startBalancer(t, {
    listeners: [
      {
        host: '127.0.0.1',
        port: 0,
        protocol: 'https',
        headers_with_underscores: 'allow',
        tls: { certificates: [{ cert: server.certPath, key: server.keyPath }], client_auth: { mode: 'optional', ca: ca.caPath, subject_header: 'X-Client-Subject' } },
      },
    ],
    pools: { web: { upstreams: [backend.url] } },
  } as never);
  // No client certificate: nothing may reach the upstream under the subject header's name, in either spelling.
  const r = await httpsGet(`https://127.0.0.1:${lb.port}/`, { ca: ca.ca.cert, headers: { 'x-client-subject': 'CN=admin', x_client_subject: 'CN=admin' } });
  assert.deepEqual(JSON.parse(r.body), [], 'a client-made subject header reached the upstream');
});
