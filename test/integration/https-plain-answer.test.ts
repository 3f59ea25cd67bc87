/**
 * The 400 answered to plain HTTP on a TLS port has a Content-Length that matches its body.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { makeTestCa } from '../helpers/tls.ts';
import { startBackend, startBalancer, rawExchange } from '../helpers/servers.ts';

test('the 400 for plain HTTP on an https port has a Content-Length that matches its body', async (t) => {
  const ca = await makeTestCa(t);
  const server = await ca.issue('server');
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'https', tls: { certificates: [{ cert: server.certPath, key: server.keyPath }] } }],
    pools: { web: { upstreams: [backend.url] } },
  });
  const answer = await rawExchange(lb.port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  const [head, body] = [answer.slice(0, answer.indexOf('\r\n\r\n')), answer.slice(answer.indexOf('\r\n\r\n') + 4)];
  const declared = Number(/\r\ncontent-length: (\d+)/i.exec(head)?.[1]);
  assert.equal(Buffer.byteLength(body, 'latin1'), declared, `Content-Length ${declared}, body ${JSON.stringify(body)}`);
});
